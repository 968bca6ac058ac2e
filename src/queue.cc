#include "queue.h"

#include <algorithm>
#include <iterator>
#include <utility>

#include "str_util.h"
#include "consumer_state.h"

namespace warren::internal {

namespace {
constexpr int kOpen = 0;
constexpr int kDeleted = 1;
constexpr int kBrokerClosed = 2;
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
             std::shared_ptr<SinkHandle> sink)
    : name_(std::move(name)),
      options_(options),
      sink_(std::move(sink)),
      levels_(options.max_priority + 1) {
  const uint32_t cap = RingCapacityFor(options);
  rings_.reserve(levels_);
  for (int i = 0; i < levels_; ++i) {
    rings_.push_back(std::make_unique<MpmcQueue<NodePtr>>(cap));
  }
  MutexLock lock(&mu_);
  spill_.resize(levels_);
}

Queue::~Queue() = default;

// --- Publishing --------------------------------------------------------------

bool Queue::TryReserve(uint64_t bytes) {
  if (options_.max_length == 0) {
    ready_count_.fetch_add(1, std::memory_order_relaxed);
  } else {
    uint64_t cur = ready_count_.load(std::memory_order_relaxed);
    do {
      if (cur >= options_.max_length) return false;
    } while (!ready_count_.compare_exchange_weak(cur, cur + 1,
                                                 std::memory_order_relaxed));
  }
  if (options_.max_length_bytes == 0) {
    ready_bytes_.fetch_add(bytes, std::memory_order_relaxed);
    return true;
  }
  uint64_t cur = ready_bytes_.load(std::memory_order_relaxed);
  do {
    if (cur + bytes > options_.max_length_bytes) {
      ready_count_.fetch_sub(1, std::memory_order_relaxed);
      return false;
    }
  } while (!ready_bytes_.compare_exchange_weak(cur, cur + bytes,
                                               std::memory_order_relaxed));
  return true;
}

void Queue::OnTaken(const QueuedMessage& node) {
  ready_count_.fetch_sub(1, std::memory_order_relaxed);
  ready_bytes_.fetch_sub(node.body_size(), std::memory_order_relaxed);
}

NodePtr Queue::MakeNode(std::shared_ptr<const Envelope> envelope) {
  auto node = std::make_unique<QueuedMessage>();
  const auto& priority = envelope->message.properties().priority;
  node->priority = options_.max_priority == 0
                       ? 0
                       : std::min<uint8_t>(priority.value_or(0),
                                           options_.max_priority);
  node->envelope = std::move(envelope);
  return node;
}

Queue::EnqueueResult Queue::Enqueue(std::shared_ptr<const Envelope> envelope,
                                    std::vector<NodePtr>* maxlen_dead) {
  if (end_.load(std::memory_order_acquire) != kOpen) {
    return EnqueueResult::kClosed;
  }
  const uint64_t bytes = envelope->message.body().size();
  while (!TryReserve(bytes)) {
    if (options_.overflow == Overflow::kDropHead) {
      if (NodePtr victim = TakeAny()) {
        maxlen_dead->push_back(std::move(victim));
        continue;
      }
    }
    // Full, and nothing could be dropped to make room.
    publisher_side_.refused.fetch_add(1, std::memory_order_relaxed);
    if (options_.overflow == Overflow::kRejectPublishDlx) {
      maxlen_dead->push_back(MakeNode(std::move(envelope)));
    }
    return EnqueueResult::kRefused;
  }

  NodePtr node = MakeNode(std::move(envelope));
  node->seq = next_seq_.fetch_add(1, std::memory_order_relaxed);
  publisher_side_.published.fetch_add(1, std::memory_order_relaxed);

  const int level = node->priority;
  // acquire: pairs with the release store that clears spilling_ in
  // TakeLocked, so a publisher that sees the spill drained pushes behind it.
  if (!spilling_.load(std::memory_order_acquire) &&
      rings_[level]->try_push(std::move(node))) {
    MaybeHandOff();
    return EnqueueResult::kAccepted;
  }
  MutexLock lock(&mu_);
  spilling_.store(true, std::memory_order_release);
  spill_[level].push_back(std::move(node));
  HandOffLocked();
  return EnqueueResult::kAccepted;
}

void Queue::DeadLetter(std::vector<NodePtr> nodes, DeathReason reason) {
  if (nodes.empty()) return;
  if (options_.dead_letter_exchange.has_value()) {
    ReaderLock lock(&sink_->mu);
    if (sink_->sink != nullptr) {
      sink_->sink->DeadLetter(*this, std::move(nodes), reason);
      return;
    }
  }
  CountDropped(nodes.size());
}

void Queue::Return(std::vector<NodePtr> nodes) {
  if (options_.delivery_limit > 0) {
    std::vector<NodePtr> spent;
    auto keep = std::partition(nodes.begin(), nodes.end(), [&](const auto& n) {
      return n->deliveries < options_.delivery_limit;
    });
    std::move(keep, nodes.end(), std::back_inserter(spent));
    nodes.erase(keep, nodes.end());
    DeadLetter(std::move(spent), DeathReason::kDeliveryLimit);
  }
  Requeue(std::move(nodes));
}

void Queue::MaybeHandOff() {
  // Dekker handshake with Take: our push (above) happens before this fence;
  // a waiter increments waiting_ and fences before re-checking the rings.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (waiting_.load(std::memory_order_relaxed) == 0) return;
  MutexLock lock(&mu_);
  HandOffLocked();
}

// --- Consuming ---------------------------------------------------------------

NodePtr Queue::TakeAny() {
  // acquire: pairs with the release increments in Requeue and the release
  // store of spilling_ in Enqueue.
  if (returned_count_.load(std::memory_order_acquire) == 0 &&
      !spilling_.load(std::memory_order_acquire)) {
    for (int level = levels_ - 1; level >= 0; --level) {
      NodePtr node;
      if (rings_[level]->try_pop(node)) {
        OnTaken(*node);
        return node;
      }
    }
    if (returned_count_.load(std::memory_order_acquire) == 0 &&
        !spilling_.load(std::memory_order_acquire)) {
      return nullptr;
    }
  }
  MutexLock lock(&mu_);
  return TakeLocked();
}

NodePtr Queue::TakeLocked() {
  const int best_returned =
      returned_.empty() ? -1 : -std::get<0>(returned_.begin()->first);
  for (int level = levels_ - 1; level >= 0; --level) {
    NodePtr node;
    if (level == best_returned) {
      // Invariant: a returned message is older than every ready message of
      // its priority, so it goes first.
      auto it = returned_.begin();
      node = std::move(it->second);
      returned_.erase(it);
      returned_count_.fetch_sub(1, std::memory_order_release);
    } else if (rings_[level]->try_pop(node)) {
    } else if (!spill_[level].empty()) {
      node = std::move(spill_[level].front());
      spill_[level].pop_front();
      if (std::all_of(spill_.begin(), spill_.end(),
                      [](const auto& s) { return s.empty(); })) {
        spilling_.store(false, std::memory_order_release);
      }
    } else {
      continue;
    }
    OnTaken(*node);
    return node;
  }
  return nullptr;
}

absl::Status Queue::EndStatusLocked() const { return CheckUsable(); }

absl::Status Queue::CheckUsable() const {
  switch (end_.load(std::memory_order_acquire)) {
    case kDeleted:
      return absl::NotFoundError(
          StrCat("queue '", name_, "' was deleted"));
    case kBrokerClosed:
      return absl::FailedPreconditionError("the broker is closed");
    default:
      return absl::OkStatus();
  }
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
  if (consumer->cancelled()) {
    return absl::FailedPreconditionError("the consumer is cancelled");
  }
  if (!options_.single_active_consumer) {
    if (NodePtr node = TakeAny()) return node;
    if (!wait) return absl::UnavailableError("no message is ready");
  }

  MutexLock lock(&mu_);
  if (!wait) {
    if (EligibleLocked(consumer)) {
      if (NodePtr node = TakeLocked()) return node;
    }
    return absl::UnavailableError("no message is ready");
  }

  Waiter w{.consumer = consumer};
  waiting_.fetch_add(1, std::memory_order_relaxed);
  // Dekker handshake with MaybeHandOff: either we see the pushed message
  // below, or the publisher sees waiting_ > 0 and hands it over.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  for (;;) {
    if (w.node) return std::move(w.node);  // handed over; already dequeued
    if (absl::Status s = EndStatusLocked(); !s.ok()) {
      RemoveWaiterLocked(&w);
      return s;
    }
    if (consumer->cancelled()) {
      RemoveWaiterLocked(&w);
      return absl::FailedPreconditionError("the consumer is cancelled");
    }
    if (EligibleLocked(consumer)) {
      if (NodePtr node = TakeLocked()) {
        RemoveWaiterLocked(&w);
        return node;
      }
    }
    if (!w.queued) {
      waiters_.push_back(&w);
      w.queued = true;
    }
    if (w.cv.WaitWithDeadline(&mu_, deadline)) {
      if (w.node) return std::move(w.node);
      RemoveWaiterLocked(&w);
      return absl::DeadlineExceededError("no message became ready in time");
    }
  }
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

void Queue::Requeue(std::vector<NodePtr> nodes) {
  if (nodes.empty()) return;
  MutexLock lock(&mu_);
  if (end_.load(std::memory_order_acquire) != kOpen) return;  // gone with it
  for (NodePtr& node : nodes) {
    ready_count_.fetch_add(1, std::memory_order_relaxed);
    ready_bytes_.fetch_add(node->body_size(), std::memory_order_relaxed);
    const ReturnedKey key{-static_cast<int>(node->priority), node->seq};
    returned_.emplace(key, std::move(node));
  }
  consumer_side_.requeued.fetch_add(nodes.size(), std::memory_order_relaxed);
  // release: pairs with the acquire load in TakeAny.
  returned_count_.fetch_add(nodes.size(), std::memory_order_release);
  HandOffLocked();
}

void Queue::AddConsumer(const ConsumerState* consumer) {
  MutexLock lock(&mu_);
  consumers_.push_back(consumer);
}

void Queue::RemoveConsumer(const ConsumerState* consumer) {
  MutexLock lock(&mu_);
  auto it = std::find(consumers_.begin(), consumers_.end(), consumer);
  if (it == consumers_.end()) return;
  consumers_.erase(it);
  // The consumer's own waiters leave; with a single active consumer, the
  // next one may now be served.
  WakeAllLocked();
  HandOffLocked();
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
  MutexLock lock(&mu_);
  const uint64_t n = DrainLocked();
  consumer_side_.purged.fetch_add(n, std::memory_order_relaxed);
  return n;
}

uint64_t Queue::End(EndReason reason) {
  int expected = kOpen;
  if (!end_.compare_exchange_strong(
          expected, reason == EndReason::kDeleted ? kDeleted : kBrokerClosed,
          std::memory_order_acq_rel)) {
    return 0;
  }
  MutexLock lock(&mu_);
  const uint64_t n = DrainLocked();
  WakeAllLocked();
  return n;
}

QueueStats Queue::Stats() const {
  QueueStats s;
  s.name = name_;
  s.ready = ready_count_.load(std::memory_order_relaxed);
  s.ready_bytes = ready_bytes_.load(std::memory_order_relaxed);
  s.consumers = consumer_count();
  s.published = publisher_side_.published.load(std::memory_order_relaxed);
  s.refused = publisher_side_.refused.load(std::memory_order_relaxed);
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
  return s;
}

}  // namespace warren::internal
