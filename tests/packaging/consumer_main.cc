// The consumer program shared by the packaging tests (find_package,
// add_subdirectory, FetchContent, the build tree, pkg-config): opens an
// in-memory broker, declares a queue, publishes one message and receives it.
// Exits 0 on success.

#include <warren/warren.h>

#include <cstdio>
#include <memory>

int main() {
  absl::StatusOr<std::unique_ptr<warren::Broker>> broker =
      warren::Broker::Open();
  if (!broker.ok()) {
    std::fprintf(stderr, "Open: %s\n", broker.status().ToString().c_str());
    return 1;
  }
  if (absl::Status s = (*broker)->DeclareQueue("hello"); !s.ok()) {
    std::fprintf(stderr, "DeclareQueue: %s\n", s.ToString().c_str());
    return 1;
  }
  absl::StatusOr<warren::PublishOutcome> outcome =
      (*broker)->Publish("", "hello", warren::Message("hi"));
  if (!outcome.ok() || outcome->queues != 1) {
    std::fprintf(stderr, "Publish: %s\n", outcome.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<std::unique_ptr<warren::Consumer>> consumer =
      (*broker)->Consume("hello");
  if (!consumer.ok()) {
    std::fprintf(stderr, "Consume: %s\n", consumer.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<warren::Delivery> delivery =
      (*consumer)->Receive(absl::Seconds(5));
  if (!delivery.ok() || delivery->body() != "hi") {
    std::fprintf(stderr, "Receive: %s\n", delivery.status().ToString().c_str());
    return 1;
  }
  if (absl::Status s = (*consumer)->Ack(*delivery); !s.ok()) {
    std::fprintf(stderr, "Ack: %s\n", s.ToString().c_str());
    return 1;
  }
  std::puts("received \"hi\" from queue \"hello\"");
  return 0;
}
