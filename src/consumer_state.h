// The state behind a Consumer handle: its window and its unacked deliveries.

#ifndef WARREN_SRC_CONSUMER_STATE_H_
#define WARREN_SRC_CONSUMER_STATE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "envelope.h"
#include "queue.h"
#include "sync.h"
#include "warren/consumer.h"

namespace warren::internal {

// One consumer of one queue. Deliveries it holds live in its own table until
// settled, so settling needs no lock shared with other consumers.
// Thread-safe.
class ConsumerState : public std::enable_shared_from_this<ConsumerState> {
 public:
  ConsumerState(uint64_t id, std::string tag, std::shared_ptr<Queue> queue,
                uint32_t prefetch, std::optional<absl::Duration> ack_deadline);
  ~ConsumerState();

  // Receives one delivery. `wait`: park until `deadline`; otherwise return
  // kUnavailable at once. `wait_for_window`: when the prefetch window is
  // full, wait for a settle instead of returning kResourceExhausted.
  absl::StatusOr<Delivery> Receive(bool wait, absl::Time deadline,
                                   bool wait_for_window = false);
  absl::StatusOr<std::vector<Delivery>> ReceiveBatch(size_t max_messages,
                                                     absl::Time deadline);

  absl::Status Ack(const Delivery& d, bool multiple);
  // kNack or kReject: both settle negatively; they differ in counters only.
  enum class Negative { kNack, kReject };
  absl::Status NegativeSettle(const Delivery& d, Negative kind, bool requeue,
                              bool multiple);

  absl::Status Extend(const Delivery& d, absl::Duration extension);
  absl::Status Cancel();
  void Close();

  bool cancelled() const {
    return state_.load(std::memory_order_acquire) != kActive;
  }
  uint64_t id() const { return id_; }
  const std::string& tag() const { return tag_; }
  const std::string& queue_name() const { return queue_->name(); }
  const std::shared_ptr<Queue>& queue() const { return queue_; }
  size_t unacked() const;

 private:
  static constexpr int kActive = 0;
  static constexpr int kCancelled = 1;
  static constexpr int kClosed = 2;

  // Reserves a window slot; false when the window is full.
  bool TryReserveSlot();
  void ReleaseSlots(uint32_t n);
  // Moves the settled deliveries (one, or all up to it) out of held_.
  absl::StatusOr<std::vector<NodePtr>> Remove(const Delivery& d,
                                              bool multiple);
  absl::Status CheckOwner(const Delivery& d) const;
  struct Held {
    NodePtr node;
    TimerService::TimerId lease = TimerService::kNoTimer;
    uint64_t lease_generation = 0;  // which lease timer may expire it
  };
  // (Re)arms the lease of `held` (delivery `tag`), due at `at`.
  void ArmLease(uint64_t tag, Held& held, absl::Time at)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CancelLease(TimerService::TimerId id);
  void OnLeaseExpired(uint64_t tag, uint64_t generation);

  // Constant after construction.
  const uint64_t id_;
  const std::string tag_;
  const std::shared_ptr<Queue> queue_;
  const uint32_t prefetch_;
  const std::optional<absl::Duration> ack_deadline_;

  std::atomic<int> state_{kActive};
  // Held deliveries plus receives in progress; at most prefetch_.
  std::atomic<uint32_t> window_used_{0};

  mutable Mutex mu_;
  CondVar window_cv_;  // signalled when a slot is released or on cancel
  absl::btree_map<uint64_t, Held> held_ ABSL_GUARDED_BY(mu_);
  uint64_t next_tag_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_lease_generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace warren::internal

#endif  // WARREN_SRC_CONSUMER_STATE_H_
