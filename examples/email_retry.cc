// The email worker, in real time: 10% of sends fail; they are retried after
// about 1 s, 2 s and 4 s, then dead-lettered, inspected and redriven. Takes
// about 7 seconds. tests/email_retry_example_test.cc runs the same scenario
// on a manual clock in milliseconds.

#include "email_retry.h"

#include <chrono>
#include <cstdio>
#include <thread>

int main() {
  auto broker = warren::Broker::Open({}).value();
  const email_retry::Result r = email_retry::Run(
      *broker,
      [](absl::Duration d) {
        std::this_thread::sleep_for(absl::ToChronoMilliseconds(d));
      },
      stdout);
  const bool ok =
      r.delivered_first_pass + r.delivered_after_redrive == r.emails &&
      r.dead_lettered == r.emails / 10;
  std::printf(ok ? "every email was delivered\n" : "emails were lost\n");
  return ok ? 0 : 1;
}
