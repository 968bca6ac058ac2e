// A queue: where routed messages wait for consumers.
//
// Storage, in the order a consumer is served (within one priority level):
//
//   returned_  messages back from consumers (nack/reject with requeue, a
//              closed consumer, an expired lease) and delayed or retried
//              messages whose time has come, ordered by (priority desc,
//              publish seq): they go back to their original position, ahead
//              of every message never delivered.
//   peeked_    per level, ring heads that Stats and Browse had to pop to see
//              them (a ring cannot be read in place), ordered by publish seq.
//              They were never delivered and are older than the rest of
//              their ring, so they are served after the returned messages
//              and before the ring, as if still in it.
//   rings_     one bounded lock-free MPMC ring per priority level (one level
//              for FIFO queues). Publishers push and consumers pop without a
//              lock.
//   spill_     an ordered set per level, behind the lock, for messages the
//              ring cannot take: the ring is full, or the message has a
//              time-to-live (so the expiry timer can remove it from the
//              middle). While anything is spilled, `spilling_` sends every
//              publish there too, so one publisher's messages never overtake
//              each other; the ring drains first, being older.
//
// Consumers pull: `Take` pops from the storage above; a consumer that finds
// nothing registers a waiter and parks. A publisher that finds waiters after
// its push hands the head message to the longest-waiting eligible waiter, so
// waiting competing consumers are served in turn. The Dekker-style handshake
// (publisher: push, fence, load `waiting_`; waiter: increment `waiting_`,
// fence, re-check storage) guarantees that either the waiter sees the message
// or the publisher sees the waiter.
//
// Timed work (delays, retry backoff, expiry) goes through the broker's
// TimerService, reached through the shared BrokerLink, whose callbacks hold
// the queue weakly.

#ifndef WARREN_SRC_QUEUE_H_
#define WARREN_SRC_QUEUE_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "envelope.h"
#include "str_util.h"
#include "sync.h"
#include "timer_service.h"
#include "warren/clock.h"
#include "warren/dead_letter.h"
#include "warren/mpmc_queue.h"
#include "warren/options.h"
#include "warren/stats.h"

namespace warren::internal {

class ConsumerState;
class Queue;
class Wal;

// What a queue asks of its broker, with no queue or broker lock held.
class QueueOwner {
 public:
  // Republishes `nodes` to `from`'s dead-letter exchange.
  virtual void DeadLetter(Queue& from, std::vector<NodePtr> nodes,
                          DeathReason reason) = 0;
  // Deletes `queue` if it is still unused for its `expires` time (checked
  // again under the broker's lock); false when it declined.
  virtual bool DeleteIdleQueue(Queue& queue) = 0;
  // Deletes `queue`, an auto-delete queue, if it still has no consumer
  // (checked again under the broker's lock).
  virtual void DeleteUnusedQueue(Queue& queue) = 0;

 protected:
  ~QueueOwner() = default;
};

// What a queue needs from its broker. Shared by the broker and its queues,
// which may outlive it (a consumer handle keeps its queue): the broker clears
// `owner` and `timers` when it closes, so whoever holds the matching lock can
// use them.
//
// Lock order: a queue's lock, then `timers_mu`, then the timer service's own
// lock. `mu` is taken with no queue lock held (dead-lettering publishes into
// other queues under it).
struct BrokerLink {
  BrokerLink(Clock* c, std::shared_ptr<Wal> w) : clock(c), wal(std::move(w)) {}
  // Constant: outlives the broker and its consumers (BrokerOptions::clock).
  Clock* const clock;
  // Constant: the write-ahead log, or null for an in-memory broker.
  const std::shared_ptr<Wal> wal;
  SharedMutex mu;
  QueueOwner* owner ABSL_GUARDED_BY(mu) = nullptr;
  // Set once the broker closes: its queues, deleted ones included, refuse
  // every call with kFailedPrecondition (Queue::CheckUsable).
  std::atomic<bool> closed{false};
  Mutex timers_mu;
  TimerService* timers ABSL_GUARDED_BY(timers_mu) = nullptr;
};

// Thread-safe.
class Queue : public std::enable_shared_from_this<Queue> {
 public:
  // `durable_id`: the queue's id in the write-ahead log when it is durable
  // and the broker has one, else 0.
  Queue(std::string name, const QueueOptions& options,
        std::shared_ptr<BrokerLink> link, uint32_t durable_id = 0);
  ~Queue();
  Queue(const Queue&) = delete;
  Queue& operator=(const Queue&) = delete;

  const std::string& name() const { return name_; }
  const QueueOptions& options() const { return options_; }
  const std::shared_ptr<BrokerLink>& link() const { return link_; }
  uint32_t durable_id() const { return durable_id_; }
  absl::Time Now() const { return link_->clock->Now(); }

  // --- Publishing -----------------------------------------------------------

  // kFull: the queue is full and its overflow is kBlock; the caller may wait
  // with EnqueueBlocking once it holds no broker lock.
  enum class EnqueueResult { kAccepted, kDuplicate, kRefused, kFull, kClosed };

  // Adds a published message, applying deduplication, the length limits and
  // the overflow policy; with a `delay`, the message becomes ready only
  // after it. Messages the overflow policy gives up on (drop-head victims,
  // or the new message under reject-publish-dlx) are appended to
  // `maxlen_dead` for the caller to pass to DeadLetter once it holds no
  // broker lock. `check_duplicate` false (a message that dead-lettering or
  // a redrive moves): its id is recorded as seen, and never makes it a
  // duplicate.
  EnqueueResult Enqueue(std::shared_ptr<const Envelope> envelope,
                        absl::Duration delay, std::vector<NodePtr>* maxlen_dead,
                        bool check_duplicate = true);

  // Enqueues into a full kBlock queue, waiting for room until `deadline`
  // (real time): kAccepted, kDuplicate, kClosed, or kRefused at the deadline.
  EnqueueResult EnqueueBlocking(std::shared_ptr<const Envelope> envelope,
                                absl::Time deadline);

  // Gives up on `nodes`: republishes them to the dead-letter exchange, or
  // drops (and counts) them when the queue has none. Call with no lock held.
  void DeadLetter(std::vector<NodePtr> nodes, DeathReason reason);

  // Dead-letters the expired messages that taking or handing over met.
  // Enqueue leaves them for its caller, which may hold the topology lock:
  // call this once no broker lock is held (cheap when there are none).
  void FlushExpired() ABSL_LOCKS_EXCLUDED(mu_);
  // The same, handing them to the caller (counted as expired) instead.
  std::vector<NodePtr> TakeExpired() ABSL_LOCKS_EXCLUDED(mu_);
  bool expired_pending() const {
    return expired_pending_.load(std::memory_order_acquire);
  }

  // Recovery: puts back a logged message with its deliveries so far, ready
  // now or at `ready_at` (length limits do not apply: it was accepted
  // before). A message delivered as often as the queue's delivery limit (or
  // retry policy's max_attempts) allows was held when the broker stopped: as
  // a consumer's close would, the restart gives up on it: it is returned,
  // for the caller to dead-letter (null otherwise). A delayed publish whose
  // delay is over waits for FinishRestore when the limits apply to it.
  // `returned`: a message ready now goes back among the returned messages
  // (ahead of the rest, in publish order) rather than behind them; the
  // caller says so for a message delivered before the restart and for
  // those published before one at its priority (see BrokerImpl::Restore).
  [[nodiscard]] NodePtr Restore(std::shared_ptr<const Envelope> envelope,
                                uint32_t deliveries, absl::Time ready_at,
                                bool returned);
  // The priority level a message takes in this queue.
  int LevelOf(const Message& message) const;
  // Recovery, once every message is restored: under kDropHead and
  // kRejectPublishDlx, the delayed publishes whose delay is over meet the
  // length limits, in the order their delays ended, counted against the
  // ready messages never delivered (see the README). Returns what they
  // refused or pushed out, for the caller to dead-letter (maxlen) once
  // every queue is restored.
  [[nodiscard]] std::vector<NodePtr> FinishRestore() ABSL_LOCKS_EXCLUDED(mu_);
  // Recovery: a message id seen within the deduplication window.
  void RestoreDedup(const std::string& message_id, absl::Time until);
  // When the deduplication window of `message_id` ends, if the queue
  // remembers it.
  std::optional<absl::Time> DedupUntil(const std::string& message_id)
      ABSL_LOCKS_EXCLUDED(dedup_mu_);

  // --- Consuming ------------------------------------------------------------

  // Takes the next message for `consumer`. With `wait`, parks until one is
  // ready or `deadline` (real time) passes (kDeadlineExceeded); without,
  // returns kUnavailable when none is ready. kFailedPrecondition when the
  // consumer is cancelled or the queue's broker is closed; kNotFound when the
  // queue was deleted.
  absl::StatusOr<NodePtr> Take(const ConsumerState* consumer, bool wait,
                               absl::Time deadline);

  // Why delivered messages come back.
  enum class ReturnKind {
    kRequeue,       // nack or reject with requeue: retry policy applies
    kClosed,        // the consumer closed while holding them
    kLeaseExpired,  // not settled within the ack deadline
    kUndelivered,   // taken for a consumer that closed before it got it
  };
  // Takes back delivered messages: each is requeued (after the retry
  // backoff, for kRequeue on a queue with a retry policy), or dead-lettered
  // with reason `delivery_limit` when it has used up its deliveries, or
  // `expired` when its time-to-live ran out meanwhile.
  void Return(std::vector<NodePtr> nodes, ReturnKind kind);

  // Registers and unregisters a consumer (for single active consumer and the
  // consumer gauge). Unregistering wakes that consumer's waiters.
  void AddConsumer(const ConsumerState* consumer);
  void RemoveConsumer(const ConsumerState* consumer);
  // Called, with no lock held, once RemoveConsumer has unregistered a
  // consumer (and, when it closed, it has handed back what it held): an
  // auto-delete queue left with no consumer is deleted.
  void ConsumerGone();

  // --- Management -----------------------------------------------------------

  // Removes every ready message; returns how many.
  uint64_t Purge();

  // Copies of up to `max` ready messages in delivery order, without
  // consuming them.
  std::vector<Message> Browse(size_t max);

  // Takes up to `max` ready messages out of the queue (for redrive), and
  // puts back those that could not move, at their original positions.
  std::vector<NodePtr> TakeForMove(size_t max);
  void PutBack(std::vector<NodePtr> nodes);

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
  // Not const: to find the oldest ready message it may move a ring's head
  // into the peeked set (its delivery order is unchanged).
  QueueStats Stats();

  // Queue expiry: marks the queue used now.
  void Touch();
  // True when the queue has had no consumer and no use for `expires`.
  bool IdleLongEnough() const;
  // Starts the idle check for a queue with `expires` (once it is shared).
  void StartExpiry();

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
  void CountAcked(uint64_t n) { Add(consumer_side_.acked, n); }
  void CountNacked(uint64_t n) { Add(consumer_side_.nacked, n); }
  void CountRejected(uint64_t n) { Add(consumer_side_.rejected, n); }
  void CountDropped(uint64_t n) { Add(consumer_side_.dropped, n); }
  void CountDeadLettered(uint64_t n) { Add(consumer_side_.dead_lettered, n); }
  void CountLeaseExpired(uint64_t n) { Add(consumer_side_.lease_expired, n); }
  // A publish that found the queue full and does not wait (dead-lettering
  // and redrive into a kBlock queue).
  void CountRefused() { Add(publisher_side_.refused, 1); }

 private:
  // Deliveries after which a message is given up on (0: no limit): the
  // retry policy's max_attempts, or the delivery limit.
  uint32_t DeliveryLimit() const;
  struct Waiter {
    const ConsumerState* consumer;
    CondVar cv;
    NodePtr node;         // set when a message was handed over
    bool queued = false;  // in waiters_
  };
  // (priority desc, seq asc): begin() is the next to deliver.
  using ReturnedKey = std::tuple<int, uint64_t>;
  // An entry of the expiry index: (expires_at, level, seq, in returned_).
  using ExpiryKey = std::tuple<absl::Time, int, uint64_t, bool>;

  static void Add(std::atomic<uint64_t>& counter, uint64_t n) {
    counter.fetch_add(n, std::memory_order_relaxed);
  }

  NodePtr MakeNode(std::shared_ptr<const Envelope> envelope);
  // Whether the message's id is seen within the window; if not, records it
  // with a window from `start`: the publish for a message the queue takes as
  // it is published, as the publish's record in the log counts it (so a
  // restart restores the same window); now for one that waited for room,
  // whose window the log records when the queue takes it.
  // With `check` false, only records it.
  bool IsDuplicate(const Envelope& envelope, absl::Time start,
                   bool check = true);
  // The same question, recording nothing.
  bool SeenWithinWindow(const Envelope& envelope)
      ABSL_LOCKS_EXCLUDED(dedup_mu_);
  void Unreserve(uint64_t bytes);
  // Enqueues a message whose room is reserved.
  // `dedup_start`: as for IsDuplicate (every queue but a drop-head one
  // records the id here, once the message has room).
  EnqueueResult EnqueueReserved(std::shared_ptr<const Envelope> envelope,
                                absl::Time dedup_start,
                                bool check_duplicate = true);
  void CheckIdle();
  // Reserves room for one message of `bytes` under the limits; false when
  // full. Never holds back room it does not keep, so a refusal needs no
  // NotifyRoom.
  bool TryReserve(uint64_t bytes);
  void OnTaken(const QueuedMessage& node);
  // Pops the next message without the lock when nothing is returned or
  // spilled; otherwise takes the lock.
  NodePtr TakeAny();
  // Takes the next ready message.
  NodePtr TakeLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Spills `node` (ready, room reserved) behind the lock.
  void SpillLocked(NodePtr node) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Puts `node` into returned_ (ready again); false when its time-to-live
  // ran out, in which case it is appended to expired_. `reserved`: its room
  // under the limits is already reserved (TryReserve).
  bool ReturnLocked(NodePtr node, bool reserved = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A delayed message whose delay is over meets the length limits: a
  // delayed publish (never delivered) under kDropHead makes room by giving
  // up on the oldest ready messages (appended to `maxlen_dead`), under
  // kRejectPublishDlx it is refused when full (appended to `maxlen_dead`).
  // Otherwise it goes in, over the limit if need be. Sets `*reserved` when
  // it reserved the message's room. kWait: under kDropHead, full with
  // nothing to drop yet (the room is held by messages on their way in or
  // out, see Enqueue); the caller lets go of mu_, which they may need, and
  // asks again.
  enum class Admission { kIn, kRefused, kWait };
  // Whether a delayed message whose delay is over meets the length limits:
  // a delayed publish (never delivered) in a queue with limits, under
  // kDropHead or kRejectPublishDlx. A returned or retried message is never
  // refused, and under kRejectPublish and kBlock the publisher, told the
  // message was accepted, can no longer be told otherwise.
  bool DelayedMeetsLimits(const QueuedMessage& node) const {
    return node.deliveries == 0 &&
           (options_.max_length != 0 || options_.max_length_bytes != 0) &&
           (options_.overflow == Overflow::kDropHead ||
            options_.overflow == Overflow::kRejectPublishDlx);
  }
  Admission AdmitDelayedLocked(NodePtr& node, bool* reserved,
                               std::vector<NodePtr>* maxlen_dead)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves the head of `level`'s ring into peeked_[level] and returns it;
  // nullptr when the ring is empty.
  const QueuedMessage* PeekRingLocked(int level)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Hands ready messages to eligible waiters, longest-waiting first.
  void HandOffLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void WakeAllLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool EligibleLocked(const ConsumerState* consumer) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RemoveWaiterLocked(Waiter* w) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // After a lock-free push: wakes a waiter if one may be parked.
  void MaybeHandOff();
  uint64_t DrainLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Expiry: the index of ready messages with a time-to-live, and one timer
  // for its earliest entry.
  void IndexExpiryLocked(const QueuedMessage& node, bool in_returned)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void UnindexExpiryLocked(const QueuedMessage& node, bool in_returned)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ArmExpiryTimerLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpireDue();
  void AddExpiredLocked(NodePtr node) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Wakes publishers waiting for room (overflow kBlock) after room was given
  // back.
  void NotifyRoom();

  // Timers: runs `fn` at `deadline` on the broker's timer service; false
  // (and `fn` is dropped) when the broker is gone.
  bool Schedule(absl::Time deadline, absl::AnyInvocable<void()> fn);
  // Holds `node` until `at`, then makes it ready at its original position;
  // if its time-to-live runs out first, expires it then (at once when it
  // already has: the caller flushes it with FlushExpired).
  void Delay(NodePtr node, absl::Time at);
  void OnDelayDone(NodePtr node);
  absl::Duration RetryDelay(const QueuedMessage& node);

  // Constant after construction.
  const std::string name_;
  const QueueOptions options_;
  const std::shared_ptr<BrokerLink> link_;
  const uint32_t durable_id_;
  const int levels_;  // priority levels: max_priority + 1
  std::vector<std::unique_ptr<MpmcQueue<NodePtr>>> rings_;

  // Lock-free state.
  alignas(kCacheLineSize) std::atomic<uint64_t> next_seq_{0};
  std::atomic<uint64_t> ready_count_{0};
  std::atomic<uint64_t> ready_bytes_{0};
  // With both length limits set, reservations check and take count and
  // bytes together under this lock, so that none sees another's half-made
  // reservation (TryReserve). Nothing is taken while it is held.
  Mutex reserve_mu_;
  // Messages in returned_ and peeked_: while any, they go before the rings,
  // so consumers take the lock.
  alignas(kCacheLineSize) std::atomic<uint64_t> ahead_count_{0};
  std::atomic<bool> spilling_{false};
  std::atomic<uint32_t> waiting_{0};
  std::atomic<int> end_{0};  // 0 open, 1 deleted, 2 broker closed
  std::atomic<uint64_t> delayed_{0};
  // expired_ is not empty.
  std::atomic<bool> expired_pending_{false};
  // Queue expiry: when the queue was last used, in the clock's
  // microseconds since the Unix epoch.
  std::atomic<int64_t> last_used_us_{0};
  // Publishers waiting for room (overflow kBlock).
  std::atomic<uint32_t> room_waiters_{0};
  Mutex room_mu_;
  CondVar room_cv_;

  // Counters written on the publishing side.
  struct alignas(kCacheLineSize) PublisherCounters {
    std::atomic<uint64_t> published{0};
    std::atomic<uint64_t> refused{0};
    std::atomic<uint64_t> deduplicated{0};
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
    std::atomic<uint64_t> expired{0};
    std::atomic<uint64_t> lease_expired{0};
  } consumer_side_;

  // State below is protected by mu_.
  mutable Mutex mu_;
  absl::btree_map<ReturnedKey, NodePtr> returned_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::btree_map<uint64_t, NodePtr>> peeked_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::btree_map<uint64_t, NodePtr>> spill_ ABSL_GUARDED_BY(mu_);
  size_t spilled_ ABSL_GUARDED_BY(mu_) = 0;
  absl::btree_set<ExpiryKey> expiry_ ABSL_GUARDED_BY(mu_);
  TimerService::TimerId expiry_timer_ ABSL_GUARDED_BY(mu_) =
      TimerService::kNoTimer;
  absl::Time expiry_timer_at_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  // Expired messages found while taking, to dead-letter after unlocking.
  std::vector<NodePtr> expired_ ABSL_GUARDED_BY(mu_);
  // Recovery only (Restore, FinishRestore): delayed publishes whose delay
  // is over, with when it ended, waiting to meet the limits; and the count
  // and bytes of the ready messages restored so far behind the returned
  // ones (never delivered).
  std::vector<std::pair<absl::Time, NodePtr>> restore_pending_
      ABSL_GUARDED_BY(mu_);
  uint64_t restored_fresh_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t restored_fresh_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<Waiter*> waiters_ ABSL_GUARDED_BY(mu_);
  // Registration order; front is the single active consumer.
  std::vector<const ConsumerState*> consumers_ ABSL_GUARDED_BY(mu_);
  // Jitter for retry delays.
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);

  // Deduplication window: message id -> when it stops counting.
  Mutex dedup_mu_;
  absl::flat_hash_map<std::string, absl::Time, StringHash, StringEq> dedup_
      ABSL_GUARDED_BY(dedup_mu_);
  std::deque<std::pair<absl::Time, std::string>> dedup_order_
      ABSL_GUARDED_BY(dedup_mu_);
};

// Effective ring capacity for `options` (see QueueOptions::ring_capacity).
uint32_t RingCapacityFor(const QueueOptions& options);

}  // namespace warren::internal

#endif  // WARREN_SRC_QUEUE_H_
