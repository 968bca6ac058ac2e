// -----------------------------------------------------------------------------
// File: warren/broker.h
// -----------------------------------------------------------------------------
//
// The broker: exchanges, queues and bindings in the host process, with
// RabbitMQ's (AMQP 0-9-1) model and vocabulary. This header defines:
//
//   * `Broker`         — opened with `Broker::Open`; declares and deletes
//                        exchanges and queues, binds them, publishes, and
//                        makes consumers and subscriptions.
//   * `PublishOutcome` — what became of one publish: how many queues took
//                        it, which refused it, and the message itself when it
//                        was mandatory and unroutable.
//
// Example:
//
//   #include <warren/warren.h>
//
//   auto broker = warren::Broker::Open({}).value();   // in memory
//   broker->DeclareExchange("orders", warren::ExchangeType::kTopic);
//   broker->DeclareQueue("email", {.max_length = 10'000});
//   broker->Bind("email", "orders", "order.*");
//
//   warren::Message m("{\"id\":42}");
//   m.properties().message_id = "42";
//   auto outcome = broker->Publish("orders", "order.created", std::move(m),
//                                  {.mandatory = true});
//
//   auto consumer = broker->Consume("email", {.prefetch = 10}).value();
//   auto d = consumer->Receive(absl::Seconds(1));     // long poll
//   if (d.ok()) consumer->Ack(*d);
//
// Names: exchange and queue names are 1 to 255 bytes without NUL (the empty
// name is the default exchange); routing and binding keys are 0 to 255 bytes.
// Every refused call leaves the broker exactly as it was.
//
// Thread-safety: every method is thread-safe.

#ifndef WARREN_BROKER_H_
#define WARREN_BROKER_H_

#include <cstddef>
#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "warren/consumer.h"
#include "warren/message.h"
#include "warren/options.h"
#include "warren/stats.h"

namespace warren {

// What became of one publish.
struct PublishOutcome {
  // Queues that accepted the message (duplicates included).
  size_t queues = 0;
  // Of those, queues that dropped it as a duplicate of a message id seen
  // within their deduplication window.
  size_t duplicates = 0;
  // Queues that refused it because they were full (overflow
  // `kRejectPublish`). Other queues of the same publish still took it.
  std::vector<std::string> refused_by;
  // Set when the publish was mandatory and routed to no queue: the message is
  // handed back here instead of being dropped (AMQP basic.return).
  std::optional<Message> returned;

  bool routed() const { return queues > 0 || !refused_by.empty(); }
};

// One message of Broker::PublishBatch.
struct OutgoingMessage {
  std::string routing_key;
  Message message;
};

// Where Broker::Redrive moves messages.
struct RedriveOptions {
  // A queue to move them to (through the default exchange). Default: "" —
  // each message goes back to the queue it last died in.
  std::string to_queue;
  // Or an exchange to publish them to, with `routing_key` (default: the key
  // each message had when it last died). A `routing_key` without
  // `to_exchange` is kInvalidArgument: a queue target needs none.
  std::string to_exchange;
  std::optional<std::string> routing_key;
  // Most messages to move; 0 means all that are ready. Messages that cannot
  // move (their target is gone) stay and do not count. Default: 0.
  uint64_t max_messages = 0;
  // With a rate, messages move in the background on the broker's clock, one
  // every 1/rate seconds (a late tick does not push back the later ones),
  // and Redrive returns at once. Default: 0 (all now).
  double messages_per_second = 0;
};

// Receives the result of Broker::PublishAsync once the publish is confirmed
// (or failed).
using PublishCallback =
    absl::AnyInvocable<void(absl::StatusOr<PublishOutcome>) &&>;

// Binding arguments: for a headers exchange, `x-match` (`all`, `any`,
// `all-with-x`, `any-with-x`) and the headers to match; ignored by the other
// exchange types (but part of the binding's identity).
using BindingArguments = Headers;

// An in-process message broker. Thread-safe. See the file comment.
class Broker {
 public:
  // Opens a broker. With an empty `options.wal_dir` the broker is purely in
  // memory. With one, the log in it is replayed first: durable exchanges,
  // queues and bindings come back, and so do the persistent messages that
  // were not settled, each ready again (those delivered but not acked are
  // flagged redelivered, their attempt counted).
  //   kInvalidArgument    bad options (e.g. a segment size under 64 KiB);
  //   kFailedPrecondition another broker holds the directory, or a segment
  //                       is in a newer log format than this build reads;
  //   kDataLoss           damage in the middle of the log (file and byte
  //                       range named), unless on_corruption is kSkip;
  //   kResourceExhausted, kPermissionDenied, ... from the file system.
  static absl::StatusOr<std::unique_ptr<Broker>> Open(
      const BrokerOptions& options = {});

  // Closes the broker (see Close).
  virtual ~Broker();

  // --- Exchanges ------------------------------------------------------------

  // Declares an exchange. Redeclaring with the same type and options
  // succeeds and changes nothing.
  //   kInvalidArgument    bad name, or the empty name (the default exchange);
  //   kFailedPrecondition it exists with another type or other options.
  virtual absl::Status DeclareExchange(std::string_view name, ExchangeType type,
                                       const ExchangeOptions& options = {}) = 0;

  // Deletes an exchange and every binding to and from it.
  //   kInvalidArgument the default exchange, or a bad name;
  //   kNotFound        no such exchange;
  //   kFailedPrecondition `if_unused` and it is the source of a binding.
  virtual absl::Status DeleteExchange(
      std::string_view name, const DeleteExchangeOptions& options = {}) = 0;

  // --- Queues ---------------------------------------------------------------

  // Declares a queue and binds it to the default exchange by its name.
  // Redeclaring with the same options succeeds and changes nothing.
  //   kInvalidArgument    bad name or option (e.g. max_priority > 10);
  //   kFailedPrecondition it exists with other options.
  virtual absl::Status DeclareQueue(std::string_view name,
                                    const QueueOptions& options = {}) = 0;

  // Deletes a queue, its bindings and its messages (held deliveries become
  // unsettleable; its consumers receive kNotFound). Returns the number of
  // ready messages deleted.
  //   kNotFound           no such queue;
  //   kFailedPrecondition `if_unused` with consumers, or `if_empty` with
  //                       ready messages.
  virtual absl::StatusOr<uint64_t> DeleteQueue(
      std::string_view name, const DeleteQueueOptions& options = {}) = 0;

  // Removes every ready message (not the unacked ones). Returns how many.
  //   kNotFound no such queue.
  virtual absl::StatusOr<uint64_t> PurgeQueue(std::string_view name) = 0;

  // --- Bindings -------------------------------------------------------------

  // Binds `queue` to `exchange` with `binding_key` and `arguments`. Binding
  // twice is a no-op.
  //   kInvalidArgument bad name or key, or the default exchange;
  //   kNotFound        no such queue or exchange.
  virtual absl::Status Bind(std::string_view queue, std::string_view exchange,
                            std::string_view binding_key,
                            const BindingArguments& arguments = {}) = 0;

  // Removes a binding. Removing one that does not exist is a no-op (as in
  // RabbitMQ); errors as Bind.
  virtual absl::Status Unbind(std::string_view queue, std::string_view exchange,
                              std::string_view binding_key,
                              const BindingArguments& arguments = {}) = 0;

  // Exchange-to-exchange bindings: messages routed by `source` with a
  // matching key are routed on by `destination`. Cycles are allowed; a
  // publish still reaches each queue at most once. Errors as Bind.
  virtual absl::Status BindExchange(std::string_view destination,
                                    std::string_view source,
                                    std::string_view binding_key,
                                    const BindingArguments& arguments = {}) = 0;
  virtual absl::Status UnbindExchange(
      std::string_view destination, std::string_view source,
      std::string_view binding_key, const BindingArguments& arguments = {}) = 0;

  // --- Publishing -----------------------------------------------------------

  // Publishes `message` to `exchange` ("" is the default exchange, which
  // routes to the queue named by the routing key). The message is immutable
  // from here on and shared by every queue it reaches (each queue at most
  // once). An unroutable message is returned in the outcome when
  // `mandatory`, else dropped and counted as unroutable by the exchange.
  //   kInvalidArgument    bad name or routing key, an internal exchange, a
  //                       delay or expiration outside 0 to 10 years, or a
  //                       timestamp that is not finite (or is beyond 64-bit
  //                       microseconds);
  //   kNotFound           no such exchange (nothing is enqueued), or every
  //                       queue it waited for room in (kBlock) was deleted
  //                       meanwhile;
  //   kResourceExhausted  every queue it routed to was full and refused it;
  //   kDeadlineExceeded   it waited for room in kBlock queues past
  //                       PublishOptions::timeout, and no queue took it;
  //   kFailedPrecondition the broker is closed.
  // With a WAL, a persistent publish returns once it is confirmed: its log
  // record is as durable as the sync policy promises. A failed write or sync
  // returns that error (kResourceExhausted for a full disk, kDataLoss for
  // EIO); the message may then still be in the queues it reached, in memory,
  // but it is not confirmed.
  virtual absl::StatusOr<PublishOutcome> Publish(
      std::string_view exchange, std::string_view routing_key, Message message,
      const PublishOptions& options = {}) = 0;

  // Publishes several messages to one exchange, taking the broker's locks
  // once for the batch (the fast path for throughput). With a WAL, the
  // batch's persistent messages are logged as one record: after a crash
  // either all of them are there or none is. Every message is
  // validated first: any bad name, key or option fails the whole batch with
  // that status and publishes nothing. Then each message gets its own outcome
  // or status, as Publish would return it, in order.
  //   kNotFound           no such exchange; kFailedPrecondition when closed.
  virtual absl::StatusOr<std::vector<absl::StatusOr<PublishOutcome>>>
  PublishBatch(std::string_view exchange, std::vector<OutgoingMessage> messages,
               const PublishOptions& options = {}) = 0;

  // Publishes as Publish does, but returns before the confirm: `done` runs
  // once the publish is confirmed (or failed), on the log's writer thread, or
  // on the calling thread when nothing waits for the disk (no WAL, a
  // transient message, an error); an empty `done` drops the outcome (fire
  // and forget). `done` must not block on the broker's confirms (e.g. call
  // a persistent Publish): keep it short. Routing and enqueueing happen
  // before PublishAsync returns, as for Publish.
  virtual void PublishAsync(std::string_view exchange,
                            std::string_view routing_key, Message message,
                            const PublishOptions& options,
                            PublishCallback done) = 0;

  // The same, with a future for the outcome.
  std::future<absl::StatusOr<PublishOutcome>> PublishAsync(
      std::string_view exchange, std::string_view routing_key, Message message,
      const PublishOptions& options = {}) {
    auto promise =
        std::make_shared<std::promise<absl::StatusOr<PublishOutcome>>>();
    auto future = promise->get_future();
    PublishAsync(exchange, routing_key, std::move(message), options,
                 [promise](absl::StatusOr<PublishOutcome> r) {
                   promise->set_value(std::move(r));
                 });
    return future;
  }

  // --- Consuming ------------------------------------------------------------

  // Registers a pull consumer on `queue`.
  //   kNotFound no such queue.
  virtual absl::StatusOr<std::unique_ptr<Consumer>> Consume(
      std::string_view queue, const ConsumeOptions& options = {}) = 0;

  // Registers a push consumer: `handler` runs on `options.workers` threads
  // owned by the returned subscription, and its result settles the delivery.
  //   kNotFound        no such queue;
  //   kInvalidArgument workers is 0, or an empty handler.
  virtual absl::StatusOr<std::unique_ptr<Subscription>> Subscribe(
      std::string_view queue, HandlerWithConsumer handler,
      const SubscribeOptions& options = {}) = 0;

  // The same with a handler that takes only the delivery.
  template <
      typename F,
      std::enable_if_t<
          std::is_invocable_r_v<HandlerResult, F&, const Delivery&>, int> = 0>
  absl::StatusOr<std::unique_ptr<Subscription>> Subscribe(
      std::string_view queue, F handler, const SubscribeOptions& options = {}) {
    if constexpr (std::is_constructible_v<bool, const F&> &&
                  !std::is_class_v<F>) {
      // A function pointer: a null one is an empty handler.
      if (!handler) return Subscribe(queue, HandlerWithConsumer(), options);
    } else if constexpr (std::is_constructible_v<bool, const F&>) {
      // std::function, absl::AnyInvocable, ...: empty is an empty handler.
      if (!static_cast<bool>(handler)) {
        return Subscribe(queue, HandlerWithConsumer(), options);
      }
    }
    return Subscribe(
        queue,
        HandlerWithConsumer(
            [h = std::move(handler)](const Delivery& d, Consumer&) mutable {
              return h(d);
            }),
        options);
  }

  // --- Dead-letter queue tools ----------------------------------------------

  // Copies of up to `max_messages` ready messages of `queue`, in delivery
  // order, without consuming them (their death history included).
  //   kNotFound no such queue.
  virtual absl::StatusOr<std::vector<Message>> Browse(std::string_view queue,
                                                      size_t max_messages) = 0;

  // Moves messages out of the dead-letter queue `dlq` (one that some queue's
  // dead letters reach: bound to its dead-letter exchange, directly or
  // through exchange-to-exchange bindings and alternate exchanges, or named
  // by its dead-letter routing key on the default exchange; any queue when
  // one dead-letters to the default exchange under each message's own
  // key), keeping their death history: back to the queue each died in, or
  // to `to_queue`, or to `to_exchange`. Returns how many moved now (0 with a
  // rate: they move in the background). A message whose destination no
  // longer exists stays in `dlq`.
  //   kNotFound         no such queue, target queue or target exchange;
  //   kFailedPrecondition `dlq` receives no queue's dead letters;
  //   kInvalidArgument  both targets, a routing key without `to_exchange`,
  //                     a negative rate, or bad names.
  virtual absl::StatusOr<uint64_t> Redrive(std::string_view dlq,
                                           const RedriveOptions& options) = 0;

  // --- Statistics -----------------------------------------------------------

  //   kNotFound no such queue / exchange; kInvalidArgument a bad name (the
  //   empty name is the default exchange).
  virtual absl::StatusOr<QueueStats> GetQueueStats(
      std::string_view queue) const = 0;
  virtual absl::StatusOr<ExchangeStats> GetExchangeStats(
      std::string_view exchange) const = 0;
  // Every queue and exchange.
  virtual BrokerStats Stats() const = 0;

  // --- Lifetime -------------------------------------------------------------

  // Closes the broker: later calls return kFailedPrecondition, waiting
  // receivers wake with kFailedPrecondition, and messages are released.
  // Subscriptions must be stopped (or destroyed) by their owners; their
  // workers see the closed broker and exit. Idempotent.
  virtual void Close() = 0;

 protected:
  Broker() = default;
};

}  // namespace warren

#endif  // WARREN_BROKER_H_
