#include "queue.h"

#include <algorithm>
#include <iterator>
#include <thread>
#include <utility>

#include "consumer_state.h"
#include "str_util.h"
#include "wal.h"

namespace warren::internal {

namespace {
constexpr int kOpen = 0;
constexpr int kDeleted = 1;
constexpr int kBrokerClosed = 2;
// Polls of the queue before a receiver parks.
constexpr int kSpinsBeforeWait = 256;
}  // namespace

uint32_t RingCapacityFor(const QueueOptions& options) {
  if (options.ring_capacity > 0) return options.ring_capacity;
  const uint64_t per_level_cap = options.max_priority > 0 ? 1024 : 4096;
  uint64_t cap = per_level_cap;
  if (options.max_length > 0) {
    cap = std::clamp<uint64_t>(options.max_length, 64, 65536);
  }
  return static_cast<uint32_t>(cap);
}

Queue::Queue(std::string name, const QueueOptions& options,
             std::shared_ptr<BrokerLink> link, uint32_t durable_id)
    : name_(std::move(name)),
      options_(options),
      link_(std::move(link)),
      durable_id_(durable_id),
      levels_(options.max_priority + 1) {
  const uint32_t cap = RingCapacityFor(options);
  rings_.reserve(levels_);
  for (int i = 0; i < levels_; ++i) {
    rings_.push_back(std::make_unique<MpmcQueue<NodePtr>>(cap));
  }
  MutexLock lock(&mu_);
  peeked_.resize(levels_);
  spill_.resize(levels_);
  const uint64_t seed = options_.retry ? options_.retry->seed : 0;
  rng_.seed(seed != 0 ? seed : std::random_device{}());
}

Queue::~Queue() = default;

// --- Publishing --------------------------------------------------------------

bool Queue::TryReserve(uint64_t bytes) {
  const uint64_t max_count = options_.max_length;
  const uint64_t max_bytes = options_.max_length_bytes;
  if (max_count != 0 && max_bytes != 0) {
    // Taking the count first and giving it back when the bytes do not fit
    // would, for that moment, refuse a concurrent publish that fits both.
    // Only reservations add under the limits, and the counts otherwise
    // only fall (OnTaken) or go over them regardless (ReturnLocked), so
    // checking both under one lock is exact.
    MutexLock lock(&reserve_mu_);
    if (ready_count_.load(std::memory_order_relaxed) >= max_count ||
        ready_bytes_.load(std::memory_order_relaxed) + bytes > max_bytes) {
      return false;
    }
    ready_count_.fetch_add(1, std::memory_order_relaxed);
    ready_bytes_.fetch_add(bytes, std::memory_order_relaxed);
    return true;
  }
  // At most one limit: reserve under it, then add to the other.
  if (max_count != 0) {
    uint64_t cur = ready_count_.load(std::memory_order_relaxed);
    do {
      if (cur >= max_count) return false;
    } while (!ready_count_.compare_exchange_weak(cur, cur + 1,
                                                 std::memory_order_relaxed));
  } else if (max_bytes != 0) {
    uint64_t cur = ready_bytes_.load(std::memory_order_relaxed);
    do {
      if (cur + bytes > max_bytes) return false;
    } while (!ready_bytes_.compare_exchange_weak(cur, cur + bytes,
                                                 std::memory_order_relaxed));
  }
  if (max_count == 0) ready_count_.fetch_add(1, std::memory_order_relaxed);
  if (max_bytes == 0) ready_bytes_.fetch_add(bytes, std::memory_order_relaxed);
  return true;
}

void Queue::OnTaken(const QueuedMessage& node) {
  ready_count_.fetch_sub(1, std::memory_order_relaxed);
  ready_bytes_.fetch_sub(node.body_size(), std::memory_order_relaxed);
  NotifyRoom();
}

void Queue::NotifyRoom() {
  if (options_.overflow != Overflow::kBlock) return;
  // Dekker handshake with EnqueueBlocking: our release of room happens
  // before this fence; a waiter registers and fences before re-checking.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (room_waiters_.load(std::memory_order_relaxed) > 0) {
    MutexLock lock(&room_mu_);
    room_cv_.SignalAll();
  }
}

int Queue::LevelOf(const Message& message) const {
  return options_.max_priority == 0
             ? 0
             : std::min<uint8_t>(message.properties().priority.value_or(0),
                                 options_.max_priority);
}

NodePtr Queue::MakeNode(std::shared_ptr<const Envelope> envelope) {
  NodePtr node = NewNode();
  const Properties& props = envelope->message.properties();
  node->priority = static_cast<uint8_t>(LevelOf(envelope->message));
  std::optional<absl::Duration> ttl = options_.message_ttl;
  if (props.expiration.has_value()) {
    ttl = ttl ? std::min(*ttl, *props.expiration) : *props.expiration;
  }
  if (ttl.has_value()) {
    node->expires_at =
        envelope->published_at + std::max(*ttl, absl::ZeroDuration());
  }
  if (durable_id_ != 0 && envelope->wal_id != 0) node->wal_queue = durable_id_;
  node->envelope = std::move(envelope);
  return node;
}

NodePtr Queue::Restore(std::shared_ptr<const Envelope> envelope,
                       uint32_t deliveries, absl::Time ready_at,
                       bool returned) {
  NodePtr node = MakeNode(std::move(envelope));
  node->deliveries = deliveries;
  node->seq = next_seq_.fetch_add(1, std::memory_order_relaxed);
  if (const uint32_t limit = DeliveryLimit();
      limit > 0 && deliveries >= limit) {
    return node;
  }
  // (Most messages were never delayed: no clock read for them.)
  if (ready_at != absl::InfinitePast() && ready_at > Now()) {
    Delay(std::move(node), ready_at);
    return nullptr;
  }
  if (ready_at != absl::InfinitePast()) {
    // Its delay or retry backoff is over: as in memory, it joins the returned
    // messages, ahead of those never delivered.
    MutexLock lock(&mu_);
    if (DelayedMeetsLimits(*node)) {
      // As in memory once its delay is over, when FinishRestore knows what
      // else is ready.
      restore_pending_.emplace_back(ready_at, std::move(node));
      return nullptr;
    }
    ReturnLocked(std::move(node));
    return nullptr;
  }
  if (returned) {
    // Delivered before the restart, and requeued or unsettled at the crash:
    // returned, as in memory (a requeue, or its consumer closing). The
    // returned messages, these and those whose delay is over, go in
    // publish order ahead of those never delivered.
    MutexLock lock(&mu_);
    ReturnLocked(std::move(node));  // expires it if its time is up
    return nullptr;
  }
  ready_count_.fetch_add(1, std::memory_order_relaxed);
  ready_bytes_.fetch_add(node->body_size(), std::memory_order_relaxed);
  {
    MutexLock lock(&mu_);
    if (node->has_expiry() && node->expires_at <= Now()) {
      ready_count_.fetch_sub(1, std::memory_order_relaxed);
      ready_bytes_.fetch_sub(node->body_size(), std::memory_order_relaxed);
      AddExpiredLocked(std::move(node));
    } else {
      ++restored_fresh_;
      restored_fresh_bytes_ += node->body_size();
      SpillLocked(std::move(node));
    }
  }
  return nullptr;
}

std::vector<NodePtr> Queue::FinishRestore() {
  std::vector<NodePtr> maxlen_dead;
  MutexLock lock(&mu_);
  // In the order the delays ended (publish order among equal times). They
  // count against the ready messages never delivered, not against those
  // delivered before the restart, which come back over the limit as
  // returned messages do: so a delayed message that went in before the
  // restart (the never-delivered ready messages, it included, were within
  // the limits then) goes in again, and one whose delay ended while the
  // broker was down meets the limits as a publish would.
  std::stable_sort(
      restore_pending_.begin(), restore_pending_.end(),
      [](const auto& a, const auto& b) { return a.first < b.first; });
  const uint64_t max_count = options_.max_length;
  const uint64_t max_bytes = options_.max_length_bytes;
  for (auto& [ready_at, node] : restore_pending_) {
    const uint64_t bytes = node->body_size();
    auto fits = [&] {
      mu_.AssertHeld();
      return (max_count == 0 || restored_fresh_ < max_count) &&
             (max_bytes == 0 || restored_fresh_bytes_ + bytes <= max_bytes);
    };
    if (node->has_expiry() && Now() >= node->expires_at) {
      ReturnLocked(std::move(node));  // expires it
      continue;
    }
    if (options_.overflow == Overflow::kDropHead) {
      while (!fits()) {
        NodePtr victim = TakeLocked();
        if (!victim) break;
        if (victim->deliveries == 0) {
          --restored_fresh_;
          restored_fresh_bytes_ -= victim->body_size();
        }
        maxlen_dead.push_back(std::move(victim));
      }
    }
    if (fits()) {
      if (ReturnLocked(std::move(node))) {
        ++restored_fresh_;
        restored_fresh_bytes_ += bytes;
      }
    } else {
      Add(publisher_side_.refused, 1);
      maxlen_dead.push_back(std::move(node));
    }
  }
  restore_pending_.clear();
  restore_pending_.shrink_to_fit();
  restored_fresh_ = 0;
  restored_fresh_bytes_ = 0;
  return maxlen_dead;
}

void Queue::RestoreDedup(const std::string& message_id, absl::Time until) {
  MutexLock lock(&dedup_mu_);
  if (!dedup_.emplace(message_id, until).second) return;
  dedup_order_.emplace_back(until, message_id);
}

std::optional<absl::Time> Queue::DedupUntil(const std::string& message_id) {
  MutexLock lock(&dedup_mu_);
  auto it = dedup_.find(message_id);
  if (it == dedup_.end()) return std::nullopt;
  return it->second;
}

bool Queue::IsDuplicate(const Envelope& envelope, absl::Time start,
                        bool check) {
  const std::string& id = envelope.message.properties().message_id;
  if (id.empty()) return false;
  const absl::Time now = Now();
  MutexLock lock(&dedup_mu_);
  // Entries whose window ended (their order entry may outlive a forgotten
  // id; it then finds nothing or a newer entry, and leaves it).
  while (!dedup_order_.empty() && dedup_order_.front().first <= now) {
    auto it = dedup_.find(dedup_order_.front().second);
    if (it != dedup_.end() && it->second == dedup_order_.front().first) {
      dedup_.erase(it);
    }
    dedup_order_.pop_front();
  }
  const absl::Time until = start + options_.dedup_window;
  auto [it, inserted] = dedup_.try_emplace(id, until);
  if (!inserted) {
    // Within its window; or ended and not dropped yet (dedup_order_ is
    // ordered only as the ids were recorded), then renewed.
    if (check && it->second > now) return true;
    it->second = until;
  }
  dedup_order_.emplace_back(until, id);
  return false;
}

bool Queue::SeenWithinWindow(const Envelope& envelope) {
  const std::string& id = envelope.message.properties().message_id;
  if (id.empty()) return false;
  const absl::Time now = Now();
  MutexLock lock(&dedup_mu_);
  auto it = dedup_.find(id);
  return it != dedup_.end() && it->second > now;
}

void Queue::Unreserve(uint64_t bytes) {
  ready_count_.fetch_sub(1, std::memory_order_relaxed);
  ready_bytes_.fetch_sub(bytes, std::memory_order_relaxed);
  NotifyRoom();
}

Queue::EnqueueResult Queue::Enqueue(std::shared_ptr<const Envelope> envelope,
                                    absl::Duration delay,
                                    std::vector<NodePtr>* maxlen_dead,
                                    bool check_duplicate) {
  if (end_.load(std::memory_order_acquire) != kOpen) {
    return EnqueueResult::kClosed;
  }
  const uint64_t bytes = envelope->message.body().size();
  // A body larger than the byte limit never fits, however much room is made:
  // it is refused at once, delayed or not, without waiting (kBlock) or
  // dropping (kDropHead).
  const bool never_fits =
      options_.max_length_bytes > 0 && bytes > options_.max_length_bytes;
  // The id is recorded only by a message the queue takes, so that a refused
  // publish makes no other one a duplicate (nor its own retry). A message
  // taken whatever the queue holds (a delayed one, or one that drop-head
  // makes room for) records it at once; one that may be refused for want of
  // room records it once it has room (EnqueueReserved).
  const bool dedup = options_.dedup_window > absl::ZeroDuration();
  const bool records_id = dedup && !never_fits &&
                          (delay > absl::ZeroDuration() ||
                           options_.overflow == Overflow::kDropHead);
  if (records_id &&
      IsDuplicate(*envelope, envelope->published_at, check_duplicate)) {
    Add(publisher_side_.deduplicated, 1);
    return EnqueueResult::kDuplicate;
  }
  if (delay > absl::ZeroDuration() && !never_fits) {
    // Not ready yet, so not counted against the limits until it is.
    NodePtr node = MakeNode(std::move(envelope));
    node->seq = next_seq_.fetch_add(1, std::memory_order_relaxed);
    Add(publisher_side_.published, 1);
    const absl::Time at = node->envelope->published_at + delay;
    Delay(std::move(node), at);
    return EnqueueResult::kAccepted;
  }
  while (!never_fits) {
    if (TryReserve(bytes)) {
      const absl::Time published_at = envelope->published_at;
      return EnqueueReserved(std::move(envelope), published_at,
                             check_duplicate);
    }
    if (options_.overflow == Overflow::kDropHead) {
      if (NodePtr victim = TakeAny()) {
        maxlen_dead->push_back(std::move(victim));
        continue;
      }
      // Full, with nothing to drop: what the queue counts is on its way in
      // (a concurrent publish between reserving its room and pushing its
      // message) or out (a take not counted off yet). Either ends in a
      // moment, and drop-head never refuses a message that fits: wait.
      if (end_.load(std::memory_order_acquire) != kOpen) {
        return EnqueueResult::kClosed;
      }
      std::this_thread::yield();
      continue;
    }
    break;
  }
  // Full, and nothing could be dropped to make room; or it never fits. Its
  // id is not recorded: a duplicate is dropped here at once, whatever its
  // size, and need not wait for room (one that waits is checked again when
  // it has room, EnqueueBlocking).
  if (dedup && check_duplicate && SeenWithinWindow(*envelope)) {
    Add(publisher_side_.deduplicated, 1);
    return EnqueueResult::kDuplicate;
  }
  if (options_.overflow == Overflow::kBlock && !never_fits) {
    return EnqueueResult::kFull;
  }
  Add(publisher_side_.refused, 1);
  if (options_.overflow == Overflow::kRejectPublishDlx) {
    maxlen_dead->push_back(MakeNode(std::move(envelope)));
  }
  return EnqueueResult::kRefused;
}

Queue::EnqueueResult Queue::EnqueueBlocking(
    std::shared_ptr<const Envelope> envelope, absl::Time deadline) {
  const uint64_t bytes = envelope->message.body().size();
  {
    MutexLock lock(&room_mu_);
    room_waiters_.fetch_add(1, std::memory_order_relaxed);
    // Dekker handshake with OnTaken: either we see the room it made, or it
    // sees us waiting and signals.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    bool reserved = false;
    for (;;) {
      if (end_.load(std::memory_order_acquire) != kOpen) break;
      if ((reserved = TryReserve(bytes))) break;
      if (room_cv_.WaitWithDeadline(&room_mu_, deadline)) {
        reserved = TryReserve(bytes);
        break;
      }
    }
    room_waiters_.fetch_sub(1, std::memory_order_relaxed);
    if (!reserved) {
      if (end_.load(std::memory_order_acquire) != kOpen) {
        return EnqueueResult::kClosed;
      }
      Add(publisher_side_.refused, 1);
      return EnqueueResult::kRefused;
    }
  }
  const EnqueueResult result = EnqueueReserved(std::move(envelope), Now());
  FlushExpired();
  // Deleted or closed while we waited: the message went with the queue.
  if (end_.load(std::memory_order_acquire) != kOpen) {
    return EnqueueResult::kClosed;
  }
  return result;
}

Queue::EnqueueResult Queue::EnqueueReserved(
    std::shared_ptr<const Envelope> envelope, absl::Time dedup_start,
    bool check_duplicate) {
  // Drop-head recorded the id before it made room (Enqueue).
  if (options_.overflow != Overflow::kDropHead &&
      options_.dedup_window > absl::ZeroDuration() &&
      IsDuplicate(*envelope, dedup_start, check_duplicate)) {
    Unreserve(envelope->message.body().size());
    Add(publisher_side_.deduplicated, 1);
    return EnqueueResult::kDuplicate;
  }
  NodePtr node = MakeNode(std::move(envelope));
  node->seq = next_seq_.fetch_add(1, std::memory_order_relaxed);
  Add(publisher_side_.published, 1);

  if (node->has_expiry() && node->expires_at <= Now()) {
    // Expired as it arrives (a time-to-live of zero, or one that ran out
    // while its publisher waited for room): taken, and removed at once,
    // holding no room; the caller flushes it (FlushExpired).
    Unreserve(node->body_size());
    MutexLock lock(&mu_);
    AddExpiredLocked(std::move(node));
    return EnqueueResult::kAccepted;
  }
  const int level = node->priority;
  // acquire: pairs with the release store that clears spilling_ in
  // TakeLocked, so a publisher that sees the spill drained pushes behind it.
  // A message with a time-to-live always spills, so the expiry timer can take
  // it out from the middle of the queue.
  if (!node->has_expiry() && !spilling_.load(std::memory_order_acquire) &&
      rings_[level]->try_push(std::move(node))) {
    MaybeHandOff();
    return EnqueueResult::kAccepted;
  }
  {
    MutexLock lock(&mu_);
    SpillLocked(std::move(node));
    HandOffLocked();
  }
  // Expired messages the hand-off met are dead-lettered by the caller, once
  // it holds no broker lock (FlushExpired).
  return EnqueueResult::kAccepted;
}

void Queue::SpillLocked(NodePtr node) {
  spilling_.store(true, std::memory_order_release);
  if (node->has_expiry()) IndexExpiryLocked(*node, /*in_returned=*/false);
  const int level = node->priority;
  const uint64_t seq = node->seq;
  spill_[level].emplace(seq, std::move(node));
  ++spilled_;
}

void Queue::MaybeHandOff() {
  // Dekker handshake with Take: our push (above) happens before this fence;
  // a waiter increments waiting_ and fences before re-checking the rings.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (waiting_.load(std::memory_order_relaxed) == 0) return;
  MutexLock lock(&mu_);
  HandOffLocked();
}

void Queue::DeadLetter(std::vector<NodePtr> nodes, DeathReason reason) {
  // A deleted queue's messages went with it, none dead-lettered.
  if (nodes.empty() || end_.load(std::memory_order_acquire) == kDeleted) {
    return;
  }
  if (options_.dead_letter_exchange.has_value()) {
    ReaderLock lock(&link_->mu);
    if (link_->owner != nullptr) {
      link_->owner->DeadLetter(*this, std::move(nodes), reason);
      return;
    }
  }
  CountDropped(nodes.size());
}

// --- Timers ------------------------------------------------------------------

bool Queue::Schedule(absl::Time deadline, absl::AnyInvocable<void()> fn) {
  MutexLock lock(&link_->timers_mu);
  if (link_->timers == nullptr) return false;
  return link_->timers->Schedule(deadline, std::move(fn)) !=
         TimerService::kNoTimer;
}

void Queue::Delay(NodePtr node, absl::Time at) {
  // A time-to-live runs during a delay too: the message is expired when it
  // runs out, not when the delay ends (OnDelayDone, finding it expired,
  // dead-letters it as a ready message's expiry would).
  if (node->has_expiry() && node->expires_at <= Now()) {
    MutexLock lock(&mu_);
    AddExpiredLocked(std::move(node));  // the caller flushes it
    return;
  }
  delayed_.fetch_add(1, std::memory_order_relaxed);
  const absl::Time due = std::min(at, node->expires_at);
  const bool scheduled =
      Schedule(due, [weak = weak_from_this(), n = std::move(node)]() mutable {
        if (auto q = weak.lock()) q->OnDelayDone(std::move(n));
      });
  if (!scheduled) {
    // The broker is closed: nothing will ever deliver it.
    delayed_.fetch_sub(1, std::memory_order_relaxed);
    CountDropped(1);
  }
}

void Queue::OnDelayDone(NodePtr node) {
  std::vector<NodePtr> maxlen_dead;
  for (;;) {
    {
      MutexLock lock(&mu_);
      bool reserved = false;
      // Closed: the message went with the queue.
      const Admission admission =
          end_.load(std::memory_order_acquire) == kOpen
              ? AdmitDelayedLocked(node, &reserved, &maxlen_dead)
              : Admission::kRefused;
      if (admission != Admission::kWait) {
        // Ready first, then no longer delayed: never counted nowhere.
        if (admission == Admission::kIn &&
            ReturnLocked(std::move(node), reserved)) {
          HandOffLocked();
        }
        delayed_.fetch_sub(1, std::memory_order_relaxed);
        break;
      }
    }
    // Full of messages on their way in or out: let them arrive (they may
    // need mu_), then ask again.
    std::this_thread::yield();
  }
  DeadLetter(std::move(maxlen_dead), DeathReason::kMaxLen);
  FlushExpired();
}

Queue::Admission Queue::AdmitDelayedLocked(NodePtr& node, bool* reserved,
                                           std::vector<NodePtr>* maxlen_dead) {
  // One that does not meet the limits goes in, over them if need be; so
  // does one whose time-to-live ran out (ReturnLocked expires it).
  if (!DelayedMeetsLimits(*node) ||
      (node->has_expiry() && Now() >= node->expires_at)) {
    return Admission::kIn;
  }
  // (It fits the byte limit: Enqueue refused one that never could.)
  const uint64_t bytes = node->body_size();
  for (;;) {
    if (TryReserve(bytes)) {
      *reserved = true;
      return Admission::kIn;
    }
    if (options_.overflow == Overflow::kDropHead) {
      if (NodePtr victim = TakeLocked()) {
        maxlen_dead->push_back(std::move(victim));
        continue;
      }
      return Admission::kWait;
    }
    break;
  }
  // Refused, as a publish now would be, and dead-lettered (or dropped and
  // counted): nobody is left to tell.
  Add(publisher_side_.refused, 1);
  maxlen_dead->push_back(std::move(node));
  return Admission::kRefused;
}

absl::Duration Queue::RetryDelay(const QueuedMessage& node) {
  const RetryPolicy& p = *options_.retry;
  // The custom function is the user's: called with no lock held.
  const absl::Duration base =
      BaseRetryDelay(p, node.deliveries, node.envelope->message);
  if (p.jitter == Jitter::kNone || base <= absl::ZeroDuration()) return base;
  double u;
  {
    MutexLock lock(&mu_);
    u = std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
  }
  switch (p.jitter) {
    case Jitter::kFull:
      return base * u;
    case Jitter::kEqual:
      return base / 2 + (base / 2) * u;
    case Jitter::kRatio:
      return base * (1.0 - p.jitter_ratio + 2.0 * p.jitter_ratio * u);
    case Jitter::kNone:
      break;
  }
  return base;
}

// --- Expiry ------------------------------------------------------------------

void Queue::IndexExpiryLocked(const QueuedMessage& node, bool in_returned) {
  expiry_.emplace(node.expires_at, node.priority, node.seq, in_returned);
  ArmExpiryTimerLocked();
}

void Queue::UnindexExpiryLocked(const QueuedMessage& node, bool in_returned) {
  expiry_.erase(
      ExpiryKey{node.expires_at, node.priority, node.seq, in_returned});
}

void Queue::ArmExpiryTimerLocked() {
  if (expiry_.empty()) return;
  const absl::Time next = std::get<0>(*expiry_.begin());
  if (expiry_timer_ != TimerService::kNoTimer && expiry_timer_at_ <= next) {
    return;  // an earlier (or the same) timer is armed; it re-arms itself
  }
  MutexLock lock(&link_->timers_mu);
  if (link_->timers == nullptr) return;
  if (expiry_timer_ != TimerService::kNoTimer) {
    link_->timers->Cancel(expiry_timer_);
  }
  expiry_timer_at_ = next;
  expiry_timer_ = link_->timers->Schedule(next, [weak = weak_from_this()] {
    if (auto q = weak.lock()) q->ExpireDue();
  });
}

void Queue::ExpireDue() {
  {
    MutexLock lock(&mu_);
    expiry_timer_ = TimerService::kNoTimer;
    expiry_timer_at_ = absl::InfiniteFuture();
    const absl::Time now = Now();
    while (!expiry_.empty() && std::get<0>(*expiry_.begin()) <= now) {
      const auto [at, level, seq, in_returned] = *expiry_.begin();
      expiry_.erase(expiry_.begin());
      NodePtr node;
      if (in_returned) {
        auto it = returned_.find(ReturnedKey{-level, seq});
        if (it == returned_.end()) continue;
        node = std::move(it->second);
        returned_.erase(it);
        ahead_count_.fetch_sub(1, std::memory_order_release);
      } else {
        auto it = spill_[level].find(seq);
        if (it == spill_[level].end()) continue;
        node = std::move(it->second);
        spill_[level].erase(it);
        if (--spilled_ == 0) spilling_.store(false, std::memory_order_release);
      }
      OnTaken(*node);
      AddExpiredLocked(std::move(node));
    }
    ArmExpiryTimerLocked();
  }
  FlushExpired();
}

std::vector<NodePtr> Queue::TakeExpired() {
  std::vector<NodePtr> expired;
  if (!expired_pending_.load(std::memory_order_acquire)) return expired;
  {
    MutexLock lock(&mu_);
    expired_pending_.store(false, std::memory_order_relaxed);
    expired.swap(expired_);
  }
  Add(consumer_side_.expired, expired.size());
  return expired;
}

void Queue::FlushExpired() {
  std::vector<NodePtr> expired = TakeExpired();
  if (!expired.empty()) DeadLetter(std::move(expired), DeathReason::kExpired);
}

// --- Consuming ---------------------------------------------------------------

NodePtr Queue::TakeAny() {
  // acquire: pairs with the release increment in ReturnLocked and the
  // release store of spilling_ in SpillLocked. Nothing
  // in the rings has a time-to-live, so the lock-free path needs no expiry
  // check.
  if (ahead_count_.load(std::memory_order_acquire) == 0 &&
      !spilling_.load(std::memory_order_acquire)) {
    for (int level = levels_ - 1; level >= 0; --level) {
      NodePtr node;
      if (rings_[level]->try_pop_claimed(node)) {
        // acquire: pairs with the release fence in PeekRingLocked. A message
        // read ahead of this one since the check above goes first.
        std::atomic_thread_fence(std::memory_order_acquire);
        if (ahead_count_.load(std::memory_order_relaxed) != 0) {
          MutexLock lock(&mu_);
          const uint64_t seq = node->seq;
          peeked_[level].emplace(seq, std::move(node));
          ahead_count_.fetch_add(1, std::memory_order_relaxed);
          return TakeLocked();
        }
        OnTaken(*node);
        return node;
      }
    }
    if (ahead_count_.load(std::memory_order_acquire) == 0 &&
        !spilling_.load(std::memory_order_acquire)) {
      return nullptr;
    }
  }
  MutexLock lock(&mu_);
  return TakeLocked();
}

NodePtr Queue::TakeLocked() {
  for (;;) {
    const int best_returned =
        returned_.empty() ? -1 : -std::get<0>(returned_.begin()->first);
    NodePtr node;
    bool from_returned = false;
    for (int level = levels_ - 1; level >= 0 && !node; --level) {
      if (level == best_returned) {
        // Invariant: a returned message is older than every ready message of
        // its priority, so it goes first.
        auto it = returned_.begin();
        node = std::move(it->second);
        returned_.erase(it);
        ahead_count_.fetch_sub(1, std::memory_order_release);
        from_returned = true;
      } else if (!peeked_[level].empty()) {
        // Invariant: a peeked message was its ring's head, so it is older
        // than the rest of the ring and than the spill.
        auto it = peeked_[level].begin();
        node = std::move(it->second);
        peeked_[level].erase(it);
        ahead_count_.fetch_sub(1, std::memory_order_release);
      } else if (rings_[level]->try_pop_claimed(node)) {
      } else if (!spill_[level].empty()) {
        auto it = spill_[level].begin();
        node = std::move(it->second);
        spill_[level].erase(it);
        if (--spilled_ == 0) spilling_.store(false, std::memory_order_release);
      }
    }
    if (!node) return nullptr;
    if (node->has_expiry()) {
      UnindexExpiryLocked(*node, from_returned);
      // The expiry timer may not have run yet: never deliver it.
      if (Now() >= node->expires_at) {
        OnTaken(*node);
        AddExpiredLocked(std::move(node));
        continue;
      }
    }
    OnTaken(*node);
    return node;
  }
}

void Queue::AddExpiredLocked(NodePtr node) {
  expired_.push_back(std::move(node));
  expired_pending_.store(true, std::memory_order_release);
}

bool Queue::ReturnLocked(NodePtr node, bool reserved) {
  if (node->has_expiry() && Now() >= node->expires_at) {
    if (reserved) Unreserve(node->body_size());
    AddExpiredLocked(std::move(node));
    return false;
  }
  if (!reserved) {
    ready_count_.fetch_add(1, std::memory_order_relaxed);
    ready_bytes_.fetch_add(node->body_size(), std::memory_order_relaxed);
  }
  if (node->has_expiry()) IndexExpiryLocked(*node, /*in_returned=*/true);
  const ReturnedKey key{-static_cast<int>(node->priority), node->seq};
  returned_.emplace(key, std::move(node));
  // release: pairs with the acquire load in TakeAny.
  ahead_count_.fetch_add(1, std::memory_order_release);
  return true;
}

const QueuedMessage* Queue::PeekRingLocked(int level) {
  // Counted ahead before the pop: a consumer whose lock-free pop comes after
  // this one in the ring sees the count (the release fence here pairs with
  // the acquire fence in TakeAny through the ring's ticket), and puts its
  // message back behind this one.
  ahead_count_.fetch_add(1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_release);
  NodePtr head;
  if (!rings_[level]->try_pop_claimed(head)) {
    ahead_count_.fetch_sub(1, std::memory_order_release);
    return nullptr;
  }
  const uint64_t seq = head->seq;
  return peeked_[level].emplace(seq, std::move(head)).first->second.get();
}

bool Queue::EligibleLocked(const ConsumerState* consumer) const {
  if (!options_.single_active_consumer) return true;
  return !consumers_.empty() && consumers_.front() == consumer;
}

void Queue::RemoveWaiterLocked(Waiter* w) {
  if (w->queued) {
    waiters_.erase(std::find(waiters_.begin(), waiters_.end(), w));
    w->queued = false;
  }
  waiting_.fetch_sub(1, std::memory_order_relaxed);
}

absl::StatusOr<NodePtr> Queue::Take(const ConsumerState* consumer, bool wait,
                                    absl::Time deadline) {
  if (absl::Status s = CheckUsable(); !s.ok()) return s;
  if (options_.expires.has_value()) Touch();
  if (consumer->cancelled()) {
    return absl::FailedPreconditionError("the consumer is cancelled");
  }
  if (!options_.single_active_consumer) {
    NodePtr node = TakeAny();
    // Before parking, spin briefly: a message that arrives within a few
    // microseconds is taken without the lock and the futex round trip.
    for (int i = 0; !node && wait && i < kSpinsBeforeWait; ++i) {
      warren::internal::CpuRelax();
      node = TakeAny();
    }
    FlushExpired();
    if (node) return node;
    if (!wait) return absl::UnavailableError("no message is ready");
  }

  absl::StatusOr<NodePtr> result;
  {
    MutexLock lock(&mu_);
    if (!wait) {
      NodePtr node;
      if (EligibleLocked(consumer)) node = TakeLocked();
      if (node) {
        result = std::move(node);
      } else {
        result = absl::UnavailableError("no message is ready");
      }
    } else {
      Waiter w{.consumer = consumer};
      waiting_.fetch_add(1, std::memory_order_relaxed);
      // Dekker handshake with MaybeHandOff: either we see the pushed message
      // below, or the publisher sees waiting_ > 0 and hands it over.
      std::atomic_thread_fence(std::memory_order_seq_cst);
      for (;;) {
        if (w.node) {  // handed over; already dequeued
          result = std::move(w.node);
          break;
        }
        if (absl::Status s = CheckUsable(); !s.ok()) {
          RemoveWaiterLocked(&w);
          result = s;
          break;
        }
        if (consumer->cancelled()) {
          RemoveWaiterLocked(&w);
          result = absl::FailedPreconditionError("the consumer is cancelled");
          break;
        }
        if (EligibleLocked(consumer)) {
          if (NodePtr node = TakeLocked()) {
            RemoveWaiterLocked(&w);
            result = std::move(node);
            break;
          }
        }
        if (!w.queued) {
          waiters_.push_back(&w);
          w.queued = true;
        }
        if (w.cv.WaitWithDeadline(&mu_, deadline)) {
          if (w.node) {
            result = std::move(w.node);
          } else {
            RemoveWaiterLocked(&w);
            result =
                absl::DeadlineExceededError("no message became ready in time");
          }
          break;
        }
      }
    }
  }
  FlushExpired();
  return result;
}

void Queue::HandOffLocked() {
  for (size_t i = 0; i < waiters_.size();) {
    Waiter* w = waiters_[i];
    if (w->consumer->cancelled() || !EligibleLocked(w->consumer)) {
      ++i;
      continue;
    }
    NodePtr node = TakeLocked();
    if (!node) return;
    w->node = std::move(node);
    w->queued = false;
    waiters_.erase(waiters_.begin() + static_cast<std::ptrdiff_t>(i));
    waiting_.fetch_sub(1, std::memory_order_relaxed);
    w->cv.Signal();
  }
}

void Queue::WakeAllLocked() {
  for (Waiter* w : waiters_) w->cv.Signal();
}

uint32_t Queue::DeliveryLimit() const {
  return options_.retry ? options_.retry->max_attempts
                        : options_.delivery_limit;
}

void Queue::Return(std::vector<NodePtr> nodes, ReturnKind kind) {
  if (nodes.empty()) return;
  const uint32_t limit = DeliveryLimit();
  const absl::Time t = Now();
  std::vector<NodePtr> spent;
  std::vector<std::pair<NodePtr, absl::Duration>> later;
  std::vector<NodePtr> now;
  for (NodePtr& node : nodes) {
    if (limit > 0 && node->deliveries >= limit) {
      spent.push_back(std::move(node));
    } else if (kind == ReturnKind::kRequeue && options_.retry &&
               !(node->has_expiry() && node->expires_at <= t)) {
      // (Returned after its expiry, it is not retried: ReturnLocked, below,
      // dead-letters it as expired.) A backoff of zero is ready at once, as
      // a publish with no delay is.
      const absl::Duration d = RetryDelay(*node);
      if (d > absl::ZeroDuration()) {
        later.emplace_back(std::move(node), d);
      } else {
        now.push_back(std::move(node));
      }
    } else {
      now.push_back(std::move(node));
    }
  }
  if (end_.load(std::memory_order_acquire) != kOpen) return;  // gone
  uint64_t back = 0;
  if (!now.empty()) {
    MutexLock lock(&mu_);
    if (end_.load(std::memory_order_acquire) != kOpen) return;
    for (NodePtr& node : now) back += ReturnLocked(std::move(node));
    HandOffLocked();
  }
  // (One never delivered is not counted as requeued.)
  if (kind != ReturnKind::kUndelivered) {
    Add(consumer_side_.requeued, back + later.size());
  }
  for (auto& [node, d] : later) {
    if (node->wal_queue != 0) {
      // The retry's time survives a restart.
      thread_local wal::RecordBuilder record;
      record.Retry(node->wal_queue, node->envelope->wal_id, t + d);
      link_->wal->Append(record);
    }
    Delay(std::move(node), t + d);
  }
  DeadLetter(std::move(spent), DeathReason::kDeliveryLimit);
  FlushExpired();
}

void Queue::AddConsumer(const ConsumerState* consumer) {
  if (options_.expires.has_value()) Touch();
  MutexLock lock(&mu_);
  consumers_.push_back(consumer);
}

void Queue::Touch() {
  last_used_us_.store(absl::ToUnixMicros(Now()), std::memory_order_relaxed);
}

void Queue::StartExpiry() {
  if (!options_.expires.has_value()) return;
  Touch();
  Schedule(Now() + *options_.expires, [weak = weak_from_this()] {
    if (auto q = weak.lock()) q->CheckIdle();
  });
}

bool Queue::IdleLongEnough() const {
  const absl::Time last =
      absl::FromUnixMicros(last_used_us_.load(std::memory_order_relaxed));
  return consumer_count() == 0 && Now() - last >= *options_.expires;
}

void Queue::CheckIdle() {
  if (end_.load(std::memory_order_acquire) != kOpen) return;
  if (IdleLongEnough()) {
    ReaderLock lock(&link_->mu);
    if (link_->owner == nullptr || link_->owner->DeleteIdleQueue(*this)) {
      return;
    }
    // Declined: used in the meantime. Look again below.
  }
  const absl::Time last =
      absl::FromUnixMicros(last_used_us_.load(std::memory_order_relaxed));
  const absl::Time now = Now();
  // Used since, or in use: look again when it could next be idle long enough.
  const absl::Time next = consumer_count() == 0 ? last + *options_.expires
                                                : now + *options_.expires;
  Schedule(next, [weak = weak_from_this()] {
    if (auto q = weak.lock()) q->CheckIdle();
  });
}

void Queue::RemoveConsumer(const ConsumerState* consumer) {
  if (options_.expires.has_value()) Touch();
  {
    MutexLock lock(&mu_);
    auto it = std::find(consumers_.begin(), consumers_.end(), consumer);
    if (it == consumers_.end()) return;
    consumers_.erase(it);
    // The consumer's own waiters leave; with a single active consumer, the
    // next one may now be served.
    WakeAllLocked();
    HandOffLocked();
  }
  FlushExpired();
}

void Queue::ConsumerGone() {
  if (!options_.auto_delete || end_.load(std::memory_order_acquire) != kOpen ||
      consumer_count() != 0) {
    return;
  }
  ReaderLock lock(&link_->mu);
  if (link_->owner != nullptr) link_->owner->DeleteUnusedQueue(*this);
}

uint64_t Queue::consumer_count() const {
  MutexLock lock(&mu_);
  return consumers_.size();
}

// --- Management --------------------------------------------------------------

uint64_t Queue::DrainLocked() {
  uint64_t n = 0;
  while (NodePtr node = TakeLocked()) ++n;
  return n;
}

uint64_t Queue::Purge() {
  uint64_t n;
  {
    MutexLock lock(&mu_);
    n = DrainLocked();
  }
  Add(consumer_side_.purged, n);
  FlushExpired();  // callers hold no broker lock
  return n;
}

std::vector<Message> Queue::Browse(size_t max) {
  std::vector<Message> out;
  MutexLock lock(&mu_);
  const absl::Time now = Now();
  auto show = [&](const QueuedMessage& node) {
    if (out.size() >= max) return false;
    // Never delivered, so never shown: the expiry timer is removing it.
    if (!node.has_expiry() || now < node.expires_at) {
      out.push_back(node.envelope->message);
    }
    return true;
  };
  // Delivery order (see TakeLocked), read in place: taking and putting back
  // would move never-delivered messages ahead of a delayed one that becomes
  // ready later.
  for (int level = levels_ - 1; level >= 0; --level) {
    for (auto it = returned_.lower_bound(ReturnedKey{-level, 0});
         it != returned_.end() && std::get<0>(it->first) == -level; ++it) {
      if (!show(*it->second)) return out;
    }
    // The ring's heads as far as needed, read into the peeked set, which
    // is served in its order.
    while (out.size() + peeked_[level].size() < max &&
           PeekRingLocked(level) != nullptr) {
    }
    for (const auto& [seq, node] : peeked_[level]) {
      if (!show(*node)) return out;
    }
    for (const auto& [seq, node] : spill_[level]) {
      if (!show(*node)) return out;
    }
  }
  return out;
}

std::vector<NodePtr> Queue::TakeForMove(size_t max) {
  std::vector<NodePtr> out;
  {
    MutexLock lock(&mu_);
    while (out.size() < max) {
      NodePtr node = TakeLocked();
      if (!node) break;
      out.push_back(std::move(node));
    }
  }
  FlushExpired();
  return out;
}

void Queue::PutBack(std::vector<NodePtr> nodes) {
  if (nodes.empty()) return;
  {
    MutexLock lock(&mu_);
    if (end_.load(std::memory_order_acquire) != kOpen) return;
    for (NodePtr& node : nodes) ReturnLocked(std::move(node));
    HandOffLocked();
  }
  FlushExpired();
}

uint64_t Queue::End(EndReason reason) {
  int expected = kOpen;
  if (!end_.compare_exchange_strong(
          expected, reason == EndReason::kDeleted ? kDeleted : kBrokerClosed,
          std::memory_order_acq_rel)) {
    return 0;
  }
  uint64_t n;
  {
    MutexLock lock(&mu_);
    n = DrainLocked();
    expired_.clear();  // they go with the queue
    WakeAllLocked();
  }
  MutexLock lock(&room_mu_);  // blocked publishers give up
  room_cv_.SignalAll();
  return n;
}

absl::Status Queue::CheckUsable() const {
  if (link_->closed.load(std::memory_order_acquire)) {
    return absl::FailedPreconditionError("the broker is closed");
  }
  switch (end_.load(std::memory_order_acquire)) {
    case kDeleted:
      return absl::NotFoundError(StrCat("queue '", name_, "' was deleted"));
    case kBrokerClosed:
      return absl::FailedPreconditionError("the broker is closed");
    default:
      return absl::OkStatus();
  }
}

QueueStats Queue::Stats() {
  QueueStats s;
  s.name = name_;
  {
    MutexLock lock(&mu_);
    s.consumers = consumers_.size();
    // The oldest ready message is in the returned set, or at the head of a
    // level's peeked set, ring or spill. A ring cannot be peeked in place, so
    // its head moves to the peeked set (unless that has one already, which
    // is older), where it keeps its place in delivery order.
    absl::Time oldest = absl::InfiniteFuture();
    for (const auto& [key, node] : returned_) {
      oldest = std::min(oldest, node->envelope->published_at);
    }
    for (int level = 0; level < levels_; ++level) {
      if (!peeked_[level].empty() || PeekRingLocked(level) != nullptr) {
        oldest = std::min(
            oldest, peeked_[level].begin()->second->envelope->published_at);
      }
      if (!spill_[level].empty()) {
        oldest = std::min(
            oldest, spill_[level].begin()->second->envelope->published_at);
      }
    }
    if (oldest != absl::InfiniteFuture()) {
      s.oldest_ready_age = std::max(absl::ZeroDuration(), Now() - oldest);
    }
  }
  s.ready = ready_count_.load(std::memory_order_relaxed);
  s.ready_bytes = ready_bytes_.load(std::memory_order_relaxed);
  s.delayed = delayed_.load(std::memory_order_relaxed);
  s.blocked_publishers = room_waiters_.load(std::memory_order_relaxed);
  const auto& p = publisher_side_;
  s.published = p.published.load(std::memory_order_relaxed);
  s.refused = p.refused.load(std::memory_order_relaxed);
  s.deduplicated = p.deduplicated.load(std::memory_order_relaxed);
  const auto& c = consumer_side_;
  s.unacked = c.unacked.load(std::memory_order_relaxed);
  s.delivered = c.delivered.load(std::memory_order_relaxed);
  s.redelivered = c.redelivered.load(std::memory_order_relaxed);
  s.acked = c.acked.load(std::memory_order_relaxed);
  s.nacked = c.nacked.load(std::memory_order_relaxed);
  s.rejected = c.rejected.load(std::memory_order_relaxed);
  s.requeued = c.requeued.load(std::memory_order_relaxed);
  s.dropped = c.dropped.load(std::memory_order_relaxed);
  s.dead_lettered = c.dead_lettered.load(std::memory_order_relaxed);
  s.purged = c.purged.load(std::memory_order_relaxed);
  s.expired = c.expired.load(std::memory_order_relaxed);
  s.lease_expired = c.lease_expired.load(std::memory_order_relaxed);
  return s;
}

}  // namespace warren::internal
