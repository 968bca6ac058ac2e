// Exchanges and routing through the broker (SEMANTICS.md section 2).

#include <catch2/catch.hpp>
#include <map>
#include <set>
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

TEST_CASE(
    "Direct exchange routes to queues whose binding key equals the "
    "routing key") {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("d", ExchangeType::kDirect).ok());
  REQUIRE(b->DeclareQueue("q1").ok());
  REQUIRE(b->DeclareQueue("q2").ok());
  REQUIRE(b->Bind("q1", "d", "red").ok());
  REQUIRE(b->Bind("q2", "d", "green").ok());
  REQUIRE(b->Bind("q2", "d", "red").ok());

  auto out = Send(*b, "d", "red", "r");
  REQUIRE(out.ok());
  CHECK(out->queues == 2);
  REQUIRE(Send(*b, "d", "green", "g").ok());
  REQUIRE(Send(*b, "d", "blue", "b").ok());
  CHECK(Drain(*b, "q1") == std::vector<std::string>{"r"});
  CHECK(Drain(*b, "q2") == std::vector<std::string>{"r", "g"});
}

TEST_CASE("Fanout exchange routes to every bound queue and ignores keys") {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("f", ExchangeType::kFanout).ok());
  for (const char* q : {"a", "b", "c"}) {
    REQUIRE(b->DeclareQueue(q).ok());
    REQUIRE(b->Bind(q, "f", q).ok());
  }
  auto out = Send(*b, "f", "anything", "x");
  REQUIRE(out.ok());
  CHECK(out->queues == 3);
  for (const char* q : {"a", "b", "c"}) CHECK(Ready(*b, q) == 1);
}

TEST_CASE("Topic exchange routes the RabbitMQ acceptance vector exactly") {
  // SEMANTICS.md section 2, from rabbitmq-server routing_SUITE topic1.
  const std::map<std::string, std::string> bindings = {{"t1", "a.b.c"},
                                                       {"t2", "a.*.c"},
                                                       {"t3", "a.#.b"},
                                                       {"t4", "a.b.b.c"},
                                                       {"t5", "#"},
                                                       {"t6", "#.#"},
                                                       {"t7", "#.b"},
                                                       {"t8", "*.*"},
                                                       {"t9", "a.*"},
                                                       {"t10", "*.b.c"},
                                                       {"t11", "a.#"},
                                                       {"t12", "a.#.#"},
                                                       {"t13", "b.b.c"},
                                                       {"t14", "a.b.b"},
                                                       {"t15", "a.b"},
                                                       {"t16", "b.c"},
                                                       {"t17", ""},
                                                       {"t18", "*.*.*"},
                                                       {"t19", "vodka.martini"},
                                                       {"t20", "a.b.c"},
                                                       {"t21", "*.#"},
                                                       {"t22", "#.*.#"},
                                                       {"t23", "*.#.#"},
                                                       {"t25", "*"},
                                                       {"t26", "#.b.#"}};
  const std::vector<std::pair<std::string, std::set<std::string>>> cases = {
      {"a.b.c",
       {"t1", "t2", "t5", "t6", "t10", "t11", "t12", "t18", "t20", "t21", "t22",
        "t23", "t26"}},
      {"a.b",
       {"t3", "t5", "t6", "t7", "t8", "t9", "t11", "t12", "t15", "t21", "t22",
        "t23", "t26"}},
      {"a.b.b",
       {"t3", "t5", "t6", "t7", "t11", "t12", "t14", "t18", "t21", "t22", "t23",
        "t26"}},
      {"", {"t5", "t6", "t17"}},
      {"b.c.c", {"t5", "t6", "t18", "t21", "t22", "t23", "t26"}},
      {"a.a.a.a.a", {"t5", "t6", "t11", "t12", "t21", "t22", "t23"}},
      {"vodka.gin", {"t5", "t6", "t8", "t21", "t22", "t23"}},
      {"vodka.martini", {"t5", "t6", "t8", "t19", "t21", "t22", "t23"}},
      {"b.b.c", {"t5", "t6", "t10", "t13", "t18", "t21", "t22", "t23", "t26"}},
      {"nothing.here.at.all", {"t5", "t6", "t21", "t22", "t23"}},
      {"oneword", {"t5", "t6", "t21", "t22", "t23", "t25"}},
  };

  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("topic", ExchangeType::kTopic).ok());
  for (const auto& [queue, pattern] : bindings) {
    REQUIRE(b->DeclareQueue(queue).ok());
    REQUIRE(b->Bind(queue, "topic", pattern).ok());
  }
  for (const auto& [key, expected] : cases) {
    INFO("routing key '" << key << "'");
    REQUIRE(Send(*b, "topic", key, key).ok());
    std::set<std::string> got;
    for (const auto& [queue, pattern] : bindings) {
      if (Ready(*b, queue) == 1) got.insert(queue);
      REQUIRE(b->PurgeQueue(queue).ok());
    }
    CHECK(got == expected);
  }
}

TEST_CASE("Headers exchange routes on x-match all, any and header presence") {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("h", ExchangeType::kHeaders).ok());
  for (const char* q : {"all", "any", "present", "empty-all", "empty-any"}) {
    REQUIRE(b->DeclareQueue(q).ok());
  }
  REQUIRE(b->Bind("all", "h", "",
                  {{"x-match", "all"}, {"format", "pdf"}, {"type", "report"}})
              .ok());
  REQUIRE(b->Bind("any", "h", "",
                  {{"x-match", "any"}, {"format", "pdf"}, {"type", "report"}})
              .ok());
  REQUIRE(b->Bind("present", "h", "", {{"format", HeaderValue()}}).ok());
  REQUIRE(b->Bind("empty-all", "h", "", {}).ok());
  REQUIRE(b->Bind("empty-any", "h", "", {{"x-match", "any"}}).ok());

  Message both("both");
  both.headers() = {{"format", "pdf"}, {"type", "report"}};
  REQUIRE(b->Publish("h", "", both).ok());
  Message one("one");
  one.headers() = {{"format", "zip"}, {"type", "report"}};
  REQUIRE(b->Publish("h", "", one).ok());

  CHECK(Drain(*b, "all") == std::vector<std::string>{"both"});
  CHECK(Drain(*b, "any") == std::vector<std::string>{"both", "one"});
  CHECK(Drain(*b, "present") == std::vector<std::string>{"both", "one"});
  CHECK(Drain(*b, "empty-all") == std::vector<std::string>{"both", "one"});
  CHECK(Drain(*b, "empty-any").empty());
}

TEST_CASE("Default exchange routes to the queue named by the routing key") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("jobs").ok());
  auto out = Send(*b, "", "jobs", "j1");
  REQUIRE(out.ok());
  CHECK(out->queues == 1);
  auto none = Send(*b, "", "nosuchqueue", "lost");
  REQUIRE(none.ok());
  CHECK(none->queues == 0);
  CHECK(Drain(*b, "jobs") == std::vector<std::string>{"j1"});
  CHECK(b->GetExchangeStats("")->unroutable == 1);
}

TEST_CASE(
    "Exchange-to-exchange bindings route onward and a cycle still "
    "delivers one copy per queue") {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("front", ExchangeType::kTopic).ok());
  REQUIRE(b->DeclareExchange("back", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareQueue("q").ok());
  REQUIRE(b->BindExchange("back", "front", "orders.#").ok());
  REQUIRE(b->BindExchange("front", "back", "").ok());  // a cycle
  REQUIRE(b->Bind("q", "back", "").ok());
  REQUIRE(b->Bind("q", "front", "orders.*").ok());  // a second path to q

  auto out = Send(*b, "front", "orders.new", "o1");
  REQUIRE(out.ok());
  CHECK(out->queues == 1);
  REQUIRE(Send(*b, "front", "users.new", "u1").ok());
  CHECK(Drain(*b, "q") == std::vector<std::string>{"o1"});

  REQUIRE(b->UnbindExchange("back", "front", "orders.#").ok());
  REQUIRE(b->Unbind("q", "front", "orders.*").ok());
  REQUIRE(Send(*b, "front", "orders.new", "o2").ok());
  CHECK(Ready(*b, "q") == 0);
}

TEST_CASE("A queue matched by several bindings receives one copy") {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("t", ExchangeType::kTopic).ok());
  REQUIRE(b->DeclareQueue("q").ok());
  REQUIRE(b->Bind("q", "t", "a.*").ok());
  REQUIRE(b->Bind("q", "t", "#").ok());
  REQUIRE(b->Bind("q", "t", "a.b").ok());
  REQUIRE(b->Bind("q", "t", "a.b").ok());  // binding twice is a no-op
  auto out = Send(*b, "t", "a.b", "x");
  REQUIRE(out.ok());
  CHECK(out->queues == 1);
  CHECK(Ready(*b, "q") == 1);
}

TEST_CASE("Alternate exchange receives what the exchange cannot route") {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("unrouted", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareExchange("main", ExchangeType::kDirect,
                             {.alternate_exchange = "ae1"})
              .ok());
  // A chain: ae1 routes nowhere and names ae2; ae2 routes to a queue.
  REQUIRE(b->DeclareExchange("ae1", ExchangeType::kDirect,
                             {.alternate_exchange = "ae2"})
              .ok());
  REQUIRE(b->DeclareExchange("ae2", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareQueue("routed").ok());
  REQUIRE(b->DeclareQueue("leftovers").ok());
  REQUIRE(b->Bind("routed", "main", "k").ok());
  REQUIRE(b->Bind("leftovers", "ae2", "").ok());

  REQUIRE(Send(*b, "main", "k", "direct").ok());
  auto out = Send(*b, "main", "other", "via-ae", {.mandatory = true});
  REQUIRE(out.ok());
  CHECK(out->queues == 1);
  CHECK_FALSE(out->returned.has_value());  // routed through the AE counts
  CHECK(Drain(*b, "routed") == std::vector<std::string>{"direct"});
  CHECK(Drain(*b, "leftovers") == std::vector<std::string>{"via-ae"});
  CHECK(b->GetExchangeStats("main")->routed == 2);
  CHECK(b->GetExchangeStats("main")->unroutable == 0);
}

TEST_CASE("An alternate-exchange loop ends without routing") {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("x", ExchangeType::kDirect,
                             {.alternate_exchange = "y"})
              .ok());
  REQUIRE(b->DeclareExchange("y", ExchangeType::kDirect,
                             {.alternate_exchange = "x"})
              .ok());
  auto out = Send(*b, "x", "k", "m", {.mandatory = true});
  REQUIRE(out.ok());
  CHECK(out->queues == 0);
  REQUIRE(out->returned.has_value());
}

TEST_CASE(
    "Each exchange on the path uses its own alternate exchange when its "
    "bindings match nothing") {
  auto b = NewBroker();
  // front -> q1 and front -> mid (e2e); mid matches nothing for "k", so its
  // alternate exchange takes the message, although q1 got it already.
  REQUIRE(b->DeclareExchange("front", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareExchange("mid", ExchangeType::kDirect,
                             {.alternate_exchange = "ae"})
              .ok());
  REQUIRE(b->DeclareExchange("ae", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareQueue("q1").ok());
  REQUIRE(b->DeclareQueue("leftovers").ok());
  REQUIRE(b->Bind("q1", "front", "").ok());
  REQUIRE(b->Bind("leftovers", "ae", "").ok());
  REQUIRE(b->BindExchange("mid", "front", "").ok());

  auto out = Send(*b, "front", "k", "both");
  REQUIRE(out.ok());
  CHECK(out->queues == 2);
  CHECK(Drain(*b, "q1") == std::vector<std::string>{"both"});
  CHECK(Drain(*b, "leftovers") == std::vector<std::string>{"both"});

  // With q1 gone, the alternate exchange of mid alone routes it, and that
  // counts as routed at front.
  REQUIRE(b->DeleteQueue("q1").ok());
  out = Send(*b, "front", "k", "only-ae", {.mandatory = true});
  REQUIRE(out.ok());
  CHECK(out->queues == 1);
  CHECK_FALSE(out->returned.has_value());
  CHECK(Drain(*b, "leftovers") == std::vector<std::string>{"only-ae"});
  CHECK(b->GetExchangeStats("front")->unroutable == 0);
}

TEST_CASE(
    "An exchange whose binding leads to another exchange does not use its "
    "alternate exchange even when nothing downstream matches") {
  auto b = NewBroker();
  // As in RabbitMQ: x's own binding matched (to y), so x's alternate
  // exchange is not consulted; y matches nothing and has none.
  REQUIRE(b->DeclareExchange("x", ExchangeType::kFanout,
                             {.alternate_exchange = "ae"})
              .ok());
  REQUIRE(b->DeclareExchange("y", ExchangeType::kDirect).ok());
  REQUIRE(b->DeclareExchange("ae", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareQueue("leftovers").ok());
  REQUIRE(b->Bind("leftovers", "ae", "").ok());
  REQUIRE(b->BindExchange("y", "x", "").ok());

  auto out = Send(*b, "x", "k", "m", {.mandatory = true});
  REQUIRE(out.ok());
  CHECK(out->queues == 0);
  CHECK(out->returned.has_value());
  CHECK(Ready(*b, "leftovers") == 0);
  CHECK(b->GetExchangeStats("x")->unroutable == 1);

  // Without the binding, x matches nothing and its alternate exchange
  // takes the message.
  REQUIRE(b->UnbindExchange("y", "x", "").ok());
  out = Send(*b, "x", "k", "m2", {.mandatory = true});
  REQUIRE(out.ok());
  CHECK(out->queues == 1);
  CHECK(Drain(*b, "leftovers") == std::vector<std::string>{"m2"});
}

TEST_CASE(
    "A publish through a chain of tens of thousands of exchanges reaches "
    "its end") {
  auto b = NewBroker();
  constexpr int kChain = 50000;
  REQUIRE(b->DeclareExchange("x0", ExchangeType::kFanout).ok());
  for (int i = 1; i < kChain; ++i) {
    const std::string name = "x" + std::to_string(i);
    REQUIRE(b->DeclareExchange(name, ExchangeType::kFanout).ok());
    REQUIRE(b->BindExchange(name, "x" + std::to_string(i - 1), "").ok());
  }
  REQUIRE(b->DeclareQueue("end").ok());
  REQUIRE(b->Bind("end", "x" + std::to_string(kChain - 1), "").ok());
  auto out = Send(*b, "x0", "k", "far");
  REQUIRE(out.ok());
  CHECK(out->queues == 1);
  CHECK(Drain(*b, "end") == std::vector<std::string>{"far"});
}

TEST_CASE("A mandatory unroutable publish hands the message back") {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("d", ExchangeType::kDirect).ok());
  Message m("precious");
  m.properties().message_id = "m-1";
  auto out = b->Publish("d", "nowhere", std::move(m), {.mandatory = true});
  REQUIRE(out.ok());
  REQUIRE(out->returned.has_value());
  CHECK(out->returned->body() == "precious");
  CHECK(out->returned->properties().message_id == "m-1");
  auto stats = b->GetExchangeStats("d");
  CHECK(stats->unroutable == 1);
  CHECK(stats->returned == 1);
}

TEST_CASE("An unroutable non-mandatory publish is dropped and counted") {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("d", ExchangeType::kDirect).ok());
  auto out = Send(*b, "d", "nowhere", "x");
  REQUIRE(out.ok());
  CHECK_FALSE(out->returned.has_value());
  CHECK(out->queues == 0);
  CHECK(b->GetExchangeStats("d")->unroutable == 1);
  CHECK(b->GetExchangeStats("d")->published == 1);
}

TEST_CASE("A publish that reaches several queues shares one message body") {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("f", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareQueue("a").ok());
  REQUIRE(b->DeclareQueue("b").ok());
  REQUIRE(b->Bind("a", "f", "").ok());
  REQUIRE(b->Bind("b", "f", "").ok());
  REQUIRE(Send(*b, "f", "", std::string(1000, 'z')).ok());
  auto ca = b->Consume("a").value();
  auto cb = b->Consume("b").value();
  auto da = ca->TryReceive().value();
  auto db = cb->TryReceive().value();
  CHECK(da.body().data() == db.body().data());  // the same bytes, not a copy
  CHECK(&da.message() == &db.message());
  CHECK(da.exchange() == "f");
}

TEST_CASE("Deleting a queue removes its bindings and its messages") {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("f", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareQueue("q").ok());
  REQUIRE(b->Bind("q", "f", "").ok());
  REQUIRE(Send(*b, "f", "", "1").ok());
  REQUIRE(Send(*b, "f", "", "2").ok());
  auto deleted = b->DeleteQueue("q");
  REQUIRE(deleted.ok());
  CHECK(*deleted == 2);
  // Redeclared, it starts empty and unbound.
  REQUIRE(b->DeclareQueue("q").ok());
  auto out = Send(*b, "f", "", "3");
  REQUIRE(out.ok());
  CHECK(out->queues == 0);
}

TEST_CASE("Deleting an exchange removes bindings to and from it") {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("src", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareExchange("mid", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareQueue("q").ok());
  REQUIRE(b->BindExchange("mid", "src", "").ok());
  REQUIRE(b->Bind("q", "mid", "").ok());
  CHECK(absl::IsFailedPrecondition(
      b->DeleteExchange("mid", {.if_unused = true})));
  REQUIRE(b->DeleteExchange("mid").ok());
  auto out = Send(*b, "src", "", "x");
  REQUIRE(out.ok());
  CHECK(out->queues == 0);
  CHECK(absl::IsNotFound(b->GetExchangeStats("mid").status()));
}

TEST_CASE(
    "An auto-delete exchange is deleted when its last binding goes, not before "
    "its first") {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("ax", ExchangeType::kFanout, {.auto_delete = true})
              .ok());
  REQUIRE(b->DeclareQueue("q1").ok());
  REQUIRE(b->DeclareQueue("q2").ok());
  REQUIRE(
      b->DeclareExchange("idle", ExchangeType::kFanout, {.auto_delete = true})
          .ok());
  CHECK(b->GetExchangeStats("ax").ok());  // not bound yet: it stays
  REQUIRE(b->Bind("q1", "ax", "").ok());
  REQUIRE(b->Bind("q2", "ax", "").ok());
  REQUIRE(b->Unbind("q1", "ax", "").ok());
  CHECK(b->GetExchangeStats("ax").ok());
  // Its last binding goes with the queue.
  REQUIRE(b->DeleteQueue("q2").ok());
  CHECK(absl::IsNotFound(b->GetExchangeStats("ax").status()));

  // Through exchange-to-exchange bindings: "src" is bound only to "mid",
  // which is bound only to "q3".
  for (const char* name : {"src", "mid"}) {
    REQUIRE(
        b->DeclareExchange(name, ExchangeType::kFanout, {.auto_delete = true})
            .ok());
  }
  REQUIRE(b->DeclareExchange("plain", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareQueue("q3").ok());
  REQUIRE(b->Bind("q3", "mid", "").ok());
  REQUIRE(b->Bind("q3", "plain", "").ok());
  REQUIRE(b->BindExchange("mid", "src", "").ok());
  REQUIRE(b->Unbind("q3", "mid", "").ok());
  CHECK(absl::IsNotFound(b->GetExchangeStats("mid").status()));
  CHECK(absl::IsNotFound(b->GetExchangeStats("src").status()));
  // An exchange without the flag stays, and so does one never bound (an
  // unbind that removes nothing is no binding going).
  REQUIRE(b->Unbind("q3", "plain", "").ok());
  REQUIRE(b->Unbind("q3", "idle", "").ok());
  CHECK(b->GetExchangeStats("plain").ok());
  CHECK(b->GetExchangeStats("idle").ok());
}

TEST_CASE("Publishing to an internal exchange directly is refused") {
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("inner", ExchangeType::kFanout, {.internal = true})
              .ok());
  REQUIRE(b->DeclareExchange("outer", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareQueue("q").ok());
  REQUIRE(b->Bind("q", "inner", "").ok());
  REQUIRE(b->BindExchange("inner", "outer", "").ok());
  CHECK(absl::IsInvalidArgument(Send(*b, "inner", "", "x").status()));
  CHECK(Ready(*b, "q") == 0);
  REQUIRE(Send(*b, "outer", "", "y").ok());
  CHECK(Ready(*b, "q") == 1);
}

}  // namespace
}  // namespace warren
