// -----------------------------------------------------------------------------
// File: benchmarks/ring_benchmark.cc
// -----------------------------------------------------------------------------
//
// Google Benchmark micro-benchmarks of warren's rings, MpmcQueue and
// SpscQueue, with 8-byte items:
//
//   BM_*_PushPop_SingleThread   one push and one pop on one thread (the
//                               uncontended cost of the two calls)
//   BM_*_Bulk_SingleThread/n    try_push_bulk(n) + try_pop_bulk(n), per item
//   BM_*_1P1C                   a producer thread and a consumer thread
//                               (->Threads(2): thread 0 pushes, thread 1
//                               pops; items_per_second is the pair's rate)
//   BM_Mpmc_1P1C_Bulk/n         the same moving n items per call
//   BM_Mpmc_NPNC                N/2 producers, N/2 consumers (->Threads(N));
//                               on a machine with fewer than N cores this
//                               measures oversubscription, not scaling
//
// The cross-thread benchmarks share a ring created by thread 0 before the
// timed loop: Google Benchmark starts and ends every thread's loop with a
// barrier, so the ring is ready before any thread uses it and freed after.
// Every thread runs the same number of iterations, so producers and consumers
// balance exactly. Failed try_ calls pause, then yield.

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <thread>
#include <vector>

#include "warren/mpmc_queue.h"
#include "warren/spsc_queue.h"

namespace {

constexpr size_t kCapacity = 8192;

using Mpmc = warren::MpmcQueue<uint64_t>;
using Spsc = warren::SpscQueue<uint64_t>;

// Pause briefly, then yield: the machine may have fewer cores than threads.
class Backoff {
 public:
  void Pause() {
    if (++spins_ <= 128) {
      warren::internal::CpuRelax();
    } else {
      std::this_thread::yield();
    }
  }
  void Reset() { spins_ = 0; }

 private:
  int spins_ = 0;
};

template <typename Q>
void BM_PushPop_SingleThread(benchmark::State& state) {
  Q q(kCapacity);
  uint64_t value = 0;
  for (auto _ : state) {
    bool pushed = q.try_push(value++);
    benchmark::DoNotOptimize(pushed);
    uint64_t out = 0;
    bool popped = q.try_pop(out);
    benchmark::DoNotOptimize(popped);
    benchmark::DoNotOptimize(out);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK_TEMPLATE(BM_PushPop_SingleThread, Mpmc);
BENCHMARK_TEMPLATE(BM_PushPop_SingleThread, Spsc);

template <typename Q>
void BM_Bulk_SingleThread(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  Q q(kCapacity);
  std::vector<uint64_t> in(n, 7), out(n);
  for (auto _ : state) {
    size_t pushed = q.try_push_bulk(in.begin(), n);
    benchmark::DoNotOptimize(pushed);
    size_t popped = q.try_pop_bulk(out.begin(), n);
    benchmark::DoNotOptimize(popped);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(n));
}
BENCHMARK_TEMPLATE(BM_Bulk_SingleThread, Mpmc)->Arg(8)->Arg(32);
BENCHMARK_TEMPLATE(BM_Bulk_SingleThread, Spsc)->Arg(8)->Arg(32);

// The ring shared by the threads of one cross-thread benchmark run.
template <typename Q>
Q* g_ring = nullptr;

// ->Threads(2k): even thread indexes push, odd ones pop, one item per
// iteration each.
template <typename Q>
void BM_CrossThread(benchmark::State& state) {
  if (state.thread_index() == 0) g_ring<Q> = new Q(kCapacity);
  const bool producer = state.thread_index() % 2 == 0;
  Backoff backoff;
  uint64_t value = 0;
  uint64_t sum = 0;
  for (auto _ : state) {
    Q& q = *g_ring<Q>;
    if (producer) {
      while (!q.try_push(value)) backoff.Pause();
      ++value;
    } else {
      uint64_t out = 0;
      while (!q.try_pop(out)) backoff.Pause();
      sum += out;
    }
    backoff.Reset();
  }
  benchmark::DoNotOptimize(sum);
  if (!producer) state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) {
    delete g_ring<Q>;
    g_ring<Q> = nullptr;
  }
}

void BM_Mpmc_1P1C(benchmark::State& state) { BM_CrossThread<Mpmc>(state); }
void BM_Spsc_1P1C(benchmark::State& state) { BM_CrossThread<Spsc>(state); }
void BM_Mpmc_NPNC(benchmark::State& state) { BM_CrossThread<Mpmc>(state); }
BENCHMARK(BM_Mpmc_1P1C)->Threads(2)->UseRealTime();
BENCHMARK(BM_Spsc_1P1C)->Threads(2)->UseRealTime();
BENCHMARK(BM_Mpmc_NPNC)->Threads(4)->Threads(8)->UseRealTime()->MinTime(0.2);

// 1P1C moving state.range(0) items per call.
void BM_Mpmc_1P1C_Bulk(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  if (state.thread_index() == 0) g_ring<Mpmc> = new Mpmc(kCapacity);
  const bool producer = state.thread_index() == 0;
  std::vector<uint64_t> buf(n, 1);
  Backoff backoff;
  for (auto _ : state) {
    Mpmc& q = *g_ring<Mpmc>;
    for (size_t done = 0; done < n;) {
      const size_t k = producer ? q.try_push_bulk(buf.begin(), n - done)
                                : q.try_pop_bulk(buf.begin(), n - done);
      if (k == 0) {
        backoff.Pause();
        continue;
      }
      backoff.Reset();
      done += k;
    }
    benchmark::DoNotOptimize(buf.data());
  }
  if (!producer) {
    state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(n));
  }
  if (state.thread_index() == 0) {
    delete g_ring<Mpmc>;
    g_ring<Mpmc> = nullptr;
  }
}
BENCHMARK(BM_Mpmc_1P1C_Bulk)->Arg(32)->Threads(2)->UseRealTime();

}  // namespace
