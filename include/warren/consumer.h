// -----------------------------------------------------------------------------
// File: warren/consumer.h
// -----------------------------------------------------------------------------
//
// Receiving messages. This header defines:
//
//   * `Delivery`     — one delivery of a message to a consumer: the message,
//                      a delivery tag, the exchange and routing key it was
//                      published with, `redelivered` and `attempt`.
//   * `Consumer`     — a pull consumer made by `Broker::Consume`: `Receive`
//                      (long poll with a timeout), `TryReceive`,
//                      `ReceiveBatch`; settled with `Ack`, `Nack`, `Reject`.
//   * `Subscription` — a push consumer made by `Broker::Subscribe`: a handler
//                      run on a pool of worker threads owned by the
//                      subscription, stopped gracefully with `Stop`.
//
// Example (pull):
//
//   auto consumer = broker->Consume("email", {.prefetch = 10}).value();
//   while (true) {
//     absl::StatusOr<warren::Delivery> d = consumer->Receive(absl::Seconds(1));
//     if (absl::IsDeadlineExceeded(d.status())) continue;  // nothing yet
//     if (!d.ok()) break;                                   // closed, deleted
//     if (Send(d->body())) {
//       consumer->Ack(*d);
//     } else {
//       consumer->Nack(*d, {.requeue = true});
//     }
//   }
//
// Example (push):
//
//   auto sub = broker->Subscribe(
//       "email",
//       [](const warren::Delivery& d) {
//         return Send(d.body()) ? warren::HandlerResult::kAck
//                               : warren::HandlerResult::kRequeue;
//       },
//       {.workers = 4, .prefetch = 32}).value();
//   ...
//   sub->Stop(absl::Seconds(5));  // drain running handlers, requeue the rest

#ifndef WARREN_CONSUMER_H_
#define WARREN_CONSUMER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "warren/message.h"

namespace warren {

namespace internal {
struct Envelope;
class ConsumerState;
class SubscriptionState;
class BrokerImpl;
}  // namespace internal

// One delivery of a message to a consumer. Cheap to copy (it shares the
// immutable message). Thread-compatible.
class Delivery {
 public:
  Delivery() = default;

  // The message as published; it is shared with every other queue the
  // publish reached and is never modified.
  const Message& message() const;
  std::string_view body() const { return message().body(); }
  const Properties& properties() const { return message().properties(); }
  const Headers& headers() const { return message().headers(); }

  // Unique within the consumer that received it; increases with each
  // delivery.
  uint64_t delivery_tag() const { return delivery_tag_; }
  // The exchange ("" for the default exchange) and routing key the message
  // was published with.
  std::string_view exchange() const;
  std::string_view routing_key() const;
  // True on any delivery of the message after its first.
  bool redelivered() const { return attempt_ > 1; }
  // 1 on the first delivery, +1 on every later one, whatever caused it.
  uint32_t attempt() const { return attempt_; }
  // The consumer that holds this delivery (see `Consumer::id`).
  uint64_t consumer_id() const { return consumer_id_; }

 private:
  friend class internal::ConsumerState;
  std::shared_ptr<const internal::Envelope> envelope_;
  uint64_t delivery_tag_ = 0;
  uint64_t consumer_id_ = 0;
  uint32_t attempt_ = 0;
};

struct AckOptions {
  // Also acknowledge every earlier delivery this consumer holds.
  bool multiple = false;
};

struct NackOptions {
  // true: the message goes back to its original place in the queue.
  // false: it is dropped (counted as `dropped`).
  bool requeue = true;
  // Also nack every earlier delivery this consumer holds.
  bool multiple = false;
};

struct RejectOptions {
  // As NackOptions::requeue.
  bool requeue = true;
};

// A pull consumer on one queue. Made by `Broker::Consume`.
//
// Thread-safe: several threads may receive and settle on one consumer.
// Destroying the consumer closes it.
class Consumer {
 public:
  ~Consumer();
  Consumer(const Consumer&) = delete;
  Consumer& operator=(const Consumer&) = delete;

  // Waits up to `timeout` for a delivery and returns it as soon as one is
  // ready (long polling). Competing consumers that wait are served in turn.
  // Returns:
  //   kDeadlineExceeded   no message became ready in time;
  //   kResourceExhausted  this consumer already holds `prefetch` unsettled
  //                       deliveries (settle some first);
  //   kFailedPrecondition the consumer is cancelled or closed, or the broker
  //                       is closed;
  //   kNotFound           the queue was deleted.
  absl::StatusOr<Delivery> Receive(absl::Duration timeout);

  // As Receive, without waiting: kUnavailable when no message is ready.
  absl::StatusOr<Delivery> TryReceive();

  // Waits up to `timeout` for the first delivery, then takes up to
  // `max_messages` in all without waiting further (limited by prefetch).
  // Errors as Receive; kInvalidArgument when `max_messages` is 0.
  absl::StatusOr<std::vector<Delivery>> ReceiveBatch(size_t max_messages,
                                                     absl::Duration timeout);

  // Settles a delivery held by this consumer.
  //   kInvalidArgument    the delivery belongs to another consumer;
  //   kFailedPrecondition unknown, or already settled (never a double
  //                       settle), or the consumer or the broker is closed;
  //   kNotFound           the queue was deleted (with what was held).
  // A cancelled consumer can still settle what it holds.
  absl::Status Ack(const Delivery& delivery, AckOptions options = {});
  absl::Status Nack(const Delivery& delivery, NackOptions options = {});
  absl::Status Reject(const Delivery& delivery, RejectOptions options = {});

  // Renews the lease on a held delivery: it now expires `extension` from now
  // (SQS ChangeMessageVisibility); an extension of 0 ends it at once, and the
  // message is ready again when Extend returns. Works with or without an ack
  // deadline. A lease is over at its deadline, even before the broker's
  // timer has returned the message (a manual clock not yet advanced past
  // it, a busy timer thread): settling or extending it then returns it, and
  // fails.
  //   kInvalidArgument    another consumer's delivery, or a negative or
  //                       absurd extension;
  //   kFailedPrecondition unknown or settled, its lease already expired, or
  //                       the consumer or the broker is closed;
  //   kNotFound           the queue was deleted.
  absl::Status Extend(const Delivery& delivery, absl::Duration extension);

  // Stops new deliveries; deliveries already held stay settleable. Returns
  // kFailedPrecondition when already cancelled or closed.
  absl::Status Cancel();

  // Cancels and returns every delivery still held to the queue, at its
  // original position and flagged redelivered. Idempotent.
  void Close();

  // Unique within the process (across brokers too).
  uint64_t id() const;
  const std::string& tag() const;
  const std::string& queue() const;
  // Deliveries held and not yet settled.
  size_t unacked() const;

 private:
  friend class internal::BrokerImpl;
  friend class internal::SubscriptionState;
  explicit Consumer(std::shared_ptr<internal::ConsumerState> state);
  std::shared_ptr<internal::ConsumerState> state_;
};

// What a subscription handler tells the worker to do with its delivery.
enum class HandlerResult {
  kAck,      // acknowledge
  kRequeue,  // nack with requeue: back to its place in the queue
  kReject,   // reject without requeue: dropped
  kSettled,  // the handler settled it itself through the Consumer it was given
};

// A push consumer: a handler run on worker threads owned by the
// subscription. Made by `Broker::Subscribe`.
//
// Handlers run concurrently on up to `workers` threads and must be
// thread-safe. A handler that throws has its delivery requeued.
// Thread-safe. Destroying the subscription stops it with no grace period.
class Subscription {
 public:
  ~Subscription();
  Subscription(const Subscription&) = delete;
  Subscription& operator=(const Subscription&) = delete;

  // Graceful shutdown: stops taking deliveries, waits up to `grace` for
  // running handlers to finish and settle, then returns everything still
  // held to the queue and joins the workers. Returns OK when every handler
  // finished in time (workers waiting for a delivery are not running
  // handlers); kDeadlineExceeded when some were still running at the
  // deadline (their deliveries are requeued and their late settles fail);
  // kFailedPrecondition when already stopped. Called from one of this
  // subscription's own handlers, it waits for the other handlers only: the
  // caller's delivery is settled by its handler's result once it returns
  // (also past the deadline), and the workers are joined (and anything left
  // unsettled returned) when the subscription is destroyed, which must not
  // happen in its handler.
  absl::Status Stop(absl::Duration grace);

  // The consumer the workers receive from (to settle, or for statistics).
  Consumer& consumer();

  // Handler invocations so far, and those whose handler threw.
  uint64_t handled() const;
  uint64_t failed() const;

 private:
  friend class internal::BrokerImpl;
  explicit Subscription(std::unique_ptr<internal::SubscriptionState> state);
  std::unique_ptr<internal::SubscriptionState> state_;
};

// Handler signatures: the short form gets the delivery; the long form also
// gets the consumer, to settle it itself (returning kSettled).
using Handler = absl::AnyInvocable<HandlerResult(const Delivery&)>;
using HandlerWithConsumer =
    absl::AnyInvocable<HandlerResult(const Delivery&, Consumer&)>;

}  // namespace warren

#endif  // WARREN_CONSUMER_H_
