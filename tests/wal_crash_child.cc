// The child process of wal_crash_test.cc: a broker with a write-ahead log,
// busy publishing and acking until its parent kills it with SIGKILL.
//
//   warren_wal_crash_child dir=D oracle=F sync=never|interval|group|every
//                          segment=BYTES cycle=N seed=S topology=0|1
//                          [failure=1] [hold=1]
//
// It opens a durable broker on D, declares (or, with topology=1, expects to
// find) the durable exchange `crash.x`, the durable queue `crash` bound to it
// with key `k`, and declares the transient queue `scratch` (which recovery
// must forget). Then publisher threads, each with its own id and sequence
// numbers, publish persistent messages with confirms (Publish, PublishAsync
// with a callback or a future, PublishBatch) to `crash`, through the default
// exchange or `crash.x`, while consumer threads receive and ack, hold, nack
// with requeue and ack with `multiple` at random.
//
// With failure=1, `crash` also has a retry policy (4 attempts, backoff of a
// few milliseconds) and dead-letters to the durable queue `crash.dlq`
// through the default exchange. Some single publishes are delayed by a few
// milliseconds; consumers nack now and then, with requeue (a retry, or a
// dead-lettering once out of attempts) or without (dead-lettered at once);
// and a third consumer acks what reaches `crash.dlq`, checking that each
// message there died in `crash`.
//
// The oracle F (O_APPEND; one write(2) per event, which SIGKILL cannot take
// back) gets one line per event, each written only once the event is certain:
//
//   T            the topology is declared
//   C <p> <s>    publisher p's message s is confirmed (the publish returned OK)
//   D <p> <s>    the message was delivered (Receive returned it)
//   I <p> <s>    an ack of the message is about to be sent (ack intent)
//   A <p> <s>    the message is acked (Ack returned OK)
//   L <p> <s>    the delivery of the message is in the log: a later Ack by
//                the same consumer thread returned OK (the log is written in
//                order, so the delivery, logged before Receive returned, is
//                at least as durable as that ack)
//   W <p> <s>    the message is about to be published with a delay
//                (failure=1)
//   R <p> <s>    a nack of the message is about to be sent (failure=1)
//
// The `crash.dlq` consumer writes only I and A lines: an ack in either
// queue settles a message for good.
//
// Once every publisher has had a publish confirmed and every consumer an ack
// returned (so that the parent's random timer starts in the steady state,
// however slow a sanitizer makes the start), it writes "ready\n" on stdout. It
// stops when stdin reaches end of file (the parent went away) or after a
// minute. With hold=1 it only opens the broker, says "ready", and closes the
// broker cleanly at end of file on stdin (the directory-lock test).
//
// Message bodies: "p<pub> s<seq> b<first>/<n> <padding>", where b names the
// batch (first sequence number and size; b<seq>/1 for a single publish) and
// the padding is a function of (pub, seq), so that a damaged body is seen.
// Any unexpected status ends the child with exit code 3 and a line on
// stderr (6 when Open finds the directory locked); the parent treats every
// end but SIGKILL as a failure, unless it expects the lock.

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "wal_crash_body.h"
#include "warren/warren.h"

namespace warren {
namespace {

using crash::MakeBody;
using crash::ParseBody;

constexpr int kPublishers = 3;
constexpr int kConsumers = 2;
constexpr uint32_t kPrefetch = 64;
// Publishers pause while this many messages are ready: the queue stays small
// enough for the parent to check quickly after every kill.
constexpr uint64_t kMaxReady = 1500;
constexpr const char* kQueue = "crash";
constexpr const char* kExchange = "crash.x";
constexpr const char* kDeadLetterQueue = "crash.dlq";

// Exit code when Open fails with kFailedPrecondition (another broker holds
// the directory).
constexpr int kExitLocked = 6;

int g_oracle = -1;

[[noreturn]] void Die(std::string_view what, const absl::Status& status) {
  std::string line =
      "wal_crash_child: " + std::string(what) + ": " + status.ToString() + "\n";
  (void)!write(STDERR_FILENO, line.data(), line.size());
  _exit(3);
}

[[noreturn]] void Die(std::string_view what) {
  Die(what, absl::InternalError("check failed"));
}

void WriteAll(int fd, std::string_view s) {
  while (!s.empty()) {
    const ssize_t n = write(fd, s.data(), s.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      Die("write", absl::InternalError(std::strerror(errno)));
    }
    s.remove_prefix(static_cast<size_t>(n));
  }
}

void AppendEvent(std::string& out, char kind, uint32_t pub, uint32_t seq) {
  out += kind;
  out += ' ';
  out += std::to_string(pub);
  out += ' ';
  out += std::to_string(seq);
  out += '\n';
}

// One write(2) for every line of `lines`.
void Record(const std::string& lines) { WriteAll(g_oracle, lines); }

void Record(char kind, uint32_t pub, uint32_t seq) {
  std::string line;
  AppendEvent(line, kind, pub, seq);
  Record(line);
}

std::optional<SyncPolicy> ParsePolicy(std::string_view s) {
  if (s == "never") return SyncPolicy::kNever;
  if (s == "interval") return SyncPolicy::kInterval;
  if (s == "group") return SyncPolicy::kGroupCommit;
  if (s == "every") return SyncPolicy::kEveryPublish;
  return std::nullopt;
}

struct Args {
  std::string dir;
  std::string oracle;
  SyncPolicy sync = SyncPolicy::kGroupCommit;
  uint64_t segment = uint64_t{64} << 10;
  uint32_t cycle = 0;
  uint64_t seed = 1;
  bool topology = false;
  bool failure = false;
  bool hold = false;
};

Args ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    const size_t eq = arg.find('=');
    if (eq == std::string_view::npos) Die("bad argument " + std::string(arg));
    const std::string_view key = arg.substr(0, eq);
    const std::string value(arg.substr(eq + 1));
    if (key == "dir") {
      a.dir = value;
    } else if (key == "oracle") {
      a.oracle = value;
    } else if (key == "sync") {
      auto p = ParsePolicy(value);
      if (!p) Die("bad sync " + value);
      a.sync = *p;
    } else if (key == "segment") {
      a.segment = std::strtoull(value.c_str(), nullptr, 10);
    } else if (key == "cycle") {
      a.cycle = static_cast<uint32_t>(std::strtoul(value.c_str(), nullptr, 10));
    } else if (key == "seed") {
      a.seed = std::strtoull(value.c_str(), nullptr, 10);
    } else if (key == "topology") {
      a.topology = value == "1";
    } else if (key == "failure") {
      a.failure = value == "1";
    } else if (key == "hold") {
      a.hold = value == "1";
    } else {
      Die("unknown argument " + std::string(arg));
    }
  }
  if (a.dir.empty()) Die("dir= is required");
  return a;
}

// Counts down once per worker thread, when the thread has done its first
// piece of work.
class Latch {
 public:
  explicit Latch(int n) : n_(n) {}
  void CountDown() {
    std::lock_guard<std::mutex> lock(mu_);
    if (--n_ == 0) cv_.notify_all();
  }
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return n_ <= 0; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_;
};

// Bounds the number of a publisher's unconfirmed asynchronous publishes.
class InFlight {
 public:
  void Add() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return n_ < kMax; });
    ++n_;
  }
  void Done() {
    std::lock_guard<std::mutex> lock(mu_);
    --n_;
    cv_.notify_all();
  }

 private:
  static constexpr int kMax = 64;
  std::mutex mu_;
  std::condition_variable cv_;
  int n_ = 0;
};

// Through crash.x a message reaches `crash` and `scratch`; through the
// default exchange, `crash` only.
void CheckOutcome(const absl::StatusOr<PublishOutcome>& r, const char* what,
                  size_t queues) {
  if (!r.ok()) Die(what, r.status());
  if (r->queues != queues)
    Die(std::string(what) + ": routed to " + std::to_string(r->queues) +
        " queues");
}

void Publisher(Broker& broker, uint32_t pub, uint64_t seed, bool failure,
               Latch& started) {
  std::mt19937_64 rng(seed);
  auto chance = [&](double p) {
    return std::uniform_real_distribution<double>(0, 1)(rng) < p;
  };
  auto body_size = [&]() -> size_t {
    const int r = static_cast<int>(rng() % 1000);
    if (r < 900) return rng() % 200;
    if (r < 995) return 200 + rng() % 4000;
    return 33'000 + rng() % 70'000;  // several log blocks; may span segments
  };
  InFlight in_flight;
  struct Pending {
    uint32_t seq;
    size_t queues;
    std::future<absl::StatusOr<PublishOutcome>> outcome;
  };
  std::deque<Pending> futures;
  uint32_t seq = 0;
  for (;;) {
    auto stats = broker.GetQueueStats(kQueue);
    if (!stats.ok()) Die("stats", stats.status());
    if (stats->ready > kMaxReady) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));  // throttle
      continue;
    }
    PublishOptions options{.persistent = true};
    if (chance(0.1)) {
      options.sync = static_cast<SyncPolicy>(rng() % 4);
    }
    const bool via_exchange = chance(0.5);
    const std::string_view exchange = via_exchange ? kExchange : "";
    const std::string_view key = via_exchange ? "k" : kQueue;
    const size_t queues = via_exchange ? 2 : 1;
    // The first publish is a synchronous one: once it returns, this
    // publisher is running.
    const int kind = seq == 0 ? 0 : static_cast<int>(rng() % 100);
    // Single publishes (not batches) are sometimes delayed.
    if (failure && seq > 0 && kind < 85 && chance(0.1)) {
      options.delay = absl::Milliseconds(1 + rng() % 5);
      Record('W', pub, seq + 1);
    }
    if (kind < 55) {
      const uint32_t s = ++seq;
      auto r = broker.Publish(
          exchange, key, Message(MakeBody(pub, s, s, 1, body_size())), options);
      CheckOutcome(r, "Publish", queues);
      Record('C', pub, s);
      if (s == 1) started.CountDown();
    } else if (kind < 75) {
      const uint32_t s = ++seq;
      in_flight.Add();
      broker.PublishAsync(
          exchange, key, Message(MakeBody(pub, s, s, 1, body_size())), options,
          [pub, s, queues,
           &in_flight](absl::StatusOr<PublishOutcome> r) mutable {
            CheckOutcome(r, "PublishAsync (callback)", queues);
            Record('C', pub, s);
            in_flight.Done();
          });
    } else if (kind < 85) {
      const uint32_t s = ++seq;
      futures.push_back(
          {s, queues,
           broker.PublishAsync(exchange, key,
                               Message(MakeBody(pub, s, s, 1, body_size())),
                               options)});
      while (futures.size() > 8 || (!futures.empty() && chance(0.2))) {
        Pending& p = futures.front();
        CheckOutcome(p.outcome.get(), "PublishAsync (future)", p.queues);
        Record('C', pub, p.seq);
        futures.pop_front();
      }
    } else {
      const uint32_t n = 2 + static_cast<uint32_t>(rng() % 5);
      const uint32_t first = seq + 1;
      std::vector<OutgoingMessage> batch;
      for (uint32_t i = 0; i < n; ++i) {
        batch.push_back(
            {std::string(key),
             Message(MakeBody(pub, first + i, first, n, body_size()))});
      }
      seq += n;
      auto r = broker.PublishBatch(exchange, std::move(batch), options);
      if (!r.ok()) Die("PublishBatch", r.status());
      if (r->size() != n) Die("PublishBatch: outcome count");
      std::string lines;
      for (uint32_t i = 0; i < n; ++i) {
        CheckOutcome((*r)[i], "PublishBatch", queues);
        AppendEvent(lines, 'C', pub, first + i);
      }
      Record(lines);
    }
  }
}

struct Held {
  Delivery delivery;
  uint32_t pub;
  uint32_t seq;
};

uint64_t Key(uint32_t pub, uint32_t seq) { return (uint64_t{pub} << 32) | seq; }

void ConsumerLoop(Broker& broker, uint64_t seed, bool failure, Latch& started) {
  std::mt19937_64 rng(seed);
  auto chance = [&](double p) {
    return std::uniform_real_distribution<double>(0, 1)(rng) < p;
  };
  auto consumer = broker.Consume(kQueue, {.prefetch = kPrefetch});
  if (!consumer.ok()) Die("Consume", consumer.status());
  Consumer& c = **consumer;
  std::vector<Held> held;  // in delivery order
  std::unordered_set<uint64_t> acked;
  bool running = false;  // an ack returned
  // Received since the last successful Ack (their L lines are due).
  std::vector<std::pair<uint32_t, uint32_t>> uncovered;

  // Acks held[i] (with `multiple`: it and every earlier delivery held).
  auto ack = [&](size_t i, bool multiple) {
    const size_t from = multiple ? 0 : i;
    std::string intents;
    std::string acks;
    for (size_t j = from; j <= i; ++j) {
      AppendEvent(intents, 'I', held[j].pub, held[j].seq);
      AppendEvent(acks, 'A', held[j].pub, held[j].seq);
    }
    Record(intents);
    if (auto s = c.Ack(held[i].delivery, {.multiple = multiple}); !s.ok()) {
      Die("Ack", s);
    }
    for (const auto& [pub, seq] : uncovered) AppendEvent(acks, 'L', pub, seq);
    uncovered.clear();
    Record(acks);
    if (!running) {
      running = true;
      started.CountDown();
    }
    for (size_t j = from; j <= i; ++j) {
      acked.insert(Key(held[j].pub, held[j].seq));
    }
    held.erase(held.begin() + static_cast<ptrdiff_t>(from),
               held.begin() + static_cast<ptrdiff_t>(i) + 1);
  };

  for (;;) {
    std::vector<Delivery> got;
    if (chance(0.3)) {
      auto b = c.ReceiveBatch(1 + rng() % 8, absl::Milliseconds(10));
      if (b.ok())
        got = *std::move(b);
      else if (!absl::IsDeadlineExceeded(b.status()) &&
               !absl::IsResourceExhausted(b.status())) {
        Die("ReceiveBatch", b.status());
      }
    } else {
      auto d = c.Receive(absl::Milliseconds(10));
      if (d.ok())
        got.push_back(*std::move(d));
      else if (!absl::IsDeadlineExceeded(d.status()) &&
               !absl::IsResourceExhausted(d.status())) {
        Die("Receive", d.status());
      }
    }
    for (Delivery& d : got) {
      auto parsed = ParseBody(d.body());
      if (!parsed.ok()) Die("received body", parsed.status());
      if (acked.contains(Key(parsed->pub, parsed->seq))) {
        Die("an acked message was delivered again");
      }
      Record('D', parsed->pub, parsed->seq);
      uncovered.emplace_back(parsed->pub, parsed->seq);
      held.push_back({std::move(d), parsed->pub, parsed->seq});
    }
    // Settle: ack most at once, keep some, now and then nack one with
    // requeue or ack a run of them with `multiple`.
    while (!held.empty()) {
      const size_t i = rng() % held.size();
      const int r = static_cast<int>(rng() % 100);
      if (held.size() < kPrefetch / 2 && r < 25) break;  // keep them for now
      if (r < 80) {
        ack(i, false);
      } else if (r < 90) {
        ack(i, true);
      } else {
        // With failure=1, a nack with requeue is a retry after a backoff
        // (or a dead-lettering, out of attempts); one without dead-letters.
        const bool requeue = !failure || chance(0.5);
        if (failure) Record('R', held[i].pub, held[i].seq);
        if (auto s = c.Nack(held[i].delivery, {.requeue = requeue}); !s.ok()) {
          Die("Nack", s);
        }
        held.erase(held.begin() + static_cast<ptrdiff_t>(i));
      }
      if (chance(0.5)) break;
    }
  }
}

// Receives from `crash.dlq` and acks everything, holding some of it a while,
// checking that each message died in `crash` and that no acked message comes
// back.
void DeadLetterLoop(Broker& broker, uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto consumer = broker.Consume(kDeadLetterQueue, {.prefetch = kPrefetch});
  if (!consumer.ok()) Die("Consume crash.dlq", consumer.status());
  Consumer& c = **consumer;
  std::unordered_set<uint64_t> acked;
  std::vector<std::pair<uint32_t, uint32_t>> held;
  Delivery last;  // the latest of `held`
  for (;;) {
    auto got = c.ReceiveBatch(kPrefetch, absl::Milliseconds(10));
    if (got.ok()) {
      for (Delivery& d : *got) {
        auto parsed = ParseBody(d.body());
        if (!parsed.ok()) Die("dead-lettered body", parsed.status());
        const std::optional<DeathSite> death = FirstDeath(d.message());
        if (!death.has_value() || death->queue != kQueue) {
          Die("a message in crash.dlq did not die in crash");
        }
        if (acked.contains(Key(parsed->pub, parsed->seq))) {
          Die("an acked dead letter was delivered again");
        }
        held.emplace_back(parsed->pub, parsed->seq);
        last = std::move(d);
      }
    } else if (!absl::IsDeadlineExceeded(got.status()) &&
               !absl::IsResourceExhausted(got.status())) {
      Die("ReceiveBatch crash.dlq", got.status());
    }
    if (held.empty() || rng() % 2 == 0) continue;  // hold them a while
    std::string intents;
    std::string acks;
    for (const auto& [pub, seq] : held) {
      AppendEvent(intents, 'I', pub, seq);
      AppendEvent(acks, 'A', pub, seq);
      acked.insert(Key(pub, seq));
    }
    Record(intents);
    if (auto s = c.Ack(last, {.multiple = true}); !s.ok()) {
      Die("Ack crash.dlq", s);
    }
    Record(acks);
    held.clear();
  }
}

// Returns once stdin reaches end of file.
void WaitForEof() {
  char buf[64];
  for (;;) {
    const ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    if (n == 0) return;
    if (n < 0 && errno != EINTR) return;
  }
}

int Main(int argc, char** argv) {
  const Args args = ParseArgs(argc, argv);
  auto broker = Broker::Open({.wal_dir = args.dir,
                              .sync = args.sync,
                              .sync_interval = absl::Milliseconds(5),
                              .wal_segment_bytes = args.segment});
  if (!broker.ok()) {
    // The directory lock: the parent expects this exit code (and no noise).
    if (absl::IsFailedPrecondition(broker.status())) _exit(kExitLocked);
    Die("Open", broker.status());
  }
  Broker& b = **broker;

  if (args.hold) {
    WriteAll(STDOUT_FILENO, "ready\n");
    WaitForEof();
    b.Close();
    return 0;
  }

  g_oracle = open(args.oracle.c_str(),
                  O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (g_oracle < 0) Die("open oracle", absl::InternalError(args.oracle));

  if (args.topology) {
    // Declared by an earlier child: recovery must have brought them back,
    // and the binding too (every publish through crash.x checks that it
    // reached the queue).
    if (auto s = b.GetExchangeStats(kExchange); !s.ok()) {
      Die("durable exchange after recovery", s.status());
    }
    if (auto s = b.GetQueueStats(kQueue); !s.ok()) {
      Die("durable queue after recovery", s.status());
    }
    if (args.failure) {
      if (auto s = b.GetQueueStats(kDeadLetterQueue); !s.ok()) {
        Die("durable dead-letter queue after recovery", s.status());
      }
    }
  } else {
    if (auto s = b.DeclareExchange(kExchange, ExchangeType::kDirect,
                                   {.durable = true});
        !s.ok()) {
      Die("DeclareExchange", s);
    }
    QueueOptions options{.durable = true};
    if (args.failure) {
      if (auto s = b.DeclareQueue(kDeadLetterQueue, {.durable = true});
          !s.ok()) {
        Die("DeclareQueue crash.dlq", s);
      }
      options.dead_letter_exchange = "";
      options.dead_letter_routing_key = kDeadLetterQueue;
      options.retry = RetryPolicy{.max_attempts = 4,
                                  .initial_delay = absl::Milliseconds(1),
                                  .max_delay = absl::Milliseconds(8),
                                  .jitter = Jitter::kFull};
    }
    if (auto s = b.DeclareQueue(kQueue, options); !s.ok()) {
      Die("DeclareQueue", s);
    }
    if (auto s = b.Bind(kQueue, kExchange, "k"); !s.ok()) Die("Bind", s);
    Record("T\n");
  }
  if (auto s = b.GetQueueStats("scratch"); s.ok()) {
    Die("the transient queue survived a restart");
  }
  if (auto s = b.DeclareQueue("scratch"); !s.ok()) Die("DeclareQueue", s);
  if (auto s = b.Bind("scratch", kExchange, "k"); !s.ok()) Die("Bind", s);

  Latch started(kPublishers + kConsumers);
  std::vector<std::thread> threads;
  for (int t = 0; t < kPublishers; ++t) {
    const uint32_t pub = args.cycle * 8 + static_cast<uint32_t>(t) + 1;
    threads.emplace_back(Publisher, std::ref(b), pub, args.seed * 31 + t,
                         args.failure, std::ref(started));
  }
  for (int t = 0; t < kConsumers; ++t) {
    threads.emplace_back(ConsumerLoop, std::ref(b), args.seed * 37 + t,
                         args.failure, std::ref(started));
  }
  if (args.failure) {
    threads.emplace_back(DeadLetterLoop, std::ref(b), args.seed * 41);
  }
  started.Wait();
  WriteAll(STDOUT_FILENO, "ready\n");

  // The parent kills us; should it go away instead, stop.
  std::thread watchdog([] {
    WaitForEof();
    _exit(4);
  });
  std::this_thread::sleep_for(std::chrono::seconds(60));
  std::fputs("wal_crash_child: not killed within a minute\n", stderr);
  _exit(5);
}

}  // namespace
}  // namespace warren

int main(int argc, char** argv) { return warren::Main(argc, argv); }
