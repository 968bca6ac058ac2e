// Many producers and consumers at once: every message is delivered and acked
// exactly once, and one publisher's messages stay in order. The small
// variants run in the fast suite; the [stress] variants run in CI under the
// sanitizers.

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "test_util.h"
#include "warren/warren.h"

namespace warren {
namespace {

using testing::NewBroker;
using testing::Ready;

struct Load {
  int producers;
  int consumers;
  int per_producer;
  uint32_t prefetch;
  uint32_t ring_capacity;  // small rings exercise the overflow list
};

uint64_t IdOf(const Delivery& d) {
  uint64_t id = 0;
  const std::string_view body = d.body();
  (void)absl::SimpleAtoi(std::string(body), &id);
  return id;
}

// Producers publish ids; consumers ack most, requeue some (nack, reject or
// by closing themselves and starting again) and settle with `multiple`
// sometimes. Checks that each id is acked exactly once.
void RunExactlyOnce(const Load& load) {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("x", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareQueue("q", {.ring_capacity = load.ring_capacity}).ok());
  REQUIRE(b->Bind("q", "x", "").ok());
  const uint64_t total =
      static_cast<uint64_t>(load.producers) * load.per_producer;
  std::vector<std::atomic<int>> acks(total);
  std::atomic<uint64_t> acked_total{0};
  std::atomic<int> publish_errors{0};
  std::atomic<int> settle_errors{0};

  std::vector<std::thread> threads;
  for (int p = 0; p < load.producers; ++p) {
    threads.emplace_back([&, p] {
      for (int i = 0; i < load.per_producer; ++i) {
        const uint64_t id = static_cast<uint64_t>(p) * load.per_producer + i;
        auto out = b->Publish("x", "", Message(std::to_string(id)));
        if (!out.ok() || out->queues != 1) ++publish_errors;
      }
    });
  }
  for (int c = 0; c < load.consumers; ++c) {
    threads.emplace_back([&, c] {
      std::mt19937 rng(c + 1);
      std::uniform_int_distribution<int> pct(0, 99);
      auto consumer = b->Consume("q", {.prefetch = load.prefetch}).value();
      std::vector<Delivery> batch;  // held, to be acked with `multiple`
      auto flush = [&] {
        if (batch.empty()) return;
        if (!consumer->Ack(batch.back(), {.multiple = true}).ok()) {
          ++settle_errors;
        }
        for (const Delivery& k : batch) {
          acks[IdOf(k)].fetch_add(1);
          acked_total.fetch_add(1);
        }
        batch.clear();
      };
      while (acked_total.load() < total) {
        if (batch.size() >= 8) flush();
        auto d = consumer->Receive(absl::Milliseconds(20));
        if (!d.ok()) {
          flush();  // window full, or nothing left: settle what is held
          continue;
        }
        const int roll = pct(rng);
        absl::Status s;
        if (roll < 4) {
          s = consumer->Nack(*d, {.requeue = true});
        } else if (roll < 6) {
          s = consumer->Reject(*d, {.requeue = true});
        } else if (roll < 7) {
          // Abandon everything held: closing requeues it.
          batch.clear();
          consumer = b->Consume("q", {.prefetch = load.prefetch}).value();
          continue;
        } else if (roll < 20) {
          batch.push_back(*d);  // acked later with multiple
          continue;
        } else {
          s = consumer->Ack(*d);
          if (s.ok()) {
            acks[IdOf(*d)].fetch_add(1);
            acked_total.fetch_add(1);
          }
        }
        if (!s.ok()) ++settle_errors;
      }
      consumer->Close();
    });
  }
  for (auto& t : threads) t.join();

  CHECK(publish_errors.load() == 0);
  CHECK(settle_errors.load() == 0);
  uint64_t wrong = 0;
  for (auto& a : acks) wrong += a.load() != 1;
  CHECK(wrong == 0);
  auto stats = b->GetQueueStats("q").value();
  CHECK(stats.ready == 0);
  CHECK(stats.unacked == 0);
  CHECK(stats.acked == total);
  CHECK(stats.published == total);
}

// Several producers, one consumer: each producer's messages arrive in the
// order it published them.
void RunPerPublisherOrder(int producers, int per_producer) {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q", {.ring_capacity = 64}).ok());
  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] {
      for (int i = 0; i < per_producer; ++i) {
        (void)b->Publish("", "q",
                         Message(std::to_string(p * per_producer + i)));
      }
    });
  }
  std::vector<int> last(producers, -1);
  int out_of_order = 0;
  auto c = b->Consume("q").value();
  for (int n = 0; n < producers * per_producer; ++n) {
    auto d = c->Receive(absl::Seconds(60));
    if (!d.ok()) break;
    const uint64_t id = IdOf(*d);
    const int p = static_cast<int>(id / per_producer);
    const int i = static_cast<int>(id % per_producer);
    if (i <= last[p]) ++out_of_order;
    last[p] = i;
    (void)c->Ack(*d);
  }
  for (auto& t : threads) t.join();
  CHECK(out_of_order == 0);
  for (int p = 0; p < producers; ++p) CHECK(last[p] == per_producer - 1);
}

// Two publishers send every id once each into a small deduplicating queue
// that refuses what does not fit, while a consumer drains it. A publish told
// its message is a duplicate must have a twin that the queue took: an id is
// recorded only by a message the queue takes, never by one it then refuses.
void RunDedupAgainstRefusals(Overflow overflow, int rounds, int ids) {
  for (int round = 0; round < rounds; ++round) {
    auto b = NewBroker();
    REQUIRE(b->DeclareQueue("q", {.max_length = 2,
                                  .overflow = overflow,
                                  .dedup_window = absl::Hours(1)})
                .ok());
    enum Outcome : int { kTaken, kDuplicate, kRefused, kError };
    std::vector<std::atomic<int>> outcomes[2] = {
        std::vector<std::atomic<int>>(ids), std::vector<std::atomic<int>>(ids)};
    std::vector<std::atomic<int>> delivered(ids);
    std::atomic<int> publishing{2};
    std::atomic<int> failed_acks{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 2; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < ids; ++i) {
          Message m(std::to_string(i));
          m.properties().message_id = "id-" + std::to_string(i);
          auto o = b->Publish("", "q", std::move(m));
          int r = kError;
          if (!o.ok()) {
            if (absl::IsResourceExhausted(o.status())) r = kRefused;
          } else if (o->duplicates == 1) {
            r = kDuplicate;
          } else if (o->queues == 1) {
            r = kTaken;
          } else if (!o->refused_by.empty()) {
            r = kRefused;
          }
          outcomes[t][i] = r;
        }
        publishing.fetch_sub(1);
      });
    }
    threads.emplace_back([&] {
      auto c = b->Consume("q").value();
      for (;;) {
        auto d = c->Receive(absl::Milliseconds(20));
        if (!d.ok()) {
          if (publishing.load() == 0 && Ready(*b, "q") == 0) break;
          continue;
        }
        delivered[IdOf(*d)].fetch_add(1);
        if (!c->Ack(*d).ok()) failed_acks.fetch_add(1);
      }
    });
    for (std::thread& t : threads) t.join();
    REQUIRE(failed_acks == 0);
    for (int i = 0; i < ids; ++i) {
      const int a = outcomes[0][i];
      const int c = outcomes[1][i];
      CAPTURE(round, i, a, c);
      REQUIRE(a != kError);
      REQUIRE(c != kError);
      const bool taken = a == kTaken || c == kTaken;
      if (a == kDuplicate || c == kDuplicate) REQUIRE(taken);
      REQUIRE(delivered[i] == (taken ? 1 : 0));
    }
  }
}

TEST_CASE(
    "A publish refused by a full deduplicating queue never makes its twin "
    "a duplicate") {
  RunDedupAgainstRefusals(
      GENERATE(Overflow::kRejectPublish, Overflow::kRejectPublishDlx), 4, 2000);
}

TEST_CASE(
    "Stress: a publish refused by a full deduplicating queue never makes "
    "its twin a duplicate",
    "[stress]") {
  RunDedupAgainstRefusals(
      GENERATE(Overflow::kRejectPublish, Overflow::kRejectPublishDlx), 20,
      4000);
}

// A queue with both length limits holds one message of 60 of its 100 bytes.
// One thread keeps publishing 50-byte messages, which fit the count limit
// but never the byte limit; meanwhile a 10-byte message, which fits both,
// must be taken every time. A refused publish must not, while it is being
// refused, take up room that another one needs.
void RunFittingAgainstOversized(int rounds) {
  auto b = NewBroker();
  REQUIRE(
      b->DeclareQueue(
           "q", {.max_length = 2, .max_length_bytes = 100, .max_priority = 1})
          .ok());
  REQUIRE(b->Publish("", "q", Message(std::string(60, 'p')))->queues == 1);
  std::atomic<bool> done{false};
  std::atomic<int> oversized_not_refused{0};
  std::atomic<int> oversized_refused{0};
  std::thread oversized([&] {
    while (!done.load()) {
      auto o = b->Publish("", "q", Message(std::string(50, 'o')));
      const bool refused = o.ok() ? o->queues == 0 && o->refused_by.size() == 1
                                  : absl::IsResourceExhausted(o.status());
      if (refused) {
        oversized_refused.fetch_add(1);
      } else {
        oversized_not_refused.fetch_add(1);
      }
    }
  });
  auto c = b->Consume("q").value();
  int fitting_refused = 0;
  int wrong_delivery = 0;
  for (int i = 0; i < rounds; ++i) {
    Message m(std::string(10, 'f'));
    m.properties().priority = 1;
    auto o = b->Publish("", "q", std::move(m));
    if (!o.ok() || o->queues != 1) {
      ++fitting_refused;
      continue;
    }
    auto d = c->Receive(absl::Seconds(30));
    if (!d.ok() || d->body().size() != 10 || !c->Ack(*d).ok()) {
      ++wrong_delivery;
    }
  }
  done.store(true);
  oversized.join();
  CHECK(fitting_refused == 0);
  CHECK(wrong_delivery == 0);
  CHECK(oversized_not_refused == 0);
  CHECK(oversized_refused > 0);
  CHECK(Ready(*b, "q") == 1);
}

TEST_CASE(
    "A publish refused by the byte limit never crowds out one that fits "
    "both limits") {
  RunFittingAgainstOversized(20000);
}

TEST_CASE(
    "Stress: a publish refused by the byte limit never crowds out one that "
    "fits both limits",
    "[stress]") {
  RunFittingAgainstOversized(200000);
}

TEST_CASE(
    "Concurrent producers and consumers ack every message exactly "
    "once") {
  RunExactlyOnce({.producers = 2,
                  .consumers = 2,
                  .per_producer = 2000,
                  .prefetch = 8,
                  .ring_capacity = 64});
}

TEST_CASE("Concurrent producers keep their own order through one queue") {
  RunPerPublisherOrder(3, 2000);
}

TEST_CASE(
    "Stress: many producers and consumers ack every message exactly "
    "once",
    "[stress]") {
  RunExactlyOnce({.producers = 4,
                  .consumers = 4,
                  .per_producer = 25'000,
                  .prefetch = 16,
                  .ring_capacity = 256});
  RunExactlyOnce({.producers = 6,
                  .consumers = 3,
                  .per_producer = 10'000,
                  .prefetch = 0,
                  .ring_capacity = 64});
}

TEST_CASE("Stress: per-publisher order holds under load", "[stress]") {
  RunPerPublisherOrder(6, 20'000);
}

TEST_CASE(
    "Stress: subscriptions settle every message exactly once while "
    "publishers run",
    "[stress]") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  constexpr int kProducers = 4;
  constexpr int kPerProducer = 20'000;
  constexpr uint64_t kTotal = uint64_t{kProducers} * kPerProducer;
  std::vector<std::atomic<int>> acks(kTotal);
  std::atomic<uint64_t> done{0};
  auto handler = [&](const Delivery& d) {
    const uint64_t id = IdOf(d);
    if (id % 10 == 0 && d.attempt() == 1) return HandlerResult::kRequeue;
    acks[id].fetch_add(1);
    done.fetch_add(1);
    return HandlerResult::kAck;
  };
  auto s1 = b->Subscribe("q", handler, {.workers = 3, .prefetch = 8}).value();
  auto s2 = b->Subscribe("q", handler, {.workers = 2}).value();
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      for (int i = 0; i < kPerProducer; ++i) {
        (void)b->Publish("", "q",
                         Message(std::to_string(p * kPerProducer + i)));
      }
    });
  }
  for (auto& t : producers) t.join();
  // Stop one subscription half-way through; the other finishes the work.
  REQUIRE(s1->Stop(absl::Seconds(60)).ok());
  auto c = b->Consume("q").value();
  while (done.load() < kTotal) {
    auto d = c->Receive(absl::Seconds(60));
    if (!d.ok()) break;
    const uint64_t id = IdOf(*d);
    acks[id].fetch_add(1);
    done.fetch_add(1);
    REQUIRE(c->Ack(*d).ok());
  }
  REQUIRE(s2->Stop(absl::Seconds(60)).ok());
  uint64_t wrong = 0;
  for (auto& a : acks) wrong += a.load() != 1;
  CHECK(wrong == 0);
  auto stats = b->GetQueueStats("q").value();
  CHECK(stats.ready == 0);
  CHECK(stats.unacked == 0);
  CHECK(stats.acked == kTotal);
}

}  // namespace
}  // namespace warren
