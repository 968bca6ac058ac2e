// The state behind a Subscription handle: a consumer and its worker pool.

#ifndef WARREN_SRC_SUBSCRIPTION_STATE_H_
#define WARREN_SRC_SUBSCRIPTION_STATE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"
#include "consumer_state.h"
#include "sync.h"
#include "warren/consumer.h"

namespace warren::internal {

// Workers receive from one consumer (waiting when the prefetch window is
// full) and run the handler. Thread-safe.
class SubscriptionState {
 public:
  SubscriptionState(std::unique_ptr<Consumer> consumer,
                    HandlerWithConsumer handler, uint32_t workers);
  // Stops with no grace period and joins the workers (waiting for handlers
  // that are still running).
  ~SubscriptionState();

  absl::Status Stop(absl::Duration grace);
  Consumer& consumer() { return *consumer_; }
  uint64_t handled() const { return handled_.load(std::memory_order_relaxed); }
  uint64_t failed() const { return failed_.load(std::memory_order_relaxed); }

 private:
  void WorkerLoop();
  void Handle(const Delivery& d);
  void Join();

  // Constant after construction.
  const std::unique_ptr<Consumer> consumer_;
  // Called concurrently by the workers; the user's handler is thread-safe.
  HandlerWithConsumer handler_;

  std::atomic<uint64_t> handled_{0};
  std::atomic<uint64_t> failed_{0};

  Mutex mu_;
  // Signalled when running_ drops to 1 or 0, and, once stopped, when
  // receiving_ drops to 0.
  CondVar idle_cv_;
  // Workers in a receive, and workers handling a delivery.
  int receiving_ ABSL_GUARDED_BY(mu_) = 0;
  int running_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;

  // Last member: the workers start once everything above is built.
  std::vector<std::thread> workers_;
};

}  // namespace warren::internal

#endif  // WARREN_SRC_SUBSCRIPTION_STATE_H_
