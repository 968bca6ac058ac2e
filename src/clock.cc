// Clocks: the system clock and the manual clock with its listeners.

#include "warren/clock.h"

#include <algorithm>
#include <cassert>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "sync.h"

namespace warren {

using internal::CondVar;
using internal::Mutex;
using internal::MutexLock;

Clock::~Clock() = default;

Clock* SystemClock::Default() {
  static Clock* const clock = new SystemClock();
  return clock;
}

// One registered listener. Shared between the clock's list and the
// snapshots of advances in progress, so that an advance can still tell that
// a listener was removed after it took its snapshot.
struct ListenerEntry {
  explicit ListenerEntry(Clock::Listener* l) : listener(l) {}

  Clock::Listener* const listener;
  // The fields below are guarded by the owning ManualClock::State::mu (an
  // annotation cannot name a lock of another object).
  //
  // Set by RemoveListener; no call starts once it is set.
  bool removed = false;
  // The threads now inside `listener->OnTimeMoved`, once per call in
  // progress (a thread appears twice when a callback advances the clock and
  // is called again, nested).
  std::vector<std::thread::id> callers;
};

struct ManualClock::State {
  explicit State(absl::Time start) : now(start) {}

  Mutex mu;
  // Signalled when a call to a removed listener returns.
  CondVar call_done;
  absl::Time now ABSL_GUARDED_BY(mu);
  // In registration order.
  std::vector<std::shared_ptr<ListenerEntry>> listeners ABSL_GUARDED_BY(mu);
};

namespace {

// True when a thread other than the caller is inside a call to `e`.
bool CalledElsewhere(const ListenerEntry& e) {
  const std::thread::id self = std::this_thread::get_id();
  return std::any_of(e.callers.begin(), e.callers.end(),
                     [self](std::thread::id t) { return t != self; });
}

}  // namespace

ManualClock::ManualClock(absl::Time start)
    : state_(std::make_unique<State>(start)) {}

ManualClock::~ManualClock() {
  MutexLock lock(&state_->mu);
  // Invariant: listeners unregister before their clock goes away (a listener
  // still registered would later unregister from a dead clock).
  assert(state_->listeners.empty());
}

absl::Time ManualClock::Now() const {
  MutexLock lock(&state_->mu);
  return state_->now;
}

absl::Status ManualClock::Advance(absl::Duration d) {
  if (d < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "ManualClock::Advance: negative duration " + absl::FormatDuration(d));
  }
  {
    MutexLock lock(&state_->mu);
    state_->now += d;
  }
  NotifyListeners();
  return absl::OkStatus();
}

absl::Status ManualClock::AdvanceTo(absl::Time t) {
  {
    MutexLock lock(&state_->mu);
    if (t < state_->now) {
      return absl::InvalidArgumentError(
          "ManualClock::AdvanceTo: " + absl::FormatTime(t) +
          " is earlier than the current time " + absl::FormatTime(state_->now));
    }
    state_->now = t;
  }
  NotifyListeners();
  return absl::OkStatus();
}

void ManualClock::AddListener(Listener* listener) {
  assert(listener != nullptr);
  MutexLock lock(&state_->mu);
  // Invariant: a listener is registered at most once.
  assert(std::none_of(
      state_->listeners.begin(), state_->listeners.end(),
      [listener](const auto& e) { return e->listener == listener; }));
  state_->listeners.push_back(std::make_shared<ListenerEntry>(listener));
}

void ManualClock::RemoveListener(Listener* listener) {
  MutexLock lock(&state_->mu);
  auto& listeners = state_->listeners;
  auto it = std::find_if(
      listeners.begin(), listeners.end(),
      [listener](const auto& e) { return e->listener == listener; });
  if (it == listeners.end()) return;
  const std::shared_ptr<ListenerEntry> entry = std::move(*it);
  listeners.erase(it);
  entry->removed = true;
  // Calls on this thread are not waited for: this thread is inside them.
  while (CalledElsewhere(*entry)) state_->call_done.Wait(&state_->mu);
}

void ManualClock::NotifyListeners() {
  std::vector<std::shared_ptr<ListenerEntry>> snapshot;
  {
    MutexLock lock(&state_->mu);
    if (state_->listeners.empty()) return;
    snapshot = state_->listeners;
  }
  const std::thread::id self = std::this_thread::get_id();
  for (const std::shared_ptr<ListenerEntry>& entry : snapshot) {
    absl::Time now;
    {
      MutexLock lock(&state_->mu);
      if (entry->removed) continue;
      entry->callers.push_back(self);
      now = state_->now;
    }
    entry->listener->OnTimeMoved(now);
    {
      MutexLock lock(&state_->mu);
      auto& callers = entry->callers;
      callers.erase(std::find(callers.begin(), callers.end(), self));
      if (entry->removed) state_->call_done.SignalAll();
    }
  }
}

}  // namespace warren
