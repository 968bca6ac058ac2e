// The records of warren's write-ahead log: what the broker logs, and how it
// is encoded inside one log record (a user record of log_format.h).
//
// Grammar. Every log record is a batch of operations, applied all or none at
// recovery (a record is either read whole or not at all):
//
//   record     := op+
//   op         := op_type:u8 fields                    (fields by type below)
//   varint     := LEB128 unsigned, at most 10 bytes
//   svarint    := zigzag-encoded varint
//   string     := varint(length) byte[length]
//   time       := svarint: 0 is "none"; else microseconds since the Unix
//                 epoch, plus one from the epoch on (t >= 0 is t + 1)
//   duration   := svarint microseconds; -1 is "none" (optional absent)
//
//   kExchange       = 1  name:string type:u8 flags:u8 alternate:string
//                        (flags: 1 durable, 2 auto_delete, 4 internal)
//   kDeleteExchange = 2  name:string
//   kQueue          = 3  queue_id:varint name:string queue_options
//   kDeleteQueue    = 4  queue_id:varint
//   kBind           = 5  dest_queue_id:varint dest_exchange:string
//                        source:string key:string arguments:headers
//                        (dest_queue_id 0: the destination is the exchange)
//   kUnbind         = 6  as kBind
//   kPublish        = 7  msg_id:varint exchange:string routing_key:string
//                        published_at:time message nrefs:varint ref*
//     ref           :=   queue_id:varint deliveries:varint ready_at:time
//                        (ready_at: a delayed or retrying message's time)
//   kSettle         = 8  queue_id:varint n:varint msg_id:varint{n}
//   kDelivered      = 9  queue_id:varint msg_id:varint deliveries:varint
//   kRetry          = 10 queue_id:varint msg_id:varint ready_at:time
//   kDedup          = 11 queue_id:varint message_id:string until:time
//   kCheckpoint     = 12 next_msg_id:varint next_queue_id:varint
//   kSegments       = 13 oldest:varint
//   kFormat         = 14 format:varint
//
//   message        := body:string properties
//   properties     := message_id correlation_id content_type
//                     content_encoding reply_to type app_id user_id (strings)
//                     timestamp:time-or-absent priority:i16(-1 absent)
//                     expiration:duration headers
//   headers        := n:varint (name:string value){n}
//   value          := kind:u8 payload (void: none; bool: u8; int: svarint;
//                     double: 8 bytes LE; string, bytes: string;
//                     list: n:varint value{n}; table: headers)
//   queue_options  := flags:u8 (1 durable, 2 auto_delete, 4 single_active,
//                     8 has_dlx, 16 has_dl_key, 32 has_retry)
//                     max_length:varint max_length_bytes:varint overflow:u8
//                     max_priority:u8 [dlx:string] [dl_key:string]
//                     delivery_limit:varint [retry_policy] message_ttl:duration
//                     ack_deadline:duration dedup_window:duration
//                     expires:duration ring_capacity:varint
//   retry_policy   := max_attempts:varint backoff:u8 initial_delay:duration
//                     multiplier:f64 max_delay:duration jitter:u8
//                     jitter_ratio:f64 seed:u64
//
// Meaning at recovery (records replayed in log order):
//   * kPublish sets the message's body and properties, and the references of
//     the queues it names (deliveries and retry times included); a queue it
//     does not name keeps its reference to an already live message. A
//     compaction rewrites a live message as a new kPublish naming all its
//     current references; a move that no queue took logs the message again
//     for its source queue alone (see SetRefs), and the earlier record, which
//     names the others, stays needed (see NamesEvery).
//   * kSettle removes a queue's reference; a message with none is gone. A
//     settle of an unknown message is ignored (its publish was compacted
//     away after it was settled).
//   * kDelivered records the queue's deliveries of the message so far (it
//     comes back redelivered): the count only rises, so a record written
//     twice (again after a failed write) or two deliveries logged out of
//     order count as they happened.
//   * kFormat names the log format the segment is written in (kLogFormat
//     below): the first op of a segment's first record. A segment without
//     one was written before the format had a number, and is format 1.
//     Recovery refuses a format newer than it reads (kFailedPrecondition,
//     even where it would skip corruption): a newer warren may give the
//     same bytes another meaning.
//   * A segment's first record is a checkpoint: kFormat, kCheckpoint, then
//     the whole durable topology (kExchange, kQueue, kBind) and the
//     deduplication entries still in their window (kDedup); it replaces the
//     topology read so far. Right after kCheckpoint comes kSegments naming the
//     oldest segment there was then.
//   * kSegments says that every segment from `oldest` up to the one holding
//     it must exist: those below may have been deleted. It is written in
//     each checkpoint, and synced on its own before the oldest segment is
//     deleted (naming the next one). Recovery takes the greatest `oldest`
//     it reads; a segment file missing from there on is kDataLoss, never a
//     silent loss of what it held.

#ifndef WARREN_SRC_WAL_RECORDS_H_
#define WARREN_SRC_WAL_RECORDS_H_

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "warren/broker.h"
#include "warren/message.h"
#include "warren/options.h"

namespace warren::internal::wal {

enum class OpType : uint8_t {
  kExchange = 1,
  kDeleteExchange = 2,
  kQueue = 3,
  kDeleteQueue = 4,
  kBind = 5,
  kUnbind = 6,
  kPublish = 7,
  kSettle = 8,
  kDelivered = 9,
  kRetry = 10,
  kDedup = 11,
  kCheckpoint = 12,
  kSegments = 13,
  kFormat = 14,
};

// The log format this build writes, and the newest it reads. Raise it (and
// keep reading the older ones) whenever a change gives bytes that an older
// build would accept a different meaning.
inline constexpr uint32_t kLogFormat = 1;

// One queue's hold on a logged message.
struct Ref {
  uint32_t queue_id = 0;
  uint32_t deliveries = 0;
  absl::Time ready_at = absl::InfinitePast();  // InfinitePast: ready now
};

// Applies a kDelivered (raises the deliveries to `deliveries`) or kRetry
// (sets ready_at to `at`) op for queue `queue_id` to a message's refs. Used by
// replay and by the log's live model, so both read the ops alike.
inline void ApplyToRefs(OpType type, uint32_t queue_id, absl::Time at,
                        uint32_t deliveries, absl::Span<Ref> refs) {
  for (Ref& ref : refs) {
    if (ref.queue_id != queue_id) continue;
    if (type == OpType::kDelivered) {
      ref.deliveries = std::max(ref.deliveries, deliveries);
    } else {
      ref.ready_at = at;
    }
  }
}

// Whether a kPublish op names every queue of `refs` (a message's references
// before the op). Only then does its record alone restore the message, so
// that replay and the log's live model count the message against it (and
// the segments of its earlier records may go); a move that no queue took
// names the source queue alone and leaves the message counted where it was.
template <typename Refs>
bool NamesEvery(absl::Span<const Ref> op_refs, const Refs& refs) {
  for (const Ref& ref : refs) {
    if (std::none_of(op_refs.begin(), op_refs.end(), [&](const Ref& r) {
          return r.queue_id == ref.queue_id;
        })) {
      return false;
    }
  }
  return true;
}

// Applies a kPublish op's references to a message's: each queue the op names
// gets the op's reference, the others keep theirs (a new message has none).
// Used by replay and by the log's live model, so both read the ops alike.
template <typename Refs>
void SetRefs(absl::Span<const Ref> from, Refs& refs) {
  for (const Ref& ref : from) {
    auto it = std::find_if(refs.begin(), refs.end(), [&](const Ref& r) {
      return r.queue_id == ref.queue_id;
    });
    if (it != refs.end()) {
      *it = ref;
    } else {
      refs.push_back(ref);
    }
  }
}

// A binding between durable ends. dest_queue_id 0: to `dest_exchange`.
struct BindingOp {
  uint32_t dest_queue_id = 0;
  std::string dest_exchange;
  std::string source;
  std::string key;
  BindingArguments arguments;
  friend bool operator==(const BindingOp&, const BindingOp&) = default;
};

// What one op of a record does to the log's own model of what is live (for
// checkpoints and compaction); noted by RecordBuilder as it encodes.
struct Effect {
  OpType type{};
  uint32_t queue_id = 0;
  uint64_t msg_id = 0;
  // kPublish: published_at; kRetry: ready_at; kDedup: until.
  absl::Time at;
  uint32_t deliveries = 0;  // kDelivered
  // kExchange, kDeleteExchange: the exchange; kQueue: the queue;
  // kPublish, kDedup: the message id (Properties::message_id).
  std::string name;
  // The op's bytes within the record: [begin, end).
  size_t begin = 0;
  size_t end = 0;
  std::vector<Ref> refs;                               // kPublish
  std::vector<uint64_t> ids;                           // kSettle
  BindingOp binding;                                   // kBind, kUnbind
  absl::Duration dedup_window = absl::ZeroDuration();  // kQueue

  // Makes this a fresh effect of `t` (begin and end are the builder's),
  // keeping the buffers of its strings and vectors for reuse.
  void Reset(OpType t) {
    type = t;
    queue_id = 0;
    msg_id = 0;
    at = absl::Time();
    name.clear();
    refs.clear();
    ids.clear();
    binding.dest_queue_id = 0;
    binding.dest_exchange.clear();
    binding.source.clear();
    binding.key.clear();
    binding.arguments.clear();
    dedup_window = absl::ZeroDuration();
  }
};

// Appends ops to a record. The record is `out()`; `effects()` lists its ops.
class RecordBuilder {
 public:
  void Exchange(std::string_view name, ExchangeType type,
                const ExchangeOptions& options);
  void DeleteExchange(std::string_view name);
  void Queue(uint32_t id, std::string_view name, const QueueOptions& options);
  void DeleteQueue(uint32_t id);
  void Bind(const BindingOp& b, bool bind);
  // The message's fields, then its references.
  void Publish(uint64_t msg_id, std::string_view exchange,
               std::string_view routing_key, absl::Time published_at,
               const Message& message, const std::vector<Ref>& refs);
  void Settle(uint32_t queue_id, const uint64_t* ids, size_t n);
  // `deliveries`: the queue's deliveries of the message, this one included.
  void Delivered(uint32_t queue_id, uint64_t msg_id, uint32_t deliveries);
  void Retry(uint32_t queue_id, uint64_t msg_id, absl::Time ready_at);
  void Dedup(uint32_t queue_id, std::string_view message_id, absl::Time until);
  void Checkpoint(uint64_t next_msg_id, uint32_t next_queue_id);
  void Segments(uint64_t oldest);
  void Format(uint32_t format);

  std::string& out() { return out_; }
  const std::string& out() const { return out_; }
  absl::Span<const Effect> effects() const {
    return absl::MakeConstSpan(effects_.data(), num_effects_);
  }
  bool empty() const { return out_.empty(); }
  // Keeps the buffers (the record's and its effects') for the next record.
  void clear() {
    out_.clear();
    num_effects_ = 0;
  }

 private:
  Effect& Begin(OpType type);
  void End() { effects_[num_effects_ - 1].end = out_.size(); }

  std::string out_;
  // The first num_effects_ are this record's; the rest are kept so that
  // their vectors and strings are reused rather than allocated per record.
  std::vector<Effect> effects_;
  size_t num_effects_ = 0;
};

// A decoded op; which fields are set depends on `type`.
struct Op {
  OpType type{};
  std::string name;  // exchange or queue name
  ExchangeType exchange_type{};
  ExchangeOptions exchange_options;
  uint32_t queue_id = 0;
  QueueOptions queue_options;
  BindingOp binding;
  uint64_t msg_id = 0;
  std::string exchange;
  std::string routing_key;
  absl::Time published_at;
  Message message;
  std::vector<Ref> refs;
  std::vector<uint64_t> ids;  // kSettle
  absl::Time at;              // kRetry ready_at, kDedup until
  uint32_t deliveries = 0;    // kDelivered
  uint64_t next_msg_id = 0;   // kCheckpoint
  uint32_t next_queue_id = 0;
  uint64_t oldest_segment = 0;  // kSegments
  uint32_t format = 0;          // kFormat
};

// Reads the ops of one record in order.
class RecordReader {
 public:
  explicit RecordReader(std::string_view record) : in_(record) {}
  bool done() const { return in_.empty(); }
  // The bytes not read yet: an op's size is the difference across Next.
  size_t remaining() const { return in_.size(); }
  // kDataLoss when the record does not parse (a checksummed record that does
  // not parse was written by a different program: never replayed).
  absl::Status Next(Op* op);

 private:
  std::string_view in_;
};

}  // namespace warren::internal::wal

#endif  // WARREN_SRC_WAL_RECORDS_H_
