// Dead-lettering and death history (SEMANTICS.md section 5).

#include "warren/dead_letter.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "test_util.h"
#include "warren/warren.h"

namespace warren {
namespace {

using testing::Drain;
using testing::NewBroker;
using testing::Ready;
using testing::Send;

// A broker with queue "work" dead-lettering to fanout "dlx", bound to "dead".
std::unique_ptr<Broker> WithDlq(QueueOptions work_options = {}) {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("dlx", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareQueue("dead").ok());
  REQUIRE(b->Bind("dead", "dlx", "").ok());
  work_options.dead_letter_exchange = "dlx";
  REQUIRE(b->DeclareQueue("work", work_options).ok());
  REQUIRE(b->DeclareExchange("jobs", ExchangeType::kDirect).ok());
  REQUIRE(b->Bind("work", "jobs", "job.email").ok());
  return b;
}

Delivery TakeOne(Broker& b, std::string_view queue,
                 std::unique_ptr<Consumer>& holder) {
  holder = b.Consume(queue).value();
  auto d = holder->TryReceive();
  REQUIRE(d.ok());
  return *d;
}

TEST_CASE(
    "Nack and reject without requeue dead-letter with reason "
    "rejected and a death history") {
  auto b = WithDlq();
  REQUIRE(Send(*b, "jobs", "job.email", "a").ok());
  REQUIRE(Send(*b, "jobs", "job.email", "b").ok());
  auto c = b->Consume("work").value();
  REQUIRE(c->Reject(c->TryReceive().value(), {.requeue = false}).ok());
  REQUIRE(c->Nack(c->TryReceive().value(), {.requeue = false}).ok());

  auto work = b->GetQueueStats("work").value();
  CHECK(work.dead_lettered == 2);
  CHECK(work.dropped == 0);

  std::unique_ptr<Consumer> dc;
  Delivery d = TakeOne(*b, "dead", dc);
  CHECK(d.body() == "a");
  CHECK(d.exchange() == "dlx");
  CHECK(d.routing_key() == "job.email");
  const auto history = DeathHistory(d.message());
  REQUIRE(history.size() == 1);
  CHECK(history[0].queue == "work");
  CHECK(history[0].reason == DeathReason::kRejected);
  CHECK(history[0].count == 1);
  CHECK(history[0].exchange == "jobs");
  CHECK(history[0].routing_keys == std::vector<std::string>{"job.email"});
  CHECK_FALSE(history[0].original_expiration.has_value());
  CHECK(FirstDeath(d.message()) ==
        DeathSite{"work", DeathReason::kRejected, "jobs"});
  CHECK(LastDeath(d.message()) ==
        DeathSite{"work", DeathReason::kRejected, "jobs"});
  // The same history as RabbitMQ-style headers.
  const auto& x_death = d.headers().at("x-death");
  REQUIRE(x_death.as_list() != nullptr);
  const Headers& entry = *x_death.as_list()->at(0).as_table();
  CHECK(*entry.at("reason").as_string() == "rejected");
  CHECK(*entry.at("queue").as_string() == "work");
  CHECK(*entry.at("count").as_int() == 1);
  CHECK(*d.headers().at("x-first-death-queue").as_string() == "work");
}

TEST_CASE(
    "Dying again in the same queue for the same reason increments the "
    "count and moves the entry to the front") {
  // a <-> b dead-letter to each other through the default exchange; each
  // death is a rejection, so the cycle is allowed.
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("a", {.dead_letter_exchange = "",
                                .dead_letter_routing_key = "b"})
              .ok());
  REQUIRE(b->DeclareQueue("b", {.dead_letter_exchange = "",
                                .dead_letter_routing_key = "a"})
              .ok());
  REQUIRE(Send(*b, "", "a", "m").ok());
  for (const char* q : {"a", "b", "a"}) {
    auto c = b->Consume(q).value();
    REQUIRE(c->Reject(c->TryReceive().value(), {.requeue = false}).ok());
  }
  std::unique_ptr<Consumer> c;
  Delivery d = TakeOne(*b, "b", c);
  const auto history = DeathHistory(d.message());
  REQUIRE(history.size() == 2);
  CHECK(history[0].queue == "a");
  CHECK(history[0].count == 2);
  CHECK(history[1].queue == "b");
  CHECK(history[1].count == 1);
  CHECK(FirstDeath(d.message())->queue == "a");
  CHECK(LastDeath(d.message())->queue == "a");
  // The entry keeps the exchange and key of the first death there.
  CHECK(history[0].exchange == "");
  CHECK(history[0].routing_keys == std::vector<std::string>{"a"});
}

TEST_CASE("A dead-letter routing key replaces the message's routing key") {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("dlx", ExchangeType::kDirect).ok());
  REQUIRE(b->DeclareQueue("parking").ok());
  REQUIRE(b->Bind("parking", "dlx", "parked").ok());
  REQUIRE(b->DeclareQueue("work", {.dead_letter_exchange = "dlx",
                                   .dead_letter_routing_key = "parked"})
              .ok());
  REQUIRE(Send(*b, "", "work", "x").ok());
  auto c = b->Consume("work").value();
  REQUIRE(c->Nack(c->TryReceive().value(), {.requeue = false}).ok());
  std::unique_ptr<Consumer> pc;
  Delivery d = TakeOne(*b, "parking", pc);
  CHECK(d.routing_key() == "parked");
  CHECK(DeathHistory(d.message())[0].routing_keys ==
        std::vector<std::string>{"work"});
}

TEST_CASE("Dead-lettering removes the expiration and records it") {
  auto b = WithDlq();
  Message m("x");
  m.properties().expiration = absl::Seconds(5);
  REQUIRE(b->Publish("jobs", "job.email", std::move(m)).ok());
  auto c = b->Consume("work").value();
  REQUIRE(c->Reject(c->TryReceive().value(), {.requeue = false}).ok());
  std::unique_ptr<Consumer> dc;
  Delivery d = TakeOne(*b, "dead", dc);
  CHECK_FALSE(d.properties().expiration.has_value());
  CHECK(DeathHistory(d.message())[0].original_expiration == absl::Seconds(5));
}

TEST_CASE("Drop-head dead-letters the oldest with reason maxlen") {
  auto b = WithDlq({.max_length = 2, .overflow = Overflow::kDropHead});
  for (const char* m : {"1", "2", "3", "4"}) {
    REQUIRE(Send(*b, "jobs", "job.email", m).ok());
  }
  CHECK(Drain(*b, "work") == std::vector<std::string>{"3", "4"});
  std::unique_ptr<Consumer> dc;
  Delivery d = TakeOne(*b, "dead", dc);
  CHECK(d.body() == "1");
  CHECK(DeathHistory(d.message())[0].reason == DeathReason::kMaxLen);
  CHECK(Ready(*b, "dead") == 1);  // "2" is still there
  CHECK(b->GetQueueStats("work")->dead_lettered == 2);
}

TEST_CASE(
    "Drop-head in a priority queue dead-letters the next message to be "
    "delivered") {
  // As RabbitMQ's priority queues: the head is the oldest message of the
  // highest priority present, not the oldest message of all.
  auto b = WithDlq(
      {.max_length = 2, .overflow = Overflow::kDropHead, .max_priority = 5});
  REQUIRE(Send(*b, "jobs", "job.email", "old-low").ok());
  Message high("high");
  high.properties().priority = 5;
  REQUIRE(b->Publish("jobs", "job.email", std::move(high)).ok());
  REQUIRE(Send(*b, "jobs", "job.email", "new-low").ok());
  CHECK(Drain(*b, "work") == std::vector<std::string>{"old-low", "new-low"});
  std::unique_ptr<Consumer> dc;
  Delivery d = TakeOne(*b, "dead", dc);
  CHECK(d.body() == "high");
  CHECK(DeathHistory(d.message())[0].reason == DeathReason::kMaxLen);
}

TEST_CASE("Reject-publish-dlx refuses the new message and dead-letters it") {
  auto b = WithDlq({.max_length = 1, .overflow = Overflow::kRejectPublishDlx});
  REQUIRE(Send(*b, "jobs", "job.email", "kept").ok());
  auto out = Send(*b, "jobs", "job.email", "refused");
  CHECK(absl::IsResourceExhausted(out.status()));
  CHECK(Drain(*b, "work") == std::vector<std::string>{"kept"});
  std::unique_ptr<Consumer> dc;
  Delivery d = TakeOne(*b, "dead", dc);
  CHECK(d.body() == "refused");
  CHECK(DeathHistory(d.message())[0].reason == DeathReason::kMaxLen);
}

TEST_CASE("A dead-letter exchange that does not exist drops and counts") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("work", {.dead_letter_exchange = "missing"}).ok());
  REQUIRE(Send(*b, "", "work", "x").ok());
  auto c = b->Consume("work").value();
  REQUIRE(c->Reject(c->TryReceive().value(), {.requeue = false}).ok());
  auto stats = b->GetQueueStats("work").value();
  CHECK(stats.dropped == 1);
  CHECK(stats.dead_lettered == 0);
}

TEST_CASE("A dead-letter cycle without a rejection is dropped") {
  // Each queue pushes its oldest message to the other when full: the
  // message that already died in "a" for maxlen must not go back to "a".
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("a", {.max_length = 1,
                                .overflow = Overflow::kDropHead,
                                .dead_letter_exchange = "",
                                .dead_letter_routing_key = "b"})
              .ok());
  REQUIRE(b->DeclareQueue("b", {.max_length = 1,
                                .overflow = Overflow::kDropHead,
                                .dead_letter_exchange = "",
                                .dead_letter_routing_key = "a"})
              .ok());
  REQUIRE(Send(*b, "", "a", "first").ok());
  REQUIRE(Send(*b, "", "a", "second").ok());  // "first" -> b
  REQUIRE(Send(*b, "", "b", "third").ok());   // "first" would go back to a
  CHECK(Drain(*b, "a") == std::vector<std::string>{"second"});
  CHECK(Drain(*b, "b") == std::vector<std::string>{"third"});
  CHECK(b->GetQueueStats("b")->dropped == 1);
}

TEST_CASE("The delivery limit dead-letters a message returned too often") {
  auto b = WithDlq({.delivery_limit = 2});
  REQUIRE(Send(*b, "jobs", "job.email", "flaky").ok());
  auto c = b->Consume("work").value();
  REQUIRE(c->Nack(c->TryReceive().value()).ok());  // attempt 1: requeued
  auto again = c->TryReceive().value();
  CHECK(again.attempt() == 2);
  REQUIRE(c->Nack(again).ok());  // attempt 2: limit reached
  CHECK(Ready(*b, "work") == 0);
  std::unique_ptr<Consumer> dc;
  Delivery d = TakeOne(*b, "dead", dc);
  CHECK(DeathHistory(d.message())[0].reason == DeathReason::kDeliveryLimit);
}

TEST_CASE("A closed consumer's returns count toward the delivery limit") {
  auto b = WithDlq({.delivery_limit = 1});
  REQUIRE(Send(*b, "jobs", "job.email", "x").ok());
  {
    auto c = b->Consume("work").value();
    (void)c->TryReceive().value();
  }  // closed while holding it: that was its only allowed delivery
  CHECK(Ready(*b, "work") == 0);
  CHECK(Ready(*b, "dead") == 1);
}

TEST_CASE(
    "Dead-lettering into a full blocking queue never waits and counts "
    "the refusal") {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("dlx", ExchangeType::kFanout).ok());
  REQUIRE(
      b->DeclareQueue("dead", {.max_length = 1, .overflow = Overflow::kBlock})
          .ok());
  REQUIRE(b->Bind("dead", "dlx", "").ok());
  REQUIRE(b->DeclareQueue("work", {.dead_letter_exchange = "dlx"}).ok());
  REQUIRE(Send(*b, "", "dead", "filler").ok());
  REQUIRE(Send(*b, "", "work", "x").ok());
  auto c = b->Consume("work").value();
  REQUIRE(c->Reject(c->TryReceive().value(), {.requeue = false}).ok());
  CHECK(b->GetQueueStats("dead")->refused == 1);
  CHECK(b->GetQueueStats("work")->dropped == 1);
  CHECK(Ready(*b, "dead") == 1);
}

TEST_CASE(
    "Dead-lettering into a full reject-publish-dlx queue counts as "
    "dead-lettered at the source since the target dead-letters it on") {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("dlx", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareExchange("dlx2", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareQueue("dead", {.max_length = 1,
                                   .overflow = Overflow::kRejectPublishDlx,
                                   .dead_letter_exchange = "dlx2"})
              .ok());
  REQUIRE(b->Bind("dead", "dlx", "").ok());
  REQUIRE(b->DeclareQueue("dead2").ok());
  REQUIRE(b->Bind("dead2", "dlx2", "").ok());
  REQUIRE(b->DeclareQueue("work", {.dead_letter_exchange = "dlx"}).ok());
  REQUIRE(Send(*b, "", "dead", "filler").ok());
  REQUIRE(Send(*b, "", "work", "x").ok());
  auto c = b->Consume("work").value();
  REQUIRE(c->Reject(c->TryReceive().value(), {.requeue = false}).ok());
  auto work = b->GetQueueStats("work").value();
  CHECK(work.dead_lettered == 1);
  CHECK(work.dropped == 0);
  auto dead = b->GetQueueStats("dead").value();
  CHECK(dead.refused == 1);
  CHECK(dead.dead_lettered == 1);
  CHECK(dead.ready == 1);
  // The message itself lives on, with both deaths in its history.
  std::unique_ptr<Consumer> holder;
  Delivery d = TakeOne(*b, "dead2", holder);
  CHECK(d.body() == "x");
  const std::vector<DeathRecord> history = DeathHistory(d.message());
  REQUIRE(history.size() == 2);
  CHECK(history[0].queue == "dead");
  CHECK(history[0].reason == DeathReason::kMaxLen);
  CHECK(history[1].queue == "work");
  CHECK(history[1].reason == DeathReason::kRejected);

  SECTION("and as dropped when that queue has nowhere to send it") {
    REQUIRE(b->DeleteExchange("dlx2").ok());
    REQUIRE(Send(*b, "", "work", "y").ok());
    REQUIRE(c->Reject(c->TryReceive().value(), {.requeue = false}).ok());
    // The source hands it on; the full queue, whose dead-letter exchange is
    // gone, is where it ends.
    CHECK(b->GetQueueStats("work")->dead_lettered == 2);
    CHECK(b->GetQueueStats("dead")->refused == 2);
    CHECK(b->GetQueueStats("dead")->dropped == 1);
  }
}

TEST_CASE("Bad dead-letter options are InvalidArgument") {
  auto b = NewBroker();
  CHECK(absl::IsInvalidArgument(
      b->DeclareQueue("q", {.dead_letter_routing_key = "k"})));
  CHECK(absl::IsInvalidArgument(
      b->DeclareQueue("q", {.dead_letter_exchange = std::string(256, 'x')})));
  CHECK(absl::IsInvalidArgument(b->DeclareQueue(
      "q", {.dead_letter_exchange = "dlx",
            .dead_letter_routing_key = std::string(256, 'k')})));
  CHECK(absl::IsNotFound(b->GetQueueStats("q").status()));
}

TEST_CASE(
    "A dead-letter cycle is dropped when the cycle itself holds no "
    "rejection whatever came before it") {
  // x --rejected--> a --expired--> b --expired--> a: the cycle a -> b -> a
  // is fully automatic (two expiries); the earlier rejection in x is not
  // part of it (SEMANTICS 5; RabbitMQ's is_cycle looks only at the deaths
  // since the message was last in the queue).
  ManualClock clock;
  auto b = Broker::Open({.clock = &clock}).value();
  REQUIRE(b->DeclareExchange("to-a", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareExchange("to-b", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareQueue("x", {.dead_letter_exchange = "to-a"}).ok());
  REQUIRE(b->DeclareQueue("a", {.dead_letter_exchange = "to-b",
                                .message_ttl = absl::Seconds(1)})
              .ok());
  REQUIRE(b->DeclareQueue("b", {.dead_letter_exchange = "to-a",
                                .message_ttl = absl::Seconds(1)})
              .ok());
  REQUIRE(b->Bind("a", "to-a", "").ok());
  REQUIRE(b->Bind("b", "to-b", "").ok());
  REQUIRE(Send(*b, "", "x", "m").ok());
  std::unique_ptr<Consumer> c;
  const Delivery d = TakeOne(*b, "x", c);
  REQUIRE(c->Reject(d, {.requeue = false}).ok());
  REQUIRE(Ready(*b, "a") == 1);
  REQUIRE(clock.Advance(absl::Seconds(1)).ok());  // a -> b
  REQUIRE(Ready(*b, "b") == 1);
  REQUIRE(clock.Advance(absl::Seconds(1)).ok());  // b -> a would close it
  CHECK(Ready(*b, "a") == 0);
  CHECK(b->GetQueueStats("b")->dropped == 1);
  // Through "to-a": x's dead letter reached a; b's reached no queue.
  auto to_a = b->GetExchangeStats("to-a").value();
  CHECK(to_a.published == 2);
  CHECK(to_a.routed == 1);
  CHECK(to_a.unroutable == 1);
}

}  // namespace
}  // namespace warren
