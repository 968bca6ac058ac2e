// -----------------------------------------------------------------------------
// File: warren/retry.h
// -----------------------------------------------------------------------------
//
// Retry with backoff, per queue. A queue with a `RetryPolicy` answers a nack
// (or reject) with requeue by scheduling the message for redelivery after a
// backoff delay, instead of putting it back at once. Messages behind it keep
// flowing meanwhile: there is no head-of-line blocking, unlike RabbitMQ's
// TTL-and-dead-letter retry queues. When the message has been delivered
// `max_attempts` times it is dead-lettered with reason `delivery_limit`.
//
// Example: 3 attempts, backoffs of 1 s then 2 s, each with equal jitter (so
// 0.5–1 s, then 1–2 s):
//
//   broker->DeclareQueue("email", {
//       .dead_letter_exchange = "email.dlx",
//       .retry = warren::RetryPolicy{.max_attempts = 3,
//                                    .backoff = warren::Backoff::kExponential,
//                                    .initial_delay = absl::Seconds(1),
//                                    .multiplier = 2.0,
//                                    .jitter = warren::Jitter::kEqual}});

#ifndef WARREN_RETRY_H_
#define WARREN_RETRY_H_

#include <cstdint>
#include <functional>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "warren/message.h"

namespace warren {

enum class Backoff {
  kFixed,        // initial_delay every time
  kExponential,  // initial_delay * multiplier^(attempt - 1)
  kCustom,       // custom(attempt, message)
};

enum class Jitter {
  kNone,   // the computed delay
  kFull,   // uniform in [0, delay]
  kEqual,  // delay/2 + uniform in [0, delay/2]
  kRatio,  // uniform in [delay * (1 - ratio), delay * (1 + ratio)]
};

struct RetryPolicy {
  // Deliveries in all, the first included; must be at least 1.
  uint32_t max_attempts = 3;
  Backoff backoff = Backoff::kExponential;
  // The delay after the first failed attempt. Default: 1 s.
  absl::Duration initial_delay = absl::Seconds(1);
  // Growth per attempt for kExponential; at least 1. Default: 2.
  double multiplier = 2.0;
  // Upper bound on any delay, applied before jitter. Default: 1 hour.
  absl::Duration max_delay = absl::Hours(1);
  Jitter jitter = Jitter::kNone;
  // For Jitter::kRatio: in [0, 1]. Default: 0.1.
  double jitter_ratio = 0.1;
  // Seeds the jitter's random numbers (for reproducible tests); 0 picks a
  // random seed. Default: 0.
  uint64_t seed = 0;
  // For Backoff::kCustom: the delay after `attempt` failed deliveries (1 for
  // the first). Called on the thread that settles; must be thread-safe. If
  // it throws, that attempt waits `initial_delay` (capped by max_delay).
  // Redeclaring a queue compares whether a custom function is set, not
  // which.
  std::function<absl::Duration(uint32_t attempt, const Message& message)>
      custom;

  friend bool operator==(const RetryPolicy& a, const RetryPolicy& b) {
    return a.max_attempts == b.max_attempts && a.backoff == b.backoff &&
           a.initial_delay == b.initial_delay && a.multiplier == b.multiplier &&
           a.max_delay == b.max_delay && a.jitter == b.jitter &&
           a.jitter_ratio == b.jitter_ratio && a.seed == b.seed &&
           static_cast<bool>(a.custom) == static_cast<bool>(b.custom);
  }
};

// kInvalidArgument when the policy cannot work (max_attempts 0, negative or
// infinite delays, multiplier below 1, jitter_ratio outside [0, 1], kCustom
// without a function).
absl::Status ValidateRetryPolicy(const RetryPolicy& policy);

// The delay before redelivering after `attempt` failed deliveries, before
// jitter (jitter needs the queue's random source).
absl::Duration BaseRetryDelay(const RetryPolicy& policy, uint32_t attempt,
                              const Message& message);

}  // namespace warren

#endif  // WARREN_RETRY_H_
