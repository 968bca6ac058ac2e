// -----------------------------------------------------------------------------
// File: warren/options.h
// -----------------------------------------------------------------------------
//
// Plain option structs for every warren call that takes options, in the style
// of leveldb's `Options`/`WriteOptions`: each field's comment states its
// default, and they read well with designated initialisers.
//
//   * `BrokerOptions`    — for `Broker::Open` (clock, write-ahead log, sync
//                          policy).
//   * `ExchangeOptions`  — for `Broker::DeclareExchange`.
//   * `QueueOptions`     — for `Broker::DeclareQueue` (limits, overflow,
//                          priorities, single active consumer).
//   * `PublishOptions`   — per publish (mandatory, persistent, delay, sync).
//   * `ConsumeOptions`   — for `Broker::Consume` (prefetch).
//   * `SubscribeOptions` — for `Broker::Subscribe` (workers, prefetch).
//   * `DeleteQueueOptions`, `DeleteExchangeOptions` — conditional deletes.
//
// Example:
//
//   broker->DeclareQueue("email", {.max_length = 10'000,
//                                  .overflow = warren::Overflow::kDropHead});
//   auto consumer = broker->Consume("email", {.prefetch = 10});

#ifndef WARREN_OPTIONS_H_
#define WARREN_OPTIONS_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "absl/time/time.h"
#include "warren/clock.h"
#include "warren/retry.h"

namespace warren {

// The four AMQP exchange types.
enum class ExchangeType {
  kDirect,   // routing key equals binding key
  kFanout,   // every binding, keys ignored
  kTopic,    // dot-separated words with `*` (one word) and `#` (zero or more)
  kHeaders,  // message headers against binding arguments (`x-match`)
};

// What a queue does when a publish would exceed its length limit.
enum class Overflow {
  // The new message is refused; the publisher is told (default).
  kRejectPublish,
  // The head (the oldest ready message) is dead-lettered (reason `maxlen`),
  // or dropped when the queue has no dead-letter exchange, to make room. In a
  // priority queue the head is the next message to be delivered, the oldest
  // of the highest priority, as in RabbitMQ.
  kDropHead,
  // The new message is refused and dead-lettered (reason `maxlen`).
  kRejectPublishDlx,
  // The publisher waits for room (backpressure) up to its
  // PublishOptions::timeout, then gets kDeadlineExceeded. A message larger
  // than max_length_bytes, for which no room can ever come, is refused at
  // once as under kRejectPublish.
  kBlock,
};

// When a write-ahead log record is durable enough to confirm the publish (or
// return from the ack) that wrote it. See the README's "Choosing a sync
// policy" for what each survives.
enum class SyncPolicy {
  // Confirmed once written to the operating system (survives kill -9 of the
  // process, not a power loss); synced only when a segment is full and at
  // Close.
  kNever,
  // As kNever, and the log is synced at least every
  // BrokerOptions::sync_interval: a power loss loses at most about that much.
  kInterval,
  // Confirmed once synced (fdatasync); the log's writer thread syncs once for
  // everything written since its last sync, so concurrent publishers share
  // one sync (survives a power loss).
  kGroupCommit,
  // Confirmed once synced by a sync of its own: the writer syncs right after
  // each such record (survives a power loss; the slowest policy).
  kEveryPublish,
};

// What recovery does with damage in the middle of the log.
enum class OnCorruption {
  // Broker::Open fails with kDataLoss naming the file and byte range.
  kFail,
  // The damaged range is skipped (and counted in WalStats); recovery goes on
  // with the next valid record. Messages in it are lost.
  kSkip,
};

struct BrokerOptions {
  // Directory of the write-ahead log, created if missing (its parent must
  // exist). Empty: the broker is purely in memory. With a directory, durable
  // exchanges, queues and bindings, and persistent messages in durable
  // queues, survive a restart or a crash; the directory is locked against a
  // second broker. Default: "" (in memory).
  std::string wal_dir;
  // Where TTLs, retry backoff, leases and delays take their time from. Not
  // owned; must outlive the broker and every consumer made by it. With a
  // ManualClock, timed work runs on the thread that advances the clock.
  // Default: nullptr (SystemClock::Default()).
  Clock* clock = nullptr;
  // When publishes are confirmed and acks return (with a WAL).
  // Default: kGroupCommit.
  SyncPolicy sync = SyncPolicy::kGroupCommit;
  // Longest time between syncs under SyncPolicy::kInterval (real time).
  // Default: 100 ms.
  absl::Duration sync_interval = absl::Milliseconds(100);
  // Size at which the log moves on to a new segment file. Default: 64 MiB.
  uint64_t wal_segment_bytes = uint64_t{64} << 20;
  // Damage in the middle of the log, at Open. Default: kFail.
  OnCorruption on_corruption = OnCorruption::kFail;
};

struct ExchangeOptions {
  // Survives a restart when the broker has a WAL. Default: false.
  bool durable = false;
  // Deleted when its last binding (as a source) is removed. Default: false.
  bool auto_delete = false;
  // Cannot be published to directly, only through exchange-to-exchange
  // bindings. Default: false.
  bool internal = false;
  // Exchange that receives the messages this exchange's own bindings match
  // nothing for (no queue and no exchange), also when this exchange is
  // reached through an exchange-to-exchange binding. It need not exist when
  // declared; a missing alternate exchange routes nothing.
  // Default: "" (none).
  std::string alternate_exchange;

  friend bool operator==(const ExchangeOptions&,
                         const ExchangeOptions&) = default;
};

struct QueueOptions {
  // Survives a restart when the broker has a WAL. Default: false.
  bool durable = false;
  // Deleted when its last consumer goes away (after having had one).
  // Default: false.
  bool auto_delete = false;
  // Maximum number of ready messages (unacked ones do not count). 0 means
  // unlimited. Default: 0.
  uint64_t max_length = 0;
  // Maximum total body bytes of ready messages. 0 means unlimited.
  // Default: 0.
  uint64_t max_length_bytes = 0;
  // What a publish beyond the limits does. Default: kRejectPublish.
  Overflow overflow = Overflow::kRejectPublish;
  // Highest message priority honoured (1..10); 0 makes a plain FIFO queue.
  // Default: 0.
  uint8_t max_priority = 0;
  // Only one consumer receives at a time; the next registered consumer takes
  // over when it is cancelled or closed. Default: false.
  bool single_active_consumer = false;
  // Exchange that receives this queue's dead messages (rejected without
  // requeue, expired, pushed out by a limit, out of attempts); "" is the
  // default exchange. A dead-letter exchange that does not exist drops the
  // message and counts it. Default: none.
  std::optional<std::string> dead_letter_exchange;
  // Routing key for dead-lettered messages. Default: the key the message was
  // published with.
  std::optional<std::string> dead_letter_routing_key;
  // Deliveries after which a returned message (nack/reject with requeue, a
  // closed consumer) is dead-lettered with reason `delivery_limit` instead
  // of requeued. 0 means unlimited. Default: 0.
  uint32_t delivery_limit = 0;
  // Redelivery with backoff after a nack or reject with requeue; attempts
  // exhausted dead-letter with reason `delivery_limit`. Replaces
  // delivery_limit. Default: none (requeue at once).
  std::optional<RetryPolicy> retry;
  // Time-to-live of every message in the queue, counted from its publish; a
  // message's own `expiration` applies when lower. An expired message is
  // never delivered; it is dead-lettered (reason `expired`) promptly, wherever
  // it is in the queue. Default: none.
  std::optional<absl::Duration> message_ttl;
  // Lease on each delivery: one not settled (or extended) within it goes back
  // to the queue as a failed attempt, and a late settle fails. A consumer's
  // own ack_deadline overrides it. Default: none.
  std::optional<absl::Duration> ack_deadline;
  // Deduplication on `message_id`: a publish whose id was accepted within
  // this window is accepted and dropped (counted as `deduplicated`).
  // Default: zero (off).
  absl::Duration dedup_window = absl::ZeroDuration();
  // Queue expiry: the queue is deleted once it has had no consumer, no
  // receive and no redeclare for this long (more than zero, as RabbitMQ's
  // x-expires). Default: none.
  std::optional<absl::Duration> expires;
  // Slots in the lock-free ring that holds ready messages; rounded up to a
  // power of two. Ready messages beyond it wait in an overflow list behind the
  // queue's lock. 0 picks min(max_length, 4096), at least 64. Default: 0.
  uint32_t ring_capacity = 0;

  friend bool operator==(const QueueOptions&, const QueueOptions&) = default;
};

struct PublishOptions {
  // Logged to the write-ahead log in every durable queue it reaches, so it
  // survives a restart (AMQP delivery mode 2). Ignored without a WAL and by
  // queues that are not durable. Default: false (transient).
  bool persistent = false;
  // Overrides BrokerOptions::sync for this publish's confirm (e.g.
  // kEveryPublish for one important message on a kNever broker).
  // Default: the broker's policy.
  std::optional<SyncPolicy> sync;
  // An unroutable message is handed back in `PublishOutcome::returned`
  // instead of being dropped. Default: false.
  bool mandatory = false;
  // Consumers see the message only after this delay (per message: a short
  // delay is never stuck behind a long one). It meets the queue's length
  // limits when the delay is over (see the README). Default: zero.
  absl::Duration delay = absl::ZeroDuration();
  // How long the publisher may wait for room in a full queue whose overflow
  // is kBlock, in real time. Default: infinite.
  absl::Duration timeout = absl::InfiniteDuration();
};

struct ConsumeOptions {
  // Most deliveries this consumer may hold unacked; 0 means unlimited.
  // Default: 0.
  uint32_t prefetch = 0;
  // A label shown in statistics and errors. Default: "" (a generated tag).
  std::string tag;
  // Lease on each delivery (see QueueOptions::ack_deadline); overrides the
  // queue's. Default: the queue's.
  std::optional<absl::Duration> ack_deadline;
};

struct SubscribeOptions {
  // Worker threads that run the handler, owned by the subscription.
  // Default: 1.
  uint32_t workers = 1;
  // Most deliveries the subscription holds unacked (those being handled and
  // those waiting for a worker); 0 means `workers`. Default: 0.
  uint32_t prefetch = 0;
  // A label shown in statistics and errors. Default: "" (a generated tag).
  std::string tag;
  // Lease on each delivery, as ConsumeOptions::ack_deadline.
  std::optional<absl::Duration> ack_deadline;
};

struct DeleteQueueOptions {
  // Refuse (kFailedPrecondition) when the queue has consumers.
  bool if_unused = false;
  // Refuse (kFailedPrecondition) when the queue has ready messages.
  bool if_empty = false;
};

struct DeleteExchangeOptions {
  // Refuse (kFailedPrecondition) when the exchange is the source of a binding.
  bool if_unused = false;
};

}  // namespace warren

#endif  // WARREN_OPTIONS_H_
