// The order service demo.
//
// An order service publishes `order.created` and `order.cancelled` events to
// a topic exchange. Three services consume them on their own worker threads:
//
//   email      bound to `order.*`        — mails the customer about both
//   sms        bound to `order.created`  — texts the customer on new orders
//   inventory  bound to `order.#`        — reserves and releases stock
//
// Each consumer is a subscription: a handler run on a small worker pool, with
// manual acknowledgement through the handler's result. The SMS gateway
// fails now and then; those deliveries are requeued and retried. At the end
// every subscription is stopped gracefully and a summary is printed.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "warren/warren.h"

namespace {

constexpr int kOrders = 1000;

struct Tally {
  std::atomic<int> created{0};
  std::atomic<int> cancelled{0};
  std::atomic<int> retried{0};
  int total() const { return created + cancelled; }
};

// Counts handled events across all consumers so main can wait for them.
std::mutex handled_mu;
std::condition_variable handled_cv;
int handled = 0;

warren::HandlerResult Count(Tally& tally, const warren::Delivery& d) {
  if (d.routing_key() == "order.created") {
    ++tally.created;
  } else {
    ++tally.cancelled;
  }
  {
    std::lock_guard<std::mutex> lock(handled_mu);
    ++handled;
  }
  handled_cv.notify_all();
  return warren::HandlerResult::kAck;
}

}  // namespace

int main() {
  auto broker = warren::Broker::Open({}).value();
  (void)broker->DeclareExchange("orders", warren::ExchangeType::kTopic);
  for (auto [queue, pattern] : std::vector<std::pair<const char*, const char*>>{
           {"email", "order.*"},
           {"sms", "order.created"},
           {"inventory", "order.#"}}) {
    (void)broker->DeclareQueue(queue, {.max_length = 10'000});
    (void)broker->Bind(queue, "orders", pattern);
  }

  Tally email, sms, inventory;
  auto email_sub = broker
                       ->Subscribe("email",
                                   [&](const warren::Delivery& d) {
                                     return Count(email, d);
                                   },
                                   {.workers = 2, .prefetch = 16})
                       .value();
  auto sms_sub =
      broker
          ->Subscribe("sms",
                      [&](const warren::Delivery& d) {
                        // The SMS gateway rejects one first attempt in ten.
                        if (d.properties().message_id.back() == '7' &&
                            d.attempt() == 1) {
                          ++sms.retried;
                          return warren::HandlerResult::kRequeue;
                        }
                        return Count(sms, d);
                      },
                      {.workers = 2, .prefetch = 16})
          .value();
  auto inventory_sub = broker
                           ->Subscribe("inventory",
                                       [&](const warren::Delivery& d) {
                                         return Count(inventory, d);
                                       },
                                       {.workers = 1, .prefetch = 32})
                           .value();

  // The order service: every fifth order is cancelled after it was created.
  int created = 0, cancelled = 0;
  std::thread order_service([&] {
    for (int id = 0; id < kOrders; ++id) {
      warren::Message m("{\"order\":" + std::to_string(id) + "}");
      m.properties().message_id = std::to_string(id);
      m.properties().content_type = "application/json";
      m.headers()["customer"] = "c-" + std::to_string(id % 97);
      if (broker->Publish("orders", "order.created", m, {.mandatory = true})
              .ok()) {
        ++created;
      }
      if (id % 5 == 4) {
        if (broker->Publish("orders", "order.cancelled", std::move(m)).ok()) {
          ++cancelled;
        }
      }
    }
  });
  order_service.join();

  // Wait until every queue is drained and settled, then stop gracefully.
  const int expected_email = created + cancelled;
  {
    std::unique_lock<std::mutex> lock(handled_mu);
    handled_cv.wait_for(lock, std::chrono::seconds(30), [&] {
      return handled >= 2 * expected_email + created;
    });
  }
  for (auto* sub : {email_sub.get(), sms_sub.get(), inventory_sub.get()}) {
    (void)sub->Stop(absl::Seconds(5));
  }

  std::printf("order service published %d created, %d cancelled\n", created,
              cancelled);
  std::printf("%-10s %8s %10s %8s %8s %8s\n", "consumer", "created",
              "cancelled", "retried", "acked", "ready");
  for (auto [name, tally] : std::vector<std::pair<const char*, Tally*>>{
           {"email", &email}, {"sms", &sms}, {"inventory", &inventory}}) {
    auto s = broker->GetQueueStats(name).value();
    std::printf("%-10s %8d %10d %8d %8llu %8llu\n", name, tally->created.load(),
                tally->cancelled.load(), tally->retried.load(),
                static_cast<unsigned long long>(s.acked),
                static_cast<unsigned long long>(s.ready));
  }
  const bool ok = email.total() == expected_email && sms.total() == created &&
                  inventory.total() == expected_email;
  std::printf(ok ? "every event was handled exactly once\n"
                 : "some events were not handled\n");
  return ok ? 0 : 1;
}
