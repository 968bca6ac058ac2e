// Tests for warren/spsc_queue.h: single-threaded semantics, object lifetimes,
// parking and waking, and one-producer one-consumer fuzzing ([stress]).
//
// Catch2 is not thread-safe: threads only record what they saw, and the main
// thread checks it after join().

#include "warren/spsc_queue.h"

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>

#include <fstream>
#endif

namespace warren::internal {

// Reads the ring's private state for the parking tests.
template <typename T>
struct RingTestPeer<SpscQueue<T>> {
  // True once the producer has announced that it is parking.
  static bool ProducerParked(const SpscQueue<T>& q) {
    return q.producer_parked_.load(std::memory_order_acquire) != 0;
  }
  // True once the consumer has announced that it is parking.
  static bool ConsumerParked(const SpscQueue<T>& q) {
    return q.consumer_parked_.load(std::memory_order_acquire) != 0;
  }
};

}  // namespace warren::internal

namespace warren {
namespace {

template <typename T>
using Peer = internal::RingTestPeer<SpscQueue<T>>;

// Counts constructions and destructions of live objects. Not
// default-constructible.
struct Counted {
  static inline std::atomic<long> constructed{0};
  static inline std::atomic<long> destroyed{0};
  static void Reset() {
    constructed.store(0);
    destroyed.store(0);
  }

  explicit Counted(int v) noexcept : value(v) { ++constructed; }
  Counted(const Counted& other) noexcept : value(other.value) { ++constructed; }
  Counted(Counted&& other) noexcept : value(other.value) { ++constructed; }
  Counted& operator=(const Counted&) noexcept = default;
  Counted& operator=(Counted&&) noexcept = default;
  ~Counted() { ++destroyed; }

  int value;
};

// Lets the main thread wait until a test thread is asleep in the kernel, so
// that a wake-up test really wakes a sleeper. On Linux it reads the thread's
// state from /proc; elsewhere it only checks that the thread has started.
class SleepProbe {
 public:
  // Called by the watched thread before it blocks.
  void Register() {
#if defined(__linux__)
    tid_.store(static_cast<long>(::syscall(SYS_gettid)),
               std::memory_order_release);
#else
    tid_.store(1, std::memory_order_release);
#endif
  }

  // Whether the registered thread is asleep ("S" in /proc/.../stat).
  bool Asleep() const {
    const long tid = tid_.load(std::memory_order_acquire);
    if (tid == 0) return false;
#if defined(__linux__)
    std::ifstream stat("/proc/self/task/" + std::to_string(tid) + "/stat");
    std::string line;
    std::getline(stat, line);
    // "tid (name) S ...": the state follows the last ')'.
    const std::size_t paren = line.rfind(')');
    return paren != std::string::npos && paren + 2 < line.size() &&
           line[paren + 2] == 'S';
#else
    return true;
#endif
  }

 private:
  std::atomic<long> tid_{0};
};

// Keeps the calling thread busy for a few microseconds, so that the threads
// waiting on it run out of spins and go to sleep.
void BusyWork() {
  volatile unsigned sink = 0;
  for (unsigned i = 0; i < 5000; ++i) sink = sink + i;
}

TEST_CASE("SpscQueue rounds capacity up to a power of two and at least 2",
          "[spsc]") {
  CHECK(SpscQueue<int>(0).capacity() == 2);
  CHECK(SpscQueue<int>(1).capacity() == 2);
  CHECK(SpscQueue<int>(3).capacity() == 4);
  CHECK(SpscQueue<int>(1000).capacity() == 1024);
  CHECK(SpscQueue<int>(1024).capacity() == 1024);
}

TEST_CASE("SpscQueue holds exactly capacity() elements with no slot wasted",
          "[spsc]") {
  SpscQueue<int> q(4);
  for (int i = 0; i < 4; ++i) CHECK(q.try_push(i));
  CHECK_FALSE(q.try_push(4));
  CHECK(q.size() == 4);
}

TEST_CASE("SpscQueue try_pop on an empty queue returns false", "[spsc]") {
  SpscQueue<int> q(4);
  int out = -1;
  CHECK_FALSE(q.try_pop(out));
  CHECK(out == -1);
  CHECK(q.empty());
  CHECK(q.size() == 0);
}

TEST_CASE(
    "SpscQueue try_push on a full queue returns false and keeps the "
    "value",
    "[spsc]") {
  SpscQueue<std::unique_ptr<int>> q(2);
  CHECK(q.try_push(std::make_unique<int>(1)));
  CHECK(q.try_push(std::make_unique<int>(2)));
  auto extra = std::make_unique<int>(3);
  CHECK_FALSE(q.try_push(std::move(extra)));
  REQUIRE(extra != nullptr);
  CHECK(*extra == 3);
  CHECK_FALSE(q.try_emplace(nullptr));
}

TEST_CASE("SpscQueue pops in FIFO order", "[spsc]") {
  SpscQueue<int> q(16);
  for (int i = 0; i < 16; ++i) REQUIRE(q.try_push(i));
  for (int i = 0; i < 16; ++i) {
    int out = -1;
    REQUIRE(q.try_pop(out));
    CHECK(out == i);
  }
  CHECK(q.empty());
}

TEST_CASE("SpscQueue keeps FIFO order across many wrap-arounds", "[spsc]") {
  SpscQueue<int> q(4);
  int next_push = 0;
  int next_pop = 0;
  for (int round = 0; round < 10000; ++round) {
    const int burst = 1 + round % 4;
    for (int i = 0; i < burst; ++i) REQUIRE(q.try_push(next_push++));
    for (int i = 0; i < burst; ++i) {
      int out = -1;
      REQUIRE(q.try_pop(out));
      REQUIRE(out == next_pop++);
    }
  }
  for (int round = 0; round < 1000; ++round) {
    q.push(next_push++);
    int out = -1;
    q.pop(out);
    REQUIRE(out == next_pop++);
  }
  CHECK(q.empty());
}

TEST_CASE("SpscQueue size and empty are exact when quiescent", "[spsc]") {
  SpscQueue<int> q(8);
  CHECK(q.empty());
  for (int i = 0; i < 5; ++i) REQUIRE(q.try_push(i));
  CHECK(q.size() == 5);
  CHECK_FALSE(q.empty());
  int out;
  REQUIRE(q.try_pop(out));
  CHECK(q.size() == 4);
}

TEST_CASE("SpscQueue try_emplace constructs the element from its arguments",
          "[spsc]") {
  SpscQueue<std::string> q(2);
  REQUIRE(q.try_emplace(3, 'x'));
  q.emplace("abc", 2);
  std::string out;
  REQUIRE(q.try_pop(out));
  CHECK(out == "xxx");
  q.pop(out);
  CHECK(out == "ab");
}

TEST_CASE("SpscQueue holds move-only types such as std::unique_ptr", "[spsc]") {
  SpscQueue<std::unique_ptr<int>> q(4);
  REQUIRE(q.try_push(std::make_unique<int>(1)));
  q.push(std::make_unique<int>(2));
  std::unique_ptr<int> items[] = {std::make_unique<int>(3),
                                  std::make_unique<int>(4)};
  CHECK(q.try_push_bulk(std::make_move_iterator(std::begin(items)), 2) == 2);
  CHECK(items[0] == nullptr);
  std::vector<std::unique_ptr<int>> out;
  CHECK(q.try_pop_bulk(std::back_inserter(out), 3) == 3);
  std::unique_ptr<int> last;
  q.pop(last);
  REQUIRE(out.size() == 3);
  CHECK(*out[0] == 1);
  CHECK(*out[1] == 2);
  CHECK(*out[2] == 3);
  REQUIRE(last != nullptr);
  CHECK(*last == 4);
}

TEST_CASE("SpscQueue try_push_bulk pushes only as many as fit", "[spsc]") {
  SpscQueue<int> q(8);
  const std::vector<int> in = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  CHECK(q.try_push_bulk(in.begin(), 3) == 3);
  CHECK(q.try_push_bulk(in.begin() + 3, 7) == 5);  // Only 5 slots were free.
  CHECK(q.try_push_bulk(in.begin() + 8, 2) == 0);  // Full.
  CHECK(q.try_push_bulk(in.begin(), 0) == 0);
  for (int i = 0; i < 8; ++i) {
    int out = -1;
    REQUIRE(q.try_pop(out));
    CHECK(out == i);
  }
}

TEST_CASE("SpscQueue try_pop_bulk pops at most max and only what is queued",
          "[spsc]") {
  SpscQueue<int> q(8);
  for (int i = 0; i < 6; ++i) REQUIRE(q.try_push(i));
  int out[8] = {};
  CHECK(q.try_pop_bulk(out, 4) == 4);
  CHECK(out[0] == 0);
  CHECK(out[3] == 3);
  CHECK(q.try_pop_bulk(out, 8) == 2);  // Only 2 were left.
  CHECK(out[0] == 4);
  CHECK(out[1] == 5);
  CHECK(q.try_pop_bulk(out, 8) == 0);  // Empty.
  CHECK(q.try_pop_bulk(out, 0) == 0);
}

TEST_CASE("SpscQueue bulk calls keep FIFO order across wrap-arounds",
          "[spsc]") {
  SpscQueue<int> q(8);
  int next_push = 0;
  int next_pop = 0;
  for (int round = 0; round < 2000; ++round) {
    std::vector<int> in;
    for (int i = 0; i < 1 + round % 7; ++i) in.push_back(next_push + i);
    const std::size_t pushed = q.try_push_bulk(in.begin(), in.size());
    next_push += static_cast<int>(pushed);
    std::vector<int> out;
    const std::size_t popped =
        q.try_pop_bulk(std::back_inserter(out), 1 + round % 5);
    REQUIRE(out.size() == popped);
    for (int v : out) REQUIRE(v == next_pop++);
  }
  CHECK(q.size() == static_cast<std::size_t>(next_push - next_pop));
}

TEST_CASE("SpscQueue pairs every construction with exactly one destruction",
          "[spsc]") {
  Counted::Reset();
  {
    SpscQueue<Counted> q(8);
    REQUIRE(q.try_emplace(1));
    REQUIRE(q.try_push(Counted(2)));
    const Counted three(3);
    REQUIRE(q.try_push(three));
    q.emplace(4);
    q.push(Counted(5));
    const std::vector<Counted> batch = {Counted(6), Counted(7), Counted(8)};
    CHECK(q.try_push_bulk(batch.begin(), batch.size()) == 3);
    CHECK_FALSE(q.try_emplace(9));  // Full: nothing constructed.

    Counted out(0);
    REQUIRE(q.try_pop(out));
    CHECK(out.value == 1);
    q.pop(out);
    CHECK(out.value == 2);
    std::vector<Counted> popped;
    CHECK(q.try_pop_bulk(std::back_inserter(popped), 2) == 2);
    CHECK(popped[1].value == 4);
    // Four elements (5..8) are left in the ring for its destructor.
  }
  CHECK(Counted::constructed.load() > 0);
  CHECK(Counted::constructed.load() == Counted::destroyed.load());
}

TEST_CASE("SpscQueue destroys the elements left in it when destroyed",
          "[spsc]") {
  Counted::Reset();
  {
    SpscQueue<Counted> q(4);
    // Wrap a few times first so the leftovers straddle the end of the array.
    for (int i = 0; i < 7; ++i) {
      REQUIRE(q.try_emplace(i));
      Counted out(0);
      REQUIRE(q.try_pop(out));
    }
    for (int i = 0; i < 3; ++i) REQUIRE(q.try_emplace(i));
    CHECK(Counted::constructed.load() - Counted::destroyed.load() == 3);
  }
  CHECK(Counted::constructed.load() == Counted::destroyed.load());
}

TEST_CASE(
    "SpscQueue layout keeps the producer's and the consumer's fields on "
    "separate cache lines",
    "[spsc]") {
  // The exact offsets are proved by static_asserts in the header; these hold
  // for any element type.
  STATIC_REQUIRE(alignof(SpscQueue<char>) == kCacheLineSize);
  STATIC_REQUIRE(sizeof(SpscQueue<char>) % kCacheLineSize == 0);
  STATIC_REQUIRE(sizeof(SpscQueue<char>) >= 4 * kCacheLineSize);
}

TEST_CASE("SpscQueue stores over-aligned element types correctly aligned",
          "[spsc]") {
  struct alignas(128) Wide {
    int v;
  };
  SpscQueue<Wide> q(3);
  for (int round = 0; round < 10; ++round) {
    REQUIRE(q.try_push(Wide{round}));
    Wide out{-1};
    REQUIRE(q.try_pop(out));
    CHECK(out.v == round);
  }
}

TEST_CASE("SpscQueue blocking pop parks on an empty queue and a push wakes it",
          "[spsc]") {
  SpscQueue<int> q(4);
  std::atomic<int> got{-1};
  SleepProbe probe;
  std::thread consumer([&] {
    probe.Register();
    int v = -1;
    q.pop(v);
    got.store(v, std::memory_order_release);
  });
  while (!Peer<int>::ConsumerParked(q) || !probe.Asleep()) {
    std::this_thread::yield();
  }
  CHECK(got.load(std::memory_order_acquire) == -1);
  REQUIRE(q.try_push(42));
  consumer.join();
  CHECK(got.load() == 42);
  CHECK(q.empty());
}

TEST_CASE("SpscQueue blocking pop is woken by a bulk push", "[spsc]") {
  SpscQueue<int> q(4);
  std::vector<int> got;
  SleepProbe probe;
  std::thread consumer([&] {
    probe.Register();
    for (int i = 0; i < 3; ++i) {
      int v = -1;
      q.pop(v);
      got.push_back(v);
    }
  });
  while (!Peer<int>::ConsumerParked(q) || !probe.Asleep()) {
    std::this_thread::yield();
  }
  const int in[] = {7, 8, 9};
  REQUIRE(q.try_push_bulk(in, 3) == 3);
  consumer.join();
  CHECK(got == std::vector<int>{7, 8, 9});
}

TEST_CASE("SpscQueue blocking push parks on a full queue and a pop wakes it",
          "[spsc]") {
  SpscQueue<int> q(2);
  REQUIRE(q.try_push(1));
  REQUIRE(q.try_push(2));
  std::atomic<bool> pushed{false};
  SleepProbe probe;
  std::thread producer([&] {
    probe.Register();
    q.push(3);
    pushed.store(true, std::memory_order_release);
  });
  while (!Peer<int>::ProducerParked(q) || !probe.Asleep()) {
    std::this_thread::yield();
  }
  CHECK_FALSE(pushed.load(std::memory_order_acquire));
  int out = -1;
  REQUIRE(q.try_pop(out));
  CHECK(out == 1);
  producer.join();
  CHECK(pushed.load());
  q.pop(out);
  CHECK(out == 2);
  q.pop(out);
  CHECK(out == 3);
}

TEST_CASE(
    "SpscQueue with 1 producer and 1 consumer delivers every value once "
    "and in order",
    "[spsc][stress]") {
  constexpr std::uint64_t kCount = 40000;
  const auto capacity = GENERATE(as<std::size_t>{}, 2, 16, 1024);
  CAPTURE(capacity);
  SpscQueue<std::uint64_t> q(capacity);
  std::vector<std::uint64_t> seen;
  seen.reserve(kCount);

  // Each side cycles through blocking, try_ and bulk calls.
  std::thread producer([&q] {
    std::uint64_t next = 0;
    while (next < kCount) {
      switch (next / 13 % 3) {
        case 0:
          q.push(next++);
          break;
        case 1:
          while (!q.try_push(next)) std::this_thread::yield();
          ++next;
          break;
        default: {
          std::uint64_t batch[8];
          std::size_t want = 0;
          while (want < 8 && next + want < kCount) {
            batch[want] = next + want;
            ++want;
          }
          const std::size_t pushed = q.try_push_bulk(batch, want);
          if (pushed == 0) std::this_thread::yield();
          next += pushed;
          break;
        }
      }
    }
  });
  std::thread consumer([&q, &seen] {
    std::uint64_t round = 0;
    while (seen.size() < kCount) {
      switch (round++ % 3) {
        case 0: {
          std::uint64_t v;
          q.pop(v);
          seen.push_back(v);
          break;
        }
        case 1: {
          std::uint64_t v;
          if (q.try_pop(v)) seen.push_back(v);
          break;
        }
        default: {
          const std::size_t max =
              std::min<std::size_t>(5, kCount - seen.size());
          if (q.try_pop_bulk(std::back_inserter(seen), max) == 0) {
            std::this_thread::yield();
          }
          break;
        }
      }
    }
  });
  producer.join();
  consumer.join();

  REQUIRE(seen.size() == kCount);
  bool in_order = true;
  for (std::uint64_t i = 0; i < kCount; ++i) {
    if (seen[i] != i) in_order = false;
  }
  CHECK(in_order);
  CHECK(q.empty());
}

TEST_CASE(
    "SpscQueue blocking push and pop on a tiny ring park and wake "
    "without losing anything",
    "[spsc][stress]") {
  constexpr int kCount = 10000;
  SpscQueue<int> q(2);
  std::vector<int> seen;
  seen.reserve(kCount);
  std::thread producer([&q] {
    for (int i = 0; i < kCount; ++i) q.push(i);
  });
  std::thread consumer([&q, &seen] {
    for (int i = 0; i < kCount; ++i) {
      int v;
      q.pop(v);
      seen.push_back(v);
    }
  });
  producer.join();
  consumer.join();
  REQUIRE(seen.size() == kCount);
  bool in_order = true;
  for (int i = 0; i < kCount; ++i) {
    if (seen[i] != i) in_order = false;
  }
  CHECK(in_order);
}

TEST_CASE("SpscQueue ping-pong between blocking threads that mostly sleep",
          "[spsc][stress]") {
  // Two independent ping-pong pairs (4 threads) each bounce one token over
  // two rings, working a little while holding it; every pop finds its ring
  // empty, so threads park and are woken all the time.
  constexpr int kRounds = 1000;
  struct Pair {
    SpscQueue<int> ping{2};
    SpscQueue<int> pong{2};
    int last_seen = -1;
  };
  Pair pairs[2];
  std::vector<std::thread> threads;
  for (Pair& pair : pairs) {
    threads.emplace_back([&pair] {
      for (int i = 0; i < kRounds; ++i) {
        pair.ping.push(i);
        int back;
        pair.pong.pop(back);
        pair.last_seen = back;
      }
    });
    threads.emplace_back([&pair] {
      for (int i = 0; i < kRounds; ++i) {
        int v;
        pair.ping.pop(v);
        BusyWork();
        pair.pong.push(v + 1);
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const Pair& pair : pairs) {
    CHECK(pair.last_seen == kRounds);
    CHECK(pair.ping.empty());
    CHECK(pair.pong.empty());
  }
}

TEST_CASE(
    "SpscQueue under concurrent traffic pairs every construction with "
    "one destruction",
    "[spsc][stress]") {
  Counted::Reset();
  constexpr int kCount = 50000;
  long sum = 0;
  {
    SpscQueue<Counted> q(32);  // Room for the 10 left over.
    std::thread producer([&q] {
      for (int i = 0; i < kCount; ++i) {
        if (i % 2 == 0) {
          q.emplace(i);
        } else {
          while (!q.try_emplace(i)) std::this_thread::yield();
        }
      }
    });
    std::thread consumer([&q, &sum] {
      Counted out(0);
      for (int i = 0; i < kCount - 10; ++i) {
        q.pop(out);
        sum += out.value;
      }
    });
    producer.join();
    consumer.join();
    CHECK(q.size() == 10);
  }
  CHECK(sum == static_cast<long>(kCount - 10) * (kCount - 11) / 2);
  CHECK(Counted::constructed.load() == Counted::destroyed.load());
}

}  // namespace
}  // namespace warren
