// The state behind a Consumer handle: its window and its unacked deliveries.

#ifndef WARREN_SRC_CONSUMER_STATE_H_
#define WARREN_SRC_CONSUMER_STATE_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "envelope.h"
#include "queue.h"
#include "sync.h"
#include "warren/consumer.h"

namespace warren::internal {

// The deliveries a consumer holds, by delivery tag. Tags are handed out in
// order and most settles come in order, so a ring of slots from the oldest
// held tag on makes every operation O(1) (a multiple settle is linear in the
// tags it covers) and allocates only to grow. A delivery held long while
// many after it are settled (a long job, kept with Extend) would stretch the
// ring over every tag since: when the ring is full and at most half of it
// is held, the oldest held ones move out to an ordered side table (the
// stragglers), so its size follows what is held, not what went by.
// Thread-compatible.
template <typename Held>
class HeldWindow {
 public:
  // The tag the next Add gets; tags start at 1.
  uint64_t next_tag() const { return base_ + span_; }
  size_t size() const { return count_ + stragglers_.size(); }
  // Slots in the ring (for tests).
  size_t capacity() const { return slots_.size(); }

  void Add(Held held) {
    if (span_ == slots_.size()) MakeRoom();
    slots_[(head_ + span_) & (slots_.size() - 1)] = std::move(held);
    ++span_;
    ++count_;
  }

  // The delivery with `tag`, or nullptr when it is not held.
  Held* Find(uint64_t tag) {
    if (tag < base_) {
      if (stragglers_.empty()) return nullptr;
      auto it = stragglers_.find(tag);
      return it == stragglers_.end() ? nullptr : &it->second;
    }
    if (tag >= base_ + span_) return nullptr;
    Held& h = slots_[(head_ + (tag - base_)) & (slots_.size() - 1)];
    return h.node ? &h : nullptr;
  }

  // Moves the held delivery `tag`, and with `multiple` every held one
  // before it, into `out` in tag order (none when none is held).
  template <typename Out>
  void Remove(uint64_t tag, bool multiple, Out& out) {
    // Stragglers are older than everything in the ring.
    if (!stragglers_.empty()) {
      if (multiple) {
        const auto end = stragglers_.upper_bound(tag);
        for (auto it = stragglers_.begin(); it != end; ++it) {
          out.push_back(std::move(it->second));
        }
        stragglers_.erase(stragglers_.begin(), end);
      } else if (tag < base_) {
        if (auto it = stragglers_.find(tag); it != stragglers_.end()) {
          out.push_back(std::move(it->second));
          stragglers_.erase(it);
        }
        return;
      }
    }
    if (tag < base_ || span_ == 0) return;
    const uint64_t first = multiple ? base_ : tag;
    const uint64_t last = std::min(tag, base_ + span_ - 1);
    for (uint64_t t = first; t <= last; ++t) {
      Held& h = slots_[(head_ + (t - base_)) & (slots_.size() - 1)];
      if (!h.node) continue;
      out.push_back(std::move(h));
      h.node = nullptr;
      --count_;
    }
    SkipSettled();
  }

  // Calls fn(tag, held) for each held delivery from `first` to `last`, in
  // tag order.
  template <typename F>
  void ForEach(uint64_t first, uint64_t last, F fn) {
    for (auto it = stragglers_.lower_bound(first);
         it != stragglers_.end() && it->first <= last; ++it) {
      fn(it->first, it->second);
    }
    const uint64_t end = std::min(last + 1, base_ + span_);
    for (uint64_t t = std::max(first, base_); t < end; ++t) {
      Held& h = slots_[(head_ + (t - base_)) & (slots_.size() - 1)];
      if (h.node) fn(t, h);
    }
  }

  template <typename Out>
  void RemoveAll(Out& out) {
    if (size() > 0) Remove(next_tag() - 1, /*multiple=*/true, out);
  }

  // Moves every held delivery but `keep` into `out`, in tag order.
  template <typename Out>
  void RemoveAllBut(uint64_t keep, Out& out) {
    if (keep > 1) Remove(keep - 1, /*multiple=*/true, out);
    Out kept;
    Remove(keep, /*multiple=*/false, kept);
    RemoveAll(out);
    // The ring is empty now, so `keep` is older than its base: it stays as
    // a straggler.
    if (!kept.empty()) stragglers_.emplace(keep, std::move(kept[0]));
  }

 private:
  // Invariant: the slot at head_ is held, unless the ring is empty.
  void SkipSettled() {
    while (span_ > 0 && !slots_[head_].node) {
      head_ = (head_ + 1) & (slots_.size() - 1);
      ++base_;
      --span_;
    }
  }

  // The ring is full: moves the oldest held deliveries out to the
  // stragglers until at most half of it is in use, when at most half of it
  // is held; otherwise doubles it.
  void MakeRoom() {
    if (!slots_.empty() && count_ * 2 <= span_) {
      while (span_ > slots_.size() / 2) {
        Held& h = slots_[head_];  // held (invariant)
        stragglers_.emplace(base_, std::move(h));
        h.node = nullptr;
        --count_;
        SkipSettled();
      }
      return;
    }
    std::vector<Held> bigger(slots_.empty() ? 16 : slots_.size() * 2);
    for (size_t i = 0; i < span_; ++i) {
      bigger[i] = std::move(slots_[(head_ + i) & (slots_.size() - 1)]);
    }
    slots_ = std::move(bigger);
    head_ = 0;
  }

  std::vector<Held> slots_;  // power-of-two size
  uint64_t base_ = 1;        // tag of the slot at head_
  size_t head_ = 0;
  size_t span_ = 0;   // tags from base_ that are held or settled out of order
  size_t count_ = 0;  // held in the ring
  std::map<uint64_t, Held> stragglers_;  // held, older than base_
};

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
  // Returns every delivery it holds but `keep` to the queue, as Close
  // would, and stays open (a subscription's handler that stopped it settles
  // `keep` after the grace for the others ran out).
  void ReturnAllBut(uint64_t keep);

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
  // Wakes a subscription worker waiting for room in the window, to look
  // again (at the window, the cancel, and the queue's state).
  void WakeWindowWaiters() ABSL_LOCKS_EXCLUDED(mu_);
  struct Held;
  // One settle's deliveries: usually one, so no allocation.
  using HeldList = absl::InlinedVector<Held, 1>;
  // Moves the settled deliveries (one, or all up to it) out of held_ and
  // frees their window slots.
  absl::StatusOr<HeldList> Remove(const Delivery& d, bool multiple);
  // kFailedPrecondition once the broker is closed (a deleted queue is left
  // to the checks that follow).
  absl::Status CheckBrokerOpen() const;
  absl::Status CheckOwner(const Delivery& d) const;
  struct Held {
    NodePtr node;
    TimerService::TimerId lease = TimerService::kNoTimer;
    uint64_t lease_generation = 0;  // which lease timer may expire it
    absl::Time lease_until = absl::InfiniteFuture();
  };
  // A lease is over at its deadline, whether or not its timer has run yet
  // (a manual clock runs timers only when advanced; a busy timer thread
  // runs them late). Takes the deliveries up to `tag` (with `multiple`) or
  // `tag` alone whose leases are over out of held_, into `lapsed`, for
  // ReturnLapsed once mu_ is released.
  void TakeLapsedLocked(uint64_t tag, bool multiple,
                        std::vector<NodePtr>& lapsed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Returns what it holds, all but `keep` when not 0 (tags start at 1), to
  // the queue as a close does; with `close`, closes it too. False when it
  // was closed already.
  bool ReturnHeld(bool close, uint64_t keep = 0) ABSL_LOCKS_EXCLUDED(mu_);
  // Moves held delivery `tag` (which must be held) out of held_ into `out`,
  // cancelling its lease timer.
  void TakeOneLocked(uint64_t tag, std::vector<NodePtr>& out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Returns deliveries whose leases are over, as their timers would.
  void ReturnLapsed(std::vector<NodePtr> lapsed) ABSL_LOCKS_EXCLUDED(mu_);
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
  HeldWindow<Held> held_ ABSL_GUARDED_BY(mu_);
  uint64_t next_lease_generation_ ABSL_GUARDED_BY(mu_) = 0;
  // Some delivery has had a lease (so settles look at lease deadlines).
  bool leased_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace warren::internal

#endif  // WARREN_SRC_CONSUMER_STATE_H_
