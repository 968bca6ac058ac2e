// The write-ahead log wired into the broker: what survives a restart, a
// process crash and a power loss, under each sync policy, and what I/O errors
// and damage do. The file system is FaultInjectionEnv (in memory), so crashes
// are exact; the POSIX file system is covered by a few tests on a temporary
// directory and by wal_crash_test.cc (real kill -9).

#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <future>
#include <limits>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "broker_impl.h"
#include "catch2/catch.hpp"
#include "fault_injection_env.h"
#include "wal_records.h"
#include "warren/warren.h"

namespace warren {
namespace {

using internal::FaultInjectionEnv;

constexpr char kDir[] = "/wal";

struct Fixture {
  FaultInjectionEnv env;
  ManualClock clock;
  BrokerOptions options;

  Fixture() {
    options.wal_dir = kDir;
    options.clock = &clock;
  }
  // Opens a broker as a process (re)started after any simulated crash does.
  absl::StatusOr<std::unique_ptr<Broker>> Open() {
    env.Restart();
    return internal::OpenBroker(options, &env);
  }
  std::unique_ptr<Broker> MustOpen() {
    auto b = Open();
    REQUIRE(b.ok());
    return *std::move(b);
  }
};

PublishOptions Persistent() {
  PublishOptions o;
  o.persistent = true;
  return o;
}

std::vector<std::string> DrainBodies(Broker& b, std::string_view queue,
                                     bool ack = true) {
  std::vector<std::string> out;
  auto c = b.Consume(queue).value();
  for (;;) {
    auto d = c->TryReceive();
    if (!d.ok()) break;
    out.emplace_back(d->body());
    if (ack) REQUIRE(c->Ack(*d).ok());
  }
  return out;
}

TEST_CASE("Persistent messages in a durable queue survive a restart", "[wal]") {
  Fixture f;
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("jobs", {.durable = true}).ok());
    REQUIRE(b->DeclareQueue("scratch").ok());
    for (int i = 0; i < 5; ++i) {
      REQUIRE(
          b->Publish("", "jobs", Message("p" + std::to_string(i)), Persistent())
              .ok());
    }
    REQUIRE(b->Publish("", "jobs", Message("transient")).ok());
    REQUIRE(b->Publish("", "scratch", Message("s"), Persistent()).ok());
  }
  auto b = f.MustOpen();
  CHECK(b->GetQueueStats("scratch").status().code() ==
        absl::StatusCode::kNotFound);
  CHECK(DrainBodies(*b, "jobs") ==
        std::vector<std::string>{"p0", "p1", "p2", "p3", "p4"});
  CHECK(b->Stats().wal.recovered_messages == 5);
}

TEST_CASE(
    "Every property and header of a persistent message survives a restart, "
    "and a message without properties comes back without any",
    "[wal]") {
  Fixture f;
  Properties p;
  p.message_id = "id-1";
  p.correlation_id = "corr";
  p.content_type = "application/json";
  p.content_encoding = "gzip";
  p.reply_to = "replies";
  p.type = "order.created";
  p.app_id = "shop";
  p.user_id = "guest";
  p.timestamp = absl::FromUnixSeconds(1700000000);
  p.priority = 3;
  p.expiration = absl::Hours(1);
  p.headers["tenant"] = "acme";
  p.headers["attempts"] = int64_t{2};
  p.headers["tags"] = HeaderList{std::string("a"), true};
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
    REQUIRE(b->Publish("", "q", Message("with", p), Persistent()).ok());
    REQUIRE(b->Publish("", "q", Message("without"), Persistent()).ok());
  }
  auto b = f.MustOpen();
  auto c = b->Consume("q").value();
  auto with = c->TryReceive();
  REQUIRE(with.ok());
  CHECK(with->body() == "with");
  CHECK(with->properties() == p);
  auto without = c->TryReceive();
  REQUIRE(without.ok());
  CHECK(without->body() == "without");
  CHECK(without->properties() == Properties{});
}

TEST_CASE(
    "A record builder reused after clear describes only its new record, with "
    "nothing left over from the ops before",
    "[wal]") {
  internal::wal::RecordBuilder b;
  internal::wal::BindingOp bind;
  bind.dest_queue_id = 3;
  bind.source = "orders";
  bind.key = "order.*";
  bind.arguments["x-match"] = "all";
  b.Bind(bind, true);
  const uint64_t settled[] = {7, 8, 9};
  b.Settle(3, settled, 3);
  Message m("body");
  m.properties().message_id = "a-message-id-longer-than-sso";
  b.Publish(1, "orders", "order.created", absl::FromUnixSeconds(5), m,
            {{.queue_id = 3}, {.queue_id = 4}});
  REQUIRE(b.effects().size() == 3);

  b.clear();
  CHECK(b.empty());
  CHECK(b.effects().empty());
  // Each new op lands on an effect that held another kind before.
  b.Publish(2, "", "q", absl::FromUnixSeconds(6), Message("x"),
            {{.queue_id = 9, .deliveries = 1}});
  b.DeleteQueue(5);
  const uint64_t one[] = {2};
  b.Settle(9, one, 1);
  REQUIRE(b.effects().size() == 3);
  const internal::wal::Effect& p = b.effects()[0];
  CHECK(p.type == internal::wal::OpType::kPublish);
  CHECK(p.msg_id == 2);
  CHECK(p.at == absl::FromUnixSeconds(6));
  CHECK(p.name.empty());
  REQUIRE(p.refs.size() == 1);
  CHECK(p.refs[0].queue_id == 9);
  CHECK(p.refs[0].deliveries == 1);
  CHECK(p.ids.empty());
  CHECK(p.binding == internal::wal::BindingOp{});
  CHECK(p.begin == 0);
  const internal::wal::Effect& d = b.effects()[1];
  CHECK(d.type == internal::wal::OpType::kDeleteQueue);
  CHECK(d.queue_id == 5);
  CHECK(d.ids.empty());
  CHECK(d.begin == p.end);
  const internal::wal::Effect& s = b.effects()[2];
  CHECK(s.type == internal::wal::OpType::kSettle);
  CHECK(s.queue_id == 9);
  CHECK(s.msg_id == 0);
  CHECK(s.at == absl::Time());
  CHECK(s.name.empty());
  CHECK(s.ids == std::vector<uint64_t>{2});
  CHECK(s.refs.empty());
  CHECK(s.begin == d.end);
  CHECK(s.end == b.out().size());
}

TEST_CASE("A confirmed publish survives a process crash and a power loss",
          "[wal]") {
  for (auto kind : {FaultInjectionEnv::CrashKind::kProcess,
                    FaultInjectionEnv::CrashKind::kPowerLoss}) {
    for (SyncPolicy policy :
         {SyncPolicy::kGroupCommit, SyncPolicy::kEveryPublish,
          SyncPolicy::kNever, SyncPolicy::kInterval}) {
      const bool power = kind == FaultInjectionEnv::CrashKind::kPowerLoss;
      // kNever and kInterval promise nothing against a power loss.
      if (power && !(policy == SyncPolicy::kGroupCommit ||
                     policy == SyncPolicy::kEveryPublish)) {
        continue;
      }
      CAPTURE(power, static_cast<int>(policy));
      Fixture f;
      f.options.sync = policy;
      f.options.sync_interval = absl::Hours(1);
      {
        auto b = f.MustOpen();
        REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
        for (int i = 0; i < 20; ++i) {
          REQUIRE(b->Publish("", "q", Message(std::to_string(i)), Persistent())
                      .ok());
        }
        f.env.SimulateCrash(kind);
      }
      auto b = f.MustOpen();
      CHECK(DrainBodies(*b, "q").size() == 20);
    }
  }
}

TEST_CASE(
    "Unacked deliveries come back redelivered with their attempt "
    "counted; acked ones never come back",
    "[wal]") {
  Fixture f;
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
    for (const char* body : {"a", "b", "c"}) {
      REQUIRE(b->Publish("", "q", Message(body), Persistent()).ok());
    }
    auto c = b->Consume("q").value();
    auto a = c->TryReceive().value();
    auto bb = c->TryReceive().value();
    REQUIRE(c->Ack(a).ok());
    (void)bb;  // held at the crash
    f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kProcess);
  }
  auto b = f.MustOpen();
  auto c = b->Consume("q").value();
  auto first = c->TryReceive().value();
  CHECK(first.body() == "b");
  CHECK(first.redelivered());
  CHECK(first.attempt() == 2);
  auto second = c->TryReceive().value();
  CHECK(second.body() == "c");
  CHECK_FALSE(second.redelivered());
  CHECK_FALSE(c->TryReceive().ok());
}

TEST_CASE("Durable exchanges and bindings are recovered and route again",
          "[wal]") {
  Fixture f;
  {
    auto b = f.MustOpen();
    REQUIRE(
        b->DeclareExchange("orders", ExchangeType::kTopic, {.durable = true})
            .ok());
    REQUIRE(b->DeclareExchange("tmp", ExchangeType::kFanout).ok());
    REQUIRE(b->DeclareQueue("eu", {.durable = true}).ok());
    REQUIRE(b->DeclareQueue("gone", {.durable = true}).ok());
    REQUIRE(b->Bind("eu", "orders", "order.eu.*").ok());
    REQUIRE(b->Bind("gone", "orders", "#").ok());
    REQUIRE(b->Unbind("gone", "orders", "#").ok());
    REQUIRE(b->DeleteQueue("gone").ok());
  }
  auto b = f.MustOpen();
  CHECK(b->GetExchangeStats("tmp").status().code() ==
        absl::StatusCode::kNotFound);
  CHECK(b->GetQueueStats("gone").status().code() ==
        absl::StatusCode::kNotFound);
  // Redeclaring with the same options is a no-op.
  CHECK(b->DeclareQueue("eu", {.durable = true}).ok());
  auto out = b->Publish("orders", "order.eu.new", Message("x"), Persistent());
  REQUIRE(out.ok());
  CHECK(out->queues == 1);
  CHECK(DrainBodies(*b, "eu") == std::vector<std::string>{"x"});
}

TEST_CASE(
    "Unbinding with arguments equal to the bound ones but other bytes stays "
    "unbound after a restart",
    "[wal]") {
  Fixture f;
  const BindingArguments bound = {{"x-match", "all"}, {"weight", 0.0}};
  const BindingArguments equal = {{"x-match", "all"}, {"weight", -0.0}};
  REQUIRE(bound == equal);  // IEEE equality, as bindings compare
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareExchange("h", ExchangeType::kHeaders, {.durable = true})
                .ok());
    REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
    REQUIRE(b->Bind("q", "h", "", bound).ok());
    REQUIRE(b->Unbind("q", "h", "", equal).ok());
  }
  auto b = f.MustOpen();
  PublishOptions mandatory = Persistent();
  mandatory.mandatory = true;
  Message m("x");
  m.headers()["weight"] = 0.0;
  auto out = b->Publish("h", "", std::move(m), mandatory);
  REQUIRE(out.ok());
  CHECK(out->queues == 0);
}

TEST_CASE("Auto-deleted durable queues and exchanges stay deleted", "[wal]") {
  Fixture f;
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareExchange("ax", ExchangeType::kFanout,
                               {.durable = true, .auto_delete = true})
                .ok());
    REQUIRE(b->DeclareQueue("aq", {.durable = true, .auto_delete = true}).ok());
    REQUIRE(b->DeclareQueue("kept", {.durable = true}).ok());
    REQUIRE(b->Bind("aq", "ax", "").ok());
    REQUIRE(b->Publish("ax", "", Message("gone"), Persistent()).ok());
    // The queue goes with its last consumer, and the exchange with the
    // queue's binding, its last.
    b->Consume("aq").value()->Close();
    REQUIRE(absl::IsNotFound(b->GetQueueStats("aq").status()));
    REQUIRE(absl::IsNotFound(b->GetExchangeStats("ax").status()));
    // A later confirmed publish makes everything before it durable too.
    REQUIRE(b->Publish("", "kept", Message("fence"), Persistent()).ok());
    f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kPowerLoss);
  }
  auto b = f.MustOpen();
  CHECK(absl::IsNotFound(b->GetQueueStats("aq").status()));
  CHECK(absl::IsNotFound(b->GetExchangeStats("ax").status()));
  CHECK(DrainBodies(*b, "kept") == std::vector<std::string>{"fence"});
}

TEST_CASE("Headers and binding arguments nested to the limit survive a restart",
          "[wal]") {
  Fixture f;
  HeaderValue deepest = 1;
  for (int i = 0; i < kMaxHeaderNesting; ++i) {
    deepest = HeaderValue(HeaderList{std::move(deepest)});
  }
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareExchange("h", ExchangeType::kHeaders, {.durable = true})
                .ok());
    REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
    REQUIRE(b->Bind("q", "h", "", {{"x-match", "all"}, {"d", deepest}}).ok());
    Message m("deep");
    m.headers()["d"] = deepest;
    REQUIRE(b->Publish("h", "", std::move(m), Persistent()).ok());
  }
  auto b = f.MustOpen();
  auto c = b->Consume("q").value();
  auto d = c->TryReceive().value();
  CHECK(d.message().headers().at("d") == deepest);
  // The binding came back: it routes again.
  Message again("again");
  again.headers()["d"] = deepest;
  auto out = b->Publish("h", "", std::move(again), Persistent());
  REQUIRE(out.ok());
  CHECK(out->queues == 1);
}

TEST_CASE("A second broker cannot open a locked WAL directory", "[wal]") {
  Fixture f;
  auto b = f.MustOpen();
  auto second = f.Open();
  REQUIRE_FALSE(second.ok());
  CHECK(second.status().code() == absl::StatusCode::kFailedPrecondition);
  b.reset();
  CHECK(f.Open().ok());
}

TEST_CASE("Dead-lettering moves a persistent message durably", "[wal]") {
  Fixture f;
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("dlq", {.durable = true}).ok());
    REQUIRE(b->DeclareQueue("work", {.durable = true,
                                     .dead_letter_exchange = "",
                                     .dead_letter_routing_key = "dlq"})
                .ok());
    REQUIRE(b->Publish("", "work", Message("bad"), Persistent()).ok());
    auto c = b->Consume("work").value();
    auto d = c->TryReceive().value();
    REQUIRE(c->Reject(d, {.requeue = false}).ok());
    // A later confirmed publish makes everything before it durable too.
    REQUIRE(b->Publish("", "work", Message("fence"), Persistent()).ok());
    f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kPowerLoss);
  }
  auto b = f.MustOpen();
  auto c = b->Consume("dlq").value();
  auto d = c->TryReceive().value();
  CHECK(d.body() == "bad");
  auto death = FirstDeath(d.message());
  REQUIRE(death.has_value());
  CHECK(death->queue == "work");
  CHECK(death->reason == DeathReason::kRejected);
  CHECK(DrainBodies(*b, "work") == std::vector<std::string>{"fence"});
}

TEST_CASE(
    "A persistent message dead-lettered from a transient queue into a durable "
    "one is logged there",
    "[wal]") {
  Fixture f;
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("dlq", {.durable = true}).ok());
    // Two hops through transient queues: "work" dead-letters into "relay",
    // which dead-letters into the durable "dlq".
    REQUIRE(b->DeclareQueue("relay", {.dead_letter_exchange = "",
                                      .dead_letter_routing_key = "dlq"})
                .ok());
    REQUIRE(b->DeclareQueue("work", {.dead_letter_exchange = "",
                                     .dead_letter_routing_key = "relay"})
                .ok());
    REQUIRE(b->Publish("", "work", Message("persistent"), Persistent()).ok());
    REQUIRE(b->Publish("", "work", Message("transient")).ok());
    auto c = b->Consume("work").value();
    for (int i = 0; i < 2; ++i) {
      auto d = c->TryReceive().value();
      REQUIRE(c->Reject(d, {.requeue = false}).ok());
    }
    auto r = b->Consume("relay").value();
    for (int i = 0; i < 2; ++i) {
      auto d = r->TryReceive().value();
      REQUIRE(r->Reject(d, {.requeue = false}).ok());
    }
    REQUIRE(b->GetQueueStats("dlq")->ready == 2);
    // A later confirmed publish makes everything before it durable too.
    REQUIRE(b->Publish("", "dlq", Message("fence"), Persistent()).ok());
    f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kPowerLoss);
  }
  auto b = f.MustOpen();
  // The transient message stays transient, as in RabbitMQ.
  CHECK(DrainBodies(*b, "dlq") ==
        std::vector<std::string>{"persistent", "fence"});
}

TEST_CASE(
    "A move that no queue takes leaves the message in all its durable queues",
    "[wal]") {
  Fixture f;
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareExchange("fan", ExchangeType::kFanout, {.durable = true})
                .ok());
    REQUIRE(b->DeclareQueue("x", {.durable = true}).ok());
    REQUIRE(b->DeclareQueue("y", {.durable = true}).ok());
    // "x" is a dead-letter queue, so it can be redriven.
    REQUIRE(b->DeclareQueue("work", {.durable = true,
                                     .dead_letter_exchange = "",
                                     .dead_letter_routing_key = "x"})
                .ok());
    REQUIRE(b->DeclareQueue("full", {.durable = true, .max_length = 1}).ok());
    REQUIRE(b->Bind("x", "fan", "").ok());
    REQUIRE(b->Bind("y", "fan", "").ok());
    REQUIRE(b->Publish("", "full", Message("filler"), Persistent()).ok());
    REQUIRE(b->Publish("fan", "", Message("both"), Persistent()).ok());
    // "full" refuses it, so it stays in "x"; "y" keeps its own copy.
    auto moved = b->Redrive("x", {.to_queue = "full"});
    REQUIRE(moved.ok());
    CHECK(*moved == 0);
  }
  auto b = f.MustOpen();
  CHECK(DrainBodies(*b, "x") == std::vector<std::string>{"both"});
  CHECK(DrainBodies(*b, "y") == std::vector<std::string>{"both"});
  CHECK(DrainBodies(*b, "full") == std::vector<std::string>{"filler"});
}

// The bodies of the ready messages of `queue`, in delivery order.
std::vector<std::string> ReadyBodies(Broker& b, std::string_view queue) {
  std::vector<std::string> out;
  auto messages = b.Browse(queue, 1000);
  REQUIRE(messages.ok());
  for (const Message& m : *messages) out.emplace_back(m.body());
  return out;
}

TEST_CASE(
    "Returned messages and those whose delay is over come back ahead of "
    "those never delivered in the order they had before the restart",
    "[wal]") {
  enum Mode { kNone, kDelayedNacked, kAllReturned };
  const Mode mode = GENERATE(kNone, kDelayedNacked, kAllReturned);
  CAPTURE(mode);
  // In memory the returned messages (requeued, or back from a consumer
  // that closed, or whose delay is over) go first, in publish order.
  const std::vector<std::string> expected =
      mode == kAllReturned ? std::vector<std::string>{"A", "B", "D"}
                           : std::vector<std::string>{"D", "A", "B"};
  Fixture f;
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
    REQUIRE(b->Publish("", "q", Message("A"), Persistent()).ok());
    REQUIRE(b->Publish("", "q", Message("B"), Persistent()).ok());
    PublishOptions later = Persistent();
    later.delay = absl::Seconds(10);
    REQUIRE(b->Publish("", "q", Message("D"), later).ok());
    REQUIRE(f.clock.Advance(absl::Seconds(10)).ok());
    if (mode == kDelayedNacked) {
      auto c = b->Consume("q").value();
      auto d = c->TryReceive().value();
      REQUIRE(d.body() == "D");
      REQUIRE(c->Nack(d).ok());
    } else if (mode == kAllReturned) {
      auto c = b->Consume("q").value();
      std::vector<std::string> delivered;
      for (auto d = c->TryReceive(); d.ok(); d = c->TryReceive()) {
        delivered.emplace_back(d->body());
      }
      REQUIRE(delivered == std::vector<std::string>{"D", "A", "B"});
    }  // the consumer closes: all go back
    REQUIRE(ReadyBodies(*b, "q") == expected);
    REQUIRE(b->DeclareQueue("fence", {.durable = true}).ok());
    REQUIRE(b->Publish("", "fence", Message("fence"), Persistent()).ok());
    f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kPowerLoss);
  }
  auto b = f.MustOpen();
  CHECK(ReadyBodies(*b, "q") == expected);
}

TEST_CASE(
    "Messages that expired while the broker was down are dead-lettered in "
    "the order they expired",
    "[wal]") {
  Fixture f;
  const int n = 8;
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("dlq", {.durable = true}).ok());
    // q0 expires first, q7 last, published in the other order; and one
    // more message of q7 with a shorter TTL of its own.
    for (int i = 0; i < n; ++i) {
      REQUIRE(b->DeclareQueue("q" + std::to_string(i),
                              {.durable = true,
                               .dead_letter_exchange = "",
                               .dead_letter_routing_key = "dlq",
                               .message_ttl = absl::Seconds(10 + 2 * i)})
                  .ok());
    }
    for (int i = n - 1; i >= 0; --i) {
      const std::string q = "q" + std::to_string(i);
      REQUIRE(b->Publish("", q, Message(q), Persistent()).ok());
    }
    Message early("q7-early");
    early.properties().expiration = absl::Seconds(13);  // between q1 and q2
    REQUIRE(b->Publish("", "q7", std::move(early), Persistent()).ok());
  }
  REQUIRE(f.clock.Advance(absl::Seconds(100)).ok());
  auto b = f.MustOpen();
  CHECK(ReadyBodies(*b, "dlq") ==
        std::vector<std::string>{"q0", "q1", "q7-early", "q2", "q3", "q4", "q5",
                                 "q6", "q7"});
}

// Declares durable queue "q", limited to two ready messages with `overflow`,
// whose dead letters go to durable queue "dead".
void DeclareQueueOfTwo(Broker& b, Overflow overflow) {
  REQUIRE(b.DeclareQueue("dead", {.durable = true}).ok());
  REQUIRE(b.DeclareQueue("q", {.durable = true,
                               .max_length = 2,
                               .overflow = overflow,
                               .dead_letter_exchange = "",
                               .dead_letter_routing_key = "dead"})
              .ok());
}

TEST_CASE(
    "A delayed message whose delay ended while the broker was down meets "
    "the length limits at open as it would have with the broker up",
    "[wal]") {
  const Overflow overflow =
      GENERATE(Overflow::kRejectPublishDlx, Overflow::kDropHead);
  const bool restart = GENERATE(false, true);
  CAPTURE(overflow == Overflow::kDropHead, restart);
  Fixture f;
  auto b = f.MustOpen();
  DeclareQueueOfTwo(*b, overflow);
  REQUIRE(b->Publish("", "q", Message("A"), Persistent()).ok());
  REQUIRE(b->Publish("", "q", Message("B"), Persistent()).ok());
  PublishOptions later = Persistent();
  later.delay = absl::Seconds(10);
  REQUIRE(b->Publish("", "q", Message("D1"), later).ok());
  later.delay = absl::Seconds(20);
  REQUIRE(b->Publish("", "q", Message("D2"), later).ok());
  if (restart) {
    b.reset();
    REQUIRE(f.clock.Advance(absl::Seconds(30)).ok());
    b = f.MustOpen();
  } else {
    REQUIRE(f.clock.Advance(absl::Seconds(30)).ok());
  }
  if (overflow == Overflow::kRejectPublishDlx) {
    // Each is refused when its delay ends, and dead-lettered.
    CHECK(ReadyBodies(*b, "q") == std::vector<std::string>{"A", "B"});
    CHECK(ReadyBodies(*b, "dead") == std::vector<std::string>{"D1", "D2"});
    CHECK(b->GetQueueStats("q")->refused == 2);
  } else {
    // D1 pushes out the head, A; D2 then pushes out the head, D1 (a
    // message whose delay is over goes ahead of those never delivered).
    CHECK(ReadyBodies(*b, "q") == std::vector<std::string>{"D2", "B"});
    CHECK(ReadyBodies(*b, "dead") == std::vector<std::string>{"A", "D1"});
  }
  CHECK(b->GetQueueStats("q")->dead_lettered == 2);
  // What the limits did is logged: another restart changes nothing.
  const std::vector<std::string> q = ReadyBodies(*b, "q");
  const std::vector<std::string> dead = ReadyBodies(*b, "dead");
  b.reset();
  b = f.MustOpen();
  CHECK(ReadyBodies(*b, "q") == q);
  CHECK(ReadyBodies(*b, "dead") == dead);
}

TEST_CASE(
    "A delayed message that went in before a restart goes in again after "
    "it even when redelivered messages fill the queue",
    "[wal]") {
  const Overflow overflow =
      GENERATE(Overflow::kRejectPublishDlx, Overflow::kDropHead);
  CAPTURE(overflow == Overflow::kDropHead);
  Fixture f;
  auto b = f.MustOpen();
  DeclareQueueOfTwo(*b, overflow);
  REQUIRE(b->Publish("", "q", Message("A"), Persistent()).ok());
  auto c = b->Consume("q").value();
  REQUIRE(c->TryReceive().value().body() == "A");  // held, not acked
  PublishOptions later = Persistent();
  later.delay = absl::Seconds(10);
  REQUIRE(b->Publish("", "q", Message("D"), later).ok());
  REQUIRE(b->Publish("", "q", Message("B"), Persistent()).ok());
  REQUIRE(f.clock.Advance(absl::Seconds(10)).ok());
  REQUIRE(ReadyBodies(*b, "q") == std::vector<std::string>{"D", "B"});
  c.reset();  // A comes back, over the limit, as a returned message does
  REQUIRE(ReadyBodies(*b, "q") == std::vector<std::string>{"A", "D", "B"});
  b.reset();
  for (int open = 0; open < 2; ++open) {
    CAPTURE(open);
    b = f.MustOpen();
    // As before the restart: A and D are returned messages, in publish
    // order, ahead of B; nothing was refused or pushed out.
    CHECK(ReadyBodies(*b, "q") == std::vector<std::string>{"A", "D", "B"});
    CHECK(ReadyBodies(*b, "dead").empty());
    CHECK(b->GetQueueStats("q")->refused == 0);
    b.reset();
  }
}

TEST_CASE(
    "Retry backoff and delayed publishes keep their time across a "
    "restart",
    "[wal]") {
  Fixture f;
  RetryPolicy retry;
  retry.max_attempts = 5;
  retry.backoff = Backoff::kFixed;
  retry.initial_delay = absl::Seconds(10);
  const QueueOptions q{.durable = true,
                       .dead_letter_exchange = "",
                       .dead_letter_routing_key = "dead",
                       .retry = retry};
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("dead", {.durable = true}).ok());
    REQUIRE(b->DeclareQueue("q", q).ok());
    REQUIRE(b->Publish("", "q", Message("retry-me"), Persistent()).ok());
    PublishOptions later = Persistent();
    later.delay = absl::Seconds(30);
    REQUIRE(b->Publish("", "q", Message("later"), later).ok());
    auto c = b->Consume("q").value();
    auto d = c->TryReceive().value();
    REQUIRE(c->Nack(d).ok());  // retry in 10 s
    REQUIRE(b->Publish("", "dead", Message("fence"), Persistent()).ok());
  }
  auto b = f.MustOpen();
  CHECK(b->GetQueueStats("q")->ready == 0);
  CHECK(b->GetQueueStats("q")->delayed == 2);
  REQUIRE(f.clock.Advance(absl::Seconds(10)).ok());
  auto c = b->Consume("q").value();
  auto d = c->TryReceive().value();
  CHECK(d.body() == "retry-me");
  CHECK(d.attempt() == 2);
  REQUIRE(c->Ack(d).ok());
  CHECK_FALSE(c->TryReceive().ok());
  REQUIRE(f.clock.Advance(absl::Seconds(20)).ok());
  auto l = c->TryReceive().value();
  CHECK(l.body() == "later");
}

TEST_CASE("A publish batch is logged as one record: all or nothing", "[wal]") {
  // Fail the write of the batch's record at every call index: after a
  // process crash the queue holds all of the batch or none of it.
  for (uint64_t index = 0; index < 40; ++index) {
    CAPTURE(index);
    Fixture f;
    f.options.sync = SyncPolicy::kNever;
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
    std::vector<OutgoingMessage> batch;
    for (int i = 0; i < 50; ++i) {
      batch.push_back({"q", Message(std::string(1000, 'a' + i % 26))});
    }
    f.env.InjectFault(f.env.call_count() + index,
                      absl::StatusCode::kResourceExhausted);
    auto results = b->PublishBatch("", std::move(batch), Persistent());
    REQUIRE(results.ok());
    f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kProcess);
    b.reset();
    f.env.ClearFault();
    auto r = f.MustOpen();
    const uint64_t ready = r->GetQueueStats("q")->ready;
    CHECK((ready == 0 || ready == 50));
    if ((*results)[0].ok()) CHECK(ready == 50);
  }
}

TEST_CASE(
    "Disk errors fail the calls that need the disk, and never confirm "
    "what is not durable",
    "[wal]") {
  for (absl::StatusCode code :
       {absl::StatusCode::kResourceExhausted, absl::StatusCode::kDataLoss}) {
    for (uint64_t index = 0; index < 30; ++index) {
      CAPTURE(static_cast<int>(code), index);
      Fixture f;
      // An ack that failed may still take effect: its settle is written
      // again once the disk is back, as memory already settled it.
      std::set<std::string> confirmed, acked, ack_failed;
      {
        auto b = f.MustOpen();
        REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
        auto c = b->Consume("q").value();
        f.env.InjectFault(f.env.call_count() + index, code);
        int failures = 0;
        for (int i = 0; i < 10; ++i) {
          const std::string body = std::to_string(i);
          auto r = b->Publish("", "q", Message(body), Persistent());
          if (r.ok()) {
            confirmed.insert(body);
          } else {
            ++failures;
            CHECK(r.status().code() == code);
          }
          if (i % 3 == 2) {
            auto d = c->TryReceive();
            REQUIRE(d.ok());
            if (c->Ack(*d).ok()) {
              acked.insert(std::string(d->body()));
            } else {
              ack_failed.insert(std::string(d->body()));
            }
          }
        }
        CHECK(failures <= 2);
        // The broker goes on once the disk is back.
        CHECK(b->Publish("", "q", Message("after"), Persistent()).ok());
        confirmed.insert("after");
        f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kPowerLoss);
      }
      f.env.ClearFault();
      auto b = f.MustOpen();
      std::set<std::string> present;
      for (auto& s : DrainBodies(*b, "q")) present.insert(s);
      for (const std::string& s : confirmed) {
        if (!acked.contains(s) && !ack_failed.contains(s)) {
          CHECK(present.contains(s));
        }
      }
      for (const std::string& s : acked) CHECK_FALSE(present.contains(s));
    }
  }
}

// Checks what a workload of moves left after a crash: `copies` counts the
// messages found in its queues, by name. Each is in at most one queue, no
// acked one is back, and every confirmed one is there unless an ack of it
// was sent (`acked` returned OK; `maybe_settled` failed, and may still
// have taken effect).
void CheckOneCopyOfEach(const std::map<std::string, int>& copies,
                        const std::set<std::string>& confirmed,
                        const std::set<std::string>& acked,
                        const std::set<std::string>& maybe_settled) {
  for (const auto& [name, n] : copies) {
    INFO(name);
    CHECK(n == 1);
    CHECK_FALSE(acked.contains(name));
  }
  for (const std::string& name : confirmed) {
    INFO(name);
    if (!acked.contains(name) && !maybe_settled.contains(name)) {
      CHECK(copies.contains(name));
    }
  }
}

// The name of a message of the fault workloads: its body up to the first
// space (the rest is padding of 'x').
std::string NameOf(std::string_view body) {
  return std::string(body.substr(0, body.find(' ')));
}

// Reopens the broker after a crash, the disk sound again and the clock an
// hour on (every delay and backoff over), and counts the messages of "q"
// and "dlq" by name, checking that their padding is intact.
std::map<std::string, int> CountCopiesAfterCrash(Fixture& f) {
  f.env.ClearFault();
  REQUIRE(f.clock.Advance(absl::Hours(1)).ok());
  auto b = f.MustOpen();
  std::map<std::string, int> copies;
  for (const char* queue : {"q", "dlq"}) {
    for (const std::string& body : DrainBodies(*b, queue)) {
      const std::string name = NameOf(body);
      INFO(name);
      if (name != body) {
        CHECK(body.find_first_not_of('x', name.size() + 1) ==
              std::string::npos);
      }
      ++copies[name];
    }
  }
  return copies;
}

// Publishes ten persistent messages to "q" (retry policy, dead letters to
// "dlq"), then receives them and, by body, acks, nacks without requeue
// (dead-lettered), or nacks with requeue (retried after a second, then
// nacked again: out of attempts, dead-lettered); the clock moves on for the
// retries. Then acks the dead letters of even bodies in "dlq", and ends with
// a publish whose confirm covers everything before it. Records what was
// confirmed and what was acked (an ack that failed may still take effect).
struct MoveWorkload {
  std::set<std::string> confirmed, acked, maybe_settled;

  void Run(Broker& b, ManualClock& clock) {
    auto c = b.Consume("q").value();
    for (int i = 0; i < 10; ++i) {
      const std::string body = "m" + std::to_string(i);
      if (b.Publish("", "q", Message(body), Persistent()).ok()) {
        confirmed.insert(body);
      }
    }
    for (int round = 0; round < 2; ++round) {
      for (;;) {
        auto d = c->TryReceive();
        if (!d.ok()) break;
        const std::string body(d->body());
        const int i = body[1] - '0';
        if (i % 3 == 0) {
          if (c->Ack(*d).ok()) {
            acked.insert(body);
          } else {
            maybe_settled.insert(body);
          }
        } else {
          // Failed or not, memory has moved the message.
          (void)c->Nack(*d, {.requeue = i % 3 == 1});
        }
      }
      REQUIRE(clock.Advance(absl::Seconds(2)).ok());
    }
    auto dead = b.Consume("dlq").value();
    for (;;) {
      auto d = dead->TryReceive();
      if (!d.ok()) break;
      const std::string body(d->body());
      if ((body[1] - '0') % 2 != 0) continue;
      if (dead->Ack(*d).ok()) {
        acked.insert(body);
      } else {
        maybe_settled.insert(body);
      }
    }
    dead->Close();
    if (b.Publish("", "q", Message("after"), Persistent()).ok()) {
      confirmed.insert("after");
    }
  }
};

TEST_CASE(
    "Disk errors during retries and dead-lettering leave every message in "
    "exactly one queue after a crash",
    "[wal]") {
  auto declare = [](Broker& b) {
    REQUIRE(b.DeclareQueue("dlq", {.durable = true}).ok());
    REQUIRE(b.DeclareQueue("q", {.durable = true,
                                 .dead_letter_exchange = "",
                                 .dead_letter_routing_key = "dlq",
                                 .retry =
                                     RetryPolicy{
                                         .max_attempts = 2,
                                         .backoff = Backoff::kFixed,
                                     }})
                .ok());
  };
  // The calls the workload makes with a sound disk.
  uint64_t calls = 0;
  {
    Fixture f;
    auto b = f.MustOpen();
    declare(*b);
    MoveWorkload w;
    const uint64_t before = f.env.call_count();
    w.Run(*b, f.clock);
    calls = f.env.call_count() - before;
    REQUIRE(w.confirmed.size() == 11);
    REQUIRE(w.maybe_settled.empty());
    // m1, m2, m4, m5, m7 and m8 died; the even ones were acked there.
    REQUIRE(b->GetQueueStats("dlq")->ready == 3);
    REQUIRE(w.acked.size() == 7);
  }
  REQUIRE(calls > 10);
  for (const absl::StatusCode code :
       {absl::StatusCode::kResourceExhausted, absl::StatusCode::kDataLoss}) {
    for (const auto kind : {FaultInjectionEnv::CrashKind::kProcess,
                            FaultInjectionEnv::CrashKind::kPowerLoss}) {
      for (uint64_t index = 0; index <= calls; ++index) {
        CAPTURE(static_cast<int>(code), static_cast<int>(kind), index);
        Fixture f;
        MoveWorkload w;
        {
          auto b = f.MustOpen();
          declare(*b);
          f.env.InjectFault(f.env.call_count() + index, code);
          w.Run(*b, f.clock);
          f.env.SimulateCrash(kind);
        }
        CheckOneCopyOfEach(CountCopiesAfterCrash(f), w.confirmed, w.acked,
                           w.maybe_settled);
      }
    }
  }
}

// The options of the queue "q" of a random fault workload: dead letters go
// to "dlq"; by seed, a retry policy, a TTL, a length limit (dropping the
// head or refusing with dead-lettering) or all of them, priorities, and
// leases.
QueueOptions RandomQueueOptions(int seed) {
  QueueOptions o{.durable = true,
                 .dead_letter_exchange = "",
                 .dead_letter_routing_key = "dlq"};
  const int variant = seed % 4;
  if (variant == 0 || variant == 3) {
    o.retry = RetryPolicy{.max_attempts = 3, .backoff = Backoff::kFixed};
  }
  if (variant == 1 || variant == 3) o.message_ttl = absl::Seconds(4);
  if (variant == 2 || variant == 3) {
    o.max_length = 4;
    o.overflow =
        seed % 8 == 6 ? Overflow::kRejectPublishDlx : Overflow::kDropHead;
  }
  if (seed % 5 == 0) o.max_priority = 5;
  if (seed % 3 == 0) o.ack_deadline = absl::Seconds(2);
  return o;
}

// Runs random workloads of `seeds` seeds on a queue (see RandomQueueOptions)
// and its dead-letter queue: publishes (some delayed, some with a priority
// or an expiration, some in batches, some asynchronous; bodies of up to
// 9 KB, so that segments fill and compaction runs), receives, acks, nacks
// with and without requeue, consumers closed, redrives, purges and clock
// moves, with a disk fault (once, for half the run, or to the end) at a
// random call. Then a publish (confirmed unless the disk still fails),
// and a crash (a power loss only under the policies that survive one).
// After it each message is in at most one of the queues, no acked (or
// purged) one is back, and every confirmed one that was not is there.
void RunRandomFaultWorkloads(int seeds) {
  for (int seed = 1; seed <= seeds; ++seed) {
    CAPTURE(seed);
    std::mt19937_64 rng(seed);
    auto pick = [&](uint64_t n) { return rng() % n; };
    // A power loss only under the policies that survive one.
    const auto kind = pick(2) == 0 ? FaultInjectionEnv::CrashKind::kProcess
                                   : FaultInjectionEnv::CrashKind::kPowerLoss;
    const SyncPolicy policies[] = {SyncPolicy::kGroupCommit,
                                   SyncPolicy::kEveryPublish,
                                   SyncPolicy::kNever, SyncPolicy::kInterval};
    const SyncPolicy policy =
        policies[pick(kind == FaultInjectionEnv::CrashKind::kProcess ? 4 : 2)];
    const absl::StatusCode code = pick(2) == 0
                                      ? absl::StatusCode::kResourceExhausted
                                      : absl::StatusCode::kDataLoss;
    const bool persistent_fault = pick(3) == 0;
    // Whether the disk is back before the end (else the crash finds the
    // fault still there).
    const bool heals = seed % 2 == 0;
    CAPTURE(static_cast<int>(policy), static_cast<int>(kind),
            static_cast<int>(code), persistent_fault, heals);
    Fixture f;
    f.options.sync = policy;
    f.options.wal_segment_bytes = 64 << 10;
    std::mutex confirmed_mu;  // PublishAsync callbacks add to `confirmed`
    std::set<std::string> confirmed, acked, maybe_settled;
    // A body: the message's name, a space, and padding of 'x'.
    auto make_body = [&](const std::string& name) {
      return name + " " +
             std::string(pick(4) == 0 ? pick(9000) : pick(50), 'x');
    };
    {
      auto b = f.MustOpen();
      REQUIRE(b->DeclareQueue("dlq", {.durable = true}).ok());
      REQUIRE(b->DeclareQueue("q", RandomQueueOptions(seed)).ok());
      auto cq = b->Consume("q").value();
      auto cd = b->Consume("dlq").value();
      std::vector<Delivery> held_q, held_d;
      const uint64_t fault_at = f.env.call_count() + pick(300);
      f.env.InjectFault(fault_at, code,
                        persistent_fault
                            ? FaultInjectionEnv::FaultMode::kPersistent
                            : FaultInjectionEnv::FaultMode::kOnce);
      int next = 0;
      const int ops = 150;
      for (int op = 0; op < ops; ++op) {
        if (persistent_fault && heals && op == ops / 2) f.env.ClearFault();
        const uint64_t r = pick(100);
        if (r < 5) {
          const std::string name = "m" + std::to_string(next++);
          b->PublishAsync("", "q", Message(make_body(name)), Persistent(),
                          [&, name](absl::StatusOr<PublishOutcome> outcome) {
                            if (!outcome.ok()) return;
                            std::lock_guard<std::mutex> lock(confirmed_mu);
                            confirmed.insert(name);
                          });
        } else if (r < 7) {
          cq->Close();  // returns what it held
          held_q.clear();
          cq = b->Consume("q").value();
        } else if (r < 25) {
          const std::string name = "m" + std::to_string(next++);
          PublishOptions o = Persistent();
          if (pick(5) == 0) o.delay = absl::Seconds(1 + pick(3));
          Properties props;
          props.priority = static_cast<uint8_t>(pick(6));
          if (pick(4) == 0) props.expiration = absl::Seconds(pick(5));
          if (b->Publish("", "q", Message(make_body(name), std::move(props)), o)
                  .ok()) {
            std::lock_guard<std::mutex> lock(confirmed_mu);
            confirmed.insert(name);
          }
        } else if (r < 30) {
          std::vector<OutgoingMessage> batch;
          std::vector<std::string> names;
          for (int i = 0; i < 3; ++i) {
            names.push_back("m" + std::to_string(next++));
            batch.push_back({"q", Message(make_body(names.back()))});
          }
          auto res = b->PublishBatch("", std::move(batch), Persistent());
          REQUIRE(res.ok());
          std::lock_guard<std::mutex> lock(confirmed_mu);
          for (size_t i = 0; i < names.size(); ++i) {
            if ((*res)[i].ok()) confirmed.insert(names[i]);
          }
        } else if (r < 50) {
          auto d = cq->TryReceive();
          if (d.ok()) held_q.push_back(*std::move(d));
        } else if (r < 58) {
          auto d = cd->TryReceive();
          if (d.ok()) held_d.push_back(*std::move(d));
        } else if (r < 80 && !held_q.empty()) {
          const size_t i = pick(held_q.size());
          Delivery d = std::move(held_q[i]);
          held_q.erase(held_q.begin() + static_cast<ptrdiff_t>(i));
          const std::string body = NameOf(d.body());
          const uint64_t how = pick(4);
          if (how < 2) {
            if (cq->Ack(d).ok()) {
              acked.insert(body);
            } else {
              maybe_settled.insert(body);
            }
          } else {
            (void)cq->Nack(d, {.requeue = how == 2});
          }
        } else if (r < 88 && !held_d.empty()) {
          const size_t i = pick(held_d.size());
          Delivery d = std::move(held_d[i]);
          held_d.erase(held_d.begin() + static_cast<ptrdiff_t>(i));
          const std::string body = NameOf(d.body());
          if (pick(2) == 0) {
            if (cd->Ack(d).ok()) {
              acked.insert(body);
            } else {
              maybe_settled.insert(body);
            }
          } else {
            (void)cd->Nack(d, {.requeue = true});
          }
        } else if (r < 92) {
          (void)b->Redrive("dlq", {.max_messages = 1 + pick(3)});
        } else if (r < 94) {
          auto seen = b->Browse("dlq", 1000);
          REQUIRE(seen.ok());
          auto purged = b->PurgeQueue("dlq");
          for (const Message& m : *seen) {
            (purged.ok() ? acked : maybe_settled).insert(NameOf(m.body()));
          }
        } else {
          REQUIRE(f.clock.Advance(absl::Seconds(pick(3))).ok());
        }
      }
      if (heals) f.env.ClearFault();
      // A confirm that covers everything before it (when the disk is back).
      if (b->Publish("", "q", Message("after"), Persistent()).ok()) {
        std::lock_guard<std::mutex> lock(confirmed_mu);
        confirmed.insert("after");
      }
      f.env.SimulateCrash(kind);
    }
    CheckOneCopyOfEach(CountCopiesAfterCrash(f), confirmed, acked,
                       maybe_settled);
  }
}

TEST_CASE(
    "Random workloads under disk faults keep each message in at most one "
    "queue and every confirmed one after a crash",
    "[wal]") {
  RunRandomFaultWorkloads(40);
}

TEST_CASE("Random workloads under disk faults: 1000 seeds", "[wal][stress]") {
  RunRandomFaultWorkloads(1000);
}

TEST_CASE(
    "Damage in the middle of the log is kDataLoss with its byte range, "
    "or skipped on request",
    "[wal]") {
  Fixture f;
  f.options.wal_segment_bytes = 64 << 10;
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
    for (int i = 0; i < 200; ++i) {
      REQUIRE(b->Publish("", "q", Message(std::string(1000, 'x')), Persistent())
                  .ok());
    }
  }
  const std::string path = "/wal/000001.wal";
  std::string contents = f.env.GetContents(path).value();
  REQUIRE(contents.size() > 40000);
  contents[40000] ^= 0x5a;
  REQUIRE(f.env.SetContents(path, contents, true).ok());
  auto bad = f.Open();
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().code() == absl::StatusCode::kDataLoss);
  CHECK_THAT(std::string(bad.status().message()),
             Catch::Contains("000001.wal") && Catch::Contains("["));
  f.options.on_corruption = OnCorruption::kSkip;
  auto b = f.MustOpen();
  const uint64_t ready = b->GetQueueStats("q")->ready;
  CHECK(ready < 200);
  CHECK(ready >= 190);
  CHECK(b->Stats().wal.skipped_bytes > 0);
}

TEST_CASE(
    "Settled segments are deleted and sparse ones compacted, so the log "
    "follows live data",
    "[wal]") {
  Fixture f;
  f.options.wal_segment_bytes = 64 << 10;
  f.options.sync = SyncPolicy::kNever;
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
    // One old message stays live while many come and go.
    REQUIRE(b->Publish("", "q", Message("keeper"), Persistent()).ok());
    auto keep = b->Consume("q").value();
    auto held = keep->TryReceive().value();
    auto c = b->Consume("q").value();
    for (int i = 0; i < 2000; ++i) {
      REQUIRE(b->Publish("", "q", Message(std::string(500, 'y')), Persistent())
                  .ok());
      auto d = c->TryReceive().value();
      REQUIRE(c->Ack(d).ok());
    }
    REQUIRE(b->Publish("", "q", Message("last"),
                       {.persistent = true, .sync = SyncPolicy::kEveryPublish})
                .ok());
    const WalStats stats = b->Stats().wal;
    CHECK(stats.live_messages == 2);
    CHECK(stats.bytes > 1'000'000);
    // Segments whose messages were all settled went as the log grew (the
    // background deletes them after each new segment).
    CHECK(stats.segments < stats.bytes / (64 << 10));
    keep->Close();
  }
  // Whatever compaction had done by then, recovery finds exactly the live
  // messages.
  auto b = f.MustOpen();
  auto bodies = DrainBodies(*b, "q");
  CHECK(bodies == std::vector<std::string>{"keeper", "last"});
}

// Waits until the broker's log has at most `n` segment files (the log's
// background thread deletes and compacts them), for at most 10 s.
bool AwaitAtMostSegments(Broker& b, uint64_t n) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (b.Stats().wal.segments > n) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// Waits until the broker's log has compacted a segment, for at most 10 s.
bool AwaitCompaction(Broker& b) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (b.Stats().wal.compactions == 0) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// Publishes `n` persistent messages of about 1 KB to `queue` (one by one,
// or in one batch, which the log writes as one record) and returns their
// bodies.
std::vector<std::string> PublishBacklog(Broker& b, std::string_view queue,
                                        int n, bool batch = false) {
  std::vector<std::string> bodies;
  std::vector<OutgoingMessage> messages;
  for (int i = 0; i < n; ++i) {
    bodies.push_back(std::to_string(i) + std::string(1000, 'b'));
    if (batch) {
      messages.push_back({std::string(queue), Message(bodies.back())});
    } else {
      REQUIRE(b.Publish("", queue, Message(bodies.back()), Persistent()).ok());
    }
  }
  if (batch) {
    auto outcomes = b.PublishBatch("", std::move(messages), Persistent());
    REQUIRE(outcomes.ok());
    for (const auto& o : *outcomes) REQUIRE(o.ok());
  }
  return bodies;
}

TEST_CASE(
    "A backlog that fills the oldest segment does not keep the settled "
    "segments after it",
    "[wal]") {
  // The backlog published in one batch and recovered by a restart counts
  // no more than the same messages published one by one.
  const bool batch_and_restart = GENERATE(false, true);
  CAPTURE(batch_and_restart);
  Fixture f;
  f.options.wal_segment_bytes = 64 << 10;
  f.options.sync = SyncPolicy::kNever;
  std::vector<std::string> backlog;
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("backlog", {.durable = true}).ok());
    REQUIRE(b->DeclareQueue("work", {.durable = true}).ok());
    // About three quarters of the first segment, never consumed.
    backlog = PublishBacklog(*b, "backlog", 48, batch_and_restart);
    if (batch_and_restart) {
      b.reset();
      b = f.MustOpen();
    }
    // About 16 segments of messages that come and go.
    auto c = b->Consume("work").value();
    for (int i = 0; i < 2000; ++i) {
      REQUIRE(
          b->Publish("", "work", Message(std::string(500, 'w')), Persistent())
              .ok());
      auto d = c->TryReceive().value();
      REQUIRE(c->Ack(d).ok());
    }
    // The backlog is written again after them, and they go.
    const bool few = AwaitAtMostSegments(*b, 3);
    INFO("segments " << b->Stats().wal.segments);
    REQUIRE(few);
    CHECK(b->Stats().wal.compactions > 0);
  }
  auto b = f.MustOpen();
  CHECK(DrainBodies(*b, "backlog") == backlog);
  CHECK(DrainBodies(*b, "work").empty());
}

TEST_CASE("Restarts do not pile up segments behind a backlog", "[wal]") {
  Fixture f;
  f.options.wal_segment_bytes = 64 << 10;
  f.options.sync = SyncPolicy::kNever;
  std::vector<std::string> backlog;
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("backlog", {.durable = true}).ok());
    backlog = PublishBacklog(*b, "backlog", 40);
  }
  // Each open starts a segment of its own, which holds only a checkpoint.
  for (int i = 0; i < 6; ++i) f.MustOpen();
  auto b = f.MustOpen();
  const bool few = AwaitAtMostSegments(*b, 3);
  INFO("segments " << b->Stats().wal.segments);
  REQUIRE(few);
  CHECK(DrainBodies(*b, "backlog") == backlog);
}

TEST_CASE(
    "A dead-letter move that no queue takes keeps the message in its other "
    "queues through compaction and restarts",
    "[wal]") {
  // Whether the broker restarts between the move and the compaction that
  // frees segment 1 (replay then meets the move's record last).
  const bool restart_between = GENERATE(false, true);
  CAPTURE(restart_between);
  Fixture f;
  f.options.wal_segment_bytes = 64 << 10;
  f.options.sync = SyncPolicy::kNever;
  auto b = f.MustOpen();
  REQUIRE(b->DeclareQueue("filler", {.durable = true}).ok());
  // A full dead-letter queue refuses what q1 dead-letters.
  REQUIRE(b->DeclareQueue("dlq", {.durable = true, .max_length = 1}).ok());
  REQUIRE(b->Publish("", "dlq", Message("occupant"), Persistent()).ok());
  REQUIRE(b->DeclareQueue("q1", {.durable = true,
                                 .dead_letter_exchange = "",
                                 .dead_letter_routing_key = "dlq"})
              .ok());
  REQUIRE(b->DeclareQueue("q2", {.durable = true}).ok());
  REQUIRE(
      b->DeclareExchange("f", ExchangeType::kFanout, {.durable = true}).ok());
  REQUIRE(b->Bind("q1", "f", "").ok());
  REQUIRE(b->Bind("q2", "f", "").ok());
  REQUIRE(b->Publish("f", "", Message("M"), Persistent()).ok());
  // Segment 1 fills, and segment 2 starts.
  for (int i = 0; i < 20; ++i) {
    REQUIRE(
        b->Publish("", "filler", Message(std::string(4000, 'f')), Persistent())
            .ok());
  }
  auto c = b->Consume("q1").value();
  auto d = c->TryReceive().value();
  REQUIRE(c->Reject(d, {.requeue = false}).ok());
  c->Close();
  REQUIRE(b->GetQueueStats("q2")->ready == 1);
  // Segment 2, which holds the move's record, stays mostly live.
  REQUIRE(b->DeclareQueue("keep", {.durable = true}).ok());
  const std::vector<std::string> kept(2, std::string(20000, 'k'));
  for (const std::string& body : kept) {
    REQUIRE(b->Publish("", "keep", Message(body), Persistent()).ok());
  }
  if (restart_between) {
    b.reset();
    b = f.MustOpen();
  }
  // Segment 1's fillers go; segment 1 goes too, once M is written again if
  // it still needs it.
  REQUIRE(b->PurgeQueue("filler").ok());
  REQUIRE(AwaitAtMostSegments(*b, 2));
  b.reset();
  b = f.MustOpen();
  CHECK(DrainBodies(*b, "q2") == std::vector<std::string>{"M"});
  CHECK(DrainBodies(*b, "dlq") == std::vector<std::string>{"occupant"});
  CHECK(DrainBodies(*b, "keep") == kept);
}

TEST_CASE(
    "The bindings of a deleted exchange stay deleted after a checkpoint and a "
    "restart",
    "[wal]") {
  Fixture f;
  f.options.wal_segment_bytes = 64 << 10;
  {
    auto b = f.MustOpen();
    const ExchangeOptions durable{.durable = true};
    REQUIRE(b->DeclareExchange("x", ExchangeType::kDirect, durable).ok());
    REQUIRE(b->DeclareExchange("src", ExchangeType::kDirect, durable).ok());
    REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
    // x is the source of one binding and the destination of another.
    REQUIRE(b->Bind("q", "x", "k").ok());
    REQUIRE(b->BindExchange("x", "src", "d").ok());
    REQUIRE(b->DeleteExchange("x").ok());
    REQUIRE(b->DeclareExchange("x", ExchangeType::kDirect, durable).ok());
    REQUIRE(b->Bind("q", "x", "d").ok());
    // Segment 1 fills (each publish waits for its sync), and segment 2
    // starts with a checkpoint of the topology; segment 1 may go.
    for (int i = 0; i < 20; ++i) {
      REQUIRE(b->Publish("", "q", Message(std::string(4000, 'f')), Persistent())
                  .ok());
    }
    REQUIRE(b->PurgeQueue("q").ok());
  }
  auto b = f.MustOpen();
  CHECK(b->Publish("x", "k", Message("m"))->queues == 0);
  CHECK(b->Publish("src", "d", Message("m"))->queues == 0);
  CHECK(b->Publish("x", "d", Message("m"))->queues == 1);
}

TEST_CASE(
    "A message held at its last allowed delivery when the process dies is "
    "dead-lettered at the restart",
    "[wal]") {
  // The limit as a delivery limit, or as a retry policy's max_attempts.
  const bool retry = GENERATE(false, true);
  CAPTURE(retry);
  Fixture f;
  QueueOptions work{.durable = true,
                    .dead_letter_exchange = "",
                    .dead_letter_routing_key = "dlq"};
  if (retry) {
    work.retry = RetryPolicy{.max_attempts = 2, .backoff = Backoff::kFixed};
  } else {
    work.delivery_limit = 2;
  }
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("dlq", {.durable = true}).ok());
    REQUIRE(b->DeclareQueue("work", work).ok());
    REQUIRE(b->Publish("", "work", Message("m"), Persistent()).ok());
    auto c = b->Consume("work").value();
    REQUIRE(c->Nack(c->TryReceive().value()).ok());
    REQUIRE(f.clock.Advance(absl::Seconds(1)).ok());  // the retry's delay
    auto held = c->TryReceive();
    REQUIRE(held.ok());
    REQUIRE(held->attempt() == 2);
    // The process dies with the second (last) delivery unsettled: nothing
    // it does after that reaches the files.
    REQUIRE(b->Publish("", "dlq", Message("synced"), Persistent()).ok());
    f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kProcess);
    f.env.InjectFault(f.env.call_count(), absl::StatusCode::kUnavailable,
                      FaultInjectionEnv::FaultMode::kPersistent);
  }
  f.env.ClearFault();
  auto b = f.MustOpen();
  CHECK(b->GetQueueStats("work")->ready == 0);
  CHECK(b->GetQueueStats("work")->delayed == 0);
  CHECK(DrainBodies(*b, "dlq") == std::vector<std::string>{"synced", "m"});
}

TEST_CASE("Deduplication ids survive a restart", "[wal]") {
  Fixture f;
  const QueueOptions q{.durable = true, .dedup_window = absl::Minutes(5)};
  Message m("once");
  m.properties().message_id = "order-42";
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("q", q).ok());
    REQUIRE(b->Publish("", "q", m, Persistent()).ok());
    REQUIRE(DrainBodies(*b, "q").size() == 1);
  }
  auto b = f.MustOpen();
  auto again = b->Publish("", "q", m, Persistent());
  REQUIRE(again.ok());
  CHECK(again->duplicates == 1);
  REQUIRE(f.clock.Advance(absl::Minutes(6)).ok());
  auto later = b->Publish("", "q", m, Persistent());
  REQUIRE(later.ok());
  CHECK(later->duplicates == 0);
}

// Publishes a persistent message with deduplication id `id` to queue "q" and
// returns how many queues found it a duplicate (-1 on error).
int PublishWithId(Broker& b, const std::string& id) {
  Message m("body of " + id);
  m.properties().message_id = id;
  auto r = b.Publish("", "q", std::move(m), Persistent());
  return r.ok() ? static_cast<int>(r->duplicates) : -1;
}

// With a publish of a second message into the full kBlock queue "q" (which
// holds one) waiting for room: once its record is logged (at 0 s) and it
// waits, moves the clock to 5 s and acks the first message, so the queue
// takes the second then (its window, if any, counted from there).
void MakeRoomAtFiveSeconds(Fixture& f, Broker& b) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(10);
  auto waiting = [&] {
    return b.Stats().wal.live_messages == 2 &&
           b.GetQueueStats("q")->blocked_publishers == 1;
  };
  while (!waiting() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::yield();
  }
  REQUIRE(waiting());
  REQUIRE(f.clock.Advance(absl::Seconds(5)).ok());
  auto c = b.Consume("q").value();
  auto d = c->TryReceive().value();
  REQUIRE(c->Ack(d).ok());
}

TEST_CASE("After a restart deduplication windows end when they did before it",
          "[wal]") {
  // With a checkpoint between the publishes and the restart (a new segment
  // holds the windows as kDedup ops), or with the publishes replayed.
  const bool checkpoint = GENERATE(false, true);
  CAPTURE(checkpoint);
  Fixture f;
  f.options.wal_segment_bytes = 64 << 10;
  const QueueOptions q{.durable = true, .dedup_window = absl::Seconds(10)};
  // Fills more than a segment, through queue "filler".
  auto fill = [&](Broker& b) {
    REQUIRE(b.DeclareQueue("filler", {.durable = true}).ok());
    for (int i = 0; i < 20; ++i) {
      REQUIRE(
          b.Publish("", "filler", Message(std::string(4000, 'f')), Persistent())
              .ok());
    }
  };
  auto roll = [&](Broker& b) {
    if (checkpoint) fill(b);
  };
  SECTION("windows that end out of order are forgotten in time") {
    {
      auto b = f.MustOpen();
      REQUIRE(b->DeclareQueue("q", q).ok());
      REQUIRE(PublishWithId(*b, "b") == 0);  // window ends at 10 s
      REQUIRE(f.clock.Advance(absl::Seconds(5)).ok());
      REQUIRE(PublishWithId(*b, "a") == 0);  // window ends at 15 s
      roll(*b);
    }
    auto b = f.MustOpen();
    REQUIRE(f.clock.Advance(absl::Seconds(7)).ok());  // 12 s
    CHECK(PublishWithId(*b, "b") == 0);
    CHECK(PublishWithId(*b, "a") == 1);
  }
  SECTION("a duplicate does not extend the window") {
    {
      auto b = f.MustOpen();
      REQUIRE(b->DeclareQueue("q", q).ok());
      REQUIRE(PublishWithId(*b, "x") == 0);  // window ends at 10 s
      REQUIRE(f.clock.Advance(absl::Seconds(8)).ok());
      REQUIRE(PublishWithId(*b, "x") == 1);
      roll(*b);
    }
    auto b = f.MustOpen();
    REQUIRE(f.clock.Advance(absl::Seconds(4)).ok());  // 12 s
    CHECK(PublishWithId(*b, "x") == 0);
  }
  SECTION("a publish after the window ended starts a new one") {
    {
      auto b = f.MustOpen();
      REQUIRE(b->DeclareQueue("q", q).ok());
      REQUIRE(PublishWithId(*b, "x") == 0);  // window ends at 10 s
      REQUIRE(f.clock.Advance(absl::Seconds(12)).ok());
      REQUIRE(PublishWithId(*b, "x") == 0);  // window ends at 22 s
      REQUIRE(PublishWithId(*b, "x") == 1);
      roll(*b);
    }
    auto b = f.MustOpen();
    REQUIRE(f.clock.Advance(absl::Seconds(3)).ok());  // 15 s
    CHECK(PublishWithId(*b, "x") == 1);
  }
  SECTION("a message compacted after a renewal keeps the later window") {
    {
      auto b = f.MustOpen();
      REQUIRE(b->DeclareQueue("q", q).ok());
      REQUIRE(PublishWithId(*b, "x") == 0);  // window ends at 10 s
      fill(*b);
      REQUIRE(f.clock.Advance(absl::Seconds(15)).ok());
      REQUIRE(PublishWithId(*b, "x") == 0);  // a new window, ends at 25 s
      // The first segment, now mostly settled, is compacted: the first "x"
      // is written again, with its publish time of 0 s, after the second.
      REQUIRE(b->PurgeQueue("filler").ok());
      REQUIRE(AwaitCompaction(*b));
    }
    auto b = f.MustOpen();
    REQUIRE(f.clock.Advance(absl::Seconds(1)).ok());  // 16 s
    CHECK(PublishWithId(*b, "x") == 1);
    CHECK(b->GetQueueStats("q")->ready == 2);
  }
  SECTION("a dead letter whose redrive no queue takes keeps the later window") {
    {
      auto b = f.MustOpen();
      REQUIRE(b->DeclareQueue("q", q).ok());
      REQUIRE(b->DeclareQueue("src", {.durable = true,
                                      .dead_letter_exchange = "",
                                      .dead_letter_routing_key = "q"})
                  .ok());
      REQUIRE(b->DeclareQueue("full", {.durable = true, .max_length = 1}).ok());
      REQUIRE(b->Publish("", "full", Message("occupant"), Persistent()).ok());
      auto die = [&] {
        Message m("body of x");
        m.properties().message_id = "x";
        REQUIRE(b->Publish("", "src", std::move(m), Persistent()).ok());
        auto c = b->Consume("src").value();
        auto d = c->TryReceive().value();
        REQUIRE(c->Reject(d, {.requeue = false}).ok());
      };
      die();  // window ends at 10 s
      REQUIRE(f.clock.Advance(absl::Seconds(15)).ok());
      die();  // a new window, ends at 25 s
      REQUIRE(b->GetQueueStats("q")->ready == 2);
      // "full" refuses the first: it is logged again, with its publish time.
      auto moved = b->Redrive("q", {.to_queue = "full", .max_messages = 1});
      REQUIRE(moved.ok());
      REQUIRE(*moved == 0);
      roll(*b);
      REQUIRE(b->DeclareQueue("fence", {.durable = true}).ok());
      REQUIRE(b->Publish("", "fence", Message("fence"), Persistent()).ok());
    }
    auto b = f.MustOpen();
    REQUIRE(f.clock.Advance(absl::Seconds(1)).ok());  // 16 s
    CHECK(PublishWithId(*b, "x") == 1);
    CHECK(b->GetQueueStats("q")->ready == 2);
  }
  SECTION("a publish that waited for room starts its window when taken") {
    {
      auto b = f.MustOpen();
      QueueOptions blocking = q;
      blocking.max_length = 1;
      blocking.overflow = Overflow::kBlock;
      REQUIRE(b->DeclareQueue("q", blocking).ok());
      REQUIRE(b->Publish("", "q", Message("first"), Persistent()).ok());
      std::atomic<int> duplicates{-2};
      std::thread publisher([&] { duplicates = PublishWithId(*b, "x"); });
      MakeRoomAtFiveSeconds(f, *b);
      publisher.join();
      REQUIRE(duplicates == 0);
      roll(*b);
      REQUIRE(b->DeclareQueue("fence", {.durable = true}).ok());
      REQUIRE(b->Publish("", "fence", Message("fence"), Persistent()).ok());
    }
    auto b = f.MustOpen();
    CHECK(DrainBodies(*b, "q") == std::vector<std::string>{"body of x"});
    REQUIRE(f.clock.Advance(absl::Seconds(7)).ok());  // 12 s
    CHECK(PublishWithId(*b, "x") == 1);
  }
  SECTION("the id of a refused publish is not remembered") {
    {
      auto b = f.MustOpen();
      QueueOptions full = q;
      full.max_length = 1;
      REQUIRE(b->DeclareQueue("q", full).ok());
      REQUIRE(PublishWithId(*b, "m1") == 0);
      Message m2("m2");
      m2.properties().message_id = "m2";
      REQUIRE(absl::IsResourceExhausted(
          b->Publish("", "q", std::move(m2), Persistent()).status()));
      roll(*b);
    }
    auto b = f.MustOpen();
    REQUIRE(DrainBodies(*b, "q").size() == 1);
    CHECK(PublishWithId(*b, "m2") == 0);
    CHECK(b->GetQueueStats("q")->ready == 1);
  }
}

TEST_CASE(
    "Sync policies: every publish syncs alone, group commit shares, "
    "never only writes",
    "[wal]") {
  auto syncs_for = [](SyncPolicy policy) {
    Fixture f;
    f.options.sync = policy;
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
    const uint64_t before = b->Stats().wal.syncs;
    for (int i = 0; i < 20; ++i) {
      REQUIRE(b->Publish("", "q", Message("m"), Persistent()).ok());
    }
    return b->Stats().wal.syncs - before;
  };
  CHECK(syncs_for(SyncPolicy::kNever) == 0);
  CHECK(syncs_for(SyncPolicy::kEveryPublish) == 20);
  CHECK(syncs_for(SyncPolicy::kGroupCommit) <= 20);
  CHECK(syncs_for(SyncPolicy::kGroupCommit) >= 1);

  // A per-publish override on a kNever broker syncs that one.
  Fixture f;
  f.options.sync = SyncPolicy::kNever;
  auto b = f.MustOpen();
  REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
  REQUIRE(b->Publish("", "q", Message("important"),
                     {.persistent = true, .sync = SyncPolicy::kEveryPublish})
              .ok());
  f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kPowerLoss);
  b.reset();
  auto r = f.MustOpen();
  CHECK(DrainBodies(*r, "q") == std::vector<std::string>{"important"});
}

TEST_CASE(
    "Under kInterval a record its own publisher wrote is synced within the "
    "interval although nothing follows it",
    "[wal]") {
  Fixture f;
  f.options.sync = SyncPolicy::kInterval;
  f.options.sync_interval = absl::Milliseconds(200);
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
    for (int i = 0; i < 3; ++i) {
      CAPTURE(i);
      // Everything so far is synced by a publish with a sync of its own,
      // whose confirm runs on the log's thread; that thread then has nothing
      // left to sync.
      PublishOptions own = Persistent();
      own.sync = SyncPolicy::kEveryPublish;
      std::promise<bool> synced;
      b->PublishAsync(
          "", "q", Message("own"), own,
          [&](absl::StatusOr<PublishOutcome> r) { synced.set_value(r.ok()); });
      REQUIRE(synced.get_future().get());
      const uint64_t syncs = b->Stats().wal.syncs;
      // Confirmed once written to the OS (by this thread); the policy
      // promises a sync within about one interval (200 ms).
      REQUIRE(b->Publish("", "q", Message("p"), Persistent()).ok());
      const auto deadline =
          std::chrono::steady_clock::now() + std::chrono::seconds(2);
      while (b->Stats().wal.syncs == syncs &&
             std::chrono::steady_clock::now() < deadline) {
        std::this_thread::yield();
      }
      CHECK(b->Stats().wal.syncs > syncs);
    }
    // Ten intervals after the last publish the power goes; nothing the dead
    // process does after that reaches the files.
    f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kPowerLoss);
    f.env.InjectFault(f.env.call_count(), absl::StatusCode::kUnavailable,
                      FaultInjectionEnv::FaultMode::kPersistent);
  }
  f.env.ClearFault();
  auto b = f.MustOpen();
  CHECK(DrainBodies(*b, "q").size() == 6);
}

TEST_CASE(
    "Purged persistent messages stay purged after a power loss under group "
    "commit",
    "[wal]") {
  Fixture f;  // kGroupCommit
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
    for (const char* body : {"a", "b", "c"}) {
      REQUIRE(b->Publish("", "q", Message(body), Persistent()).ok());
    }
    REQUIRE(b->PurgeQueue("q").value() == 3);
    // The power goes; nothing the dead process does after that reaches the
    // files.
    f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kPowerLoss);
    f.env.InjectFault(f.env.call_count(), absl::StatusCode::kUnavailable,
                      FaultInjectionEnv::FaultMode::kPersistent);
  }
  f.env.ClearFault();
  auto b = f.MustOpen();
  CHECK(DrainBodies(*b, "q").empty());
}

TEST_CASE("Concurrent group-commit publishers share syncs and lose nothing",
          "[wal]") {
  Fixture f;
  f.options.sync = SyncPolicy::kGroupCommit;
  auto b = f.MustOpen();
  REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
  const uint64_t before = b->Stats().wal.syncs;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        REQUIRE(
            b->Publish("", "q", Message(std::to_string(t)), Persistent()).ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(b->Stats().wal.syncs - before <= 800);
  f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kPowerLoss);
  b.reset();
  auto r = f.MustOpen();
  CHECK(r->GetQueueStats("q")->ready == 800);
}

// A clock that reads `now` and, once armed, moves on by `jump` right after
// its next read: a clock that moves between two reads of one publish.
// Thread-safe. Not manual: nothing waits on it in the test that uses it.
class JumpingClock final : public Clock {
 public:
  explicit JumpingClock(absl::Time now) : now_(now) {}
  absl::Time Now() const override {
    std::lock_guard<std::mutex> lock(mu_);
    const absl::Time t = now_;
    now_ += jump_;
    jump_ = absl::ZeroDuration();
    return t;
  }
  void ArmJump(absl::Duration jump) {
    std::lock_guard<std::mutex> lock(mu_);
    jump_ = jump;
  }
  void Set(absl::Time now) {
    std::lock_guard<std::mutex> lock(mu_);
    now_ = now;
  }

 private:
  mutable std::mutex mu_;
  mutable absl::Time now_;
  mutable absl::Duration jump_ = absl::ZeroDuration();
};

TEST_CASE(
    "A deduplication window runs from the publish in memory as in the log "
    "even when the clock moves during the publish",
    "[wal]") {
  // The publish's record counts the window from the publish's time, which
  // the queue must too: a restart restores the record's window, and the
  // queue's must not differ from it.
  const bool restart = GENERATE(false, true);
  CAPTURE(restart);
  FaultInjectionEnv env;
  const absl::Time t0 = absl::FromUnixSeconds(1'700'000'000);
  JumpingClock clock(t0);
  BrokerOptions options;
  options.wal_dir = kDir;
  options.clock = &clock;
  auto b = internal::OpenBroker(options, &env).value();
  REQUIRE(
      b->DeclareQueue("q", {.durable = true, .dedup_window = absl::Seconds(10)})
          .ok());
  // The publish reads the clock at t0 and again (as the queue takes the
  // message) at t0 + 5 s.
  clock.ArmJump(absl::Seconds(5));
  REQUIRE(PublishWithId(*b, "x") == 0);
  REQUIRE(clock.Now() == t0 + absl::Seconds(5));
  if (restart) {
    b->Close();
    b.reset();
    b = internal::OpenBroker(options, &env).value();
  }
  clock.Set(t0 + absl::Seconds(9));
  CHECK(PublishWithId(*b, "x") == 1);
  clock.Set(t0 + absl::Seconds(12));
  CHECK(PublishWithId(*b, "x") == 0);
}

TEST_CASE(
    "A publish that waited for room is confirmed once its deduplication "
    "window is durable",
    "[wal]") {
  const bool async = GENERATE(false, true);
  CAPTURE(async);
  Fixture f;
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("q", {.durable = true,
                                  .max_length = 1,
                                  .overflow = Overflow::kBlock,
                                  .dedup_window = absl::Seconds(10)})
                .ok());
    REQUIRE(b->Publish("", "q", Message("first"), Persistent()).ok());
    // The confirm, however it comes: how many queues saw a duplicate.
    std::atomic<int> duplicates{-2};
    std::thread publisher([&] {
      Message m("body of x");
      m.properties().message_id = "x";
      if (!async) {
        auto r = b->Publish("", "q", std::move(m), Persistent());
        duplicates = r.ok() ? static_cast<int>(r->duplicates) : -1;
        return;
      }
      std::promise<int> confirmed;
      b->PublishAsync(
          "", "q", std::move(m), Persistent(),
          [&](absl::StatusOr<PublishOutcome> r) {
            confirmed.set_value(r.ok() ? static_cast<int>(r->duplicates) : -1);
          });
      duplicates = confirmed.get_future().get();
    });
    MakeRoomAtFiveSeconds(f, *b);
    publisher.join();
    REQUIRE(duplicates == 0);
    // Nothing else is synced after the confirm.
    f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kPowerLoss);
  }
  auto b = f.MustOpen();
  REQUIRE(DrainBodies(*b, "q").size() >= 1);
  REQUIRE(f.clock.Advance(absl::Seconds(7)).ok());  // 12 s
  CHECK(PublishWithId(*b, "x") == 1);
}

TEST_CASE(
    "A synchronous persistent publish that waits for room in a full queue "
    "has its record synced while it waits",
    "[wal]") {
  Fixture f;
  auto b = f.MustOpen();
  REQUIRE(b->DeclareQueue(
               "q",
               {.durable = true, .max_length = 1, .overflow = Overflow::kBlock})
              .ok());
  REQUIRE(b->Publish("", "q", Message("first"), Persistent()).ok());
  const uint64_t syncs = b->Stats().wal.syncs;
  absl::StatusOr<PublishOutcome> waited;
  std::thread publisher(
      [&] { waited = b->Publish("", "q", Message("second"), Persistent()); });
  // Nothing else writes to the log: its sync is the publisher's own.
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (b->Stats().wal.syncs == syncs &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::yield();
  }
  CHECK(b->Stats().wal.syncs > syncs);
  CHECK(b->GetQueueStats("q")->ready == 1);  // still waiting for room
  auto c = b->Consume("q").value();
  REQUIRE(c->Ack(c->Receive(absl::Seconds(30)).value()).ok());  // makes room
  publisher.join();
  REQUIRE(waited.ok());
  CHECK(waited->queues == 1);
  CHECK(c->Receive(absl::Seconds(30)).value().body() == "second");
}

TEST_CASE("PublishAsync confirms through a future and a callback", "[wal]") {
  Fixture f;
  auto b = f.MustOpen();
  REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
  auto future = b->PublishAsync("", "q", Message("f"), Persistent());
  std::atomic<int> called{0};
  std::promise<void> done;
  b->PublishAsync("", "q", Message("cb"), Persistent(),
                  [&](absl::StatusOr<PublishOutcome> r) {
                    CHECK(r.ok());
                    called.fetch_add(1);
                    done.set_value();
                  });
  auto r = future.get();
  REQUIRE(r.ok());
  CHECK(r->queues == 1);
  done.get_future().wait();
  CHECK(called.load() == 1);
  // Errors come back through the callback too.
  auto missing = b->PublishAsync("nope", "q", Message("x"), Persistent());
  CHECK(missing.get().status().code() == absl::StatusCode::kNotFound);
  // No callback at all: the publish happens, its outcome is dropped (with a
  // failure too).
  b->PublishAsync("", "q", Message("nobody waits"), Persistent(), nullptr);
  b->PublishAsync("nope", "q", Message("x"), Persistent(), nullptr);
  CHECK(b->GetQueueStats("q")->ready == 3);
}

TEST_CASE(
    "PublishAsync hands a disk error to its callback and confirms only what "
    "is durable",
    "[wal]") {
  for (uint64_t index = 0; index < 12; ++index) {
    CAPTURE(index);
    Fixture f;
    std::set<std::string> confirmed;
    int failures = 0;
    {
      auto b = f.MustOpen();
      REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
      f.env.InjectFault(f.env.call_count() + index,
                        absl::StatusCode::kResourceExhausted);
      std::vector<std::future<absl::StatusOr<PublishOutcome>>> outcomes;
      std::vector<std::string> bodies;
      for (int i = 0; i < 8; ++i) {
        bodies.push_back(std::to_string(i));
        std::promise<absl::StatusOr<PublishOutcome>> p;
        outcomes.push_back(p.get_future());
        b->PublishAsync(
            "", "q", Message(bodies.back()), Persistent(),
            [p = std::move(p)](absl::StatusOr<PublishOutcome> r) mutable {
              p.set_value(std::move(r));
            });
      }
      for (size_t i = 0; i < outcomes.size(); ++i) {
        absl::StatusOr<PublishOutcome> r = outcomes[i].get();
        if (r.ok()) {
          CHECK(r->queues == 1);
          confirmed.insert(bodies[i]);
        } else {
          ++failures;
          CHECK(r.status().code() == absl::StatusCode::kResourceExhausted);
        }
      }
      f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kPowerLoss);
    }
    f.env.ClearFault();
    auto b = f.MustOpen();
    std::set<std::string> present;
    for (auto& s : DrainBodies(*b, "q")) present.insert(s);
    for (const std::string& s : confirmed) CHECK(present.contains(s));
    if (index == 0) CHECK(failures > 0);
  }
}

TEST_CASE("Durable queues refuse a custom backoff, which cannot be logged",
          "[wal]") {
  Fixture f;
  auto b = f.MustOpen();
  RetryPolicy retry;
  retry.backoff = Backoff::kCustom;
  retry.custom = [](uint32_t, const Message&) { return absl::Seconds(1); };
  auto s = b->DeclareQueue("q", {.durable = true, .retry = retry});
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(b->GetQueueStats("q").status().code() == absl::StatusCode::kNotFound);
  // Set but unused (another backoff) it still counts when the queue is
  // redeclared, and would be missing after a restart: refused too.
  RetryPolicy unused = retry;
  unused.backoff = Backoff::kFixed;
  s = b->DeclareQueue("q", {.durable = true, .retry = unused});
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(b->GetQueueStats("q").status().code() == absl::StatusCode::kNotFound);
  // Without a WAL there is nothing to log: allowed.
  auto mem = Broker::Open().value();
  CHECK(mem->DeclareQueue("q", {.durable = true, .retry = retry}).ok());
}

TEST_CASE(
    "Durable queues refuse durations finer than the microseconds the log "
    "keeps",
    "[wal]") {
  Fixture f;
  RetryPolicy retry;
  retry.initial_delay = absl::Nanoseconds(1500);
  const std::vector<QueueOptions> bad = {
      {.durable = true, .message_ttl = absl::Nanoseconds(1500)},
      {.durable = true, .ack_deadline = absl::Nanoseconds(999)},
      {.durable = true,
       .dedup_window = absl::Seconds(1) + absl::Nanoseconds(1)},
      {.durable = true, .expires = absl::Nanoseconds(1)},
      {.durable = true, .retry = retry},
  };
  {
    auto b = f.MustOpen();
    for (const QueueOptions& o : bad) {
      auto s = b->DeclareQueue("q", o);
      CHECK(s.code() == absl::StatusCode::kInvalidArgument);
      CHECK(b->GetQueueStats("q").status().code() ==
            absl::StatusCode::kNotFound);
      // Transient queues are never logged: allowed.
      QueueOptions transient = o;
      transient.durable = false;
      CHECK(b->DeclareQueue("t", transient).ok());
      REQUIRE(b->DeleteQueue("t").ok());
    }
    REQUIRE(b->DeclareQueue("q", {.durable = true,
                                  .message_ttl = absl::Microseconds(1500)})
                .ok());
  }
  // What was accepted comes back exactly: redeclaring it is no change.
  auto b = f.MustOpen();
  CHECK(b->DeclareQueue(
             "q", {.durable = true, .message_ttl = absl::Microseconds(1500)})
            .ok());
}

TEST_CASE("Bad WAL options are refused", "[wal]") {
  Fixture f;
  f.options.wal_segment_bytes = 1000;
  CHECK(f.Open().status().code() == absl::StatusCode::kInvalidArgument);
  f.options.wal_segment_bytes = 1 << 20;
  f.options.sync = SyncPolicy::kInterval;
  f.options.sync_interval = absl::ZeroDuration();
  CHECK(f.Open().status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("The POSIX WAL survives a restart, with 0600 files", "[wal]") {
  char tmpl[] = "/tmp/warren-wal-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::string dir = std::string(tmpl) + "/log";
  {
    auto b = Broker::Open({.wal_dir = dir}).value();
    REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
    REQUIRE(b->Publish("", "q", Message("kept"), Persistent()).ok());
    CHECK(Broker::Open({.wal_dir = dir}).status().code() ==
          absl::StatusCode::kFailedPrecondition);
  }
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const auto perms = entry.status().permissions();
    CHECK((perms & (std::filesystem::perms::group_all |
                    std::filesystem::perms::others_all)) ==
          std::filesystem::perms::none);
  }
  {
    auto b = Broker::Open({.wal_dir = dir}).value();
    CHECK(DrainBodies(*b, "q") == std::vector<std::string>{"kept"});
  }
  std::filesystem::remove_all(tmpl);
}

TEST_CASE(
    "A missing oldest segment is kDataLoss naming it, never a silent loss",
    "[wal]") {
  Fixture f;
  // Large enough that compaction leaves its segment in place.
  const std::string big(16 << 10, 'x');
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
    REQUIRE(b->Publish("", "q", Message("a" + big), Persistent()).ok());
  }
  // Each open starts a segment of its own.
  SECTION("the first segment of the log, which holds a live message") {
    CHECK(f.MustOpen()->GetQueueStats("q")->ready == 1);
  }
  SECTION("the oldest segment left after older ones were deleted") {
    {
      auto b = f.MustOpen();
      CHECK(DrainBodies(*b, "q") == std::vector<std::string>{"a" + big});
      REQUIRE(b->Publish("", "q", Message("b" + big), Persistent()).ok());
    }
    {
      // Segment 1, all settled, is deleted in the background.
      auto b = f.MustOpen();
      const absl::Time deadline = absl::Now() + absl::Seconds(30);
      while (f.env.FileExists("/wal/000001.wal") && absl::Now() < deadline) {
        std::this_thread::yield();
      }
      REQUIRE_FALSE(f.env.FileExists("/wal/000001.wal"));
    }
    // Segments the log deleted itself are not missing.
    CHECK(f.MustOpen()->GetQueueStats("q")->ready == 1);
  }
  std::vector<std::string> segments = f.env.GetChildren("/wal").value();
  std::erase_if(segments, [](const std::string& name) {
    return !name.ends_with(".wal");
  });
  std::sort(segments.begin(), segments.end());
  REQUIRE(segments.size() >= 2);
  const std::string missing = "/wal/" + segments.front();
  REQUIRE(f.env.RemoveFile(missing).ok());
  REQUIRE(f.env.SyncDir("/wal").ok());
  auto b = f.Open();
  REQUIRE_FALSE(b.ok());
  CHECK(b.status().code() == absl::StatusCode::kDataLoss);
  CHECK_THAT(std::string(b.status().message()), Catch::Contains(missing));
}

TEST_CASE(
    "Persistent message times around the Unix epoch and at the ends of "
    "their range come back exact",
    "[wal]") {
  const absl::Time at = absl::FromUnixMicros(
      GENERATE(int64_t{-1}, int64_t{0}, int64_t{1}, int64_t{1'000'000},
               std::numeric_limits<int64_t>::min(),
               std::numeric_limits<int64_t>::max() - 1));
  Fixture f;
  Properties p;
  p.timestamp = at;
  {
    auto b = f.MustOpen();
    REQUIRE(b->DeclareQueue("q", {.durable = true}).ok());
    REQUIRE(b->Publish("", "q", Message("m", p), Persistent()).ok());
  }
  auto b = f.MustOpen();
  auto c = b->Consume("q").value();
  auto d = c->TryReceive();
  REQUIRE(d.ok());
  REQUIRE(d->properties().timestamp.has_value());
  CHECK(*d->properties().timestamp == at);
}

TEST_CASE(
    "An unconfirmed publish retried after a crash is never taken for a "
    "duplicate of itself when a new segment began before it was written",
    "[wal]") {
  // A new segment's checkpoint carries the deduplication windows. Failing
  // every call from the segment's start on, in turn, then crashing: the
  // retried publish must leave exactly one copy, never none.
  for (const auto kind : {FaultInjectionEnv::CrashKind::kProcess,
                          FaultInjectionEnv::CrashKind::kPowerLoss}) {
    for (uint64_t index = 0; index < 16; ++index) {
      CAPTURE(static_cast<int>(kind), index);
      Fixture f;
      f.options.wal_segment_bytes = 64 << 10;
      const QueueOptions options{.durable = true,
                                 .dedup_window = absl::Hours(1)};
      Message m("once");
      m.properties().message_id = "m";
      {
        auto b = f.MustOpen();
        REQUIRE(b->DeclareQueue("q", options).ok());
        REQUIRE(b->DeclareQueue("fill", {.durable = true}).ok());
        // Fills segment 1: the next write starts segment 2.
        REQUIRE(b->Publish("", "fill", Message(std::string(70 << 10, 'f')),
                           Persistent())
                    .ok());
        f.env.InjectFault(f.env.call_count() + index,
                          absl::StatusCode::kResourceExhausted,
                          FaultInjectionEnv::FaultMode::kPersistent);
        auto first = b->Publish("", "q", m, Persistent());
        f.env.SimulateCrash(kind);
        if (first.ok()) {
          CHECK(first->duplicates == 0);
        }
      }
      f.env.ClearFault();
      auto b = f.MustOpen();
      REQUIRE(b->DeclareQueue("q", options).ok());
      auto again = b->Publish("", "q", m, Persistent());
      REQUIRE(again.ok());
      CHECK(DrainBodies(*b, "q") == std::vector<std::string>{"once"});
    }
  }
}

}  // namespace
}  // namespace warren
