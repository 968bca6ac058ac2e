// Queue behaviour: order, requeue position, limits, priorities, statistics
// (SEMANTICS.md sections 4 and 8).

#include <atomic>
#include <catch2/catch.hpp>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"
#include "warren/warren.h"

namespace warren {
namespace {

using testing::Drain;
using testing::NewBroker;
using testing::Ready;
using testing::Send;

void PublishAll(Broker& b, const std::string& queue,
                const std::vector<std::string>& bodies) {
  for (const auto& body : bodies) REQUIRE(Send(b, "", queue, body).ok());
}

TEST_CASE("A queue delivers one publisher's messages in order") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  std::vector<std::string> bodies;
  for (int i = 0; i < 10'000; ++i) bodies.push_back(std::to_string(i));
  PublishAll(*b, "q",
             bodies);  // beyond the ring: the overflow list keeps order
  CHECK(Drain(*b, "q") == bodies);
}

TEST_CASE(
    "Statistics and browsing while one publisher and one consumer run never "
    "change that publisher's order") {
  // GetQueueStats and Browse read the rings' heads aside; a consumer popping
  // a ring at that moment must not overtake them.
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  constexpr int kCount = 50'000;
  std::atomic<bool> done{false};
  std::atomic<int> publish_errors{0};
  std::thread looker([&] {
    while (!done.load(std::memory_order_relaxed)) {
      (void)b->GetQueueStats("q");
      (void)b->Browse("q", 3);
    }
  });
  std::thread publisher([&] {
    for (int i = 0; i < kCount; ++i) {
      if (!Send(*b, "", "q", std::to_string(i)).ok()) ++publish_errors;
    }
  });
  auto c = b->Consume("q").value();
  int expected = 0;
  int out_of_order = 0;
  while (expected < kCount) {
    auto d = c->Receive(absl::Seconds(30));
    if (!d.ok()) break;
    if (d->body() != std::to_string(expected)) ++out_of_order;
    ++expected;
    REQUIRE(c->Ack(*d).ok());
  }
  done = true;
  publisher.join();
  looker.join();
  CHECK(publish_errors == 0);
  CHECK(expected == kCount);
  CHECK(out_of_order == 0);
}

TEST_CASE("Requeued messages return to their original position") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  PublishAll(*b, "q", {"m1", "m2", "m3", "m4", "m5"});
  auto c = b->Consume("q").value();
  auto d1 = c->TryReceive().value();
  auto d2 = c->TryReceive().value();
  auto d3 = c->TryReceive().value();
  // Put back in a scrambled order: the queue still reads m1..m5.
  REQUIRE(c->Nack(d2).ok());
  REQUIRE(c->Nack(d3).ok());
  REQUIRE(c->Reject(d1).ok());
  std::vector<std::string> got;
  std::vector<bool> redelivered;
  for (int i = 0; i < 5; ++i) {
    auto d = c->TryReceive().value();
    got.emplace_back(d.body());
    redelivered.push_back(d.redelivered());
    REQUIRE(c->Ack(d).ok());
  }
  CHECK(got == std::vector<std::string>{"m1", "m2", "m3", "m4", "m5"});
  CHECK(redelivered == std::vector<bool>{true, true, true, false, false});
}

TEST_CASE("Each delivery carries attempt and redelivered") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  REQUIRE(Send(*b, "", "q", "x").ok());
  auto c = b->Consume("q").value();
  for (uint32_t attempt = 1; attempt <= 3; ++attempt) {
    auto d = c->TryReceive().value();
    CHECK(d.attempt() == attempt);
    CHECK(d.redelivered() == (attempt > 1));
    CHECK(d.routing_key() == "q");
    CHECK(d.exchange() == "");
    REQUIRE(c->Nack(d, {.requeue = true}).ok());
  }
  auto stats = b->GetQueueStats("q").value();
  CHECK(stats.delivered == 3);
  CHECK(stats.redelivered == 2);
  CHECK(stats.nacked == 3);
  CHECK(stats.requeued == 3);
}

TEST_CASE(
    "Overflow reject-publish refuses the newest and tells the "
    "publisher; other queues still take it") {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("f", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareQueue("small", {.max_length = 2}).ok());
  REQUIRE(b->DeclareQueue("big").ok());
  REQUIRE(b->Bind("small", "f", "").ok());
  REQUIRE(b->Bind("big", "f", "").ok());
  for (const char* m : {"1", "2", "3"}) REQUIRE(Send(*b, "f", "", m).ok());
  auto out = Send(*b, "f", "", "4");
  REQUIRE(out.ok());
  CHECK(out->queues == 1);
  CHECK(out->refused_by == std::vector<std::string>{"small"});
  CHECK(Drain(*b, "small") == std::vector<std::string>{"1", "2"});
  CHECK(Drain(*b, "big").size() == 4);
  CHECK(b->GetQueueStats("small")->refused == 2);
}

TEST_CASE("Overflow reject-publish on the only queue is ResourceExhausted") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q", {.max_length = 1}).ok());
  REQUIRE(Send(*b, "", "q", "1").ok());
  auto out = Send(*b, "", "q", "2");
  CHECK(absl::IsResourceExhausted(out.status()));
  CHECK(Drain(*b, "q") == std::vector<std::string>{"1"});
}

TEST_CASE("Overflow drop-head drops the oldest ready message") {
  auto b = NewBroker();
  REQUIRE(
      b->DeclareQueue("q", {.max_length = 3, .overflow = Overflow::kDropHead})
          .ok());
  PublishAll(*b, "q", {"1", "2", "3", "4", "5"});
  CHECK(Drain(*b, "q") == std::vector<std::string>{"3", "4", "5"});
  CHECK(b->GetQueueStats("q")->dropped == 2);
}

TEST_CASE(
    "Overflow drop-head never refuses concurrent publishers, by count or by "
    "bytes") {
  // A publisher that finds the queue full while another has reserved the
  // last room but not yet pushed its message has nothing to drop yet; it
  // waits for it instead of refusing.
  const bool by_bytes = GENERATE(false, true);
  CAPTURE(by_bytes);
  auto b = NewBroker();
  QueueOptions options{.overflow = Overflow::kDropHead};
  if (by_bytes) {
    options.max_length_bytes = 1;
  } else {
    options.max_length = 1;
  }
  REQUIRE(b->DeclareQueue("q", options).ok());
  constexpr int kThreads = 4;
  constexpr int kEach = 20000;
  std::atomic<int> refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kEach; ++i) {
        auto r = Send(*b, "", "q", "x");
        if (!r.ok() || r->queues != 1) refused.fetch_add(1);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  CHECK(refused.load() == 0);
  const QueueStats s = b->GetQueueStats("q").value();
  CHECK(s.refused == 0);
  CHECK(s.published == kThreads * kEach);
  CHECK(s.dropped == kThreads * kEach - 1);
  CHECK(s.ready == 1);
}

TEST_CASE("Unacked messages do not count against max_length") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q", {.max_length = 1}).ok());
  REQUIRE(Send(*b, "", "q", "1").ok());
  auto c = b->Consume("q").value();
  auto d = c->TryReceive().value();
  REQUIRE(Send(*b, "", "q", "2").ok());  // "1" is unacked: room for "2"
  CHECK(Ready(*b, "q") == 1);
  // A returned message counts again (and is never refused).
  REQUIRE(c->Nack(d).ok());
  CHECK(Ready(*b, "q") == 2);
}

TEST_CASE("max_length_bytes limits the body bytes of ready messages") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q", {.max_length_bytes = 10}).ok());
  REQUIRE(Send(*b, "", "q", "12345").ok());
  REQUIRE(Send(*b, "", "q", "12345").ok());
  CHECK(absl::IsResourceExhausted(Send(*b, "", "q", "1").status()));
  CHECK(b->GetQueueStats("q")->ready_bytes == 10);
  REQUIRE(b->DeclareQueue(
               "dh", {.max_length_bytes = 10, .overflow = Overflow::kDropHead})
              .ok());
  PublishAll(*b, "dh", {"aaaa", "bbbb", "cccc"});
  CHECK(Drain(*b, "dh") == std::vector<std::string>{"bbbb", "cccc"});
  // A message larger than the whole limit is refused even with drop-head.
  CHECK(absl::IsResourceExhausted(
      Send(*b, "", "dh", std::string(11, 'x')).status()));
}

TEST_CASE("Priority queues deliver higher priorities first, FIFO within one") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("p", {.max_priority = 5}).ok());
  auto send = [&](std::string body, std::optional<uint8_t> priority) {
    Message m(std::move(body));
    m.properties().priority = priority;
    REQUIRE(b->Publish("", "p", std::move(m)).ok());
  };
  send("none-1", std::nullopt);
  send("low-1", 1);
  send("high-1", 5);
  send("over-max", 200);  // counts as 5
  send("low-2", 1);
  send("zero", 0);
  send("high-2", 5);
  CHECK(Drain(*b, "p") == std::vector<std::string>{"high-1", "over-max",
                                                   "high-2", "low-1", "low-2",
                                                   "none-1", "zero"});
}

TEST_CASE(
    "A requeued message in a priority queue returns ahead of its "
    "priority") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("p", {.max_priority = 3}).ok());
  for (auto [body, prio] : std::vector<std::pair<std::string, uint8_t>>{
           {"a", 2}, {"b", 2}, {"c", 3}}) {
    Message m(body);
    m.properties().priority = prio;
    REQUIRE(b->Publish("", "p", std::move(m)).ok());
  }
  auto c = b->Consume("p").value();
  auto dc = c->TryReceive().value();
  auto da = c->TryReceive().value();
  CHECK(dc.body() == "c");
  CHECK(da.body() == "a");
  REQUIRE(c->Nack(da).ok());
  REQUIRE(c->Nack(dc).ok());
  std::vector<std::string> got;
  for (auto d = c->TryReceive(); d.ok(); d = c->TryReceive()) {
    got.emplace_back(d->body());
    REQUIRE(c->Ack(*d).ok());
  }
  CHECK(got == std::vector<std::string>{"c", "a", "b"});
}

TEST_CASE("Purge removes ready messages but not unacked ones") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  PublishAll(*b, "q", {"1", "2", "3"});
  auto c = b->Consume("q").value();
  auto d = c->TryReceive().value();
  CHECK(b->PurgeQueue("q").value() == 2);
  auto stats = b->GetQueueStats("q").value();
  CHECK(stats.ready == 0);
  CHECK(stats.unacked == 1);
  CHECK(stats.purged == 2);
  REQUIRE(c->Ack(d).ok());
}

TEST_CASE("Statistics count what happened to each message") {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("x", ExchangeType::kDirect).ok());
  REQUIRE(b->DeclareQueue("q").ok());
  REQUIRE(b->Bind("q", "x", "k").ok());
  for (int i = 0; i < 4; ++i) REQUIRE(Send(*b, "x", "k", "m").ok());
  REQUIRE(Send(*b, "x", "other", "m").ok());
  auto c = b->Consume("q", {.tag = "worker"}).value();
  auto d1 = c->TryReceive().value();
  auto d2 = c->TryReceive().value();
  auto d3 = c->TryReceive().value();
  REQUIRE(c->Ack(d1).ok());
  REQUIRE(c->Nack(d2, {.requeue = false}).ok());
  REQUIRE(c->Reject(d3, {.requeue = false}).ok());

  auto q = b->GetQueueStats("q").value();
  CHECK(q.name == "q");
  CHECK(q.published == 4);
  CHECK(q.ready == 1);
  CHECK(q.unacked == 0);
  CHECK(q.consumers == 1);
  CHECK(q.delivered == 3);
  CHECK(q.acked == 1);
  CHECK(q.nacked == 1);
  CHECK(q.rejected == 1);
  CHECK(q.dropped == 2);
  auto x = b->GetExchangeStats("x").value();
  CHECK(x.published == 5);
  CHECK(x.routed == 4);
  CHECK(x.unroutable == 1);

  auto all = b->Stats();
  REQUIRE(all.queues.size() == 1);
  CHECK(all.queues[0].name == "q");
  REQUIRE(all.exchanges.size() == 2);
  CHECK(all.exchanges[0].name == "");  // the default exchange, sorted first
  CHECK(all.exchanges[1].name == "x");
}

}  // namespace
}  // namespace warren

namespace warren {
namespace {

TEST_CASE("PublishBatch publishes in order with one outcome per message") {
  auto b = testing::NewBroker();
  REQUIRE(b->DeclareQueue("q", {.max_length = 2}).ok());
  std::vector<OutgoingMessage> batch;
  for (const char* key : {"q", "nowhere", "q", "q"}) {
    batch.push_back({key, Message(std::string("to-") + key)});
  }
  auto outcomes = b->PublishBatch("", std::move(batch));
  REQUIRE(outcomes.ok());
  REQUIRE(outcomes->size() == 4);
  CHECK((*outcomes)[0]->queues == 1);
  CHECK((*outcomes)[1]->queues == 0);  // unroutable
  CHECK((*outcomes)[2]->queues == 1);
  CHECK(absl::IsResourceExhausted((*outcomes)[3].status()));  // full
  CHECK(testing::Drain(*b, "q") == std::vector<std::string>{"to-q", "to-q"});
}

TEST_CASE(
    "PublishBatch validates everything first and publishes nothing on "
    "bad input") {
  auto b = testing::NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  std::vector<OutgoingMessage> batch;
  batch.push_back({"q", Message("fine")});
  batch.push_back({std::string(256, 'k'), Message("bad key")});
  CHECK(
      absl::IsInvalidArgument(b->PublishBatch("", std::move(batch)).status()));
  CHECK(testing::Ready(*b, "q") == 0);
  std::vector<OutgoingMessage> more;
  more.push_back({"q", Message("x")});
  CHECK(absl::IsNotFound(b->PublishBatch("nope", std::move(more)).status()));
  CHECK(testing::Ready(*b, "q") == 0);
}

}  // namespace
}  // namespace warren
