// -----------------------------------------------------------------------------
// File: benchmarks/rabbitmq_private.h
// -----------------------------------------------------------------------------
//
// A private RabbitMQ server for side-by-side measurements: started as a child
// process from a private temporary directory, bound to 127.0.0.1 only, and
// stopped again by its own PIDs. The system service is never used or touched.
//
// What makes it private (see /work/shared/PEERS.md):
//
//   * a temporary directory holding the environment file
//     (RABBITMQ_CONF_ENV_FILE), rabbitmq.conf, enabled_plugins (`[].`), the
//     Mnesia and log directories, the PID file, and HOME with an Erlang
//     cookie of mode 0400;
//   * free ports picked on 127.0.0.1 for AMQP, Erlang distribution and epmd;
//   * an epmd started here in the foreground (`epmd -address 127.0.0.1
//     -port P`, no -daemon), with ERL_EPMD_ADDRESS / ERL_EPMD_PORT pointing
//     the server and the CLI at it, and `-start_epmd false` so that neither
//     starts an epmd of its own;
//   * the server started from /usr/lib/rabbitmq/bin/rabbitmq-server in its
//     own process group; readiness by `rabbitmqctl await_startup` (retried
//     until the node answers or the deadline passes).
//
// Stop() runs `rabbitmqctl stop`, waits for the server process, falls back to
// SIGTERM / SIGKILL on the server's own process group, then stops the epmd
// by its PID and removes the directory.
//
// Example:
//
//   std::string error;
//   auto rmq = warren_bench::PrivateRabbitMq::Start(absl::Seconds(60), &error);
//   if (rmq == nullptr) { fmt::print("RabbitMQ: {}\n", error); return; }
//   Connect("127.0.0.1", rmq->amqp_port());   // user guest, password guest
//   rmq->Stop();                              // also done by the destructor
//
// Thread-compatible.
//
// For the durable rows (D3), two client calls over rabbitmq-c (they return an
// error saying "not built" when the runner was built without
// librabbitmq-dev): AmqpPrepareDurableQueue declares a durable classic queue
// and purges it; AmqpPersistentPublish publishes persistent messages
// (delivery_mode 2) to it with publisher confirms (confirm.select), waiting
// for each confirm or keeping a window of them in flight.

#ifndef WARREN_BENCHMARKS_RABBITMQ_PRIVATE_H_
#define WARREN_BENCHMARKS_RABBITMQ_PRIVATE_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace warren_bench {

class PrivateRabbitMq {
 public:
  // Starts a private server and waits up to `timeout` for it. Returns nullptr
  // and sets `*error` (with the tail of the server's output when it ran) when
  // rabbitmq-server or epmd is not installed, or the server did not start in
  // time; everything started is stopped again.
  static std::unique_ptr<PrivateRabbitMq> Start(absl::Duration timeout,
                                                std::string* error);

  // Stops the server (see Stop).
  ~PrivateRabbitMq();
  PrivateRabbitMq(const PrivateRabbitMq&) = delete;
  PrivateRabbitMq& operator=(const PrivateRabbitMq&) = delete;

  // The AMQP listener, on 127.0.0.1.
  int amqp_port() const { return amqp_port_; }
  // The server's version as `rabbitmqctl version` reports it ("" if unknown).
  const std::string& version() const { return version_; }

  // Stops the server and the epmd this object started, and removes the
  // temporary directory. Idempotent.
  void Stop();

 private:
  PrivateRabbitMq() = default;

  // Runs `rabbitmqctl -n <node> <args...>` with the server's environment and
  // waits up to `timeout`; returns its exit status (-1 when it could not run
  // or timed out) and appends its output to `*output` when non-null.
  int RunCtl(const std::vector<std::string>& args, absl::Duration timeout,
             std::string* output);
  std::vector<std::string> Environment() const;

  std::string dir_;
  std::string node_;
  int amqp_port_ = 0;
  int dist_port_ = 0;
  int epmd_port_ = 0;
  pid_t epmd_pid_ = -1;
  pid_t server_pid_ = -1;
  std::string version_;
};

// Declares `queue` on the server at 127.0.0.1:`port` as a durable classic
// queue (not exclusive, not auto-delete) and purges it. Returns false and
// sets `*error` on failure.
bool AmqpPrepareDurableQueue(int port, const std::string& queue,
                             std::string* error);

// Publishes persistent messages (delivery_mode 2) of `body_size` bytes to the
// durable `queue` through the default exchange, on one connection whose
// channel is in confirm mode, for about `seconds`, keeping at most `window`
// messages unconfirmed (1: publish, wait for its basic.ack, publish the
// next). After `seconds` it stops publishing and waits for the outstanding
// confirms. Returns confirmed messages per second (from the first publish to
// the last confirm), or 0 and sets `*error` (a basic.nack, a closed channel,
// no confirm within 30 s).
double AmqpPersistentPublish(int port, const std::string& queue,
                             size_t body_size, uint32_t window, double seconds,
                             std::string* error);

}  // namespace warren_bench

#endif  // WARREN_BENCHMARKS_RABBITMQ_PRIVATE_H_
