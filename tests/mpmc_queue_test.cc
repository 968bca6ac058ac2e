// Tests for warren/mpmc_queue.h: single-threaded semantics, object lifetimes,
// parking and waking, and multi-threaded fuzzing ([stress]).
//
// Catch2 is not thread-safe: threads only record what they saw, and the main
// thread checks it after join().

#include "warren/mpmc_queue.h"

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
struct RingTestPeer<MpmcQueue<T>> {
  // How many threads are parked, or about to park, on the ring.
  static std::uint32_t Waiters(const MpmcQueue<T>& q) {
    return q.waiters_.load(std::memory_order_acquire);
  }
  // True once some thread has announced that it is parking on a slot.
  static bool HasParkedWaiter(const MpmcQueue<T>& q) { return Waiters(q) != 0; }
};

}  // namespace warren::internal

namespace warren {
namespace {

template <typename T>
using Peer = internal::RingTestPeer<MpmcQueue<T>>;

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

// A value tagged with who pushed it and its place in that producer's order.
std::uint64_t Tag(std::uint64_t producer, std::uint64_t seq) {
  return producer << 32 | seq;
}
std::uint64_t ProducerOf(std::uint64_t tag) { return tag >> 32; }
std::uint64_t SeqOf(std::uint64_t tag) { return tag & 0xffffffffu; }

// Waits until some thread has announced it is parking on `q` and every
// thread in `probes` is asleep.
template <typename T>
void AwaitParked(const MpmcQueue<T>& q,
                 const std::vector<const SleepProbe*>& probes) {
  for (;;) {
    bool asleep = Peer<T>::HasParkedWaiter(q);
    for (const SleepProbe* probe : probes) asleep = asleep && probe->Asleep();
    if (asleep) return;
    std::this_thread::yield();
  }
}

TEST_CASE("MpmcQueue rounds capacity up to a power of two and at least 2",
          "[mpmc]") {
  CHECK(MpmcQueue<int>(0).capacity() == 2);
  CHECK(MpmcQueue<int>(1).capacity() == 2);
  CHECK(MpmcQueue<int>(2).capacity() == 2);
  CHECK(MpmcQueue<int>(3).capacity() == 4);
  CHECK(MpmcQueue<int>(1000).capacity() == 1024);
  CHECK(MpmcQueue<int>(1024).capacity() == 1024);
}

TEST_CASE("MpmcQueue holds exactly capacity() elements", "[mpmc]") {
  MpmcQueue<int> q(5);
  for (int i = 0; i < 8; ++i) CHECK(q.try_push(i));
  CHECK_FALSE(q.try_push(8));
  CHECK(q.size() == 8);
}

TEST_CASE("MpmcQueue try_pop on an empty queue returns false", "[mpmc]") {
  MpmcQueue<int> q(4);
  int out = -1;
  CHECK_FALSE(q.try_pop(out));
  CHECK(out == -1);
  CHECK(q.empty());
  CHECK(q.size() == 0);
}

TEST_CASE(
    "MpmcQueue try_push on a full queue returns false and keeps the "
    "value",
    "[mpmc]") {
  MpmcQueue<std::unique_ptr<int>> q(2);
  CHECK(q.try_push(std::make_unique<int>(1)));
  CHECK(q.try_push(std::make_unique<int>(2)));
  auto extra = std::make_unique<int>(3);
  CHECK_FALSE(q.try_push(std::move(extra)));
  REQUIRE(extra != nullptr);
  CHECK(*extra == 3);
  CHECK_FALSE(q.try_emplace(nullptr));
}

// An element whose construction from a "slow" one (a move into the ring)
// announces itself and then waits to be let go: a push held inside its slot.
struct HeldPush {
  int value = 0;
  std::atomic<int>* entered = nullptr;  // set to 1 inside the move
  std::atomic<int>* release = nullptr;  // the move waits for 1
  HeldPush() = default;
  HeldPush(int v, std::atomic<int>* e, std::atomic<int>* r)
      : value(v), entered(e), release(r) {}
  HeldPush(HeldPush&& o) noexcept : value(o.value) {
    if (o.entered != nullptr) {
      o.entered->store(1);
      o.entered->notify_all();
      o.release->wait(0);
    }
  }
  HeldPush& operator=(HeldPush&& o) noexcept {
    value = o.value;
    return *this;
  }
};

TEST_CASE(
    "MpmcQueue try_pop_claimed waits for a push that holds the front slot "
    "where try_pop reports empty",
    "[mpmc]") {
  MpmcQueue<HeldPush> q(4);
  std::atomic<int> entered{0};
  std::atomic<int> release{0};
  std::thread slow([&] { (void)q.try_push(HeldPush(1, &entered, &release)); });
  entered.wait(0);  // the first push holds the front slot, unfilled
  REQUIRE(q.try_push(HeldPush(2, nullptr, nullptr)));
  HeldPush out;
  CHECK_FALSE(q.try_pop(out));  // the front is not filled: "empty"
  // The held push goes on once this thread is (about to be) waiting for it.
  std::atomic<int> waiting{0};
  std::thread releaser([&] {
    waiting.wait(0);
    release.store(1);
    release.notify_all();
  });
  waiting.store(1);
  waiting.notify_all();
  HeldPush first;
  const bool popped = q.try_pop_claimed(first);
  slow.join();
  releaser.join();
  REQUIRE(popped);
  CHECK(first.value == 1);  // the held push, not the later one
  REQUIRE(q.try_pop_claimed(out));
  CHECK(out.value == 2);
  CHECK_FALSE(q.try_pop_claimed(out));  // empty now: does not wait
}

TEST_CASE("MpmcQueue pops in FIFO order", "[mpmc]") {
  MpmcQueue<int> q(16);
  for (int i = 0; i < 16; ++i) REQUIRE(q.try_push(i));
  for (int i = 0; i < 16; ++i) {
    int out = -1;
    REQUIRE(q.try_pop(out));
    CHECK(out == i);
  }
  CHECK(q.empty());
}

TEST_CASE("MpmcQueue keeps FIFO order across many wrap-arounds", "[mpmc]") {
  MpmcQueue<int> q(4);
  int next_push = 0;
  int next_pop = 0;
  // Alternate fill levels so the indices wrap at every offset.
  for (int round = 0; round < 10000; ++round) {
    const int burst = 1 + round % 4;
    for (int i = 0; i < burst; ++i) REQUIRE(q.try_push(next_push++));
    for (int i = 0; i < burst; ++i) {
      int out = -1;
      REQUIRE(q.try_pop(out));
      REQUIRE(out == next_pop++);
    }
  }
  // Mix the blocking calls in; they never wait here.
  for (int round = 0; round < 1000; ++round) {
    q.push(next_push++);
    int out = -1;
    q.pop(out);
    REQUIRE(out == next_pop++);
  }
  CHECK(q.empty());
}

TEST_CASE("MpmcQueue size and empty are exact when quiescent", "[mpmc]") {
  MpmcQueue<int> q(8);
  CHECK(q.empty());
  for (int i = 0; i < 5; ++i) REQUIRE(q.try_push(i));
  CHECK(q.size() == 5);
  CHECK_FALSE(q.empty());
  int out;
  REQUIRE(q.try_pop(out));
  CHECK(q.size() == 4);
}

TEST_CASE("MpmcQueue try_emplace constructs the element from its arguments",
          "[mpmc]") {
  MpmcQueue<std::string> q(2);
  REQUIRE(q.try_emplace(3, 'x'));
  q.emplace("abc", 2);
  std::string out;
  REQUIRE(q.try_pop(out));
  CHECK(out == "xxx");
  q.pop(out);
  CHECK(out == "ab");
}

TEST_CASE("MpmcQueue holds move-only types such as std::unique_ptr", "[mpmc]") {
  MpmcQueue<std::unique_ptr<int>> q(4);
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

TEST_CASE("MpmcQueue try_push_bulk pushes only as many as fit", "[mpmc]") {
  MpmcQueue<int> q(8);
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

TEST_CASE("MpmcQueue try_pop_bulk pops at most max and only what is queued",
          "[mpmc]") {
  MpmcQueue<int> q(8);
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

TEST_CASE("MpmcQueue bulk calls keep FIFO order across wrap-arounds",
          "[mpmc]") {
  MpmcQueue<int> q(8);
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

TEST_CASE("MpmcQueue pairs every construction with exactly one destruction",
          "[mpmc]") {
  Counted::Reset();
  {
    MpmcQueue<Counted> q(8);
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

TEST_CASE("MpmcQueue destroys the elements left in it when destroyed",
          "[mpmc]") {
  Counted::Reset();
  {
    MpmcQueue<Counted> q(4);
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
    "MpmcQueue layout keeps slots, the two tickets and the waiter count on "
    "separate cache lines",
    "[mpmc]") {
  // The exact offsets are proved by static_asserts in the header; these hold
  // for any element type.
  STATIC_REQUIRE(alignof(MpmcQueue<char>) == kCacheLineSize);
  STATIC_REQUIRE(sizeof(MpmcQueue<char>) % kCacheLineSize == 0);
  STATIC_REQUIRE(sizeof(MpmcQueue<char>) >= 4 * kCacheLineSize);
}

TEST_CASE("MpmcQueue blocking pop parks on an empty queue and a push wakes it",
          "[mpmc]") {
  MpmcQueue<int> q(4);
  std::atomic<int> got{-1};
  SleepProbe probe;
  std::thread consumer([&] {
    probe.Register();
    int v = -1;
    q.pop(v);
    got.store(v, std::memory_order_release);
  });
  AwaitParked(q, {&probe});
  CHECK(got.load(std::memory_order_acquire) == -1);
  REQUIRE(q.try_push(42));
  consumer.join();
  CHECK(got.load() == 42);
  CHECK(q.empty());
}

TEST_CASE(
    "MpmcQueue blocking pop is woken by a bulk push and stops counting "
    "itself as a waiter",
    "[mpmc]") {
  MpmcQueue<int> q(8);
  std::atomic<int> got{-1};
  SleepProbe probe;
  std::thread consumer([&] {
    probe.Register();
    int v = -1;
    q.pop(v);
    got.store(v, std::memory_order_release);
  });
  AwaitParked(q, {&probe});
  CHECK(Peer<int>::Waiters(q) == 1);
  const int values[] = {7, 8, 9};
  REQUIRE(q.try_push_bulk(values, 3) == 3);
  consumer.join();
  CHECK(got.load() == 7);
  CHECK(Peer<int>::Waiters(q) == 0);
  CHECK(q.size() == 2);
}

TEST_CASE("MpmcQueue blocking push parks on a full queue and a pop wakes it",
          "[mpmc]") {
  MpmcQueue<int> q(2);
  REQUIRE(q.try_push(1));
  REQUIRE(q.try_push(2));
  std::atomic<bool> pushed{false};
  SleepProbe probe;
  std::thread producer([&] {
    probe.Register();
    q.push(3);
    pushed.store(true, std::memory_order_release);
  });
  AwaitParked(q, {&probe});
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

TEST_CASE("MpmcQueue wakes several parked consumers with one element each",
          "[mpmc]") {
  MpmcQueue<int> q(4);
  constexpr int kConsumers = 3;
  std::vector<int> got(kConsumers, -1);
  SleepProbe probes[kConsumers];
  std::vector<std::thread> consumers;
  for (int c = 0; c < kConsumers; ++c) {
    consumers.emplace_back([&q, &got, &probes, c] {
      probes[c].Register();
      q.pop(got[c]);
    });
  }
  AwaitParked(q, {&probes[0], &probes[1], &probes[2]});
  for (int i = 0; i < kConsumers; ++i) q.push(100 + i);
  for (auto& t : consumers) t.join();
  std::sort(got.begin(), got.end());
  CHECK(got == std::vector<int>{100, 101, 102});
  CHECK(q.empty());
}

// Runs `producers` producers and `consumers` consumers over a ring of
// `capacity`, each producer pushing `per_producer` tagged values, using a mix
// of blocking, try_ and bulk calls. Returns what each consumer popped, in
// order.
std::vector<std::vector<std::uint64_t>> RunMpmcFuzz(int producers,
                                                    int consumers,
                                                    std::size_t capacity,
                                                    int per_producer) {
  MpmcQueue<std::uint64_t> q(capacity);
  const long total = static_cast<long>(producers) * per_producer;
  // Consumers claim elements before popping them, so that every blocking pop
  // is sure to be matched by a push and the run ends.
  std::atomic<long> unclaimed{total};
  std::vector<std::vector<std::uint64_t>> seen(consumers);
  std::vector<std::thread> threads;

  for (int p = 0; p < producers; ++p) {
    threads.emplace_back([&q, p, per_producer] {
      std::uint64_t seq = 0;
      const auto n = static_cast<std::uint64_t>(per_producer);
      while (seq < n) {
        switch ((seq / 7 + static_cast<std::uint64_t>(p)) % 3) {
          case 0:
            q.push(Tag(p, seq++));
            break;
          case 1:
            while (!q.try_push(Tag(p, seq))) std::this_thread::yield();
            ++seq;
            break;
          default: {
            std::uint64_t batch[5];
            std::size_t want = 0;
            while (want < 5 && seq + want < n) {
              batch[want] = Tag(p, seq + want);
              ++want;
            }
            const std::size_t pushed = q.try_push_bulk(batch, want);
            if (pushed == 0) std::this_thread::yield();
            seq += pushed;
            break;
          }
        }
      }
    });
  }
  for (int c = 0; c < consumers; ++c) {
    threads.emplace_back([&q, &unclaimed, &seen, c] {
      std::vector<std::uint64_t>& mine = seen[c];
      for (long round = 0;; ++round) {
        long avail = unclaimed.load(std::memory_order_relaxed);
        if (avail <= 0) return;
        const long want = round % 3 == 2 ? std::min(avail, 4L) : 1;
        if (!unclaimed.compare_exchange_weak(avail, avail - want,
                                             std::memory_order_relaxed)) {
          continue;
        }
        if (round % 3 == 0) {
          std::uint64_t v;
          q.pop(v);
          mine.push_back(v);
        } else if (round % 3 == 1) {
          std::uint64_t v;
          while (!q.try_pop(v)) std::this_thread::yield();
          mine.push_back(v);
        } else {
          auto left = static_cast<std::size_t>(want);
          while (left > 0) {
            const std::size_t got =
                q.try_pop_bulk(std::back_inserter(mine), left);
            if (got == 0) std::this_thread::yield();
            left -= got;
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  return seen;
}

// Checks that every tagged value of every producer arrived exactly once and
// that each consumer saw each producer's values in order.
void CheckDelivery(const std::vector<std::vector<std::uint64_t>>& seen,
                   int producers, int per_producer) {
  std::vector<std::vector<int>> count(producers,
                                      std::vector<int>(per_producer, 0));
  bool tags_valid = true;
  bool ordered = true;
  for (const auto& mine : seen) {
    std::vector<long> last(producers, -1);
    for (std::uint64_t tag : mine) {
      const auto p = ProducerOf(tag);
      const auto s = SeqOf(tag);
      if (p >= static_cast<std::uint64_t>(producers) ||
          s >= static_cast<std::uint64_t>(per_producer)) {
        tags_valid = false;
        continue;
      }
      ++count[p][s];
      if (static_cast<long>(s) <= last[p]) ordered = false;
      last[p] = static_cast<long>(s);
    }
  }
  REQUIRE(tags_valid);
  CHECK(ordered);
  long lost = 0;
  long duplicated = 0;
  for (const auto& per : count) {
    for (int c : per) {
      if (c == 0) ++lost;
      if (c > 1) duplicated += c - 1;
    }
  }
  CHECK(lost == 0);
  CHECK(duplicated == 0);
}

TEST_CASE(
    "MpmcQueue with 4 producers and 4 consumers loses and duplicates "
    "nothing and each consumer sees each producer in order",
    "[mpmc][stress]") {
  constexpr int kProducers = 4;
  constexpr int kPerProducer = 5000;
  const auto capacity = GENERATE(as<std::size_t>{}, 2, 64);
  CAPTURE(capacity);
  const auto seen = RunMpmcFuzz(kProducers, 4, capacity, kPerProducer);
  CheckDelivery(seen, kProducers, kPerProducer);
}

TEST_CASE(
    "MpmcQueue with 4 producers and 1 consumer delivers each producer's "
    "values in order",
    "[mpmc][stress]") {
  constexpr int kProducers = 4;
  constexpr int kPerProducer = 20000;
  const auto seen = RunMpmcFuzz(kProducers, 1, 16, kPerProducer);
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].size() == kProducers * kPerProducer);
  // With a single consumer, each producer's values arrive as 0, 1, 2, ...
  std::vector<std::uint64_t> next(kProducers, 0);
  bool consecutive = true;
  for (std::uint64_t tag : seen[0]) {
    const auto p = ProducerOf(tag);
    if (p >= kProducers || SeqOf(tag) != next[p]++) consecutive = false;
  }
  CHECK(consecutive);
}

TEST_CASE(
    "MpmcQueue blocking calls with more threads than slots park and wake "
    "and deliver everything",
    "[mpmc][stress]") {
  // Capacity 2 with 4 + 4 threads: producers of different laps and consumers
  // wait on the same slot at once.
  constexpr int kThreads = 4;
  constexpr int kPerThread = 2000;
  MpmcQueue<std::uint64_t> q(2);
  std::vector<std::vector<std::uint64_t>> seen(kThreads);
  std::vector<std::thread> threads;
  for (int p = 0; p < kThreads; ++p) {
    threads.emplace_back([&q, p] {
      for (int i = 0; i < kPerThread; ++i) q.push(Tag(p, i));
    });
  }
  for (int c = 0; c < kThreads; ++c) {
    threads.emplace_back([&q, &seen, c] {
      for (int i = 0; i < kPerThread; ++i) {
        std::uint64_t v;
        q.pop(v);
        seen[c].push_back(v);
      }
    });
  }
  for (auto& t : threads) t.join();
  CheckDelivery(seen, kThreads, kPerThread);
  CHECK(q.empty());
}

TEST_CASE(
    "MpmcQueue passes a token between 8 blocking threads that mostly sleep",
    "[mpmc][stress]") {
  // One token circulates between `to_b` and `to_a`, moved by 4 threads per
  // side that each work a little while holding it. Nearly every pop finds
  // its ring empty, so threads park and are woken all the time.
  constexpr int kSide = 4;
  constexpr int kHops = 500;  // Per thread.
  constexpr std::uint64_t kTokens = 1;
  MpmcQueue<std::uint64_t> to_b(8);
  MpmcQueue<std::uint64_t> to_a(8);
  for (std::uint64_t t = 0; t < kTokens; ++t) REQUIRE(to_a.try_push(t));
  std::vector<std::thread> threads;
  for (int i = 0; i < kSide; ++i) {
    threads.emplace_back([&to_a, &to_b] {
      for (int hop = 0; hop < kHops; ++hop) {
        std::uint64_t token;
        to_a.pop(token);
        BusyWork();
        to_b.push(token);
      }
    });
    threads.emplace_back([&to_a, &to_b] {
      for (int hop = 0; hop < kHops; ++hop) {
        std::uint64_t token;
        to_b.pop(token);
        BusyWork();
        to_a.push(token);
      }
    });
  }
  for (auto& t : threads) t.join();
  // Every token is back in `to_a`, once.
  std::vector<std::uint64_t> left;
  CHECK(to_a.try_pop_bulk(std::back_inserter(left), 8) == kTokens);
  std::sort(left.begin(), left.end());
  CHECK(left == std::vector<std::uint64_t>{0});
  CHECK(to_b.empty());
}

TEST_CASE(
    "MpmcQueue under concurrent traffic pairs every construction with "
    "one destruction",
    "[mpmc][stress]") {
  Counted::Reset();
  constexpr int kPerThread = 10000;
  long sum = 0;
  {
    MpmcQueue<Counted> q(32);  // Room for the 20 left over.
    std::atomic<long> popped_sum{0};
    std::vector<std::thread> threads;
    for (int p = 0; p < 2; ++p) {
      threads.emplace_back([&q] {
        for (int i = 0; i < kPerThread; ++i) {
          if (i % 2 == 0) {
            q.emplace(i);
          } else {
            while (!q.try_emplace(i)) std::this_thread::yield();
          }
        }
      });
    }
    for (int c = 0; c < 2; ++c) {
      // Leave 10 elements per consumer in the ring for its destructor.
      threads.emplace_back([&q, &popped_sum] {
        long local = 0;
        Counted out(0);
        for (int i = 0; i < kPerThread - 10; ++i) {
          q.pop(out);
          local += out.value;
        }
        popped_sum.fetch_add(local, std::memory_order_relaxed);
      });
    }
    for (auto& t : threads) t.join();
    sum = popped_sum.load();
    CHECK(q.size() == 20);
  }
  CHECK(sum > 0);
  CHECK(Counted::constructed.load() == Counted::destroyed.load());
}

}  // namespace
}  // namespace warren
