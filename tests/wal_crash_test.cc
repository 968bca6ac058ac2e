// Crash tests of the write-ahead log: a child process (wal_crash_child.cc)
// publishes with confirms and acks at random on a durable queue until this
// process kills it with SIGKILL at a random moment; then this process opens
// the broker on the same directory and checks what recovery brought back
// against the child's oracle file (see wal_crash_child.cc for its lines):
//
//   * Open succeeds: a torn tail is the end of the log, not kDataLoss;
//   * the durable exchange, queue and binding are back, the transient queue
//     is not;
//   * every confirmed message is in the queue, or an ack of it was sent;
//   * no acked message is in the queue, and no message that had left the
//     queue comes back;
//   * a message whose delivery is surely in the log (the child's consumer
//     acked something after receiving it; or this process received it at an
//     earlier check) is flagged redelivered, its attempt counted;
//   * each publisher's messages are in the queue in publish order;
//   * a batch is all there or all gone (but for acked messages);
//   * bodies are intact, and no message is there twice.
//
// The failure-handling variant (failure=1 in the child) adds a retry policy
// and a dead-letter queue, delayed publishes and nacks with and without
// requeue; the checks then take the two queues together (a message lives in
// exactly one of them, and a dead-lettering is never undone), and each
// publisher's order is checked among the messages never delayed or nacked.
// The checking broker runs on a manual clock an hour ahead, so that every
// delay and backoff is over when it opens.
//
// Cycles go on in the same directory, so the log accumulates restarts,
// segment switches (small segments in some cycles) and compaction. The fast
// variants run in the unit suite; the [stress] ones (200 cycles, and 100 of
// the failure-handling variant) in CI
// under the sanitizers. WARREN_WAL_CRASH_SEED=<n> repeats a run's random
// choices (not its timing); WARREN_WAL_CRASH_VERBOSE=1 prints each cycle.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "wal_crash_body.h"
#include "warren/warren.h"

extern char** environ;

namespace warren {
namespace {

using crash::ParseBody;

constexpr const char* kQueue = "crash";
constexpr const char* kExchange = "crash.x";
constexpr const char* kDeadLetterQueue = "crash.dlq";
constexpr int kExitLocked = 6;  // as in wal_crash_child.cc

std::string ChildPath() {
  if (const char* p = std::getenv("WARREN_WAL_CRASH_CHILD")) return p;
  return WARREN_WAL_CRASH_CHILD;
}

uint64_t Key(uint32_t pub, uint32_t seq) { return (uint64_t{pub} << 32) | seq; }

std::string KeyString(uint64_t key) {
  return "p" + std::to_string(key >> 32) + " s" +
         std::to_string(key & 0xffffffffu);
}

const char* PolicyArg(SyncPolicy p) {
  switch (p) {
    case SyncPolicy::kNever:
      return "never";
    case SyncPolicy::kInterval:
      return "interval";
    case SyncPolicy::kGroupCommit:
      return "group";
    case SyncPolicy::kEveryPublish:
      return "every";
  }
  return "?";
}

// A fresh directory under $TMPDIR (default /var/tmp, on disk on most
// systems, unlike a tmpfs /tmp), removed with everything in it.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl =
        std::string(base != nullptr && *base != '\0' ? base : "/var/tmp") +
        "/warren-wal-crash-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
      FAIL("mkdtemp " << tmpl << ": " << std::strerror(errno));
    }
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string operator/(std::string_view name) const {
    return path_ + "/" + std::string(name);
  }

 private:
  std::string path_;
};

struct DirUsage {
  uint64_t bytes = 0;
  uint64_t files = 0;
};

DirUsage Usage(const std::string& dir) {
  DirUsage u;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (!e.is_regular_file(ec)) continue;
    u.bytes += e.file_size(ec);
    ++u.files;
  }
  return u;
}

// A running wal_crash_child: its stdin is a pipe this process holds open
// (end of file tells it to stop), its stdout a pipe it says "ready" on.
class Child {
 public:
  explicit Child(const std::vector<std::string>& args) {
    int in[2];
    int out[2];
    REQUIRE(pipe2(in, O_CLOEXEC) == 0);
    REQUIRE(pipe2(out, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    const std::string path = ChildPath();
    std::vector<std::string> argv_strings = {path};
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_strings) argv.push_back(a.data());
    argv.push_back(nullptr);
    const int rc = posix_spawn(&pid_, path.c_str(), &actions, nullptr,
                               argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    close(in[0]);
    close(out[1]);
    stdin_ = in[1];
    stdout_ = out[0];
    if (rc != 0) {
      pid_ = -1;
      FAIL("posix_spawn " << path << ": " << std::strerror(rc));
    }
  }
  ~Child() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      (void)Wait();
    }
    CloseStdin();
    if (stdout_ >= 0) close(stdout_);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  // The child's next line on stdout ("ready"), or what it wrote of one
  // before it ended.
  std::string ReadLine() {
    std::string line;
    for (;;) {
      pollfd p{.fd = stdout_, .events = POLLIN, .revents = 0};
      const int n = poll(&p, 1, 120'000);
      if (n == 0) return "<no line from the child in 120 s>";
      if (n < 0) {
        if (errno == EINTR) continue;
        return "<poll failed>";
      }
      char c;
      const ssize_t r = read(stdout_, &c, 1);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0 || c == '\n') return line;
      line += c;
    }
  }

  void Kill() { kill(pid_, SIGKILL); }
  void CloseStdin() {
    if (stdin_ >= 0) close(stdin_);
    stdin_ = -1;
  }

  // Waits for the child to end and returns its wait status.
  int Wait() {
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    return status;
  }

 private:
  pid_t pid_ = -1;
  int stdin_ = -1;
  int stdout_ = -1;
};

std::string DescribeStatus(int status) {
  if (WIFEXITED(status)) return "exited " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return "killed by signal " + std::to_string(WTERMSIG(status));
  }
  return "status " + std::to_string(status);
}

// What the children have written to the oracle file so far. Every line is a
// lower bound: it was written after the event it records.
class Oracle {
 public:
  explicit Oracle(std::string path) : path_(std::move(path)) {}

  const std::string& path() const { return path_; }
  bool topology() const { return topology_; }

  // Reads what the last child (now dead) appended. A line torn by the kill
  // is cut off the file, so that the next child starts on a fresh line.
  void Refresh() {
    const int fd = open(path_.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) return;  // no child got as far as opening it
    std::string data;
    char buf[1 << 16];
    for (off_t at = offset_;;) {
      const ssize_t n = pread(fd, buf, sizeof buf, at);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      data.append(buf, static_cast<size_t>(n));
      at += n;
    }
    const size_t end = data.rfind('\n');
    const size_t complete = end == std::string::npos ? 0 : end + 1;
    if (complete < data.size()) {
      REQUIRE(ftruncate(fd, offset_ + static_cast<off_t>(complete)) == 0);
    }
    close(fd);
    offset_ += static_cast<off_t>(complete);
    std::string_view rest(data.data(), complete);
    while (!rest.empty()) {
      const size_t nl = rest.find('\n');
      Parse(rest.substr(0, nl));
      rest.remove_prefix(nl + 1);
    }
  }

  bool Delivered(uint64_t k) const { return delivered_.contains(k); }
  bool DeliveryLogged(uint64_t k) const { return logged_delivery_.contains(k); }
  bool AckSent(uint64_t k) const { return ack_sent_.contains(k); }
  // Published with a delay, or nacked: its place in publish order is gone.
  bool Reordered(uint64_t k) const { return reordered_.contains(k); }
  bool Nacked(uint64_t k) const { return nacked_.contains(k); }
  bool Acked(uint64_t k) const { return acked_.contains(k); }
  const absl::flat_hash_set<uint64_t>& confirmed() const { return confirmed_; }
  const absl::flat_hash_set<uint64_t>& acked() const { return acked_; }
  // Confirmed messages no ack was sent for: each must be in the queue.
  const absl::flat_hash_set<uint64_t>& unsettled() const { return unsettled_; }
  size_t lines() const { return lines_; }

 private:
  void Parse(std::string_view line) {
    ++lines_;
    if (line == "T") {
      topology_ = true;
      return;
    }
    const size_t sp = line.find(' ', 2);
    uint32_t pub = 0;
    uint32_t seq = 0;
    if (line.size() < 5 || line[1] != ' ' || sp == std::string_view::npos ||
        !crash::ParseU32(line.substr(2, sp - 2), &pub) ||
        !crash::ParseU32(line.substr(sp + 1), &seq)) {
      FAIL("bad oracle line: " << line);
    }
    const uint64_t k = Key(pub, seq);
    switch (line[0]) {
      case 'C':
        confirmed_.insert(k);
        if (!ack_sent_.contains(k)) unsettled_.insert(k);
        break;
      case 'D':
        delivered_.insert(k);
        break;
      case 'L':
        logged_delivery_.insert(k);
        break;
      case 'I':
        ack_sent_.insert(k);
        unsettled_.erase(k);
        break;
      case 'A':
        acked_.insert(k);
        break;
      case 'W':
        reordered_.insert(k);
        break;
      case 'R':
        reordered_.insert(k);
        nacked_.insert(k);
        break;
      default:
        FAIL("bad oracle line: " << line);
    }
  }

  std::string path_;
  off_t offset_ = 0;
  size_t lines_ = 0;
  bool topology_ = false;
  absl::flat_hash_set<uint64_t> confirmed_;
  absl::flat_hash_set<uint64_t> delivered_;
  absl::flat_hash_set<uint64_t> logged_delivery_;
  absl::flat_hash_set<uint64_t> ack_sent_;
  absl::flat_hash_set<uint64_t> acked_;
  absl::flat_hash_set<uint64_t> reordered_;
  absl::flat_hash_set<uint64_t> nacked_;
  absl::flat_hash_set<uint64_t> unsettled_;  // confirmed, no ack sent
};

// What the checks remember from one cycle to the next.
struct History {
  // Messages in the queue at the last check, with the attempt of this
  // process's delivery of them there.
  absl::flat_hash_map<uint64_t, uint32_t> attempt;
  // Messages in the dead-letter queue at the last check.
  absl::flat_hash_set<uint64_t> dead;
  // Messages once in a queue at a check and gone from both at a later one.
  absl::flat_hash_set<uint64_t> gone;
  // Messages delivered just before a kill, back without the redelivered
  // flag (allowed: their delivery was not yet in the log).
  uint64_t unflagged_deliveries = 0;
};

struct Found {
  uint64_t key;
  crash::Body body;
  bool redelivered;
  uint32_t attempt;
  bool dead;  // in the dead-letter queue
};

class Problems {
 public:
  void Add(std::string p) {
    ++count_;
    if (list_.size() < 20) list_.push_back(std::move(p));
  }
  bool empty() const { return count_ == 0; }
  std::string ToString() const {
    std::string s = std::to_string(count_) + " problem(s):";
    for (const auto& p : list_) s += "\n  " + p;
    return s;
  }

 private:
  size_t count_ = 0;
  std::vector<std::string> list_;
};

// Receives every ready message of `queue` on `broker` into `found`, and
// returns the consumer that holds them. (Closing it returns them, and
// dead-letters those out of attempts: close it only once every queue is
// drained.)
std::unique_ptr<Consumer> Drain(Broker& broker, const char* queue, bool dead,
                                const Oracle& oracle, std::vector<Found>& found,
                                Problems& problems) {
  auto consumer = broker.Consume(queue);
  REQUIRE(consumer.ok());
  for (;;) {
    auto d = (*consumer)->TryReceive();
    if (absl::IsUnavailable(d.status())) break;
    INFO("TryReceive: " << d.status().ToString());
    REQUIRE(d.ok());
    auto body = ParseBody(d->body());
    if (!body.ok()) {
      problems.Add(body.status().ToString());
      continue;
    }
    const uint64_t key = Key(body->pub, body->seq);
    if (dead) {
      const std::optional<DeathSite> death = FirstDeath(d->message());
      if (!death.has_value() || death->queue != kQueue) {
        problems.Add(KeyString(key) + " is in " + kDeadLetterQueue +
                     " but did not die in " + kQueue);
      } else if (death->reason == DeathReason::kRejected &&
                 !oracle.Nacked(key)) {
        problems.Add(KeyString(key) + " died rejected, but was never nacked");
      }
    }
    found.push_back({key, *body, d->redelivered(), d->attempt(), dead});
  }
  return *std::move(consumer);
}

// Opens the broker on `dir` after a crash and checks the queue (with
// `failure`, the queue and its dead-letter queue) against the oracle (see
// the file comment). Returns the number of messages found.
size_t CheckRecovery(const std::string& dir, uint64_t segment_bytes,
                     bool failure, const Oracle& oracle, History& history) {
  ManualClock later(absl::Now() + absl::Hours(1));
  auto opened = Broker::Open({.wal_dir = dir,
                              .clock = failure ? &later : nullptr,
                              .sync = SyncPolicy::kGroupCommit,
                              .wal_segment_bytes = segment_bytes});
  INFO("Open after the kill: " << opened.status().ToString());
  REQUIRE(opened.ok());
  std::unique_ptr<Broker> broker = *std::move(opened);
  const BrokerStats stats = broker->Stats();
  CHECK(stats.wal.skipped_bytes == 0);
  CHECK(absl::IsNotFound(broker->GetQueueStats("scratch").status()));

  auto queue = broker->GetQueueStats(kQueue);
  if (oracle.topology()) {
    INFO("durable queue: " << queue.status().ToString());
    REQUIRE(queue.ok());
    INFO("durable exchange");
    REQUIRE(broker->GetExchangeStats(kExchange).ok());
  } else if (!queue.ok()) {
    // The first child died before its declarations were certain.
    REQUIRE(oracle.confirmed().empty());
    broker->Close();
    return 0;
  }
  // Declared before `crash`, so there whenever `crash` is.
  auto dead_queue = failure ? broker->GetQueueStats(kDeadLetterQueue)
                            : absl::StatusOr<QueueStats>(QueueStats{});
  INFO("dead-letter queue: " << dead_queue.status().ToString());
  REQUIRE(dead_queue.ok());
  // Nothing is held after a restart, and on the clock an hour ahead every
  // delay and backoff is over.
  CHECK(queue->unacked == 0);
  CHECK(queue->delayed == 0);
  CHECK(dead_queue->delayed == 0);

  std::vector<Found> found;
  Problems problems;
  std::unique_ptr<Consumer> live =
      Drain(*broker, kQueue, /*dead=*/false, oracle, found, problems);
  std::unique_ptr<Consumer> dead =
      failure ? Drain(*broker, kDeadLetterQueue, /*dead=*/true, oracle, found,
                      problems)
              : nullptr;
  CHECK(found.size() == queue->ready + dead_queue->ready);
  // Every message recovered is in one of the durable queues.
  CHECK(stats.wal.recovered_messages == queue->ready + dead_queue->ready);
  CHECK(stats.wal.live_messages == queue->ready + dead_queue->ready);

  absl::flat_hash_set<uint64_t> present;
  absl::flat_hash_map<uint32_t, uint32_t> last_seq;  // per publisher
  for (const Found& f : found) {
    const std::string name = KeyString(f.key);
    if (!present.insert(f.key).second) problems.Add(name + " is there twice");
    if (oracle.Acked(f.key)) problems.Add(name + " was acked, and is back");
    if (history.gone.contains(f.key)) {
      problems.Add(name + " had left the queues, and is back");
    }
    if (f.dead) {
      // Dead-lettered by a nack without requeue, or out of attempts (the
      // checks' own deliveries count): either way after a delivery.
      if (!oracle.Delivered(f.key) && !history.attempt.contains(f.key) &&
          !history.dead.contains(f.key)) {
        problems.Add(name + " is dead-lettered, but was never delivered");
      }
      continue;
    }
    if (history.dead.contains(f.key)) {
      problems.Add(name + " was dead-lettered, and is back in " + kQueue);
    }
    if (!oracle.Reordered(f.key)) {
      uint32_t& last = last_seq[f.body.pub];
      if (f.body.seq <= last) {
        problems.Add(name + " comes after s" + std::to_string(last) +
                     " of the same publisher");
      }
      last = std::max(last, f.body.seq);
    }
    if (oracle.DeliveryLogged(f.key) && !f.redelivered) {
      problems.Add(name +
                   " was delivered before the crash (and an ack after it "
                   "by the same consumer returned), but is not flagged "
                   "redelivered (attempt " +
                   std::to_string(f.attempt) + ")");
    } else if (oracle.Delivered(f.key) && !f.redelivered) {
      // Receive does not wait for its delivery to reach the log: a crash
      // right after it may forget the delivery. Counted, not a failure.
      ++history.unflagged_deliveries;
    }
    if (auto it = history.attempt.find(f.key); it != history.attempt.end()) {
      if (!f.redelivered || f.attempt <= it->second) {
        problems.Add(
            name + " was delivered at attempt " + std::to_string(it->second) +
            " at the last check; now attempt " + std::to_string(f.attempt));
      }
    }
  }
  for (const Found& f : found) {
    // A batch is one record: all of it came back, or none of it.
    for (uint32_t i = 0; i < f.body.n; ++i) {
      const uint64_t k = Key(f.body.pub, f.body.first + i);
      if (!present.contains(k) && !oracle.AckSent(k)) {
        problems.Add(KeyString(k) + " of the batch of " + KeyString(f.key) +
                     " is missing (never acked)");
      }
    }
  }
  for (uint64_t k : oracle.unsettled()) {
    if (!present.contains(k)) {
      problems.Add(KeyString(k) + " was confirmed, never acked, and is lost" +
                   (oracle.Delivered(k) ? " (it was delivered)" : ""));
    }
  }
  auto left = [&](uint64_t k) {
    if (present.contains(k)) return;
    history.gone.insert(k);
    if (!oracle.AckSent(k)) {
      problems.Add(KeyString(k) +
                   " was there at the last check, never acked, and is lost");
    }
  };
  for (const auto& [k, attempt] : history.attempt) left(k);
  for (uint64_t k : history.dead) left(k);
  history.attempt.clear();
  history.dead.clear();
  for (const Found& f : found) {
    if (f.dead) {
      history.dead.insert(f.key);
    } else {
      history.attempt[f.key] = f.attempt;
    }
  }

  INFO(problems.ToString());
  CHECK(problems.empty());
  live.reset();
  dead.reset();
  broker->Close();
  return found.size();
}

struct CrashRunOptions {
  int cycles;
  // Longest run of a child, from its "ready" to the kill.
  std::chrono::microseconds max_run;
  // The failure-handling variant (see the file comment).
  bool failure = false;
};

void RunCrashCycles(const CrashRunOptions& run) {
  uint64_t seed = std::random_device{}();
  if (const char* s = std::getenv("WARREN_WAL_CRASH_SEED")) {
    seed = std::strtoull(s, nullptr, 10);
  }
  const bool verbose = std::getenv("WARREN_WAL_CRASH_VERBOSE") != nullptr;
  INFO("WARREN_WAL_CRASH_SEED=" << seed);
  std::mt19937_64 rng(seed);

  TempDir tmp;
  const std::string dir = tmp / "wal";
  Oracle oracle(tmp / "oracle");
  History history;
  uint64_t max_dir_bytes = 0;
  // From spawning the last child that got running to its "ready".
  std::chrono::microseconds startup(40'000);
  const SyncPolicy policies[] = {SyncPolicy::kNever, SyncPolicy::kInterval,
                                 SyncPolicy::kGroupCommit,
                                 SyncPolicy::kEveryPublish};
  const uint64_t segments[] = {uint64_t{64} << 10, uint64_t{64} << 10,
                               uint64_t{256} << 10, uint64_t{4} << 20};
  for (int cycle = 0; cycle < run.cycles; ++cycle) {
    const SyncPolicy policy = policies[(cycle + seed) % 4];
    const uint64_t segment = segments[rng() % 4];
    // Mostly killed a random time after it is running; sometimes a random
    // time after it starts, within how long the last one took to get
    // running: during its recovery or its first publishes.
    const bool early = cycle > 0 && rng() % 8 == 0;
    const auto delay = std::chrono::microseconds(
        rng() %
        static_cast<uint64_t>(early ? startup.count() : run.max_run.count()));
    INFO("cycle " << cycle << ": sync=" << PolicyArg(policy)
                  << " segment=" << segment << " kill " << delay.count()
                  << " us after " << (early ? "start" : "ready"));
    {
      Child child({"dir=" + dir, "oracle=" + oracle.path(),
                   std::string("sync=") + PolicyArg(policy),
                   "segment=" + std::to_string(segment),
                   "cycle=" + std::to_string(cycle),
                   "seed=" + std::to_string(rng()),
                   std::string("topology=") + (oracle.topology() ? "1" : "0"),
                   std::string("failure=") + (run.failure ? "1" : "0")});
      const auto spawned = std::chrono::steady_clock::now();
      if (!early) {
        const std::string line = child.ReadLine();
        INFO("child said: " << line);
        REQUIRE(line == "ready");
        startup =
            std::max(std::chrono::microseconds(1),
                     std::chrono::duration_cast<std::chrono::microseconds>(
                         std::chrono::steady_clock::now() - spawned));
      }
      std::this_thread::sleep_for(delay);  // the random moment of the crash
      child.Kill();
      const int status = child.Wait();
      INFO("child " << DescribeStatus(status));
      REQUIRE((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));
    }
    oracle.Refresh();
    const DirUsage usage = Usage(dir);
    max_dir_bytes = std::max(max_dir_bytes, usage.bytes);
    const size_t ready =
        CheckRecovery(dir, segment, run.failure, oracle, history);
    if (verbose) {
      std::printf(
          "cycle %d: sync=%s segment=%llu startup=%lldus kill=%lldus%s "
          "ready=%zu (dead-lettered %zu) "
          "oracle=%zu lines, dir=%llu bytes in %llu files\n",
          cycle, PolicyArg(policy), static_cast<unsigned long long>(segment),
          static_cast<long long>(startup.count()),
          static_cast<long long>(delay.count()), early ? " (early)" : "", ready,
          history.dead.size(), oracle.lines(),
          static_cast<unsigned long long>(usage.bytes),
          static_cast<unsigned long long>(usage.files));
    }
  }
  REQUIRE(oracle.topology());
  CHECK(!oracle.confirmed().empty());
  CHECK(!oracle.acked().empty());

  // Settle everything: what is left of the log afterwards is bounded by the
  // live data (none), not by the history of the run.
  // (On the clock an hour ahead nothing waits out a delay.)
  ManualClock later(absl::Now() + absl::Hours(1));
  {
    auto broker = Broker::Open({.wal_dir = dir, .clock = &later}).value();
    for (const char* queue : {kQueue, kDeadLetterQueue}) {
      if (!run.failure && queue == kDeadLetterQueue) continue;
      auto consumer = broker->Consume(queue).value();
      while (true) {
        auto d = consumer->TryReceive();
        if (!d.ok()) break;
        REQUIRE(consumer->Ack(*d).ok());
      }
    }
    broker->Close();
  }
  auto broker = Broker::Open({.wal_dir = dir, .clock = &later}).value();
  const BrokerStats stats = broker->Stats();
  CHECK(stats.wal.live_messages == 0);
  CHECK(broker->GetQueueStats(kQueue).value().ready == 0);
  broker->Close();
  if (verbose) {
    std::printf(
        "%llu deliveries forgotten by a kill; largest log directory %llu "
        "bytes; after settling everything %llu bytes in %llu segment(s), "
        "%llu bytes replayed\n",
        static_cast<unsigned long long>(history.unflagged_deliveries),
        static_cast<unsigned long long>(max_dir_bytes),
        static_cast<unsigned long long>(Usage(dir).bytes),
        static_cast<unsigned long long>(stats.wal.segments),
        static_cast<unsigned long long>(stats.wal.recovered_bytes));
  }
}

TEST_CASE(
    "A segment holds zeroes past its records until Close and recovery after "
    "a crash neither replays nor counts them",
    "[wal]") {
  TempDir tmp;
  const std::string dir = tmp / "wal";
  const std::string crashed = tmp / "crashed";
  constexpr uint64_t kSegment = 64 << 10;
  constexpr int kMessages = 600;
  const std::string body(400, 'z');
  DirUsage open_usage;
  {
    auto broker =
        Broker::Open({.wal_dir = dir, .wal_segment_bytes = kSegment}).value();
    REQUIRE(broker->DeclareQueue(kQueue, {.durable = true}).ok());
    for (int i = 0; i < kMessages; ++i) {
      REQUIRE(broker->Publish("", kQueue, Message(body), {.persistent = true})
                  .ok());
    }
    // What a kill -9 would leave now: the files as they are.
    std::filesystem::create_directory(crashed);
    for (const auto& e : std::filesystem::directory_iterator(dir)) {
      if (e.path().filename() == "LOCK") continue;
      std::filesystem::copy_file(e.path(), crashed / e.path().filename());
    }
    open_usage = Usage(crashed);
    broker->Close();
  }
  // The newest segment was synced after its last record, so it still holds
  // more than half of the 64 KiB of zeroes it keeps written past them; Close
  // truncated them.
  const DirUsage closed_usage = Usage(dir);
  CHECK(closed_usage.bytes + kSegment / 2 <= open_usage.bytes);

  for (const std::string& d : {crashed, dir}) {
    INFO(d);
    auto broker =
        Broker::Open({.wal_dir = d, .wal_segment_bytes = kSegment}).value();
    CHECK(broker->GetQueueStats(kQueue).value().ready == kMessages);
    const BrokerStats stats = broker->Stats();
    CHECK(stats.wal.recovered_messages == kMessages);
    CHECK(stats.wal.recovered_bytes >= kMessages * body.size());
    // The bytes replayed are the records' alone, not the zeroes.
    if (d == crashed) {
      CHECK(stats.wal.recovered_bytes + kSegment / 2 <= open_usage.bytes);
    } else {
      CHECK(stats.wal.recovered_bytes == closed_usage.bytes);
    }
    broker->Close();
  }
}

TEST_CASE("WAL crash: SIGKILL at random moments then recovery is checked",
          "[wal][crash]") {
  // Two cycles per sync policy, in a couple of seconds.
  RunCrashCycles({.cycles = 8, .max_run = std::chrono::milliseconds(80)});
}

TEST_CASE("WAL crash: 200 kill -9 cycles on one directory",
          "[wal][crash][stress]") {
  RunCrashCycles({.cycles = 200, .max_run = std::chrono::milliseconds(120)});
}

TEST_CASE(
    "WAL crash: retries delays and dead-lettering survive SIGKILL at random "
    "moments",
    "[wal][crash]") {
  RunCrashCycles(
      {.cycles = 8, .max_run = std::chrono::milliseconds(80), .failure = true});
}

TEST_CASE(
    "WAL crash: 100 kill -9 cycles of retries delays and dead-lettering on "
    "one directory",
    "[wal][crash][stress]") {
  RunCrashCycles({.cycles = 100,
                  .max_run = std::chrono::milliseconds(120),
                  .failure = true});
}

TEST_CASE("WAL directory lock holds against another process", "[wal][crash]") {
  TempDir tmp;
  const std::string dir = tmp / "wal";

  SECTION("a child holds it: Open here fails until the child closes") {
    Child child({"dir=" + dir, "hold=1"});
    REQUIRE(child.ReadLine() == "ready");
    auto second = Broker::Open({.wal_dir = dir});
    INFO(second.status().ToString());
    CHECK(absl::IsFailedPrecondition(second.status()));
    child.CloseStdin();  // the child closes its broker and exits
    const int status = child.Wait();
    INFO("child " << DescribeStatus(status));
    REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    auto third = Broker::Open({.wal_dir = dir});
    INFO(third.status().ToString());
    CHECK(third.ok());
  }

  SECTION("a killed child's lock goes with it") {
    Child child({"dir=" + dir, "hold=1"});
    REQUIRE(child.ReadLine() == "ready");
    CHECK(absl::IsFailedPrecondition(Broker::Open({.wal_dir = dir}).status()));
    child.Kill();
    const int status = child.Wait();
    REQUIRE((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));
    auto again = Broker::Open({.wal_dir = dir});
    INFO(again.status().ToString());
    CHECK(again.ok());
  }

  SECTION("this process holds it: the child's Open fails") {
    auto broker = Broker::Open({.wal_dir = dir});
    REQUIRE(broker.ok());
    // A second broker in the same process is refused as well.
    CHECK(absl::IsFailedPrecondition(Broker::Open({.wal_dir = dir}).status()));
    Child child({"dir=" + dir, "hold=1"});
    const int status = child.Wait();
    INFO("child " << DescribeStatus(status));
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == kExitLocked));
    (*broker)->Close();
    *broker = nullptr;
    // Closed, the directory is free again.
    auto again = Broker::Open({.wal_dir = dir});
    INFO(again.status().ToString());
    CHECK(again.ok());
  }
}

}  // namespace
}  // namespace warren
