// The email worker example, run on a manual clock.

#include <catch2/catch.hpp>
#include <cstdio>

#include "../examples/email_retry.h"
#include "warren/clock.h"

namespace {

TEST_CASE(
    "The email example retries with backoff, dead-letters after four "
    "attempts and redrives") {
  warren::ManualClock clock;
  auto broker = warren::Broker::Open({.clock = &clock}).value();
  std::FILE* log = std::tmpfile();
  const email_retry::Result r = email_retry::Run(
      *broker, [&](absl::Duration d) { (void)clock.Advance(d); }, log);
  std::fclose(log);
  CHECK(r.emails == 100);
  CHECK(r.delivered_first_pass == 90);
  CHECK(r.dead_lettered == 10);
  CHECK(r.delivered_after_redrive == 10);
  // 90 first sends succeed; 10 fail four times, then succeed once redriven.
  CHECK(r.attempts == 90 + 10 * 4 + 10);
  REQUIRE(r.sample_history.size() == 1);
  CHECK(r.sample_history[0].queue == "email");
  CHECK(r.sample_history[0].reason == warren::DeathReason::kDeliveryLimit);
  CHECK(broker->GetQueueStats("email.dead")->ready == 0);
}

}  // namespace
