// The in-memory broker: the topology (exchanges, queues, bindings) and the
// publish path through it.
//
// Locking: the topology is read far more often than it changes. Publishes
// route under `topo_mu_` held shared, so publishers never block each other;
// declares, deletes and (un)binds take it exclusively. Enqueueing into a
// queue happens under the shared lock and takes no broker-wide lock. Lock
// order: topo_mu_, then a queue's lock, then nothing.

#ifndef WARREN_SRC_BROKER_IMPL_H_
#define WARREN_SRC_BROKER_IMPL_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/functional/function_ref.h"
#include "exchange.h"
#include "queue.h"
#include "str_util.h"
#include "sync.h"
#include "timer_service.h"
#include "wal.h"
#include "warren/broker.h"

namespace warren::internal {

// Opens a broker whose write-ahead log (if any) goes through `env`.
absl::StatusOr<std::unique_ptr<Broker>> OpenBroker(const BrokerOptions& options,
                                                   Env* env);

class BrokerImpl final : public Broker, private QueueOwner {
 public:
  // `wal`: the opened log of a durable broker, or null.
  BrokerImpl(const BrokerOptions& options, std::shared_ptr<Wal> wal);
  ~BrokerImpl() override;

  // Rebuilds what the log recovered. Before the broker is shared.
  void Restore(RecoveredState& state);

  absl::Status DeclareExchange(std::string_view name, ExchangeType type,
                               const ExchangeOptions& options) override;
  absl::Status DeleteExchange(std::string_view name,
                              const DeleteExchangeOptions& options) override;
  absl::Status DeclareQueue(std::string_view name,
                            const QueueOptions& options) override;
  absl::StatusOr<uint64_t> DeleteQueue(
      std::string_view name, const DeleteQueueOptions& options) override;
  absl::StatusOr<uint64_t> PurgeQueue(std::string_view name) override;
  absl::Status Bind(std::string_view queue, std::string_view exchange,
                    std::string_view binding_key,
                    const BindingArguments& arguments) override;
  absl::Status Unbind(std::string_view queue, std::string_view exchange,
                      std::string_view binding_key,
                      const BindingArguments& arguments) override;
  absl::Status BindExchange(std::string_view destination,
                            std::string_view source,
                            std::string_view binding_key,
                            const BindingArguments& arguments) override;
  absl::Status UnbindExchange(std::string_view destination,
                              std::string_view source,
                              std::string_view binding_key,
                              const BindingArguments& arguments) override;
  absl::StatusOr<PublishOutcome> Publish(
      std::string_view exchange, std::string_view routing_key, Message message,
      const PublishOptions& options) override;
  absl::StatusOr<std::vector<absl::StatusOr<PublishOutcome>>> PublishBatch(
      std::string_view exchange, std::vector<OutgoingMessage> messages,
      const PublishOptions& options) override;
  void PublishAsync(std::string_view exchange, std::string_view routing_key,
                    Message message, const PublishOptions& options,
                    PublishCallback done) override;
  using Broker::PublishAsync;
  absl::StatusOr<std::unique_ptr<Consumer>> Consume(
      std::string_view queue, const ConsumeOptions& options) override;
  absl::StatusOr<std::unique_ptr<Subscription>> Subscribe(
      std::string_view queue, HandlerWithConsumer handler,
      const SubscribeOptions& options) override;
  absl::StatusOr<QueueStats> GetQueueStats(
      std::string_view queue) const override;
  absl::StatusOr<ExchangeStats> GetExchangeStats(
      std::string_view exchange) const override;
  absl::StatusOr<std::vector<Message>> Browse(std::string_view queue,
                                              size_t max_messages) override;
  absl::StatusOr<uint64_t> Redrive(std::string_view dlq,
                                   const RedriveOptions& options) override;
  BrokerStats Stats() const override;
  void Close() override;

 private:
  struct RouteState;
  // Queues that gave up on messages during a call, to dead-letter once the
  // topology lock is released.
  using DeadBatch = std::pair<std::shared_ptr<Queue>, std::vector<NodePtr>>;

  // QueueOwner: republishes `nodes` to `from`'s dead-letter exchange.
  void DeadLetter(Queue& from, std::vector<NodePtr> nodes,
                  DeathReason reason) override;
  bool DeleteIdleQueue(Queue& queue) override;
  void DeleteUnusedQueue(Queue& queue) override;
  // Deletes `queue`, if it is still the queue of its name, when `unused`
  // says so under the topology lock; false when `unused` declined.
  bool EraseIfUnused(Queue& queue, absl::FunctionRef<bool()> unused);
  // Deletes `queue` (registered under its name): its bindings, its messages
  // (returns how many were ready) and, when durable, its log entry (`lsn`:
  // the record's LSN, raised by those of the exchanges this deletes in
  // turn). Auto-delete exchanges whose last binding led to it go too.
  uint64_t EraseQueueLocked(const std::shared_ptr<Queue>& queue, uint64_t& lsn)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(topo_mu_);
  // Deletes the exchanges named (those gone already are skipped) and the
  // bindings to them, and in turn the auto-delete exchanges whose last
  // binding led to one of them; returns the highest LSN of their log
  // records (0 when none is durable).
  uint64_t EraseExchangesLocked(std::vector<std::string> names)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(topo_mu_);
  // Removes every binding to `destination`; returns the names of the
  // auto-delete exchanges left with none.
  std::vector<std::string> UnbindEverywhereLocked(
      const Destination& destination) ABSL_EXCLUSIVE_LOCKS_REQUIRED(topo_mu_);
  // Routes through `exchange`, the exchanges bound to it in turn, and the
  // alternate exchange of each one whose bindings matched nothing.
  void ResolveTargetsLocked(const Exchange& exchange,
                            std::string_view routing_key,
                            const Headers& headers, RouteState& state) const
      ABSL_SHARED_LOCKS_REQUIRED(topo_mu_);
  absl::Time Now() const;
  // A publish in progress: what the locked part leaves for the unlocked one.
  struct PendingPublish {
    PublishOutcome outcome;
    std::shared_ptr<const Envelope> envelope;
    // What overflow policies gave up on, to dead-letter.
    std::vector<DeadBatch> dead;
    // Full kBlock queues, to wait for.
    std::vector<std::shared_ptr<Queue>> blocked;
    // Queues holding expired messages to dead-letter (Queue::FlushExpired).
    std::vector<std::shared_ptr<Queue>> flush;
    // Where routing sent it (valid under the topology lock).
    absl::InlinedVector<Queue*, 8> targets;
    // The log record of a persistent publish (lsn 0: none) and what its
    // confirm waits for.
    Wal::Ticket logged;
    // The last record that moved its deduplication window in a queue that
    // took it after waiting for room (LogTakenLate; 0: none). The confirm
    // waits for it as well.
    uint64_t taken_late = 0;
  };
  // How a publish's confirm waits for its log record: the publishing thread
  // in Wal::Wait, or a callback (Wal::WhenDurable).
  enum class ConfirmBy { kWait, kCallback };
  static absl::Status ValidatePublish(std::string_view exchange,
                                      std::string_view routing_key,
                                      const Message& message,
                                      const PublishOptions& options);
  absl::StatusOr<Exchange*> PublishTargetLocked(std::string_view exchange) const
      ABSL_SHARED_LOCKS_REQUIRED(topo_mu_);
  // Routes under the topology lock; a persistent message bound for durable
  // queues gets its publish op added to `record`.
  void RoutePublishLocked(Exchange& target, std::string_view routing_key,
                          Message&& message, const PublishOptions& options,
                          PendingPublish& pending, wal::RecordBuilder& record)
      ABSL_SHARED_LOCKS_REQUIRED(topo_mu_);
  // Enqueues a routed publish (its record, if any, appended already).
  void EnqueuePublishLocked(const PublishOptions& options,
                            PendingPublish& pending)
      ABSL_SHARED_LOCKS_REQUIRED(topo_mu_);
  // Routes, logs and enqueues one publish under the topology lock.
  absl::Status PublishOne(std::string_view exchange,
                          std::string_view routing_key, Message&& message,
                          const PublishOptions& options, ConfirmBy confirm,
                          PendingPublish& pending)
      ABSL_LOCKS_EXCLUDED(topo_mu_);
  // Appends `record` (if not empty) for `pending` publishes.
  void LogPublishes(wal::RecordBuilder& record, const PublishOptions& options,
                    ConfirmBy confirm, PendingPublish* pending, size_t n);
  // Logs that durable queue `queue` did not take persistent message `id`.
  void LogNotTaken(Queue& queue, const Envelope& envelope);
  // Logs where the deduplication window ends of a persistent message that
  // durable queue `queue` took after waiting for room. Returns the record's
  // LSN, or 0 when nothing was logged.
  uint64_t LogTakenLate(Queue& queue, const Envelope& envelope);
  // Adds (`bind`) or removes a binding, and logs the change when both its
  // ends are durable; an auto-delete source left with no binding is deleted.
  // Returns the highest LSN logged, or 0 when nothing was.
  uint64_t ChangeBindingLocked(Exchange& source, const Destination& dest,
                               std::string_view key,
                               const BindingArguments& arguments, bool bind)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(topo_mu_);
  // Logs a binding's addition or removal when both its ends are durable;
  // returns the record's LSN, or 0.
  uint64_t LogBindingLocked(const Exchange& source, const Destination& dest,
                            std::string_view key,
                            const BindingArguments& arguments, bool bind)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(topo_mu_);
  // Waits for a logged topology change; OK without a log.
  absl::Status AwaitLogged(uint64_t lsn);
  // The sync policy of a publish.
  SyncPolicy PolicyOf(const PublishOptions& options) const;
  // Dead-letters, waits for blocked queues, and makes the result; with no
  // lock held.
  absl::StatusOr<PublishOutcome> FinishPublish(PendingPublish& pending,
                                               const PublishOptions& options);

  // kFailedPrecondition once closed. Checked first, and again under the
  // topology lock where a call goes on to use the topology.
  absl::Status CheckOpen() const;
  absl::StatusOr<Exchange*> FindExchangeLocked(std::string_view name) const
      ABSL_SHARED_LOCKS_REQUIRED(topo_mu_);
  absl::StatusOr<std::shared_ptr<Queue>> FindQueueLocked(
      std::string_view name) const ABSL_SHARED_LOCKS_REQUIRED(topo_mu_);
  // Validates the pieces of a (queue or exchange) binding and resolves them.
  absl::StatusOr<Exchange*> BindableExchangeLocked(std::string_view name,
                                                   std::string_view role) const
      ABSL_SHARED_LOCKS_REQUIRED(topo_mu_);
  absl::Status ValidateBindingArguments(const Exchange& source,
                                        std::string_view key,
                                        const BindingArguments& args) const;
  absl::StatusOr<std::unique_ptr<Consumer>> MakeConsumer(
      std::string_view queue, uint32_t prefetch, std::string_view tag,
      std::optional<absl::Duration> ack_deadline);
  // True when some queue's dead letters reach `queue`.
  bool IsDeadLetterTargetLocked(const Queue& queue) const
      ABSL_SHARED_LOCKS_REQUIRED(topo_mu_);
  // Moves up to `max` messages out of `dlq` as `options` say, looking past
  // those that cannot move (they stay where they were), but at no more
  // messages than were ready when it began (so that none moved back into
  // `dlq` is taken again); returns how many moved.
  uint64_t RedriveSome(const std::shared_ptr<Queue>& dlq,
                       const RedriveOptions& options, uint64_t max);
  // Publishes `message` to `exchange` under the topology lock, as
  // dead-lettering and redrive do: no validation, counted in the exchange's
  // statistics as any publish is; returns how many queues took it.
  // Dead-lettering skips queues that would close a dead-letter cycle; a
  // `redrive`, a deliberate move, does not. No target's deduplication takes
  // a moved message for a duplicate (its id is recorded as seen): a second
  // death, or a redrive, is not a producer's retry. A redrive that no queue
  // takes hands back nothing to dead-letter (the message stays). Queues left
  // with expired messages to dead-letter are added to `flush`. `source`: the
  // node the message moves out of (dead-lettering, redrive); a persistent one's
  // copy is persistent too, and its move is logged as one record. Returns 0
  // with `source` as it was when no queue took it.
  size_t RepublishLocked(Exchange& exchange, std::string_view key,
                         Message&& message, bool redrive,
                         std::vector<DeadBatch>& dead,
                         std::vector<std::shared_ptr<Queue>>& flush,
                         QueuedMessage* source)
      ABSL_SHARED_LOCKS_REQUIRED(topo_mu_);

  // Constant after construction.
  Clock* const clock_;
  const std::shared_ptr<Wal> wal_;  // null: in memory
  const SyncPolicy sync_;
  const std::shared_ptr<BrokerLink> link_;

  mutable SharedMutex topo_mu_;
  // Set once, by Close, under the topology lock held exclusively. Atomic so
  // that calls can check it before taking the lock: every call after Close
  // is kFailedPrecondition, whatever else is wrong with it.
  std::atomic<bool> closed_{false};
  // "" is the default exchange.
  absl::flat_hash_map<std::string, std::unique_ptr<Exchange>, StringHash,
                      StringEq>
      exchanges_ ABSL_GUARDED_BY(topo_mu_);
  absl::flat_hash_map<std::string, std::shared_ptr<Queue>, StringHash, StringEq>
      queues_ ABSL_GUARDED_BY(topo_mu_);
  // Runs timed work (TTL, backoff, leases, delays, paced redrive); destroyed
  // at Close.
  std::unique_ptr<TimerService> timers_ ABSL_GUARDED_BY(topo_mu_);
};

}  // namespace warren::internal

#endif  // WARREN_SRC_BROKER_IMPL_H_
