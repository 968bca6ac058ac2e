#include "warren/consumer.h"

#include <algorithm>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "consumer_state.h"
#include "status_macros.h"
#include "str_util.h"
#include "wal.h"

namespace warren {

// --- Delivery ----------------------------------------------------------------

const Message& Delivery::message() const {
  static const Message kEmpty;
  return envelope_ ? envelope_->message : kEmpty;
}

std::string_view Delivery::exchange() const {
  return envelope_ ? std::string_view(envelope_->exchange) : "";
}

std::string_view Delivery::routing_key() const {
  return envelope_ ? std::string_view(envelope_->routing_key) : "";
}

namespace internal {

// --- ConsumerState -----------------------------------------------------------

ConsumerState::ConsumerState(uint64_t id, std::string tag,
                             std::shared_ptr<Queue> queue, uint32_t prefetch,
                             std::optional<absl::Duration> ack_deadline)
    : id_(id),
      tag_(std::move(tag)),
      queue_(std::move(queue)),
      prefetch_(prefetch),
      ack_deadline_(ack_deadline) {}

ConsumerState::~ConsumerState() { Close(); }

bool ConsumerState::TryReserveSlot() {
  if (prefetch_ == 0) {
    window_used_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  uint32_t used = window_used_.load(std::memory_order_relaxed);
  do {
    if (used >= prefetch_) return false;
  } while (!window_used_.compare_exchange_weak(used, used + 1,
                                               std::memory_order_relaxed));
  return true;
}

void ConsumerState::ReleaseSlots(uint32_t n) {
  window_used_.fetch_sub(n, std::memory_order_relaxed);
  WakeWindowWaiters();
}

void ConsumerState::WakeWindowWaiters() {
  // Whoever waits for the window re-checks under mu_; taking it here orders
  // what changed before their check or their wait.
  MutexLock lock(&mu_);
  window_cv_.SignalAll();
}

absl::StatusOr<Delivery> ConsumerState::Receive(bool wait, absl::Time deadline,
                                                bool wait_for_window) {
  switch (state_.load(std::memory_order_acquire)) {
    case kCancelled:
      return absl::FailedPreconditionError(
          StrCat("consumer '", tag_, "' is cancelled"));
    case kClosed:
      return absl::FailedPreconditionError(
          StrCat("consumer '", tag_, "' is closed"));
    default:
      break;
  }
  WARREN_RETURN_IF_ERROR(queue_->CheckUsable());
  if (!TryReserveSlot()) {
    if (!wait_for_window) {
      return absl::ResourceExhaustedError(
          StrCat("consumer '", tag_, "' holds its prefetch of ", prefetch_,
                 " unsettled deliveries; settle some first"));
    }
    MutexLock lock(&mu_);
    while (!TryReserveSlot()) {
      if (cancelled()) {
        return absl::FailedPreconditionError(
            StrCat("consumer '", tag_, "' is cancelled"));
      }
      // The broker closed or the queue went (a settle or Cancel refused
      // for that woke this wait).
      WARREN_RETURN_IF_ERROR(queue_->CheckUsable());
      if (window_cv_.WaitWithDeadline(&mu_, deadline)) {
        return absl::DeadlineExceededError(
            "the prefetch window stayed full until the deadline");
      }
    }
  }

  absl::StatusOr<NodePtr> node = queue_->Take(this, wait, deadline);
  if (!node.ok()) {
    ReleaseSlots(1);
    return node.status();
  }

  Delivery d;
  uint32_t logged_queue = 0;
  uint64_t logged_id = 0;
  uint32_t logged_deliveries = 0;
  {
    MutexLock lock(&mu_);
    if (!closed_) {
      QueuedMessage& n = **node;
      ++n.deliveries;
      logged_queue = n.wal_queue;
      logged_id = n.envelope->wal_id;
      logged_deliveries = n.deliveries;
      d.envelope_ = n.envelope;
      d.delivery_tag_ = held_.next_tag();
      d.consumer_id_ = id_;
      d.attempt_ = n.deliveries;
      Held held{std::move(*node)};
      if (ack_deadline_) {
        ArmLease(d.delivery_tag_, held, queue_->Now() + *ack_deadline_);
      }
      // Counted before it is held, so a concurrent settle never makes the
      // unacked gauge go below zero.
      queue_->CountDelivered(d.attempt_ > 1);
      held_.Add(std::move(held));
    }
  }
  if (logged_queue != 0) {
    // Counted at recovery: the message comes back redelivered.
    thread_local wal::RecordBuilder record;
    record.Delivered(logged_queue, logged_id, logged_deliveries);
    queue_->link()->wal->Append(record);
  }
  if (*node) {
    // Closed while we were taking: the message goes straight back.
    std::vector<NodePtr> back;
    back.push_back(std::move(*node));
    queue_->Return(std::move(back), Queue::ReturnKind::kUndelivered);
    ReleaseSlots(1);
    return absl::FailedPreconditionError(
        StrCat("consumer '", tag_, "' is closed"));
  }
  return d;
}

absl::StatusOr<std::vector<Delivery>> ConsumerState::ReceiveBatch(
    size_t max_messages, absl::Time deadline) {
  WARREN_RETURN_IF_ERROR(CheckBrokerOpen());
  if (max_messages == 0) {
    return absl::InvalidArgumentError("max_messages must be at least 1");
  }
  WARREN_ASSIGN_OR_RETURN(Delivery first, Receive(true, deadline));
  std::vector<Delivery> out;
  // Room for a typical batch: `max_messages` is a bound, not a size (a
  // caller may pass SIZE_MAX for "all that is ready").
  out.reserve(std::min<size_t>(max_messages, 256));
  out.push_back(std::move(first));
  while (out.size() < max_messages) {
    absl::StatusOr<Delivery> next = Receive(false, absl::InfinitePast());
    if (!next.ok()) break;
    out.push_back(*std::move(next));
  }
  return out;
}

absl::Status ConsumerState::CheckBrokerOpen() const {
  if (absl::Status s = queue_->CheckUsable(); absl::IsFailedPrecondition(s)) {
    return s;
  }
  return absl::OkStatus();
}

absl::Status ConsumerState::CheckOwner(const Delivery& d) const {
  if (d.consumer_id_ != id_) {
    return absl::InvalidArgumentError(StrCat(
        "delivery ", d.delivery_tag_, " belongs to another consumer (id ",
        d.consumer_id_, "), not to '", tag_, "'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ConsumerState::HeldList> ConsumerState::Remove(const Delivery& d,
                                                              bool multiple) {
  // The broker is closed, or the queue deleted with its messages (the held
  // ones too: settling one would dead-letter or count it). Checked first:
  // after Close every call is kFailedPrecondition.
  if (absl::Status s = queue_->CheckUsable(); !s.ok()) {
    WakeWindowWaiters();
    return s;
  }
  WARREN_RETURN_IF_ERROR(CheckOwner(d));
  HeldList removed;
  std::vector<NodePtr> lapsed;
  {
    MutexLock lock(&mu_);
    if (closed_) {
      return absl::FailedPreconditionError(StrCat(
          "consumer '", tag_,
          "' is closed; the deliveries it held were returned to the queue"));
    }
    if (held_.Find(d.delivery_tag_) == nullptr) {
      return absl::FailedPreconditionError(
          StrCat("unknown or already settled delivery tag ", d.delivery_tag_,
                 " on consumer '", tag_, "'"));
    }
    TakeLapsedLocked(d.delivery_tag_, multiple, lapsed);
    if (held_.Find(d.delivery_tag_) != nullptr) {
      held_.Remove(d.delivery_tag_, multiple, removed);
      for (Held& h : removed) CancelLease(h.lease);
      window_used_.fetch_sub(static_cast<uint32_t>(removed.size()),
                             std::memory_order_relaxed);
      window_cv_.SignalAll();
    }
  }
  if (!lapsed.empty()) {
    ReturnLapsed(std::move(lapsed));
    // As if its timer had run: the settle finds nothing.
    if (removed.empty()) {
      return absl::FailedPreconditionError(
          StrCat("the lease of delivery tag ", d.delivery_tag_,
                 " on consumer '", tag_, "' expired"));
    }
  }
  // The caller counts them settled once they are where they go next, so the
  // statistics never show a message in no state at all.
  return removed;
}

void ConsumerState::TakeLapsedLocked(uint64_t tag, bool multiple,
                                     std::vector<NodePtr>& lapsed) {
  if (!leased_) return;
  const absl::Time now = queue_->Now();
  absl::InlinedVector<uint64_t, 1> tags;
  held_.ForEach(multiple ? 0 : tag, tag, [&](uint64_t t, const Held& h) {
    if (h.lease_until <= now) tags.push_back(t);
  });
  for (uint64_t t : tags) TakeOneLocked(t, lapsed);
}

void ConsumerState::TakeOneLocked(uint64_t tag, std::vector<NodePtr>& out) {
  HeldList one;
  held_.Remove(tag, /*multiple=*/false, one);
  CancelLease(one[0].lease);
  out.push_back(std::move(one[0].node));
}

void ConsumerState::ReturnLapsed(std::vector<NodePtr> lapsed) {
  const size_t n = lapsed.size();
  if (n == 0) return;
  ReleaseSlots(static_cast<uint32_t>(n));
  queue_->CountLeaseExpired(n);
  queue_->Return(std::move(lapsed), Queue::ReturnKind::kLeaseExpired);
  queue_->CountSettled(n);
}

absl::Status ConsumerState::Ack(const Delivery& d, bool multiple) {
  WARREN_ASSIGN_OR_RETURN(HeldList removed, Remove(d, multiple));
  queue_->CountAcked(removed.size());
  queue_->CountSettled(removed.size());
  // Persistent messages: one settle record for all of them, durable (as the
  // sync policy promises) before the ack returns.
  uint64_t lsn = 0;
  Wal* wal = queue_->link()->wal.get();
  if (wal != nullptr && queue_->durable_id() != 0) {
    absl::InlinedVector<uint64_t, 8> ids;
    for (Held& h : removed) {
      if (h.node->wal_queue == 0) continue;
      ids.push_back(h.node->envelope->wal_id);
      h.node->wal_queue = 0;
    }
    if (!ids.empty()) {
      thread_local wal::RecordBuilder record;
      record.Settle(queue_->durable_id(), ids.data(), ids.size());
      lsn = wal->Append(record, /*own_sync=*/false, /*will_wait=*/true);
    }
  }
  removed.clear();
  if (lsn != 0) return wal->Wait(lsn, Wal::NeedsSync(wal->policy()));
  return absl::OkStatus();
}

absl::Status ConsumerState::NegativeSettle(const Delivery& d, Negative kind,
                                           bool requeue, bool multiple) {
  WARREN_ASSIGN_OR_RETURN(HeldList removed, Remove(d, multiple));
  const size_t n = removed.size();
  if (kind == Negative::kNack) {
    queue_->CountNacked(n);
  } else {
    queue_->CountRejected(n);
  }
  std::vector<NodePtr> nodes;
  nodes.reserve(n);
  for (Held& h : removed) nodes.push_back(std::move(h.node));
  if (requeue) {
    queue_->Return(std::move(nodes), Queue::ReturnKind::kRequeue);
  } else {
    queue_->DeadLetter(std::move(nodes), DeathReason::kRejected);
  }
  queue_->CountSettled(n);
  return absl::OkStatus();
}

absl::Status ConsumerState::Cancel() {
  if (absl::Status s = queue_->CheckUsable(); absl::IsFailedPrecondition(s)) {
    // The broker is closed. A subscription's worker waiting for room in the
    // window wakes to see that (Subscription::Stop cancels).
    WakeWindowWaiters();
    return s;
  }
  int expected = kActive;
  if (!state_.compare_exchange_strong(expected, kCancelled,
                                      std::memory_order_acq_rel)) {
    return absl::FailedPreconditionError(
        StrCat("consumer '", tag_, "' is already ",
               expected == kCancelled ? "cancelled" : "closed"));
  }
  queue_->RemoveConsumer(this);
  {
    MutexLock lock(&mu_);
    window_cv_.SignalAll();
  }
  queue_->ConsumerGone();
  return absl::OkStatus();
}

void ConsumerState::Close() {
  // From here on it takes nothing new (its waiters are skipped), but it
  // stays registered until what it held is back: with a single active
  // consumer, the next one takes over only then, so it starts with those
  // messages and not with newer ones.
  const bool was_active =
      state_.exchange(kClosed, std::memory_order_acq_rel) == kActive;
  if (!ReturnHeld(/*close=*/true)) return;
  if (was_active) {
    queue_->RemoveConsumer(this);
    queue_->ConsumerGone();
  }
}

void ConsumerState::ArmLease(uint64_t tag, Held& held, absl::Time at) {
  held.lease_generation = ++next_lease_generation_;
  held.lease_until = at;
  leased_ = true;
  BrokerLink& link = *queue_->link();
  MutexLock lock(&link.timers_mu);
  if (link.timers == nullptr) {
    held.lease = TimerService::kNoTimer;
    return;
  }
  held.lease = link.timers->Schedule(
      at, [weak = weak_from_this(), tag, gen = held.lease_generation] {
        if (auto self = weak.lock()) self->OnLeaseExpired(tag, gen);
      });
}

void ConsumerState::CancelLease(TimerService::TimerId id) {
  if (id == TimerService::kNoTimer) return;
  BrokerLink& link = *queue_->link();
  MutexLock lock(&link.timers_mu);
  if (link.timers != nullptr) link.timers->Cancel(id);
}

void ConsumerState::OnLeaseExpired(uint64_t tag, uint64_t generation) {
  std::vector<NodePtr> nodes;
  {
    MutexLock lock(&mu_);
    Held* held = held_.Find(tag);
    if (held == nullptr || held->lease_generation != generation) {
      return;  // settled, or the lease was renewed
    }
    HeldList removed;
    held_.Remove(tag, /*multiple=*/false, removed);
    nodes.push_back(std::move(removed[0].node));
  }
  ReturnLapsed(std::move(nodes));
}

absl::Status ConsumerState::Extend(const Delivery& d,
                                   absl::Duration extension) {
  WARREN_RETURN_IF_ERROR(CheckBrokerOpen());
  WARREN_RETURN_IF_ERROR(CheckOwner(d));
  if (extension < absl::ZeroDuration() ||
      extension > absl::Hours(24 * 365 * 10)) {
    return absl::InvalidArgumentError(
        "a lease extension must be between 0 and 10 years");
  }
  WARREN_RETURN_IF_ERROR(queue_->CheckUsable());
  std::vector<NodePtr> lapsed;
  bool expired = false;
  {
    MutexLock lock(&mu_);
    if (closed_) {
      return absl::FailedPreconditionError(
          StrCat("consumer '", tag_, "' is closed"));
    }
    if (held_.Find(d.delivery_tag_) == nullptr) {
      return absl::FailedPreconditionError(
          StrCat("unknown or already settled delivery tag ", d.delivery_tag_,
                 " on consumer '", tag_, "' (or its lease expired)"));
    }
    TakeLapsedLocked(d.delivery_tag_, /*multiple=*/false, lapsed);
    if (Held* held = held_.Find(d.delivery_tag_); held == nullptr) {
      expired = true;
    } else if (extension == absl::ZeroDuration()) {
      // Over now (as SQS's visibility timeout of 0): back to the queue at
      // once, not when a timer runs.
      TakeOneLocked(d.delivery_tag_, lapsed);
    } else {
      CancelLease(held->lease);
      ArmLease(d.delivery_tag_, *held, queue_->Now() + extension);
    }
  }
  ReturnLapsed(std::move(lapsed));
  if (expired) {
    return absl::FailedPreconditionError(
        StrCat("the lease of delivery tag ", d.delivery_tag_, " on consumer '",
               tag_, "' expired"));
  }
  return absl::OkStatus();
}

void ConsumerState::ReturnAllBut(uint64_t keep) {
  (void)ReturnHeld(/*close=*/false, keep);
}

bool ConsumerState::ReturnHeld(bool close, uint64_t keep) {
  std::vector<NodePtr> nodes;
  {
    MutexLock lock(&mu_);
    if (closed_) return false;
    closed_ = close;
    HeldList removed;
    if (keep == 0) {
      held_.RemoveAll(removed);
    } else {
      held_.RemoveAllBut(keep, removed);
    }
    nodes.reserve(removed.size());
    for (Held& held : removed) {
      CancelLease(held.lease);
      nodes.push_back(std::move(held.node));
    }
    window_cv_.SignalAll();
  }
  window_used_.fetch_sub(static_cast<uint32_t>(nodes.size()),
                         std::memory_order_relaxed);
  const size_t n = nodes.size();
  queue_->Return(std::move(nodes), Queue::ReturnKind::kClosed);
  queue_->CountSettled(n);
  return true;
}

size_t ConsumerState::unacked() const {
  MutexLock lock(&mu_);
  return held_.size();
}

}  // namespace internal

// --- Consumer ----------------------------------------------------------------

namespace {
absl::Time DeadlineAfter(absl::Duration timeout) {
  return timeout == absl::InfiniteDuration() ? absl::InfiniteFuture()
                                             : absl::Now() + timeout;
}
}  // namespace

Consumer::Consumer(std::shared_ptr<internal::ConsumerState> state)
    : state_(std::move(state)) {}

Consumer::~Consumer() { state_->Close(); }

absl::StatusOr<Delivery> Consumer::Receive(absl::Duration timeout) {
  return state_->Receive(/*wait=*/true, DeadlineAfter(timeout));
}

absl::StatusOr<Delivery> Consumer::TryReceive() {
  return state_->Receive(/*wait=*/false, absl::InfinitePast());
}

absl::StatusOr<std::vector<Delivery>> Consumer::ReceiveBatch(
    size_t max_messages, absl::Duration timeout) {
  return state_->ReceiveBatch(max_messages, DeadlineAfter(timeout));
}

absl::Status Consumer::Ack(const Delivery& delivery, AckOptions options) {
  return state_->Ack(delivery, options.multiple);
}

absl::Status Consumer::Nack(const Delivery& delivery, NackOptions options) {
  return state_->NegativeSettle(delivery,
                                internal::ConsumerState::Negative::kNack,
                                options.requeue, options.multiple);
}

absl::Status Consumer::Reject(const Delivery& delivery, RejectOptions options) {
  return state_->NegativeSettle(delivery,
                                internal::ConsumerState::Negative::kReject,
                                options.requeue, /*multiple=*/false);
}

absl::Status Consumer::Extend(const Delivery& delivery,
                              absl::Duration extension) {
  return state_->Extend(delivery, extension);
}

absl::Status Consumer::Cancel() { return state_->Cancel(); }
void Consumer::Close() { state_->Close(); }
uint64_t Consumer::id() const { return state_->id(); }
const std::string& Consumer::tag() const { return state_->tag(); }
const std::string& Consumer::queue() const { return state_->queue_name(); }
size_t Consumer::unacked() const { return state_->unacked(); }

}  // namespace warren
