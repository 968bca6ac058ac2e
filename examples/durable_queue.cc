// A durable queue that survives a restart. A broker opened with a
// write-ahead log directory keeps its durable queues and their persistent
// messages on disk: opened again on the same directory (after a clean close,
// as here, or after a crash), it brings them back. A message that was
// delivered but not acked comes back too, flagged redelivered; an acked one
// does not; a transient message is gone.
//
//   durable_queue [DIR]    (default: a fresh directory, removed at the end)

#include <stdlib.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>

#include "warren/warren.h"

namespace {

std::unique_ptr<warren::Broker> OpenBroker(const std::string& dir) {
  auto broker = warren::Broker::Open({
      .wal_dir = dir,
      // A publish returns once its record is on disk (fdatasync); concurrent
      // publishers share one sync. See "Choosing a sync policy" in the README.
      .sync = warren::SyncPolicy::kGroupCommit,
  });
  if (!broker.ok()) {
    std::fprintf(stderr, "open %s: %s\n", dir.c_str(),
                 broker.status().ToString().c_str());
    std::exit(1);
  }
  return *std::move(broker);
}

// Publishes `body` to the queue "invoices" and returns once it is confirmed.
void Publish(warren::Broker& broker, const char* body, bool persistent) {
  auto outcome = broker.Publish("", "invoices", warren::Message(body),
                                {.persistent = persistent});
  if (!outcome.ok()) {
    std::fprintf(stderr, "publish: %s\n", outcome.status().ToString().c_str());
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir;
  bool remove_dir = false;
  if (argc > 1) {
    dir = argv[1];
  } else {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "warren-durable-queue-XXXXXX")
            .string();
    if (mkdtemp(tmpl.data()) == nullptr) return 1;
    dir = tmpl;
    remove_dir = true;
  }

  // --- First life -----------------------------------------------------------
  {
    auto broker = OpenBroker(dir);
    // Only a durable queue is logged; declaring it again later is harmless.
    (void)broker->DeclareQueue("invoices", {.durable = true});
    Publish(*broker, "invoice 1", /*persistent=*/true);
    Publish(*broker, "invoice 2", /*persistent=*/true);
    Publish(*broker, "invoice 3", /*persistent=*/true);
    Publish(*broker, "a transient note", /*persistent=*/false);

    auto consumer = broker->Consume("invoices").value();
    auto first = consumer->Receive(absl::Seconds(1)).value();
    (void)consumer->Ack(first);  // settled: never delivered again
    auto second = consumer->Receive(absl::Seconds(1)).value();
    std::printf("first life: acked \"%s\", received \"%s\" and stopped\n",
                std::string(first.body()).c_str(),
                std::string(second.body()).c_str());
    // No ack for the second one: the broker goes away with it unsettled, as
    // it would in a crash.
  }

  // --- Second life: the same directory --------------------------------------
  int recovered = 0;
  {
    auto broker = OpenBroker(dir);
    auto consumer = broker->Consume("invoices").value();  // no redeclare
    while (true) {
      auto d = consumer->TryReceive();
      if (!d.ok()) break;  // kUnavailable: nothing more
      std::printf("second life: \"%s\"%s\n", std::string(d->body()).c_str(),
                  d->redelivered() ? " (redelivered)" : "");
      (void)consumer->Ack(*d);
      ++recovered;
    }
  }

  if (remove_dir) std::filesystem::remove_all(dir);
  // invoice 2 (redelivered) and invoice 3 come back; invoice 1 was acked and
  // the transient note was never logged.
  return recovered == 2 ? 0 : 1;
}
