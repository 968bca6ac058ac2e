// The email worker scenario, shared by examples/email_retry.cc (real time)
// and tests/email_retry_example_test.cc (a manual clock).
//
// 100 emails are queued. The mail server rejects every send to one recipient
// in ten (10% of sends fail). The queue retries with exponential backoff
// (1 s, 2 s, 4 s, with equal jitter) and dead-letters a message once its
// fourth attempt (the first send and three retries) has failed. Then the
// dead-letter queue is inspected, the server is fixed, and the dead letters
// are redriven and delivered.

#ifndef WARREN_EXAMPLES_EMAIL_RETRY_H_
#define WARREN_EXAMPLES_EMAIL_RETRY_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "warren/warren.h"

namespace email_retry {

struct Result {
  int emails = 0;
  int delivered_first_pass = 0;
  int dead_lettered = 0;
  int delivered_after_redrive = 0;
  int attempts = 0;
  std::vector<warren::DeathRecord> sample_history;  // of one dead letter
};

// Tracks the worker's progress so the driver can wait for the queue to
// settle between steps of time.
class Progress {
 public:
  void Note() {
    std::lock_guard<std::mutex> lock(mu_);
    ++events_;
    cv_.notify_all();
  }
  // Waits until `done()` holds, re-checking at each worker event (and at
  // least every 10 ms of real time, for events the broker makes itself).
  void WaitUntil(const std::function<bool()>& done) {
    std::unique_lock<std::mutex> lock(mu_);
    while (!done()) cv_.wait_for(lock, std::chrono::milliseconds(10));
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  long events_ = 0;
};

// Runs the scenario on `broker`. `advance(d)` lets time pass: sleeping for a
// real clock, ManualClock::Advance for a manual one.
inline Result Run(warren::Broker& broker,
                  const std::function<void(absl::Duration)>& advance,
                  std::FILE* log) {
  constexpr int kEmails = 100;
  (void)broker.DeclareExchange("email.dlx", warren::ExchangeType::kFanout);
  (void)broker.DeclareQueue("email.dead");
  (void)broker.Bind("email.dead", "email.dlx", "");
  (void)broker.DeclareQueue(
      "email",
      {.dead_letter_exchange = "email.dlx",
       .retry = warren::RetryPolicy{.max_attempts = 4,
                                    .backoff = warren::Backoff::kExponential,
                                    .initial_delay = absl::Seconds(1),
                                    .multiplier = 2.0,
                                    .jitter = warren::Jitter::kEqual,
                                    .seed = 7}});

  std::atomic<bool> server_fixed{false};
  std::atomic<int> delivered{0};
  std::atomic<int> attempts{0};
  Progress progress;
  auto sub =
      broker
          .Subscribe("email",
                     warren::HandlerWithConsumer([&](const warren::Delivery& d,
                                                     warren::Consumer& c) {
                       ++attempts;
                       const int recipient = std::stoi(std::string(d.body()));
                       const bool fails = recipient % 10 == 0 && !server_fixed;
                       if (fails) {
                         (void)c.Nack(d, {.requeue = true});  // retry later
                       } else {
                         (void)c.Ack(d);
                         ++delivered;
                       }
                       progress.Note();
                       return warren::HandlerResult::kSettled;
                     }),
                     {.workers = 2})
          .value();

  for (int i = 0; i < kEmails; ++i) {
    warren::Message m(std::to_string(i));
    m.properties().message_id = "email-" + std::to_string(i);
    (void)broker.Publish("", "email", std::move(m));
  }

  auto stats = [&](const char* q) { return broker.GetQueueStats(q).value(); };
  auto settled = [&] {
    auto s = stats("email");
    return s.ready == 0 && s.unacked == 0;
  };
  // Let time pass in steps until every email was delivered or dead-lettered
  // (between steps, wait for the workers to settle what became ready).
  auto accounted = [&] {
    return delivered.load() + static_cast<int>(stats("email.dead").ready) >=
           kEmails;
  };
  progress.WaitUntil(settled);
  absl::Duration elapsed = absl::ZeroDuration();
  while (!accounted()) {
    advance(absl::Milliseconds(250));
    elapsed += absl::Milliseconds(250);
    progress.WaitUntil(settled);
  }
  Result r;
  r.emails = kEmails;
  r.delivered_first_pass = delivered;
  r.dead_lettered = static_cast<int>(stats("email.dead").ready);
  std::fprintf(log, "after %.2f s: %d delivered, %d dead-lettered, %d sends\n",
               absl::ToDoubleSeconds(elapsed), r.delivered_first_pass,
               r.dead_lettered, attempts.load());

  // Inspect the dead letters without consuming them.
  const std::vector<warren::Message> dead =
      broker.Browse("email.dead", 3).value();
  for (const warren::Message& m : dead) {
    for (const warren::DeathRecord& death : warren::DeathHistory(m)) {
      std::fprintf(log, "  email %s died in '%s': %s x%lld\n",
                   std::string(m.body()).c_str(), death.queue.c_str(),
                   std::string(warren::DeathReasonName(death.reason)).c_str(),
                   static_cast<long long>(death.count));
    }
    if (r.sample_history.empty()) r.sample_history = warren::DeathHistory(m);
  }

  // Fix the server and send the dead letters back where they died.
  server_fixed = true;
  const uint64_t moved = broker.Redrive("email.dead", {}).value();
  progress.WaitUntil([&] {
    return settled() &&
           delivered.load() >= r.delivered_first_pass + static_cast<int>(moved);
  });
  r.delivered_after_redrive = delivered - r.delivered_first_pass;
  r.attempts = attempts;
  std::fprintf(log, "redrove %llu; delivered %d more; %d sends in all\n",
               static_cast<unsigned long long>(moved),
               r.delivered_after_redrive, r.attempts);
  (void)sub->Stop(absl::Seconds(5));
  return r;
}

}  // namespace email_retry

#endif  // WARREN_EXAMPLES_EMAIL_RETRY_H_
