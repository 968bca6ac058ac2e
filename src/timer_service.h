// The broker's one timer mechanism: callbacks to run at instants of a Clock.
// Message TTL, retry backoff, leases and delayed delivery all schedule here.
//
// With a real clock the service owns one thread that sleeps until the next
// deadline and runs what is due. With a manual clock it starts no thread:
// it listens to the clock, and due timers run on the thread that advances
// the clock, before ManualClock::Advance returns. A test can therefore
// advance time and at once observe every effect of the timers that became
// due, with no sleeping and no races.
//
// Example:
//
//   ManualClock clock;
//   TimerService timers(&clock);
//   timers.Schedule(clock.Now() + absl::Seconds(5), [] { Expire(); });
//   clock.Advance(absl::Seconds(5)).IgnoreError();   // Expire() has run

#ifndef WARREN_SRC_TIMER_SERVICE_H_
#define WARREN_SRC_TIMER_SERVICE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/time/time.h"
#include "sync.h"
#include "warren/clock.h"

namespace warren::internal {

// Runs callbacks at deadlines of a Clock. Thread-safe.
//
// Order: timers run in deadline order; timers with equal deadlines run in the
// order they were scheduled.
//
// Callbacks run without the service's lock held: they may Schedule, Cancel,
// read the clock, advance a manual clock, or call RunDue. They never run
// concurrently with each other on one service: one thread at a time runs
// callbacks (see RunDue). Callbacks must not throw, and must not destroy
// the service.
//
// Cost: O(log n) per Schedule and per timer run, amortised O(1) per Cancel
// (a binary heap of (deadline, id) with lazy deletion, a hash map from id to
// slot, and a slab of callbacks).
//
// The clock must outlive the service.
class TimerService final : public Clock::Listener {
 public:
  // Identifies a scheduled timer. Ids are never reused; 0 is never an id.
  using TimerId = uint64_t;
  static constexpr TimerId kNoTimer = 0;

  // For a real clock (`!clock->manual()`), starts the timer thread. For a
  // manual clock, registers with the clock as a listener and starts no
  // thread.
  explicit TimerService(Clock* clock);
  // Stops the timer thread (waiting for a callback it is running) or
  // unregisters from the manual clock (waiting for an advance on another
  // thread that is running callbacks). Timers still pending are discarded
  // without running (their callbacks are destroyed). Must not be called from
  // a callback of this service, nor concurrently with another call to this
  // service (advances of the manual clock on other threads are fine: it
  // waits for them as said).
  ~TimerService();

  TimerService(const TimerService&) = delete;
  TimerService& operator=(const TimerService&) = delete;

  // Schedules `fn` (non-null) to run once, at or after `deadline` (an
  // instant of the service's clock). Returns the timer's id. A deadline
  // already past is due at once: with a real clock it runs promptly on the
  // timer thread; with a manual clock it runs at the next advance of the
  // clock (zero-length advances included) or the next explicit RunDue call —
  // never inside Schedule itself.
  TimerId Schedule(absl::Time deadline, absl::AnyInvocable<void()> fn);

  // Schedule(Now() + delay, fn).
  TimerId ScheduleAfter(absl::Duration delay, absl::AnyInvocable<void()> fn);

  // Cancels a pending timer: it will not run, and its callback is destroyed
  // before Cancel returns. Returns true when the timer was pending, false
  // when `id` is unknown, already ran, is running now, or was already
  // cancelled.
  bool Cancel(TimerId id);

  // Runs every timer whose deadline is <= the clock's Now(), in order,
  // re-reading the clock as it goes, until none is due (so timers that
  // callbacks schedule, or that become due because a callback advanced a
  // manual clock, run too). Returns how many ran on this call.
  //
  // Serialised: when another thread is running callbacks of this service,
  // RunDue first waits for it to finish, then runs whatever is still due —
  // so, with a manual clock, every timer due at the time an Advance reached
  // has run when that Advance returns, even with concurrent advances. Called
  // from inside a callback of this service (directly, or through
  // ManualClock::Advance), it returns 0 at once: the RunDue already running
  // on this thread re-reads the clock and runs what became due before it
  // returns.
  size_t RunDue();

  // The number of timers scheduled and neither run, running nor cancelled.
  size_t pending() const;
  // The clock's time.
  absl::Time Now() const;
  // The earliest deadline of a pending timer, if any.
  std::optional<absl::Time> NextDeadline() const;
  Clock* clock() const { return clock_; }

 private:
  struct HeapEntry {
    absl::Time deadline;
    TimerId id;  // also the scheduling order
  };
  // Orders a max-heap algorithm so that its front is the earliest entry.
  struct Later {
    bool operator()(const HeapEntry& a, const HeapEntry& b) const {
      return a.deadline != b.deadline ? a.deadline > b.deadline : a.id > b.id;
    }
  };

  // Clock::Listener: the manual clock moved; runs what is due.
  void OnTimeMoved(absl::Time now) override;

  // The timer thread (real clocks only).
  void ThreadLoop() ABSL_LOCKS_EXCLUDED(mu_);

  // Puts `fn` into a free slot of the slab and returns the slot.
  uint32_t StoreLocked(absl::AnyInvocable<void()> fn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Removes timer `id` if pending and returns its callback; returns an empty
  // callback when `id` is not pending.
  absl::AnyInvocable<void()> TakeLocked(TimerId id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::AnyInvocable<void()>& SlotLocked(uint32_t slot)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return chunks_[slot >> kChunkBits][slot & (kChunkSize - 1)];
  }

  // Pops heap entries of cancelled timers off the top, restoring the
  // invariant that the top of the heap, if any, is a pending timer.
  void PruneTopLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Rebuilds the heap without cancelled entries when they outnumber the
  // pending ones, so that memory stays O(pending).
  void MaybeCompactLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Constant after construction.
  Clock* const clock_;
  const bool manual_;

  // State below is protected by mu_.
  mutable Mutex mu_;
  // Wakes the timer thread: a new earliest deadline, or stop_.
  CondVar wake_;
  // Signalled when a RunDue finishes running callbacks.
  CondVar run_done_;
  // Min-heap (by Later) of (deadline, id), including entries of cancelled
  // timers (lazy deletion). Invariant: its top, if any, is pending.
  std::vector<HeapEntry> heap_ ABSL_GUARDED_BY(mu_);
  // Pending timers: id -> the slot of the slab that holds its callback.
  absl::flat_hash_map<TimerId, uint32_t> slot_of_ ABSL_GUARDED_BY(mu_);
  // The slab: callbacks in chunks of kChunkSize slots that never move (so a
  // growing slab moves no callback, and the map above holds plain integers).
  // A free slot holds an empty callback. Memory stays at the high-water mark
  // of pending timers, as the heap's and the map's capacity do.
  static constexpr uint32_t kChunkBits = 12;
  static constexpr uint32_t kChunkSize = uint32_t{1} << kChunkBits;
  std::vector<std::unique_ptr<absl::AnyInvocable<void()>[]>> chunks_
      ABSL_GUARDED_BY(mu_);
  uint32_t slots_used_ ABSL_GUARDED_BY(mu_) = 0;  // slots ever handed out
  std::vector<uint32_t> free_slots_ ABSL_GUARDED_BY(mu_);
  TimerId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  // True while a thread (runner_) is in RunDue running callbacks.
  bool running_ ABSL_GUARDED_BY(mu_) = false;
  std::thread::id runner_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;

  // The timer thread; not started for a manual clock. Last, so that it
  // starts after everything above is constructed.
  std::thread thread_;
};

}  // namespace warren::internal

#endif  // WARREN_SRC_TIMER_SERVICE_H_
