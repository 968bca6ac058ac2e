// Helpers shared by warren's tests.

#ifndef WARREN_TESTS_TEST_UTIL_H_
#define WARREN_TESTS_TEST_UTIL_H_

#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "warren/warren.h"

namespace warren::testing {

inline std::unique_ptr<Broker> NewBroker() {
  auto broker = Broker::Open({});
  if (!broker.ok()) std::abort();
  return *std::move(broker);
}

// Publishes a message with `body`; aborts the test binary on a status error
// only through the returned status (tests check it).
inline absl::StatusOr<PublishOutcome> Send(Broker& b, std::string_view exchange,
                                           std::string_view key,
                                           std::string_view body,
                                           PublishOptions options = {}) {
  return b.Publish(exchange, key, Message(std::string(body)), options);
}

inline uint64_t Ready(const Broker& b, std::string_view queue) {
  auto s = b.GetQueueStats(queue);
  return s.ok() ? s->ready : ~uint64_t{0};
}

// Receives everything ready on `queue` (acking it) and returns the bodies in
// delivery order.
inline std::vector<std::string> Drain(Broker& b, std::string_view queue) {
  std::vector<std::string> out;
  auto c = b.Consume(queue);
  if (!c.ok()) return {"<no such queue>"};
  for (;;) {
    auto d = (*c)->TryReceive();
    if (!d.ok()) break;
    out.emplace_back(d->body());
    (void)(*c)->Ack(*d);
  }
  return out;
}

}  // namespace warren::testing

#endif  // WARREN_TESTS_TEST_UTIL_H_
