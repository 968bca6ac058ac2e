// -----------------------------------------------------------------------------
// File: benchmarks/peer_compare.cc
// -----------------------------------------------------------------------------
//
// warren_peer_compare: warren side by side with its peers, in one run, as
// issue 3's table (P1-P8) and issue 5's durable rows (D1-D4, in
// durable_compare.cc). Prints a markdown report on stdout (progress goes
// to stderr): the machine, the date, then one table row per comparison with
// the median of several repetitions, the peer's median, their ratio, the goal
// and whether it is met. Contenders of one row are run interleaved (A, B, C,
// A, B, C, ...) so that a burst of noise on this shared machine hits them
// alike.
//
// Usage:
//
//   warren_peer_compare [--quick] [--reps=N] [--only=P1,P4,D1,...] [--pin]
//                       [--no-rabbitmq] [--durable-dir=DIR] [--out=FILE]
//
//   --quick        small sizes (about a minute; also WARREN_PEER_QUICK=1)
//   --reps=N       repetitions per measurement (default 5, quick 3)
//   --only=...     run only these rows
//   --pin          pin ring producer/consumer threads to CPUs 0,1,2,...
//   --no-rabbitmq  skip starting the private RabbitMQ server
//   --durable-dir=DIR  where the D rows put their files (default: inside the
//                  build directory; must be a real disk, not tmpfs)
//   --out=FILE     also write the report to FILE
//
// Peers are compiled in when CMake found them (WARREN_HAVE_<PEER>); a missing
// peer's rows say "not built (install <package>)". See benchmarks/README.md
// for what each row measures and the fairness rules.

#include <fcntl.h>
#include <linux/futex.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "durable_compare.h"
#include "fmt/core.h"
#include "rabbitmq_private.h"
#include "topic_trie.h"
#include "topic_workload.h"
#include "warren/broker.h"
#include "warren/consumer.h"
#include "warren/message.h"
#include "warren/mpmc_queue.h"
#include "warren/spsc_queue.h"

#ifndef WARREN_HAVE_MOODYCAMEL
#define WARREN_HAVE_MOODYCAMEL 0
#endif
#ifndef WARREN_HAVE_READERWRITERQUEUE
#define WARREN_HAVE_READERWRITERQUEUE 0
#endif
#ifndef WARREN_HAVE_BOOST
#define WARREN_HAVE_BOOST 0
#endif
#ifndef WARREN_HAVE_TBB
#define WARREN_HAVE_TBB 0
#endif
#ifndef WARREN_HAVE_ZMQ
#define WARREN_HAVE_ZMQ 0
#endif
#ifndef WARREN_HAVE_SQLITE
#define WARREN_HAVE_SQLITE 0
#endif
#ifndef WARREN_BUILD_TYPE
#define WARREN_BUILD_TYPE "unknown"
#endif
#ifndef WARREN_CXX_COMPILER
#define WARREN_CXX_COMPILER "unknown"
#endif

#if WARREN_HAVE_MOODYCAMEL
#include <concurrentqueue/concurrentqueue.h>
#endif
#if WARREN_HAVE_READERWRITERQUEUE
#include <readerwriterqueue/readerwriterqueue.h>
#endif
#if WARREN_HAVE_BOOST
#include <boost/lockfree/policies.hpp>
#include <boost/lockfree/queue.hpp>
#include <boost/lockfree/spsc_queue.hpp>
#endif
#if WARREN_HAVE_TBB
#include <tbb/concurrent_queue.h>
#endif
#if WARREN_HAVE_ZMQ
#include <zmq.h>
#endif
#include "amqp_c.h"
#if WARREN_HAVE_SQLITE
#include <sqlite3.h>
#endif

// --- Counting global operator new / delete
// ------------------------------------
//
// Every allocation through operator new in this process (warren's included)
// is counted per thread: a plain thread_local, so counting costs no atomic
// and no sharing. Measurements snapshot their own thread's counters.

namespace {

struct AllocCounters {
  uint64_t news = 0;
  uint64_t bytes = 0;
  uint64_t deletes = 0;
};
thread_local AllocCounters t_alloc;

[[gnu::noinline]] void* CountedMalloc(std::size_t n) noexcept {
  ++t_alloc.news;
  t_alloc.bytes += n;
  return std::malloc(n == 0 ? 1 : n);
}

[[gnu::noinline]] void* CountedAlignedMalloc(std::size_t n,
                                             std::size_t alignment) noexcept {
  ++t_alloc.news;
  t_alloc.bytes += n;
  void* p = nullptr;
  if (alignment < sizeof(void*)) alignment = sizeof(void*);
  if (::posix_memalign(&p, alignment, n == 0 ? 1 : n) != 0) return nullptr;
  return p;
}

[[gnu::noinline]] void CountedFree(void* p) noexcept {
  if (p == nullptr) return;
  ++t_alloc.deletes;
  std::free(p);
}

void* OrThrow(void* p) {
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

void* operator new(std::size_t n) { return OrThrow(CountedMalloc(n)); }
void* operator new[](std::size_t n) { return OrThrow(CountedMalloc(n)); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  return CountedMalloc(n);
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  return CountedMalloc(n);
}
void* operator new(std::size_t n, std::align_val_t a) {
  return OrThrow(CountedAlignedMalloc(n, static_cast<std::size_t>(a)));
}
void* operator new[](std::size_t n, std::align_val_t a) {
  return OrThrow(CountedAlignedMalloc(n, static_cast<std::size_t>(a)));
}
void* operator new(std::size_t n, std::align_val_t a,
                   const std::nothrow_t&) noexcept {
  return CountedAlignedMalloc(n, static_cast<std::size_t>(a));
}
void* operator new[](std::size_t n, std::align_val_t a,
                     const std::nothrow_t&) noexcept {
  return CountedAlignedMalloc(n, static_cast<std::size_t>(a));
}
void operator delete(void* p) noexcept { CountedFree(p); }
void operator delete[](void* p) noexcept { CountedFree(p); }
void operator delete(void* p, std::size_t) noexcept { CountedFree(p); }
void operator delete[](void* p, std::size_t) noexcept { CountedFree(p); }
void operator delete(void* p, std::align_val_t) noexcept { CountedFree(p); }
void operator delete[](void* p, std::align_val_t) noexcept { CountedFree(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  CountedFree(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  CountedFree(p);
}
void operator delete(void* p, const std::nothrow_t&) noexcept {
  CountedFree(p);
}
void operator delete[](void* p, const std::nothrow_t&) noexcept {
  CountedFree(p);
}
void operator delete(void* p, std::align_val_t,
                     const std::nothrow_t&) noexcept {
  CountedFree(p);
}
void operator delete[](void* p, std::align_val_t,
                       const std::nothrow_t&) noexcept {
  CountedFree(p);
}

namespace warren_bench {
namespace {

// --- Configuration
// ------------------------------------------------------------

struct Config {
  bool quick = false;
  int reps = 5;
  bool pin = false;
  bool rabbitmq = true;
  std::vector<std::string> only;  // empty: every row
  std::string out;
  std::string durable_dir;  // --durable-dir ("": inside the build directory)

  bool Runs(std::string_view id) const {
    if (only.empty()) return true;
    return std::find(only.begin(), only.end(), id) != only.end();
  }
  // `full` in the normal mode, `quick` in quick mode.
  template <typename T>
  T Size(T full, T quick_size) const {
    return quick ? quick_size : full;
  }
};

Config g_config;
unsigned g_cpus = 1;

// --- Small utilities
// ----------------------------------------------------------

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

inline void CpuRelax() { warren::internal::CpuRelax(); }

double ThreadCpuSeconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
}

// Per-operation cost of a single-threaded measurement: this thread's CPU
// time (what the table shows for single-threaded rows: on a loaded machine it
// leaves out the time the thread waited for a CPU) and wall-clock time.
struct Cost {
  double cpu_ns = 0;
  double wall_ns = 0;
};

// Accumulates CPU and wall time over several timed regions.
class Stopwatch {
 public:
  void Start() {
    wall0_ = Clock::now();
    cpu0_ = ThreadCpuSeconds();
  }
  void Stop() {
    cpu_ += ThreadCpuSeconds() - cpu0_;
    wall_ += std::chrono::duration<double>(Clock::now() - wall0_).count();
  }
  Cost PerOp(uint64_t ops) const {
    return {cpu_ * 1e9 / static_cast<double>(ops),
            wall_ * 1e9 / static_cast<double>(ops)};
  }

 private:
  Clock::time_point wall0_;
  double cpu0_ = 0;
  double cpu_ = 0;
  double wall_ = 0;
};

// The same waiting policy for every contender: pause briefly, then yield the
// CPU (this machine is shared and may be oversubscribed).
class Backoff {
 public:
  void Pause() {
    if (++spins_ <= 128) {
      CpuRelax();
    } else {
      std::this_thread::yield();
    }
  }
  void Reset() { spins_ = 0; }

 private:
  int spins_ = 0;
};

void PinToCpu(unsigned cpu) {
  if (!g_config.pin || g_cpus == 0) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu % g_cpus, &set);
  pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double Percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * v.size()));
  return v[i];
}

std::string Rate(double per_second) {
  if (per_second >= 1e6) return fmt::format("{:.2f} M/s", per_second / 1e6);
  if (per_second >= 1e3) return fmt::format("{:.1f} k/s", per_second / 1e3);
  return fmt::format("{:.0f} /s", per_second);
}

std::string Nanos(double ns) {
  if (ns >= 1e6) return fmt::format("{:.2f} ms", ns / 1e6);
  if (ns >= 1e4) return fmt::format("{:.1f} µs", ns / 1e3);
  if (ns >= 1e3) return fmt::format("{:.2f} µs", ns / 1e3);
  return fmt::format("{:.0f} ns", ns);
}

// 10000000 -> "10,000,000".
std::string Count(uint64_t n) {
  std::string digits = std::to_string(n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string Times(double ratio) {
  if (ratio >= 100) return fmt::format("{:.0f}×", ratio);
  if (ratio >= 10) return fmt::format("{:.1f}×", ratio);
  return fmt::format("{:.2f}×", ratio);
}

std::string Spread(const std::vector<double>& v,
                   const std::function<std::string(double)>& fmt_one) {
  if (v.size() < 2) return "";
  const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  return fmt::format("{}–{}", fmt_one(*lo), fmt_one(*hi));
}

std::string ReadFileText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string CpuModel() {
  std::istringstream in(ReadFileText("/proc/cpuinfo"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        std::string model = line.substr(colon + 1);
        while (!model.empty() && model.front() == ' ') model.erase(0, 1);
        return model;
      }
    }
  }
  return "unknown CPU";
}

std::string LoadAverage() {
  std::string s = ReadFileText("/proc/loadavg");
  std::istringstream in(s);
  std::string a, b, c;
  in >> a >> b >> c;
  return fmt::format("{} {} {}", a, b, c);
}

uint64_t ResidentBytes() {
  std::istringstream in(ReadFileText("/proc/self/statm"));
  uint64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

uint64_t MemAvailableBytes() {
  std::istringstream in(ReadFileText("/proc/meminfo"));
  std::string key;
  uint64_t value = 0;
  std::string unit;
  while (in >> key >> value >> unit) {
    if (key == "MemAvailable:") return value * 1024;
  }
  return 0;
}

void Progress(const std::string& s) {
  fmt::print(stderr, "{}\n", s);
  std::fflush(stderr);
}

warren::ConsumeOptions Prefetch(uint32_t prefetch) {
  warren::ConsumeOptions options;
  options.prefetch = prefetch;
  return options;
}

// --- The report
// ---------------------------------------------------------------

// One table row (the durable rows' type: they fill the same columns).
using Row = DurableRow;

std::vector<Row> g_rows;
std::vector<std::string> g_notes;
std::vector<std::string> g_samples;  // "name: s1, s2, ..." per contender
std::vector<std::string> g_bugs;

std::string Met(bool met) { return met ? "yes" : "**no**"; }

void AddRow(Row row) { g_rows.push_back(std::move(row)); }
void Note(std::string s) { g_notes.push_back(std::move(s)); }
std::mutex g_bugs_mu;
void Bug(std::string s) {
  Progress("BUG: " + s);
  std::lock_guard<std::mutex> lock(g_bugs_mu);
  g_bugs.push_back(std::move(s));
}

// Keeps every repetition of one measurement for the report's appendix.
void RecordSamples(const std::string& name, const std::vector<double>& v,
                   const std::function<std::string(double)>& show) {
  std::string line = name + ":";
  for (size_t i = 0; i < v.size(); ++i) {
    line += (i == 0 ? " " : ", ") + show(v[i]);
  }
  g_samples.push_back(std::move(line));
}

// Interleaved repetitions: one sample of each contender per round.
struct Contender {
  Contender() = default;
  Contender(std::string n, std::function<double()> r)
      : name(std::move(n)), run(std::move(r)) {}
  std::string name;
  std::function<double()> run;
  std::vector<double> samples;
  double median() const { return Median(samples); }
};

void RunInterleaved(const std::string& label, std::vector<Contender*> cs,
                    int reps, const std::function<std::string(double)>& show) {
  for (int r = 0; r < reps; ++r) {
    for (Contender* c : cs) {
      const double v = c->run();
      c->samples.push_back(v);
      Progress(fmt::format("[{}] {} rep {}/{}: {}", label, c->name, r + 1, reps,
                           show(v)));
    }
  }
  for (Contender* c : cs)
    RecordSamples(label + " " + c->name, c->samples, show);
}

// --- Ring contenders
// ----------------------------------------------------------
//
// Each contender is a queue of uint64_t with MakeProducer() / MakeConsumer();
// a producer has `bool Push(uint64_t)` (false when full), a consumer
// `size_t Pop(uint64_t* out, size_t max)` (0 when empty). Queues are bounded
// at kRingCapacity where the peer allows it.

constexpr size_t kRingCapacity = 8192;

// warren's rings (MpmcQueue or SpscQueue): the same calls on both.
template <typename Ring>
struct OursRing {
  OursRing() : q(kRingCapacity) {}
  Ring q;
  struct Producer {
    Ring* q;
    bool Push(uint64_t v) { return q->try_push(v); }
  };
  struct Consumer {
    Ring* q;
    size_t Pop(uint64_t* out, size_t max) {
      if (max == 1) return q->try_pop(*out) ? 1 : 0;
      return q->try_pop_bulk(out, max);
    }
  };
  Producer MakeProducer() { return {&q}; }
  Consumer MakeConsumer() { return {&q}; }
};
using OursMpmc = OursRing<warren::MpmcQueue<uint64_t>>;
using OursSpsc = OursRing<warren::SpscQueue<uint64_t>>;

#if WARREN_HAVE_MOODYCAMEL
// moodycamel::ConcurrentQueue with a producer token and a consumer token (its
// fast paths). The queue is unbounded by design; to bound it like the others
// the producer checks size_approx() every 256 enqueues and reports "full"
// while the queue holds kRingCapacity items or more. (`try_enqueue(token, v)`,
// which never allocates, is not usable as a bound: with 8 producers it can
// fail forever once the preallocated blocks are spread over the producers.)
struct Moodycamel {
  Moodycamel() : q(kRingCapacity) {}
  moodycamel::ConcurrentQueue<uint64_t> q;
  struct Producer {
    moodycamel::ConcurrentQueue<uint64_t>* q;
    moodycamel::ProducerToken token;
    uint32_t since_check = 0;
    bool Push(uint64_t v) {
      if (since_check >= 256) {
        if (q->size_approx() >= kRingCapacity) return false;
        since_check = 0;
      }
      ++since_check;
      return q->enqueue(token, v);
    }
  };
  struct Consumer {
    moodycamel::ConcurrentQueue<uint64_t>* q;
    moodycamel::ConsumerToken token;
    size_t Pop(uint64_t* out, size_t max) {
      if (max == 1) return q->try_dequeue(token, *out) ? 1 : 0;
      return q->try_dequeue_bulk(token, out, max);
    }
  };
  Producer MakeProducer() { return {&q, moodycamel::ProducerToken(q)}; }
  Consumer MakeConsumer() { return {&q, moodycamel::ConsumerToken(q)}; }
};
#endif

#if WARREN_HAVE_TBB
struct TbbBounded {
  TbbBounded() { q.set_capacity(kRingCapacity); }
  tbb::concurrent_bounded_queue<uint64_t> q;
  struct Producer {
    tbb::concurrent_bounded_queue<uint64_t>* q;
    bool Push(uint64_t v) { return q->try_push(v); }
  };
  struct Consumer {
    tbb::concurrent_bounded_queue<uint64_t>* q;
    size_t Pop(uint64_t* out, size_t) { return q->try_pop(*out) ? 1 : 0; }
  };
  Producer MakeProducer() { return {&q}; }
  Consumer MakeConsumer() { return {&q}; }
};
#endif

#if WARREN_HAVE_BOOST
struct BoostQueue {
  using Queue =
      boost::lockfree::queue<uint64_t,
                             boost::lockfree::capacity<kRingCapacity>>;
  Queue q;
  struct Producer {
    Queue* q;
    bool Push(uint64_t v) { return q->push(v); }
  };
  struct Consumer {
    Queue* q;
    size_t Pop(uint64_t* out, size_t) { return q->pop(*out) ? 1 : 0; }
  };
  Producer MakeProducer() { return {&q}; }
  Consumer MakeConsumer() { return {&q}; }
};

struct BoostSpsc {
  using Queue =
      boost::lockfree::spsc_queue<uint64_t,
                                  boost::lockfree::capacity<kRingCapacity>>;
  Queue q;
  struct Producer {
    Queue* q;
    bool Push(uint64_t v) { return q->push(v); }
  };
  struct Consumer {
    Queue* q;
    size_t Pop(uint64_t* out, size_t max) { return q->pop(out, max); }
  };
  Producer MakeProducer() { return {&q}; }
  Consumer MakeConsumer() { return {&q}; }
};
#endif

#if WARREN_HAVE_READERWRITERQUEUE
struct ReaderWriter {
  ReaderWriter() : q(kRingCapacity) {}
  moodycamel::ReaderWriterQueue<uint64_t> q;
  struct Producer {
    moodycamel::ReaderWriterQueue<uint64_t>* q;
    bool Push(uint64_t v) { return q->try_enqueue(v); }
  };
  struct Consumer {
    moodycamel::ReaderWriterQueue<uint64_t>* q;
    size_t Pop(uint64_t* out, size_t) { return q->try_dequeue(*out) ? 1 : 0; }
  };
  Producer MakeProducer() { return {&q}; }
  Consumer MakeConsumer() { return {&q}; }
};
#endif

// One timed trial: `pairs` producers push 1, 2, 3, ... as fast as they can
// for `seconds`, while `pairs` consumers pop (in pops of up to `pop_batch`);
// once the producers stop, the consumers drain the queue. Returns items per
// second from the start signal to the last pop, after checking that every
// item pushed was popped exactly once (by count and by sum).
template <typename Q>
double RingTrial(int pairs, double seconds, size_t pop_batch,
                 const std::string& name) {
  auto q = std::make_unique<Q>();
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::atomic<bool> stop{false};
  std::atomic<int> producers_left{pairs};
  std::vector<uint64_t> pushed(pairs, 0), popped(pairs, 0), sums(pairs, 0);
  std::vector<std::thread> threads;
  for (int p = 0; p < pairs; ++p) {
    threads.emplace_back([&, p] {
      PinToCpu(2 * p);
      auto producer = q->MakeProducer();
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      Backoff backoff;
      uint64_t i = 1;
      for (;; ++i) {
        if ((i & 255) == 0 && stop.load(std::memory_order_relaxed)) break;
        while (!producer.Push(i)) backoff.Pause();
        backoff.Reset();
      }
      pushed[p] = i - 1;
      // release: our pushes happen-before a consumer's final empty check.
      producers_left.fetch_sub(1, std::memory_order_release);
    });
  }
  for (int c = 0; c < pairs; ++c) {
    threads.emplace_back([&, c] {
      PinToCpu(2 * c + 1);
      auto consumer = q->MakeConsumer();
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      uint64_t buf[64] = {};
      uint64_t got = 0;
      uint64_t sum = 0;
      Backoff backoff;
      for (;;) {
        size_t n = consumer.Pop(buf, pop_batch);
        if (n == 0) {
          if (producers_left.load(std::memory_order_acquire) != 0) {
            backoff.Pause();
            continue;
          }
          // Every producer is done: one more empty pop means drained.
          n = consumer.Pop(buf, pop_batch);
          if (n == 0) break;
        }
        backoff.Reset();
        for (size_t j = 0; j < n; ++j) sum += buf[j];
        got += n;
      }
      popped[c] = got;
      sums[c] = sum;
    });
  }
  while (ready.load() < 2 * pairs) std::this_thread::yield();
  const auto t0 = Clock::now();
  go.store(true, std::memory_order_release);
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop.store(true, std::memory_order_relaxed);
  for (auto& t : threads) t.join();
  const double secs = SecondsSince(t0);
  uint64_t total_pushed = 0, total_popped = 0, sum = 0, expected = 0;
  for (int i = 0; i < pairs; ++i) {
    total_pushed += pushed[i];
    total_popped += popped[i];
    sum += sums[i];
    expected += pushed[i] * (pushed[i] + 1) / 2;
  }
  if (total_popped != total_pushed || sum != expected) {
    Bug(fmt::format("{}: {} pairs: pushed {} items, popped {} (sum {} vs {})",
                    name, pairs, total_pushed, total_popped, sum, expected));
  }
  return static_cast<double>(total_popped) / secs;
}

// Seconds per timed ring trial.
double RingSeconds() { return g_config.Size(1.0, 0.2); }

template <typename Q>
Contender RingContender(std::string name, int pairs, size_t pop_batch) {
  return Contender(name, [name, pairs, pop_batch] {
    return RingTrial<Q>(pairs, RingSeconds(), pop_batch, name);
  });
}

[[maybe_unused]] std::string NotBuilt(std::string_view package) {
  return fmt::format("not built (install {})", package);
}

// A row comparing two throughputs (higher is better): ours / peer vs `goal`.
void ThroughputRow(const std::string& id, const std::string& workload,
                   const Contender& ours, const std::string& peer_name,
                   const Contender* peer, double goal,
                   const std::string& not_built = "") {
  Row row{id,
          workload,
          Rate(ours.median()),
          peer_name,
          "",
          "",
          fmt::format("≥ {}", Times(goal)),
          ""};
  if (peer == nullptr) {
    row.peer_value = not_built;
    row.ratio = "—";
    row.met = "n/a";
  } else {
    const double ratio = ours.median() / peer->median();
    row.peer_value = Rate(peer->median());
    row.ratio = Times(ratio);
    row.met = Met(ratio >= goal);
  }
  AddRow(std::move(row));
}

// --- P1, P2: rings 1P1C
// -------------------------------------------------------

void RunP1() {
  Progress(fmt::format("== P1: MPMC ring 1P1C, 8 B items, {} s per trial",
                       RingSeconds()));
  Contender ours = RingContender<OursMpmc>("warren MpmcQueue", 1, 1);
  Contender ours_bulk =
      RingContender<OursMpmc>("warren MpmcQueue (pop bulk 32)", 1, 32);
  std::vector<Contender*> all = {&ours, &ours_bulk};
#if WARREN_HAVE_MOODYCAMEL
  Contender moody =
      RingContender<Moodycamel>("moodycamel ConcurrentQueue (tokens)", 1, 1);
  Contender moody_bulk = RingContender<Moodycamel>(
      "moodycamel ConcurrentQueue (tokens, dequeue bulk 32)", 1, 32);
  all.push_back(&moody);
  all.push_back(&moody_bulk);
#endif
#if WARREN_HAVE_TBB
  Contender tbb =
      RingContender<TbbBounded>("TBB concurrent_bounded_queue", 1, 1);
  all.push_back(&tbb);
#endif
#if WARREN_HAVE_BOOST
  Contender boost_q = RingContender<BoostQueue>("boost::lockfree::queue", 1, 1);
  all.push_back(&boost_q);
#endif
  RunInterleaved("P1", all, g_config.reps, Rate);

  const std::string wl = "MPMC ring 1P1C, 8-byte items, try_push/try_pop";
#if WARREN_HAVE_MOODYCAMEL
  ThroughputRow("P1", wl, ours, "moodycamel ConcurrentQueue (tokens)", &moody,
                1.0);
  ThroughputRow("P1", "… consumer pops in bulk of 32", ours_bulk,
                "moodycamel (tokens, try_dequeue_bulk 32)", &moody_bulk, 1.0);
#else
  ThroughputRow("P1", wl, ours, "moodycamel ConcurrentQueue", nullptr, 1.0,
                NotBuilt("libconcurrentqueue-dev"));
#endif
#if WARREN_HAVE_TBB
  ThroughputRow("P1", wl, ours, "TBB concurrent_bounded_queue", &tbb, 5.0);
#else
  ThroughputRow("P1", wl, ours, "TBB concurrent_bounded_queue", nullptr, 5.0,
                NotBuilt("libtbb-dev"));
#endif
#if WARREN_HAVE_BOOST
  ThroughputRow("P1", wl, ours, "boost::lockfree::queue", &boost_q, 3.0);
#else
  ThroughputRow("P1", wl, ours, "boost::lockfree::queue", nullptr, 3.0,
                NotBuilt("libboost-dev"));
#endif
}

void RunP2() {
  Progress(fmt::format("== P2: SPSC ring, 8 B items, {} s per trial",
                       RingSeconds()));
  Contender ours = RingContender<OursSpsc>("warren SpscQueue", 1, 1);
  std::vector<Contender*> all = {&ours};
#if WARREN_HAVE_READERWRITERQUEUE
  Contender rwq =
      RingContender<ReaderWriter>("moodycamel ReaderWriterQueue", 1, 1);
  all.push_back(&rwq);
#endif
#if WARREN_HAVE_BOOST
  Contender boost_spsc =
      RingContender<BoostSpsc>("boost::lockfree::spsc_queue", 1, 1);
  all.push_back(&boost_spsc);
#endif
  RunInterleaved("P2", all, g_config.reps, Rate);
  const std::string wl = "SPSC ring, 8-byte items, try_push/try_pop";
#if WARREN_HAVE_READERWRITERQUEUE
  ThroughputRow("P2", wl, ours, "moodycamel ReaderWriterQueue", &rwq, 1.0);
#else
  ThroughputRow("P2", wl, ours, "moodycamel ReaderWriterQueue", nullptr, 1.0,
                NotBuilt("libreaderwriterqueue-dev"));
#endif
#if WARREN_HAVE_BOOST
  ThroughputRow("P2", wl, ours, "boost::lockfree::spsc_queue", &boost_spsc,
                2.0);
#else
  ThroughputRow("P2", wl, ours, "boost::lockfree::spsc_queue", nullptr, 2.0,
                NotBuilt("libboost-dev"));
#endif
}

// --- P3: NPNC scaling
// ---------------------------------------------------------

void RunP3() {
  const bool representative = g_cpus >= 16;
  Progress(fmt::format("== P3: MPMC ring NPNC, {} s per trial", RingSeconds()));
  std::vector<Contender> ours;
  for (int pairs : {1, 2, 4, 8}) {
    ours.push_back(RingContender<OursMpmc>(
        fmt::format("warren MpmcQueue {}P{}C", pairs, pairs), pairs, 1));
  }
  std::vector<Contender*> all;
  for (Contender& c : ours) all.push_back(&c);
#if WARREN_HAVE_MOODYCAMEL
  Contender moody8 = RingContender<Moodycamel>(
      "moodycamel ConcurrentQueue 8P8C (tokens)", 8, 1);
  all.push_back(&moody8);
#endif
  RunInterleaved("P3", all, g_config.reps, Rate);

  const std::string caveat =
      representative
          ? ""
          : fmt::format(" ({}-core machine: not representative)", g_cpus);
  const double base = ours[0].median();
  for (size_t i = 1; i < ours.size(); ++i) {
    const int pairs = 1 << i;
    const double ratio = ours[i].median() / base;
    Row row{"P3",
            fmt::format("MPMC ring {}P{}C vs own 1P1C{}", pairs, pairs, caveat),
            Rate(ours[i].median()),
            "warren MpmcQueue 1P1C",
            Rate(base),
            Times(ratio),
            pairs == 8 ? "8P8C ≥ 4×" : "— (scaling curve)",
            pairs == 8 ? (representative ? Met(ratio >= 4.0)
                                         : "n/a (not representative)")
                       : "n/a"};
    AddRow(std::move(row));
  }
#if WARREN_HAVE_MOODYCAMEL
  {
    const double ratio = ours[3].median() / moody8.median();
    AddRow(
        Row{"P3", "MPMC ring 8P8C" + caveat, Rate(ours[3].median()),
            "moodycamel ConcurrentQueue 8P8C (tokens)", Rate(moody8.median()),
            Times(ratio), "≥ 0.8×",
            representative ? Met(ratio >= 0.8) : "n/a (not representative)"});
  }
#else
  AddRow(Row{"P3", "MPMC ring 8P8C" + caveat, Rate(ours[3].median()),
             "moodycamel ConcurrentQueue 8P8C",
             NotBuilt("libconcurrentqueue-dev"), "—", "≥ 0.8×", "n/a"});
#endif
}

// --- P4: broker end to end
// ----------------------------------------------------
//
// One producer thread and one consumer thread; 64-byte bodies; the producer
// keeps at most kWindow messages in flight (published, not yet acknowledged)
// for every contender alike, so queues stay short (warren's ring never spills
// into its overflow list) and the rate measured is the sustained one.

constexpr size_t kBodySize = 64;
constexpr uint64_t kWindow = 1024;

std::string Body(uint64_t seq) {
  std::string body(kBodySize, 'x');
  std::memcpy(body.data(), &seq, sizeof(seq));
  return body;
}

uint64_t SeqOf(std::string_view body) {
  uint64_t seq = 0;
  if (body.size() >= sizeof(seq)) std::memcpy(&seq, body.data(), sizeof(seq));
  return seq;
}

struct AllocWindow {
  uint64_t news = 0;
  uint64_t bytes = 0;
  uint64_t deletes = 0;
  uint64_t messages = 0;
};

struct E2EResult {
  double rate = 0;  // messages per second; 0 on failure
  AllocWindow producer_alloc;
  AllocWindow consumer_alloc;
};

// Drives a timed end-to-end trial: phase 0 warms up for a quarter of
// `seconds`, phase 1 (the middle half) is the allocation-counting window,
// phase 2 the last quarter, and phase 3 tells the producer to stop (the
// consumer then drains what is in flight).
class Phases {
 public:
  int get() const { return phase_.load(std::memory_order_relaxed); }
  void Run(double seconds) {
    const auto quarter = std::chrono::duration<double>(seconds / 4);
    std::this_thread::sleep_for(quarter);
    phase_.store(1, std::memory_order_relaxed);
    std::this_thread::sleep_for(2 * quarter);
    phase_.store(2, std::memory_order_relaxed);
    std::this_thread::sleep_for(quarter);
    phase_.store(3, std::memory_order_relaxed);
  }

 private:
  std::atomic<int> phase_{0};
};

// Snapshots this thread's allocation counters over phase 1.
class AllocWindowTracker {
 public:
  // Call once per message with the messages handled so far.
  void Observe(int phase, uint64_t messages, AllocWindow* out) {
    if (phase == last_) return;
    if (phase >= 1 && last_ < 1) {
      start_ = t_alloc;
      start_messages_ = messages;
    }
    if (phase >= 2 && last_ < 2) {
      *out = {t_alloc.news - start_.news, t_alloc.bytes - start_.bytes,
              t_alloc.deletes - start_.deletes, messages - start_messages_};
    }
    last_ = phase;
  }

 private:
  int last_ = 0;
  AllocCounters start_;
  uint64_t start_messages_ = 0;
};

// Seconds per timed end-to-end trial.
double E2ESeconds() { return g_config.Size(2.0, 0.5); }

// warren: Publish to the default exchange → queue → Receive → Ack, for
// `seconds`. With `batch` > 1 the consumer uses ReceiveBatch(batch) and one
// Ack(multiple) per batch. Checks that messages arrive in order, each once.
E2EResult WarrenE2E(double seconds, size_t batch) {
  E2EResult result;
  auto broker = warren::Broker::Open({}).value();
  if (!broker->DeclareQueue("bench").ok()) {
    Bug("P4: DeclareQueue failed");
    return result;
  }
  auto consumer = broker->Consume("bench", Prefetch(256)).value();
  std::atomic<uint64_t> acked{0};
  std::atomic<uint64_t> published{0};
  std::atomic<bool> producer_done{false};
  std::atomic<bool> abort{false};
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  Phases phases;
  uint64_t received = 0;

  std::thread producer([&] {
    ready.fetch_add(1);
    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
    Backoff backoff;
    AllocWindowTracker tracker;
    uint64_t i = 0;
    for (;; ++i) {
      const int phase = phases.get();
      tracker.Observe(phase, i, &result.producer_alloc);
      if (phase == 3 || abort.load(std::memory_order_relaxed)) break;
      while (i - acked.load(std::memory_order_acquire) >= kWindow &&
             !abort.load(std::memory_order_relaxed)) {
        backoff.Pause();
      }
      backoff.Reset();
      auto outcome = broker->Publish("", "bench", warren::Message(Body(i)));
      if (!outcome.ok() || outcome->queues != 1) {
        Bug(fmt::format(
            "P4: publish {} failed: {}", i,
            outcome.ok() ? "not routed" : outcome.status().ToString()));
        abort.store(true);
        break;
      }
    }
    published.store(i, std::memory_order_relaxed);
    producer_done.store(true, std::memory_order_release);
  });
  std::thread consumer_thread([&] {
    ready.fetch_add(1);
    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
    AllocWindowTracker tracker;
    uint64_t got = 0;
    std::vector<warren::Delivery> ds;
    ds.reserve(batch);
    absl::Time last_progress = absl::Now();
    auto fail = [&](const std::string& what) {
      Bug(fmt::format("P4 (batch {}): {} after {} messages", batch, what, got));
      abort.store(true);
    };
    while (!abort.load(std::memory_order_relaxed)) {
      tracker.Observe(phases.get(), got, &result.consumer_alloc);
      if (producer_done.load(std::memory_order_acquire) &&
          got == published.load(std::memory_order_relaxed)) {
        break;
      }
      // One reused vector, so that the harness itself allocates nothing per
      // message (ReceiveBatch returns a vector the broker allocates).
      ds.clear();
      if (batch <= 1) {
        auto d = consumer->Receive(absl::Milliseconds(100));
        if (d.ok()) {
          ds.push_back(*std::move(d));
        } else if (!absl::IsDeadlineExceeded(d.status())) {
          fail("Receive: " + d.status().ToString());
          break;
        }
      } else {
        auto b = consumer->ReceiveBatch(batch, absl::Milliseconds(100));
        if (b.ok()) {
          ds = *std::move(b);
        } else if (!absl::IsDeadlineExceeded(b.status())) {
          fail("ReceiveBatch: " + b.status().ToString());
          break;
        }
      }
      if (ds.empty()) {
        // Nothing for 100 ms: only the drain at the end may see that.
        if (absl::Now() - last_progress > absl::Seconds(10)) {
          fail("no message for 10 s (lost message or hang)");
          break;
        }
        continue;
      }
      last_progress = absl::Now();
      bool ok = true;
      for (const warren::Delivery& d : ds) {
        if (SeqOf(d.body()) != got) {
          fail(fmt::format("expected message {}, received {}", got,
                           SeqOf(d.body())));
          ok = false;
          break;
        }
        if (batch <= 1 && !consumer->Ack(d).ok()) {
          fail("Ack");
          ok = false;
          break;
        }
        ++got;
      }
      if (!ok) break;
      if (batch > 1 && !consumer->Ack(ds.back(), {.multiple = true}).ok()) {
        fail("Ack(multiple)");
        break;
      }
      acked.store(got, std::memory_order_release);
    }
    received = got;
  });
  while (ready.load() < 2) std::this_thread::yield();
  const auto t0 = Clock::now();
  go.store(true, std::memory_order_release);
  phases.Run(seconds);
  producer.join();
  consumer_thread.join();
  const double secs = SecondsSince(t0);
  if (abort.load()) return result;
  result.rate = static_cast<double>(received) / secs;
  return result;
}

#if WARREN_HAVE_ZMQ
// ZeroMQ inproc PUSH/PULL, 64-byte messages, no acknowledgements, for
// `seconds`; the same in-flight window (the consumer reports what it
// received).
double ZmqE2E(double seconds) {
  static int instance = 0;
  const std::string endpoint =
      fmt::format("inproc://warren-bench-{}", instance++);
  void* ctx = zmq_ctx_new();
  void* push = zmq_socket(ctx, ZMQ_PUSH);
  void* pull = zmq_socket(ctx, ZMQ_PULL);
  const int timeout_ms = 100;
  zmq_setsockopt(pull, ZMQ_RCVTIMEO, &timeout_ms, sizeof(timeout_ms));
  if (zmq_bind(push, endpoint.c_str()) != 0 ||
      zmq_connect(pull, endpoint.c_str()) != 0) {
    Bug("P4: ZeroMQ bind/connect failed");
    zmq_close(push);
    zmq_close(pull);
    zmq_ctx_term(ctx);
    return 0;
  }
  std::atomic<uint64_t> received{0};
  std::atomic<uint64_t> sent{0};
  std::atomic<bool> producer_done{false};
  std::atomic<bool> failed{false};
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  Phases phases;
  std::thread producer([&] {
    ready.fetch_add(1);
    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
    Backoff backoff;
    uint64_t i = 0;
    for (; phases.get() != 3 && !failed.load(); ++i) {
      while (i - received.load(std::memory_order_acquire) >= kWindow &&
             !failed.load(std::memory_order_relaxed)) {
        backoff.Pause();
      }
      backoff.Reset();
      const std::string body = Body(i);
      if (zmq_send(push, body.data(), body.size(), 0) !=
          static_cast<int>(body.size())) {
        failed.store(true);
        break;
      }
    }
    sent.store(i, std::memory_order_relaxed);
    producer_done.store(true, std::memory_order_release);
  });
  std::thread consumer([&] {
    ready.fetch_add(1);
    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
    char buf[kBodySize];
    uint64_t got = 0;
    int idle = 0;
    while (!failed.load()) {
      if (producer_done.load(std::memory_order_acquire) &&
          got == sent.load(std::memory_order_relaxed)) {
        break;
      }
      const int r = zmq_recv(pull, buf, sizeof(buf), 0);
      if (r < 0 && zmq_errno() == EAGAIN) {
        if (++idle > 100) failed.store(true);  // 10 s without a message
        continue;
      }
      idle = 0;
      if (r != static_cast<int>(kBodySize) ||
          SeqOf(std::string_view(buf, kBodySize)) != got) {
        failed.store(true);
        break;
      }
      ++got;
      received.store(got, std::memory_order_release);
    }
  });
  while (ready.load() < 2) std::this_thread::yield();
  const auto t0 = Clock::now();
  go.store(true, std::memory_order_release);
  phases.Run(seconds);
  producer.join();
  consumer.join();
  const double secs = SecondsSince(t0);
  int linger = 0;
  zmq_setsockopt(push, ZMQ_LINGER, &linger, sizeof(linger));
  zmq_close(push);
  zmq_close(pull);
  zmq_ctx_term(ctx);
  if (failed.load()) {
    Progress("P4: ZeroMQ trial failed");
    return 0;
  }
  return static_cast<double>(received.load()) / secs;
}
#endif

#if WARREN_HAVE_RABBITMQ_C
// rabbitmq-c against the private server: one connection per thread.
class AmqpConnection {
 public:
  static std::unique_ptr<AmqpConnection> Open(int port, std::string* error) {
    auto c = std::unique_ptr<AmqpConnection>(new AmqpConnection());
    c->conn_ = amqp_new_connection();
    amqp_socket_t* socket = amqp_tcp_socket_new(c->conn_);
    if (socket == nullptr ||
        amqp_socket_open(socket, "127.0.0.1", port) != AMQP_STATUS_OK) {
      *error = "cannot open a TCP connection to 127.0.0.1";
      return nullptr;
    }
    c->open_ = true;
    amqp_rpc_reply_t r = amqp_login(c->conn_, "/", 0, 131072, 0,
                                    AMQP_SASL_METHOD_PLAIN, "guest", "guest");
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
      *error = "login failed";
      return nullptr;
    }
    amqp_channel_open(c->conn_, 1);
    if (amqp_get_rpc_reply(c->conn_).reply_type != AMQP_RESPONSE_NORMAL) {
      *error = "channel.open failed";
      return nullptr;
    }
    c->channel_open_ = true;
    return c;
  }
  ~AmqpConnection() {
    if (channel_open_) amqp_channel_close(conn_, 1, AMQP_REPLY_SUCCESS);
    if (open_) amqp_connection_close(conn_, AMQP_REPLY_SUCCESS);
    if (conn_ != nullptr) amqp_destroy_connection(conn_);
  }
  amqp_connection_state_t get() const { return conn_; }
  bool RpcOk() {
    return amqp_get_rpc_reply(conn_).reply_type == AMQP_RESPONSE_NORMAL;
  }

 private:
  AmqpConnection() = default;
  amqp_connection_state_t conn_ = nullptr;
  bool open_ = false;
  bool channel_open_ = false;
};

constexpr const char* kAmqpQueue = "warren_bench";

// Declares (transient) and purges the benchmark queue.
bool AmqpPrepareQueue(int port, std::string* error) {
  auto c = AmqpConnection::Open(port, error);
  if (c == nullptr) return false;
  amqp_queue_declare(c->get(), 1, amqp_cstring_bytes(kAmqpQueue),
                     /*passive=*/0, /*durable=*/0, /*exclusive=*/0,
                     /*auto_delete=*/0, amqp_empty_table);
  if (!c->RpcOk()) {
    *error = "queue.declare failed";
    return false;
  }
  amqp_queue_purge(c->get(), 1, amqp_cstring_bytes(kAmqpQueue));
  if (!c->RpcOk()) {
    *error = "queue.purge failed";
    return false;
  }
  return true;
}

double RabbitE2E(int port, uint64_t n, std::string* error) {
  if (!AmqpPrepareQueue(port, error)) return 0;
  auto pub = AmqpConnection::Open(port, error);
  auto sub = AmqpConnection::Open(port, error);
  if (pub == nullptr || sub == nullptr) return 0;
  amqp_basic_qos(sub->get(), 1, 0, /*prefetch_count=*/256, 0);
  if (!sub->RpcOk()) {
    *error = "basic.qos failed";
    return 0;
  }
  amqp_basic_consume(sub->get(), 1, amqp_cstring_bytes(kAmqpQueue),
                     amqp_empty_bytes, /*no_local=*/0, /*no_ack=*/0,
                     /*exclusive=*/0, amqp_empty_table);
  if (!sub->RpcOk()) {
    *error = "basic.consume failed";
    return 0;
  }
  std::atomic<uint64_t> acked{0};
  std::atomic<bool> abort{false};
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::string thread_error;
  std::thread producer([&] {
    ready.fetch_add(1);
    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
    amqp_basic_properties_t props;
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.delivery_mode = 1;  // non-persistent
    Backoff backoff;
    for (uint64_t i = 0; i < n; ++i) {
      while (i - acked.load(std::memory_order_acquire) >= kWindow) {
        if (abort.load(std::memory_order_relaxed)) return;
        backoff.Pause();
      }
      backoff.Reset();
      std::string body = Body(i);
      amqp_bytes_t bytes{body.size(), body.data()};
      if (amqp_basic_publish(pub->get(), 1, amqp_empty_bytes,
                             amqp_cstring_bytes(kAmqpQueue), 0, 0, &props,
                             bytes) != AMQP_STATUS_OK) {
        thread_error = "basic.publish failed";
        abort.store(true);
        return;
      }
    }
  });
  std::thread consumer([&] {
    ready.fetch_add(1);
    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
    for (uint64_t got = 0; got < n && !abort.load();) {
      amqp_maybe_release_buffers(sub->get());
      amqp_envelope_t envelope;
      timeval timeout{30, 0};
      amqp_rpc_reply_t r =
          amqp_consume_message(sub->get(), &envelope, &timeout, 0);
      if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        thread_error = fmt::format("consume failed after {} messages", got);
        abort.store(true);
        return;
      }
      const std::string_view body(
          static_cast<const char*>(envelope.message.body.bytes),
          envelope.message.body.len);
      const bool in_order = SeqOf(body) == got;
      amqp_basic_ack(sub->get(), 1, envelope.delivery_tag, /*multiple=*/0);
      amqp_destroy_envelope(&envelope);
      if (!in_order) {
        thread_error = "RabbitMQ delivered out of order";
        abort.store(true);
        return;
      }
      ++got;
      acked.store(got, std::memory_order_release);
    }
  });
  while (ready.load() < 2) std::this_thread::yield();
  const auto t0 = Clock::now();
  go.store(true, std::memory_order_release);
  producer.join();
  consumer.join();
  const double secs = SecondsSince(t0);
  if (abort.load()) {
    *error = thread_error;
    return 0;
  }
  return static_cast<double>(n) / secs;
}
#endif

void RunP4() {
  Progress(
      fmt::format("== P4: broker end to end, {} B messages, {} s per "
                  "trial",
                  kBodySize, E2ESeconds()));
  std::vector<AllocWindow> producer_allocs, consumer_allocs;
  Contender ours{"warren (Receive + Ack each)", [&] {
                   E2EResult r = WarrenE2E(E2ESeconds(), 1);
                   producer_allocs.push_back(r.producer_alloc);
                   consumer_allocs.push_back(r.consumer_alloc);
                   return r.rate;
                 }};
  Contender ours_batch{"warren (ReceiveBatch 64 + Ack multiple)",
                       [&] { return WarrenE2E(E2ESeconds(), 64).rate; }};
  std::vector<Contender*> all = {&ours, &ours_batch};
#if WARREN_HAVE_ZMQ
  Contender zmq{"ZeroMQ inproc PUSH/PULL",
                [&] { return ZmqE2E(E2ESeconds()); }};
  all.push_back(&zmq);
#endif
  RunInterleaved("P4", all, g_config.reps, Rate);

  // RabbitMQ: its own private server, fewer messages (it is ~100× slower).
  std::string rabbit_status;
  Contender rabbit{"RabbitMQ (rabbitmq-c, 127.0.0.1)", nullptr};
#if WARREN_HAVE_RABBITMQ_C
  if (!g_config.rabbitmq) {
    rabbit_status = "skipped (--no-rabbitmq)";
  } else {
    Progress("[P4] starting a private RabbitMQ on 127.0.0.1 ...");
    std::string error;
    const auto t0 = Clock::now();
    auto rmq = PrivateRabbitMq::Start(absl::Seconds(60), &error);
    if (rmq == nullptr) {
      rabbit_status = "not run: " + error;
      Progress("[P4] RabbitMQ: " + rabbit_status);
    } else {
      Progress(fmt::format("[P4] RabbitMQ {} up on 127.0.0.1:{} after {:.1f} s",
                           rmq->version(), rmq->amqp_port(), SecondsSince(t0)));
      const uint64_t rn = g_config.Size<uint64_t>(100'000, 10'000);
      // Warm-up: a short run that is not counted.
      std::string warm_error;
      RabbitE2E(rmq->amqp_port(), rn / 10, &warm_error);
      const int reps = std::max(1, std::min(g_config.reps, 3));
      for (int r = 0; r < reps && rabbit_status.empty(); ++r) {
        const double v = RabbitE2E(rmq->amqp_port(), rn, &error);
        if (v == 0) {
          rabbit_status = "failed: " + error;
          break;
        }
        rabbit.samples.push_back(v);
        Progress(fmt::format("[P4] {} rep {}/{}: {} ({} messages)", rabbit.name,
                             r + 1, reps, Rate(v), rn));
      }
      RecordSamples("P4 " + rabbit.name, rabbit.samples, Rate);
      Note(fmt::format(
          "P4 RabbitMQ: server {} started privately on 127.0.0.1:{} "
          "(private epmd, temp dir), transient queue, non-persistent 64 B "
          "messages, basic.qos prefetch 256, manual ack of each message, "
          "producer and consumer on separate connections; {} messages per "
          "run, {} runs after a warm-up run.",
          rmq->version(), rmq->amqp_port(), Count(rn), rabbit.samples.size()));
      rmq->Stop();
      Progress("[P4] RabbitMQ stopped");
    }
  }
#else
  rabbit_status = NotBuilt("librabbitmq-dev");
#endif

  const std::string wl =
      "broker e2e: publish → route → receive → manual ack, 1P1C, 64 B, "
      "prefetch 256, in memory";
  if (!rabbit.samples.empty()) {
    ThroughputRow("P4", wl, ours, "RabbitMQ (rabbitmq-c, loopback)", &rabbit,
                  100.0);
    ThroughputRow("P4", "… consumer uses ReceiveBatch(64) + Ack(multiple)",
                  ours_batch, "RabbitMQ (ack each)", &rabbit, 100.0);
  } else {
    ThroughputRow("P4", wl, ours, "RabbitMQ", nullptr, 100.0, rabbit_status);
  }
#if WARREN_HAVE_ZMQ
  ThroughputRow("P4", wl + " (ZeroMQ has no acks)", ours,
                "ZeroMQ inproc PUSH/PULL", &zmq, 1.0);
  ThroughputRow("P4", "… consumer uses ReceiveBatch(64) + Ack(multiple)",
                ours_batch, "ZeroMQ inproc PUSH/PULL", &zmq, 1.0);
#else
  ThroughputRow("P4", wl, ours, "ZeroMQ inproc PUSH/PULL", nullptr, 1.0,
                NotBuilt("libzmq3-dev"));
#endif

  // Heap allocations per message in the steady state (the middle half of
  // each run, counted per thread by the counting operator new).
  std::vector<double> p_news, c_news, p_bytes, c_bytes;
  for (const AllocWindow& w : producer_allocs) {
    if (w.messages == 0) continue;
    p_news.push_back(static_cast<double>(w.news) / w.messages);
    p_bytes.push_back(static_cast<double>(w.bytes) / w.messages);
  }
  for (const AllocWindow& w : consumer_allocs) {
    if (w.messages == 0) continue;
    c_news.push_back(static_cast<double>(w.news) / w.messages);
    c_bytes.push_back(static_cast<double>(w.bytes) / w.messages);
  }
  if (!p_news.empty() && !c_news.empty()) {
    const double pn = Median(p_news), cn = Median(c_news);
    AddRow(Row{"P4",
               "heap allocations per message, steady state (operator new, "
               "producer + consumer thread)",
               fmt::format("{:.2f} allocs ({:.0f} B)", pn + cn,
                           Median(p_bytes) + Median(c_bytes)),
               "—", "—", "—", "— (report; 0 is the direction)", "n/a"});
    Note(fmt::format(
        "P4 allocations: producer thread {:.2f} allocations / {:.0f} B per "
        "message (the 64 B body string the producer builds counts as 1 "
        "allocation of 65 B), consumer thread {:.2f} / {:.0f} B, over the "
        "middle half of each timed Receive + Ack run.",
        pn, Median(p_bytes), cn, Median(c_bytes)));
  }
}

// --- P5: fanout
// ---------------------------------------------------------------

// Cost per publish to a fanout exchange bound to `queues` queues. Publishes in
// rounds of 1,000 messages (timed), purging the queues between rounds (not
// timed) so that each ring stays below its capacity.
Cost FanoutTrial(int queues, uint64_t publishes, AllocWindow* alloc) {
  auto broker = warren::Broker::Open({}).value();
  broker->DeclareExchange("fan", warren::ExchangeType::kFanout).IgnoreError();
  for (int i = 0; i < queues; ++i) {
    const std::string name = fmt::format("f{}", i);
    broker->DeclareQueue(name).IgnoreError();
    broker->Bind(name, "fan", "").IgnoreError();
  }
  constexpr uint64_t kRound = 1000;
  const std::string body(kBodySize, 'x');
  Stopwatch watch;
  uint64_t done = 0;
  AllocCounters before = t_alloc;
  uint64_t untimed_news = 0, untimed_bytes = 0;
  while (done < publishes) {
    const uint64_t k = std::min(kRound, publishes - done);
    watch.Start();
    for (uint64_t i = 0; i < k; ++i) {
      auto outcome = broker->Publish("fan", "", warren::Message(body));
      if (!outcome.ok() || outcome->queues != static_cast<size_t>(queues)) {
        Bug(fmt::format("P5: fanout publish reached {} of {} queues",
                        outcome.ok() ? outcome->queues : 0, queues));
        return {};
      }
    }
    watch.Stop();
    done += k;
    const AllocCounters a = t_alloc;
    for (int i = 0; i < queues; ++i) {
      broker->PurgeQueue(fmt::format("f{}", i)).IgnoreError();
    }
    untimed_news += t_alloc.news - a.news;
    untimed_bytes += t_alloc.bytes - a.bytes;
  }
  if (alloc != nullptr) {
    *alloc = {t_alloc.news - before.news - untimed_news,
              t_alloc.bytes - before.bytes - untimed_bytes, 0, publishes};
  }
  return watch.PerOp(publishes);
}

// Publishes `publishes` messages to a fanout over `queues` queues and
// receives every copy: returns the largest number of distinct body pointers
// seen for one publish, and sets `*same_as_published` when every copy points
// at the producer's own buffer.
size_t FanoutBodyPointers(int queues, int publishes, bool* same_as_published) {
  auto broker = warren::Broker::Open({}).value();
  broker->DeclareExchange("fan", warren::ExchangeType::kFanout).IgnoreError();
  std::vector<std::unique_ptr<warren::Consumer>> consumers;
  for (int i = 0; i < queues; ++i) {
    const std::string name = fmt::format("f{}", i);
    broker->DeclareQueue(name).IgnoreError();
    broker->Bind(name, "fan", "").IgnoreError();
    consumers.push_back(broker->Consume(name).value());
  }
  std::vector<const char*> published(publishes);
  for (int p = 0; p < publishes; ++p) {
    warren::Message m(Body(static_cast<uint64_t>(p)));
    published[p] = m.body().data();
    broker->Publish("fan", "", std::move(m)).IgnoreError();
  }
  std::vector<absl::flat_hash_set<const char*>> seen(publishes);
  std::vector<warren::Delivery> held;
  *same_as_published = true;
  for (auto& c : consumers) {
    for (int p = 0; p < publishes; ++p) {
      auto d = c->TryReceive();
      if (!d.ok()) {
        Bug(fmt::format("P5: queue {} lost message {}: {}", c->queue(), p,
                        d.status().ToString()));
        return 0;
      }
      const uint64_t seq = SeqOf(d->body());
      if (seq >= static_cast<uint64_t>(publishes)) {
        Bug("P5: a body arrived altered");
        return 0;
      }
      seen[seq].insert(d->body().data());
      *same_as_published =
          *same_as_published && d->body().data() == published[seq];
      held.push_back(*d);
    }
  }
  size_t most = 0;
  for (const auto& s : seen) most = std::max(most, s.size());
  return most;
}

void RunP5() {
  const uint64_t n = g_config.Size<uint64_t>(100'000, 20'000);
  Progress(fmt::format("== P5: fanout to 1, 10, 100 queues, {} publishes", n));
  std::vector<AllocWindow> allocs(3);
  std::vector<std::vector<double>> walls(3);
  auto trial = [&](int index, int queues) {
    const Cost c = FanoutTrial(queues, n, &allocs[index]);
    walls[index].push_back(c.wall_ns);
    return c.cpu_ns;
  };
  Contender f1{"fanout to 1 queue (CPU time)", [&] { return trial(0, 1); }};
  Contender f10{"fanout to 10 queues (CPU time)", [&] { return trial(1, 10); }};
  Contender f100{"fanout to 100 queues (CPU time)",
                 [&] { return trial(2, 100); }};
  RunInterleaved("P5", {&f1, &f10, &f100}, g_config.reps, Nanos);
  RecordSamples("P5 fanout to 1 queue (wall)", walls[0], Nanos);
  RecordSamples("P5 fanout to 10 queues (wall)", walls[1], Nanos);
  RecordSamples("P5 fanout to 100 queues (wall)", walls[2], Nanos);
  const double base = f1.median();
  for (Contender* c : {&f10, &f100}) {
    const int queues = c == &f10 ? 10 : 100;
    const double per_extra = (c->median() - base) / (queues - 1);
    AddRow(Row{"P5",
               fmt::format("publish, fanout to {} queues (64 B), per publish "
                           "(thread CPU time)",
                           queues),
               Nanos(c->median()), "own fanout to 1 queue", Nanos(base),
               fmt::format("{} per extra queue", Nanos(per_extra)),
               "≤ 30 ns per extra queue", Met(per_extra <= 30)});
  }
  bool same = false;
  const size_t distinct = FanoutBodyPointers(100, 100, &same);
  AddRow(Row{"P5",
             "body copies: distinct body data() pointers per publish across "
             "100 queues",
             fmt::format("{}{}", distinct,
                         same ? " (the publisher's own buffer)" : ""),
             "—", "—", "—", "1 per publish (0 copies)",
             Met(distinct == 1 && same)});
  Note(fmt::format(
      "P5 allocations per publish (operator new, body string included): "
      "1 queue {:.1f}, 10 queues {:.1f}, 100 queues {:.1f}.",
      static_cast<double>(allocs[0].news) / allocs[0].messages,
      static_cast<double>(allocs[1].news) / allocs[1].messages,
      static_cast<double>(allocs[2].news) / allocs[2].messages));
}

// --- P6: topic routing
// --------------------------------------------------------

struct TopicBroker {
  std::unique_ptr<warren::Broker> broker;
  int queues = 0;
  double bind_seconds = 0;
};

TopicBroker MakeTopicBroker(const TopicWorkload& w) {
  TopicBroker tb;
  tb.broker = warren::Broker::Open({}).value();
  tb.queues = static_cast<int>(std::min<size_t>(w.patterns.size(), 100));
  tb.broker->DeclareExchange("topic", warren::ExchangeType::kTopic)
      .IgnoreError();
  for (int q = 0; q < tb.queues; ++q) {
    tb.broker->DeclareQueue(fmt::format("t{}", q)).IgnoreError();
  }
  const auto t0 = Clock::now();
  for (size_t i = 0; i < w.patterns.size(); ++i) {
    const absl::Status s = tb.broker->Bind(fmt::format("t{}", i % tb.queues),
                                           "topic", w.patterns[i]);
    if (!s.ok()) Bug("P6: Bind failed: " + s.ToString());
  }
  tb.bind_seconds = SecondsSince(t0);
  return tb;
}

// ns per Publish to the topic exchange (route + enqueue into the matching
// queues); queues are purged between rounds, untimed. Sets `*matched` to the
// mean number of queues a publish reached.
Cost TopicPublishTrial(TopicBroker& tb, const TopicWorkload& w,
                       uint64_t publishes, double* matched) {
  constexpr uint64_t kRound = 1000;
  const std::string body(kBodySize, 'x');
  Stopwatch watch;
  uint64_t done = 0, reached = 0;
  size_t k = 0;
  while (done < publishes) {
    const uint64_t round = std::min(kRound, publishes - done);
    watch.Start();
    for (uint64_t i = 0; i < round; ++i) {
      auto outcome =
          tb.broker->Publish("topic", w.keys[k], warren::Message(body));
      if (++k == w.keys.size()) k = 0;
      if (outcome.ok()) reached += outcome->queues;
    }
    watch.Stop();
    done += round;
    for (int q = 0; q < tb.queues; ++q) {
      tb.broker->PurgeQueue(fmt::format("t{}", q)).IgnoreError();
    }
  }
  *matched = static_cast<double>(reached) / publishes;
  return watch.PerOp(publishes);
}

// Cost per TopicTrie::Match, over the keys repeatedly (at least `min_keys`).
Cost TrieTrial(const warren::internal::TopicTrie<uint32_t>& trie,
               const TopicWorkload& w, uint64_t min_keys, uint64_t* found) {
  uint64_t done = 0, hits = 0;
  Stopwatch watch;
  watch.Start();
  while (done < min_keys) {
    for (const std::string& key : w.keys) {
      trie.Match(key, [&](const uint32_t&) { ++hits; });
    }
    done += w.keys.size();
  }
  watch.Stop();
  *found = hits;
  return watch.PerOp(done);
}

// Cost per key of a linear scan of every pattern with TopicPatternMatches,
// over the first `keys` keys.
Cost ScanTrial(const TopicWorkload& w, size_t keys, uint64_t* found) {
  uint64_t hits = 0;
  Stopwatch watch;
  watch.Start();
  for (size_t i = 0; i < keys; ++i) {
    for (const std::string& p : w.patterns) {
      if (warren::internal::TopicPatternMatches(p, w.keys[i])) ++hits;
    }
  }
  watch.Stop();
  *found = hits;
  return watch.PerOp(keys);
}

void RunP6() {
  // Binding 100,000 patterns through the broker takes tens of seconds (see
  // the note), too long for the quick mode.
  const std::vector<size_t> sizes =
      g_config.quick ? std::vector<size_t>{10, 2000, 8000, 20000}
                     : std::vector<size_t>{10, 2000, 8000, 100000};
  const uint64_t publishes = g_config.Size<uint64_t>(200'000, 20'000);
  Progress("== P6: topic routing");
  struct Result {
    size_t n;
    double publish_ns, trie_ns, scan_ns, matched, bind_s;
  };
  std::vector<Result> results;
  for (size_t n : sizes) {
    const TopicWorkload w = MakeTopicWorkload(n, 4096);
    Progress(fmt::format("[P6] {} bindings: binding ...", n));
    TopicBroker tb = MakeTopicBroker(w);
    Progress(
        fmt::format("[P6] {} bindings bound in {:.2f} s", n, tb.bind_seconds));
    warren::internal::TopicTrie<uint32_t> trie;
    for (size_t i = 0; i < w.patterns.size(); ++i) {
      trie.Add(w.patterns[i], static_cast<uint32_t>(i));
    }
    // Cross-check the trie against the reference matcher on some keys.
    const size_t check = std::min<size_t>(w.keys.size(), n >= 50000 ? 50 : 400);
    for (size_t i = 0; i < check; ++i) {
      size_t by_trie = 0, by_scan = 0;
      trie.Match(w.keys[i], [&](const uint32_t&) { ++by_trie; });
      for (const std::string& p : w.patterns) {
        by_scan += warren::internal::TopicPatternMatches(p, w.keys[i]);
      }
      if (by_trie != by_scan) {
        Bug(
            fmt::format("P6: key '{}' matches {} patterns by trie, {} by "
                        "scan ({} bindings)",
                        w.keys[i], by_trie, by_scan, n));
        break;
      }
    }
    Result r{n, 0, 0, 0, 0, tb.bind_seconds};
    std::vector<double> pub, trie_s, scan_s, pub_wall;
    const size_t scan_keys =
        std::max<size_t>(8, g_config.Size<size_t>(4'000'000, 400'000) / n);
    for (int rep = 0; rep < g_config.reps; ++rep) {
      const Cost c = TopicPublishTrial(tb, w, publishes, &r.matched);
      pub.push_back(c.cpu_ns);
      pub_wall.push_back(c.wall_ns);
      uint64_t found = 0;
      trie_s.push_back(
          TrieTrial(trie, w, g_config.Size<uint64_t>(400'000, 40'000), &found)
              .cpu_ns);
      scan_s.push_back(
          ScanTrial(w, std::min(scan_keys, w.keys.size()), &found).cpu_ns);
    }
    r.publish_ns = Median(pub);
    r.trie_ns = Median(trie_s);
    r.scan_ns = Median(scan_s);
    RecordSamples(fmt::format("P6 publish, {} bindings (CPU time)", n), pub,
                  Nanos);
    RecordSamples(fmt::format("P6 publish, {} bindings (wall)", n), pub_wall,
                  Nanos);
    RecordSamples(fmt::format("P6 TopicTrie::Match, {} bindings (CPU time)", n),
                  trie_s, Nanos);
    RecordSamples(fmt::format("P6 linear scan, {} bindings (CPU time)", n),
                  scan_s, Nanos);
    Progress(fmt::format(
        "[P6] {} bindings: publish {} (spread {}), trie match {}, linear scan "
        "{}, {:.2f} queues/publish",
        n, Nanos(r.publish_ns), Spread(pub, Nanos), Nanos(r.trie_ns),
        Nanos(r.scan_ns), r.matched));
    results.push_back(std::move(r));
  }
  for (const Result& r : results) {
    std::string goal = "—", met = "n/a";
    if (r.n == 2000) {
      goal = "≤ 300 ns/msg at 2,000";
      met = fmt::format("{} (publish); {} (match alone)",
                        Met(r.publish_ns <= 300), Met(r.trie_ns <= 300));
    } else if (r.n == 8000) {
      goal = "≥ 100× the scan at 8k";
      met = fmt::format("{} (match alone vs scan)",
                        Met(r.scan_ns / r.trie_ns >= 100));
    }
    AddRow(Row{
        "P6",
        fmt::format("topic exchange, {} bindings ({:.2f} queues "
                    "reached per publish): Publish, and "
                    "TopicTrie::Match alone (thread CPU time)",
                    r.n, r.matched),
        fmt::format("{}/msg (match {})", Nanos(r.publish_ns), Nanos(r.trie_ns)),
        "linear scan over the same patterns (TopicPatternMatches; "
        "routing only)",
        Nanos(r.scan_ns) + "/msg",
        fmt::format("scan / match {}", Times(r.scan_ns / r.trie_ns)), goal,
        met});
  }
  const Result& small = results.front();
  const Result& large = results.back();
  const double growth = large.publish_ns / small.publish_ns;
  const double match_growth = large.trie_ns / small.trie_ns;
  AddRow(Row{
      "P6",
      fmt::format("cost growth from {} to {} bindings{}", small.n, large.n,
                  g_config.quick ? " (quick mode: not 100,000)" : ""),
      fmt::format("publish {} → {}; match {} → {}", Nanos(small.publish_ns),
                  Nanos(large.publish_ns), Nanos(small.trie_ns),
                  Nanos(large.trie_ns)),
      "—", "—",
      fmt::format("publish {}, match {}", Times(growth), Times(match_growth)),
      "≤ 2×",
      fmt::format("{} (publish); {} (match alone)", Met(growth <= 2.0),
                  Met(match_growth <= 2.0))});
  std::string bind_line;
  for (const Result& r : results) {
    bind_line += fmt::format("{}{}: {:.2f} s", bind_line.empty() ? "" : ", ",
                             r.n, r.bind_s);
  }
  Note(
      "P6: times are thread CPU time per message or key (single thread). "
      "Publish = route + enqueue into the matching queues (100 queues, "
      "bindings spread over them; queues purged between rounds of 1,000, "
      "untimed); match = TopicTrie::Match of the same keys (routing only), "
      "the like-for-like comparison with the linear scan. Keys have 4 "
      "words; half equal a literal binding, half are random. Time to Bind "
      "all patterns one by one through Broker::Bind: " +
      bind_line + ".");
}

// --- P7: latency
// --------------------------------------------------------------

long Futex(std::atomic<uint32_t>* word, int op, uint32_t value) {
  return ::syscall(SYS_futex, reinterpret_cast<uint32_t*>(word),
                   op | FUTEX_PRIVATE_FLAG, value, nullptr, nullptr, 0);
}

// Round trips between two threads; returns one-way latencies (RTT / 2) in
// ns. `ping(i)` runs on the measuring thread and must return after the echo;
// `pong(i)` runs on the other thread.
std::vector<double> PingPong(int warmup, int samples,
                             const std::function<void(int)>& ping,
                             const std::function<void(int)>& pong) {
  const int total = warmup + samples;
  std::thread other([&] {
    PinToCpu(1);
    for (int i = 0; i < total; ++i) pong(i);
  });
  PinToCpu(0);
  std::vector<double> out;
  out.reserve(samples);
  for (int i = 0; i < total; ++i) {
    const auto t0 = Clock::now();
    ping(i);
    const double ns =
        std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
    if (i >= warmup) out.push_back(ns / 2);
  }
  other.join();
  return out;
}

std::vector<double> FutexLatency(int warmup, int samples) {
  std::atomic<uint32_t> word{0};
  return PingPong(
      warmup, samples,
      [&](int i) {
        const uint32_t mine = 2 * i + 1, theirs = 2 * i + 2;
        word.store(mine, std::memory_order_release);
        Futex(&word, FUTEX_WAKE, 1);
        for (uint32_t v;
             (v = word.load(std::memory_order_acquire)) != theirs;) {
          Futex(&word, FUTEX_WAIT, v);
        }
      },
      [&](int i) {
        const uint32_t theirs = 2 * i + 1, mine = 2 * i + 2;
        for (uint32_t v;
             (v = word.load(std::memory_order_acquire)) != theirs;) {
          Futex(&word, FUTEX_WAIT, v);
        }
        word.store(mine, std::memory_order_release);
        Futex(&word, FUTEX_WAKE, 1);
      });
}

std::vector<double> AtomicWaitLatency(int warmup, int samples) {
  std::atomic<uint32_t> word{0};
  return PingPong(
      warmup, samples,
      [&](int i) {
        const uint32_t mine = 2 * i + 1, theirs = 2 * i + 2;
        word.store(mine, std::memory_order_release);
        word.notify_one();
        for (uint32_t v;
             (v = word.load(std::memory_order_acquire)) != theirs;) {
          word.wait(v, std::memory_order_acquire);
        }
      },
      [&](int i) {
        const uint32_t theirs = 2 * i + 1, mine = 2 * i + 2;
        for (uint32_t v;
             (v = word.load(std::memory_order_acquire)) != theirs;) {
          word.wait(v, std::memory_order_acquire);
        }
        word.store(mine, std::memory_order_release);
        word.notify_one();
      });
}

std::vector<double> CondVarLatency(int warmup, int samples) {
  std::mutex mu;
  std::condition_variable cv;
  int turn = 0;
  return PingPong(
      warmup, samples,
      [&](int i) {
        std::unique_lock<std::mutex> lock(mu);
        turn = 2 * i + 1;
        cv.notify_all();
        cv.wait(lock, [&] { return turn == 2 * i + 2; });
      },
      [&](int i) {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return turn == 2 * i + 1; });
        turn = 2 * i + 2;
        cv.notify_all();
      });
}

// warren round trip through two queues: publish "ping"; the other thread
// receives it, publishes "pong" and acks; we receive the pong. `spin`: both
// threads poll TryReceive instead of parking in Receive.
std::vector<double> BrokerLatency(int warmup, int samples, bool spin) {
  auto broker = warren::Broker::Open({}).value();
  broker->DeclareQueue("ping").IgnoreError();
  broker->DeclareQueue("pong").IgnoreError();
  auto ping_consumer = broker->Consume("ping", Prefetch(256)).value();
  auto pong_consumer = broker->Consume("pong", Prefetch(256)).value();
  const std::string body(kBodySize, 'x');
  std::atomic<bool> failed{false};
  auto receive = [&](warren::Consumer& c) -> std::optional<warren::Delivery> {
    if (!spin) {
      auto d = c.Receive(absl::Seconds(10));
      if (d.ok()) return *std::move(d);
      Bug("P7: Receive failed: " + d.status().ToString());
      return std::nullopt;
    }
    const auto t0 = Clock::now();
    for (;;) {
      auto d = c.TryReceive();
      if (d.ok()) return *std::move(d);
      if (!absl::IsUnavailable(d.status()) || SecondsSince(t0) > 10) {
        Bug("P7: TryReceive failed: " + d.status().ToString());
        return std::nullopt;
      }
      CpuRelax();
    }
  };
  auto out = PingPong(
      warmup, samples,
      [&](int) {
        if (failed.load()) return;
        warren::Message m(body);
        broker->Publish("", "ping", std::move(m)).IgnoreError();
        auto d = receive(*pong_consumer);
        if (!d) {
          failed.store(true);
          return;
        }
        pong_consumer->Ack(*d).IgnoreError();
      },
      [&](int) {
        if (failed.load()) return;
        auto d = receive(*ping_consumer);
        if (!d) {
          failed.store(true);
          return;
        }
        broker->Publish("", "pong", warren::Message(body)).IgnoreError();
        ping_consumer->Ack(*d).IgnoreError();
      });
  if (failed.load()) return {};
  return out;
}

void RunP7() {
  const int samples = g_config.Size(20'000, 2'000);
  const int warmup = samples / 10;
  Progress(fmt::format("== P7: latency, {} round trips per run", samples));
  struct Lat {
    Lat(std::string n, std::function<std::vector<double>()> r)
        : name(std::move(n)), run(std::move(r)) {}
    std::string name;
    std::function<std::vector<double>()> run;
    std::vector<double> p50s, p99s;
  };
  std::vector<Lat> lats = {
      {"bare futex ping-pong (FUTEX_WAIT/FUTEX_WAKE)",
       [&] { return FutexLatency(warmup, samples); }},
      {"std::atomic wait/notify ping-pong",
       [&] { return AtomicWaitLatency(warmup, samples); }},
      {"mutex + condvar ping-pong",
       [&] { return CondVarLatency(warmup, samples); }},
      {"warren publish → parked consumer (Receive)",
       [&] { return BrokerLatency(warmup, samples, false); }},
      {"warren publish → spinning consumer (TryReceive loop)",
       [&] { return BrokerLatency(warmup, samples, true); }},
  };
  for (int r = 0; r < g_config.reps; ++r) {
    for (Lat& l : lats) {
      std::vector<double> v = l.run();
      if (v.empty()) continue;
      const double p50 = Percentile(v, 0.5), p99 = Percentile(v, 0.99);
      l.p50s.push_back(p50);
      l.p99s.push_back(p99);
      Progress(fmt::format("[P7] {} rep {}/{}: p50 {} p99 {}", l.name, r + 1,
                           g_config.reps, Nanos(p50), Nanos(p99)));
    }
  }
  for (const Lat& l : lats) {
    RecordSamples("P7 " + l.name + ", p50 one way", l.p50s, Nanos);
  }
  const double futex = Median(lats[0].p50s);
  const double parked = Median(lats[3].p50s);
  const double spinning = Median(lats[4].p50s);
  if (lats[3].p50s.empty() || lats[4].p50s.empty()) {
    AddRow(Row{"P7", "latency", "failed", "—", "—", "—", "—", "**no**"});
    return;
  }
  AddRow(
      Row{"P7",
          fmt::format("latency publish → parked consumer, one way p50 "
                      "(p99 {})",
                      Nanos(Median(lats[3].p99s))),
          Nanos(parked), "bare futex wake, one way p50",
          fmt::format("{} (p99 {})", Nanos(futex), Nanos(Median(lats[0].p99s))),
          Times(parked / futex), "p50 ≤ 1.5×", Met(parked / futex <= 1.5)});
  AddRow(Row{"P7",
             fmt::format("latency publish → spinning consumer (TryReceive "
                         "loop), one way p50 (p99 {})",
                         Nanos(Median(lats[4].p99s))),
             Nanos(spinning), "—", "—", "—", "p50 ≤ 1 µs",
             Met(spinning <= 1000)});
  Note(fmt::format(
      "P7 one-way latency = round trip / 2, median over runs of each run's "
      "p50. Other wake-up baselines in the same binary: std::atomic "
      "wait/notify p50 {}, mutex + condvar p50 {}.",
      Nanos(Median(lats[1].p50s)), Nanos(Median(lats[2].p50s))));
}

// --- P8: memory per queued message
// --------------------------------------------

struct MemResult {
  uint64_t messages = 0;
  double new_bytes_per_msg = 0;  // operator new bytes inside Publish
  double news_per_msg = 0;
  double rss_per_msg = 0;  // RSS growth per message, body included
  Cost publish;
};

// Publishes `n` 64-byte messages to one queue nobody consumes. The body
// strings are built outside the counted region (they are the body); the
// counters then see only what Publish allocates.
MemResult MemoryTrial(uint64_t n) {
  MemResult r;
  r.messages = n;
  ::malloc_trim(0);
  auto broker = warren::Broker::Open({}).value();
  broker->DeclareQueue("mem").IgnoreError();
  const uint64_t rss0 = ResidentBytes();
  uint64_t news = 0, bytes = 0;
  Stopwatch watch;
  constexpr uint64_t kChunk = 4096;
  std::vector<warren::Message> chunk;
  chunk.reserve(kChunk);
  for (uint64_t done = 0; done < n;) {
    const uint64_t k = std::min(kChunk, n - done);
    chunk.clear();
    for (uint64_t i = 0; i < k; ++i) chunk.emplace_back(Body(done + i));
    const AllocCounters before = t_alloc;
    watch.Start();
    for (uint64_t i = 0; i < k; ++i) {
      auto outcome = broker->Publish("", "mem", std::move(chunk[i]));
      if (!outcome.ok() || outcome->queues != 1) {
        Bug("P8: publish failed");
        return r;
      }
    }
    watch.Stop();
    news += t_alloc.news - before.news;
    bytes += t_alloc.bytes - before.bytes;
    done += k;
  }
  const uint64_t rss1 = ResidentBytes();
  const auto stats = broker->GetQueueStats("mem").value();
  if (stats.ready != n) {
    Bug(fmt::format("P8: queue holds {} of {} messages", stats.ready, n));
  }
  r.new_bytes_per_msg = static_cast<double>(bytes) / n;
  r.news_per_msg = static_cast<double>(news) / n;
  r.rss_per_msg = (static_cast<double>(rss1) - rss0) / n;
  r.publish = watch.PerOp(n);
  return r;
}

void RunP8() {
  Progress("== P8: memory per queued message");
  // A probe sizes the real run to the memory this machine has free.
  const MemResult probe = MemoryTrial(100'000);
  const double per_msg =
      std::max(probe.rss_per_msg, probe.new_bytes_per_msg + kBodySize + 16);
  const uint64_t avail = MemAvailableBytes();
  uint64_t n = g_config.quick ? 1'000'000 : 10'000'000;
  std::string size_note;
  if (!g_config.quick && per_msg * n * 1.5 > avail / 2.0) {
    n = 1'000'000;
    size_note = fmt::format(
        " (1 M, not 10 M: 10 M would need ~{:.1f} GB of the {:.1f} GB "
        "available)",
        per_msg * 10e6 / 1e9, avail / 1e9);
  } else if (g_config.quick) {
    size_note = " (quick mode: 1 M)";
  }
  Progress(fmt::format(
      "[P8] probe (100,000 messages): {:.0f} B/msg, publish {}; queueing {} "
      "messages",
      per_msg, Nanos(probe.publish.cpu_ns), n));
  const MemResult r = MemoryTrial(n);
  const double beyond_rss = r.rss_per_msg - kBodySize;
  AddRow(Row{"P8",
             fmt::format("memory per queued 64 B message beyond the body, "
                         "{} messages{}",
                         Count(n), size_note),
             fmt::format("{:.0f} B (operator new, {:.1f} allocs/msg)",
                         r.new_bytes_per_msg, r.news_per_msg),
             "RSS growth − 64 B body", fmt::format("{:.0f} B", beyond_rss), "—",
             "≤ 32 B", Met(r.new_bytes_per_msg <= 32 && beyond_rss <= 32)});
  Note(fmt::format(
      "P8: bytes requested from operator new by Publish per message (the body "
      "string is built by the caller and not counted), and the growth of the "
      "resident set per message minus the 64 B body (includes malloc's chunk "
      "overhead and the body's own 65 B chunk beyond 64 B). Publish into the "
      "unconsumed queue (most of it in the overflow list behind the ring) "
      "took {} CPU / {} wall per message, first-touch page faults included.",
      Nanos(r.publish.cpu_ns), Nanos(r.publish.wall_ns)));
}

// --- D1-D4: durability (durable_compare.cc)
// -----------------------------------

void RunDurable() {
  DurableHarness h;
  h.quick = g_config.quick;
  h.reps = g_config.reps;
  h.rabbitmq = g_config.rabbitmq;
  h.dir = g_config.durable_dir;
  h.progress = Progress;
  h.add_row = AddRow;
  h.note = Note;
  h.bug = Bug;
  h.run_interleaved = [](const std::string& label,
                         const std::vector<DurableContender*>& ds,
                         const DurableFormat& show) {
    std::vector<Contender> cs;
    for (DurableContender* d : ds) {
      cs.emplace_back(d->name, [d] { return d->run(); });
    }
    std::vector<Contender*> ptrs;
    for (Contender& c : cs) ptrs.push_back(&c);
    RunInterleaved(label, ptrs, g_config.reps, show);
    for (size_t i = 0; i < ds.size(); ++i) ds[i]->samples = cs[i].samples;
  };
  h.median = Median;
  h.rate = Rate;
  h.times = Times;
  h.met = Met;
  RunDurableRows(h, [](std::string_view id) { return g_config.Runs(id); });
}

// --- Main
// ---------------------------------------------------------------------

std::string Peers() {
  auto yes_no = [](bool have, std::string_view pkg) {
    return have ? std::string("yes") : fmt::format("no (install {})", pkg);
  };
  std::string s;
  s += "moodycamel ConcurrentQueue: " +
       yes_no(WARREN_HAVE_MOODYCAMEL, "libconcurrentqueue-dev");
  s += "; ReaderWriterQueue: " +
       yes_no(WARREN_HAVE_READERWRITERQUEUE, "libreaderwriterqueue-dev");
  s += "; Boost.Lockfree: " + yes_no(WARREN_HAVE_BOOST, "libboost-dev");
  s += "; TBB: " + yes_no(WARREN_HAVE_TBB, "libtbb-dev");
  s += "; ZeroMQ: " + yes_no(WARREN_HAVE_ZMQ, "libzmq3-dev");
  s += "; rabbitmq-c: " + yes_no(WARREN_HAVE_RABBITMQ_C, "librabbitmq-dev");
  s += "; SQLite: " + yes_no(WARREN_HAVE_SQLITE, "libsqlite3-dev");
  return s;
}

std::string Report(double seconds, const std::string& load_before) {
  std::string out;
  utsname u{};
  ::uname(&u);
  out += "# warren peer comparison\n\n";
  out += fmt::format(
      "- date: {}\n",
      absl::FormatTime("%Y-%m-%d %H:%M UTC", absl::Now(), absl::UTCTimeZone()));
  out += fmt::format("- machine: {}, {} cores (hardware threads); Linux {}\n",
                     CpuModel(), g_cpus, u.release);
  out += fmt::format(
      "- build: {} ({}){}; mode: {}; {} repetitions per measurement, medians "
      "shown; ring threads {}\n",
      WARREN_BUILD_TYPE, WARREN_CXX_COMPILER,
#ifdef NDEBUG
      "",
#else
      ", **assertions on (not a Release build: numbers are not "
      "representative)**",
#endif
      g_config.quick ? "quick (smoke test; small sizes)" : "full",
      g_config.reps, g_config.pin ? "pinned" : "not pinned");
  out +=
      fmt::format("- load average before / after: {} / {}; run took {:.0f} s\n",
                  load_before, LoadAverage(), seconds);
  out += "- peers: " + Peers() + "\n\n";
  out +=
      "| id | workload | warren | compared with | peer | ratio | goal | met "
      "|\n";
  out += "|---|---|---|---|---|---|---|---|\n";
  for (const Row& r : g_rows) {
    out += fmt::format("| {} | {} | {} | {} | {} | {} | {} | {} |\n", r.id,
                       r.workload, r.ours, r.peer, r.peer_value, r.ratio,
                       r.goal, r.met);
  }
  if (!g_notes.empty()) {
    out += "\nNotes:\n\n";
    for (const std::string& n : g_notes) out += "- " + n + "\n";
  }
  if (!g_samples.empty()) {
    out += "\nEvery repetition (in run order; the table shows medians):\n\n";
    for (const std::string& line : g_samples) out += "- " + line + "\n";
  }
  out += "\nBugs found during the run: ";
  if (g_bugs.empty()) {
    out +=
        "none (every ring trial checked its item sum; broker runs checked "
        "order and count).\n";
  } else {
    out += "\n\n";
    for (const std::string& b : g_bugs) out += "- " + b + "\n";
  }
  return out;
}

int Main(int argc, char** argv) {
  if (const char* q = std::getenv("WARREN_PEER_QUICK");
      q != nullptr && *q != '\0' && std::string_view(q) != "0") {
    g_config.quick = true;
  }
  bool reps_set = false;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.rfind(kChildFlag, 0) == 0) {
      return RunChild(arg.substr(kChildFlag.size()));
    }
    if (arg == "--quick") {
      g_config.quick = true;
    } else if (arg.rfind("--reps=", 0) == 0) {
      g_config.reps = std::max(1, std::atoi(argv[i] + 7));
      reps_set = true;
    } else if (arg == "--pin") {
      g_config.pin = true;
    } else if (arg == "--no-rabbitmq") {
      g_config.rabbitmq = false;
    } else if (arg.rfind("--only=", 0) == 0) {
      std::string list(arg.substr(7));
      std::stringstream ss(list);
      std::string item;
      while (std::getline(ss, item, ',')) g_config.only.push_back(item);
    } else if (arg.rfind("--out=", 0) == 0) {
      g_config.out = std::string(arg.substr(6));
    } else if (arg.rfind("--durable-dir=", 0) == 0) {
      g_config.durable_dir = std::string(arg.substr(14));
    } else {
      fmt::print(stderr,
                 "usage: {} [--quick] [--reps=N] [--only=P1,P4,D1,...] "
                 "[--pin] [--no-rabbitmq] [--durable-dir=DIR] [--out=FILE]\n",
                 argv[0]);
      return 2;
    }
  }
  if (g_config.quick && !reps_set) g_config.reps = 3;
  g_cpus = std::max(1u, std::thread::hardware_concurrency());
#ifndef NDEBUG
  Progress("warning: assertions are on; benchmark a Release build");
#endif
  const std::string load_before = LoadAverage();
  const auto t0 = Clock::now();
  const std::pair<const char*, void (*)()> rows[] = {
      {"P1", RunP1}, {"P2", RunP2}, {"P3", RunP3}, {"P4", RunP4},
      {"P5", RunP5}, {"P6", RunP6}, {"P7", RunP7}, {"P8", RunP8},
  };
  for (const auto& [id, run] : rows) {
    if (!g_config.Runs(id)) continue;
    const auto row_t0 = Clock::now();
    run();
    Progress(fmt::format("== {} done in {:.1f} s", id, SecondsSince(row_t0)));
  }
  if (std::any_of(kDurableRowIds.begin(), kDurableRowIds.end(),
                  [](std::string_view id) { return g_config.Runs(id); })) {
    const auto row_t0 = Clock::now();
    RunDurable();
    Progress(fmt::format("== D1-D4 done in {:.1f} s", SecondsSince(row_t0)));
  }
  const std::string report = Report(SecondsSince(t0), load_before);
  fmt::print("{}", report);
  if (!g_config.out.empty()) {
    std::ofstream out(g_config.out, std::ios::trunc);
    out << report;
  }
  return g_bugs.empty() ? 0 : 1;
}

}  // namespace
}  // namespace warren_bench

int main(int argc, char** argv) { return warren_bench::Main(argc, argv); }
