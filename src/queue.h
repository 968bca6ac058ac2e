// A queue: where routed messages wait for consumers.
//
// Storage, in the order a consumer is served:
//
//   returned_  messages put back (nack/reject with requeue, a closed
//              consumer), ordered by (priority desc, publish seq): they go
//              back to their original position, ahead of every message never
//              delivered. Behind the queue lock; `returned_count_` lets the
//              fast path skip the lock while it is empty.
//   rings_     one bounded lock-free MPMC ring per priority level (one level
//              for FIFO queues). Publishers push and consumers pop without a
//              lock.
//   spill_     when a ring is full but the length limit allows more, further
//              publishes of that level go to an overflow list behind the lock
//              until it drains (`spilling_` is set meanwhile, so one
//              publisher's messages never overtake each other).
//
// Consumers pull: `Take` pops from the storage above; a consumer that finds
// nothing registers a waiter and parks. A publisher that finds waiters after
// its push hands the head message to the longest-waiting eligible waiter, so
// waiting competing consumers are served in turn. The Dekker-style handshake
// (publisher: push, fence, load `waiting_`; waiter: increment `waiting_`,
// fence, re-check storage) guarantees that either the waiter sees the message
// or the publisher sees the waiter.

#ifndef WARREN_SRC_QUEUE_H_
#define WARREN_SRC_QUEUE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "envelope.h"
#include "sync.h"
#include "warren/mpmc_queue.h"
#include "warren/dead_letter.h"
#include "warren/options.h"
#include "warren/stats.h"

namespace warren::internal {

class ConsumerState;
class Queue;

// Where a queue's dead messages go: the broker, which republishes them to
// the queue's dead-letter exchange. Called with no queue or broker lock held.
class DeadLetterSink {
 public:
  virtual void DeadLetter(Queue& from, std::vector<NodePtr> nodes,
                          DeathReason reason) = 0;

 protected:
  ~DeadLetterSink() = default;
};

// Shared by the broker and its queues, which may outlive it (a consumer
// handle keeps its queue): the broker clears `sink` when it closes.
struct SinkHandle {
  SharedMutex mu;
  DeadLetterSink* sink ABSL_GUARDED_BY(mu) = nullptr;
};

// Thread-safe.
class Queue : public std::enable_shared_from_this<Queue> {
 public:
  Queue(std::string name, const QueueOptions& options,
        std::shared_ptr<SinkHandle> sink);
  ~Queue();
  Queue(const Queue&) = delete;
  Queue& operator=(const Queue&) = delete;

  const std::string& name() const { return name_; }
  const QueueOptions& options() const { return options_; }

  // --- Publishing -----------------------------------------------------------

  enum class EnqueueResult { kAccepted, kRefused, kClosed };

  // Adds a published message, applying the length limits and the overflow
  // policy. Messages the overflow policy gives up on (drop-head victims, or
  // the new message under reject-publish-dlx) are appended to `maxlen_dead`
  // for the caller to pass to DeadLetter once it holds no broker lock.
  EnqueueResult Enqueue(std::shared_ptr<const Envelope> envelope,
                        std::vector<NodePtr>* maxlen_dead);

  // Gives up on `nodes`: republishes them to the dead-letter exchange, or
  // drops (and counts) them when the queue has none. Call with no lock held.
  void DeadLetter(std::vector<NodePtr> nodes, DeathReason reason);
  void CountDeadLettered(uint64_t n) {
    consumer_side_.dead_lettered.fetch_add(n, std::memory_order_relaxed);
  }

  // --- Consuming ------------------------------------------------------------

  // Takes the next message for `consumer`. With `wait`, parks until one is
  // ready or `deadline` passes (kDeadlineExceeded); without, returns
  // kUnavailable when none is ready. kFailedPrecondition when the consumer
  // is cancelled or the queue's broker is closed; kNotFound when the queue
  // was deleted.
  absl::StatusOr<NodePtr> Take(const ConsumerState* consumer, bool wait,
                               absl::Time deadline);

  // Puts delivered messages back at their original positions.
  void Requeue(std::vector<NodePtr> nodes);

  // Takes back delivered messages: each is requeued, or dead-lettered with
  // reason `delivery_limit` when it has used up the queue's deliveries.
  void Return(std::vector<NodePtr> nodes);

  // Registers and unregisters a consumer (for single active consumer and the
  // consumer gauge). Unregistering wakes that consumer's waiters.
  void AddConsumer(const ConsumerState* consumer);
  void RemoveConsumer(const ConsumerState* consumer);

  // --- Management -----------------------------------------------------------

  // Removes every ready message; returns how many.
  uint64_t Purge();

  // Ends the queue: deleted (waiters get kNotFound) or its broker closed
  // (kFailedPrecondition). Ready messages are released. Idempotent.
  enum class EndReason { kDeleted, kBrokerClosed };
  uint64_t End(EndReason reason);

  // kOk while usable; otherwise why not.
  absl::Status CheckUsable() const;

  uint64_t ready() const {
    return ready_count_.load(std::memory_order_relaxed);
  }
  uint64_t consumer_count() const;
  QueueStats Stats() const;

  // Counters kept by consumers as they settle.
  void CountDelivered(bool redelivered) {
    consumer_side_.delivered.fetch_add(1, std::memory_order_relaxed);
    if (redelivered) {
      consumer_side_.redelivered.fetch_add(1, std::memory_order_relaxed);
    }
    consumer_side_.unacked.fetch_add(1, std::memory_order_relaxed);
  }
  void CountSettled(uint64_t n) {
    consumer_side_.unacked.fetch_sub(n, std::memory_order_relaxed);
  }
  void CountAcked(uint64_t n) {
    consumer_side_.acked.fetch_add(n, std::memory_order_relaxed);
  }
  void CountNacked(uint64_t n) {
    consumer_side_.nacked.fetch_add(n, std::memory_order_relaxed);
  }
  void CountRejected(uint64_t n) {
    consumer_side_.rejected.fetch_add(n, std::memory_order_relaxed);
  }
  void CountDropped(uint64_t n) {
    consumer_side_.dropped.fetch_add(n, std::memory_order_relaxed);
  }

 private:
  struct Waiter {
    const ConsumerState* consumer;
    CondVar cv;
    NodePtr node;        // set when a message was handed over
    bool queued = false;  // in waiters_
  };
  // (priority desc, seq asc): begin() is the next to deliver.
  using ReturnedKey = std::tuple<int, uint64_t>;

  // Reserves room for one message of `bytes` under the limits; false when
  // full.
  bool TryReserve(uint64_t bytes);
  // Pops the next message without the lock when nothing is returned or
  // spilled; otherwise takes the lock.
  NodePtr TakeAny();
  NodePtr TakeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Hands ready messages to eligible waiters, longest-waiting first.
  void HandOffLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WakeAllLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool EligibleLocked(const ConsumerState* consumer) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveWaiterLocked(Waiter* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status EndStatusLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnTaken(const QueuedMessage& node);
  // After a lock-free push: wakes a waiter if one may be parked.
  void MaybeHandOff();
  uint64_t DrainLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  NodePtr MakeNode(std::shared_ptr<const Envelope> envelope);

  // Constant after construction.
  const std::string name_;
  const QueueOptions options_;
  const std::shared_ptr<SinkHandle> sink_;
  const int levels_;  // priority levels: max_priority + 1
  std::vector<std::unique_ptr<MpmcQueue<NodePtr>>> rings_;

  // Lock-free state.
  alignas(kCacheLineSize) std::atomic<uint64_t> next_seq_{0};
  std::atomic<uint64_t> ready_count_{0};
  std::atomic<uint64_t> ready_bytes_{0};
  alignas(kCacheLineSize) std::atomic<uint64_t> returned_count_{0};
  std::atomic<bool> spilling_{false};
  std::atomic<uint32_t> waiting_{0};
  std::atomic<int> end_{0};  // 0 open, 1 deleted, 2 broker closed

  // Counters written on the publishing side.
  struct alignas(kCacheLineSize) PublisherCounters {
    std::atomic<uint64_t> published{0};
    std::atomic<uint64_t> refused{0};
  } publisher_side_;
  // Counters written on the consuming side.
  struct alignas(kCacheLineSize) ConsumerCounters {
    std::atomic<uint64_t> delivered{0};
    std::atomic<uint64_t> redelivered{0};
    std::atomic<uint64_t> unacked{0};
    std::atomic<uint64_t> acked{0};
    std::atomic<uint64_t> nacked{0};
    std::atomic<uint64_t> rejected{0};
    std::atomic<uint64_t> requeued{0};
    std::atomic<uint64_t> dropped{0};
    std::atomic<uint64_t> dead_lettered{0};
    std::atomic<uint64_t> purged{0};
  } consumer_side_;

  // State below is protected by mu_.
  mutable Mutex mu_;
  absl::btree_map<ReturnedKey, NodePtr> returned_ ABSL_GUARDED_BY(mu_);
  std::vector<std::deque<NodePtr>> spill_ ABSL_GUARDED_BY(mu_);
  std::vector<Waiter*> waiters_ ABSL_GUARDED_BY(mu_);
  // Registration order; front is the single active consumer.
  std::vector<const ConsumerState*> consumers_ ABSL_GUARDED_BY(mu_);
};

// Effective ring capacity for `options` (see QueueOptions::ring_capacity).
uint32_t RingCapacityFor(const QueueOptions& options);

}  // namespace warren::internal

#endif  // WARREN_SRC_QUEUE_H_
