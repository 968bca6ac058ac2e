// -----------------------------------------------------------------------------
// File: benchmarks/broker_benchmark.cc
// -----------------------------------------------------------------------------
//
// Google Benchmark micro-benchmarks of the broker, 64-byte bodies, in memory:
//
//   BM_Publish                    Publish to the default exchange (one queue)
//   BM_PublishReceiveAck          Publish + TryReceive + Ack on one thread
//   BM_PublishReceiveAck_Batch/n  n Publishes + ReceiveBatch(n) + one
//                                 Ack(multiple), per message
//   BM_PublishReceiveAck_1P1C     a publishing thread and a Receive + Ack
//                                 thread (->Threads(2)), at most 1,024
//                                 messages in flight
//   BM_PublishFanout/q            Publish to a fanout exchange bound to q
//                                 queues
//   BM_PublishTopic/b             Publish to a topic exchange with b bindings
//                                 (10% `*`, 1% `#`; see topic_workload.h) over
//                                 100 queues
//   BM_TopicTrieMatch/b           routing only: TopicTrie::Match
//   BM_TopicLinearScan/b          routing only: TopicPatternMatches over
//                                 every pattern (the baseline)
//
// Benchmarks that only publish purge their queues every 1,000 iterations
// (outside the timed region) so that the rings never fill.

#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "fmt/core.h"
#include "topic_trie.h"
#include "topic_workload.h"
#include "warren/broker.h"

namespace {

const std::string& Body() {
  static const std::string body(64, 'x');
  return body;
}

warren::ConsumeOptions Prefetch(uint32_t prefetch) {
  warren::ConsumeOptions options;
  options.prefetch = prefetch;
  return options;
}

constexpr int64_t kPurgeEvery = 1000;

// Purges `names` outside the timed region every kPurgeEvery iterations.
void MaybePurge(benchmark::State& state, warren::Broker& broker,
                const std::vector<std::string>& names, int64_t& count) {
  if (++count < kPurgeEvery) return;
  count = 0;
  state.PauseTiming();
  for (const std::string& name : names) broker.PurgeQueue(name).IgnoreError();
  state.ResumeTiming();
}

void BM_Publish(benchmark::State& state) {
  auto broker = warren::Broker::Open({}).value();
  broker->DeclareQueue("q").IgnoreError();
  const std::vector<std::string> names = {"q"};
  int64_t count = 0;
  for (auto _ : state) {
    auto outcome = broker->Publish("", "q", warren::Message(Body()));
    benchmark::DoNotOptimize(outcome);
    MaybePurge(state, *broker, names, count);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Publish);

void BM_PublishReceiveAck(benchmark::State& state) {
  auto broker = warren::Broker::Open({}).value();
  broker->DeclareQueue("q").IgnoreError();
  auto consumer = broker->Consume("q", Prefetch(256)).value();
  for (auto _ : state) {
    auto outcome = broker->Publish("", "q", warren::Message(Body()));
    benchmark::DoNotOptimize(outcome);
    auto d = consumer->TryReceive();
    if (!d.ok()) {
      state.SkipWithError("TryReceive found no message");
      break;
    }
    consumer->Ack(*d).IgnoreError();
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PublishReceiveAck);

void BM_PublishReceiveAck_Batch(benchmark::State& state) {
  const size_t n = static_cast<size_t>(state.range(0));
  auto broker = warren::Broker::Open({}).value();
  broker->DeclareQueue("q").IgnoreError();
  auto consumer = broker->Consume("q", Prefetch(256)).value();
  for (auto _ : state) {
    for (size_t i = 0; i < n; ++i) {
      auto outcome = broker->Publish("", "q", warren::Message(Body()));
      benchmark::DoNotOptimize(outcome);
    }
    auto batch = consumer->ReceiveBatch(n, absl::ZeroDuration());
    if (!batch.ok() || batch->size() != n) {
      state.SkipWithError("ReceiveBatch returned too few messages");
      break;
    }
    consumer->Ack(batch->back(), {.multiple = true}).IgnoreError();
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(n));
}
BENCHMARK(BM_PublishReceiveAck_Batch)->Arg(16)->Arg(64)->Arg(256);

// Shared by the two threads of one BM_PublishReceiveAck_1P1C run.
struct CrossThread {
  std::unique_ptr<warren::Broker> broker;
  std::unique_ptr<warren::Consumer> consumer;
  std::atomic<uint64_t> acked{0};
};
CrossThread* g_cross = nullptr;

void BM_PublishReceiveAck_1P1C(benchmark::State& state) {
  constexpr uint64_t kWindow = 1024;
  if (state.thread_index() == 0) {
    g_cross = new CrossThread;
    g_cross->broker = warren::Broker::Open({}).value();
    g_cross->broker->DeclareQueue("q").IgnoreError();
    g_cross->consumer = g_cross->broker->Consume("q", Prefetch(256)).value();
  }
  const bool producer = state.thread_index() == 0;
  uint64_t count = 0;
  for (auto _ : state) {
    CrossThread& x = *g_cross;
    if (producer) {
      while (count - x.acked.load(std::memory_order_acquire) >= kWindow) {
        std::this_thread::yield();
      }
      auto outcome = x.broker->Publish("", "q", warren::Message(Body()));
      benchmark::DoNotOptimize(outcome);
    } else {
      auto d = x.consumer->Receive(absl::Seconds(10));
      if (!d.ok()) {
        state.SkipWithError("Receive failed");
        break;
      }
      x.consumer->Ack(*d).IgnoreError();
      x.acked.store(count + 1, std::memory_order_release);
    }
    ++count;
  }
  if (!producer) state.SetItemsProcessed(state.iterations());
  if (state.thread_index() == 0) {
    delete g_cross;
    g_cross = nullptr;
  }
}
BENCHMARK(BM_PublishReceiveAck_1P1C)->Threads(2)->UseRealTime();

void BM_PublishFanout(benchmark::State& state) {
  const int queues = static_cast<int>(state.range(0));
  auto broker = warren::Broker::Open({}).value();
  broker->DeclareExchange("fan", warren::ExchangeType::kFanout).IgnoreError();
  std::vector<std::string> names;
  for (int i = 0; i < queues; ++i) {
    names.push_back(fmt::format("f{}", i));
    broker->DeclareQueue(names.back()).IgnoreError();
    broker->Bind(names.back(), "fan", "").IgnoreError();
  }
  int64_t count = 0;
  for (auto _ : state) {
    auto outcome = broker->Publish("fan", "", warren::Message(Body()));
    benchmark::DoNotOptimize(outcome);
    MaybePurge(state, *broker, names, count);
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["queues"] = queues;
}
BENCHMARK(BM_PublishFanout)->Arg(1)->Arg(10)->Arg(100);

// A topic workload, built once per size and shared by the benchmarks.
const warren_bench::TopicWorkload& Workload(size_t bindings) {
  static std::map<size_t, warren_bench::TopicWorkload> cache;
  auto it = cache.find(bindings);
  if (it == cache.end()) {
    it =
        cache.emplace(bindings, warren_bench::MakeTopicWorkload(bindings, 4096))
            .first;
  }
  return it->second;
}

void BM_PublishTopic(benchmark::State& state) {
  const warren_bench::TopicWorkload& w =
      Workload(static_cast<size_t>(state.range(0)));
  auto broker = warren::Broker::Open({}).value();
  broker->DeclareExchange("topic", warren::ExchangeType::kTopic).IgnoreError();
  const size_t queues = std::min<size_t>(w.patterns.size(), 100);
  std::vector<std::string> names;
  for (size_t q = 0; q < queues; ++q) {
    names.push_back(fmt::format("t{}", q));
    broker->DeclareQueue(names.back()).IgnoreError();
  }
  for (size_t i = 0; i < w.patterns.size(); ++i) {
    broker->Bind(names[i % queues], "topic", w.patterns[i]).IgnoreError();
  }
  size_t k = 0;
  int64_t count = 0;
  for (auto _ : state) {
    auto outcome = broker->Publish("topic", w.keys[k], warren::Message(Body()));
    benchmark::DoNotOptimize(outcome);
    if (++k == w.keys.size()) k = 0;
    MaybePurge(state, *broker, names, count);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PublishTopic)->Arg(10)->Arg(2000)->Arg(8000);

void BM_TopicTrieMatch(benchmark::State& state) {
  const warren_bench::TopicWorkload& w =
      Workload(static_cast<size_t>(state.range(0)));
  warren::internal::TopicTrie<uint32_t> trie;
  for (size_t i = 0; i < w.patterns.size(); ++i) {
    trie.Add(w.patterns[i], static_cast<uint32_t>(i));
  }
  size_t k = 0;
  uint64_t matches = 0;
  for (auto _ : state) {
    trie.Match(w.keys[k], [&](const uint32_t&) { ++matches; });
    if (++k == w.keys.size()) k = 0;
  }
  benchmark::DoNotOptimize(matches);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_TopicTrieMatch)->Arg(10)->Arg(2000)->Arg(8000)->Arg(100000);

void BM_TopicLinearScan(benchmark::State& state) {
  const warren_bench::TopicWorkload& w =
      Workload(static_cast<size_t>(state.range(0)));
  size_t k = 0;
  uint64_t matches = 0;
  for (auto _ : state) {
    for (const std::string& p : w.patterns) {
      matches += warren::internal::TopicPatternMatches(p, w.keys[k]);
    }
    if (++k == w.keys.size()) k = 0;
  }
  benchmark::DoNotOptimize(matches);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_TopicLinearScan)->Arg(10)->Arg(2000)->Arg(8000);

}  // namespace
