// Every refused call returns a clear status and leaves the broker exactly as
// it was (SEMANTICS.md section 1).

#include <catch2/catch.hpp>
#include <limits>
#include <string>

#include "test_util.h"
#include "warren/warren.h"

namespace warren {
namespace {

using testing::NewBroker;
using testing::Send;

// A broker with a little of everything, and a fingerprint of its state.
struct Fixture {
  std::unique_ptr<Broker> b = NewBroker();
  Fixture() {
    REQUIRE(b->DeclareExchange("ex", ExchangeType::kDirect).ok());
    REQUIRE(b->DeclareExchange("hx", ExchangeType::kHeaders).ok());
    REQUIRE(b->DeclareQueue("q", {.max_length = 5}).ok());
    REQUIRE(b->Bind("q", "ex", "k").ok());
    REQUIRE(Send(*b, "ex", "k", "m").ok());
  }
  // Everything a snapshot shows, as text.
  std::string Fingerprint() const {
    std::string out;
    for (const auto& q : b->Stats().queues) {
      out += q.name + ":" + std::to_string(q.ready) + "/" +
             std::to_string(q.published) + "/" + std::to_string(q.consumers) +
             ";";
    }
    for (const auto& e : b->Stats().exchanges) {
      out += e.name + ":" + std::to_string(e.published) + ";";
    }
    // Routing still as before.
    return out;
  }
};

TEST_CASE("Bad names and keys are InvalidArgument and change nothing") {
  Fixture f;
  const std::string before = f.Fingerprint();
  const std::string long_name(256, 'n');
  const std::string with_nul("a\0b", 3);

  CHECK(absl::IsInvalidArgument(f.b->DeclareQueue("")));
  CHECK(absl::IsInvalidArgument(f.b->DeclareQueue(long_name)));
  CHECK(absl::IsInvalidArgument(f.b->DeclareQueue(with_nul)));
  CHECK(absl::IsInvalidArgument(
      f.b->DeclareExchange(long_name, ExchangeType::kFanout)));
  CHECK(absl::IsInvalidArgument(
      f.b->DeclareExchange(with_nul, ExchangeType::kFanout)));
  CHECK(absl::IsInvalidArgument(f.b->Bind("q", "ex", std::string(256, 'k'))));
  CHECK(absl::IsInvalidArgument(
      Send(*f.b, "ex", std::string(256, 'k'), "x").status()));
  CHECK(absl::IsInvalidArgument(f.b->Consume("").status()));
  CHECK(absl::IsInvalidArgument(
      f.b->Consume("q", {.tag = std::string(256, 't')}).status()));
  // An empty batch still names its exchange, and lookups name theirs.
  CHECK(absl::IsInvalidArgument(f.b->PublishBatch(long_name, {}).status()));
  CHECK(absl::IsInvalidArgument(f.b->PublishBatch(with_nul, {}).status()));
  CHECK(absl::IsInvalidArgument(f.b->GetQueueStats("").status()));
  CHECK(absl::IsInvalidArgument(f.b->GetQueueStats(long_name).status()));
  CHECK(absl::IsInvalidArgument(f.b->GetExchangeStats(long_name).status()));
  CHECK(absl::IsInvalidArgument(f.b->GetExchangeStats(with_nul).status()));
  // 255 bytes is fine.
  CHECK(f.b->DeclareQueue(std::string(255, 'n')).ok());
  CHECK(f.b->DeleteQueue(std::string(255, 'n')).ok());
  CHECK(f.Fingerprint() == before);
}

TEST_CASE("Unknown exchanges and queues are NotFound and change nothing") {
  Fixture f;
  const std::string before = f.Fingerprint();
  CHECK(absl::IsNotFound(Send(*f.b, "nope", "k", "x").status()));
  CHECK(absl::IsNotFound(f.b->Bind("nope", "ex", "k")));
  CHECK(absl::IsNotFound(f.b->Bind("q", "nope", "k")));
  CHECK(absl::IsNotFound(f.b->Unbind("q", "nope", "k")));
  CHECK(absl::IsNotFound(f.b->BindExchange("ex", "nope", "k")));
  CHECK(absl::IsNotFound(f.b->BindExchange("nope", "ex", "k")));
  CHECK(absl::IsNotFound(f.b->DeleteQueue("nope").status()));
  CHECK(absl::IsNotFound(f.b->PurgeQueue("nope").status()));
  CHECK(absl::IsNotFound(f.b->DeleteExchange("nope")));
  CHECK(absl::IsNotFound(f.b->Consume("nope").status()));
  CHECK(absl::IsNotFound(
      f.b->Subscribe("nope",
                     [](const Delivery&) { return HandlerResult::kAck; })
          .status()));
  CHECK(absl::IsNotFound(f.b->GetQueueStats("nope").status()));
  CHECK(absl::IsNotFound(f.b->GetExchangeStats("nope").status()));
  CHECK(f.Fingerprint() == before);
}

TEST_CASE(
    "Redeclaring with other options is FailedPrecondition and keeps the "
    "original") {
  Fixture f;
  CHECK(f.b->DeclareQueue("q", {.max_length = 5}).ok());  // identical: fine
  CHECK(f.b->DeclareExchange("ex", ExchangeType::kDirect).ok());
  CHECK(absl::IsFailedPrecondition(f.b->DeclareQueue("q", {.max_length = 6})));
  CHECK(absl::IsFailedPrecondition(f.b->DeclareQueue("q")));
  CHECK(absl::IsFailedPrecondition(
      f.b->DeclareExchange("ex", ExchangeType::kFanout)));
  CHECK(absl::IsFailedPrecondition(
      f.b->DeclareExchange("ex", ExchangeType::kDirect, {.durable = true})));
  // The original queue and its message are untouched.
  CHECK(testing::Ready(*f.b, "q") == 1);
  auto out = Send(*f.b, "ex", "k", "again");
  REQUIRE(out.ok());
  CHECK(out->queues == 1);
}

TEST_CASE("The default exchange cannot be declared, bound or deleted") {
  Fixture f;
  const std::string before = f.Fingerprint();
  CHECK(
      absl::IsInvalidArgument(f.b->DeclareExchange("", ExchangeType::kDirect)));
  CHECK(absl::IsInvalidArgument(f.b->DeleteExchange("")));
  CHECK(absl::IsInvalidArgument(f.b->Bind("q", "", "q")));
  CHECK(absl::IsInvalidArgument(f.b->Unbind("q", "", "q")));
  CHECK(absl::IsInvalidArgument(f.b->BindExchange("", "ex", "k")));
  CHECK(absl::IsInvalidArgument(f.b->BindExchange("ex", "", "k")));
  CHECK(f.Fingerprint() == before);
}

TEST_CASE("Invalid options are InvalidArgument and create nothing") {
  Fixture f;
  const std::string before = f.Fingerprint();
  CHECK(absl::IsInvalidArgument(f.b->DeclareQueue("p", {.max_priority = 11})));
  CHECK(absl::IsInvalidArgument(
      f.b->DeclareQueue("p", {.ring_capacity = (1u << 24) + 1})));
  CHECK(absl::IsInvalidArgument(
      f.b->DeclareQueue("p", {.overflow = static_cast<Overflow>(42)})));
  CHECK(absl::IsInvalidArgument(
      f.b->DeclareQueue("p", {.expires = absl::ZeroDuration()})));
  CHECK(absl::IsInvalidArgument(
      f.b->DeclareExchange("e", static_cast<ExchangeType>(42))));
  CHECK(
      absl::IsInvalidArgument(f.b->Bind("q", "hx", "", {{"x-match", "some"}})));
  CHECK(absl::IsInvalidArgument(f.b->Bind("q", "hx", "", {{"x-match", 1}})));
  auto handler = [](const Delivery&) { return HandlerResult::kAck; };
  CHECK(absl::IsInvalidArgument(
      f.b->Subscribe("q", handler, {.workers = 0}).status()));
  CHECK(absl::IsInvalidArgument(
      f.b->Subscribe("q", HandlerWithConsumer(), {}).status()));
  auto c = f.b->Consume("q").value();
  CHECK(absl::IsInvalidArgument(
      c->ReceiveBatch(0, absl::ZeroDuration()).status()));
  c.reset();
  const PublishOptions bad_sync{.persistent = true,
                                .sync = static_cast<SyncPolicy>(42)};
  CHECK(absl::IsInvalidArgument(
      f.b->Publish("ex", "k", Message("m"), bad_sync).status()));
  std::vector<OutgoingMessage> batch;
  batch.push_back({"k", Message("m")});
  CHECK(absl::IsInvalidArgument(
      f.b->PublishBatch("ex", std::move(batch), bad_sync).status()));
  // A timestamp the log could not keep (microseconds in 64 bits).
  for (absl::Time t : {absl::InfinitePast(), absl::InfiniteFuture(),
                       absl::FromUnixSeconds(int64_t{1} << 60)}) {
    Message m("m");
    m.properties().timestamp = t;
    CHECK(absl::IsInvalidArgument(
        f.b->Publish("ex", "k", std::move(m)).status()));
  }
  CHECK(f.Fingerprint() == before);
  CHECK(absl::IsNotFound(f.b->GetQueueStats("p").status()));
}

// A value nested `depth` lists and tables deep, alternating, around `leaf`.
HeaderValue Nested(int depth, HeaderValue leaf) {
  for (int i = 0; i < depth; ++i) {
    leaf = i % 2 == 0 ? HeaderValue(HeaderList{std::move(leaf)})
                      : HeaderValue(Headers{{"t", std::move(leaf)}});
  }
  return leaf;
}

TEST_CASE(
    "Headers nested too deep and NaN binding arguments are InvalidArgument") {
  Fixture f;
  const std::string before = f.Fingerprint();
  const HeaderValue too_deep = Nested(kMaxHeaderNesting + 1, 1);
  Message m("x");
  m.headers()["h"] = too_deep;
  CHECK(absl::IsInvalidArgument(f.b->Publish("ex", "k", m).status()));
  CHECK(absl::IsInvalidArgument(
      f.b->Bind("q", "hx", "", {{"x-match", "any"}, {"h", too_deep}})));
  // NaN equals nothing: such a binding could never be unbound.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  CHECK(absl::IsInvalidArgument(
      f.b->Bind("q", "hx", "", {{"x-match", "any"}, {"w", nan}})));
  CHECK(absl::IsInvalidArgument(
      f.b->Bind("q", "ex", "k2", {{"w", Nested(3, nan)}})));
  CHECK(f.Fingerprint() == before);
  // At the limit, and NaN in a message's headers, are fine.
  const HeaderValue deepest = Nested(kMaxHeaderNesting, 1);
  m.headers()["h"] = deepest;
  m.headers()["w"] = nan;
  CHECK(f.b->Publish("ex", "k", m).ok());
  CHECK(f.b->Bind("q", "hx", "", {{"x-match", "any"}, {"h", deepest}}).ok());
  CHECK(f.b->Unbind("q", "hx", "", {{"x-match", "any"}, {"h", deepest}}).ok());
}

TEST_CASE("Conditional deletes are refused while the condition fails") {
  Fixture f;
  auto c = f.b->Consume("q").value();
  CHECK(absl::IsFailedPrecondition(
      f.b->DeleteQueue("q", {.if_unused = true}).status()));
  CHECK(absl::IsFailedPrecondition(
      f.b->DeleteQueue("q", {.if_empty = true}).status()));
  CHECK(absl::IsFailedPrecondition(
      f.b->DeleteExchange("ex", {.if_unused = true})));
  CHECK(testing::Ready(*f.b, "q") == 1);
}

TEST_CASE("Unbinding a binding that does not exist is a no-op") {
  Fixture f;
  CHECK(f.b->Unbind("q", "ex", "never-bound").ok());
  auto out = Send(*f.b, "ex", "k", "x");
  REQUIRE(out.ok());
  CHECK(out->queues == 1);
}

TEST_CASE("Every call after Close is FailedPrecondition") {
  Fixture f;
  auto c = f.b->Consume("q").value();
  auto d = c->TryReceive();
  REQUIRE(d.ok());
  f.b->Close();
  f.b->Close();  // idempotent
  CHECK(absl::IsFailedPrecondition(f.b->DeclareQueue("x")));
  CHECK(absl::IsFailedPrecondition(
      f.b->DeclareExchange("x", ExchangeType::kFanout)));
  CHECK(absl::IsFailedPrecondition(f.b->DeleteQueue("q").status()));
  CHECK(absl::IsFailedPrecondition(f.b->PurgeQueue("q").status()));
  CHECK(absl::IsFailedPrecondition(f.b->DeleteExchange("ex")));
  CHECK(absl::IsFailedPrecondition(f.b->Bind("q", "ex", "k")));
  CHECK(absl::IsFailedPrecondition(f.b->Unbind("q", "ex", "k")));
  CHECK(absl::IsFailedPrecondition(f.b->BindExchange("ex", "hx", "")));
  CHECK(absl::IsFailedPrecondition(Send(*f.b, "ex", "k", "x").status()));
  CHECK(absl::IsFailedPrecondition(f.b->Consume("q").status()));
  CHECK(absl::IsFailedPrecondition(f.b->GetQueueStats("q").status()));
  CHECK(absl::IsFailedPrecondition(c->TryReceive().status()));
  CHECK(absl::IsFailedPrecondition(c->Receive(absl::Seconds(5)).status()));
  CHECK(absl::IsFailedPrecondition(c->Ack(*d)));
  CHECK(absl::IsFailedPrecondition(c->Extend(*d, absl::Seconds(1))));
  CHECK(absl::IsFailedPrecondition(c->Cancel()));

  // Whatever else is wrong with the call.
  const std::string long_name(256, 'n');
  auto handler = [](const Delivery&) { return HandlerResult::kAck; };
  CHECK(absl::IsFailedPrecondition(f.b->DeclareQueue("")));
  CHECK(
      absl::IsFailedPrecondition(f.b->DeclareQueue("p", {.max_priority = 11})));
  CHECK(absl::IsFailedPrecondition(
      f.b->DeclareExchange(long_name, ExchangeType::kFanout)));
  CHECK(absl::IsFailedPrecondition(f.b->DeleteQueue("").status()));
  CHECK(absl::IsFailedPrecondition(f.b->PurgeQueue(long_name).status()));
  CHECK(absl::IsFailedPrecondition(f.b->DeleteExchange("")));
  CHECK(absl::IsFailedPrecondition(f.b->Bind("q", "", "k")));
  CHECK(absl::IsFailedPrecondition(f.b->Unbind("", "ex", "k")));
  CHECK(absl::IsFailedPrecondition(f.b->BindExchange("", "hx", "")));
  CHECK(absl::IsFailedPrecondition(f.b->UnbindExchange("ex", "", "")));
  CHECK(absl::IsFailedPrecondition(
      Send(*f.b, "ex", std::string(256, 'k'), "x").status()));
  CHECK(absl::IsFailedPrecondition(f.b->PublishBatch(long_name, {}).status()));
  CHECK(absl::IsFailedPrecondition(f.b->Consume("").status()));
  CHECK(absl::IsFailedPrecondition(
      f.b->Subscribe("q", handler, {.workers = 0}).status()));
  CHECK(absl::IsFailedPrecondition(f.b->Browse("", 1).status()));
  CHECK(absl::IsFailedPrecondition(
      f.b->Redrive("q", {.messages_per_second = -1}).status()));
  CHECK(absl::IsFailedPrecondition(f.b->GetQueueStats("").status()));
  CHECK(absl::IsFailedPrecondition(f.b->GetExchangeStats(long_name).status()));
  CHECK(absl::IsFailedPrecondition(
      c->ReceiveBatch(0, absl::Seconds(1)).status()));
  CHECK(absl::IsFailedPrecondition(c->Ack(Delivery())));
  CHECK(absl::IsFailedPrecondition(c->Extend(*d, absl::Seconds(-1))));
}

}  // namespace
}  // namespace warren
