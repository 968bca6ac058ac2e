#include "broker_impl.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/container/inlined_vector.h"
#include "consumer_state.h"
#include "death_history.h"
#include "headers_match.h"
#include "names.h"
#include "pool.h"
#include "status_macros.h"
#include "str_util.h"
#include "subscription_state.h"
#include "warren/dead_letter.h"

namespace warren {

absl::StatusOr<std::unique_ptr<Broker>> Broker::Open(
    const BrokerOptions& options) {
  return internal::OpenBroker(options, internal::Env::Posix());
}

Broker::~Broker() = default;

namespace internal {

absl::StatusOr<std::unique_ptr<Broker>> OpenBroker(const BrokerOptions& options,
                                                   Env* env) {
  if (options.wal_dir.empty()) {
    return std::unique_ptr<Broker>(new BrokerImpl(options, nullptr));
  }
  Wal::Options wal_options;
  wal_options.dir = options.wal_dir;
  wal_options.sync = options.sync;
  wal_options.sync_interval = options.sync_interval;
  wal_options.segment_bytes = options.wal_segment_bytes;
  wal_options.on_corruption = options.on_corruption;
  wal_options.env = env;
  wal_options.clock =
      options.clock != nullptr ? options.clock : SystemClock::Default();
  if (options.on_corruption != OnCorruption::kFail &&
      options.on_corruption != OnCorruption::kSkip) {
    return absl::InvalidArgumentError("unknown on_corruption value");
  }
  RecoveredState state;
  WARREN_ASSIGN_OR_RETURN(std::shared_ptr<Wal> wal,
                          Wal::Open(wal_options, &state));
  auto broker = std::make_unique<BrokerImpl>(options, std::move(wal));
  broker->Restore(state);
  return std::unique_ptr<Broker>(std::move(broker));
}

namespace {

constexpr uint8_t kMaxPriority = 10;
constexpr uint32_t kMaxRingCapacity = 1u << 24;
constexpr uint32_t kMaxWorkers = 1024;

std::string_view TypeName(ExchangeType type) {
  switch (type) {
    case ExchangeType::kDirect:
      return "direct";
    case ExchangeType::kFanout:
      return "fanout";
    case ExchangeType::kTopic:
      return "topic";
    case ExchangeType::kHeaders:
      return "headers";
  }
  return "unknown";
}

// Longer than any sensible TTL, lease, delay or window: beyond is a mistake.
constexpr absl::Duration kMaxDuration = absl::Hours(24 * 365 * 10);

absl::Status ValidateDuration(std::string_view what, absl::Duration d) {
  if (d < absl::ZeroDuration() || d > kMaxDuration) {
    return absl::InvalidArgumentError(
        StrCat(what, " must be between 0 and 10 years"));
  }
  return absl::OkStatus();
}

absl::Status ValidateQueueOptions(const QueueOptions& o) {
  if (o.max_priority > kMaxPriority) {
    return absl::InvalidArgumentError(StrCat("max_priority is ", o.max_priority,
                                             "; the largest supported is ",
                                             kMaxPriority));
  }
  if (o.ring_capacity > kMaxRingCapacity) {
    return absl::InvalidArgumentError(
        StrCat("ring_capacity is ", o.ring_capacity,
               "; the largest supported is ", kMaxRingCapacity));
  }
  if (o.overflow != Overflow::kRejectPublish &&
      o.overflow != Overflow::kDropHead &&
      o.overflow != Overflow::kRejectPublishDlx &&
      o.overflow != Overflow::kBlock) {
    return absl::InvalidArgumentError("unknown overflow policy");
  }
  if (o.dead_letter_exchange.has_value() && !o.dead_letter_exchange->empty()) {
    WARREN_RETURN_IF_ERROR(
        ValidateName(*o.dead_letter_exchange, "dead-letter exchange"));
  }
  if (o.retry.has_value()) {
    WARREN_RETURN_IF_ERROR(ValidateRetryPolicy(*o.retry));
  }
  for (auto [what, d] : {std::pair{"message_ttl", o.message_ttl},
                         std::pair{"ack_deadline", o.ack_deadline},
                         std::pair{"expires", o.expires}}) {
    if (d.has_value()) WARREN_RETURN_IF_ERROR(ValidateDuration(what, *d));
  }
  if (o.expires.has_value() && *o.expires == absl::ZeroDuration()) {
    // As RabbitMQ's x-expires: a queue that expires at once is a mistake.
    return absl::InvalidArgumentError("expires must be more than zero");
  }
  WARREN_RETURN_IF_ERROR(ValidateDuration("dedup_window", o.dedup_window));
  if (o.dead_letter_routing_key.has_value()) {
    WARREN_RETURN_IF_ERROR(
        ValidateKey(*o.dead_letter_routing_key, "dead-letter routing key"));
    if (!o.dead_letter_exchange.has_value()) {
      return absl::InvalidArgumentError(
          "dead_letter_routing_key needs a dead_letter_exchange");
    }
  }
  return absl::OkStatus();
}

// The log keeps durations in whole microseconds: a durable queue's options
// must survive a restart exactly, or redeclaring it would find them changed.
absl::Status CheckLoggable(std::string_view queue, const QueueOptions& o) {
  std::vector<std::pair<std::string_view, absl::Duration>> durations = {
      {"dedup_window", o.dedup_window}};
  for (auto [what, d] : {std::pair{"message_ttl", o.message_ttl},
                         std::pair{"ack_deadline", o.ack_deadline},
                         std::pair{"expires", o.expires}}) {
    if (d.has_value()) durations.emplace_back(what, *d);
  }
  if (o.retry.has_value()) {
    durations.emplace_back("retry.initial_delay", o.retry->initial_delay);
    durations.emplace_back("retry.max_delay", o.retry->max_delay);
  }
  for (const auto& [what, d] : durations) {
    if (d != absl::Microseconds(absl::ToInt64Microseconds(d))) {
      return absl::InvalidArgumentError(
          StrCat("queue '", queue, "' is durable: its ", what, " (",
                 absl::FormatDuration(d),
                 ") must be a whole number of microseconds, as the log keeps "
                 "it"));
    }
  }
  return absl::OkStatus();
}

// Adds one queue's answer to a publish's outcome; false for kFull (the
// caller waits for room).
bool Tally(PublishOutcome& outcome, Queue::EnqueueResult result,
           const std::string& queue) {
  switch (result) {
    case Queue::EnqueueResult::kAccepted:
      ++outcome.queues;
      return true;
    case Queue::EnqueueResult::kDuplicate:
      ++outcome.queues;
      ++outcome.duplicates;
      return true;
    case Queue::EnqueueResult::kRefused:
      outcome.refused_by.push_back(queue);
      return true;
    case Queue::EnqueueResult::kFull:
      return false;
    case Queue::EnqueueResult::kClosed:
      return true;
  }
  return true;
}

std::string JoinNames(const std::vector<std::string>& names) {
  std::string out;
  for (const std::string& n : names) {
    if (!out.empty()) out += ", ";
    out += n;
  }
  return out;
}

// Appends `x` to `list` unless it is there already (false then): a scan while
// the list is short, a hash set (filled on first use) once it is long.
template <typename T, size_t N>
bool AddOnce(absl::InlinedVector<T, N>& list, absl::flat_hash_set<T>& index,
             T x) {
  constexpr size_t kLinearLimit = 16;
  if (list.size() < kLinearLimit) {
    if (std::find(list.begin(), list.end(), x) != list.end()) return false;
  } else {
    if (index.empty()) index.insert(list.begin(), list.end());
    if (!index.insert(x).second) return false;
  }
  list.push_back(x);
  return true;
}

}  // namespace

// Queues a publish reaches, each once, and the exchanges it passed through.
struct BrokerImpl::RouteState {
  absl::InlinedVector<Queue*, 8> queues;
  absl::flat_hash_set<Queue*> queue_index;
  // Exchanges reached so far, each routed once; `pending`: those still to
  // route.
  absl::InlinedVector<const Exchange*, 4> visited;
  absl::flat_hash_set<const Exchange*> visited_index;
  absl::InlinedVector<const Exchange*, 4> pending;

  void AddQueue(Queue* q) { AddOnce(queues, queue_index, q); }
  // Queues `e` to be routed through, unless it was reached before (a cycle,
  // or two paths to it).
  void AddExchange(const Exchange* e) {
    if (AddOnce(visited, visited_index, e)) pending.push_back(e);
  }
};

BrokerImpl::BrokerImpl(const BrokerOptions& options, std::shared_ptr<Wal> wal)
    : clock_(options.clock != nullptr ? options.clock : SystemClock::Default()),
      wal_(std::move(wal)),
      sync_(options.sync),
      link_(std::make_shared<BrokerLink>(clock_, wal_)) {
  // Lock order: the link's locks before the topology lock.
  auto timers = std::make_unique<TimerService>(clock_);
  {
    WriterLock sink_lock(&link_->mu);
    link_->owner = this;
  }
  {
    MutexLock timers_lock(&link_->timers_mu);
    link_->timers = timers.get();
  }
  WriterLock lock(&topo_mu_);
  timers_ = std::move(timers);
  exchanges_.emplace("", std::make_unique<Exchange>("", ExchangeType::kDirect,
                                                    ExchangeOptions{}));
}

BrokerImpl::~BrokerImpl() { Close(); }

void BrokerImpl::Restore(RecoveredState& state) {
  absl::flat_hash_map<uint32_t, std::shared_ptr<Queue>> by_id;
  {
    WriterLock lock(&topo_mu_);
    for (RecoveredState::ExchangeDecl& e : state.exchanges) {
      exchanges_.insert_or_assign(
          e.name, std::make_unique<Exchange>(e.name, e.type, e.options));
    }
    for (RecoveredState::QueueDecl& q : state.queues) {
      auto queue = std::make_shared<Queue>(q.name, q.options, link_, q.id);
      queue->StartExpiry();
      by_id[q.id] = queue;
      queues_.insert_or_assign(q.name, std::move(queue));
    }
    for (const wal::BindingOp& b : state.bindings) {
      auto source = exchanges_.find(b.source);
      if (source == exchanges_.end()) continue;
      Destination dest;
      if (b.dest_queue_id != 0) {
        auto q = by_id.find(b.dest_queue_id);
        if (q == by_id.end()) continue;
        dest.queue = q->second.get();
      } else {
        auto e = exchanges_.find(b.dest_exchange);
        if (e == exchanges_.end()) continue;
        dest.exchange = e->second.get();
      }
      source->second->AddBinding(dest, b.key, b.arguments);
    }
  }
  for (const RecoveredState::DedupEntry& d : state.dedup) {
    if (auto q = by_id.find(d.queue_id); q != by_id.end()) {
      q->second->RestoreDedup(d.message_id, d.until);
    }
  }
  // A message delivered before the restart (requeued, or held when it
  // stopped) comes back as a returned message, ahead of those never
  // delivered, as in memory. So does every message published before it at
  // its priority, not delayed: a queue delivers those first, so they were
  // delivered too, though the log may not have kept it (a delivery does not
  // wait for its record). Per queue and priority level: how many messages,
  // from the first, that makes.
  absl::flat_hash_map<uint32_t, std::vector<size_t>> returned_until;
  for (size_t i = 0; i < state.messages.size(); ++i) {
    const RecoveredState::LiveMessage& m = state.messages[i];
    for (const wal::Ref& r : m.refs) {
      if (r.deliveries == 0 || r.ready_at != absl::InfinitePast()) continue;
      auto q = by_id.find(r.queue_id);
      if (q == by_id.end()) continue;
      std::vector<size_t>& until = returned_until[r.queue_id];
      const size_t level = q->second->LevelOf(m.envelope->message);
      if (until.size() <= level) until.resize(level + 1, 0);
      until[level] = i + 1;
    }
  }
  // Messages held at their last allowed delivery when the broker stopped.
  std::vector<std::pair<Queue*, NodePtr>> spent;
  for (size_t i = 0; i < state.messages.size(); ++i) {
    RecoveredState::LiveMessage& m = state.messages[i];
    for (const wal::Ref& r : m.refs) {
      auto q = by_id.find(r.queue_id);
      if (q == by_id.end()) continue;
      bool returned = false;
      if (!returned_until.empty()) {
        if (auto u = returned_until.find(r.queue_id);
            u != returned_until.end()) {
          const size_t level = q->second->LevelOf(m.envelope->message);
          returned = level < u->second.size() && i < u->second[level];
        }
      }
      if (NodePtr node = q->second->Restore(m.envelope, r.deliveries,
                                            r.ready_at, returned)) {
        spent.emplace_back(q->second.get(), std::move(node));
      }
    }
  }
  state.messages.clear();
  // Delayed publishes whose delay ended while the broker was down meet the
  // length limits, now that each queue holds the rest of its messages.
  std::vector<std::pair<Queue*, std::vector<NodePtr>>> maxlen;
  for (auto& [id, q] : by_id) {
    if (std::vector<NodePtr> out = q->FinishRestore(); !out.empty()) {
      maxlen.emplace_back(q.get(), std::move(out));
    }
  }
  for (auto& [q, nodes] : maxlen) {
    q->DeadLetter(std::move(nodes), DeathReason::kMaxLen);
  }
  for (auto& [q, node] : spent) {
    std::vector<NodePtr> nodes;
    nodes.push_back(std::move(node));
    q->DeadLetter(std::move(nodes), DeathReason::kDeliveryLimit);
  }
  // Messages whose time-to-live ran out while the broker was down, in the
  // order they expired (then by queue, then in publish order), as with the
  // broker up; each queue's run of them dead-lettered as one batch.
  struct Expired {
    absl::Time at;
    uint32_t queue_id;
    uint64_t seq;
    Queue* queue;
    NodePtr node;
  };
  std::vector<Expired> expired;
  for (auto& [id, q] : by_id) {
    for (NodePtr& node : q->TakeExpired()) {
      const absl::Time at = node->expires_at;
      const uint64_t seq = node->seq;
      expired.push_back(Expired{at, id, seq, q.get(), std::move(node)});
    }
  }
  std::sort(expired.begin(), expired.end(),
            [](const Expired& a, const Expired& b) {
              return std::tie(a.at, a.queue_id, a.seq) <
                     std::tie(b.at, b.queue_id, b.seq);
            });
  for (size_t i = 0; i < expired.size();) {
    Queue* q = expired[i].queue;
    std::vector<NodePtr> run;
    for (; i < expired.size() && expired[i].queue == q; ++i) {
      run.push_back(std::move(expired[i].node));
    }
    q->DeadLetter(std::move(run), DeathReason::kExpired);
  }
}

absl::Status BrokerImpl::AwaitLogged(uint64_t lsn) {
  if (lsn == 0) return absl::OkStatus();
  return wal_->Wait(lsn, Wal::NeedsSync(sync_));
}

SyncPolicy BrokerImpl::PolicyOf(const PublishOptions& options) const {
  return options.sync.value_or(sync_);
}

void BrokerImpl::LogNotTaken(Queue& queue, const Envelope& envelope) {
  if (queue.durable_id() == 0 || envelope.wal_id == 0) return;
  const std::string& id = envelope.message.properties().message_id;
  if (id.empty() || queue.options().dedup_window <= absl::ZeroDuration()) {
    envelope.wal->Settled(queue.durable_id(), envelope.wal_id);
    return;
  }
  // The publish's record counts its id as seen in this queue from then on;
  // the queue did not take it (a duplicate, or refused), so its window is
  // what the queue remembers, if anything.
  envelope.wal->NotTaken(queue.durable_id(), envelope.wal_id, id,
                         queue.DedupUntil(id).value_or(absl::InfinitePast()));
}

uint64_t BrokerImpl::LogTakenLate(Queue& queue, const Envelope& envelope) {
  if (queue.durable_id() == 0 || envelope.wal_id == 0) return 0;
  const std::string& id = envelope.message.properties().message_id;
  if (id.empty() || queue.options().dedup_window <= absl::ZeroDuration()) {
    return 0;
  }
  // The publish's record starts the window at the publish; the queue started
  // it when it took the message.
  if (std::optional<absl::Time> until = queue.DedupUntil(id)) {
    return envelope.wal->TakenLate(queue.durable_id(), id, *until);
  }
  return 0;
}

absl::Status BrokerImpl::CheckOpen() const {
  if (closed_.load(std::memory_order_acquire)) {
    return absl::FailedPreconditionError("the broker is closed");
  }
  return absl::OkStatus();
}

absl::StatusOr<Exchange*> BrokerImpl::FindExchangeLocked(
    std::string_view name) const {
  auto it = exchanges_.find(name);
  if (it == exchanges_.end()) {
    return absl::NotFoundError(StrCat("no exchange '", name, "'"));
  }
  return it->second.get();
}

absl::StatusOr<std::shared_ptr<Queue>> BrokerImpl::FindQueueLocked(
    std::string_view name) const {
  auto it = queues_.find(name);
  if (it == queues_.end()) {
    return absl::NotFoundError(StrCat("no queue '", name, "'"));
  }
  return it->second;
}

// --- Exchanges
// -----------------------------------------------------------------

absl::Status BrokerImpl::DeclareExchange(std::string_view name,
                                         ExchangeType type,
                                         const ExchangeOptions& options) {
  WARREN_RETURN_IF_ERROR(CheckOpen());
  if (name.empty()) {
    return absl::InvalidArgumentError(
        "the default exchange \"\" cannot be declared");
  }
  WARREN_RETURN_IF_ERROR(ValidateName(name, "exchange"));
  if (!options.alternate_exchange.empty()) {
    WARREN_RETURN_IF_ERROR(
        ValidateName(options.alternate_exchange, "alternate exchange"));
  }
  if (type != ExchangeType::kDirect && type != ExchangeType::kFanout &&
      type != ExchangeType::kTopic && type != ExchangeType::kHeaders) {
    return absl::InvalidArgumentError("unknown exchange type");
  }
  WriterLock lock(&topo_mu_);
  WARREN_RETURN_IF_ERROR(CheckOpen());
  if (auto it = exchanges_.find(name); it != exchanges_.end()) {
    const Exchange& existing = *it->second;
    if (existing.type() != type || !(existing.options() == options)) {
      return absl::FailedPreconditionError(
          StrCat("exchange '", name, "' exists as ", TypeName(existing.type()),
                 " with other options; delete it first to change it"));
    }
    return absl::OkStatus();
  }
  exchanges_.emplace(
      name, std::make_unique<Exchange>(std::string(name), type, options));
  uint64_t lsn = 0;
  if (wal_ != nullptr && options.durable) {
    wal::RecordBuilder record;
    record.Exchange(name, type, options);
    lsn = wal_->Append(record);
  }
  lock.Release();
  return AwaitLogged(lsn);
}

absl::Status BrokerImpl::DeleteExchange(std::string_view name,
                                        const DeleteExchangeOptions& options) {
  WARREN_RETURN_IF_ERROR(CheckOpen());
  if (name.empty()) {
    return absl::InvalidArgumentError(
        "the default exchange \"\" cannot be deleted");
  }
  WARREN_RETURN_IF_ERROR(ValidateName(name, "exchange"));
  WriterLock lock(&topo_mu_);
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_ASSIGN_OR_RETURN(Exchange * exchange, FindExchangeLocked(name));
  if (options.if_unused && !exchange->bindings().empty()) {
    return absl::FailedPreconditionError(StrCat("exchange '", name, "' has ",
                                                exchange->bindings().size(),
                                                " bindings"));
  }
  const uint64_t lsn = EraseExchangesLocked({exchange->name()});
  lock.Release();
  return AwaitLogged(lsn);
}

uint64_t BrokerImpl::EraseExchangesLocked(std::vector<std::string> names) {
  uint64_t lsn = 0;
  while (!names.empty()) {
    auto it = exchanges_.find(names.back());
    names.pop_back();
    if (it == exchanges_.end()) continue;  // gone already
    Exchange* exchange = it->second.get();
    for (std::string& emptied : UnbindEverywhereLocked({nullptr, exchange})) {
      names.push_back(std::move(emptied));
    }
    if (wal_ != nullptr && exchange->options().durable) {
      wal::RecordBuilder record;
      record.DeleteExchange(exchange->name());
      lsn = std::max(lsn, wal_->Append(record));
    }
    exchanges_.erase(it);
  }
  return lsn;
}

std::vector<std::string> BrokerImpl::UnbindEverywhereLocked(
    const Destination& destination) {
  std::vector<std::string> emptied;
  for (auto& [name, exchange] : exchanges_) {
    if (exchange->RemoveBindingsTo(destination) > 0 &&
        exchange->options().auto_delete && exchange->bindings().empty()) {
      emptied.push_back(name);
    }
  }
  return emptied;
}

// --- Queues
// --------------------------------------------------------------------

absl::Status BrokerImpl::DeclareQueue(std::string_view name,
                                      const QueueOptions& options) {
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_RETURN_IF_ERROR(ValidateName(name, "queue"));
  WARREN_RETURN_IF_ERROR(ValidateQueueOptions(options));
  if (options.retry.has_value() && options.dead_letter_exchange == "" &&
      options.dead_letter_routing_key == name) {
    return absl::InvalidArgumentError(StrCat(
        "queue '", name,
        "' would dead-letter into itself: a retry policy needs a dead-letter "
        "target other than the queue"));
  }
  WriterLock lock(&topo_mu_);
  WARREN_RETURN_IF_ERROR(CheckOpen());
  if (auto it = queues_.find(name); it != queues_.end()) {
    if (!(it->second->options() == options)) {
      return absl::FailedPreconditionError(
          StrCat("queue '", name,
                 "' exists with other options; delete it first to change "
                 "them"));
    }
    if (options.expires.has_value()) it->second->Touch();  // a use
    return absl::OkStatus();
  }
  uint32_t durable_id = 0;
  uint64_t lsn = 0;
  if (wal_ != nullptr && options.durable) {
    // A function set but unused still counts in RetryPolicy's ==: logged
    // without it, the queue could not be redeclared after a restart.
    if (options.retry.has_value() &&
        (options.retry->backoff == Backoff::kCustom ||
         options.retry->custom != nullptr)) {
      return absl::InvalidArgumentError(StrCat(
          "queue '", name,
          "' is durable: its retry policy cannot carry a custom backoff "
          "function, which cannot be logged (use kFixed or kExponential)"));
    }
    WARREN_RETURN_IF_ERROR(CheckLoggable(name, options));
    durable_id = wal_->NewQueueId();
    wal::RecordBuilder record;
    record.Queue(durable_id, name, options);
    lsn = wal_->Append(record);
  }
  auto queue =
      std::make_shared<Queue>(std::string(name), options, link_, durable_id);
  queue->StartExpiry();
  queues_.emplace(name, std::move(queue));
  lock.Release();
  return AwaitLogged(lsn);
}

absl::StatusOr<uint64_t> BrokerImpl::DeleteQueue(
    std::string_view name, const DeleteQueueOptions& options) {
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_RETURN_IF_ERROR(ValidateName(name, "queue"));
  WriterLock lock(&topo_mu_);
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_ASSIGN_OR_RETURN(std::shared_ptr<Queue> queue, FindQueueLocked(name));
  if (options.if_unused && queue->consumer_count() > 0) {
    return absl::FailedPreconditionError(StrCat(
        "queue '", name, "' has ", queue->consumer_count(), " consumers"));
  }
  if (options.if_empty && queue->ready() > 0) {
    return absl::FailedPreconditionError(
        StrCat("queue '", name, "' has ", queue->ready(), " ready messages"));
  }
  uint64_t lsn = 0;
  const uint64_t deleted = EraseQueueLocked(queue, lsn);
  lock.Release();
  WARREN_RETURN_IF_ERROR(AwaitLogged(lsn));
  return deleted;
}

uint64_t BrokerImpl::EraseQueueLocked(const std::shared_ptr<Queue>& queue,
                                      uint64_t& lsn) {
  std::vector<std::string> emptied =
      UnbindEverywhereLocked({queue.get(), nullptr});
  if (queue->durable_id() != 0) {
    wal::RecordBuilder record;
    record.DeleteQueue(queue->durable_id());
    lsn = std::max(lsn, wal_->Append(record));
  }
  queues_.erase(queues_.find(queue->name()));
  const uint64_t deleted = queue->End(Queue::EndReason::kDeleted);
  lsn = std::max(lsn, EraseExchangesLocked(std::move(emptied)));
  return deleted;
}

absl::StatusOr<uint64_t> BrokerImpl::PurgeQueue(std::string_view name) {
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_RETURN_IF_ERROR(ValidateName(name, "queue"));
  std::shared_ptr<Queue> queue;
  {
    ReaderLock lock(&topo_mu_);
    WARREN_RETURN_IF_ERROR(CheckOpen());
    WARREN_ASSIGN_OR_RETURN(queue, FindQueueLocked(name));
  }
  // May dead-letter expired messages: no lock held.
  const uint64_t purged = queue->Purge();
  // The purged messages' settles were appended as their nodes went; like
  // an ack, the purge returns once they are as durable as the policy.
  if (queue->durable_id() != 0 && purged != 0) {
    WARREN_RETURN_IF_ERROR(AwaitLogged(wal_->LastLsn()));
  }
  return purged;
}

// --- Bindings
// ------------------------------------------------------------------

absl::StatusOr<Exchange*> BrokerImpl::BindableExchangeLocked(
    std::string_view name, std::string_view role) const {
  if (name.empty()) {
    return absl::InvalidArgumentError(
        StrCat("the default exchange cannot be bound (as ", role,
               "): every queue is bound to it by its name"));
  }
  WARREN_RETURN_IF_ERROR(ValidateName(name, "exchange"));
  return FindExchangeLocked(name);
}

absl::Status BrokerImpl::ValidateBindingArguments(
    const Exchange& source, std::string_view key,
    const BindingArguments& args) const {
  WARREN_RETURN_IF_ERROR(ValidateKey(key, "binding key"));
  WARREN_RETURN_IF_ERROR(
      ValidateHeaderValues(args, "binding argument", /*allow_nan=*/false));
  if (source.type() == ExchangeType::kHeaders) {
    return ValidateHeadersBindingArguments(args);
  }
  return absl::OkStatus();
}

absl::Status BrokerImpl::Bind(std::string_view queue, std::string_view exchange,
                              std::string_view binding_key,
                              const BindingArguments& arguments) {
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_RETURN_IF_ERROR(ValidateName(queue, "queue"));
  WriterLock lock(&topo_mu_);
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_ASSIGN_OR_RETURN(Exchange * source,
                          BindableExchangeLocked(exchange, "source"));
  WARREN_RETURN_IF_ERROR(
      ValidateBindingArguments(*source, binding_key, arguments));
  WARREN_ASSIGN_OR_RETURN(std::shared_ptr<Queue> q, FindQueueLocked(queue));
  const uint64_t lsn = ChangeBindingLocked(*source, {q.get(), nullptr},
                                           binding_key, arguments, true);
  lock.Release();
  return AwaitLogged(lsn);
}

absl::Status BrokerImpl::Unbind(std::string_view queue,
                                std::string_view exchange,
                                std::string_view binding_key,
                                const BindingArguments& arguments) {
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_RETURN_IF_ERROR(ValidateName(queue, "queue"));
  WriterLock lock(&topo_mu_);
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_ASSIGN_OR_RETURN(Exchange * source,
                          BindableExchangeLocked(exchange, "source"));
  WARREN_RETURN_IF_ERROR(ValidateKey(binding_key, "binding key"));
  WARREN_ASSIGN_OR_RETURN(std::shared_ptr<Queue> q, FindQueueLocked(queue));
  const uint64_t lsn = ChangeBindingLocked(*source, {q.get(), nullptr},
                                           binding_key, arguments, false);
  lock.Release();
  return AwaitLogged(lsn);
}

absl::Status BrokerImpl::BindExchange(std::string_view destination,
                                      std::string_view source,
                                      std::string_view binding_key,
                                      const BindingArguments& arguments) {
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WriterLock lock(&topo_mu_);
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_ASSIGN_OR_RETURN(Exchange * dest,
                          BindableExchangeLocked(destination, "destination"));
  WARREN_ASSIGN_OR_RETURN(Exchange * src,
                          BindableExchangeLocked(source, "source"));
  WARREN_RETURN_IF_ERROR(
      ValidateBindingArguments(*src, binding_key, arguments));
  const uint64_t lsn =
      ChangeBindingLocked(*src, {nullptr, dest}, binding_key, arguments, true);
  lock.Release();
  return AwaitLogged(lsn);
}

absl::Status BrokerImpl::UnbindExchange(std::string_view destination,
                                        std::string_view source,
                                        std::string_view binding_key,
                                        const BindingArguments& arguments) {
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WriterLock lock(&topo_mu_);
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_ASSIGN_OR_RETURN(Exchange * dest,
                          BindableExchangeLocked(destination, "destination"));
  WARREN_ASSIGN_OR_RETURN(Exchange * src,
                          BindableExchangeLocked(source, "source"));
  WARREN_RETURN_IF_ERROR(ValidateKey(binding_key, "binding key"));
  const uint64_t lsn =
      ChangeBindingLocked(*src, {nullptr, dest}, binding_key, arguments, false);
  lock.Release();
  return AwaitLogged(lsn);
}

uint64_t BrokerImpl::ChangeBindingLocked(Exchange& source,
                                         const Destination& dest,
                                         std::string_view key,
                                         const BindingArguments& arguments,
                                         bool bind) {
  // An unbind logs the arguments as they were bound, so that the log removes
  // the binding it holds.
  std::optional<BindingArguments> unbound;
  bool changed = false;
  if (bind) {
    changed = source.AddBinding(dest, key, arguments);
  } else {
    unbound = source.RemoveBinding(dest, key, arguments);
    changed = unbound.has_value();
  }
  // A no-op is not logged.
  uint64_t lsn = changed ? LogBindingLocked(source, dest, key,
                                            bind ? arguments : *unbound, bind)
                         : 0;
  // An auto-delete exchange goes with its last binding.
  if (unbound.has_value() && source.options().auto_delete &&
      source.bindings().empty()) {
    lsn = std::max(lsn, EraseExchangesLocked({source.name()}));
  }
  return lsn;
}

uint64_t BrokerImpl::LogBindingLocked(const Exchange& source,
                                      const Destination& dest,
                                      std::string_view key,
                                      const BindingArguments& arguments,
                                      bool bind) {
  // A binding is durable when both its ends are.
  if (wal_ == nullptr || !source.options().durable) return 0;
  wal::BindingOp b;
  if (dest.queue != nullptr) {
    if (dest.queue->durable_id() == 0) return 0;
    b.dest_queue_id = dest.queue->durable_id();
  } else {
    if (!dest.exchange->options().durable) return 0;
    b.dest_exchange = dest.exchange->name();
  }
  b.source = source.name();
  b.key = std::string(key);
  b.arguments = arguments;
  wal::RecordBuilder record;
  record.Bind(b, bind);
  return wal_->Append(record);
}

// --- Publishing
// ----------------------------------------------------------------

void BrokerImpl::ResolveTargetsLocked(const Exchange& exchange,
                                      std::string_view routing_key,
                                      const Headers& headers,
                                      RouteState& state) const {
  // As RabbitMQ's rabbit_exchange:route1: a work list of exchanges, each
  // routed once however many paths reach it. An exchange whose own bindings
  // match nothing (no queue and no exchange) passes the message to its
  // alternate exchange, wherever it stands on the path.
  state.AddExchange(&exchange);
  while (!state.pending.empty()) {
    const Exchange& x = *state.pending.back();
    state.pending.pop_back();
    if (x.name().empty()) {
      if (auto it = queues_.find(routing_key); it != queues_.end()) {
        state.AddQueue(it->second.get());
      }
      continue;
    }
    bool matched = false;
    x.Route(routing_key, headers, [&](const Destination& d) {
      topo_mu_.AssertReaderHeld();  // called synchronously, under our lock
      matched = true;
      if (d.queue != nullptr) {
        state.AddQueue(d.queue);
      } else {
        state.AddExchange(d.exchange);
      }
    });
    if (!matched && !x.options().alternate_exchange.empty()) {
      if (auto it = exchanges_.find(x.options().alternate_exchange);
          it != exchanges_.end()) {
        state.AddExchange(it->second.get());
      }
    }
  }
}

absl::Time BrokerImpl::Now() const { return clock_->Now(); }

absl::Status BrokerImpl::ValidatePublish(std::string_view exchange,
                                         std::string_view routing_key,
                                         const Message& message,
                                         const PublishOptions& options) {
  if (!exchange.empty()) {
    WARREN_RETURN_IF_ERROR(ValidateName(exchange, "exchange"));
  }
  WARREN_RETURN_IF_ERROR(ValidateKey(routing_key, "routing key"));
  WARREN_RETURN_IF_ERROR(ValidateDuration("delay", options.delay));
  if (options.sync.has_value() && !Wal::KnownPolicy(*options.sync)) {
    return absl::InvalidArgumentError("unknown sync policy in PublishOptions");
  }
  if (const auto& e = message.properties().expiration; e.has_value()) {
    WARREN_RETURN_IF_ERROR(ValidateDuration("expiration", *e));
  }
  if (const auto& t = message.properties().timestamp; t.has_value()) {
    // As the log keeps it: microseconds since the epoch in 64 bits.
    if (*t < absl::FromUnixMicros(std::numeric_limits<int64_t>::min()) ||
        *t >= absl::FromUnixMicros(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(
          "message timestamp must be a finite time within about 292,000 "
          "years of 1970");
    }
  }
  if (const Headers& h = message.properties().headers; !h.empty()) {
    WARREN_RETURN_IF_ERROR(
        ValidateHeaderValues(h, "message header", /*allow_nan=*/true));
  }
  return absl::OkStatus();
}

absl::StatusOr<Exchange*> BrokerImpl::PublishTargetLocked(
    std::string_view exchange) const {
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_ASSIGN_OR_RETURN(Exchange * target, FindExchangeLocked(exchange));
  if (target->options().internal) {
    return absl::InvalidArgumentError(
        StrCat("exchange '", exchange,
               "' is internal: it takes messages only from other exchanges"));
  }
  return target;
}

absl::StatusOr<PublishOutcome> BrokerImpl::Publish(
    std::string_view exchange, std::string_view routing_key, Message message,
    const PublishOptions& options) {
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_RETURN_IF_ERROR(
      ValidatePublish(exchange, routing_key, message, options));
  PendingPublish pending;
  WARREN_RETURN_IF_ERROR(PublishOne(exchange, routing_key, std::move(message),
                                    options, ConfirmBy::kWait, pending));
  // The confirm: the record is as durable as the policy promises. A publish
  // about to wait for room in a full queue waits for it first: it counts as
  // a sync waiter since its append, and others rely on such a waiter to lead
  // the next write soon.
  const bool logged_first = pending.logged.lsn != 0 && !pending.blocked.empty();
  absl::Status logged;
  if (logged_first) logged = wal_->Wait(pending.logged);
  absl::StatusOr<PublishOutcome> outcome = FinishPublish(pending, options);
  if (pending.logged.lsn != 0 && !logged_first) {
    logged = wal_->Wait(pending.logged);
  }
  if (logged.ok() && pending.taken_late != 0) {
    logged = wal_->Wait(pending.taken_late, pending.logged.sync);
  }
  WARREN_RETURN_IF_ERROR(logged);
  return outcome;
}

absl::Status BrokerImpl::PublishOne(
    std::string_view exchange, std::string_view routing_key, Message&& message,
    const PublishOptions& options, ConfirmBy confirm, PendingPublish& pending) {
  ReaderLock lock(&topo_mu_);
  WARREN_ASSIGN_OR_RETURN(Exchange * target, PublishTargetLocked(exchange));
  thread_local wal::RecordBuilder record;
  RoutePublishLocked(*target, routing_key, std::move(message), options, pending,
                     record);
  LogPublishes(record, options, confirm, &pending, 1);
  EnqueuePublishLocked(options, pending);
  return absl::OkStatus();
}

void BrokerImpl::PublishAsync(std::string_view exchange,
                              std::string_view routing_key, Message message,
                              const PublishOptions& options,
                              PublishCallback done) {
  if (!done) done = [](absl::StatusOr<PublishOutcome>) {};  // fire and forget
  absl::Status valid = CheckOpen();
  if (valid.ok()) {
    valid = ValidatePublish(exchange, routing_key, message, options);
  }
  if (!valid.ok()) {
    std::move(done)(std::move(valid));
    return;
  }
  PendingPublish pending;
  if (absl::Status s = PublishOne(exchange, routing_key, std::move(message),
                                  options, ConfirmBy::kCallback, pending);
      !s.ok()) {
    std::move(done)(std::move(s));
    return;
  }
  absl::StatusOr<PublishOutcome> outcome = FinishPublish(pending, options);
  if (pending.logged.lsn == 0) {
    std::move(done)(std::move(outcome));
    return;
  }
  // The outcome waits for the log in a pooled block, so the callback the log
  // keeps is one pointer, stored inline: a confirm allocates nothing once
  // the pool is warm, and the thread that runs it hands the block back to
  // the pool instead of to another thread's heap.
  struct Confirm {
    absl::StatusOr<PublishOutcome> outcome;
    PublishCallback done;
  };
  wal_->WhenDurable(
      std::max(pending.logged.lsn, pending.taken_late), pending.logged.sync,
      [confirm = MakePooled<Confirm>(Confirm{
           std::move(outcome), std::move(done)})](absl::Status s) mutable {
        if (s.ok()) {
          std::move(confirm->done)(std::move(confirm->outcome));
        } else {
          std::move(confirm->done)(std::move(s));
        }
      });
}

absl::StatusOr<std::vector<absl::StatusOr<PublishOutcome>>>
BrokerImpl::PublishBatch(std::string_view exchange,
                         std::vector<OutgoingMessage> messages,
                         const PublishOptions& options) {
  WARREN_RETURN_IF_ERROR(CheckOpen());
  if (!exchange.empty()) {
    // Checked for every message below too; this is for an empty batch.
    WARREN_RETURN_IF_ERROR(ValidateName(exchange, "exchange"));
  }
  for (const OutgoingMessage& m : messages) {
    WARREN_RETURN_IF_ERROR(
        ValidatePublish(exchange, m.routing_key, m.message, options));
  }
  std::vector<PendingPublish> pending(messages.size());
  {
    ReaderLock lock(&topo_mu_);
    WARREN_ASSIGN_OR_RETURN(Exchange * target, PublishTargetLocked(exchange));
    // Every persistent message of the batch goes into one record, logged
    // before any of them is enqueued: all or nothing after a crash.
    thread_local wal::RecordBuilder record;
    for (size_t i = 0; i < messages.size(); ++i) {
      RoutePublishLocked(*target, messages[i].routing_key,
                         std::move(messages[i].message), options, pending[i],
                         record);
    }
    LogPublishes(record, options, ConfirmBy::kWait, pending.data(),
                 pending.size());
    for (PendingPublish& p : pending) EnqueuePublishLocked(options, p);
  }
  std::vector<absl::StatusOr<PublishOutcome>> outcomes;
  outcomes.reserve(pending.size());
  // The batch's persistent messages share one record, and so one ticket,
  // waited for before any wait for room in a full queue (see Publish).
  std::optional<Wal::Ticket> ticket;
  uint64_t taken_late = 0;
  bool blocks = false;
  for (const PendingPublish& p : pending) {
    if (p.logged.lsn != 0) ticket = p.logged;
    blocks = blocks || !p.blocked.empty();
  }
  absl::Status logged;
  if (ticket.has_value() && blocks) logged = wal_->Wait(*ticket);
  for (PendingPublish& p : pending) {
    outcomes.push_back(FinishPublish(p, options));
    taken_late = std::max(taken_late, p.taken_late);
  }
  if (ticket.has_value() && !blocks) logged = wal_->Wait(*ticket);
  if (logged.ok() && ticket.has_value() && taken_late != 0) {
    logged = wal_->Wait(taken_late, ticket->sync);
  }
  if (!logged.ok()) {
    for (size_t i = 0; i < pending.size(); ++i) {
      if (pending[i].logged.lsn != 0 && outcomes[i].ok()) outcomes[i] = logged;
    }
  }
  return outcomes;
}

absl::StatusOr<PublishOutcome> BrokerImpl::FinishPublish(
    PendingPublish& p, const PublishOptions& options) {
  for (auto& [q, nodes] : p.dead) {
    q->DeadLetter(std::move(nodes), DeathReason::kMaxLen);
  }
  for (const std::shared_ptr<Queue>& q : p.flush) q->FlushExpired();
  PublishOutcome& outcome = p.outcome;
  if (!p.blocked.empty()) {
    // Full queues with overflow kBlock: wait for room with no broker lock.
    const absl::Time deadline = options.timeout == absl::InfiniteDuration()
                                    ? absl::InfiniteFuture()
                                    : absl::Now() + options.timeout;
    // Why a queue that ended while the publish waited ended (the broker
    // closed, or the queue was deleted).
    absl::Status ended;
    bool timed_out = false;
    for (const std::shared_ptr<Queue>& q : p.blocked) {
      // A blocking enqueue ends accepted, duplicate, refused or closed.
      const auto result = q->EnqueueBlocking(p.envelope, deadline);
      if (result == Queue::EnqueueResult::kAccepted) {
        p.taken_late = std::max(p.taken_late, LogTakenLate(*q, *p.envelope));
      } else {
        LogNotTaken(*q, *p.envelope);
      }
      if (result == Queue::EnqueueResult::kRefused) timed_out = true;
      if (result == Queue::EnqueueResult::kClosed && ended.ok()) {
        ended = q->CheckUsable();
      }
      Tally(outcome, result, q->name());
    }
    if (outcome.queues == 0) {
      if (!timed_out && !ended.ok()) return ended;
      return absl::DeadlineExceededError(StrCat("no room in ",
                                                JoinNames(outcome.refused_by),
                                                " before the publish timeout"));
    }
  }
  if (outcome.queues == 0 && !outcome.refused_by.empty()) {
    return absl::ResourceExhaustedError(
        StrCat("every queue the message routed to is full: ",
               JoinNames(outcome.refused_by)));
  }
  return std::move(outcome);
}

void BrokerImpl::RoutePublishLocked(Exchange& target,
                                    std::string_view routing_key,
                                    Message&& message,
                                    const PublishOptions& options,
                                    PendingPublish& p,
                                    wal::RecordBuilder& record) {
  RouteState state;
  ResolveTargetsLocked(target, routing_key, std::as_const(message).headers(),
                       state);

  target.CountPublished();
  PublishOutcome& outcome = p.outcome;
  if (state.queues.empty()) {
    target.CountUnroutable();
    if (options.mandatory) {
      target.CountReturned();
      outcome.returned = std::move(message);
    }
    return;
  }
  target.CountRouted();
  p.targets = std::move(state.queues);

  const absl::Time now = Now();
  uint64_t wal_id = 0;
  if (wal_ != nullptr && options.persistent) {
    thread_local std::vector<wal::Ref> refs;
    refs.clear();
    const absl::Time ready_at = options.delay > absl::ZeroDuration()
                                    ? now + options.delay
                                    : absl::InfinitePast();
    for (Queue* q : p.targets) {
      if (q->durable_id() != 0) refs.push_back({q->durable_id(), 0, ready_at});
    }
    if (!refs.empty()) {
      wal_id = wal_->NewMessageId();
      record.Publish(wal_id, target.name(), routing_key, now, message, refs);
    }
  }
  p.envelope = MakeEnvelope(std::move(message), std::string(target.name()),
                            std::string(routing_key), now, options.persistent,
                            wal_id, wal_id != 0 ? wal_ : nullptr);
}

void BrokerImpl::LogPublishes(wal::RecordBuilder& record,
                              const PublishOptions& options, ConfirmBy confirm,
                              PendingPublish* pending, size_t n) {
  if (record.empty()) return;
  const SyncPolicy policy = PolicyOf(options);
  const bool own_sync = policy == SyncPolicy::kEveryPublish;
  const bool sync = Wal::NeedsSync(policy);
  Wal::Ticket logged;
  if (confirm == ConfirmBy::kWait) {
    // The caller goes on to Wait, once, with this ticket.
    logged = wal_->AppendForWait(record, own_sync, sync);
  } else {
    logged.lsn = wal_->Append(record, own_sync, /*will_wait=*/true);
    logged.sync = sync;
  }
  for (size_t i = 0; i < n; ++i) {
    if (pending[i].envelope != nullptr && pending[i].envelope->wal_id != 0) {
      pending[i].logged = logged;
    }
  }
}

void BrokerImpl::EnqueuePublishLocked(const PublishOptions& options,
                                      PendingPublish& p) {
  PublishOutcome& outcome = p.outcome;
  std::vector<NodePtr> maxlen_dead;
  for (Queue* q : p.targets) {
    const auto result = q->Enqueue(p.envelope, options.delay, &maxlen_dead);
    if (!Tally(outcome, result, q->name())) {
      p.blocked.push_back(q->shared_from_this());
    } else if (result != Queue::EnqueueResult::kAccepted) {
      LogNotTaken(*q, *p.envelope);
    }
    if (q->expired_pending()) p.flush.push_back(q->shared_from_this());
    if (!maxlen_dead.empty()) {
      p.dead.emplace_back(q->shared_from_this(), std::move(maxlen_dead));
      maxlen_dead.clear();
    }
  }
  p.targets.clear();
}

bool BrokerImpl::DeleteIdleQueue(Queue& queue) {
  return EraseIfUnused(queue, [&] { return queue.IdleLongEnough(); });
}

void BrokerImpl::DeleteUnusedQueue(Queue& queue) {
  EraseIfUnused(queue, [&] { return queue.consumer_count() == 0; });
}

bool BrokerImpl::EraseIfUnused(Queue& queue, absl::FunctionRef<bool()> unused) {
  WriterLock lock(&topo_mu_);
  if (closed_) return true;
  auto it = queues_.find(queue.name());
  if (it == queues_.end() || it->second.get() != &queue) return true;
  // Consumers are added, and redeclares touch, under the topology lock:
  // checked again here, the answer holds.
  if (!unused()) return false;
  // Nobody waits for the log: the background thread writes the records.
  uint64_t lsn = 0;
  EraseQueueLocked(std::shared_ptr<Queue>(it->second), lsn);
  return true;
}

size_t BrokerImpl::RepublishLocked(Exchange& exchange, std::string_view key,
                                   Message&& message, bool redrive,
                                   std::vector<DeadBatch>& dead,
                                   std::vector<std::shared_ptr<Queue>>& flush,
                                   QueuedMessage* source) {
  RouteState state;
  ResolveTargetsLocked(exchange, key, std::as_const(message).headers(), state);
  // Dead-lettering drops the targets that would close a cycle.
  if (!redrive)
    state.queues.erase(
        std::remove_if(
            state.queues.begin(), state.queues.end(),
            [&](Queue* q) { return IsDeadLetterCycle(message, q->name()); }),
        state.queues.end());
  // A publish to the exchange like any other in its statistics: routed when
  // it reaches a queue.
  exchange.CountPublished();
  if (state.queues.empty()) {
    exchange.CountUnroutable();
  } else {
    exchange.CountRouted();
  }
  if (state.queues.empty()) return 0;
  const absl::Time now = Now();
  // A persistent message stays persistent: its copy is logged with its
  // durable targets, and its leaving the source, in one record.
  uint64_t wal_id = 0;
  const uint32_t source_queue = source != nullptr ? source->wal_queue : 0;
  const bool persistent = source != nullptr && source->envelope->persistent;
  if (wal_ != nullptr && persistent) {
    thread_local std::vector<wal::Ref> refs;
    refs.clear();
    for (Queue* q : state.queues) {
      if (q->durable_id() != 0) {
        refs.push_back({q->durable_id(), 0, absl::InfinitePast()});
      }
    }
    thread_local wal::RecordBuilder record;
    if (!refs.empty()) {
      wal_id = wal_->NewMessageId();
      record.Publish(wal_id, exchange.name(), key, now, message, refs);
    }
    if (source_queue != 0) {
      const uint64_t id = source->envelope->wal_id;
      record.Settle(source_queue, &id, 1);
      source->wal_queue = 0;
    }
    if (!record.empty()) wal_->Append(record);
  }
  auto envelope = MakeEnvelope(std::move(message), std::string(exchange.name()),
                               std::string(key), now, persistent, wal_id,
                               wal_id != 0 ? wal_ : nullptr);
  size_t accepted = 0;
  std::vector<NodePtr> maxlen_dead;
  const size_t dead_before = dead.size();
  for (Queue* q : state.queues) {
    const auto result = q->Enqueue(envelope, absl::ZeroDuration(), &maxlen_dead,
                                   /*check_duplicate=*/false);
    if (q->expired_pending()) flush.push_back(q->shared_from_this());
    // Dead-lettering and redrive never wait for room in a kBlock queue.
    if (result == Queue::EnqueueResult::kFull) q->CountRefused();
    if (result != Queue::EnqueueResult::kAccepted) {
      LogNotTaken(*q, *envelope);
    }
    accepted += result == Queue::EnqueueResult::kAccepted ||
                result == Queue::EnqueueResult::kDuplicate;
    if (!maxlen_dead.empty()) {
      dead.emplace_back(q->shared_from_this(), std::move(maxlen_dead));
      maxlen_dead.clear();
    }
  }
  if (accepted == 0 && redrive) {
    // The message stays in the dead-letter queue. A target that refused it
    // under kRejectPublishDlx handed back a copy to dead-letter: there must
    // be no second one (the target counts the refusal).
    dead.erase(dead.begin() + static_cast<std::ptrdiff_t>(dead_before),
               dead.end());
  }
  if (accepted == 0 && source_queue != 0 && source->wal_queue == 0) {
    // Nothing took it, and its settle is logged: log it again as it is, so
    // the caller can keep it (redrive puts it back).
    const Envelope& env = *source->envelope;
    thread_local wal::RecordBuilder record;
    record.Publish(env.wal_id, env.exchange, env.routing_key, env.published_at,
                   env.message,
                   {{source_queue, source->deliveries, absl::InfinitePast()}});
    wal_->Append(record);
    source->wal_queue = source_queue;
  }
  return accepted;
}

void BrokerImpl::DeadLetter(Queue& from, std::vector<NodePtr> nodes,
                            DeathReason reason) {
  struct Work {
    std::shared_ptr<Queue> from;
    std::vector<NodePtr> nodes;
    DeathReason reason;
  };
  std::vector<Work> work;
  work.push_back({from.shared_from_this(), std::move(nodes), reason});
  const absl::Time now = Now();
  while (!work.empty()) {
    Work w = std::move(work.back());
    work.pop_back();
    const QueueOptions& o = w.from->options();
    std::vector<DeadBatch> dead;
    std::vector<std::shared_ptr<Queue>> flush;
    {
      ReaderLock lock(&topo_mu_);
      if (closed_) return;
      Exchange* dlx = nullptr;
      if (auto it = exchanges_.find(o.dead_letter_exchange.value_or(""));
          o.dead_letter_exchange.has_value() && it != exchanges_.end()) {
        dlx = it->second.get();
      }
      for (NodePtr& node : w.nodes) {
        if (dlx == nullptr) {
          w.from->CountDropped(1);
          continue;
        }
        const Envelope& env = *node->envelope;
        Message m = env.message;  // a dead-lettered message is a new message
        RecordDeath(m, w.from->name(), w.reason, env.exchange, env.routing_key,
                    now);
        const std::string key =
            o.dead_letter_routing_key.value_or(env.routing_key);
        const size_t dead_before = dead.size();
        if (RepublishLocked(*dlx, key, std::move(m), /*redrive=*/false, dead,
                            flush, node.get()) == 0 &&
            dead.size() == dead_before) {
          w.from->CountDropped(1);
          continue;
        }
        // Taken, or refused by a full kRejectPublishDlx queue that handed
        // back its copy to dead-letter in turn: it lives on either way.
        w.from->CountDeadLettered(1);
      }
    }
    for (auto& [q, batch] : dead) {
      work.push_back({std::move(q), std::move(batch), DeathReason::kMaxLen});
    }
    // We run under the link's lock: expired messages join the work here
    // rather than through Queue::FlushExpired.
    for (std::shared_ptr<Queue>& q : flush) {
      std::vector<NodePtr> expired = q->TakeExpired();
      if (!expired.empty()) {
        work.push_back(
            {std::move(q), std::move(expired), DeathReason::kExpired});
      }
    }
  }
}

// --- Consuming
// -----------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Consumer>> BrokerImpl::MakeConsumer(
    std::string_view queue, uint32_t prefetch, std::string_view tag,
    std::optional<absl::Duration> ack_deadline) {
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_RETURN_IF_ERROR(ValidateName(queue, "queue"));
  WARREN_RETURN_IF_ERROR(ValidateKey(tag, "consumer tag"));
  if (ack_deadline.has_value()) {
    WARREN_RETURN_IF_ERROR(ValidateDuration("ack_deadline", *ack_deadline));
  }
  ReaderLock lock(&topo_mu_);
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_ASSIGN_OR_RETURN(std::shared_ptr<Queue> q, FindQueueLocked(queue));
  // Unique in the process, not only in this broker: a delivery of another
  // broker's consumer is never taken for one of this consumer's.
  static std::atomic<uint64_t> next_consumer_id{1};
  const uint64_t id = next_consumer_id.fetch_add(1, std::memory_order_relaxed);
  std::string name = tag.empty() ? StrCat("ctag-", id) : std::string(tag);
  if (!ack_deadline.has_value()) ack_deadline = q->options().ack_deadline;
  auto state = std::make_shared<ConsumerState>(
      id, std::move(name), std::move(q), prefetch, ack_deadline);
  state->queue()->AddConsumer(state.get());
  return std::unique_ptr<Consumer>(new Consumer(std::move(state)));
}

absl::StatusOr<std::unique_ptr<Consumer>> BrokerImpl::Consume(
    std::string_view queue, const ConsumeOptions& options) {
  return MakeConsumer(queue, options.prefetch, options.tag,
                      options.ack_deadline);
}

absl::StatusOr<std::unique_ptr<Subscription>> BrokerImpl::Subscribe(
    std::string_view queue, HandlerWithConsumer handler,
    const SubscribeOptions& options) {
  WARREN_RETURN_IF_ERROR(CheckOpen());
  if (!handler) return absl::InvalidArgumentError("the handler is empty");
  if (options.workers == 0 || options.workers > kMaxWorkers) {
    return absl::InvalidArgumentError(StrCat(
        "workers is ", options.workers, "; it must be 1 to ", kMaxWorkers));
  }
  const uint32_t prefetch =
      options.prefetch == 0 ? options.workers : options.prefetch;
  WARREN_ASSIGN_OR_RETURN(
      std::unique_ptr<Consumer> consumer,
      MakeConsumer(queue, prefetch, options.tag, options.ack_deadline));
  auto state = std::make_unique<SubscriptionState>(
      std::move(consumer), std::move(handler), options.workers);
  return std::unique_ptr<Subscription>(new Subscription(std::move(state)));
}

// --- Dead-letter queue tools
// ----------------------------------------------------

absl::StatusOr<std::vector<Message>> BrokerImpl::Browse(std::string_view queue,
                                                        size_t max_messages) {
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_RETURN_IF_ERROR(ValidateName(queue, "queue"));
  std::shared_ptr<Queue> q;
  {
    ReaderLock lock(&topo_mu_);
    WARREN_RETURN_IF_ERROR(CheckOpen());
    WARREN_ASSIGN_OR_RETURN(q, FindQueueLocked(queue));
  }
  return q->Browse(max_messages);
}

bool BrokerImpl::IsDeadLetterTargetLocked(const Queue& target) const {
  // The exchanges some queue dead-letters to, and those they lead to in turn
  // through exchange-to-exchange bindings and alternate exchanges, whatever
  // the keys: `target` receives dead letters when one of them is bound to it.
  absl::flat_hash_set<const Exchange*> seen;
  std::vector<const Exchange*> pending;
  auto reach = [&](const Exchange* x) {
    if (seen.insert(x).second) pending.push_back(x);
  };
  for (const auto& [name, q] : queues_) {
    const QueueOptions& o = q->options();
    if (!o.dead_letter_exchange.has_value()) continue;
    if (o.dead_letter_exchange->empty()) {
      // The default exchange: to the queue the dead-letter routing key
      // names, or else the one each message's own routing key names, which
      // may be any queue.
      if (!o.dead_letter_routing_key.has_value() ||
          *o.dead_letter_routing_key == target.name()) {
        return true;
      }
      continue;
    }
    if (auto dlx = exchanges_.find(*o.dead_letter_exchange);
        dlx != exchanges_.end()) {
      reach(dlx->second.get());
    }
  }
  while (!pending.empty()) {
    const Exchange* x = pending.back();
    pending.pop_back();
    for (const Binding& b : x->bindings()) {
      if (b.destination.queue == &target) return true;
      if (b.destination.exchange != nullptr) reach(b.destination.exchange);
    }
    if (const std::string& ae = x->options().alternate_exchange; !ae.empty()) {
      if (auto it = exchanges_.find(ae); it != exchanges_.end()) {
        reach(it->second.get());
      }
    }
  }
  return false;
}

uint64_t BrokerImpl::RedriveSome(const std::shared_ptr<Queue>& dlq,
                                 const RedriveOptions& options, uint64_t max) {
  std::vector<NodePtr> stay;
  std::vector<DeadBatch> dead;
  std::vector<std::shared_ptr<Queue>> flush;
  uint64_t moved = 0;
  // Messages that cannot move do not count against `max`: it takes the
  // next ones until `max` moved.
  uint64_t to_look_at = dlq->ready();
  while (moved < max && to_look_at > 0 && !closed_) {
    std::vector<NodePtr> nodes =
        dlq->TakeForMove(std::min(max - moved, to_look_at));
    if (nodes.empty()) break;
    to_look_at -= nodes.size();
    ReaderLock lock(&topo_mu_);
    for (NodePtr& node : nodes) {
      const Message& m = node->envelope->message;
      const std::vector<DeathRecord> history = DeathHistory(m);
      Exchange* exchange = nullptr;
      std::string key;
      if (!options.to_exchange.empty()) {
        if (auto it = exchanges_.find(options.to_exchange);
            it != exchanges_.end()) {
          exchange = it->second.get();
        }
        key = options.routing_key.value_or(
            !history.empty() && !history[0].routing_keys.empty()
                ? history[0].routing_keys[0]
                : node->envelope->routing_key);
      } else {
        const std::string target =
            !options.to_queue.empty()
                ? options.to_queue
                : (history.empty() ? "" : history[0].queue);
        if (queues_.contains(target)) {
          exchange = exchanges_.find("")->second.get();
          key = target;
        }
      }
      if (exchange == nullptr || closed_) {
        stay.push_back(std::move(node));
        continue;
      }
      // The message keeps its death history; neither the cycle rule nor a
      // target's deduplication applies to a deliberate move.
      if (RepublishLocked(*exchange, key, Message(m), /*redrive=*/true, dead,
                          flush, node.get()) == 0) {
        stay.push_back(std::move(node));
        continue;
      }
      ++moved;
    }
  }
  // Those that could not move go back where they were.
  dlq->PutBack(std::move(stay));
  for (auto& [q, batch] : dead) {
    q->DeadLetter(std::move(batch), DeathReason::kMaxLen);
  }
  for (const std::shared_ptr<Queue>& q : flush) q->FlushExpired();
  return moved;
}

absl::StatusOr<uint64_t> BrokerImpl::Redrive(std::string_view dlq,
                                             const RedriveOptions& options) {
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_RETURN_IF_ERROR(ValidateName(dlq, "queue"));
  if (!options.to_queue.empty() && !options.to_exchange.empty()) {
    return absl::InvalidArgumentError(
        "redrive to a queue or to an exchange, not both");
  }
  if (!(options.messages_per_second >= 0) ||
      options.messages_per_second > 1e9) {
    return absl::InvalidArgumentError(
        "messages_per_second must be between 0 and 1e9");
  }
  if (options.routing_key.has_value()) {
    // A queue target is reached through the default exchange by its name.
    if (options.to_exchange.empty()) {
      return absl::InvalidArgumentError(
          "a redrive routing key needs a target exchange (to_exchange)");
    }
    WARREN_RETURN_IF_ERROR(ValidateKey(*options.routing_key, "routing key"));
  }
  std::shared_ptr<Queue> q;
  {
    ReaderLock lock(&topo_mu_);
    WARREN_RETURN_IF_ERROR(CheckOpen());
    WARREN_ASSIGN_OR_RETURN(q, FindQueueLocked(dlq));
    if (!options.to_queue.empty()) {
      WARREN_RETURN_IF_ERROR(ValidateName(options.to_queue, "queue"));
      WARREN_RETURN_IF_ERROR(FindQueueLocked(options.to_queue).status());
    }
    if (!options.to_exchange.empty()) {
      WARREN_RETURN_IF_ERROR(ValidateName(options.to_exchange, "exchange"));
      WARREN_RETURN_IF_ERROR(FindExchangeLocked(options.to_exchange).status());
    }
    if (!IsDeadLetterTargetLocked(*q)) {
      return absl::FailedPreconditionError(StrCat(
          "queue '", dlq,
          "' receives no queue's dead letters; name the target of a move "
          "with Browse and Publish instead"));
    }
  }
  const uint64_t max =
      options.max_messages == 0 ? ~uint64_t{0} : options.max_messages;
  if (options.messages_per_second == 0) return RedriveSome(q, options, max);

  // Paced: one message per tick on the broker's clock, until `max` moved, as
  // many as were ready at the start moved, or nothing left can move. A tick
  // looks past messages whose target is gone (they stay where they were, as
  // with an immediate redrive), so they neither stop the job early nor keep
  // it running.
  // Tick k is due k intervals after the first, however late the ones
  // before it ran: a tick that runs late does not push back the rest, so
  // the rate holds on average (a clock advanced by hand runs every tick
  // that fell due).
  struct Job {
    BrokerImpl* broker;
    std::shared_ptr<Queue> dlq;
    RedriveOptions options;
    uint64_t remaining;
    absl::Duration interval;
    absl::Time due;
  };
  auto job = std::make_shared<Job>(
      Job{this, q, options, std::min<uint64_t>(max, q->ready()),
          absl::Seconds(1.0 / options.messages_per_second), Now()});
  if (job->remaining == 0) return uint64_t{0};
  struct Tick {
    static void Run(std::shared_ptr<Job> job) {
      BrokerImpl* b = job->broker;
      if (b->RedriveSome(job->dlq, job->options, 1) == 0) {
        return;  // nothing left that can move
      }
      if (--job->remaining == 0) return;
      job->due += job->interval;
      MutexLock lock(&b->link_->timers_mu);
      if (b->link_->timers == nullptr) return;
      b->link_->timers->Schedule(job->due, [job] { Run(job); });
    }
  };
  MutexLock lock(&link_->timers_mu);
  if (link_->timers == nullptr) {
    return absl::FailedPreconditionError("the broker is closed");
  }
  link_->timers->Schedule(job->due, [job] { Tick::Run(job); });
  return uint64_t{0};
}

// --- Statistics
// ----------------------------------------------------------------

absl::StatusOr<QueueStats> BrokerImpl::GetQueueStats(
    std::string_view queue) const {
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_RETURN_IF_ERROR(ValidateName(queue, "queue"));
  ReaderLock lock(&topo_mu_);
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_ASSIGN_OR_RETURN(std::shared_ptr<Queue> q, FindQueueLocked(queue));
  return q->Stats();
}

absl::StatusOr<ExchangeStats> BrokerImpl::GetExchangeStats(
    std::string_view exchange) const {
  WARREN_RETURN_IF_ERROR(CheckOpen());
  if (!exchange.empty()) {
    WARREN_RETURN_IF_ERROR(ValidateName(exchange, "exchange"));
  }
  ReaderLock lock(&topo_mu_);
  WARREN_RETURN_IF_ERROR(CheckOpen());
  WARREN_ASSIGN_OR_RETURN(Exchange * e, FindExchangeLocked(exchange));
  return e->Stats();
}

BrokerStats BrokerImpl::Stats() const {
  BrokerStats stats;
  {
    ReaderLock lock(&topo_mu_);
    for (const auto& [name, q] : queues_) stats.queues.push_back(q->Stats());
    for (const auto& [name, e] : exchanges_) {
      stats.exchanges.push_back(e->Stats());
    }
  }
  auto by_name = [](const auto& a, const auto& b) { return a.name < b.name; };
  std::sort(stats.queues.begin(), stats.queues.end(), by_name);
  std::sort(stats.exchanges.begin(), stats.exchanges.end(), by_name);
  if (wal_ != nullptr) stats.wal = wal_->Stats();
  return stats;
}

// --- Lifetime
// ------------------------------------------------------------------

void BrokerImpl::Close() {
  // What the queues release from here on stays in the log.
  if (wal_ != nullptr) wal_->StopSettling();
  {
    // Waits for dead-lettering in progress; queues that outlive the broker
    // drop what they give up on from now on, and schedule nothing.
    WriterLock lock(&link_->mu);
    link_->owner = nullptr;
  }
  link_->closed.store(true, std::memory_order_release);
  {
    MutexLock lock(&link_->timers_mu);
    link_->timers = nullptr;
  }
  std::unique_ptr<TimerService> timers;
  {
    WriterLock lock(&topo_mu_);
    if (closed_.load(std::memory_order_relaxed)) return;
    closed_.store(true, std::memory_order_release);
    for (auto& [name, q] : queues_) q->End(Queue::EndReason::kBrokerClosed);
    queues_.clear();
    exchanges_.clear();
    timers = std::move(timers_);
  }
  // Outside every lock: a timer callback in progress may need them. Pending
  // timers (delayed messages among them) are dropped.
  timers.reset();
  // Writes and syncs what is pending and releases the directory.
  if (wal_ != nullptr) (void)wal_->Close();
}

}  // namespace internal
}  // namespace warren
