#include "warren/retry.h"

#include <algorithm>
#include <cmath>

#include "str_util.h"

namespace warren {

namespace {
// Longer than any sensible delay or TTL: anything beyond is a mistake.
constexpr absl::Duration kMaxDelay = absl::Hours(24 * 365 * 10);
}  // namespace

absl::Status ValidateRetryPolicy(const RetryPolicy& p) {
  using internal::StrCat;
  if (p.max_attempts == 0) {
    return absl::InvalidArgumentError(
        "retry max_attempts must be at least 1 (the first delivery counts)");
  }
  for (auto [name, d] : {std::pair{"initial_delay", p.initial_delay},
                         std::pair{"max_delay", p.max_delay}}) {
    if (d < absl::ZeroDuration() || d > kMaxDelay) {
      return absl::InvalidArgumentError(
          StrCat("retry ", name, " must be between 0 and 10 years"));
    }
  }
  if (!(p.multiplier >= 1.0) || !std::isfinite(p.multiplier)) {
    return absl::InvalidArgumentError(
        "retry multiplier must be a finite number of at least 1");
  }
  if (!(p.jitter_ratio >= 0.0 && p.jitter_ratio <= 1.0)) {
    return absl::InvalidArgumentError("retry jitter_ratio must be in [0, 1]");
  }
  if (p.backoff != Backoff::kFixed && p.backoff != Backoff::kExponential &&
      p.backoff != Backoff::kCustom) {
    return absl::InvalidArgumentError("unknown retry backoff");
  }
  if (p.jitter != Jitter::kNone && p.jitter != Jitter::kFull &&
      p.jitter != Jitter::kEqual && p.jitter != Jitter::kRatio) {
    return absl::InvalidArgumentError("unknown retry jitter");
  }
  if (p.backoff == Backoff::kCustom && !p.custom) {
    return absl::InvalidArgumentError(
        "retry backoff kCustom needs a custom function");
  }
  return absl::OkStatus();
}

absl::Duration BaseRetryDelay(const RetryPolicy& p, uint32_t attempt,
                              const Message& message) {
  absl::Duration d;
  switch (p.backoff) {
    case Backoff::kFixed:
      d = p.initial_delay;
      break;
    case Backoff::kExponential: {
      const double factor = std::pow(
          p.multiplier, static_cast<double>(attempt > 0 ? attempt - 1 : 0));
      // Saturate instead of overflowing for large attempts.
      const double secs = absl::ToDoubleSeconds(p.initial_delay) * factor;
      d = std::isfinite(secs) && secs < absl::ToDoubleSeconds(p.max_delay)
              ? absl::Seconds(secs)
              : p.max_delay;
      break;
    }
    case Backoff::kCustom:
      d = p.initial_delay;
      if (p.custom) {
        // It runs where no caller could hear of an exception (a consumer's
        // close, an expired lease) and after the message left its
        // consumer: one that throws gets initial_delay instead.
        try {
          d = p.custom(attempt, message);
        } catch (...) {  // d is still initial_delay
        }
      }
      break;
  }
  return std::clamp(d, absl::ZeroDuration(), p.max_delay);
}

}  // namespace warren
