// -----------------------------------------------------------------------------
// File: warren/clock.h
// -----------------------------------------------------------------------------
//
// The clock a broker is given (README: Guarantees, "Time"). Every
// time-dependent behaviour — message TTL, retry backoff, leases, delayed
// delivery — reads the time from a `Clock`, never from the system directly.
// This header defines:
//
//   * `Clock`           — the interface: `Now()`, and for manual clocks a way
//                         to be told when time moves.
//   * `SystemClock`     — real time (`absl::Now()`); `SystemClock::Default()`
//                         is a process-wide instance.
//   * `ManualClock`     — time that moves only when a test moves it, so that
//                         TTL and backoff are tested in microseconds without
//                         sleeping.
//
// Example:
//
//   #include <warren/clock.h>
//
//   warren::ManualClock clock;                    // starts at a fixed instant
//   absl::Time t0 = clock.Now();
//   clock.Advance(absl::Seconds(30)).IgnoreError();
//   assert(clock.Now() == t0 + absl::Seconds(30));
//   assert(!clock.Advance(absl::Seconds(-1)).ok());  // time never goes back
//
// Whatever is driven by a manual clock (timers, expiry) runs on the thread
// that calls `Advance` or `AdvanceTo`, before that call returns: a test can
// advance time and immediately observe everything that became due.
//
// Thread-safety: every method of every class here is thread-safe.

#ifndef WARREN_CLOCK_H_
#define WARREN_CLOCK_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace warren {

// A source of time. Implementations are thread-safe: `Now()` may be called
// from any thread at any time. A clock must outlive everything it was given
// to (brokers, timer services, listeners).
class Clock {
 public:
  virtual ~Clock();

  // The current instant.
  virtual absl::Time Now() const = 0;

  // True for clocks whose time moves only when someone moves it by hand
  // (`ManualClock`); such clocks tell their listeners when it moved. Real
  // clocks return false and ignore listeners: whoever needs to act at a real
  // instant waits for it.
  virtual bool manual() const { return false; }

  // Told by a manual clock that its time moved. Called on the thread that
  // moved the time, after it moved, with no lock of the clock held, so the
  // callback may read the clock, advance it again, or add and remove
  // listeners (itself included). The clock does not own its listeners.
  class Listener {
   public:
    // `now` is the clock's time when this call was made (with concurrent
    // advances it may already be later than the instant this advance
    // reached; it is never earlier).
    virtual void OnTimeMoved(absl::Time now) = 0;

   protected:
    ~Listener() = default;
  };

  // Registers `listener` (not owned; must stay alive until removed). Adding
  // a listener twice is a bug. No-op on real clocks.
  virtual void AddListener(Listener* listener) { (void)listener; }
  // Unregisters `listener`. When this returns, no call to `listener` is in
  // progress on any other thread and none will start, so its owner may
  // destroy it. Removing a listener that is not registered is a no-op. No-op
  // on real clocks.
  virtual void RemoveListener(Listener* listener) { (void)listener; }
};

// Real time: `Now()` is `absl::Now()`. Thread-safe; stateless.
class SystemClock final : public Clock {
 public:
  SystemClock() = default;

  absl::Time Now() const override { return absl::Now(); }

  // A process-wide instance, never destroyed (usable from static
  // destructors).
  static Clock* Default();
};

// Time that moves only when `Advance` or `AdvanceTo` is called. Thread-safe:
// any thread may read or advance it, concurrently. Time never moves backwards.
//
// Listeners: each advance calls every registered listener, in registration
// order, on the advancing thread, after the time moved and without the
// clock's lock held. A listener added during an advance is not called by that
// advance; one removed during an advance is not called after its removal.
// Must not be destroyed while listeners are registered.
class ManualClock final : public Clock {
 public:
  // A fixed, arbitrary default start (2023-11-14T22:13:20Z) keeps tests
  // reproducible.
  explicit ManualClock(absl::Time start = absl::FromUnixSeconds(1'700'000'000));
  ~ManualClock() override;

  ManualClock(const ManualClock&) = delete;
  ManualClock& operator=(const ManualClock&) = delete;

  absl::Time Now() const override;
  bool manual() const override { return true; }

  // Moves time forward by `d` (zero is allowed: listeners are still called,
  // which runs whatever is already due), then calls the listeners. Returns
  // kInvalidArgument, leaving time unchanged and calling no listener, when
  // `d` is negative.
  absl::Status Advance(absl::Duration d);

  // Moves time forward to `t` (`t == Now()` is allowed), then calls the
  // listeners. Returns kInvalidArgument, leaving time unchanged and calling no
  // listener, when `t` is earlier than `Now()`.
  absl::Status AdvanceTo(absl::Time t);

  // See `Clock`. `RemoveListener` blocks until the calls to `listener` in
  // progress on other threads have returned. Called from inside the
  // listener's own callback it does not wait for that call (the caller is in
  // it), so a listener may remove itself. When two threads remove the same
  // listener at once, the second finds it gone and returns at once.
  void AddListener(Listener* listener) override;
  void RemoveListener(Listener* listener) override;

 private:
  // The time, the listeners and the bookkeeping of calls in progress, behind
  // warren's annotated lock (private to the library, hence not here).
  struct State;

  // Calls every registered listener, with no lock held.
  void NotifyListeners();

  const std::unique_ptr<State> state_;
};

}  // namespace warren

#endif  // WARREN_CLOCK_H_
