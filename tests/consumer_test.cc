// Consumers: pull and push, prefetch, settling, cancel and close
// (SEMANTICS.md section 4).

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <set>
#include <stdexcept>
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

// A one-shot event for tests (std primitives, visible to TSan).
class Event {
 public:
  void Set() {
    std::lock_guard<std::mutex> l(mu_);
    set_ = true;
    cv_.notify_all();
  }
  void Wait() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return set_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool set_ = false;
};

// Counts up and lets a test wait for a value.
class Counter {
 public:
  void Add() {
    std::lock_guard<std::mutex> l(mu_);
    ++n_;
    cv_.notify_all();
  }
  void WaitFor(int n) {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return n_ >= n; });
  }
  int value() {
    std::lock_guard<std::mutex> l(mu_);
    return n_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_ = 0;
};

TEST_CASE("Prefetch limits the deliveries a consumer holds unsettled") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  for (int i = 0; i < 5; ++i) REQUIRE(Send(*b, "", "q", "m").ok());
  auto c = b->Consume("q", {.prefetch = 2}).value();
  auto d1 = c->TryReceive().value();
  auto d2 = c->TryReceive().value();
  CHECK(absl::IsResourceExhausted(c->TryReceive().status()));
  CHECK(absl::IsResourceExhausted(c->Receive(absl::Seconds(10)).status()));
  CHECK(c->unacked() == 2);
  REQUIRE(c->Ack(d1).ok());
  auto d3 = c->TryReceive();
  CHECK(d3.ok());
  CHECK(Ready(*b, "q") == 2);
}

TEST_CASE("Competing consumers skip a consumer whose window is full") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  for (const char* m : {"1", "2", "3"}) REQUIRE(Send(*b, "", "q", m).ok());
  auto full = b->Consume("q", {.prefetch = 1}).value();
  auto other = b->Consume("q", {.prefetch = 1}).value();
  auto a = full->TryReceive().value();
  CHECK(absl::IsResourceExhausted(full->TryReceive().status()));
  auto bb = other->TryReceive().value();
  CHECK(a.body() == "1");
  CHECK(bb.body() == "2");
}

TEST_CASE("Waiting consumers are each served as messages arrive") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  constexpr int kConsumers = 4;
  std::vector<std::unique_ptr<Consumer>> consumers;
  for (int i = 0; i < kConsumers; ++i) {
    consumers.push_back(b->Consume("q").value());
  }
  std::vector<std::string> got(kConsumers);
  std::vector<std::thread> threads;
  for (int i = 0; i < kConsumers; ++i) {
    threads.emplace_back([&, i] {
      auto d = consumers[i]->Receive(absl::Seconds(30));
      if (d.ok()) {
        got[i] = std::string(d->body());
        (void)consumers[i]->Ack(*d);
      }
    });
  }
  for (int i = 0; i < kConsumers; ++i) {
    REQUIRE(Send(*b, "", "q", std::to_string(i)).ok());
  }
  for (auto& t : threads) t.join();
  CHECK(std::set<std::string>(got.begin(), got.end()) ==
        std::set<std::string>{"0", "1", "2", "3"});
}

TEST_CASE("Receive times out with DeadlineExceeded when nothing arrives") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  auto c = b->Consume("q").value();
  CHECK(absl::IsDeadlineExceeded(c->Receive(absl::Milliseconds(5)).status()));
  CHECK(absl::IsDeadlineExceeded(c->Receive(absl::ZeroDuration()).status()));
  CHECK(absl::IsUnavailable(c->TryReceive().status()));
  CHECK(c->unacked() == 0);
}

TEST_CASE("ReceiveBatch returns up to the requested number at once") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  for (int i = 0; i < 5; ++i) {
    REQUIRE(Send(*b, "", "q", std::to_string(i)).ok());
  }
  auto c = b->Consume("q", {.prefetch = 4}).value();
  auto batch = c->ReceiveBatch(3, absl::Seconds(1)).value();
  REQUIRE(batch.size() == 3);
  CHECK(batch[0].body() == "0");
  CHECK(batch[2].body() == "2");
  // Limited by prefetch: only one more fits.
  auto more = c->ReceiveBatch(10, absl::Seconds(1)).value();
  CHECK(more.size() == 1);
  REQUIRE(c->Ack(more[0], {.multiple = true}).ok());
  CHECK(c->unacked() == 0);
  CHECK(b->GetQueueStats("q")->acked == 4);
}

TEST_CASE("ReceiveBatch with no practical bound returns what is ready") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  for (int i = 0; i < 300; ++i) {
    REQUIRE(Send(*b, "", "q", std::to_string(i)).ok());
  }
  auto c = b->Consume("q").value();
  auto batch = c->ReceiveBatch(SIZE_MAX, absl::Seconds(1));
  REQUIRE(batch.ok());
  REQUIRE(batch->size() == 300);
  CHECK(batch->front().body() == "0");
  CHECK(batch->back().body() == "299");
  CHECK(c->unacked() == 300);
  REQUIRE(c->Ack(batch->back(), {.multiple = true}).ok());
  CHECK(b->GetQueueStats("q")->acked == 300);
}

TEST_CASE(
    "Ack multiple settles every earlier delivery; nack multiple "
    "requeues them in order") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  for (int i = 0; i < 6; ++i) {
    REQUIRE(Send(*b, "", "q", std::to_string(i)).ok());
  }
  auto c = b->Consume("q").value();
  std::vector<Delivery> d;
  for (int i = 0; i < 6; ++i) d.push_back(c->TryReceive().value());
  REQUIRE(c->Ack(d[1], {.multiple = true}).ok());  // 0 and 1
  CHECK(c->unacked() == 4);
  CHECK(absl::IsFailedPrecondition(c->Ack(d[0])));
  REQUIRE(c->Nack(d[4], {.requeue = true, .multiple = true}).ok());  // 2,3,4
  CHECK(c->unacked() == 1);
  REQUIRE(c->Ack(d[5]).ok());
  c.reset();
  CHECK(Drain(*b, "q") == std::vector<std::string>{"2", "3", "4"});
}

TEST_CASE("Settling twice is FailedPrecondition and never double-settles") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  REQUIRE(Send(*b, "", "q", "x").ok());
  auto c = b->Consume("q").value();
  auto d = c->TryReceive().value();
  REQUIRE(c->Ack(d).ok());
  CHECK(absl::IsFailedPrecondition(c->Ack(d)));
  CHECK(absl::IsFailedPrecondition(c->Nack(d)));
  CHECK(absl::IsFailedPrecondition(c->Reject(d)));
  CHECK(absl::IsInvalidArgument(c->Ack(Delivery())));  // never delivered
  auto stats = b->GetQueueStats("q").value();
  CHECK(stats.acked == 1);
  CHECK(stats.requeued == 0);
  CHECK(stats.ready == 0);
}

TEST_CASE(
    "Settling on the wrong consumer is InvalidArgument and changes "
    "nothing") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  REQUIRE(Send(*b, "", "q", "x").ok());
  auto c1 = b->Consume("q").value();
  auto c2 = b->Consume("q").value();
  auto d = c1->TryReceive().value();
  CHECK(absl::IsInvalidArgument(c2->Ack(d)));
  CHECK(absl::IsInvalidArgument(c2->Nack(d)));
  CHECK(c1->unacked() == 1);
  REQUIRE(c1->Ack(d).ok());
}

TEST_CASE(
    "A delivery of another broker's consumer is InvalidArgument and "
    "settles nothing") {
  // Two brokers with the same history: their first consumers, and those
  // consumers' first deliveries, must still be told apart.
  auto a = NewBroker();
  auto b = NewBroker();
  for (Broker* broker : {a.get(), b.get()}) {
    REQUIRE(broker->DeclareQueue("q").ok());
    REQUIRE(Send(*broker, "", "q", "x").ok());
  }
  auto ca = a->Consume("q").value();
  auto cb = b->Consume("q").value();
  CHECK(ca->id() != cb->id());
  auto da = ca->TryReceive().value();
  auto db = cb->TryReceive().value();
  CHECK(absl::IsInvalidArgument(ca->Ack(db)));
  CHECK(absl::IsInvalidArgument(ca->Nack(db)));
  CHECK(absl::IsInvalidArgument(ca->Reject(db)));
  CHECK(absl::IsInvalidArgument(ca->Extend(db, absl::Seconds(1))));
  CHECK(ca->unacked() == 1);
  CHECK(a->GetQueueStats("q")->acked == 0);
  REQUIRE(ca->Ack(da).ok());
  REQUIRE(cb->Ack(db).ok());
}

TEST_CASE("Cancel stops new deliveries; held deliveries stay settleable") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  REQUIRE(Send(*b, "", "q", "1").ok());
  REQUIRE(Send(*b, "", "q", "2").ok());
  auto c = b->Consume("q").value();
  auto d = c->TryReceive().value();
  REQUIRE(c->Cancel().ok());
  CHECK(absl::IsFailedPrecondition(c->Cancel()));
  CHECK(absl::IsFailedPrecondition(c->TryReceive().status()));
  CHECK(b->GetQueueStats("q")->consumers == 0);
  REQUIRE(c->Ack(d).ok());
  CHECK(Ready(*b, "q") == 1);
}

TEST_CASE(
    "An auto-delete queue is deleted when its last consumer goes, not before "
    "its first") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q", {.auto_delete = true}).ok());
  REQUIRE(b->DeclareQueue("kept").ok());
  REQUIRE(Send(*b, "", "q", "1").ok());
  REQUIRE(Send(*b, "", "q", "2").ok());
  // Never consumed from: it stays.
  CHECK(b->GetQueueStats("q").ok());
  auto c1 = b->Consume("q").value();
  auto c2 = b->Consume("q").value();
  auto held = c2->TryReceive().value();
  REQUIRE(c1->Cancel().ok());
  CHECK(b->GetQueueStats("q")->consumers == 1);
  // The last consumer goes: the queue goes with its messages, the one it
  // held too.
  c2->Close();
  CHECK(absl::IsNotFound(b->GetQueueStats("q").status()));
  auto out = Send(*b, "", "q", "3");
  REQUIRE(out.ok());
  CHECK(out->queues == 0);
  // A queue without the flag stays.
  b->Consume("kept").value()->Close();
  CHECK(b->GetQueueStats("kept").ok());
}

TEST_CASE("Cancel wakes a receiver that is waiting") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  auto c = b->Consume("q").value();
  absl::Status status;
  std::thread t([&] { status = c->Receive(absl::Hours(1)).status(); });
  REQUIRE(c->Cancel().ok());
  t.join();
  CHECK(absl::IsFailedPrecondition(status));
}

TEST_CASE(
    "Closing or destroying a consumer requeues what it holds in "
    "order") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  for (const char* m : {"1", "2", "3", "4"}) REQUIRE(Send(*b, "", "q", m).ok());
  {
    auto c = b->Consume("q").value();
    auto d1 = c->TryReceive().value();
    auto d2 = c->TryReceive().value();
    REQUIRE(c->Ack(d1).ok());
    c->Close();
    CHECK(absl::IsFailedPrecondition(c->Ack(d2)));  // already requeued
    c->Close();                                     // idempotent
  }
  {
    auto c = b->Consume("q").value();
    (void)c->TryReceive().value();  // "2", redelivered
    (void)c->TryReceive().value();  // "3"
  }                                 // destroyed while holding both
  auto c = b->Consume("q").value();
  std::vector<std::pair<std::string, uint32_t>> got;
  for (auto d = c->TryReceive(); d.ok(); d = c->TryReceive()) {
    got.emplace_back(std::string(d->body()), d->attempt());
  }
  CHECK(got == std::vector<std::pair<std::string, uint32_t>>{
                   {"2", 3}, {"3", 2}, {"4", 1}});
}

TEST_CASE("A waiting receiver wakes with NotFound when its queue is deleted") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  auto c = b->Consume("q").value();
  absl::Status status;
  std::thread t([&] { status = c->Receive(absl::Hours(1)).status(); });
  REQUIRE(b->DeleteQueue("q").ok());
  t.join();
  CHECK(absl::IsNotFound(status));
}

TEST_CASE(
    "Deliveries held from a deleted queue cannot be settled and none is "
    "dead-lettered") {
  const bool auto_delete = GENERATE(false, true);
  CAPTURE(auto_delete);
  auto b = NewBroker();
  REQUIRE(b->DeclareExchange("dlx", ExchangeType::kFanout).ok());
  REQUIRE(b->DeclareQueue("dead").ok());
  REQUIRE(b->Bind("dead", "dlx", "").ok());
  REQUIRE(b->DeclareQueue(
               "q", {.auto_delete = auto_delete, .dead_letter_exchange = "dlx"})
              .ok());
  for (const char* body : {"1", "2", "3"}) {
    REQUIRE(b->Publish("", "q", Message(body)).ok());
  }
  auto c = b->Consume("q").value();
  auto d1 = c->TryReceive().value();
  auto d2 = c->TryReceive().value();
  auto d3 = c->TryReceive().value();
  if (auto_delete) {
    REQUIRE(c->Cancel().ok());  // its last consumer: the queue goes
  } else {
    REQUIRE(b->DeleteQueue("q").ok());
  }
  REQUIRE(absl::IsNotFound(b->GetQueueStats("q").status()));
  CHECK(absl::IsNotFound(c->Ack(d1)));
  CHECK(absl::IsNotFound(c->Reject(d2)));
  CHECK(absl::IsNotFound(c->Nack(d3, {.requeue = false})));
  CHECK(absl::IsNotFound(c->Extend(d1, absl::Seconds(1))));
  c->Close();
  CHECK(Ready(*b, "dead") == 0);
  CHECK(b->GetQueueStats("dead")->published == 0);
}

TEST_CASE("Closing the broker wakes waiting receivers") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  auto c = b->Consume("q").value();
  absl::Status status;
  std::thread t([&] { status = c->Receive(absl::Hours(1)).status(); });
  b->Close();
  t.join();
  CHECK(absl::IsFailedPrecondition(status));
}

TEST_CASE(
    "Single active consumer: only the first receives, the next takes "
    "over on cancel") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q", {.single_active_consumer = true}).ok());
  for (const char* m : {"1", "2", "3"}) REQUIRE(Send(*b, "", "q", m).ok());
  auto first = b->Consume("q").value();
  auto second = b->Consume("q").value();
  CHECK(absl::IsUnavailable(second->TryReceive().status()));
  auto d1 = first->TryReceive().value();
  CHECK(d1.body() == "1");
  REQUIRE(first->Cancel().ok());
  auto d2 = second->TryReceive().value();
  CHECK(d2.body() == "2");
  // What the first still held goes to the new one once the first is closed.
  first->Close();
  auto again = second->TryReceive().value();
  CHECK(again.body() == "1");
  CHECK(again.redelivered());
}

TEST_CASE(
    "A waiting inactive consumer becomes active when the active one "
    "leaves") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q", {.single_active_consumer = true}).ok());
  auto first = b->Consume("q").value();
  auto second = b->Consume("q").value();
  std::string got;
  std::thread t([&] {
    auto d = second->Receive(absl::Hours(1));
    if (d.ok()) got = std::string(d->body());
  });
  REQUIRE(Send(*b, "", "q", "m").ok());
  auto d = first->Receive(absl::Hours(1)).value();
  CHECK(d.body() == "m");
  first->Close();  // requeues "m"; the waiting second consumer takes over
  t.join();
  CHECK(got == "m");
}

TEST_CASE(
    "Single active consumer: consumers that close holding a message keep "
    "the queue's order across takeovers") {
  // Three threads take turns as the active consumer: each receives and acks
  // a few messages, then closes, sometimes while holding one it has not
  // acked. The next consumer must start with that one, never a newer one.
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q", {.single_active_consumer = true}).ok());
  constexpr int kMessages = 3000;
  for (int i = 0; i < kMessages; ++i) {
    REQUIRE(Send(*b, "", "q", std::to_string(i)).ok());
  }
  std::mutex mu;
  std::vector<int> acked;
  std::atomic<bool> done{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) {
    threads.emplace_back([&, t] {
      uint32_t turn = static_cast<uint32_t>(t);
      while (!done.load()) {
        ++turn;
        auto c = b->Consume("q");
        if (!c.ok()) return;
        const uint32_t take = 1 + turn * 7 % 13;
        for (uint32_t k = 1; k <= take && !done.load(); ++k) {
          auto d = (*c)->Receive(absl::Milliseconds(1));
          if (!d.ok()) continue;
          if (k == take && turn % 2 == 0) break;  // closes holding it
          std::lock_guard<std::mutex> l(mu);
          if ((*c)->Ack(*d).ok())
            acked.push_back(std::stoi(std::string(d->body())));
          if (acked.size() == kMessages) done.store(true);
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  REQUIRE(acked.size() == kMessages);
  size_t first_out_of_order = 0;
  while (first_out_of_order < acked.size() &&
         acked[first_out_of_order] == static_cast<int>(first_out_of_order)) {
    ++first_out_of_order;
  }
  INFO("ack " << first_out_of_order << " was of message "
              << acked[std::min<size_t>(first_out_of_order, kMessages - 1)]);
  CHECK(first_out_of_order == acked.size());
}

TEST_CASE("Subscription handler results settle deliveries") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  Counter seen;
  std::mutex mu;
  std::vector<std::pair<std::string, uint32_t>> log;
  auto sub =
      b->Subscribe("q",
                   [&](const Delivery& d) {
                     {
                       std::lock_guard<std::mutex> l(mu);
                       log.emplace_back(std::string(d.body()), d.attempt());
                     }
                     seen.Add();
                     if (d.body() == "retry" && d.attempt() == 1) {
                       return HandlerResult::kRequeue;
                     }
                     if (d.body() == "bad") return HandlerResult::kReject;
                     return HandlerResult::kAck;
                   },
                   {.workers = 1})
          .value();
  for (const char* m : {"ok", "retry", "bad"}) {
    REQUIRE(Send(*b, "", "q", m).ok());
  }
  seen.WaitFor(4);  // ok, retry, bad, retry again
  REQUIRE(sub->Stop(absl::Seconds(30)).ok());
  auto stats = b->GetQueueStats("q").value();
  CHECK(stats.acked == 2);
  CHECK(stats.nacked == 1);
  CHECK(stats.rejected == 1);
  CHECK(stats.dropped == 1);
  CHECK(stats.ready == 0);
  CHECK(sub->handled() == 4);
  std::lock_guard<std::mutex> l(mu);
  CHECK(std::count(log.begin(), log.end(),
                   std::make_pair(std::string("retry"), uint32_t{2})) == 1);
}

TEST_CASE("A subscription handler can settle through its consumer") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  Counter acked;
  auto sub = b->Subscribe(
                  "q", HandlerWithConsumer([&](const Delivery& d, Consumer& c) {
                    if (c.Ack(d).ok()) acked.Add();
                    return HandlerResult::kSettled;
                  }),
                  {.workers = 2})
                 .value();
  for (int i = 0; i < 10; ++i) REQUIRE(Send(*b, "", "q", "m").ok());
  acked.WaitFor(10);
  REQUIRE(sub->Stop(absl::Seconds(30)).ok());
  CHECK(b->GetQueueStats("q")->acked == 10);
}

TEST_CASE("Stop waits for running handlers, then returns OK") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  Event started, release;
  auto sub = b->Subscribe("q", [&](const Delivery&) {
                started.Set();
                release.Wait();
                return HandlerResult::kAck;
              }).value();
  REQUIRE(Send(*b, "", "q", "m").ok());
  started.Wait();
  std::thread releaser([&] { release.Set(); });
  CHECK(sub->Stop(absl::Hours(1)).ok());
  releaser.join();
  CHECK(b->GetQueueStats("q")->acked == 1);
  CHECK(absl::IsFailedPrecondition(sub->Stop(absl::Seconds(1))));
}

TEST_CASE("Stop past its grace period requeues what running handlers hold") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  Event started, release;
  std::atomic<bool> late_ack_failed{false};
  auto sub = b->Subscribe(
                  "q", HandlerWithConsumer([&](const Delivery& d, Consumer& c) {
                    started.Set();
                    release.Wait();
                    late_ack_failed = absl::IsFailedPrecondition(c.Ack(d));
                    return HandlerResult::kSettled;
                  }))
                 .value();
  REQUIRE(Send(*b, "", "q", "slow").ok());
  started.Wait();
  CHECK(absl::IsDeadlineExceeded(sub->Stop(absl::Milliseconds(1))));
  CHECK(Ready(*b, "q") == 1);  // requeued, not lost
  release.Set();
  sub.reset();  // joins the worker
  CHECK(late_ack_failed);
  auto c = b->Consume("q").value();
  auto d = c->TryReceive().value();
  CHECK(d.body() == "slow");
  CHECK(d.redelivered());
}

TEST_CASE(
    "Stop after the broker closed returns at once while a worker waits for "
    "room in the window") {
  // One slot: one worker holds it in its handler, the other waits for room.
  // Whether the handler's settle fails (the broker is closed) or it settles
  // nothing, the waiting worker must see the closed broker.
  const bool settles = GENERATE(true, false);
  CAPTURE(settles);
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  REQUIRE(Send(*b, "", "q", "1").ok());
  REQUIRE(Send(*b, "", "q", "2").ok());
  Event started, release;
  auto sub = b->Subscribe("q",
                          [&](const Delivery&) {
                            started.Set();
                            release.Wait();
                            return settles ? HandlerResult::kAck
                                           : HandlerResult::kSettled;
                          },
                          {.workers = 2, .prefetch = 1})
                 .value();
  started.Wait();
  b->Close();
  release.Set();
  CHECK(sub->Stop(absl::InfiniteDuration()).ok());
}

TEST_CASE(
    "A handler can stop its own subscription and its result still "
    "settles its delivery") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  Event subscribed, stopped;
  std::unique_ptr<Subscription> sub;
  absl::Status stop_status;
  sub = b->Subscribe("q", [&](const Delivery&) {
           subscribed.Wait();
           stop_status = sub->Stop(absl::InfiniteDuration());
           stopped.Set();
           return HandlerResult::kAck;
         }).value();
  subscribed.Set();
  REQUIRE(Send(*b, "", "q", "m").ok());
  stopped.Wait();
  CHECK(stop_status.ok());
  sub.reset();  // joins the worker, once its handler's ack is done
  auto stats = b->GetQueueStats("q").value();
  CHECK(stats.acked == 1);
  CHECK(stats.requeued == 0);
  CHECK(stats.ready == 0);
}

// A subscription of two workers on queue "q": the handler of "other" runs
// until released; the handler of "stopper" waits for it to start, then stops
// the subscription with `grace` (keeping the status) and acks.
struct SelfStopBesideOther {
  std::unique_ptr<Broker> b = NewBroker();
  Event subscribed, other_started, release_other, stopping, stopped;
  absl::Status stop_status;
  std::unique_ptr<Subscription> sub;  // last: destroyed (joined) first

  explicit SelfStopBesideOther(absl::Duration grace) {
    REQUIRE(b->DeclareQueue("q").ok());
    sub = b->Subscribe("q",
                       [this, grace](const Delivery& d) {
                         subscribed.Wait();
                         if (d.body() == "other") {
                           other_started.Set();
                           release_other.Wait();
                           return HandlerResult::kAck;
                         }
                         other_started.Wait();
                         stopping.Set();
                         stop_status = sub->Stop(grace);
                         stopped.Set();
                         return HandlerResult::kAck;
                       },
                       {.workers = 2})
              .value();
    subscribed.Set();
    REQUIRE(Send(*b, "", "q", "other").ok());
    REQUIRE(Send(*b, "", "q", "stopper").ok());
  }
};

TEST_CASE(
    "A handler that stops its own subscription waits for the other "
    "handlers") {
  SelfStopBesideOther f(absl::InfiniteDuration());
  f.stopping.Wait();
  f.release_other.Set();  // the other handler ends while Stop waits for it
  f.stopped.Wait();
  CHECK(f.stop_status.ok());
  f.sub.reset();
  CHECK(f.b->GetQueueStats("q")->acked == 2);
}

TEST_CASE(
    "A handler that stops its own subscription past the grace still settles "
    "its own delivery") {
  SelfStopBesideOther f(absl::Milliseconds(1));
  f.stopped.Wait();  // "other" is still running: it outlived the grace
  CHECK(absl::IsDeadlineExceeded(f.stop_status));
  f.release_other.Set();
  f.sub.reset();
  // "other" went back to the queue at the deadline (its ack then failed);
  // "stopper" was acked by its handler's result.
  const QueueStats stats = f.b->GetQueueStats("q").value();
  CHECK(stats.acked == 1);
  CHECK(stats.requeued == 1);
  CHECK(Drain(*f.b, "q") == std::vector<std::string>{"other"});
}

TEST_CASE("Stop with no grace is OK when no handler is running") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  for (int i = 0; i < 100; ++i) {
    CAPTURE(i);
    auto sub =
        b->Subscribe("q", [](const Delivery&) { return HandlerResult::kAck; },
                     {.workers = 2})
            .value();
    // Give the workers time to park in a receive on the empty queue (they
    // need not have: either way no handler runs).
    for (int y = 0; y < 1000; ++y) std::this_thread::yield();
    CHECK(sub->Stop(absl::ZeroDuration()).ok());
  }
  CHECK(b->GetQueueStats("q")->delivered == 0);
}

TEST_CASE("Subscribe with an empty handler is InvalidArgument") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  CHECK(absl::IsInvalidArgument(b->Subscribe("q", Handler()).status()));
  CHECK(absl::IsInvalidArgument(
      b->Subscribe("q", std::function<HandlerResult(const Delivery&)>())
          .status()));
  HandlerResult (*null_function)(const Delivery&) = nullptr;
  CHECK(absl::IsInvalidArgument(b->Subscribe("q", null_function).status()));
  CHECK(absl::IsInvalidArgument(
      b->Subscribe("q", HandlerWithConsumer()).status()));
  CHECK(b->GetQueueStats("q")->consumers == 0);
  b->Close();
  CHECK(absl::IsFailedPrecondition(b->Subscribe("q", Handler()).status()));
}

TEST_CASE(
    "Consumer calls after the broker closed are FailedPrecondition even "
    "when the queue was deleted first") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  REQUIRE(Send(*b, "", "q", "m").ok());
  auto c = b->Consume("q").value();
  auto d = c->TryReceive().value();
  REQUIRE(b->DeleteQueue("q").ok());
  b->Close();
  CHECK(absl::IsFailedPrecondition(c->Receive(absl::Milliseconds(1)).status()));
  CHECK(absl::IsFailedPrecondition(c->TryReceive().status()));
  CHECK(absl::IsFailedPrecondition(
      c->ReceiveBatch(0, absl::Milliseconds(1)).status()));
  CHECK(absl::IsFailedPrecondition(c->Ack(d)));
  CHECK(absl::IsFailedPrecondition(c->Nack(d)));
  CHECK(absl::IsFailedPrecondition(c->Extend(d, absl::Seconds(-1))));
  CHECK(absl::IsFailedPrecondition(c->Cancel()));
}

TEST_CASE("A handler that throws has its delivery requeued") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  Counter calls;
  auto sub = b->Subscribe("q", [&](const Delivery& d) {
                calls.Add();
                if (d.attempt() == 1) {
                  throw std::runtime_error("boom");
                }
                return HandlerResult::kAck;
              }).value();
  REQUIRE(Send(*b, "", "q", "m").ok());
  calls.WaitFor(2);
  REQUIRE(sub->Stop(absl::Seconds(30)).ok());
  CHECK(sub->failed() == 1);
  CHECK(b->GetQueueStats("q")->acked == 1);
}

TEST_CASE("Destroying a running subscription returns what it holds") {
  auto b = NewBroker();
  REQUIRE(b->DeclareQueue("q").ok());
  Counter received;
  std::vector<Delivery> kept;
  std::mutex mu;
  auto sub =
      b->Subscribe("q", HandlerWithConsumer([&](const Delivery& d, Consumer&) {
                     std::lock_guard<std::mutex> l(mu);
                     kept.push_back(d);  // settle later, never
                     received.Add();
                     return HandlerResult::kSettled;
                   }),
                   {.workers = 2, .prefetch = 3})
          .value();
  for (int i = 0; i < 5; ++i) REQUIRE(Send(*b, "", "q", "m").ok());
  received.WaitFor(3);  // the window is full at 3
  sub.reset();
  CHECK(Ready(*b, "q") == 5);
  CHECK(b->GetQueueStats("q")->unacked == 0);
}

}  // namespace
}  // namespace warren
