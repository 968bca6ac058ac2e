// A work queue with competing consumers: four workers share one queue, each
// holding at most one unacknowledged task (prefetch 1), so a slow task never
// holds up the others. A task that fails is requeued and retried.

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "warren/warren.h"

int main() {
  auto broker = warren::Broker::Open({}).value();
  (void)broker->DeclareQueue("tasks");

  constexpr int kTasks = 40;
  for (int i = 0; i < kTasks; ++i) {
    (void)broker->Publish("", "tasks",
                          warren::Message("task-" + std::to_string(i)));
  }

  std::atomic<int> done{0};
  std::vector<int> per_worker(4, 0);
  std::vector<std::thread> workers;
  for (int w = 0; w < 4; ++w) {
    workers.emplace_back([&, w] {
      auto consumer = broker->Consume("tasks", {.prefetch = 1}).value();
      while (done.load() < kTasks) {
        auto d = consumer->Receive(absl::Milliseconds(50));
        if (!d.ok()) continue;
        // Every seventh task fails on its first attempt and is retried.
        const bool fail = d->body().size() % 7 == 0 && d->attempt() == 1;
        if (fail) {
          (void)consumer->Nack(*d, {.requeue = true});
          continue;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));  // the work
        (void)consumer->Ack(*d);
        ++per_worker[w];
        done.fetch_add(1);
      }
    });
  }
  for (auto& t : workers) t.join();

  auto stats = broker->GetQueueStats("tasks").value();
  std::printf("done %d tasks: ", done.load());
  for (int w = 0; w < 4; ++w) std::printf("worker%d=%d ", w, per_worker[w]);
  std::printf("\nredelivered=%llu acked=%llu ready=%llu\n",
              static_cast<unsigned long long>(stats.redelivered),
              static_cast<unsigned long long>(stats.acked),
              static_cast<unsigned long long>(stats.ready));
  return stats.acked == kTasks && stats.ready == 0 ? 0 : 1;
}
