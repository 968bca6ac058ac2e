// The published form of a message, shared by every queue a publish reaches.

#ifndef WARREN_SRC_ENVELOPE_H_
#define WARREN_SRC_ENVELOPE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "pool.h"
#include "warren/message.h"

namespace warren::internal {

class Wal;

// A published message with the exchange and routing key it was published
// with. Immutable once made; one instance is shared (by std::shared_ptr) by
// every queue the publish reached, so the body is never copied per queue.
struct Envelope {
  Envelope(Message&& m, std::string&& ex, std::string&& key, absl::Time at,
           bool durable, uint64_t id = 0, std::shared_ptr<Wal> log = nullptr)
      : message(std::move(m)),
        exchange(std::move(ex)),
        routing_key(std::move(key)),
        published_at(at),
        persistent(durable),
        wal_id(id),
        wal(std::move(log)) {}

  const Message message;
  const std::string exchange;
  const std::string routing_key;
  // On the broker's clock; TTLs count from here.
  const absl::Time published_at;
  // Published persistent (PublishOptions::persistent), or moved from a
  // message that was: a copy that reaches a durable queue is logged, even
  // when this one reached none.
  const bool persistent;
  // A persistent message's id in the write-ahead log, and the log; 0 and
  // null for a transient message.
  const uint64_t wal_id;
  const std::shared_ptr<Wal> wal;
};

// One message's place in one queue. Owned by exactly one holder at a time:
// the queue (ready), or the consumer that holds the delivery (unacked).
struct QueuedMessage {
  QueuedMessage() = default;
  QueuedMessage(const QueuedMessage&) = delete;
  QueuedMessage& operator=(const QueuedMessage&) = delete;
  // A persistent message leaving a durable queue for good logs its settle.
  ~QueuedMessage();

  std::shared_ptr<const Envelope> envelope;
  // Position in the queue's publish order; a returned message keeps it, which
  // is what puts it back at its original position.
  uint64_t seq = 0;
  // Deliveries so far; the next delivery's `attempt` is this plus one.
  uint32_t deliveries = 0;
  // Effective priority (clamped to the queue's maximum); 0 in FIFO queues.
  uint8_t priority = 0;
  // When its time-to-live runs out; InfiniteFuture() when it has none.
  absl::Time expires_at = absl::InfiniteFuture();
  // The durable queue's id in the write-ahead log while this node's place in
  // it is logged (a persistent message in a durable queue); 0 otherwise, or
  // once its settle is logged by other means.
  uint32_t wal_queue = 0;

  bool has_expiry() const { return expires_at != absl::InfiniteFuture(); }

  uint64_t body_size() const { return envelope->message.body().size(); }
};

// Nodes come from a pool: no heap allocation per message in steady state.
using NodePtr = std::unique_ptr<QueuedMessage, PoolDelete<QueuedMessage>>;

inline NodePtr NewNode() { return MakePooled<QueuedMessage>(); }

// Makes the shared envelope of a publish from a pooled block (the body and
// names longer than std::string's inline capacity are the only other
// allocations).
inline std::shared_ptr<const Envelope> MakeEnvelope(
    Message&& m, std::string&& exchange, std::string&& routing_key,
    absl::Time at, bool persistent, uint64_t wal_id = 0,
    std::shared_ptr<Wal> wal = nullptr) {
  return std::allocate_shared<Envelope>(
      PoolAllocator<Envelope>(), std::move(m), std::move(exchange),
      std::move(routing_key), at, persistent, wal_id, std::move(wal));
}

}  // namespace warren::internal

#endif  // WARREN_SRC_ENVELOPE_H_
