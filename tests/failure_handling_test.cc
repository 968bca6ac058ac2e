// Retry and backoff, TTL, leases, delays, deduplication and the dead-letter
// queue tools, all on a manual clock: no test here sleeps (SEMANTICS.md
// sections 5 and 7).

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "test_util.h"
#include "warren/clock.h"
#include "warren/dead_letter.h"
#include "warren/warren.h"

namespace warren {
namespace {

using testing::Drain;
using testing::NewBroker;
using testing::Ready;
using testing::Send;

// A broker on a manual clock, with fanout "dlx" -> queue "dlq".
struct Env {
  ManualClock clock;
  std::unique_ptr<Broker> b;
  Env() {
    b = Broker::Open({.clock = &clock}).value();
    REQUIRE(b->DeclareExchange("dlx", ExchangeType::kFanout).ok());
    REQUIRE(b->DeclareQueue("dlq").ok());
    REQUIRE(b->Bind("dlq", "dlx", "").ok());
  }
  void Advance(absl::Duration d) { REQUIRE(clock.Advance(d).ok()); }
  QueueStats Stats(std::string_view q) { return b->GetQueueStats(q).value(); }
  // Waits until a publisher waits for room in `q` (or 30 s pass); returns how
  // many do.
  uint64_t WaitForBlockedPublisher(std::string_view q) {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (Stats(q).blocked_publishers == 0 &&
           std::chrono::steady_clock::now() < deadline) {
      std::this_thread::yield();
    }
    return Stats(q).blocked_publishers;
  }
};

QueueOptions WithDlx(QueueOptions o) {
  o.dead_letter_exchange = "dlx";
  return o;
}

TEST_CASE(
    "Retry redelivers after each backoff without blocking the "
    "messages behind it, then dead-letters") {
  Env e;
  REQUIRE(
      e.b->DeclareQueue(
             "work",
             WithDlx({.retry = RetryPolicy{.max_attempts = 3,
                                           .backoff = Backoff::kExponential,
                                           .initial_delay = absl::Seconds(1),
                                           .multiplier = 2.0}}))
          .ok());
  REQUIRE(Send(*e.b, "", "work", "m1").ok());
  REQUIRE(Send(*e.b, "", "work", "m2").ok());
  auto c = e.b->Consume("work").value();
  auto m1 = c->TryReceive().value();
  REQUIRE(c->Nack(m1).ok());
  CHECK(e.Stats("work").delayed == 1);
  // m2 is not held up by m1's backoff.
  auto m2 = c->TryReceive().value();
  CHECK(m2.body() == "m2");
  REQUIRE(c->Ack(m2).ok());

  e.Advance(absl::Milliseconds(999));
  CHECK(absl::IsUnavailable(c->TryReceive().status()));
  e.Advance(absl::Milliseconds(1));  // 1 s after the first failure
  auto again = c->TryReceive().value();
  CHECK(again.body() == "m1");
  CHECK(again.attempt() == 2);
  REQUIRE(c->Nack(again).ok());

  e.Advance(absl::Milliseconds(1999));
  CHECK(absl::IsUnavailable(c->TryReceive().status()));
  e.Advance(absl::Milliseconds(1));  // 2 s after the second failure
  auto third = c->TryReceive().value();
  CHECK(third.attempt() == 3);
  REQUIRE(c->Nack(third).ok());  // attempts exhausted

  CHECK(e.Stats("work").delayed == 0);
  CHECK(e.Stats("work").dead_lettered == 1);
  auto dc = e.b->Consume("dlq").value();
  auto dead = dc->TryReceive().value();
  CHECK(dead.body() == "m1");
  CHECK(DeathHistory(dead.message())[0].reason == DeathReason::kDeliveryLimit);
}

TEST_CASE("A retried message comes back at its original position") {
  Env e;
  REQUIRE(
      e.b->DeclareQueue(
             "work", {.retry = RetryPolicy{.backoff = Backoff::kFixed,
                                           .initial_delay = absl::Seconds(5)}})
          .ok());
  for (const char* m : {"1", "2", "3"}) REQUIRE(Send(*e.b, "", "work", m).ok());
  {
    auto c = e.b->Consume("work").value();
    REQUIRE(c->Nack(c->TryReceive().value()).ok());
  }
  e.Advance(absl::Seconds(5));
  CHECK(Drain(*e.b, "work") == std::vector<std::string>{"1", "2", "3"});
}

// Returns how long after the nack the message came back, probing in 10 ms
// steps of the manual clock.
absl::Duration RedeliveryDelay(const RetryPolicy& policy) {
  Env e;
  REQUIRE(e.b->DeclareQueue("work", {.retry = policy}).ok());
  REQUIRE(Send(*e.b, "", "work", "m").ok());
  auto c = e.b->Consume("work").value();
  REQUIRE(c->Nack(c->TryReceive().value()).ok());
  for (int step = 0; step <= 1000; ++step) {
    if (auto d = c->TryReceive(); d.ok()) return absl::Milliseconds(10) * step;
    e.Advance(absl::Milliseconds(10));
  }
  return absl::InfiniteDuration();
}

TEST_CASE(
    "Jitter keeps delays within their bounds and a seed makes them "
    "reproducible") {
  const RetryPolicy base{.backoff = Backoff::kFixed,
                         .initial_delay = absl::Seconds(4),
                         .seed = 42};
  for (uint64_t seed : {1, 2, 3, 4, 5}) {
    RetryPolicy full = base;
    full.jitter = Jitter::kFull;
    full.seed = seed;
    const absl::Duration d = RedeliveryDelay(full);
    CHECK(d <= absl::Seconds(4) + absl::Milliseconds(10));
    CHECK(RedeliveryDelay(full) == d);  // same seed, same delay

    RetryPolicy equal = base;
    equal.jitter = Jitter::kEqual;
    equal.seed = seed;
    const absl::Duration e = RedeliveryDelay(equal);
    CHECK(e >= absl::Seconds(2));
    CHECK(e <= absl::Seconds(4) + absl::Milliseconds(10));

    RetryPolicy ratio = base;
    ratio.jitter = Jitter::kRatio;
    ratio.jitter_ratio = 0.25;
    ratio.seed = seed;
    const absl::Duration r = RedeliveryDelay(ratio);
    CHECK(r >= absl::Seconds(3));
    CHECK(r <= absl::Seconds(5) + absl::Milliseconds(10));
  }
  RetryPolicy none = base;
  CHECK(RedeliveryDelay(none) == absl::Seconds(4));
}

TEST_CASE("Custom backoff and the delay cap decide the delay") {
  CHECK(RedeliveryDelay({.backoff = Backoff::kCustom,
                         .custom = [](uint32_t attempt, const Message& m) {
                           return absl::Milliseconds(100) * attempt +
                                  absl::Milliseconds(m.body().size());
                         }}) == absl::Milliseconds(110));
  CHECK(RedeliveryDelay({.backoff = Backoff::kExponential,
                         .initial_delay = absl::Seconds(30),
                         .max_delay = absl::Seconds(2)}) == absl::Seconds(2));
  CHECK(BaseRetryDelay({.initial_delay = absl::Seconds(1), .multiplier = 2}, 4,
                       Message()) == absl::Seconds(8));
}

TEST_CASE(
    "An expired message is dead-lettered promptly even when it is not "
    "at the head") {
  Env e;
  REQUIRE(e.b->DeclareQueue("work", WithDlx({})).ok());
  REQUIRE(Send(*e.b, "", "work", "head").ok());
  Message short_lived("short");
  short_lived.properties().expiration = absl::Seconds(1);
  REQUIRE(e.b->Publish("", "work", std::move(short_lived)).ok());
  REQUIRE(Send(*e.b, "", "work", "tail").ok());
  e.Advance(absl::Seconds(1));
  // Nobody consumed: the head is still there, the expired one is gone.
  auto s = e.Stats("work");
  CHECK(s.ready == 2);
  CHECK(s.expired == 1);
  CHECK(s.dead_lettered == 1);
  auto dc = e.b->Consume("dlq").value();
  auto dead = dc->TryReceive().value();
  CHECK(dead.body() == "short");
  CHECK(DeathHistory(dead.message())[0].reason == DeathReason::kExpired);
  CHECK(DeathHistory(dead.message())[0].original_expiration ==
        absl::Seconds(1));
  CHECK(Drain(*e.b, "work") == std::vector<std::string>{"head", "tail"});
}

TEST_CASE("The lower of the queue TTL and the message expiration wins") {
  Env e;
  REQUIRE(e.b->DeclareQueue("work", {.message_ttl = absl::Seconds(10)}).ok());
  Message longer("longer");
  longer.properties().expiration = absl::Seconds(60);
  REQUIRE(e.b->Publish("", "work", std::move(longer)).ok());
  Message shorter("shorter");
  shorter.properties().expiration = absl::Seconds(2);
  REQUIRE(e.b->Publish("", "work", std::move(shorter)).ok());
  REQUIRE(Send(*e.b, "", "work", "plain").ok());
  e.Advance(absl::Seconds(2));
  CHECK(Ready(*e.b, "work") == 2);
  e.Advance(absl::Seconds(8));
  CHECK(Ready(*e.b, "work") == 0);
  CHECK(e.Stats("work").expired == 3);
  CHECK(e.Stats("work").dropped == 3);  // no dead-letter exchange
}

TEST_CASE(
    "A held message does not expire; returned after its expiry it is "
    "dead-lettered as expired") {
  Env e;
  REQUIRE(e.b->DeclareQueue("work", WithDlx({.message_ttl = absl::Seconds(5)}))
              .ok());
  REQUIRE(Send(*e.b, "", "work", "m").ok());
  auto c = e.b->Consume("work").value();
  auto d = c->TryReceive().value();
  e.Advance(absl::Seconds(10));
  CHECK(e.Stats("work").unacked == 1);
  CHECK(Ready(*e.b, "dlq") == 0);
  REQUIRE(c->Nack(d).ok());
  CHECK(Ready(*e.b, "work") == 0);
  CHECK(Ready(*e.b, "dlq") == 1);
}

TEST_CASE("A requeued message keeps its original expiry") {
  Env e;
  REQUIRE(e.b->DeclareQueue("work", {.message_ttl = absl::Seconds(10)}).ok());
  REQUIRE(Send(*e.b, "", "work", "m").ok());
  auto c = e.b->Consume("work").value();
  auto d = c->TryReceive().value();
  e.Advance(absl::Seconds(3));
  REQUIRE(c->Nack(d).ok());
  CHECK(Ready(*e.b, "work") == 1);
  e.Advance(absl::Seconds(7));
  CHECK(Ready(*e.b, "work") == 0);
  CHECK(e.Stats("work").expired == 1);
}

TEST_CASE(
    "Delayed messages appear after their own delay; a short delay is "
    "never stuck behind a long one") {
  Env e;
  REQUIRE(e.b->DeclareQueue("work").ok());
  REQUIRE(Send(*e.b, "", "work", "long", {.delay = absl::Hours(24)}).ok());
  REQUIRE(Send(*e.b, "", "work", "short", {.delay = absl::Seconds(1)}).ok());
  REQUIRE(Send(*e.b, "", "work", "now").ok());
  CHECK(e.Stats("work").delayed == 2);
  CHECK(Drain(*e.b, "work") == std::vector<std::string>{"now"});
  e.Advance(absl::Seconds(1));
  CHECK(Drain(*e.b, "work") == std::vector<std::string>{"short"});
  e.Advance(absl::Hours(24));  // no cap on the delay
  CHECK(Drain(*e.b, "work") == std::vector<std::string>{"long"});
  CHECK(e.Stats("work").delayed == 0);
}

TEST_CASE("A waiting consumer receives a delayed message when it is due") {
  Env e;
  REQUIRE(e.b->DeclareQueue("work").ok());
  auto c = e.b->Consume("work").value();
  REQUIRE(Send(*e.b, "", "work", "later", {.delay = absl::Minutes(5)}).ok());
  std::string got;
  std::thread t([&] {
    auto d = c->Receive(absl::Hours(1));  // real-time bound, never reached
    if (d.ok()) got = std::string(d->body());
  });
  e.Advance(absl::Minutes(5));
  t.join();
  CHECK(got == "later");
}

TEST_CASE(
    "An unsettled delivery goes back when its lease expires, and a "
    "late settle fails") {
  Env e;
  REQUIRE(e.b->DeclareQueue("work", {.ack_deadline = absl::Seconds(30)}).ok());
  REQUIRE(Send(*e.b, "", "work", "m").ok());
  auto c = e.b->Consume("work").value();
  auto d = c->TryReceive().value();
  e.Advance(absl::Seconds(29));
  CHECK(e.Stats("work").unacked == 1);
  e.Advance(absl::Seconds(1));
  auto s = e.Stats("work");
  CHECK(s.unacked == 0);
  CHECK(s.ready == 1);
  CHECK(s.lease_expired == 1);
  CHECK(absl::IsFailedPrecondition(c->Ack(d)));
  auto again = c->TryReceive().value();
  CHECK(again.attempt() == 2);
  REQUIRE(c->Ack(again).ok());
}

TEST_CASE("Extend renews a lease while work goes on") {
  Env e;
  REQUIRE(e.b->DeclareQueue("work").ok());
  REQUIRE(Send(*e.b, "", "work", "m").ok());
  auto c = e.b->Consume("work", {.ack_deadline = absl::Seconds(30)}).value();
  auto d = c->TryReceive().value();
  e.Advance(absl::Seconds(20));
  REQUIRE(c->Extend(d, absl::Seconds(30)).ok());
  e.Advance(absl::Seconds(20));  // 40 s in: the first lease would have ended
  CHECK(e.Stats("work").unacked == 1);
  e.Advance(absl::Seconds(10));
  CHECK(e.Stats("work").unacked == 0);
  CHECK(absl::IsFailedPrecondition(c->Extend(d, absl::Seconds(30))));
}

TEST_CASE(
    "Extending a settled or foreign delivery, or by a bad amount, is "
    "refused") {
  Env e;
  REQUIRE(e.b->DeclareQueue("work").ok());
  REQUIRE(Send(*e.b, "", "work", "m").ok());
  auto c = e.b->Consume("work").value();
  auto other = e.b->Consume("work").value();
  auto d = c->TryReceive().value();
  CHECK(absl::IsInvalidArgument(c->Extend(d, absl::Seconds(-1))));
  CHECK(absl::IsInvalidArgument(c->Extend(d, absl::Hours(24 * 365 * 11))));
  CHECK(absl::IsInvalidArgument(other->Extend(d, absl::Seconds(1))));
  REQUIRE(c->Ack(d).ok());
  CHECK(absl::IsFailedPrecondition(c->Extend(d, absl::Seconds(1))));
}

TEST_CASE("Expired leases count toward the retry policy's attempts") {
  Env e;
  REQUIRE(e.b->DeclareQueue("work",
                            WithDlx({.retry = RetryPolicy{.max_attempts = 2},
                                     .ack_deadline = absl::Seconds(10)}))
              .ok());
  REQUIRE(Send(*e.b, "", "work", "m").ok());
  auto c = e.b->Consume("work").value();
  (void)c->TryReceive().value();
  e.Advance(absl::Seconds(10));  // back at once: a lease is not a nack
  (void)c->TryReceive().value();
  e.Advance(absl::Seconds(10));  // second attempt used up
  CHECK(Ready(*e.b, "work") == 0);
  CHECK(Ready(*e.b, "dlq") == 1);
}

TEST_CASE("Deduplication drops a repeated message id within the window") {
  Env e;
  REQUIRE(e.b->DeclareQueue("work", {.dedup_window = absl::Minutes(1)}).ok());
  auto with_id = [](std::string id) {
    Message m("x");
    m.properties().message_id = std::move(id);
    return m;
  };
  REQUIRE(e.b->Publish("", "work", with_id("a")).ok());
  auto dup = e.b->Publish("", "work", with_id("a"));
  REQUIRE(dup.ok());
  CHECK(dup->queues == 1);
  CHECK(dup->duplicates == 1);
  REQUIRE(e.b->Publish("", "work", with_id("b")).ok());
  REQUIRE(e.b->Publish("", "work", Message("no id")).ok());
  REQUIRE(e.b->Publish("", "work", Message("no id")).ok());
  CHECK(Ready(*e.b, "work") == 4);
  CHECK(e.Stats("work").deduplicated == 1);
  e.Advance(absl::Minutes(1));
  REQUIRE(e.b->Publish("", "work", with_id("a")).ok());
  CHECK(Ready(*e.b, "work") == 5);
}

TEST_CASE(
    "A duplicate publish into a full blocking queue is dropped at once "
    "instead of waiting for room") {
  Env e;
  REQUIRE(e.b->DeclareQueue("work", {.max_length = 1,
                                     .overflow = Overflow::kBlock,
                                     .dedup_window = absl::Minutes(1)})
              .ok());
  Message m("a");
  m.properties().message_id = "a";
  REQUIRE(e.b->Publish("", "work", m).ok());  // the queue is full now
  // A timeout bounds the wait if it waited; a duplicate does not wait.
  auto again = e.b->Publish("", "work", m, {.timeout = absl::Seconds(30)});
  REQUIRE(again.ok());
  CHECK(again->queues == 1);
  CHECK(again->duplicates == 1);
  CHECK(e.Stats("work").deduplicated == 1);
  CHECK(e.Stats("work").refused == 0);
  CHECK(Drain(*e.b, "work") == std::vector<std::string>{"a"});
}

TEST_CASE(
    "A publish refused by a full queue is not remembered as a "
    "duplicate") {
  Env e;
  REQUIRE(e.b->DeclareQueue("work",
                            {.max_length = 1, .dedup_window = absl::Minutes(1)})
              .ok());
  auto with_id = [](std::string id) {
    Message m(id);
    m.properties().message_id = std::move(id);
    return m;
  };
  REQUIRE(e.b->Publish("", "work", with_id("a")).ok());
  CHECK(absl::IsResourceExhausted(
      e.b->Publish("", "work", with_id("b")).status()));
  CHECK(Drain(*e.b, "work") == std::vector<std::string>{"a"});
  auto retried = e.b->Publish("", "work", with_id("b"));  // room now
  REQUIRE(retried.ok());
  CHECK(retried->duplicates == 0);
  CHECK(Drain(*e.b, "work") == std::vector<std::string>{"b"});
  CHECK(e.Stats("work").deduplicated == 0);
}

// "work" dead-letters into "dlq"; two rejected messages wait there.
// Declares queue "work" and dead-letters `n` messages "d1", "d2", ... from
// it into "dlq".
void DeadLetters(Env& e, int n) {
  REQUIRE(e.b->DeclareQueue("work", WithDlx({})).ok());
  for (int i = 1; i <= n; ++i) {
    REQUIRE(Send(*e.b, "", "work", "d" + std::to_string(i)).ok());
  }
  auto c = e.b->Consume("work").value();
  for (int i = 0; i < n; ++i) {
    REQUIRE(c->Reject(c->TryReceive().value(), {.requeue = false}).ok());
  }
}

void TwoDeadLetters(Env& e) { DeadLetters(e, 2); }

TEST_CASE("Browse shows ready messages without consuming them") {
  Env e;
  TwoDeadLetters(e);
  auto seen = e.b->Browse("dlq", 10).value();
  REQUIRE(seen.size() == 2);
  CHECK(seen[0].body() == "d1");
  CHECK(DeathHistory(seen[1])[0].queue == "work");
  CHECK(e.b->Browse("dlq", 1).value().size() == 1);
  auto s = e.Stats("dlq");
  CHECK(s.ready == 2);
  CHECK(s.delivered == 0);
  CHECK(Drain(*e.b, "dlq") == std::vector<std::string>{"d1", "d2"});
}

TEST_CASE(
    "Redrive moves dead letters back to the queue they died in, "
    "keeping their history") {
  Env e;
  TwoDeadLetters(e);
  CHECK(e.b->Redrive("dlq", {}).value() == 2);
  CHECK(Ready(*e.b, "dlq") == 0);
  auto c = e.b->Consume("work").value();
  auto d = c->TryReceive().value();
  CHECK(d.body() == "d1");
  CHECK(DeathHistory(d.message()).size() == 1);
  // Rejected again, it dies a second time in the same queue.
  REQUIRE(c->Reject(d, {.requeue = false}).ok());
  auto dead = e.b->Browse("dlq", 1).value();
  CHECK(DeathHistory(dead[0])[0].count == 2);
}

TEST_CASE("Redrive to a named queue or exchange, bounded in count") {
  Env e;
  TwoDeadLetters(e);
  REQUIRE(e.b->DeclareQueue("inspect").ok());
  CHECK(
      e.b->Redrive("dlq", {.to_queue = "inspect", .max_messages = 1}).value() ==
      1);
  CHECK(Ready(*e.b, "inspect") == 1);
  REQUIRE(e.b->DeclareExchange("retry", ExchangeType::kDirect).ok());
  REQUIRE(e.b->Bind("inspect", "retry", "again").ok());
  CHECK(e.b->Redrive("dlq", {.to_exchange = "retry", .routing_key = "again"})
            .value() == 1);
  CHECK(Drain(*e.b, "inspect") == std::vector<std::string>{"d1", "d2"});
}

TEST_CASE(
    "Redrive into a full reject-publish-dlx queue leaves the message in the "
    "dead-letter queue once") {
  // The full queue refuses it; it stays where it was, and the refusal does
  // not dead-letter a second copy of it back into the dead-letter queue.
  Env e;
  REQUIRE(e.b->DeclareQueue("work",
                            WithDlx({.max_length = 1,
                                     .overflow = Overflow::kRejectPublishDlx}))
              .ok());
  REQUIRE(Send(*e.b, "", "work", "dead").ok());
  {
    auto c = e.b->Consume("work").value();
    REQUIRE(c->Reject(c->TryReceive().value(), {.requeue = false}).ok());
  }
  REQUIRE(Send(*e.b, "", "work", "fill").ok());  // full now
  for (int i = 0; i < 3; ++i) {
    CHECK(e.b->Redrive("dlq", {}).value() == 0);
    CHECK(Ready(*e.b, "dlq") == 1);
  }
  CHECK(e.Stats("work").refused == 3);
  CHECK(e.Stats("work").dead_lettered == 1);  // the rejection only
  // With room, the one copy moves.
  CHECK(Drain(*e.b, "work") == std::vector<std::string>{"fill"});
  CHECK(e.b->Redrive("dlq", {}).value() == 1);
  CHECK(Ready(*e.b, "dlq") == 0);
  CHECK(Drain(*e.b, "work") == std::vector<std::string>{"dead"});
}

TEST_CASE(
    "Redrive moves a message back into a queue whose deduplication window "
    "still holds its id") {
  // A deliberate move, not a duplicate publish: the message goes back (and
  // its id counts as seen again, so a producer's retry is still dropped).
  // A kBlock queue records ids as it takes messages, the others first.
  const Overflow overflow =
      GENERATE(Overflow::kRejectPublish, Overflow::kBlock);
  CAPTURE(overflow == Overflow::kBlock);
  Env e;
  REQUIRE(
      e.b->DeclareQueue("work", WithDlx({.overflow = overflow,
                                         .dedup_window = absl::Minutes(10)}))
          .ok());
  Message job("job");
  job.properties().message_id = "job-1";
  REQUIRE(e.b->Publish("", "work", job).ok());
  {
    auto c = e.b->Consume("work").value();
    REQUIRE(c->Reject(c->TryReceive().value(), {.requeue = false}).ok());
  }
  e.Advance(absl::Minutes(1));
  CHECK(e.b->Redrive("dlq", {}).value() == 1);
  CHECK(Ready(*e.b, "dlq") == 0);
  CHECK(e.Stats("work").deduplicated == 0);
  CHECK(Ready(*e.b, "work") == 1);
  auto retry = e.b->Publish("", "work", job);
  REQUIRE(retry.ok());
  CHECK(retry->duplicates == 1);
  CHECK(Drain(*e.b, "work") == std::vector<std::string>{"job"});
}

TEST_CASE(
    "A second death of a redriven message reaches a dead-letter queue that "
    "deduplicates") {
  Env e;
  REQUIRE(
      e.b->DeclareQueue("dedup-dlq", {.dedup_window = absl::Minutes(10)}).ok());
  REQUIRE(e.b->DeclareExchange("dedup-dlx", ExchangeType::kFanout).ok());
  REQUIRE(e.b->Bind("dedup-dlq", "dedup-dlx", "").ok());
  REQUIRE(
      e.b->DeclareQueue("work", {.dead_letter_exchange = "dedup-dlx"}).ok());
  Message job("job");
  job.properties().message_id = "job-1";
  REQUIRE(e.b->Publish("", "work", job).ok());
  for (int death = 1; death <= 2; ++death) {
    CAPTURE(death);
    {
      auto c = e.b->Consume("work").value();
      REQUIRE(c->Reject(c->TryReceive().value(), {.requeue = false}).ok());
    }
    CHECK(Ready(*e.b, "dedup-dlq") == 1);
    CHECK(e.Stats("dedup-dlq").deduplicated == 0);
    CHECK(e.b->Redrive("dedup-dlq", {}).value() == 1);
  }
  CHECK(Drain(*e.b, "work") == std::vector<std::string>{"job"});
}

TEST_CASE("Redrive at a rate moves messages on the broker clock") {
  Env e;
  TwoDeadLetters(e);
  REQUIRE(Send(*e.b, "", "dlq", "d3").ok());
  CHECK(e.b->Redrive("dlq", {.to_queue = "work", .messages_per_second = 2})
            .value() == 0);
  e.Advance(absl::ZeroDuration());
  CHECK(Ready(*e.b, "work") == 1);
  e.Advance(absl::Milliseconds(499));
  CHECK(Ready(*e.b, "work") == 1);
  e.Advance(absl::Milliseconds(1));
  CHECK(Ready(*e.b, "work") == 2);
  e.Advance(absl::Seconds(10));
  CHECK(Ready(*e.b, "work") == 3);
  CHECK(Ready(*e.b, "dlq") == 0);
}

TEST_CASE(
    "Overflow block makes the publisher wait for room, then "
    "DeadlineExceeded") {
  Env e;
  REQUIRE(
      e.b->DeclareQueue("work", {.max_length = 1, .overflow = Overflow::kBlock})
          .ok());
  REQUIRE(Send(*e.b, "", "work", "first").ok());
  CHECK(absl::IsDeadlineExceeded(
      Send(*e.b, "", "work", "late", {.timeout = absl::Milliseconds(5)})
          .status()));
  CHECK(e.Stats("work").refused == 1);
  CHECK(Ready(*e.b, "work") == 1);

  CHECK(e.Stats("work").blocked_publishers == 0);  // the late one gave up

  absl::StatusOr<PublishOutcome> waited;
  std::thread publisher([&] { waited = Send(*e.b, "", "work", "second"); });
  // The statistics show the publisher waiting.
  CHECK(e.WaitForBlockedPublisher("work") == 1);
  auto c = e.b->Consume("work").value();
  REQUIRE(c->Ack(c->Receive(absl::Seconds(30)).value()).ok());  // makes room
  publisher.join();
  REQUIRE(waited.ok());
  CHECK(waited->queues == 1);
  CHECK(e.Stats("work").blocked_publishers == 0);
  auto d = c->Receive(absl::Seconds(30)).value();
  CHECK(d.body() == "second");
}

TEST_CASE(
    "A publisher waiting for room learns that the broker closed or the "
    "queue was deleted") {
  const bool close = GENERATE(true, false);
  CAPTURE(close);
  Env e;
  REQUIRE(
      e.b->DeclareQueue("work", {.max_length = 1, .overflow = Overflow::kBlock})
          .ok());
  REQUIRE(Send(*e.b, "", "work", "first").ok());
  absl::StatusOr<PublishOutcome> waited;
  std::thread publisher([&] { waited = Send(*e.b, "", "work", "second"); });
  REQUIRE(e.WaitForBlockedPublisher("work") == 1);
  if (close) {
    e.b->Close();
  } else {
    REQUIRE(e.b->DeleteQueue("work").ok());
  }
  publisher.join();
  // Not kDeadlineExceeded: the publish had no timeout.
  INFO(waited.status());
  CHECK((close ? absl::IsFailedPrecondition(waited.status())
               : absl::IsNotFound(waited.status())));
}

TEST_CASE("Overflow block waits for room in a queue full by bytes") {
  Env e;
  REQUIRE(e.b->DeclareQueue(
                 "work", {.max_length_bytes = 4, .overflow = Overflow::kBlock})
              .ok());
  REQUIRE(Send(*e.b, "", "work", "1234").ok());
  CHECK(absl::IsDeadlineExceeded(
      Send(*e.b, "", "work", "56", {.timeout = absl::Milliseconds(5)})
          .status()));
  CHECK(e.Stats("work").refused == 1);

  absl::StatusOr<PublishOutcome> waited;
  std::thread publisher([&] { waited = Send(*e.b, "", "work", "56"); });
  auto c = e.b->Consume("work").value();
  REQUIRE(c->Ack(c->Receive(absl::Seconds(30)).value()).ok());  // makes room
  publisher.join();
  REQUIRE(waited.ok());
  CHECK(waited->queues == 1);
  CHECK(c->Receive(absl::Seconds(30)).value().body() == "56");
}

TEST_CASE(
    "A message larger than max_length_bytes is refused at once and "
    "waits for no room") {
  Env e;
  REQUIRE(e.b->DeclareQueue(
                 "work", {.max_length_bytes = 4, .overflow = Overflow::kBlock})
              .ok());
  REQUIRE(e.b->DeclareQueue("other").ok());
  REQUIRE(e.b->DeclareExchange("both", ExchangeType::kFanout).ok());
  REQUIRE(e.b->Bind("work", "both", "").ok());
  REQUIRE(e.b->Bind("other", "both", "").ok());
  // No amount of consuming makes room for 5 bytes under a 4-byte limit: the
  // publish is refused as a full reject-publish queue refuses it, not after
  // its (here long) timeout.
  const PublishOptions patient{.timeout = absl::Seconds(20)};
  auto alone = Send(*e.b, "", "work", "12345", patient);
  CHECK(absl::IsResourceExhausted(alone.status()));
  auto shared = Send(*e.b, "both", "", "12345", patient);
  REQUIRE(shared.ok());
  CHECK(shared->queues == 1);
  CHECK(shared->refused_by == std::vector<std::string>{"work"});
  CHECK(e.Stats("work").refused == 2);
  CHECK(e.Stats("work").ready == 0);
  // One that fits still goes in.
  CHECK(Send(*e.b, "", "work", "1234").ok());

  // Drop-head drops nothing for a message that could never fit.
  REQUIRE(e.b->DeclareQueue("dh", WithDlx({.max_length_bytes = 4,
                                           .overflow = Overflow::kDropHead}))
              .ok());
  REQUIRE(Send(*e.b, "", "dh", "keep").ok());
  CHECK(absl::IsResourceExhausted(Send(*e.b, "", "dh", "12345").status()));
  CHECK(e.Stats("dh").refused == 1);
  CHECK(e.Stats("dh").dead_lettered == 0);
  CHECK(Drain(*e.b, "dh") == std::vector<std::string>{"keep"});

  // Delayed, it is refused at once too, not when its delay ends.
  REQUIRE(e.b->DeclareQueue("later", {.max_length_bytes = 4}).ok());
  CHECK(absl::IsResourceExhausted(
      Send(*e.b, "", "later", "12345", {.delay = absl::Seconds(10)}).status()));
  CHECK(e.Stats("later").refused == 1);
  CHECK(e.Stats("later").delayed == 0);

  // A duplicate is a duplicate whatever its size, on a kBlock queue too.
  REQUIRE(e.b->DeclareQueue("dedup", {.max_length_bytes = 4,
                                      .overflow = Overflow::kBlock,
                                      .dedup_window = absl::Minutes(1)})
              .ok());
  Message small("12");
  small.properties().message_id = "a";
  REQUIRE(e.b->Publish("", "dedup", small).ok());
  Message big("12345");
  big.properties().message_id = "a";
  auto again = e.b->Publish("", "dedup", big, patient);
  REQUIRE(again.ok());
  CHECK(again->duplicates == 1);
  CHECK(e.Stats("dedup").refused == 0);
}

TEST_CASE(
    "Exchange statistics count the messages that dead-lettering and "
    "redrive publish through the exchange") {
  Env e;
  TwoDeadLetters(e);  // two rejections published through "dlx"
  auto dlx = e.b->GetExchangeStats("dlx").value();
  CHECK(dlx.published == 2);
  CHECK(dlx.routed == 2);
  CHECK(dlx.unroutable == 0);

  // Redrive back to the queue they died in goes through the default
  // exchange; to a named exchange, through that one.
  const uint64_t before = e.b->GetExchangeStats("").value().published;
  CHECK(e.b->Redrive("dlq", {.max_messages = 1}).value() == 1);
  auto def = e.b->GetExchangeStats("").value();
  CHECK(def.published == before + 1);
  REQUIRE(e.b->DeclareExchange("retry", ExchangeType::kDirect).ok());
  REQUIRE(e.b->Bind("work", "retry", "again").ok());
  CHECK(e.b->Redrive("dlq", {.to_exchange = "retry", .routing_key = "again"})
            .value() == 1);
  auto retry = e.b->GetExchangeStats("retry").value();
  CHECK(retry.published == 1);
  CHECK(retry.routed == 1);

  // A dead letter that the exchange routes nowhere is unroutable there.
  REQUIRE(e.b->DeclareExchange("void", ExchangeType::kFanout).ok());
  REQUIRE(e.b->DeclareQueue("lost", {.dead_letter_exchange = "void"}).ok());
  REQUIRE(Send(*e.b, "", "lost", "m").ok());
  auto c = e.b->Consume("lost").value();
  REQUIRE(c->Reject(c->TryReceive().value(), {.requeue = false}).ok());
  auto v = e.b->GetExchangeStats("void").value();
  CHECK(v.published == 1);
  CHECK(v.unroutable == 1);
  CHECK(e.Stats("lost").dropped == 1);
}

TEST_CASE("A queue unused for its expiry time is deleted") {
  Env e;
  REQUIRE(e.b->DeclareQueue("idle", {.expires = absl::Seconds(10)}).ok());
  REQUIRE(e.b->DeclareExchange("x", ExchangeType::kFanout).ok());
  REQUIRE(e.b->Bind("idle", "x", "").ok());
  e.Advance(absl::Seconds(9));
  { auto c = e.b->Consume("idle").value(); }  // a use, at 9 s
  e.Advance(absl::Seconds(9));                // 18 s: idle for 9 s only
  CHECK(e.b->GetQueueStats("idle").ok());
  e.Advance(absl::Seconds(1));  // idle for 10 s
  CHECK(absl::IsNotFound(e.b->GetQueueStats("idle").status()));
  auto out = Send(*e.b, "x", "", "m");
  REQUIRE(out.ok());
  CHECK(out->queues == 0);  // its bindings went with it
}

TEST_CASE("A queue with a consumer does not expire") {
  Env e;
  REQUIRE(e.b->DeclareQueue("busy", {.expires = absl::Seconds(10)}).ok());
  auto c = e.b->Consume("busy").value();
  e.Advance(absl::Minutes(10));
  CHECK(e.b->GetQueueStats("busy").ok());
  c.reset();
  e.Advance(absl::Seconds(10));
  CHECK(absl::IsNotFound(e.b->GetQueueStats("busy").status()));
}

TEST_CASE("Statistics report how long the oldest ready message has waited") {
  Env e;
  REQUIRE(e.b->DeclareQueue("work").ok());
  CHECK(e.Stats("work").oldest_ready_age == absl::ZeroDuration());
  REQUIRE(Send(*e.b, "", "work", "old").ok());
  e.Advance(absl::Seconds(5));
  REQUIRE(Send(*e.b, "", "work", "new").ok());
  e.Advance(absl::Seconds(1));
  CHECK(e.Stats("work").oldest_ready_age == absl::Seconds(6));
  // Taking a look changed nothing: the queue still reads in order.
  CHECK(e.Stats("work").oldest_ready_age == absl::Seconds(6));
  auto c = e.b->Consume("work").value();
  auto d = c->TryReceive().value();
  CHECK(d.body() == "old");
  CHECK(e.Stats("work").oldest_ready_age == absl::Seconds(1));
  REQUIRE(c->Nack(d).ok());  // back, and the oldest again
  CHECK(e.Stats("work").oldest_ready_age == absl::Seconds(6));
  CHECK(Drain(*e.b, "work") == std::vector<std::string>{"old", "new"});
}

TEST_CASE("Bad failure-handling input is refused and changes nothing") {
  Env e;
  REQUIRE(e.b->DeclareQueue("plain").ok());
  auto bad = [&](QueueOptions o) {
    return absl::IsInvalidArgument(e.b->DeclareQueue("bad", o));
  };
  CHECK(bad({.retry = RetryPolicy{.max_attempts = 0}}));
  CHECK(bad({.retry = RetryPolicy{.initial_delay = absl::Seconds(-1)}}));
  CHECK(bad({.retry = RetryPolicy{.max_delay = absl::InfiniteDuration()}}));
  CHECK(bad({.retry = RetryPolicy{.multiplier = 0.5}}));
  CHECK(bad(
      {.retry = RetryPolicy{.jitter = Jitter::kRatio, .jitter_ratio = 1.5}}));
  CHECK(bad({.retry = RetryPolicy{.backoff = Backoff::kCustom}}));
  CHECK(bad({.message_ttl = absl::Seconds(-1)}));
  CHECK(bad({.message_ttl = absl::Hours(24 * 365 * 11)}));
  CHECK(bad({.ack_deadline = absl::InfiniteDuration()}));
  CHECK(bad({.dedup_window = absl::Seconds(-5)}));
  CHECK(absl::IsInvalidArgument(
      e.b->DeclareQueue("self", {.dead_letter_exchange = "",
                                 .dead_letter_routing_key = "self",
                                 .retry = RetryPolicy{}})));
  CHECK(absl::IsNotFound(e.b->GetQueueStats("bad").status()));
  CHECK(absl::IsNotFound(e.b->GetQueueStats("self").status()));

  CHECK(absl::IsInvalidArgument(
      Send(*e.b, "", "plain", "x", {.delay = absl::Seconds(-1)}).status()));
  Message forever("x");
  forever.properties().expiration = absl::Hours(24 * 365 * 11);
  CHECK(absl::IsInvalidArgument(
      e.b->Publish("", "plain", std::move(forever)).status()));
  CHECK(absl::IsInvalidArgument(
      e.b->Consume("plain", {.ack_deadline = absl::Seconds(-1)}).status()));
  CHECK(Ready(*e.b, "plain") == 0);

  TwoDeadLetters(e);
  CHECK(absl::IsFailedPrecondition(e.b->Redrive("plain", {}).status()));
  CHECK(absl::IsNotFound(e.b->Redrive("nope", {}).status()));
  CHECK(absl::IsNotFound(e.b->Redrive("dlq", {.to_queue = "nope"}).status()));
  CHECK(
      absl::IsNotFound(e.b->Redrive("dlq", {.to_exchange = "nope"}).status()));
  CHECK(absl::IsInvalidArgument(
      e.b->Redrive("dlq", {.to_queue = "work", .to_exchange = "dlx"})
          .status()));
  CHECK(absl::IsInvalidArgument(
      e.b->Redrive("dlq", {.messages_per_second = -1}).status()));
  CHECK(Ready(*e.b, "dlq") == 2);
}

TEST_CASE(
    "Redrive takes a queue that dead letters reach through other exchanges "
    "or the default exchange") {
  auto b = NewBroker();
  // work -> dlx -> dlx2 (an exchange-to-exchange binding) -> far, and an
  // alternate exchange of dlx2 -> spare for what its bindings do not match.
  REQUIRE(b->DeclareExchange("dlx", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareExchange("dlx2", ExchangeType::kDirect,
                             {.alternate_exchange = "spare-ae"})
              .ok());
  REQUIRE(b->DeclareExchange("spare-ae", ExchangeType::kFanout).ok());
  REQUIRE(b->BindExchange("dlx2", "dlx", "").ok());
  REQUIRE(b->DeclareQueue("far").ok());
  REQUIRE(b->DeclareQueue("spare").ok());
  REQUIRE(b->Bind("far", "dlx2", "work").ok());
  REQUIRE(b->Bind("spare", "spare-ae", "").ok());
  REQUIRE(b->DeclareQueue("plain").ok());
  // No queue dead-letters to dlx yet.
  CHECK(absl::IsFailedPrecondition(b->Redrive("far", {}).status()));
  REQUIRE(b->DeclareQueue("work", {.dead_letter_exchange = "dlx"}).ok());
  {
    REQUIRE(Send(*b, "", "work", "w1").ok());
    auto c = b->Consume("work").value();
    REQUIRE(c->Reject(c->TryReceive().value(), {.requeue = false}).ok());
  }
  REQUIRE(Ready(*b, "far") == 1);
  CHECK(b->Redrive("far", {}).value() == 1);
  CHECK(b->Redrive("spare", {}).value() == 0);
  CHECK(Drain(*b, "work") == std::vector<std::string>{"w1"});
  CHECK(absl::IsFailedPrecondition(b->Redrive("plain", {}).status()));

  // Dead-lettering to the default exchange under each message's own key
  // may reach any queue.
  REQUIRE(b->DeclareQueue("by-key", {.dead_letter_exchange = ""}).ok());
  CHECK(b->Redrive("plain", {}).value() == 0);
}

TEST_CASE(
    "Redrive refuses a routing key without a target exchange and moves "
    "nothing") {
  Env e;
  TwoDeadLetters(e);
  REQUIRE(e.b->DeclareQueue("inspect").ok());
  CHECK(absl::IsInvalidArgument(
      e.b->Redrive("dlq", {.routing_key = "work"}).status()));
  CHECK(absl::IsInvalidArgument(
      e.b->Redrive("dlq", {.to_queue = "inspect", .routing_key = "work"})
          .status()));
  CHECK(Ready(*e.b, "dlq") == 2);
  CHECK(Ready(*e.b, "work") == 0);
  CHECK(Ready(*e.b, "inspect") == 0);
}

TEST_CASE(
    "A delayed message meets the length limit when it becomes ready and "
    "never vanishes uncounted") {
  Env e;
  auto reason_in_dlq = [&] {
    auto dead = e.b->Browse("dlq", 1).value();
    REQUIRE(dead.size() == 1);
    return std::pair(std::string(dead[0].body()),
                     DeathHistory(dead[0])[0].reason);
  };
  const PublishOptions later{.delay = absl::Seconds(5)};

  SECTION("drop-head gives up on the oldest ready message to make room") {
    REQUIRE(e.b->DeclareQueue(
                   "work",
                   WithDlx({.max_length = 2, .overflow = Overflow::kDropHead}))
                .ok());
    REQUIRE(Send(*e.b, "", "work", "late", later).ok());
    REQUIRE(Send(*e.b, "", "work", "a").ok());
    REQUIRE(Send(*e.b, "", "work", "b").ok());
    e.Advance(absl::Seconds(5));
    CHECK(e.Stats("work").ready == 2);
    CHECK(reason_in_dlq() == std::pair(std::string("a"), DeathReason::kMaxLen));
    CHECK(Drain(*e.b, "work") == std::vector<std::string>{"late", "b"});
  }

  SECTION("reject-publish-dlx refuses it and dead-letters it") {
    REQUIRE(e.b->DeclareQueue(
                   "work", WithDlx({.max_length = 2,
                                    .overflow = Overflow::kRejectPublishDlx}))
                .ok());
    REQUIRE(Send(*e.b, "", "work", "late", later).ok());
    REQUIRE(Send(*e.b, "", "work", "a").ok());
    REQUIRE(Send(*e.b, "", "work", "b").ok());
    e.Advance(absl::Seconds(5));
    CHECK(e.Stats("work").refused == 1);
    CHECK(e.Stats("work").delayed == 0);
    CHECK(reason_in_dlq() ==
          std::pair(std::string("late"), DeathReason::kMaxLen));
    CHECK(Drain(*e.b, "work") == std::vector<std::string>{"a", "b"});
  }

  SECTION("reject-publish keeps the accepted message over the limit") {
    REQUIRE(e.b->DeclareQueue("work", {.max_length = 2}).ok());
    REQUIRE(Send(*e.b, "", "work", "late", later).ok());
    REQUIRE(Send(*e.b, "", "work", "a").ok());
    REQUIRE(Send(*e.b, "", "work", "b").ok());
    e.Advance(absl::Seconds(5));
    CHECK(e.Stats("work").ready == 3);
    CHECK(e.Stats("work").refused == 0);
    // New publishes are refused until the queue is below its limit again.
    CHECK(absl::IsResourceExhausted(Send(*e.b, "", "work", "c").status()));
    CHECK(Drain(*e.b, "work") == std::vector<std::string>{"late", "a", "b"});
  }

  SECTION("a retried message is returned and drops nothing") {
    REQUIRE(
        e.b->DeclareQueue(
               "work", WithDlx({.max_length = 1,
                                .overflow = Overflow::kDropHead,
                                .retry = RetryPolicy{.backoff = Backoff::kFixed,
                                                     .initial_delay =
                                                         absl::Seconds(5)}}))
            .ok());
    REQUIRE(Send(*e.b, "", "work", "retried").ok());
    auto c = e.b->Consume("work").value();
    REQUIRE(c->Nack(c->TryReceive().value()).ok());
    REQUIRE(Send(*e.b, "", "work", "a").ok());
    e.Advance(absl::Seconds(5));
    CHECK(e.Stats("work").ready == 2);
    CHECK(Ready(*e.b, "dlq") == 0);
  }
}

TEST_CASE(
    "Under drop-head a delayed message becoming ready while concurrent "
    "publishers hold the room is never refused") {
  // The delays end on this thread (the manual clock runs due timers as it
  // moves) while three others publish into a queue of one: its one place is
  // often reserved by a publisher that has not pushed its message yet.
  Env e;
  REQUIRE(e.b->DeclareQueue("work",
                            {.max_length = 1, .overflow = Overflow::kDropHead})
              .ok());
  constexpr int kDelayed = 2000;
  std::atomic<bool> stop{false};
  std::atomic<int> failed{0};
  std::atomic<uint64_t> sent{0};
  std::vector<std::thread> publishers;
  for (int t = 0; t < 3; ++t) {
    publishers.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        auto r = Send(*e.b, "", "work", "now");
        if (!r.ok() || r->queues != 1) failed.fetch_add(1);
        sent.fetch_add(1);
      }
    });
  }
  for (int i = 0; i < kDelayed; ++i) {
    REQUIRE(Send(*e.b, "", "work", "later", {.delay = absl::Seconds(1)}).ok());
    e.Advance(absl::Seconds(1));
  }
  stop = true;
  for (std::thread& t : publishers) t.join();
  CHECK(failed.load() == 0);
  const QueueStats s = e.Stats("work");
  CHECK(s.refused == 0);
  CHECK(s.delayed == 0);
  CHECK(s.published == sent.load() + kDelayed);
  CHECK(s.dropped == s.published - s.ready);
}

TEST_CASE(
    "A message whose TTL runs out during a delay or retry backoff is expired "
    "when its time comes and not when the wait ends") {
  Env e;
  SECTION("a publish delay") {
    REQUIRE(e.b->DeclareQueue("work", WithDlx({})).ok());
    Message m("short-lived");
    m.properties().expiration = absl::Seconds(1);
    REQUIRE(e.b->Publish("", "work", m, {.delay = absl::Hours(1)}).ok());
    e.Advance(absl::Seconds(2));
  }
  SECTION("a retry backoff") {
    REQUIRE(
        e.b->DeclareQueue(
               "work",
               WithDlx({.retry = RetryPolicy{.backoff = Backoff::kFixed,
                                             .initial_delay = absl::Hours(1)},
                        .message_ttl = absl::Seconds(10)}))
            .ok());
    REQUIRE(Send(*e.b, "", "work", "m").ok());
    auto c = e.b->Consume("work").value();
    REQUIRE(c->Nack(c->TryReceive().value()).ok());  // back in 1 h
    e.Advance(absl::Seconds(11));                    // TTL over at 10 s
  }
  // SEMANTICS 5: removed and dead-lettered `expired` promptly, not only when
  // it reaches the head (here: not only when its one-hour wait ends).
  CHECK(e.Stats("work").expired == 1);
  CHECK(e.Stats("work").delayed == 0);
  CHECK(Ready(*e.b, "dlq") == 1);
}

TEST_CASE(
    "Looking at a queue does not change where a delayed message goes once "
    "ready") {
  Env e;
  REQUIRE(e.b->DeclareQueue("work").ok());
  REQUIRE(Send(*e.b, "", "work", "B").ok());
  REQUIRE(Send(*e.b, "", "work", "A", {.delay = absl::Seconds(10)}).ok());
  REQUIRE(Send(*e.b, "", "work", "C").ok());
  SECTION("a statistics snapshot") { (void)e.Stats("work"); }
  SECTION("browsing") { REQUIRE(e.b->Browse("work", 10).ok()); }
  e.Advance(absl::Seconds(10));
  // README "Order": a delayed message whose delay is over goes ahead of the
  // messages never delivered (as it does when nobody looked).
  CHECK(Drain(*e.b, "work") == std::vector<std::string>{"A", "B", "C"});
}

TEST_CASE(
    "A paced redrive moves past a message whose target is gone as an "
    "immediate one does") {
  Env e;
  REQUIRE(e.b->DeclareQueue("gone", WithDlx({})).ok());
  REQUIRE(e.b->DeclareQueue("work", WithDlx({})).ok());
  REQUIRE(Send(*e.b, "", "gone", "g").ok());
  REQUIRE(Send(*e.b, "", "work", "w").ok());
  for (const char* q : {"gone", "work"}) {
    auto c = e.b->Consume(q).value();
    REQUIRE(c->Reject(c->TryReceive().value(), {.requeue = false}).ok());
  }
  REQUIRE(Ready(*e.b, "dlq") == 2);
  REQUIRE(e.b->DeleteQueue("gone").ok());  // "g" has nowhere to go back to
  REQUIRE(e.b->Redrive("dlq", {.messages_per_second = 10}).value() == 0);
  e.Advance(absl::ZeroDuration());
  e.Advance(absl::Seconds(10));
  // "g" stays in the dead-letter queue; "w" goes back to "work" (an
  // immediate Redrive("dlq", {}) moves it and returns 1).
  CHECK(Ready(*e.b, "work") == 1);
  CHECK(Ready(*e.b, "dlq") == 1);
}

TEST_CASE("A paced redrive runs every tick that fell due while time jumped") {
  Env e;
  DeadLetters(e, 10);
  REQUIRE(Ready(*e.b, "dlq") == 10);
  REQUIRE(e.b->Redrive("dlq", {.messages_per_second = 1}).value() == 0);
  e.Advance(absl::ZeroDuration());
  CHECK(Ready(*e.b, "work") == 1);
  e.Advance(absl::Seconds(4));  // the ticks at 1, 2, 3 and 4 s
  CHECK(Ready(*e.b, "work") == 5);
  e.Advance(absl::Milliseconds(999));
  CHECK(Ready(*e.b, "work") == 5);
  e.Advance(absl::Seconds(100));
  CHECK(Ready(*e.b, "work") == 10);
  CHECK(Ready(*e.b, "dlq") == 0);
}

TEST_CASE(
    "An immediate redrive with a bound looks past messages that cannot "
    "move") {
  Env e;
  REQUIRE(e.b->DeclareQueue("gone", WithDlx({})).ok());
  REQUIRE(Send(*e.b, "", "gone", "g").ok());
  {
    auto c = e.b->Consume("gone").value();
    REQUIRE(c->Reject(c->TryReceive().value(), {.requeue = false}).ok());
  }
  REQUIRE(e.b->DeleteQueue("gone").ok());  // "g" has nowhere to go back to
  DeadLetters(e, 3);                       // behind "g"
  for (int i = 0; i < 3; ++i) {
    CAPTURE(i);
    CHECK(e.b->Redrive("dlq", {.max_messages = 1}).value() == 1);
  }
  CHECK(e.b->Redrive("dlq", {.max_messages = 1}).value() == 0);
  CHECK(Drain(*e.b, "work") == std::vector<std::string>{"d1", "d2", "d3"});
  CHECK(Drain(*e.b, "dlq") == std::vector<std::string>{"g"});
}

TEST_CASE(
    "A redrive into the queue it drains moves each message once and ends") {
  Env e;
  DeadLetters(e, 3);
  const uint64_t max = GENERATE(uint64_t{0}, uint64_t{100});
  CAPTURE(max);
  CHECK(e.b->Redrive("dlq", {.to_queue = "dlq", .max_messages = max}).value() ==
        3);
  CHECK(Drain(*e.b, "dlq") == std::vector<std::string>{"d1", "d2", "d3"});
}

TEST_CASE("A custom backoff that throws retries after the initial delay") {
  Env e;
  REQUIRE(e.b->DeclareQueue(
                 "work",
                 {.retry = RetryPolicy{.backoff = Backoff::kCustom,
                                       .initial_delay = absl::Seconds(5),
                                       .custom = [](uint32_t, const Message&)
                                           -> absl::Duration {
                                         throw std::runtime_error(
                                             "no backoff today");
                                       }}})
              .ok());
  REQUIRE(Send(*e.b, "", "work", "m").ok());
  auto c = e.b->Consume("work").value();
  REQUIRE(c->Nack(c->TryReceive().value()).ok());
  CHECK(e.Stats("work").delayed == 1);
  CHECK(e.Stats("work").unacked == 0);
  e.Advance(absl::Milliseconds(4999));
  CHECK(absl::IsUnavailable(c->TryReceive().status()));
  e.Advance(absl::Milliseconds(1));
  auto again = c->TryReceive();
  REQUIRE(again.ok());
  CHECK(again->redelivered());
  CHECK(again->attempt() == 2);
}

TEST_CASE("A backoff of zero makes a nacked message ready at once") {
  Env e;
  REQUIRE(e.b->DeclareQueue(
                 "work",
                 {.retry = RetryPolicy{.backoff = Backoff::kFixed,
                                       .initial_delay = absl::ZeroDuration()}})
              .ok());
  REQUIRE(Send(*e.b, "", "work", "m").ok());
  auto c = e.b->Consume("work").value();
  REQUIRE(c->Nack(c->TryReceive().value()).ok());
  CHECK(e.Stats("work").delayed == 0);
  CHECK(e.Stats("work").requeued == 1);
  auto again = c->TryReceive();  // no Advance
  REQUIRE(again.ok());
  CHECK(again->attempt() == 2);
}

TEST_CASE(
    "A message whose time-to-live is zero is dead-lettered as it arrives "
    "and holds no room") {
  Env e;
  const bool per_message = GENERATE(false, true);
  CAPTURE(per_message);
  QueueOptions options = WithDlx({.max_length = 1});
  if (!per_message) options.message_ttl = absl::ZeroDuration();
  REQUIRE(e.b->DeclareQueue("work", options).ok());
  for (const char* body : {"a", "b"}) {
    Message m(body);
    if (per_message) m.properties().expiration = absl::ZeroDuration();
    auto out = e.b->Publish("", "work", std::move(m));
    REQUIRE(out.ok());
    CHECK(out->queues == 1);  // taken, then expired: routed, not refused
  }
  const QueueStats s = e.Stats("work");
  CHECK(s.ready == 0);
  CHECK(s.ready_bytes == 0);
  CHECK(s.expired == 2);
  CHECK(s.refused == 0);
  CHECK(Drain(*e.b, "dlq") == std::vector<std::string>{"a", "b"});
  CHECK(e.b->DeleteQueue("work", {.if_empty = true}).ok());
}

TEST_CASE("Extend by zero ends the lease at once") {
  Env e;
  REQUIRE(e.b->DeclareQueue("work", {.ack_deadline = absl::Seconds(30)}).ok());
  REQUIRE(Send(*e.b, "", "work", "m").ok());
  auto c = e.b->Consume("work").value();
  auto other = e.b->Consume("work").value();
  auto d = c->TryReceive().value();
  REQUIRE(c->Extend(d, absl::ZeroDuration()).ok());
  // As SQS's visibility timeout of 0: visible again now, with no Advance.
  CHECK(e.Stats("work").lease_expired == 1);
  auto again = other->TryReceive();
  REQUIRE(again.ok());
  CHECK(again->attempt() == 2);
  CHECK(absl::IsFailedPrecondition(c->Ack(d)));
  CHECK(other->Ack(*again).ok());
}

// Runs when the manual clock moves, before the broker's timers (it is
// registered first): the time is past a lease's end, its timer not yet run.
struct SettleWhenTimeMoves : ManualClock::Listener {
  Consumer* consumer = nullptr;
  std::optional<Delivery> delivery;
  bool multiple = false;
  absl::Status extend = absl::UnknownError("not run");
  absl::Status ack = absl::UnknownError("not run");
  void OnTimeMoved(absl::Time) override {
    if (consumer == nullptr) return;
    extend = consumer->Extend(*delivery, absl::Seconds(100));
    ack = consumer->Ack(*delivery, {.multiple = multiple});
    consumer = nullptr;
  }
};

TEST_CASE("A lease is over at its deadline even before its timer runs") {
  const bool multiple = GENERATE(false, true);
  CAPTURE(multiple);
  ManualClock clock;
  SettleWhenTimeMoves late;
  clock.AddListener(&late);
  {
    auto b = Broker::Open({.clock = &clock}).value();
    REQUIRE(b->DeclareQueue("work").ok());
    REQUIRE(Send(*b, "", "work", "short").ok());
    REQUIRE(Send(*b, "", "work", "long").ok());
    auto c = b->Consume("work").value();
    auto short_lease = c->TryReceive().value();
    auto long_lease = c->TryReceive().value();
    REQUIRE(c->Extend(short_lease, absl::Seconds(10)).ok());
    REQUIRE(c->Extend(long_lease, absl::Seconds(60)).ok());
    late.consumer = c.get();
    late.delivery = multiple ? long_lease : short_lease;
    late.multiple = multiple;
    REQUIRE(clock.Advance(absl::Seconds(10)).ok());
    REQUIRE(late.consumer == nullptr);  // it ran
    const QueueStats s = b->GetQueueStats("work").value();
    CHECK(s.lease_expired == 1);
    if (multiple) {
      // The long lease is not over: extended, then acked; the short one
      // went back as its timer would have, and the ack leaves it alone.
      CHECK(late.extend.ok());
      CHECK(late.ack.ok());
      CHECK(s.acked == 1);
      CHECK(Drain(*b, "work") == std::vector<std::string>{"short"});
    } else {
      CHECK(absl::IsFailedPrecondition(late.extend));
      CHECK(absl::IsFailedPrecondition(late.ack));
      CHECK(s.acked == 0);
      CHECK(s.ready == 1);
    }
  }
  clock.RemoveListener(&late);
}

TEST_CASE(
    "A message returned with no attempts left after its expiry is "
    "dead-lettered for its delivery limit") {
  Env e;
  REQUIRE(e.b->DeclareQueue("work", WithDlx({.delivery_limit = 1,
                                             .message_ttl = absl::Seconds(10)}))
              .ok());
  REQUIRE(Send(*e.b, "", "work", "m").ok());
  auto c = e.b->Consume("work").value();
  auto d = c->TryReceive().value();
  e.Advance(absl::Seconds(20));  // held: it does not expire
  REQUIRE(c->Nack(d).ok());
  const QueueStats s = e.Stats("work");
  CHECK(s.dead_lettered == 1);
  CHECK(s.expired == 0);
  auto dead = e.b->Browse("dlq", 1).value();
  REQUIRE(dead.size() == 1);
  CHECK(DeathHistory(dead[0])[0].reason == DeathReason::kDeliveryLimit);
}

}  // namespace
}  // namespace warren
