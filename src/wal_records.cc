#include "wal_records.h"

#include <cstring>
#include <utility>

#include "str_util.h"

namespace warren::internal::wal {
namespace {

// --- Encoding -------------------------------------------------------------

void PutU8(std::string& out, uint8_t v) { out.push_back(static_cast<char>(v)); }

void PutVarint(std::string& out, uint64_t v) {
  char buf[10];
  size_t n = 0;
  while (v >= 0x80) {
    buf[n++] = static_cast<char>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  buf[n++] = static_cast<char>(v);
  out.append(buf, n);
}

void PutSVarint(std::string& out, int64_t v) {
  PutVarint(out,
            (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63));
}

void PutString(std::string& out, std::string_view s) {
  PutVarint(out, s.size());
  out.append(s.data(), s.size());
}

void PutFixed64(std::string& out, uint64_t v) {
  char buf[8];
  for (int i = 0; i < 8; ++i) buf[i] = static_cast<char>(v >> (8 * i));
  out.append(buf, 8);
}

void PutDouble(std::string& out, double d) {
  uint64_t bits;
  std::memcpy(&bits, &d, sizeof bits);
  PutFixed64(out, bits);
}

// Times: microseconds since the epoch, those from the epoch on stored one
// higher, so that 0 can stand for "none" (InfinitePast) and every time reads
// back as it was.
void PutTime(std::string& out, absl::Time t) {
  if (t == absl::InfinitePast()) {
    PutSVarint(out, 0);
    return;
  }
  const int64_t us = absl::ToUnixMicros(t);
  PutSVarint(out, us < 0 ? us : us + (us < INT64_MAX ? 1 : 0));
}

void PutDuration(std::string& out, std::optional<absl::Duration> d) {
  PutSVarint(out, d.has_value() ? absl::ToInt64Microseconds(*d) : -1);
}

void PutValue(std::string& out, const HeaderValue& v);

void PutHeaders(std::string& out, const Headers& h) {
  PutVarint(out, h.size());
  for (const auto& [name, value] : h) {
    PutString(out, name);
    PutValue(out, value);
  }
}

void PutValue(std::string& out, const HeaderValue& v) {
  PutU8(out, static_cast<uint8_t>(v.kind()));
  switch (v.kind()) {
    case HeaderValue::Kind::kVoid:
      break;
    case HeaderValue::Kind::kBool:
      PutU8(out, *v.as_bool() ? 1 : 0);
      break;
    case HeaderValue::Kind::kInt:
      PutSVarint(out, *v.as_int());
      break;
    case HeaderValue::Kind::kDouble:
      PutDouble(out, *v.as_double());
      break;
    case HeaderValue::Kind::kString:
      PutString(out, *v.as_string());
      break;
    case HeaderValue::Kind::kBytes:
      PutString(out, v.as_bytes()->data);
      break;
    case HeaderValue::Kind::kList:
      PutVarint(out, v.as_list()->size());
      for (const HeaderValue& e : *v.as_list()) PutValue(out, e);
      break;
    case HeaderValue::Kind::kTable:
      PutHeaders(out, *v.as_table());
      break;
  }
}

void PutMessage(std::string& out, const Message& m) {
  PutString(out, m.body());
  const Properties& p = m.properties();
  for (const std::string* s :
       {&p.message_id, &p.correlation_id, &p.content_type, &p.content_encoding,
        &p.reply_to, &p.type, &p.app_id, &p.user_id}) {
    PutString(out, *s);
  }
  PutTime(out, p.timestamp.value_or(absl::InfinitePast()));
  PutSVarint(out, p.priority.has_value() ? *p.priority : -1);
  PutDuration(out, p.expiration);
  PutHeaders(out, p.headers);
}

void PutRetry(std::string& out, const RetryPolicy& r) {
  PutVarint(out, r.max_attempts);
  PutU8(out, static_cast<uint8_t>(r.backoff));
  PutDuration(out, r.initial_delay);
  PutDouble(out, r.multiplier);
  PutDuration(out, r.max_delay);
  PutU8(out, static_cast<uint8_t>(r.jitter));
  PutDouble(out, r.jitter_ratio);
  PutFixed64(out, r.seed);
}

void PutQueueOptions(std::string& out, const QueueOptions& o) {
  uint8_t flags = 0;
  if (o.durable) flags |= 1;
  if (o.auto_delete) flags |= 2;
  if (o.single_active_consumer) flags |= 4;
  if (o.dead_letter_exchange) flags |= 8;
  if (o.dead_letter_routing_key) flags |= 16;
  if (o.retry) flags |= 32;
  PutU8(out, flags);
  PutVarint(out, o.max_length);
  PutVarint(out, o.max_length_bytes);
  PutU8(out, static_cast<uint8_t>(o.overflow));
  PutU8(out, o.max_priority);
  if (o.dead_letter_exchange) PutString(out, *o.dead_letter_exchange);
  if (o.dead_letter_routing_key) PutString(out, *o.dead_letter_routing_key);
  PutVarint(out, o.delivery_limit);
  if (o.retry) PutRetry(out, *o.retry);
  PutDuration(out, o.message_ttl);
  PutDuration(out, o.ack_deadline);
  PutDuration(out, o.dedup_window);
  PutDuration(out, o.expires);
  PutVarint(out, o.ring_capacity);
}

// --- Decoding -------------------------------------------------------------

class Decoder {
 public:
  explicit Decoder(std::string_view* in) : in_(in) {}
  bool ok() const { return ok_; }

  uint8_t U8() {
    if (in_->empty()) return Fail();
    const uint8_t v = static_cast<uint8_t>((*in_)[0]);
    in_->remove_prefix(1);
    return v;
  }
  uint64_t Varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
      if (in_->empty()) return Fail();
      const uint8_t b = static_cast<uint8_t>((*in_)[0]);
      in_->remove_prefix(1);
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return v;
    }
    return Fail();
  }
  uint32_t Varint32() {
    const uint64_t v = Varint();
    if (v > UINT32_MAX) return Fail();
    return static_cast<uint32_t>(v);
  }
  int64_t SVarint() {
    const uint64_t v = Varint();
    return static_cast<int64_t>((v >> 1) ^ (~(v & 1) + 1));
  }
  std::string_view String() {
    const uint64_t n = Varint();
    if (!ok_ || n > in_->size()) {
      Fail();
      return {};
    }
    std::string_view s = in_->substr(0, n);
    in_->remove_prefix(n);
    return s;
  }
  uint64_t Fixed64() {
    if (in_->size() < 8) return Fail();
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) {
      v |= static_cast<uint64_t>(static_cast<uint8_t>((*in_)[i])) << (8 * i);
    }
    in_->remove_prefix(8);
    return v;
  }
  double Double() {
    const uint64_t bits = Fixed64();
    double d;
    std::memcpy(&d, &bits, sizeof d);
    return d;
  }
  absl::Time Time() {
    const int64_t v = SVarint();
    if (v == 0) return absl::InfinitePast();
    return absl::FromUnixMicros(v < 0 ? v : v - 1);
  }
  std::optional<absl::Duration> Duration() {
    const int64_t us = SVarint();
    if (us == -1) return std::nullopt;
    return absl::Microseconds(us);
  }
  void Value(HeaderValue* v, int depth) {
    if (depth > kMaxHeaderNesting) {
      Fail();
      return;
    }
    switch (static_cast<HeaderValue::Kind>(U8())) {
      case HeaderValue::Kind::kVoid:
        *v = HeaderValue();
        return;
      case HeaderValue::Kind::kBool:
        *v = HeaderValue(U8() != 0);
        return;
      case HeaderValue::Kind::kInt:
        *v = HeaderValue(SVarint());
        return;
      case HeaderValue::Kind::kDouble:
        *v = HeaderValue(Double());
        return;
      case HeaderValue::Kind::kString:
        *v = HeaderValue(std::string(String()));
        return;
      case HeaderValue::Kind::kBytes:
        *v = HeaderValue(Bytes{std::string(String())});
        return;
      case HeaderValue::Kind::kList: {
        const uint64_t n = Varint();
        if (n > in_->size()) {
          Fail();
          return;
        }
        HeaderList list(n);
        for (HeaderValue& e : list) Value(&e, depth + 1);
        *v = HeaderValue(std::move(list));
        return;
      }
      case HeaderValue::Kind::kTable: {
        Headers h;
        HeadersInto(&h, depth + 1);
        *v = HeaderValue(std::move(h));
        return;
      }
    }
    Fail();
  }
  void HeadersInto(Headers* h, int depth = 0) {
    const uint64_t n = Varint();
    if (n > in_->size()) {
      Fail();
      return;
    }
    for (uint64_t i = 0; i < n && ok_; ++i) {
      std::string name(String());
      Value(&(*h)[std::move(name)], depth);
    }
  }
  void MessageInto(Message* m) {
    m->mutable_body().assign(String());
    std::string_view strings[8];
    for (std::string_view& s : strings) s = String();
    const absl::Time ts = Time();
    const int64_t prio = SVarint();
    if (prio < -1 || prio > 255) Fail();
    const std::optional<absl::Duration> expiration = Duration();
    Headers headers;
    HeadersInto(&headers);
    bool any = ts != absl::InfinitePast() || prio >= 0 ||
               expiration.has_value() || !headers.empty();
    for (std::string_view s : strings) any = any || !s.empty();
    if (!any) {
      // No properties: the message carries none (not an empty set).
      *m = Message(std::move(m->mutable_body()));
      return;
    }
    Properties& p = m->properties();
    size_t i = 0;
    for (std::string* f :
         {&p.message_id, &p.correlation_id, &p.content_type,
          &p.content_encoding, &p.reply_to, &p.type, &p.app_id, &p.user_id}) {
      f->assign(strings[i++]);
    }
    p.timestamp = ts == absl::InfinitePast() ? std::nullopt
                                             : std::optional<absl::Time>(ts);
    p.priority = prio < 0 ? std::nullopt
                          : std::optional<uint8_t>(static_cast<uint8_t>(prio));
    p.expiration = expiration;
    p.headers = std::move(headers);
  }
  void RetryInto(RetryPolicy* r) {
    r->max_attempts = Varint32();
    r->backoff = static_cast<Backoff>(U8());
    r->initial_delay = Duration().value_or(absl::ZeroDuration());
    r->multiplier = Double();
    r->max_delay = Duration().value_or(absl::ZeroDuration());
    r->jitter = static_cast<Jitter>(U8());
    r->jitter_ratio = Double();
    r->seed = Fixed64();
  }
  void QueueOptionsInto(QueueOptions* o) {
    *o = QueueOptions{};
    const uint8_t flags = U8();
    o->durable = flags & 1;
    o->auto_delete = flags & 2;
    o->single_active_consumer = flags & 4;
    o->max_length = Varint();
    o->max_length_bytes = Varint();
    o->overflow = static_cast<Overflow>(U8());
    o->max_priority = U8();
    if (flags & 8) o->dead_letter_exchange = std::string(String());
    if (flags & 16) o->dead_letter_routing_key = std::string(String());
    o->delivery_limit = Varint32();
    if (flags & 32) RetryInto(&o->retry.emplace());
    o->message_ttl = Duration();
    o->ack_deadline = Duration();
    o->dedup_window = Duration().value_or(absl::ZeroDuration());
    o->expires = Duration();
    o->ring_capacity = Varint32();
  }

 private:
  uint8_t Fail() {
    ok_ = false;
    in_->remove_prefix(in_->size());
    return 0;
  }

  std::string_view* in_;
  bool ok_ = true;
};

}  // namespace

// --- RecordBuilder ----------------------------------------------------------

Effect& RecordBuilder::Begin(OpType type) {
  if (num_effects_ == effects_.size()) effects_.emplace_back();
  Effect& e = effects_[num_effects_++];
  e.Reset(type);
  e.begin = out_.size();
  PutU8(out_, static_cast<uint8_t>(type));
  return e;
}

void RecordBuilder::Exchange(std::string_view name, ExchangeType type,
                             const ExchangeOptions& options) {
  Begin(OpType::kExchange).name.assign(name);
  PutString(out_, name);
  PutU8(out_, static_cast<uint8_t>(type));
  PutU8(out_, (options.durable ? 1 : 0) | (options.auto_delete ? 2 : 0) |
                  (options.internal ? 4 : 0));
  PutString(out_, options.alternate_exchange);
  End();
}

void RecordBuilder::DeleteExchange(std::string_view name) {
  Begin(OpType::kDeleteExchange).name.assign(name);
  PutString(out_, name);
  End();
}

void RecordBuilder::Queue(uint32_t id, std::string_view name,
                          const QueueOptions& options) {
  {
    Effect& e = Begin(OpType::kQueue);
    e.queue_id = id;
    e.name.assign(name);
    e.dedup_window = options.dedup_window;
  }
  PutVarint(out_, id);
  PutString(out_, name);
  PutQueueOptions(out_, options);
  End();
}

void RecordBuilder::DeleteQueue(uint32_t id) {
  Begin(OpType::kDeleteQueue).queue_id = id;
  PutVarint(out_, id);
  End();
}

void RecordBuilder::Bind(const BindingOp& b, bool bind) {
  Begin(bind ? OpType::kBind : OpType::kUnbind).binding = b;
  PutVarint(out_, b.dest_queue_id);
  PutString(out_, b.dest_exchange);
  PutString(out_, b.source);
  PutString(out_, b.key);
  PutHeaders(out_, b.arguments);
  End();
}

void RecordBuilder::Publish(uint64_t msg_id, std::string_view exchange,
                            std::string_view routing_key,
                            absl::Time published_at, const Message& message,
                            const std::vector<Ref>& refs) {
  {
    Effect& e = Begin(OpType::kPublish);
    e.msg_id = msg_id;
    e.at = published_at;
    e.name.assign(message.properties().message_id);
    e.refs.assign(refs.begin(), refs.end());
  }
  PutVarint(out_, msg_id);
  PutString(out_, exchange);
  PutString(out_, routing_key);
  PutTime(out_, published_at);
  PutMessage(out_, message);
  PutVarint(out_, refs.size());
  for (const Ref& r : refs) {
    PutVarint(out_, r.queue_id);
    PutVarint(out_, r.deliveries);
    PutTime(out_, r.ready_at);
  }
  End();
}

void RecordBuilder::Settle(uint32_t queue_id, const uint64_t* ids, size_t n) {
  {
    Effect& e = Begin(OpType::kSettle);
    e.queue_id = queue_id;
    e.ids.assign(ids, ids + n);
  }
  PutVarint(out_, queue_id);
  PutVarint(out_, n);
  for (size_t i = 0; i < n; ++i) PutVarint(out_, ids[i]);
  End();
}

void RecordBuilder::Delivered(uint32_t queue_id, uint64_t msg_id,
                              uint32_t deliveries) {
  {
    Effect& e = Begin(OpType::kDelivered);
    e.queue_id = queue_id;
    e.msg_id = msg_id;
    e.deliveries = deliveries;
  }
  PutVarint(out_, queue_id);
  PutVarint(out_, msg_id);
  PutVarint(out_, deliveries);
  End();
}

void RecordBuilder::Retry(uint32_t queue_id, uint64_t msg_id,
                          absl::Time ready_at) {
  {
    Effect& e = Begin(OpType::kRetry);
    e.queue_id = queue_id;
    e.msg_id = msg_id;
    e.at = ready_at;
  }
  PutVarint(out_, queue_id);
  PutVarint(out_, msg_id);
  PutTime(out_, ready_at);
  End();
}

void RecordBuilder::Dedup(uint32_t queue_id, std::string_view message_id,
                          absl::Time until) {
  {
    Effect& e = Begin(OpType::kDedup);
    e.queue_id = queue_id;
    e.name.assign(message_id);
    e.at = until;
  }
  PutVarint(out_, queue_id);
  PutString(out_, message_id);
  PutTime(out_, until);
  End();
}

void RecordBuilder::Checkpoint(uint64_t next_msg_id, uint32_t next_queue_id) {
  Begin(OpType::kCheckpoint);
  PutVarint(out_, next_msg_id);
  PutVarint(out_, next_queue_id);
  End();
}

void RecordBuilder::Segments(uint64_t oldest) {
  Begin(OpType::kSegments);
  PutVarint(out_, oldest);
  End();
}

void RecordBuilder::Format(uint32_t format) {
  Begin(OpType::kFormat);
  PutVarint(out_, format);
  End();
}

// --- RecordReader -----------------------------------------------------------

absl::Status RecordReader::Next(Op* op) {
  Decoder d(&in_);
  op->type = static_cast<OpType>(d.U8());
  switch (op->type) {
    case OpType::kExchange: {
      op->name.assign(d.String());
      op->exchange_type = static_cast<ExchangeType>(d.U8());
      const uint8_t flags = d.U8();
      op->exchange_options = ExchangeOptions{};
      op->exchange_options.durable = flags & 1;
      op->exchange_options.auto_delete = flags & 2;
      op->exchange_options.internal = flags & 4;
      op->exchange_options.alternate_exchange.assign(d.String());
      break;
    }
    case OpType::kDeleteExchange:
      op->name.assign(d.String());
      break;
    case OpType::kQueue:
      op->queue_id = d.Varint32();
      op->name.assign(d.String());
      d.QueueOptionsInto(&op->queue_options);
      break;
    case OpType::kDeleteQueue:
      op->queue_id = d.Varint32();
      break;
    case OpType::kBind:
    case OpType::kUnbind:
      op->binding.dest_queue_id = d.Varint32();
      op->binding.dest_exchange.assign(d.String());
      op->binding.source.assign(d.String());
      op->binding.key.assign(d.String());
      op->binding.arguments.clear();
      d.HeadersInto(&op->binding.arguments);
      break;
    case OpType::kPublish: {
      op->msg_id = d.Varint();
      op->exchange.assign(d.String());
      op->routing_key.assign(d.String());
      op->published_at = d.Time();
      d.MessageInto(&op->message);
      const uint64_t n = d.Varint();
      if (n > in_.size()) return absl::DataLossError("bad publish op");
      op->refs.resize(n);
      for (Ref& r : op->refs) {
        r.queue_id = d.Varint32();
        r.deliveries = d.Varint32();
        r.ready_at = d.Time();
      }
      break;
    }
    case OpType::kSettle: {
      op->queue_id = d.Varint32();
      const uint64_t n = d.Varint();
      if (n > in_.size()) return absl::DataLossError("bad settle op");
      op->ids.resize(n);
      for (uint64_t& id : op->ids) id = d.Varint();
      break;
    }
    case OpType::kDelivered:
      op->queue_id = d.Varint32();
      op->msg_id = d.Varint();
      op->deliveries = d.Varint32();
      break;
    case OpType::kRetry:
      op->queue_id = d.Varint32();
      op->msg_id = d.Varint();
      op->at = d.Time();
      break;
    case OpType::kDedup:
      op->queue_id = d.Varint32();
      op->name.assign(d.String());
      op->at = d.Time();
      break;
    case OpType::kCheckpoint:
      op->next_msg_id = d.Varint();
      op->next_queue_id = d.Varint32();
      break;
    case OpType::kSegments:
      op->oldest_segment = d.Varint();
      break;
    case OpType::kFormat:
      op->format = d.Varint32();
      if (d.ok() && op->format == 0) {
        return absl::DataLossError("a record names log format 0");
      }
      break;
    default:
      return absl::DataLossError(StrCat("unknown operation type ",
                                        static_cast<int>(op->type),
                                        " in a record"));
  }
  if (!d.ok()) {
    return absl::DataLossError(StrCat("a record's operation of type ",
                                      static_cast<int>(op->type),
                                      " is cut short or malformed"));
  }
  return absl::OkStatus();
}

}  // namespace warren::internal::wal
