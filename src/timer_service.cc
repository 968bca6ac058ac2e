// TimerService: a binary heap of (deadline, id) with lazy deletion, a hash
// map from pending id to slot, and a slab of callbacks.

#include "timer_service.h"

#include <algorithm>
#include <cassert>
#include <cstddef>
#include <optional>
#include <thread>
#include <utility>

#include "absl/functional/any_invocable.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "sync.h"
#include "warren/clock.h"

namespace warren::internal {
namespace {

// The longest the timer thread sleeps in one wait.
constexpr absl::Duration kMaxSleep = absl::Hours(1);

}  // namespace

TimerService::TimerService(Clock* clock)
    : clock_(clock), manual_(clock->manual()) {
  if (manual_) {
    clock_->AddListener(this);
  } else {
    thread_ = std::thread([this] { ThreadLoop(); });
  }
}

TimerService::~TimerService() {
  if (manual_) {
    // Waits for advances on other threads that are calling us.
    clock_->RemoveListener(this);
  } else {
    // Invariant: not destroyed from its own callback (the thread would join
    // itself).
    assert(std::this_thread::get_id() != thread_.get_id());
    {
      MutexLock lock(&mu_);
      stop_ = true;
    }
    wake_.SignalAll();
    thread_.join();
  }
  MutexLock lock(&mu_);
  // Invariant: nobody is running callbacks any more (the pending ones are
  // destroyed with the slab, unrun).
  assert(!running_);
}

TimerService::TimerId TimerService::Schedule(absl::Time deadline,
                                             absl::AnyInvocable<void()> fn) {
  assert(fn != nullptr);
  TimerId id;
  bool earliest;
  {
    MutexLock lock(&mu_);
    id = next_id_++;
    slot_of_.emplace(id, StoreLocked(std::move(fn)));
    heap_.push_back(HeapEntry{deadline, id});
    std::push_heap(heap_.begin(), heap_.end(), Later());
    earliest = heap_.front().id == id;
  }
  // Only a new earliest deadline changes how long the timer thread sleeps.
  if (earliest && !manual_) wake_.Signal();
  return id;
}

TimerService::TimerId TimerService::ScheduleAfter(
    absl::Duration delay, absl::AnyInvocable<void()> fn) {
  return Schedule(clock_->Now() + delay, std::move(fn));
}

bool TimerService::Cancel(TimerId id) {
  // Destroyed after the lock is released: its destructor may run user code
  // that calls back into the service.
  absl::AnyInvocable<void()> fn;
  {
    MutexLock lock(&mu_);
    fn = TakeLocked(id);
    if (fn == nullptr) return false;
    // The heap entry stays (lazy deletion) unless it is on top. No need to
    // wake the timer thread: it will wake at the old deadline, find nothing
    // due and sleep again.
    PruneTopLocked();
    MaybeCompactLocked();
  }
  return true;
}

size_t TimerService::RunDue() {
  const std::thread::id self = std::this_thread::get_id();
  {
    MutexLock lock(&mu_);
    // Nested in one of our own callbacks: the outer RunDue re-reads the
    // clock and runs what is due before it returns.
    if (running_ && runner_ == self) return 0;
    while (running_) run_done_.Wait(&mu_);
    running_ = true;
    runner_ = self;
  }
  size_t ran = 0;
  absl::Time now = clock_->Now();
  for (;;) {
    absl::AnyInvocable<void()> fn;
    std::optional<absl::Time> next;  // set when nothing is due at `now`
    {
      MutexLock lock(&mu_);
      if (stop_ || heap_.empty()) break;
      if (heap_.front().deadline > now) {
        next = heap_.front().deadline;
      } else {
        std::pop_heap(heap_.begin(), heap_.end(), Later());
        const TimerId id = heap_.back().id;
        heap_.pop_back();
        fn = TakeLocked(id);
        // Invariant: the top of the heap is pending (PruneTopLocked).
        assert(fn != nullptr);
        PruneTopLocked();
      }
    }
    if (next.has_value()) {
      // A callback may have moved a manual clock, or real time has passed:
      // look once more before giving up.
      now = clock_->Now();
      if (*next > now) break;
      continue;
    }
    fn();
    ++ran;
  }
  {
    MutexLock lock(&mu_);
    running_ = false;
    runner_ = std::thread::id();
  }
  run_done_.SignalAll();
  return ran;
}

size_t TimerService::pending() const {
  MutexLock lock(&mu_);
  return slot_of_.size();
}

absl::Time TimerService::Now() const { return clock_->Now(); }

std::optional<absl::Time> TimerService::NextDeadline() const {
  MutexLock lock(&mu_);
  if (heap_.empty()) return std::nullopt;
  return heap_.front().deadline;
}

void TimerService::OnTimeMoved(absl::Time /*now*/) { RunDue(); }

void TimerService::ThreadLoop() {
  for (;;) {
    {
      MutexLock lock(&mu_);
      for (;;) {
        if (stop_) return;
        if (heap_.empty()) {
          wake_.Wait(&mu_);
          continue;
        }
        // The clock need not be absl::Now(): sleep for the clock's distance
        // to the deadline, measured in real time. Capped, so that a deadline
        // centuries away does not overflow std::chrono inside the wait; the
        // thread then wakes once in a while for nothing.
        const absl::Duration wait = heap_.front().deadline - clock_->Now();
        if (wait <= absl::ZeroDuration()) break;
        wake_.WaitWithDeadline(&mu_, absl::Now() + std::min(wait, kMaxSleep));
      }
    }
    RunDue();
  }
}

uint32_t TimerService::StoreLocked(absl::AnyInvocable<void()> fn) {
  uint32_t slot;
  if (!free_slots_.empty()) {
    slot = free_slots_.back();
    free_slots_.pop_back();
  } else {
    slot = slots_used_++;
    // Invariant: fewer than 2^32 timers are pending at once.
    assert(slots_used_ != 0);
    if ((slot & (kChunkSize - 1)) == 0) {
      chunks_.push_back(
          std::make_unique<absl::AnyInvocable<void()>[]>(kChunkSize));
    }
  }
  SlotLocked(slot) = std::move(fn);
  return slot;
}

absl::AnyInvocable<void()> TimerService::TakeLocked(TimerId id) {
  auto it = slot_of_.find(id);
  if (it == slot_of_.end()) return nullptr;
  const uint32_t slot = it->second;
  slot_of_.erase(it);
  absl::AnyInvocable<void()> fn = std::move(SlotLocked(slot));
  SlotLocked(slot) = nullptr;
  free_slots_.push_back(slot);
  return fn;
}

void TimerService::PruneTopLocked() {
  while (!heap_.empty() && !slot_of_.contains(heap_.front().id)) {
    std::pop_heap(heap_.begin(), heap_.end(), Later());
    heap_.pop_back();
  }
}

void TimerService::MaybeCompactLocked() {
  constexpr size_t kMinCompactSize = 64;
  if (heap_.size() < kMinCompactSize || heap_.size() <= 2 * slot_of_.size()) {
    return;
  }
  size_t kept = 0;
  for (size_t i = 0; i < heap_.size(); ++i) {
    if (slot_of_.contains(heap_[i].id)) heap_[kept++] = heap_[i];
  }
  heap_.resize(kept);
  std::make_heap(heap_.begin(), heap_.end(), Later());
}

}  // namespace warren::internal
