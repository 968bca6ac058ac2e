#include "wal.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <utility>

#include "dense_id_map.h"
#include "envelope.h"
#include "log_reader.h"
#include "segment_reader.h"
#include "status_macros.h"
#include "str_util.h"
#include "warren/mpmc_queue.h"  // internal::CpuRelax

namespace warren::internal {
namespace {

constexpr uint64_t kMinSegmentBytes = 64 << 10;
constexpr size_t kMaxFailures = 256;
// The longest a sync leader waits for the publishers of the last group.
constexpr absl::Duration kMaxGather = absl::Milliseconds(1);
// A thread waiting for a sync spins only when syncs take at most this long:
// beyond it, a sleeping thread's wake-up is a small part of the wait.
constexpr absl::Duration kMaxSpinSync = absl::Microseconds(500);
// Zeroes a segment keeps written past its records (Env::NewLogFile), so a
// sync persists the records alone, not a new file size as well.
constexpr uint64_t kZeroAhead = uint64_t{1} << 20;
// How it spins: this many pauses first, then yields; a yield that takes
// longer than kSlowYield means other threads want the CPU, and after
// kMaxSlowYields of them it sleeps instead (the scheme of RocksDB's write
// thread).
constexpr int kSpinPauses = 200;
constexpr auto kSlowYield = std::chrono::microseconds(3);
constexpr int kMaxSlowYields = 3;
// A leader gathering its group by spinning looks at the count of waiters
// after this many pauses.
constexpr int kGatherPauses = 32;
constexpr std::string_view kSuffix = ".wal";

// When a leader gathering its group stops waiting for it (the group's
// arrival ends it earlier): it looks every eighth of the last sync's time; a
// group still arriving gets another look, one that stopped (a publisher went
// away) is not waited for any longer, and half the last sync's time (1 ms at
// most) is the limit.
class GatherDeadline {
 public:
  GatherDeadline(absl::Duration last_sync, size_t seen, absl::Time now)
      : limit_(now + std::min(last_sync / 2, kMaxGather)),
        gap_(last_sync / 8),
        seen_(seen),
        at_(std::min(limit_, now + gap_)) {}

  absl::Time at() const { return at_; }
  // Called once at() has passed, with `seen` threads gathered: whether to
  // stop; if not, the next look is due one gap from `now`.
  bool Passed(size_t seen, absl::Time now) {
    if (seen == seen_ || now >= limit_) return true;
    seen_ = seen;
    at_ = std::min(limit_, now + gap_);
    return false;
  }

 private:
  const absl::Time limit_;
  const absl::Duration gap_;
  size_t seen_;
  absl::Time at_;
};

// "000042.wal" -> 42; nullopt for other names.
std::optional<uint64_t> ParseSegmentName(std::string_view name) {
  if (name.size() <= kSuffix.size() ||
      name.substr(name.size() - kSuffix.size()) != kSuffix) {
    return std::nullopt;
  }
  name.remove_suffix(kSuffix.size());
  uint64_t n = 0;
  for (char c : name) {
    if (c < '0' || c > '9' || n > (UINT64_MAX - 9) / 10) return std::nullopt;
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  return n;
}

}  // namespace

QueuedMessage::~QueuedMessage() {
  if (wal_queue != 0 && envelope != nullptr && envelope->wal != nullptr) {
    envelope->wal->Settled(wal_queue, envelope->wal_id);
  }
}

std::string BindingKey(const wal::BindingOp& b) {
  // The op's own encoding identifies it.
  wal::RecordBuilder r;
  r.Bind(b, true);
  return std::move(r.out());
}

Wal::Wal(const Options& options)
    : options_(options),
      env_(options.env != nullptr ? options.env : Env::Posix()),
      spin_for_sync_(options.spin_for_sync.value_or(SpinningPays())) {}

Wal::~Wal() { (void)Close(); }

std::string Wal::SegmentPath(uint64_t number) const {
  char name[32];
  std::snprintf(name, sizeof name, "%06llu.wal",
                static_cast<unsigned long long>(number));
  return StrCat(options_.dir, "/", name);
}

absl::StatusOr<std::shared_ptr<Wal>> Wal::Open(const Options& options,
                                               RecoveredState* recovered) {
  if (options.segment_bytes < kMinSegmentBytes) {
    return absl::InvalidArgumentError(
        StrCat("wal_segment_bytes is ", options.segment_bytes,
               "; it must be at least ", kMinSegmentBytes));
  }
  if (options.sync == SyncPolicy::kInterval &&
      options.sync_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "sync_interval must be positive with SyncPolicy::kInterval");
  }
  if (!KnownPolicy(options.sync)) {
    return absl::InvalidArgumentError("unknown sync policy");
  }
  std::shared_ptr<Wal> wal(new Wal(options));
  Env* env = wal->env_;
  if (absl::Status s = env->CreateDir(options.dir);
      !s.ok() && !absl::IsAlreadyExists(s)) {
    return s;
  }
  absl::StatusOr<std::unique_ptr<FileLock>> lock =
      env->LockFile(StrCat(options.dir, "/LOCK"));
  if (!lock.ok()) {
    if (absl::IsFailedPrecondition(lock.status())) {
      return absl::FailedPreconditionError(StrCat(
          "the WAL directory ", options.dir, " is in use by another broker (",
          std::string(lock.status().message()), ")"));
    }
    return lock.status();
  }
  wal->lock_ = *std::move(lock);
  WARREN_RETURN_IF_ERROR(wal->Recover(wal, recovered));
  WARREN_RETURN_IF_ERROR(wal->StartSegment(/*written=*/~uint64_t{0}));
  {
    MutexLock l(&wal->mu_);
    wal->last_sync_ = absl::Now();
  }
  wal->background_ = std::thread([w = wal.get()] { w->BackgroundLoop(); });
  return wal;
}

// --- Recovery ---------------------------------------------------------------

namespace {

// The state being rebuilt, keyed for replay.
struct Replay {
  std::map<std::string, RecoveredState::ExchangeDecl> exchanges;
  std::map<uint32_t, RecoveredState::QueueDecl> queues;
  std::map<std::string, wal::BindingOp> bindings;
  // A live message read so far: its envelope, the segment of its newest
  // publish op and that op's size, and its queues.
  struct Msg {
    RecoveredState::LiveMessage live;  // envelope and queues
    uint64_t segment = 0;
    uint32_t bytes = 0;
  };
  // By id. Ids are handed out by one counter, so a DenseIdMap finds them by
  // subtraction where a hash map would miss the cache on every publish
  // replayed, and it grows by chunks without moving what it holds.
  DenseIdMap<Msg> messages;
  std::map<std::pair<uint32_t, std::string>, absl::Time> dedup;
  uint64_t next_msg_id = 1;
  uint32_t next_queue_id = 1;
  // The greatest oldest segment a kSegments op says must exist.
  uint64_t oldest_segment = 0;
  // The log being opened: the recovered envelopes point to it.
  const std::shared_ptr<Wal>& wal;

  Msg* Find(uint64_t id) { return messages.Find(id); }
  void Drop(uint64_t id) { messages.Erase(id); }

  explicit Replay(const std::shared_ptr<Wal>& log) : wal(log) {}

  // `op` is left with moved-from fields. `op_bytes`: its size in the record,
  // as the log's model counts a live message.
  void Apply(wal::Op& op, uint64_t segment, uint32_t op_bytes) {
    switch (op.type) {
      case wal::OpType::kPublish:
        ApplyPublish(op, segment, op_bytes);
        break;
      case wal::OpType::kSettle:
        for (uint64_t id : op.ids) {
          Msg* m = Find(id);
          if (m == nullptr) continue;
          auto& refs = m->live.refs;
          refs.erase(std::remove_if(refs.begin(), refs.end(),
                                    [&](const wal::Ref& ref) {
                                      return ref.queue_id == op.queue_id;
                                    }),
                     refs.end());
          if (refs.empty()) Drop(id);
        }
        break;
      case wal::OpType::kDelivered:
      case wal::OpType::kRetry: {
        if (Msg* m = Find(op.msg_id)) {
          wal::ApplyToRefs(op.type, op.queue_id, op.at, op.deliveries,
                           absl::MakeSpan(m->live.refs));
        }
        break;
      }
      default:
        ApplyTopology(op);
        break;
    }
  }

  void ApplyPublish(wal::Op& op, uint64_t segment, uint32_t op_bytes) {
    next_msg_id = std::max(next_msg_id, op.msg_id + 1);
    const std::string& mid = std::as_const(op.message).properties().message_id;
    if (!mid.empty()) {
      for (const wal::Ref& ref : op.refs) {
        auto q = queues.find(ref.queue_id);
        if (q == queues.end() ||
            q->second.options.dedup_window <= absl::ZeroDuration()) {
          continue;
        }
        // The latest window counts (a renewal after the window ended), never
        // an older one that a compaction's rewrite or a move no queue took
        // logs again; a duplicate's or refused publish's record is followed
        // by a kDedup op that restores what the queue remembered.
        absl::Time& until =
            dedup.try_emplace({ref.queue_id, mid}, absl::InfinitePast())
                .first->second;
        until =
            std::max(until, op.published_at + q->second.options.dedup_window);
      }
    }
    // A later publish of the same id (a compaction's rewrite, or a move that
    // no queue took) replaces the body and the references it names.
    Msg& m = messages.FindOrInsert(op.msg_id);
    m.live.envelope =
        MakeEnvelope(std::move(op.message), std::move(op.exchange),
                     std::move(op.routing_key), op.published_at,
                     /*persistent=*/true, op.msg_id, wal);
    if (wal::NamesEvery(op.refs, m.live.refs)) {
      m.segment = segment;
      m.bytes = op_bytes;
    }
    wal::SetRefs(op.refs, m.live.refs);
  }

  void ApplyTopology(const wal::Op& op) {
    switch (op.type) {
      case wal::OpType::kCheckpoint:
        exchanges.clear();
        queues.clear();
        bindings.clear();
        dedup.clear();
        next_msg_id = std::max(next_msg_id, op.next_msg_id);
        next_queue_id = std::max(next_queue_id, op.next_queue_id);
        break;
      case wal::OpType::kExchange:
        exchanges[op.name] = {op.name, op.exchange_type, op.exchange_options};
        break;
      case wal::OpType::kDeleteExchange: {
        exchanges.erase(op.name);
        for (auto it = bindings.begin(); it != bindings.end();) {
          const wal::BindingOp& b = it->second;
          if (b.source == op.name ||
              (b.dest_queue_id == 0 && b.dest_exchange == op.name)) {
            it = bindings.erase(it);
          } else {
            ++it;
          }
        }
        break;
      }
      case wal::OpType::kQueue:
        queues[op.queue_id] = {op.queue_id, op.name, op.queue_options};
        next_queue_id = std::max(next_queue_id, op.queue_id + 1);
        break;
      case wal::OpType::kDeleteQueue:
        queues.erase(op.queue_id);
        for (auto it = bindings.begin(); it != bindings.end();) {
          if (it->second.dest_queue_id == op.queue_id) {
            it = bindings.erase(it);
          } else {
            ++it;
          }
        }
        break;
      case wal::OpType::kBind:
        bindings[BindingKey(op.binding)] = op.binding;
        break;
      case wal::OpType::kUnbind:
        bindings.erase(BindingKey(op.binding));
        break;
      case wal::OpType::kDedup:
        dedup[{op.queue_id, op.name}] = op.at;
        break;
      case wal::OpType::kSegments:
        oldest_segment = std::max(oldest_segment, op.oldest_segment);
        break;
      default:  // applied by Apply
        break;
    }
  }
};

}  // namespace

absl::Status Wal::Recover(const std::shared_ptr<Wal>& self,
                          RecoveredState* recovered) {
  WARREN_ASSIGN_OR_RETURN(std::vector<std::string> children,
                          env_->GetChildren(options_.dir));
  std::vector<uint64_t> numbers;
  for (const std::string& name : children) {
    if (auto n = ParseSegmentName(name)) numbers.push_back(*n);
  }
  std::sort(numbers.begin(), numbers.end());
  for (size_t i = 1; i < numbers.size(); ++i) {
    if (numbers[i] != numbers[i - 1] + 1) {
      return absl::DataLossError(StrCat(
          "the WAL in ", options_.dir, " is missing segment ",
          SegmentPath(numbers[i - 1] + 1), " (segments ", numbers[i - 1],
          " and ", numbers[i], " exist): refusing to replay around the gap"));
    }
  }

  Replay replay(self);
  // Another thread reads the segments and checks their records ahead of this
  // one, which decodes and applies them in log order.
  std::vector<SegmentReader::Segment> paths;
  paths.reserve(numbers.size());
  for (const uint64_t number : numbers) {
    paths.emplace_back(number, SegmentPath(number));
  }
  SegmentReader reader(env_, std::move(paths),
                       options_.on_corruption == OnCorruption::kSkip
                           ? log::Reader::OnCorruption::kSkip
                           : log::Reader::OnCorruption::kStop);
  std::vector<wal::Op> decoded;
  std::vector<uint32_t> sizes;  // of the decoded ops
  while (std::unique_ptr<RecordBatch> batch = reader.Next()) {
    if (!batch->status.ok()) return batch->status;
    for (const RecordBatch::Record& r : batch->records) {
      const std::string_view record = batch->record(r);
      wal::RecordReader ops(record);
      // A record applies all or nothing: decode it whole first.
      size_t n = 0;
      while (!ops.done()) {
        if (n == decoded.size()) {
          decoded.emplace_back();
          sizes.emplace_back();
        }
        const size_t before = ops.remaining();
        absl::Status s = ops.Next(&decoded[n]);
        sizes[n] = static_cast<uint32_t>(before - ops.remaining());
        if (!s.ok()) {
          return absl::DataLossError(StrCat(SegmentPath(batch->segment),
                                            " at offset ", r.offset, ": ",
                                            std::string(s.message())));
        }
        if (decoded[n].type == wal::OpType::kFormat &&
            decoded[n].format > wal::kLogFormat) {
          return absl::FailedPreconditionError(
              StrCat(SegmentPath(batch->segment), " is in log format ",
                     decoded[n].format,
                     ", written by a newer warren; this build "
                     "reads formats up to ",
                     wal::kLogFormat,
                     ": open the log with that version, or a later one"));
        }
        ++n;
      }
      for (size_t i = 0; i < n; ++i) {
        replay.Apply(decoded[i], batch->segment, sizes[i]);
      }
    }
    if (batch->segment_end) {
      skipped_bytes_ += batch->skipped_bytes;
      // The zeroes a segment keeps written ahead of its records, like any
      // torn tail, are neither replayed nor counted as its size.
      recovered_bytes_ += batch->log_end;
      MutexLock l(&mu_);
      segments_.push_back(Segment{batch->segment, batch->log_end, 0, 0});
      segments_.back().started = true;
      next_segment_ = batch->segment + 1;
    }
    reader.Recycle(std::move(batch));
  }
  if (!numbers.empty() && numbers.front() > replay.oldest_segment &&
      replay.oldest_segment != 0) {
    // The gap check above cannot see segments missing from the front.
    return absl::DataLossError(
        StrCat("the WAL in ", options_.dir, " is missing segment ",
               SegmentPath(replay.oldest_segment),
               numbers.front() - 1 > replay.oldest_segment
                   ? StrCat(" through ", SegmentPath(numbers.front() - 1))
                   : std::string(),
               ", which the log says must exist (the oldest there is ",
               numbers.front(), "): refusing to replay without it"));
  }

  // Rebuild the model and hand the state over.
  MutexLock l(&mu_);
  next_msg_id_.store(replay.next_msg_id, std::memory_order_relaxed);
  next_queue_id_.store(replay.next_queue_id, std::memory_order_relaxed);
  wal::RecordBuilder b;
  for (auto& [name, e] : replay.exchanges) {
    b.clear();
    b.Exchange(e.name, e.type, e.options);
    exchanges_[name] = b.out();
    recovered->exchanges.push_back(e);
  }
  for (auto& [id, q] : replay.queues) {
    b.clear();
    b.Queue(id, q.name, q.options);
    queues_[id] = QueueModel{b.out(), q.options.dedup_window};
    recovered->queues.push_back(q);
  }
  for (auto& [key, binding] : replay.bindings) {
    b.clear();
    b.Bind(binding, true);
    bindings_[key] = b.out();
    recovered->bindings.push_back(binding);
  }
  const absl::Time now = options_.clock->Now();
  for (auto& [key, until] : replay.dedup) {
    if (until <= now || !replay.queues.contains(key.first)) continue;
    dedup_[key.first][key.second] = until;
    recovered->dedup.push_back({key.first, key.second, until});
  }
  // Queues drop their entries in the order their windows end.
  std::sort(
      recovered->dedup.begin(), recovered->dedup.end(),
      [](const RecoveredState::DedupEntry& a,
         const RecoveredState::DedupEntry& b) { return a.until < b.until; });
  // Hand the live messages over in publish (id) order. ForEach visits the
  // ids that fill the map's window in order, then the rest (ids far from
  // the others, or left alone in an old chunk) in no order: sort only then.
  recovered->messages.reserve(replay.messages.size());
  replay.messages.ForEach([&](uint64_t /*id*/, Replay::Msg& m) {
    mu_.AssertHeld();  // ForEach calls this here, under `l`
    auto& refs = m.live.refs;
    refs.erase(std::remove_if(refs.begin(), refs.end(),
                              [&](const wal::Ref& r) {
                                return !replay.queues.contains(r.queue_id);
                              }),
               refs.end());
    if (refs.empty()) return;
    Entry& e = live_.FindOrInsert(m.live.envelope->wal_id);
    e.segment = m.segment;
    e.bytes = m.bytes;
    e.refs = refs;
    if (Segment* s = FindSegmentLocked(m.segment)) {
      ++s->live;
      s->live_bytes += m.bytes;
    }
    recovered->messages.push_back(std::move(m.live));
  });
  auto by_id = [](const RecoveredState::LiveMessage& a,
                  const RecoveredState::LiveMessage& b) {
    return a.envelope->wal_id < b.envelope->wal_id;
  };
  if (!std::is_sorted(recovered->messages.begin(), recovered->messages.end(),
                      by_id)) {
    std::sort(recovered->messages.begin(), recovered->messages.end(), by_id);
  }
  recovered_messages_ = recovered->messages.size();
  return absl::OkStatus();
}

// --- Appending --------------------------------------------------------------

uint64_t Wal::NewMessageId() {
  return next_msg_id_.fetch_add(1, std::memory_order_relaxed);
}

uint32_t Wal::NewQueueId() {
  return next_queue_id_.fetch_add(1, std::memory_order_relaxed);
}

uint64_t Wal::Append(wal::RecordBuilder& record, bool own_sync,
                     bool will_wait) {
  uint64_t lsn;
  bool wake;
  {
    MutexLock l(&mu_);
    lsn = AppendLocked(record, own_sync);
    wake = bg_sleeping_ && !will_wait;
  }
  if (wake) bg_cv_.Signal();
  record.clear();
  return lsn;
}

Wal::Ticket Wal::AppendForWait(wal::RecordBuilder& record, bool own_sync,
                               bool sync) {
  Ticket t;
  t.sync = sync;
  {
    MutexLock l(&mu_);
    t.lsn = AppendLocked(record, own_sync);
    if (sync) {
      AddSyncWaiterLocked(t.lsn);
      t.registered = true;
      // Only a caller that joins a gathering group needs the spin's terms
      // now (Wait works them out itself otherwise): no clock read under the
      // mutex for the others.
      if (gathering_) {
        t.spin_until = SpinDeadlineLocked();
        t.joined = t.spin_until != SteadyTime();
        t.failures = failures_recorded_.load(std::memory_order_relaxed);
        t.writes = writes_done_.load(std::memory_order_relaxed);
      }
    }
  }
  record.clear();
  return t;
}

void Wal::AddSyncWaiterLocked(uint64_t lsn) {
  sync_wanted_ = std::max(sync_wanted_, lsn);
  sync_waiters_.push_back(lsn);
  sync_waiter_count_.store(sync_waiters_.size(), std::memory_order_release);
  if (gathering_ && sync_waiters_.size() >= group_size_) gather_cv_.Signal();
}

uint64_t Wal::LastLsn() {
  MutexLock l(&mu_);
  return next_lsn_ - 1;
}

uint64_t Wal::AppendLocked(const wal::RecordBuilder& record, bool own_sync) {
  const uint64_t segment =
      segments_.empty() ? next_segment_ : segments_.back().number;
  ApplyLocked(record.effects(), record.out(), segment);
  pending_.append(record.out());
  pending_records_.push_back({pending_.size(), own_sync, segment});
  return next_lsn_++;
}

Wal::Segment* Wal::FindSegmentLocked(uint64_t number) {
  if (segments_.empty() || number < segments_.front().number) return nullptr;
  const uint64_t i = number - segments_.front().number;
  return i < segments_.size() ? &segments_[i] : nullptr;
}

void Wal::ApplyLocked(absl::Span<const wal::Effect> effects,
                      std::string_view record, uint64_t segment) {
  for (const wal::Effect& e : effects) {
    switch (e.type) {
      case wal::OpType::kExchange:
        exchanges_[e.name] =
            std::string(record.substr(e.begin, e.end - e.begin));
        break;
      case wal::OpType::kDeleteExchange:
        exchanges_.erase(e.name);
        DropBindingsLocked([&](const wal::BindingOp& b) {
          return b.source == e.name ||
                 (b.dest_queue_id == 0 && b.dest_exchange == e.name);
        });
        break;
      case wal::OpType::kQueue:
        queues_[e.queue_id] =
            QueueModel{std::string(record.substr(e.begin, e.end - e.begin)),
                       e.dedup_window};
        break;
      case wal::OpType::kDeleteQueue: {
        queues_.erase(e.queue_id);
        dedup_.erase(e.queue_id);
        DropBindingsLocked([&](const wal::BindingOp& b) {
          return b.dest_queue_id == e.queue_id;
        });
        std::vector<uint64_t> ids;
        live_.ForEach([&](uint64_t id, const Entry& entry) {
          for (const wal::Ref& r : entry.refs) {
            if (r.queue_id == e.queue_id) ids.push_back(id);
          }
        });
        for (uint64_t id : ids) ForgetRefLocked(e.queue_id, id);
        break;
      }
      case wal::OpType::kBind:
        bindings_[BindingKey(e.binding)] =
            std::string(record.substr(e.begin, e.end - e.begin));
        break;
      case wal::OpType::kUnbind:
        bindings_.erase(BindingKey(e.binding));
        break;
      case wal::OpType::kPublish: {
        Entry& entry = live_.FindOrInsert(e.msg_id);
        if (entry.refs.empty()) {  // new
          entry.segment = segment;
          entry.bytes = static_cast<uint32_t>(e.end - e.begin);
          if (Segment* s = FindSegmentLocked(segment)) {
            ++s->live;
            s->live_bytes += entry.bytes;
          }
        } else if (wal::NamesEvery(e.refs, entry.refs)) {
          CountAgainstLocked(entry, segment,
                             static_cast<uint32_t>(e.end - e.begin));
        }
        wal::SetRefs(e.refs, entry.refs);
        if (!e.name.empty()) {
          for (const wal::Ref& r : e.refs) {
            auto q = queues_.find(r.queue_id);
            if (q != queues_.end() &&
                q->second.dedup_window > absl::ZeroDuration()) {
              // As replay: the latest window counts (see Replay).
              SetDedupLocked(r.queue_id, e.name, e.at + q->second.dedup_window,
                             /*extend_only=*/true);
            }
          }
        }
        if (entry.refs.empty()) {
          if (Segment* s = FindSegmentLocked(segment)) {
            --s->live;
            s->live_bytes -= entry.bytes;
          }
          live_.Erase(e.msg_id);
        }
        break;
      }
      case wal::OpType::kSettle:
        for (uint64_t id : e.ids) ForgetRefLocked(e.queue_id, id);
        break;
      case wal::OpType::kDelivered:
      case wal::OpType::kRetry: {
        if (Entry* entry = live_.Find(e.msg_id)) {
          wal::ApplyToRefs(e.type, e.queue_id, e.at, e.deliveries,
                           absl::MakeSpan(entry->refs));
        }
        break;
      }
      case wal::OpType::kDedup:
        if (e.at != absl::InfinitePast() && !queues_.contains(e.queue_id)) {
          break;
        }
        SetDedupLocked(e.queue_id, e.name, e.at);
        break;
      case wal::OpType::kCheckpoint:
      case wal::OpType::kSegments:
      case wal::OpType::kFormat:
        break;
    }
  }
}

void Wal::DropBindingsLocked(
    const std::function<bool(const wal::BindingOp&)>& gone) {
  wal::Op op;
  for (auto it = bindings_.begin(); it != bindings_.end();) {
    wal::RecordReader reader(it->second);
    if (reader.Next(&op).ok() && gone(op.binding)) {
      it = bindings_.erase(it);
    } else {
      ++it;
    }
  }
}

void Wal::ForgetRefLocked(uint32_t queue_id, uint64_t msg_id) {
  Entry* entry = live_.Find(msg_id);
  if (entry == nullptr) return;
  auto& refs = entry->refs;
  refs.erase(
      std::remove_if(refs.begin(), refs.end(),
                     [&](const wal::Ref& r) { return r.queue_id == queue_id; }),
      refs.end());
  if (!refs.empty()) return;
  if (Segment* s = FindSegmentLocked(entry->segment)) {
    --s->live;
    s->live_bytes -= entry->bytes;
  }
  live_.Erase(msg_id);
}

void Wal::Settled(uint32_t queue_id, uint64_t msg_id) {
  thread_local wal::RecordBuilder record;
  record.Settle(queue_id, &msg_id, 1);
  AppendSettles(record);
}

void Wal::NotTaken(uint32_t queue_id, uint64_t msg_id,
                   std::string_view message_id, absl::Time until) {
  thread_local wal::RecordBuilder record;
  record.Settle(queue_id, &msg_id, 1);
  record.Dedup(queue_id, message_id, until);
  AppendSettles(record);
}

uint64_t Wal::TakenLate(uint32_t queue_id, std::string_view message_id,
                        absl::Time until) {
  thread_local wal::RecordBuilder record;
  record.Dedup(queue_id, message_id, until);
  return AppendSettles(record);
}

uint64_t Wal::AppendSettles(wal::RecordBuilder& record) {
  bool wake = false;
  uint64_t lsn = 0;
  {
    MutexLock l(&mu_);
    if (settling_) {
      lsn = AppendLocked(record, /*own_sync=*/false);
      wake = bg_sleeping_;
    }
  }
  if (wake) bg_cv_.Signal();
  record.clear();
  return lsn;
}

void Wal::StopSettling() {
  MutexLock l(&mu_);
  settling_ = false;
}

void Wal::SetDedupLocked(uint32_t queue_id, const std::string& id,
                         absl::Time until, bool extend_only) {
  absl::Time before = absl::InfinitePast();
  auto q = dedup_.find(queue_id);
  if (q != dedup_.end()) {
    if (auto it = q->second.find(id); it != q->second.end()) {
      before = it->second;
    }
  }
  if (before == until || (extend_only && before > until)) return;
  // Called from ApplyLocked, for the record about to take LSN next_lsn_.
  dedup_changes_.push_back({next_lsn_, queue_id, id, before});
  if (until == absl::InfinitePast()) {
    q->second.erase(id);
  } else {
    dedup_[queue_id][id] = until;
  }
}

void Wal::BuildCheckpointLocked(wal::RecordBuilder& out, uint64_t written) {
  out.Format(wal::kLogFormat);
  out.Checkpoint(next_msg_id_.load(std::memory_order_relaxed),
                 next_queue_id_.load(std::memory_order_relaxed));
  out.Segments(segments_.empty() ? next_segment_ : segments_.front().number);
  std::string& bytes = out.out();
  for (const auto& [name, op] : exchanges_) bytes += op;
  for (const auto& [id, q] : queues_) bytes += q.op;
  for (const auto& [key, op] : bindings_) bytes += op;
  const absl::Time now = options_.clock->Now();
  // The windows as the written records left them: undo the later changes,
  // newest first.
  std::map<std::pair<uint32_t, std::string_view>, absl::Time> undone;
  for (auto it = dedup_changes_.rbegin();
       it != dedup_changes_.rend() && it->lsn > written; ++it) {
    undone[{it->queue_id, it->id}] = it->before;
  }
  for (auto& [queue_id, entries] : dedup_) {
    for (auto it = entries.begin(); it != entries.end();) {
      absl::Time until = it->second;
      if (auto u = undone.find({queue_id, it->first}); u != undone.end()) {
        until = u->second;
        undone.erase(u);
      }
      if (it->second <= now) {
        entries.erase(it++);
        continue;
      }
      if (until > now) out.Dedup(queue_id, it->first, until);
      ++it;
    }
  }
  // Windows that later records ended early (a refused publish's).
  for (const auto& [key, until] : undone) {
    if (until > now && queues_.contains(key.first)) {
      out.Dedup(key.first, key.second, until);
    }
  }
}

// --- Writing ----------------------------------------------------------------

void Wal::PublishedIds(std::string_view record, uint64_t from, uint64_t to,
                       std::vector<Recount>& out) {
  wal::RecordReader ops(record);
  wal::Op op;
  while (!ops.done() && ops.Next(&op).ok()) {
    if (op.type == wal::OpType::kPublish) out.push_back({op.msg_id, from, to});
  }
}

absl::Status Wal::StartSegment(uint64_t written) {
  wal::RecordBuilder checkpoint;
  uint64_t number;
  {
    MutexLock l(&mu_);
    if (segments_.empty() || segments_.back().started) {
      segments_.push_back(Segment{next_segment_++, 0, 0, 0});
    }
    // Else the last start failed: its segment, with the records counted
    // against it since, is started again under the same number.
    number = segments_.back().number;
    compact_failed_ = false;
    BuildCheckpointLocked(checkpoint, written);
  }
  const std::string path = SegmentPath(number);
  absl::Status s;
  absl::StatusOr<std::unique_ptr<WritableFile>> file =
      env_->NewLogFile(path, std::min(kZeroAhead, options_.segment_bytes));
  if (file.ok()) {
    file_ = *std::move(file);
    writer_ = std::make_unique<log::Writer>(file_.get());
    writer_segment_ = number;
    s = writer_->AddRecord(checkpoint.out());
    // The checkpoint is synced at once: once older segments are deleted it
    // is the only record of the durable topology.
    if (s.ok()) s = writer_->Sync();
    if (s.ok()) s = env_->SyncDir(options_.dir);
  } else {
    s = file.status();
  }
  if (!s.ok()) {
    writer_.reset();
    file_.reset();
    (void)env_->RemoveFile(path);
    return s;
  }
  MutexLock l(&mu_);
  Segment& segment = segments_.back();
  segment.started = true;
  segment.size = writer_->offset();
  bytes_ += writer_->offset();
  ++records_;
  ++syncs_;
  return absl::OkStatus();
}

std::optional<absl::Status> Wal::DoneLocked(uint64_t lsn, bool sync) const {
  for (const Failure& f : failures_) {
    if (lsn >= f.first && lsn <= f.last && (sync || !f.sync_only)) {
      return f.status;
    }
  }
  if (std::optional<absl::Status> f = ForgottenLocked(lsn, lsn, sync)) {
    return f;
  }
  if ((sync ? synced_lsn_ : written_lsn_) >= lsn) return absl::OkStatus();
  if (closed_) {
    return absl::FailedPreconditionError("the broker's WAL is closed");
  }
  return std::nullopt;
}

bool Wal::WorkLocked() const {
  return pending_records_.size() > retry_records_ ||
         (sync_wanted_ > synced_lsn_ && UnsyncedLocked());
}

bool Wal::CompactionDueLocked() const {
  if (compact_failed_ || segments_held_ || segments_.size() < 2) return false;
  const Segment& oldest = segments_.front();
  return oldest.live == 0 || oldest.live_bytes * 2 < oldest.size ||
         SettledOutweighLiveLocked();
}

bool Wal::SettledOutweighLiveLocked() const {
  uint64_t settled = 0;
  uint64_t live = 0;
  for (size_t i = 0; i < segments_.size(); ++i) {
    const Segment& s = segments_[i];
    live += s.live_bytes;
    if (i + 1 == segments_.size()) break;  // being written
    // A segment costs a file and at least a block to read at the next open,
    // however little it holds (a restart starts a segment of its own).
    const uint64_t size = std::max<uint64_t>(s.size, log::kBlockSize);
    settled += size > s.live_bytes ? size - s.live_bytes : 0;
  }
  return settled > std::max(live, options_.segment_bytes);
}

bool Wal::UnsyncedLocked() const {
  return written_lsn_ > std::max(synced_lsn_, abandoned_lsn_);
}

void Wal::RecordFailureLocked(Failure f) {
  failures_recorded_.fetch_add(1, std::memory_order_release);
  failures_.push_back(std::move(f));
  while (failures_.size() > kMaxFailures) {
    Failure& old = failures_.front();
    Forgotten& range = forgotten_[old.sync_only ? 1 : 0];
    range.first = std::min(range.first, old.first);
    range.last = std::max(range.last, old.last);
    range.status = std::move(old.status);
    failures_.pop_front();
  }
}

std::optional<absl::Status> Wal::ForgottenLocked(uint64_t first, uint64_t last,
                                                 bool sync) const {
  for (int i = 0; i < (sync ? 2 : 1); ++i) {
    const Forgotten& range = forgotten_[i];
    if (range.first <= last && first <= range.last) {
      return absl::Status(
          range.status.code(),
          StrCat("the write-ahead log failed more than ", kMaxFailures,
                 " times while this record waited for its confirm, and no "
                 "longer knows whether it is durable; the latest of those "
                 "failures: ",
                 std::string(range.status.message())));
    }
  }
  return std::nullopt;
}

void Wal::LeadLocked(Done& done) {
  io_busy_ = true;
  // The writer's buffers trade places with the pending ones: no allocation
  // per batch once both have grown.
  std::string& batch = batch_;
  std::vector<PendingRecord>& records = batch_records_;
  batch.clear();
  records.clear();
  batch.swap(pending_);
  records.swap(pending_records_);
  retry_records_ = 0;
  const uint64_t first = next_lsn_ - records.size();
  const uint64_t last = next_lsn_ - 1;
  const bool interval = options_.sync == SyncPolicy::kInterval;
  mu_.Unlock();

  absl::Status s;
  uint64_t durable_upto = first - 1;  // handed to the OS
  uint64_t synced_upto = 0;
  uint64_t syncs = 0;
  uint64_t bytes_before = writer_ ? writer_->offset() : 0;
  uint64_t bytes = 0;
  // Records written into a later segment than the one they are counted
  // against (it filled, or closed, after they were appended), with the
  // segment that took them.
  std::vector<std::pair<size_t, uint64_t>> moved;
  // records[unsynced_from..] were written after the last sync this call
  // made; `synced`: a sync succeeded (what unsynced_ holds is durable).
  size_t unsynced_from = 0;
  bool synced = false;
  if (!records.empty() && !writer_) {
    s = StartSegment(durable_upto);
    bytes_before = writer_ ? writer_->offset() : 0;
  }
  size_t begin = 0;
  for (size_t i = 0; i < records.size() && s.ok(); ++i) {
    const std::string_view rec(batch.data() + begin, records[i].end - begin);
    begin = records[i].end;
    s = writer_->AddRecord(rec, /*flush=*/false);
    if (s.ok() && records[i].segment != writer_segment_) {
      moved.emplace_back(i, writer_segment_);
    }
    if (s.ok() && records[i].own_sync) {
      s = writer_->Sync();
      if (s.ok()) {
        ++syncs;
        durable_upto = synced_upto = first + i;
        unsynced_from = i + 1;
        synced = true;
      }
    }
    if (s.ok() && writer_->offset() >= options_.segment_bytes &&
        i + 1 < records.size()) {
      // Roll in the middle of the batch: what is written so far is synced
      // with the segment.
      s = writer_->Sync();
      if (s.ok()) {
        ++syncs;
        durable_upto = synced_upto = first + i;
        unsynced_from = i + 1;
        synced = true;
        bytes += writer_->offset() - bytes_before;
        MutexLock l(&mu_);
        segments_.back().size = writer_->offset();
      }
      if (s.ok()) s = file_->Close();
      writer_.reset();
      file_.reset();
      if (s.ok()) s = StartSegment(durable_upto);
      bytes_before = writer_ ? writer_->offset() : 0;
    }
  }
  if (s.ok() && !records.empty()) {
    s = writer_->Flush();
    if (s.ok()) durable_upto = last;
  }
  if (writer_) bytes += writer_->offset() - bytes_before;
  std::vector<Recount> recounts;
  for (const auto& [i, to] : moved) {
    const size_t from = i == 0 ? 0 : records[i - 1].end;
    PublishedIds(std::string_view(batch).substr(from, records[i].end - from),
                 records[i].segment, to, recounts);
    records[i].segment = to;  // written again after a failure, it moves on
  }

  mu_.Lock();
  if (!recounts.empty()) RecountLocked(recounts);
  records_ += durable_upto - (first - 1);
  bytes_ += bytes;
  syncs_ += syncs;
  SetSyncedLocked(synced_upto);
  if (durable_upto > written_lsn_) written_lsn_ = durable_upto;
  while (!dedup_changes_.empty() &&
         dedup_changes_.front().lsn <= written_lsn_) {
    dedup_changes_.pop_front();
  }
  if (!s.ok() && durable_upto < last) {
    // Records of an abandoned segment written again were written once:
    // their write stays confirmed, and only their sync failed (again).
    const uint64_t from = durable_upto + 1;
    if (written_lsn_ >= from) {
      RecordFailureLocked({from, std::min(last, written_lsn_), true, s});
    }
    if (last > written_lsn_) {
      RecordFailureLocked(
          {std::max(from, written_lsn_ + 1), last, /*sync_only=*/false, s});
    }
    RequeueLocked(batch, records, durable_upto + 1 - first);
  }
  // What this call wrote after its last sync, records[unsynced_from..
  // written), joins unsynced_ (emptied if this call synced), unless the
  // sync below covers it.
  const bool keep_unsynced = options_.sync != SyncPolicy::kNever;
  if (synced) {
    unsynced_.clear();
    unsynced_records_.clear();
  }
  const size_t written = static_cast<size_t>(durable_upto + 1 - first);
  const size_t unsynced_begin =
      unsynced_from == 0 ? 0 : records[unsynced_from - 1].end;
  const size_t unsynced_end =
      unsynced_from < written ? records[written - 1].end : unsynced_begin;
  if (writer_ && !segments_.empty()) segments_.back().size = writer_->offset();
  const absl::Time now = absl::Now();
  bool sync =
      s.ok() && writer_ &&
      ((UnsyncedLocked() &&
        (sync_wanted_ > synced_lsn_ ||
         (interval && now - last_sync_ >= options_.sync_interval) ||
         writer_->offset() >= options_.segment_bytes)) ||
       (keep_unsynced && unsynced_.size() + (unsynced_end - unsynced_begin) >=
                             kMaxUnsyncedBytes));
  bool synced_all = false;
  if (sync) {
    const uint64_t target = written_lsn_;
    mu_.Unlock();
    s = writer_->Sync();
    mu_.Lock();
    if (s.ok()) {
      ++syncs_;
      last_sync_ = now;
      last_sync_took_ = absl::Now() - now;
      group_size_ = sync_waiters_.size();
      SetSyncedLocked(target);
      unsynced_.clear();
      unsynced_records_.clear();
      synced_all = true;
    }
  }
  if (keep_unsynced && !synced_all && unsynced_begin < unsynced_end) {
    const size_t base = unsynced_.size();
    unsynced_.append(batch, unsynced_begin, unsynced_end - unsynced_begin);
    for (size_t i = unsynced_from; i < written; ++i) {
      unsynced_records_.push_back(records[i]);
      unsynced_records_.back().end = base + records[i].end - unsynced_begin;
    }
  }
  if (writer_ && (!s.ok() || writer_->offset() >= options_.segment_bytes)) {
    // Abandon a failed segment; close a full one. The next write starts a
    // new segment.
    if (!s.ok()) {
      // What the abandoned segment holds beyond its last sync is never
      // synced: a later segment's sync must not confirm it.
      const uint64_t from = std::max(synced_lsn_, abandoned_lsn_) + 1;
      if (written_lsn_ >= from) {
        RecordFailureLocked({from, written_lsn_, /*sync_only=*/true, s});
        segments_held_ = true;
      }
      abandoned_lsn_ = written_lsn_;
      // They are written again, ahead of the records of a failed write, as
      // those are: their waiters were told of the failure, but later
      // records must not be durable without them.
      if (!unsynced_records_.empty()) {
        RequeueLocked(unsynced_, unsynced_records_, 0);
        unsynced_.clear();
        unsynced_records_.clear();
      }
    }
    mu_.Unlock();
    if (s.ok()) (void)file_->Close();
    writer_.reset();
    file_.reset();
    mu_.Lock();
  }
  io_busy_ = false;
  writes_done_.fetch_add(1, std::memory_order_release);
  CollectDoneLocked(done);
  done_cv_.SignalAll();
  // The background thread writes what callers that do not wait
  // (PublishAsync, settles) appended while this thread wrote, unless a
  // thread waiting for a sync will (after gathering its group), and
  // compacts once a segment is full or a new one started: it may have
  // looked while the writer was busy and gone back to sleep.
  // Under kInterval it also syncs what this write left unsynced: a caller
  // that wrote its own record leaves the sync to it, and it may sleep with
  // no deadline.
  if (bg_sleeping_ &&
      ((WorkLocked() && sync_waiters_.empty()) || CompactionDueLocked() ||
       (!bg_timed_ && options_.sync == SyncPolicy::kInterval &&
        UnsyncedLocked()))) {
    bg_cv_.Signal();
  }
}

void Wal::RecountLocked(const std::vector<Recount>& moves) {
  for (const Recount& m : moves) {
    Entry* entry = live_.Find(m.msg_id);
    if (entry != nullptr && entry->segment == m.from) {
      CountAgainstLocked(*entry, m.to, entry->bytes);
    }
  }
}

void Wal::CountAgainstLocked(Entry& entry, uint64_t segment, uint32_t bytes) {
  if (Segment* s = FindSegmentLocked(entry.segment)) {
    --s->live;
    s->live_bytes -= entry.bytes;
  }
  entry.segment = segment;
  entry.bytes = bytes;
  if (Segment* s = FindSegmentLocked(segment)) {
    ++s->live;
    s->live_bytes += entry.bytes;
  }
}

void Wal::RequeueLocked(const std::string& batch,
                        const std::vector<PendingRecord>& records,
                        size_t from) {
  const size_t begin = from == 0 ? 0 : records[from - 1].end;
  const size_t bytes = batch.size() - begin;
  const size_t n = records.size() - from;
  pending_.insert(0, batch, begin, bytes);
  pending_records_.insert(pending_records_.begin(), records.begin() + from,
                          records.end());
  // Their ends were offsets in the batch; the others' move up by `bytes`.
  for (size_t i = 0; i < pending_records_.size(); ++i) {
    if (i < n) {
      pending_records_[i].end -= begin;
    } else {
      pending_records_[i].end += bytes;
    }
  }
  retry_records_ += n;
}

void Wal::CollectDoneLocked(Done& done) {
  // The callbacks still pending close ranks in place, in their order.
  size_t kept = 0;
  for (size_t i = 0; i < callbacks_.size(); ++i) {
    Callback& c = callbacks_[i];
    if (std::optional<absl::Status> s = DoneLocked(c.lsn, c.sync)) {
      done.emplace_back(std::move(c.done), *std::move(s));
    } else {
      if (kept != i) callbacks_[kept] = std::move(c);
      ++kept;
    }
  }
  callbacks_.erase(callbacks_.begin() + static_cast<ptrdiff_t>(kept),
                   callbacks_.end());
}

void Wal::RunDone(Done& done) {
  for (auto& [fn, status] : done) std::move(fn)(std::move(status));
  done.clear();
}

absl::Status Wal::Wait(const Ticket& ticket) {
  const uint64_t lsn = ticket.lsn;
  const bool sync = ticket.sync;
  if (ticket.joined &&
      SpinForSync(lsn, ticket.failures, ticket.writes, ticket.spin_until)) {
    // The gathering leader's sync covered it, and took it out of
    // sync_waiters_.
    return absl::OkStatus();
  }
  Done done;
  absl::Status result;
  mu_.Lock();
  if (sync && !ticket.registered && lsn > synced_lsn_) {
    AddSyncWaiterLocked(lsn);
  }
  const SteadyTime spin_until = sync ? SpinDeadlineLocked() : SteadyTime();
  for (;;) {
    if (std::optional<absl::Status> s = DoneLocked(lsn, sync)) {
      result = *std::move(s);
      break;
    }
    if (!io_busy_ && !gathering_ && WorkLocked()) {
      if (sync) GatherLocked();
      if (!io_busy_ && WorkLocked()) {
        LeadLocked(done);
      } else if (sync) {
        // Others waited while this thread gathered: one of them may lead.
        done_cv_.SignalAll();
      }
      continue;
    }
    if (spin_until != SteadyTime() && SteadyClock::now() < spin_until) {
      const uint64_t failures =
          failures_recorded_.load(std::memory_order_relaxed);
      const uint64_t writes = writes_done_.load(std::memory_order_relaxed);
      mu_.Unlock();
      if (SpinForSync(lsn, failures, writes, spin_until)) {
        // SetSyncedLocked took this thread's entry out of sync_waiters_.
        RunDone(done);
        return absl::OkStatus();
      }
      mu_.Lock();
      continue;
    }
    done_cv_.Wait(&mu_);
  }
  if (sync) {
    // Gone already when a sync covered it (or was never there).
    auto it = std::find(sync_waiters_.begin(), sync_waiters_.end(), lsn);
    if (it != sync_waiters_.end()) {
      sync_waiters_.erase(it);
      sync_waiter_count_.store(sync_waiters_.size(), std::memory_order_release);
    }
  }
  // A writer that finished while this thread waited left what others
  // appended meanwhile to the sync waiters (see LeadLocked). This one leaves
  // without writing when its record failed: if it was the last, the
  // background thread writes the rest.
  const bool wake =
      !result.ok() && bg_sleeping_ && sync_waiters_.empty() && WorkLocked();
  mu_.Unlock();
  if (wake) bg_cv_.Signal();
  RunDone(done);
  return result;
}

void Wal::SetSyncedLocked(uint64_t lsn) {
  if (lsn <= synced_lsn_) return;
  synced_lsn_ = lsn;
  std::erase_if(sync_waiters_, [lsn](uint64_t w) { return w <= lsn; });
  sync_waiter_count_.store(sync_waiters_.size(), std::memory_order_release);
  synced_hint_.store(lsn, std::memory_order_release);
}

Wal::SteadyTime Wal::SpinDeadlineLocked() const {
  if (!spin_for_sync_ || last_sync_took_ <= absl::ZeroDuration() ||
      last_sync_took_ > kMaxSpinSync) {
    return SteadyTime();
  }
  return SteadyClock::now() + absl::ToChronoNanoseconds(2 * last_sync_took_);
}

bool Wal::SpinForSync(uint64_t lsn, uint64_t failures, uint64_t writes,
                      SteadyTime until) const {
  int slow_yields = 0;
  for (int i = 0;; ++i) {
    // A failure that covers `lsn` is counted before a sync can pass it.
    if (synced_hint_.load(std::memory_order_acquire) >= lsn) {
      return failures_recorded_.load(std::memory_order_acquire) == failures;
    }
    if (failures_recorded_.load(std::memory_order_acquire) != failures ||
        writes_done_.load(std::memory_order_acquire) != writes) {
      return false;
    }
    if (i < kSpinPauses) {
      CpuRelax();
      continue;
    }
    const SteadyTime before = SteadyClock::now();
    if (before >= until) return false;
    std::this_thread::yield();
    if (SteadyClock::now() - before > kSlowYield &&
        ++slow_yields >= kMaxSlowYields) {
      return false;
    }
  }
}

void Wal::GatherLocked() {
  const size_t want = group_size_;
  if (want <= 1 || last_sync_took_ <= absl::ZeroDuration() ||
      sync_waiters_.size() >= want) {
    return;
  }
  GatherDeadline deadline(last_sync_took_, sync_waiters_.size(), absl::Now());
  gathering_ = true;
  if (spin_for_sync_) {
    // Spinning: its group spins for the sync too, so there are cores to
    // spare, and a wake-up here would delay every waiter's sync.
    mu_.Unlock();
    for (;;) {
      for (int i = 0; i < kGatherPauses; ++i) CpuRelax();
      const size_t seen = sync_waiter_count_.load(std::memory_order_acquire);
      if (seen >= want) break;
      const absl::Time now = absl::Now();
      if (now >= deadline.at() && deadline.Passed(seen, now)) break;
    }
    mu_.Lock();
  } else {
    // Woken once the group is complete.
    while (!stop_) {
      const bool timed_out = gather_cv_.WaitWithDeadline(&mu_, deadline.at());
      const size_t seen = sync_waiters_.size();
      if (seen >= want) break;
      if (timed_out && deadline.Passed(seen, absl::Now())) break;
    }
  }
  gathering_ = false;
}

void Wal::WhenDurable(uint64_t lsn, bool sync,
                      absl::AnyInvocable<void(absl::Status) &&> fn) {
  absl::Status now_status;
  {
    MutexLock l(&mu_);
    std::optional<absl::Status> s = DoneLocked(lsn, sync);
    if (!s.has_value()) {
      if (sync) sync_wanted_ = std::max(sync_wanted_, lsn);
      callbacks_.push_back({lsn, sync, std::move(fn)});
      if (bg_sleeping_) bg_cv_.Signal();
      return;
    }
    now_status = *std::move(s);
  }
  std::move(fn)(std::move(now_status));
}

void Wal::BackgroundLoop() {
  Done done;
  MutexLock l(&mu_);
  for (;;) {
    if (stop_) break;
    if (!io_busy_ && !gathering_ && WorkLocked()) {
      LeadLocked(done);
    } else if (!io_busy_ && options_.sync == SyncPolicy::kInterval &&
               UnsyncedLocked() &&
               absl::Now() - last_sync_ >= options_.sync_interval) {
      sync_wanted_ = std::max(sync_wanted_, written_lsn_);
      LeadLocked(done);
    } else if (!io_busy_ && CompactionDueLocked()) {
      CompactLocked(done);
    } else {
      bg_sleeping_ = true;
      bg_timed_ = options_.sync == SyncPolicy::kInterval && UnsyncedLocked();
      const absl::Time deadline = bg_timed_
                                      ? last_sync_ + options_.sync_interval
                                      : absl::InfiniteFuture();
      bg_cv_.WaitWithDeadline(&mu_, deadline);
      bg_sleeping_ = false;
    }
    if (!done.empty()) {
      mu_.Unlock();
      RunDone(done);
      mu_.Lock();
    }
  }
}

void Wal::CompactLocked(Done& done) {
  const Segment oldest = segments_.front();
  const std::string path = SegmentPath(oldest.number);
  if (oldest.live > 0) {
    // Write the live messages of the oldest segment again at the end.
    std::vector<uint64_t> moved;
    uint64_t first_rewrite = 0;
    mu_.Unlock();
    absl::Status s;
    {
      absl::StatusOr<std::unique_ptr<SequentialFile>> file =
          env_->NewSequentialFile(path);
      s = file.status();
      if (s.ok()) {
        log::Reader reader(file->get(), /*reporter=*/nullptr,
                           /*checksum=*/true,
                           /*initial_offset=*/0,
                           log::Reader::OnCorruption::kSkip);
        std::string scratch;
        std::string_view record;
        wal::Op op;
        wal::RecordBuilder out;
        while (reader.ReadRecord(&record, &scratch)) {
          wal::RecordReader ops(record);
          while (!ops.done()) {
            if (!ops.Next(&op).ok()) break;
            if (op.type != wal::OpType::kPublish) continue;
            MutexLock l(&mu_);
            const Entry* entry = live_.Find(op.msg_id);
            if (entry == nullptr || entry->segment != oldest.number) {
              continue;
            }
            std::vector<wal::Ref> refs(entry->refs.begin(), entry->refs.end());
            out.Publish(op.msg_id, op.exchange, op.routing_key, op.published_at,
                        op.message, refs);
            const uint64_t lsn = AppendLocked(out, /*own_sync=*/false);
            if (moved.empty()) first_rewrite = lsn;
            moved.push_back(op.msg_id);
            out.clear();
          }
        }
        s = reader.status();
      }
    }
    mu_.Lock();
    // The copies must be durable before the original goes: every one of
    // them, since another thread's batch may have taken (and failed) some.
    const uint64_t target = next_lsn_ - 1;
    absl::Status synced = SyncUpToLocked(target, done);
    if (synced.ok() && !moved.empty()) {
      if (std::optional<absl::Status> f = FailedLocked(first_rewrite, target)) {
        synced = *f;
      }
    }
    if (s.ok()) s = synced;
    if (!s.ok()) {
      // The copies may not be durable: the originals stay where they are.
      for (uint64_t id : moved) {
        Entry* entry = live_.Find(id);
        if (entry != nullptr && entry->segment != oldest.number) {
          CountAgainstLocked(*entry, oldest.number, entry->bytes);
        }
      }
      compact_failed_ = true;  // tried again once a new segment starts
      return;
    }
  }
  // Every message of the oldest segment is settled (or written again). The
  // records that settled or moved them must be durable before it goes. Some
  // may still be live (counted here while the segment was read, or whose
  // record's write failed and waits to be written again): then it stays
  // until the next segment starts.
  auto still_oldest_and_settled = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !segments_held_ && !segments_.empty() &&
           segments_.front().number == oldest.number &&
           segments_.front().live == 0;
  };
  if (still_oldest_and_settled()) {
    // The record that the segment may be gone is synced with them: recovery
    // tells a segment deleted here from one lost (see kSegments).
    wal::RecordBuilder gone;
    gone.Segments(oldest.number + 1);
    AppendLocked(gone, /*own_sync=*/false);
  }
  if (!SyncUpToLocked(next_lsn_ - 1, done).ok() ||
      !still_oldest_and_settled()) {
    compact_failed_ = true;  // tried again once a new segment starts
    return;
  }
  if (oldest.live > 0) ++compactions_;
  segments_.pop_front();
  mu_.Unlock();
  absl::Status s = env_->RemoveFile(path);
  if (absl::IsNotFound(s)) s = absl::OkStatus();  // removed by an earlier try
  const bool removed = s.ok();
  // A failed SyncDir leaves the removal undurable: after a power loss the
  // segment may come back, which replay handles (its messages are settled
  // by the later segments, which are all still there). The next segment's
  // start syncs the directory again.
  if (removed) (void)env_->SyncDir(options_.dir);
  mu_.Lock();
  if (!removed) {
    // Keep it in the model so the numbering stays contiguous; a later pass
    // tries again.
    Segment kept{oldest.number, oldest.size, 0, 0};
    kept.started = true;
    segments_.push_front(kept);
    compact_failed_ = true;
  }
}

absl::Status Wal::SyncUpToLocked(uint64_t target, Done& done) {
  sync_wanted_ = std::max(sync_wanted_, target);
  for (;;) {
    if (std::optional<absl::Status> r = DoneLocked(target, true)) return *r;
    if (!io_busy_ && WorkLocked()) {
      LeadLocked(done);
      continue;
    }
    done_cv_.Wait(&mu_);
  }
}

std::optional<absl::Status> Wal::FailedLocked(uint64_t first,
                                              uint64_t last) const {
  for (const Failure& f : failures_) {
    if (f.first <= last && first <= f.last) return f.status;
  }
  return ForgottenLocked(first, last, /*sync=*/true);
}

absl::Status Wal::Close() {
  {
    MutexLock l(&mu_);
    if (closed_) return absl::OkStatus();
    stop_ = true;
    settling_ = false;
  }
  bg_cv_.SignalAll();
  gather_cv_.SignalAll();
  if (background_.joinable()) background_.join();
  Done done;
  absl::Status result;
  {
    MutexLock l(&mu_);
    sync_wanted_ = std::max(sync_wanted_, next_lsn_ - 1);
    const uint64_t target = next_lsn_ - 1;
    retry_records_ = 0;  // records whose write failed get one more try
    for (;;) {
      if (!io_busy_ && pending_records_.size() > retry_records_) {
        LeadLocked(done);
        continue;
      }
      if (std::optional<absl::Status> s = DoneLocked(target, true)) {
        result = *s;
        break;
      }
      if (!io_busy_ && WorkLocked()) {
        LeadLocked(done);
        continue;
      }
      if (!io_busy_) break;  // nothing to write (never written)
      done_cv_.Wait(&mu_);
    }
    while (io_busy_) done_cv_.Wait(&mu_);
    closed_ = true;
    CollectDoneLocked(done);
  }
  RunDone(done);
  if (file_) {
    absl::Status s = file_->Close();
    if (result.ok()) result = s;
  }
  writer_.reset();
  file_.reset();
  if (lock_) (void)env_->UnlockFile(std::move(lock_));
  return result;
}

WalStats Wal::Stats() const {
  MutexLock l(&mu_);
  WalStats s;
  s.records = records_;
  s.bytes = bytes_;
  s.syncs = syncs_;
  s.segments = segments_.size();
  s.live_messages = live_.size();
  s.compactions = compactions_;
  s.segments_held = segments_held_;
  s.recovered_bytes = recovered_bytes_;
  s.skipped_bytes = skipped_bytes_;
  s.recovered_messages = recovered_messages_;
  return s;
}

}  // namespace warren::internal
