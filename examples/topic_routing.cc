// Topic routing: log lines published as "<service>.<severity>" reach the
// queues whose patterns match. `*` is one word, `#` is zero or more.

#include <cstdio>
#include <string>
#include <vector>

#include "warren/warren.h"

int main() {
  auto broker = warren::Broker::Open({}).value();
  (void)broker->DeclareExchange("logs", warren::ExchangeType::kTopic);
  const std::vector<std::pair<std::string, std::string>> bindings = {
      {"all", "#"},
      {"errors", "*.error"},
      {"billing", "billing.#"},
  };
  for (const auto& [queue, pattern] : bindings) {
    (void)broker->DeclareQueue(queue);
    (void)broker->Bind(queue, "logs", pattern);
  }
  for (const char* key : {"billing.info", "billing.error", "auth.error",
                          "auth.info", "billing"}) {
    auto out = broker->Publish("logs", key, warren::Message(key));
    std::printf("%-14s -> %zu queue(s)\n", key, out.ok() ? out->queues : 0);
  }
  for (const auto& [queue, pattern] : bindings) {
    auto consumer = broker->Consume(queue).value();
    std::printf("%-8s (%-9s):", queue.c_str(), pattern.c_str());
    for (auto d = consumer->TryReceive(); d.ok(); d = consumer->TryReceive()) {
      std::printf(" %.*s", static_cast<int>(d->body().size()),
                  d->body().data());
      (void)consumer->Ack(*d);
    }
    std::printf("\n");
  }
  return 0;
}
