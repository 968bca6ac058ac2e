// TimerService: order, cancellation, callbacks that schedule and cancel,
// manual and real clocks, destruction, and many threads at once.

#include "timer_service.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "warren/clock.h"

namespace warren::internal {
namespace {

using TimerId = TimerService::TimerId;

void Advance(ManualClock& clock, absl::Duration d) {
  REQUIRE(clock.Advance(d).ok());
}

TEST_CASE("Timers run in deadline order, ties in scheduling order") {
  ManualClock clock;
  TimerService timers(&clock);
  const absl::Time t0 = clock.Now();
  std::vector<int> ran;
  timers.Schedule(t0 + absl::Seconds(3), [&] { ran.push_back(30); });
  timers.Schedule(t0 + absl::Seconds(1), [&] { ran.push_back(10); });
  timers.Schedule(t0 + absl::Seconds(2), [&] { ran.push_back(20); });
  timers.Schedule(t0 + absl::Seconds(1), [&] { ran.push_back(11); });
  timers.Schedule(t0 + absl::Seconds(2), [&] { ran.push_back(21); });
  timers.Schedule(t0 + absl::Seconds(1), [&] { ran.push_back(12); });
  Advance(clock, absl::Seconds(10));
  CHECK(ran == std::vector<int>{10, 11, 12, 20, 21, 30});
  CHECK(timers.pending() == 0);
}

TEST_CASE("A timer runs when the clock reaches its deadline, not before") {
  ManualClock clock;
  TimerService timers(&clock);
  const absl::Time deadline = clock.Now() + absl::Seconds(5);
  int ran = 0;
  timers.Schedule(deadline, [&] { ++ran; });
  Advance(clock, absl::Seconds(5) - absl::Nanoseconds(1));
  CHECK(ran == 0);
  CHECK(timers.pending() == 1);
  Advance(clock, absl::Nanoseconds(1));  // exactly the deadline
  CHECK(ran == 1);
  CHECK(timers.pending() == 0);
  Advance(clock, absl::Hours(1));
  CHECK(ran == 1);  // once
}

TEST_CASE("Ids are distinct and never 0") {
  ManualClock clock;
  TimerService timers(&clock);
  const TimerId a = timers.Schedule(clock.Now(), [] {});
  const TimerId b = timers.Schedule(clock.Now(), [] {});
  CHECK(a != TimerService::kNoTimer);
  CHECK(b != TimerService::kNoTimer);
  CHECK(a != b);
}

TEST_CASE(
    "Cancel before the deadline stops the timer; after it ran, Cancel "
    "returns false") {
  ManualClock clock;
  TimerService timers(&clock);
  int a_ran = 0;
  int b_ran = 0;
  const TimerId a = timers.ScheduleAfter(absl::Seconds(1), [&] { ++a_ran; });
  const TimerId b = timers.ScheduleAfter(absl::Seconds(1), [&] { ++b_ran; });
  CHECK(timers.Cancel(a));
  CHECK_FALSE(timers.Cancel(a));  // already cancelled
  CHECK(timers.pending() == 1);
  Advance(clock, absl::Seconds(1));
  CHECK(a_ran == 0);
  CHECK(b_ran == 1);
  CHECK_FALSE(timers.Cancel(b));  // already ran
  CHECK_FALSE(timers.Cancel(TimerService::kNoTimer));
  CHECK_FALSE(timers.Cancel(12345));  // unknown
}

TEST_CASE("Cancel destroys the callback before it returns") {
  ManualClock clock;
  TimerService timers(&clock);
  auto token = std::make_shared<int>(0);
  const TimerId id =
      timers.ScheduleAfter(absl::Seconds(1), [token] { ++*token; });
  CHECK(token.use_count() == 2);
  REQUIRE(timers.Cancel(id));
  CHECK(token.use_count() == 1);
}

TEST_CASE("A running timer cannot be cancelled, even by itself") {
  ManualClock clock;
  TimerService timers(&clock);
  TimerId self = TimerService::kNoTimer;
  std::optional<bool> cancelled;
  self = timers.ScheduleAfter(absl::Seconds(1),
                              [&] { cancelled = timers.Cancel(self); });
  Advance(clock, absl::Seconds(1));
  REQUIRE(cancelled.has_value());
  CHECK_FALSE(*cancelled);
}

TEST_CASE("A callback can cancel another timer due in the same advance") {
  ManualClock clock;
  TimerService timers(&clock);
  const absl::Time t0 = clock.Now();
  std::vector<int> ran;
  TimerId victim = TimerService::kNoTimer;
  bool cancelled = false;
  timers.Schedule(t0 + absl::Seconds(1), [&] {
    ran.push_back(1);
    cancelled = timers.Cancel(victim);
  });
  victim = timers.Schedule(t0 + absl::Seconds(2), [&] { ran.push_back(2); });
  timers.Schedule(t0 + absl::Seconds(3), [&] { ran.push_back(3); });
  Advance(clock, absl::Seconds(5));
  CHECK(cancelled);
  CHECK(ran == std::vector<int>{1, 3});
}

TEST_CASE(
    "Timers scheduled by callbacks run in the same advance when "
    "already due") {
  ManualClock clock;
  TimerService timers(&clock);
  const absl::Time t0 = clock.Now();
  std::vector<int> ran;
  timers.Schedule(t0 + absl::Seconds(1), [&] {
    ran.push_back(1);
    // Due: runs before Advance returns, after the other due timers with
    // earlier deadlines.
    timers.Schedule(t0 + absl::Seconds(2), [&] {
      ran.push_back(2);
      timers.Schedule(t0, [&] { ran.push_back(3); });  // in the past
    });
    // Not due at t0 + 10s.
    timers.Schedule(t0 + absl::Seconds(11), [&] { ran.push_back(11); });
  });
  timers.Schedule(t0 + absl::Seconds(4), [&] { ran.push_back(4); });
  Advance(clock, absl::Seconds(10));
  // 3 was scheduled (at t0) while 4 (at t0 + 4s) was still pending.
  CHECK(ran == std::vector<int>{1, 2, 3, 4});
  CHECK(timers.pending() == 1);
  CHECK(timers.NextDeadline() == t0 + absl::Seconds(11));
  Advance(clock, absl::Seconds(1));
  CHECK(ran == std::vector<int>{1, 2, 3, 4, 11});
}

TEST_CASE(
    "On a manual clock a past deadline waits for the next advance or "
    "RunDue") {
  ManualClock clock;
  TimerService timers(&clock);
  int ran = 0;
  timers.Schedule(clock.Now() - absl::Seconds(1), [&] { ++ran; });
  CHECK(ran == 0);  // never inside Schedule
  CHECK(timers.RunDue() == 1);
  CHECK(ran == 1);
  CHECK(timers.RunDue() == 0);

  timers.Schedule(clock.Now(), [&] { ++ran; });
  Advance(clock, absl::ZeroDuration());
  CHECK(ran == 2);
}

TEST_CASE(
    "A callback that advances the manual clock runs what became due "
    "before the outer advance returns") {
  ManualClock clock;
  TimerService timers(&clock);
  const absl::Time t0 = clock.Now();
  std::vector<int> ran;
  timers.Schedule(t0 + absl::Seconds(1), [&] {
    ran.push_back(1);
    // The nested RunDue returns at once; the outer one picks up the rest.
    CHECK(clock.Advance(absl::Seconds(9)).ok());
  });
  timers.Schedule(t0 + absl::Seconds(10), [&] { ran.push_back(10); });
  timers.Schedule(t0 + absl::Seconds(11), [&] { ran.push_back(11); });
  Advance(clock, absl::Seconds(1));
  CHECK(clock.Now() == t0 + absl::Seconds(10));
  CHECK(ran == std::vector<int>{1, 10});
  CHECK(timers.pending() == 1);
}

TEST_CASE("pending, NextDeadline and Now describe the schedule") {
  ManualClock clock;
  TimerService timers(&clock);
  const absl::Time t0 = clock.Now();
  CHECK(timers.Now() == t0);
  CHECK(timers.clock() == &clock);
  CHECK(timers.pending() == 0);
  CHECK_FALSE(timers.NextDeadline().has_value());
  const TimerId first = timers.Schedule(t0 + absl::Seconds(1), [] {});
  timers.Schedule(t0 + absl::Seconds(2), [] {});
  timers.Schedule(t0 + absl::Seconds(3), [] {});
  CHECK(timers.pending() == 3);
  CHECK(timers.NextDeadline() == t0 + absl::Seconds(1));
  REQUIRE(timers.Cancel(first));  // the earliest: NextDeadline moves on
  CHECK(timers.pending() == 2);
  CHECK(timers.NextDeadline() == t0 + absl::Seconds(2));
  Advance(clock, absl::Seconds(2));
  CHECK(timers.Now() == t0 + absl::Seconds(2));
  CHECK(timers.pending() == 1);
  CHECK(timers.NextDeadline() == t0 + absl::Seconds(3));
  Advance(clock, absl::Seconds(1));
  CHECK(timers.pending() == 0);
  CHECK_FALSE(timers.NextDeadline().has_value());
}

TEST_CASE("Destroying a TimerService with pending timers does not run them") {
  auto token = std::make_shared<int>(0);
  SECTION("manual clock") {
    ManualClock clock;
    {
      TimerService timers(&clock);
      timers.ScheduleAfter(absl::Seconds(1), [token] { ++*token; });
      timers.Schedule(clock.Now() - absl::Seconds(1), [token] { ++*token; });
      CHECK(token.use_count() == 3);
    }
    CHECK(token.use_count() == 1);     // destroyed
    Advance(clock, absl::Seconds(2));  // no listener left
  }
  SECTION("system clock") {
    {
      TimerService timers(SystemClock::Default());
      timers.ScheduleAfter(absl::Hours(1), [token] { ++*token; });
    }
    CHECK(token.use_count() == 1);
  }
  CHECK(*token == 0);
}

// Schedules `n` timers at shuffled deadlines (in tied pairs), cancels every
// other one, advances past them all and checks that exactly the others ran,
// in (deadline, scheduling order) order.
void CancelHalfThenRunTheRest(uint32_t n) {
  ManualClock clock;
  TimerService timers(&clock);
  const absl::Time t0 = clock.Now();
  // A multiplier coprime with every n used here makes i -> place a
  // permutation; timer i is due at t0 + (place / 2 + 1) µs.
  auto deadline = [t0, n](uint32_t i) {
    const uint64_t place = (uint64_t{i} * 999'983) % n;
    return t0 + absl::Microseconds(static_cast<int64_t>(place / 2) + 1);
  };
  std::vector<uint32_t> ran;
  ran.reserve(n);
  std::vector<TimerId> ids(n);
  for (uint32_t i = 0; i < n; ++i) {
    ids[i] = timers.Schedule(deadline(i), [&ran, i] { ran.push_back(i); });
  }
  size_t cancelled = 0;
  for (uint32_t i = 1; i < n; i += 2) cancelled += timers.Cancel(ids[i]);
  CHECK(cancelled == n / 2);
  CHECK(timers.pending() == n - n / 2);
  Advance(clock, absl::Microseconds(n));
  CHECK(timers.pending() == 0);
  REQUIRE(ran.size() == n - n / 2);
  bool all_even = true;
  bool in_order = true;
  for (size_t k = 0; k < ran.size(); ++k) {
    if (ran[k] % 2 != 0) all_even = false;
    if (k > 0) {
      const absl::Time a = deadline(ran[k - 1]);
      const absl::Time b = deadline(ran[k]);
      if (a > b || (a == b && ran[k - 1] > ran[k])) in_order = false;
    }
  }
  CHECK(all_even);  // with that many, exactly the uncancelled ones
  CHECK(in_order);
}

TEST_CASE(
    "Many timers: half cancelled, the other half run in deadline "
    "order") {
  CancelHalfThenRunTheRest(20'000);
}

// About 1.5 s in an optimised build here, 5 s unoptimised: [stress].
TEST_CASE(
    "A million timers: half cancelled, the other half run in deadline "
    "order",
    "[stress]") {
  CancelHalfThenRunTheRest(1'000'000);
}

TEST_CASE(
    "Threads scheduling and cancelling while others advance: each "
    "timer runs exactly once unless cancelled, never concurrently") {
  ManualClock clock;
  TimerService timers(&clock);
  constexpr int kSchedulers = 3;
  constexpr int kPerThread = 20'000;
  constexpr int kTotal = kSchedulers * kPerThread;
  std::vector<std::atomic<int>> runs(kTotal);
  std::vector<std::atomic<bool>> cancelled(kTotal);
  std::atomic<int> in_callback{0};
  std::atomic<bool> overlapped{false};
  std::atomic<int> schedulers_done{0};

  std::vector<std::thread> threads;
  for (int t = 0; t < kSchedulers; ++t) {
    threads.emplace_back([&, t] {
      std::vector<TimerId> mine;
      mine.reserve(kPerThread);
      for (int j = 0; j < kPerThread; ++j) {
        const int index = t * kPerThread + j;
        mine.push_back(
            timers.ScheduleAfter(absl::Microseconds(j % 50), [&, index] {
              if (in_callback.fetch_add(1) != 0) overlapped = true;
              runs[index].fetch_add(1);
              in_callback.fetch_sub(1);
            }));
        // Cancel an earlier one of ours: it may have run already.
        if (j % 3 == 2 && timers.Cancel(mine[j - 2])) {
          cancelled[index - 2] = true;
        }
      }
      schedulers_done.fetch_add(1);
    });
  }
  for (int a = 0; a < 2; ++a) {
    threads.emplace_back([&, a] {
      while (schedulers_done.load() < kSchedulers) {
        if (a == 0) {
          (void)clock.Advance(absl::Microseconds(1));
        } else {
          timers.RunDue();
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  Advance(clock, absl::Seconds(1));

  CHECK(timers.pending() == 0);
  CHECK_FALSE(overlapped.load());
  int ran = 0;
  int cancels = 0;
  int wrong = 0;
  for (int i = 0; i < kTotal; ++i) {
    const int r = runs[i].load();
    const bool c = cancelled[i].load();
    ran += r;
    cancels += c;
    if (r + (c ? 1 : 0) != 1) ++wrong;
  }
  CHECK(wrong == 0);
  CHECK(ran + cancels == kTotal);
}

TEST_CASE(
    "Concurrent advances each return after every timer due at their "
    "time has run") {
  ManualClock clock;
  TimerService timers(&clock);
  const absl::Time t0 = clock.Now();
  constexpr int kSteps = 20'000;
  std::vector<std::atomic<bool>> done(kSteps + 1);
  for (int k = 1; k <= kSteps; ++k) {
    timers.Schedule(t0 + absl::Microseconds(k), [&done, k] { done[k] = true; });
  }
  std::atomic<int> late{0};
  std::atomic<int> advanced{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&] {
      for (;;) {
        const absl::Time target = clock.Now() + absl::Microseconds(1);
        const int64_t k = absl::ToInt64Microseconds(target - t0);
        if (k > kSteps) return;
        // Another thread may have moved past `target`: then it is refused.
        if (!clock.AdvanceTo(target).ok()) continue;
        advanced.fetch_add(1);
        if (!done[k].load()) late.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(advanced.load() > 0);
  CHECK(late.load() == 0);
  CHECK(timers.pending() == 0);
}

// Waits (really) until `pred` holds, up to 10 s; returns whether it did.
template <typename Pred>
bool WaitFor(std::mutex& mu, std::condition_variable& cv, Pred pred) {
  std::unique_lock<std::mutex> lock(mu);
  return cv.wait_for(lock, std::chrono::seconds(10), pred);
}

TEST_CASE(
    "On the system clock, timers run on the timer thread in deadline "
    "order soon after their deadlines") {
  TimerService timers(SystemClock::Default());
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int> ran;
  std::vector<absl::Time> ran_at;
  const std::thread::id test_thread = std::this_thread::get_id();
  bool on_other_thread = true;
  const absl::Time start = absl::Now();
  auto record = [&](int n) {
    std::lock_guard<std::mutex> lock(mu);
    ran.push_back(n);
    ran_at.push_back(absl::Now());
    if (std::this_thread::get_id() == test_thread) on_other_thread = false;
    cv.notify_all();
  };
  // The deadlines are far enough apart that scheduling all five (slow under
  // a sanitizer on a loaded machine) takes less than the first one's 100 ms.
  timers.Schedule(start + absl::Milliseconds(300), [&] { record(30); });
  timers.Schedule(start + absl::Milliseconds(100), [&] { record(10); });
  timers.Schedule(start + absl::Milliseconds(200), [&] { record(20); });
  timers.Schedule(start - absl::Seconds(1), [&] { record(0); });  // past
  const TimerId cancelled =
      timers.Schedule(start + absl::Milliseconds(150), [&] { record(15); });
  REQUIRE(timers.Cancel(cancelled));
  REQUIRE(WaitFor(mu, cv, [&] { return ran.size() == 4; }));

  std::lock_guard<std::mutex> lock(mu);
  CHECK(ran == std::vector<int>{0, 10, 20, 30});
  CHECK(on_other_thread);
  CHECK(ran_at[1] >= start + absl::Milliseconds(100));
  CHECK(ran_at[2] >= start + absl::Milliseconds(200));
  CHECK(ran_at[3] >= start + absl::Milliseconds(300));
  CHECK(timers.pending() == 0);
}

TEST_CASE(
    "On the system clock, an earlier timer wakes the sleeping timer "
    "thread") {
  TimerService timers(SystemClock::Default());
  // The thread sleeps for this one, a thousand years away (beyond what
  // std::chrono::nanoseconds can count).
  timers.ScheduleAfter(absl::Hours(24 * 365 * 1000), [] {});
  std::mutex mu;
  std::condition_variable cv;
  bool ran = false;
  timers.ScheduleAfter(absl::Milliseconds(5), [&] {
    std::lock_guard<std::mutex> lock(mu);
    ran = true;
    cv.notify_all();
  });
  CHECK(WaitFor(mu, cv, [&] { return ran; }));
  CHECK(timers.pending() == 1);
}

}  // namespace
}  // namespace warren::internal
