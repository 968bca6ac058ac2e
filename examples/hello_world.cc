// Hello, warren: declare a queue, publish one message through the default
// exchange, receive it and acknowledge it.

#include <cstdio>

#include "warren/warren.h"

int main() {
  auto broker = warren::Broker::Open({}).value();
  if (auto s = broker->DeclareQueue("hello"); !s.ok()) {
    std::fprintf(stderr, "declare: %s\n", s.ToString().c_str());
    return 1;
  }
  // The default exchange "" routes to the queue named by the routing key.
  (void)broker->Publish("", "hello", warren::Message("Hello, world!"));

  auto consumer = broker->Consume("hello").value();
  auto delivery = consumer->Receive(absl::Seconds(1));
  if (!delivery.ok()) {
    std::fprintf(stderr, "receive: %s\n", delivery.status().ToString().c_str());
    return 1;
  }
  std::printf("received: %.*s\n", static_cast<int>(delivery->body().size()),
              delivery->body().data());
  return consumer->Ack(*delivery).ok() ? 0 : 1;
}
