#include <utility>

#include "str_util.h"
#include "subscription_state.h"

namespace warren {
namespace internal {
namespace {

// The subscription whose worker this thread is; null on other threads.
thread_local const SubscriptionState* current_subscription = nullptr;
// The delivery its handler is running for.
thread_local uint64_t current_delivery_tag = 0;

}  // namespace

SubscriptionState::SubscriptionState(std::unique_ptr<Consumer> consumer,
                                     HandlerWithConsumer handler,
                                     uint32_t workers)
    : consumer_(std::move(consumer)), handler_(std::move(handler)) {
  workers_.reserve(workers);
  for (uint32_t i = 0; i < workers; ++i) {
    workers_.emplace_back([this] { WorkerLoop(); });
  }
}

SubscriptionState::~SubscriptionState() {
  (void)Stop(absl::ZeroDuration());
  Join();
}

void SubscriptionState::WorkerLoop() {
  current_subscription = this;
  ConsumerState& state = *consumer_->state_;
  for (;;) {
    // Stop waits for the receives in progress to end (the cancel ends them
    // at once), so that a delivery taken just before the cancel is handled,
    // not requeued under a handler about to run; then for the handlers.
    {
      MutexLock lock(&mu_);
      if (stopped_) return;
      ++receiving_;
    }
    absl::StatusOr<Delivery> d =
        state.Receive(/*wait=*/true, absl::InfiniteFuture(),
                      /*wait_for_window=*/true);
    {
      MutexLock lock(&mu_);
      --receiving_;
      if (d.ok()) ++running_;
      if (stopped_ && receiving_ == 0) idle_cv_.SignalAll();
      if (!d.ok()) return;  // cancelled, closed, deleted or broker closed
    }
    Handle(*d);
    MutexLock lock(&mu_);
    // Stop waits for none to run, or for one (the handler that called it).
    if (--running_ <= 1) idle_cv_.SignalAll();
  }
}

void SubscriptionState::Handle(const Delivery& d) {
  HandlerResult result = HandlerResult::kRequeue;
  bool threw = false;
  current_delivery_tag = d.delivery_tag();
#if defined(__cpp_exceptions)
  try {
    result = handler_(d, *consumer_);
  } catch (...) {
    threw = true;
  }
#else
  result = handler_(d, *consumer_);
#endif
  if (threw) {
    failed_.fetch_add(1, std::memory_order_relaxed);
    result = HandlerResult::kRequeue;
  }
  handled_.fetch_add(1, std::memory_order_relaxed);
  // A failed settle means the subscription was stopped past its grace
  // period and the delivery was already returned to the queue.
  switch (result) {
    case HandlerResult::kAck:
      (void)consumer_->Ack(d);
      break;
    case HandlerResult::kRequeue:
      (void)consumer_->Nack(d, {.requeue = true});
      break;
    case HandlerResult::kReject:
      (void)consumer_->Reject(d, {.requeue = false});
      break;
    case HandlerResult::kSettled:
      break;
  }
}

absl::Status SubscriptionState::Stop(absl::Duration grace) {
  {
    MutexLock lock(&mu_);
    if (stopped_) {
      return absl::FailedPreconditionError("the subscription is stopped");
    }
    stopped_ = true;
  }
  // Stop intake: workers waiting for a message wake and exit.
  (void)consumer_->Cancel();
  // Called by a handler of this subscription: it waits for the others, and
  // its own delivery is settled by its result once it returns.
  const int self = current_subscription == this ? 1 : 0;
  bool finished;
  {
    MutexLock lock(&mu_);
    const absl::Time deadline = grace == absl::InfiniteDuration()
                                    ? absl::InfiniteFuture()
                                    : absl::Now() + grace;
    // Not bounded by the grace: the cancel ends every receive at once, and
    // a worker parked in one runs no handler.
    while (receiving_ > 0) idle_cv_.Wait(&mu_);
    while (running_ > self) {
      if (idle_cv_.WaitWithDeadline(&mu_, deadline)) break;
    }
    finished = running_ == self;
  }
  if (self == 1) {
    // What the other handlers left unsettled goes back when the consumer
    // closes, with the subscription; the workers are joined then too. Past
    // the deadline it goes back now, all but the caller's own delivery,
    // which its handler's result settles.
    if (finished) return absl::OkStatus();
    consumer_->state_->ReturnAllBut(current_delivery_tag);
    return absl::DeadlineExceededError(
        "handlers were still running at the deadline; their deliveries were "
        "requeued");
  }
  // Everything still held (handlers past the deadline, or deliveries whose
  // handler settled nothing) goes back to the queue.
  consumer_->Close();
  if (!finished) {
    return absl::DeadlineExceededError(
        "handlers were still running at the deadline; their deliveries were "
        "requeued");
  }
  Join();
  return absl::OkStatus();
}

void SubscriptionState::Join() {
  for (std::thread& t : workers_) {
    if (t.joinable()) t.join();
  }
}

}  // namespace internal

// --- Subscription
// --------------------------------------------------------------

Subscription::Subscription(std::unique_ptr<internal::SubscriptionState> state)
    : state_(std::move(state)) {}

Subscription::~Subscription() = default;

absl::Status Subscription::Stop(absl::Duration grace) {
  return state_->Stop(grace);
}

Consumer& Subscription::consumer() { return state_->consumer(); }

uint64_t Subscription::handled() const { return state_->handled(); }
uint64_t Subscription::failed() const { return state_->failed(); }

}  // namespace warren
