// Clocks: the manual clock's time, its errors and its listeners; the system
// clock (SEMANTICS.md section 7).

#include "warren/clock.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace warren {
namespace {

// Records every call.
class RecordingListener final : public Clock::Listener {
 public:
  void OnTimeMoved(absl::Time now) override { calls.push_back(now); }
  std::vector<absl::Time> calls;
};

// Calls a function.
class FunctionListener final : public Clock::Listener {
 public:
  template <typename F>
  explicit FunctionListener(F f) : f_(std::move(f)) {}
  void OnTimeMoved(absl::Time now) override { f_(now); }

 private:
  std::function<void(absl::Time)> f_;
};

TEST_CASE(
    "A manual clock starts at the given instant and moves only when "
    "advanced") {
  const absl::Time start = absl::FromUnixSeconds(42);
  ManualClock clock(start);
  CHECK(clock.manual());
  CHECK(clock.Now() == start);
  CHECK(clock.Now() == start);
  REQUIRE(clock.Advance(absl::Milliseconds(1500)).ok());
  CHECK(clock.Now() == start + absl::Milliseconds(1500));
  REQUIRE(clock.AdvanceTo(start + absl::Hours(1)).ok());
  CHECK(clock.Now() == start + absl::Hours(1));
}

TEST_CASE("A manual clock's default start is a fixed instant") {
  ManualClock a;
  ManualClock b;
  CHECK(a.Now() == absl::FromUnixSeconds(1'700'000'000));
  CHECK(a.Now() == b.Now());
}

TEST_CASE("Advance with no listeners just moves time") {
  ManualClock clock;
  const absl::Time start = clock.Now();
  for (int i = 0; i < 1000; ++i) REQUIRE(clock.Advance(absl::Seconds(1)).ok());
  CHECK(clock.Now() == start + absl::Seconds(1000));
  REQUIRE(clock.Advance(absl::ZeroDuration()).ok());
  CHECK(clock.Now() == start + absl::Seconds(1000));
}

TEST_CASE(
    "Advance by a negative duration is kInvalidArgument and changes "
    "nothing") {
  ManualClock clock;
  RecordingListener listener;
  clock.AddListener(&listener);
  const absl::Time start = clock.Now();
  const absl::Status s = clock.Advance(absl::Nanoseconds(-1));
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(clock.Now() == start);
  CHECK(listener.calls.empty());
  clock.RemoveListener(&listener);
}

TEST_CASE(
    "AdvanceTo an earlier instant is kInvalidArgument and changes "
    "nothing") {
  ManualClock clock;
  RecordingListener listener;
  clock.AddListener(&listener);
  const absl::Time start = clock.Now();
  const absl::Status s = clock.AdvanceTo(start - absl::Nanoseconds(1));
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(clock.Now() == start);
  CHECK(listener.calls.empty());

  // The current instant itself is allowed, and still notifies.
  REQUIRE(clock.AdvanceTo(start).ok());
  CHECK(clock.Now() == start);
  CHECK(listener.calls == std::vector<absl::Time>{start});
  clock.RemoveListener(&listener);
}

TEST_CASE(
    "Listeners are called after time moved, in registration order, "
    "with the new time") {
  ManualClock clock;
  std::vector<std::pair<int, absl::Time>> calls;
  FunctionListener first([&](absl::Time now) {
    CHECK(clock.Now() == now);  // already moved
    calls.emplace_back(1, now);
  });
  FunctionListener second([&](absl::Time now) { calls.emplace_back(2, now); });
  clock.AddListener(&first);
  clock.AddListener(&second);
  const absl::Time start = clock.Now();
  REQUIRE(clock.Advance(absl::Seconds(3)).ok());
  REQUIRE(clock.AdvanceTo(start + absl::Seconds(10)).ok());
  const std::vector<std::pair<int, absl::Time>> expected = {
      {1, start + absl::Seconds(3)},
      {2, start + absl::Seconds(3)},
      {1, start + absl::Seconds(10)},
      {2, start + absl::Seconds(10)}};
  CHECK(calls == expected);
  clock.RemoveListener(&first);
  clock.RemoveListener(&second);
}

TEST_CASE(
    "A removed listener is not called; removing an unknown one is a "
    "no-op") {
  ManualClock clock;
  RecordingListener a;
  RecordingListener b;
  clock.AddListener(&a);
  clock.AddListener(&b);
  clock.RemoveListener(&a);
  clock.RemoveListener(&a);
  REQUIRE(clock.Advance(absl::Seconds(1)).ok());
  CHECK(a.calls.empty());
  CHECK(b.calls.size() == 1);
  clock.RemoveListener(&b);
}

TEST_CASE("A listener may remove itself from inside its callback") {
  ManualClock clock;
  int calls = 0;
  std::unique_ptr<FunctionListener> self;
  self = std::make_unique<FunctionListener>([&](absl::Time) {
    ++calls;
    clock.RemoveListener(self.get());  // must not wait for this very call
  });
  RecordingListener after;
  clock.AddListener(self.get());
  clock.AddListener(&after);
  REQUIRE(clock.Advance(absl::Seconds(1)).ok());
  REQUIRE(clock.Advance(absl::Seconds(1)).ok());
  CHECK(calls == 1);
  CHECK(after.calls.size() == 2);
  clock.RemoveListener(&after);
}

TEST_CASE(
    "A listener removed by an earlier listener during an advance is "
    "not called by it") {
  ManualClock clock;
  RecordingListener victim;
  FunctionListener remover([&](absl::Time) { clock.RemoveListener(&victim); });
  clock.AddListener(&remover);
  clock.AddListener(&victim);
  REQUIRE(clock.Advance(absl::Seconds(1)).ok());
  CHECK(victim.calls.empty());
  clock.RemoveListener(&remover);
}

TEST_CASE("A listener added during an advance is called from the next one") {
  ManualClock clock;
  RecordingListener late;
  bool added = false;
  FunctionListener adder([&](absl::Time) {
    if (!added) clock.AddListener(&late);
    added = true;
  });
  clock.AddListener(&adder);
  REQUIRE(clock.Advance(absl::Seconds(1)).ok());
  CHECK(late.calls.empty());
  REQUIRE(clock.Advance(absl::Seconds(1)).ok());
  CHECK(late.calls.size() == 1);
  clock.RemoveListener(&adder);
  clock.RemoveListener(&late);
}

TEST_CASE("A listener may advance the clock from its callback") {
  ManualClock clock;
  const absl::Time start = clock.Now();
  std::vector<absl::Time> seen;
  FunctionListener listener([&](absl::Time now) {
    seen.push_back(now);
    if (seen.size() == 1) CHECK(clock.Advance(absl::Seconds(5)).ok());
  });
  clock.AddListener(&listener);
  REQUIRE(clock.Advance(absl::Seconds(1)).ok());
  // The nested advance notified first (with its own time); the outer call
  // had been made with the time current when it was made.
  CHECK(seen == std::vector<absl::Time>{start + absl::Seconds(1),
                                        start + absl::Seconds(6)});
  CHECK(clock.Now() == start + absl::Seconds(6));
  clock.RemoveListener(&listener);
}

// What the blocking listener and the test's threads share.
struct RemovalRace {
  std::mutex mu;
  std::condition_variable cv;
  bool entered = false;
  bool remove_started = false;
  bool remove_returned = false;
  bool remove_returned_during_call = false;
};

// Blocks in its callback until a RemoveListener has started, then gives it
// time to (wrongly) return before touching its own members.
class BlockingListener final : public Clock::Listener {
 public:
  explicit BlockingListener(RemovalRace* race) : race_(race) {}

  void OnTimeMoved(absl::Time) override {
    std::unique_lock<std::mutex> lock(race_->mu);
    race_->entered = true;
    race_->cv.notify_all();
    race_->cv.wait(lock, [&] { return race_->remove_started; });
    // A bounded real wait for something that must not happen: a correct
    // RemoveListener cannot return while this call is in progress.
    race_->cv.wait_for(lock, std::chrono::milliseconds(50),
                       [&] { return race_->remove_returned; });
    race_->remove_returned_during_call = race_->remove_returned;
    ++calls_;  // use-after-free (ASan) if RemoveListener did not wait
  }

 private:
  RemovalRace* const race_;
  int calls_ = 0;
};

TEST_CASE(
    "RemoveListener from another thread waits for the call in "
    "progress, so the listener can be destroyed at once") {
  ManualClock clock;
  RemovalRace race;
  auto listener = std::make_unique<BlockingListener>(&race);
  clock.AddListener(listener.get());

  std::thread advancer([&] { (void)clock.Advance(absl::Seconds(1)); });
  {
    std::unique_lock<std::mutex> lock(race.mu);
    race.cv.wait(lock, [&] { return race.entered; });
  }
  std::thread remover([&] {
    {
      std::lock_guard<std::mutex> lock(race.mu);
      race.remove_started = true;
    }
    race.cv.notify_all();
    clock.RemoveListener(listener.get());
    {
      std::lock_guard<std::mutex> lock(race.mu);
      race.remove_returned = true;
    }
    race.cv.notify_all();
    listener.reset();
  });
  advancer.join();
  remover.join();
  CHECK_FALSE(race.remove_returned_during_call);
  CHECK(listener == nullptr);
}

TEST_CASE("Concurrent advances all take effect and time never goes back") {
  ManualClock clock;
  const absl::Time start = clock.Now();
  std::atomic<int> calls{0};
  FunctionListener listener([&](absl::Time) { calls.fetch_add(1); });
  clock.AddListener(&listener);
  constexpr int kThreads = 4;
  constexpr int kAdvances = 2000;
  std::atomic<bool> went_back{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      absl::Time last = clock.Now();
      for (int i = 0; i < kAdvances; ++i) {
        if (!clock.Advance(absl::Microseconds(1)).ok()) went_back = true;
        const absl::Time now = clock.Now();
        if (now < last) went_back = true;
        last = now;
      }
    });
  }
  for (auto& t : threads) t.join();
  clock.RemoveListener(&listener);
  CHECK_FALSE(went_back.load());
  CHECK(clock.Now() == start + absl::Microseconds(kThreads * kAdvances));
  CHECK(calls.load() == kThreads * kAdvances);
}

TEST_CASE("The system clock reads real time and ignores listeners") {
  Clock* clock = SystemClock::Default();
  CHECK(clock == SystemClock::Default());
  CHECK_FALSE(clock->manual());
  const absl::Time before = absl::Now();
  const absl::Time now = clock->Now();
  const absl::Time after = absl::Now();
  CHECK(before <= now);
  CHECK(now <= after);
  RecordingListener listener;
  clock->AddListener(&listener);  // no-op
  clock->RemoveListener(&listener);
  CHECK(listener.calls.empty());
}

}  // namespace
}  // namespace warren
