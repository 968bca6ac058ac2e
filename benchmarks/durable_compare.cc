// -----------------------------------------------------------------------------
// File: benchmarks/durable_compare.cc
// -----------------------------------------------------------------------------
//
// The durable rows D1-D4 of warren_peer_compare; see durable_compare.h and
// benchmarks/README.md. Every contender of one body size runs interleaved in
// one group (warren per sync policy, the raw write() + fdatasync() loops,
// SQLite, RabbitMQ), so all the D1-D3 rows of that size come from the same
// rounds. Files go to a private directory on a real disk (tmpfs is detected
// and the rows are marked not meaningful there); it is removed afterwards.

#include "durable_compare.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "fmt/core.h"
#include "rabbitmq_private.h"
#include "warren/broker.h"
#include "warren/message.h"
#include "warren/options.h"
#include "warren/stats.h"

#ifndef WARREN_HAVE_SQLITE
#define WARREN_HAVE_SQLITE 0
#endif
#ifndef WARREN_HAVE_RABBITMQ_C
#define WARREN_HAVE_RABBITMQ_C 0
#endif
#if WARREN_HAVE_SQLITE
#include <sqlite3.h>
#endif

namespace warren_bench {
namespace {

namespace fs = std::filesystem;
using SteadyClock = std::chrono::steady_clock;

double SecondsSince(SteadyClock::time_point t0) {
  return std::chrono::duration<double>(SteadyClock::now() - t0).count();
}

// The message sizes of every D1-D3 row.
constexpr size_t kBodySizes[] = {64, 1024};
// Publisher threads of the group-commit row.
constexpr int kGroupPublishers = 8;
// Messages in flight for PublishAsync and RabbitMQ's windowed confirms.
constexpr uint32_t kWindow = 256;
// Body size of the recovery log.
constexpr size_t kRecoveryBody = 1024;
// The glibc tunable that makes malloc ask for transparent huge pages.
constexpr std::string_view kHugePageTunable = "glibc.malloc.hugetlb=1";

// D4's floor: allocates and fills one heap string of kRecoveryBody bytes per
// message, as recovery must; returns the seconds that took (freeing them is
// not timed).
double FillHeapStrings(uint64_t count) {
  const std::string body(kRecoveryBody, 'r');
  const auto t0 = SteadyClock::now();
  std::vector<std::unique_ptr<std::string>> bodies;
  bodies.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    bodies.push_back(std::make_unique<std::string>(body));
  }
  return SecondsSince(t0);
}
constexpr const char* kQueue = "durable";
constexpr const char* kAmqpQueue = "warren_bench_durable";

std::string Bytes(double b) {
  if (b >= 1 << 20) return fmt::format("{:.1f} MiB", b / (1 << 20));
  if (b >= 1 << 10) return fmt::format("{:.1f} KiB", b / (1 << 10));
  return fmt::format("{:.0f} B", b);
}

std::string GigabytesPerSecond(double gbps) {
  return fmt::format("{:.2f} GB/s", gbps);
}

// Sizes, from the harness's mode.
struct Settings {
  double trial_seconds = 0.25;     // per timed trial of one contender
  uint64_t max_messages = 200000;  // per warren trial (bounds memory)
  uint64_t recovery_bytes = uint64_t{256} << 20;
};

// --- The scratch directory
// -----------------------------------------------------

// The file system `path` is on ("ext4", "tmpfs", ...); sets
// `*memory_backed` for tmpfs and ramfs, where fdatasync costs nothing.
std::string FileSystemOf(const std::string& path, bool* memory_backed) {
  *memory_backed = false;
  struct statfs sfs {};
  if (::statfs(path.c_str(), &sfs) != 0) return "unknown file system";
  const auto type = static_cast<unsigned long>(sfs.f_type);
  *memory_backed = type == TMPFS_MAGIC || type == RAMFS_MAGIC;
  switch (type) {
    case EXT4_SUPER_MAGIC:  // ext2, ext3 and ext4 share it
      return "ext4";
    case XFS_SUPER_MAGIC:
      return "xfs";
    case BTRFS_SUPER_MAGIC:
      return "btrfs";
    case TMPFS_MAGIC:
      return "tmpfs";
    case RAMFS_MAGIC:
      return "ramfs";
    case OVERLAYFS_SUPER_MAGIC:
      return "overlayfs";
    default:
      return fmt::format("file system type {:#x}", type);
  }
}

// A private directory for every file of the durable rows, removed (with all
// it holds) by the destructor.
class ScratchDir {
 public:
  static std::unique_ptr<ScratchDir> Make(const std::string& base,
                                          std::string* error) {
    std::string parent = base;
    if (parent.empty()) {
      // The executable lives in <build>/benchmarks/: use <build>.
      std::error_code ec;
      const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
      parent = ec ? std::string(".") : exe.parent_path().parent_path().string();
    }
    std::string tmpl = parent + "/warren-durable-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      *error = fmt::format("cannot make a directory in {}: {}", parent,
                           std::strerror(errno));
      return nullptr;
    }
    std::unique_ptr<ScratchDir> d(new ScratchDir());
    d->path_ = tmpl;
    d->fs_name_ = FileSystemOf(d->path_, &d->memory_backed_);
    return d;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }
  const std::string& fs_name() const { return fs_name_; }
  // tmpfs or ramfs: fdatasync costs nothing there, so the rows mean nothing.
  bool memory_backed() const { return memory_backed_; }
  // A new path inside the directory (not created).
  std::string Fresh(std::string_view what) {
    return fmt::format("{}/{}-{}", path_, what, ++counter_);
  }

 private:
  ScratchDir() = default;
  std::string path_;
  std::string fs_name_ = "unknown file system";
  bool memory_backed_ = false;
  uint64_t counter_ = 0;
};

// Writes back every dirty page of the file system that holds `dir`; called,
// untimed, before each trial so that what one trial left in the page cache
// (a kNever trial leaves up to 200 MB, a deleted log its unlink) is not
// written back during the next trial's syncs.
void Settle(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  ::syncfs(fd);
  ::close(fd);
}

void RemoveAll(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
}

// --- warren with a write-ahead log
// ---------------------------------------------

// One way of publishing to warren.
struct WarrenConfig {
  std::string name;
  warren::SyncPolicy policy;
  int publishers = 1;
  // PublishAsync with kWindow confirms outstanding (1 publisher), instead of
  // Publish, which returns once confirmed.
  bool async = false;
  // Messages per sync to assume for the raw loop when warren cannot run.
  double assumed_messages_per_sync = 1;
};

// What one warren trial did, from Stats().wal before and after.
struct WalObservation {
  double rate = 0;  // confirmed messages per second
  uint64_t messages = 0;
  uint64_t records = 0;
  uint64_t bytes = 0;
  uint64_t syncs = 0;
};

// One publishing trial: a fresh broker on a fresh log directory with one
// durable queue; `config.publishers` threads publish persistent messages of
// `body_size` bytes to it through the default exchange for
// `settings.trial_seconds` or until `settings.max_messages` are published,
// whichever is first. Returns false and sets `*error` (with `*open_failed`
// when Broker::Open itself failed) when something failed.
bool WarrenTrial(ScratchDir& scratch, const WarrenConfig& config,
                 size_t body_size, const Settings& settings,
                 WalObservation* out, std::string* error, bool* open_failed,
                 absl::Status* open_status) {
  const std::string dir = scratch.Fresh("wal");
  Settle(scratch.path());
  warren::BrokerOptions options;
  options.wal_dir = dir;
  options.sync = config.policy;
  auto opened = warren::Broker::Open(options);
  if (!opened.ok()) {
    *open_failed = true;
    *open_status = opened.status();
    *error = opened.status().ToString();
    RemoveAll(dir);
    return false;
  }
  std::unique_ptr<warren::Broker> broker = std::move(*opened);
  warren::QueueOptions queue_options;
  queue_options.durable = true;
  if (absl::Status s = broker->DeclareQueue(kQueue, queue_options); !s.ok()) {
    *error = "DeclareQueue: " + s.ToString();
    broker.reset();
    RemoveAll(dir);
    return false;
  }
  const warren::WalStats before = broker->Stats().wal;

  const std::string body(body_size, 'x');
  warren::PublishOptions publish_options;
  publish_options.persistent = true;
  std::atomic<bool> go{false};
  std::atomic<bool> stop{false};
  std::atomic<int> ready{0};
  std::atomic<uint64_t> published{0};
  std::mutex error_mu;
  std::string thread_error;
  auto fail = [&](std::string e) {
    {
      std::lock_guard<std::mutex> lock(error_mu);
      if (thread_error.empty()) thread_error = std::move(e);
    }
    stop.store(true);
  };
  auto count_one = [&] {
    if (published.fetch_add(1, std::memory_order_relaxed) + 1 >=
        settings.max_messages) {
      stop.store(true, std::memory_order_relaxed);
    }
  };

  std::vector<std::thread> threads;
  for (int p = 0; p < config.publishers; ++p) {
    threads.emplace_back([&] {
      ready.fetch_add(1);
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      if (!config.async) {
        while (!stop.load(std::memory_order_relaxed)) {
          auto r = broker->Publish("", kQueue, warren::Message(body),
                                   publish_options);
          if (!r.ok()) {
            fail("Publish: " + r.status().ToString());
            return;
          }
          if (r->queues != 1) {
            fail(fmt::format("Publish reached {} queues, not 1", r->queues));
            return;
          }
          count_one();
        }
        return;
      }
      // PublishAsync: at most kWindow unconfirmed; the callback (on the
      // log's writer thread, or here) only counts. It shares the counter, so
      // that its notify after the last decrement never outlives it.
      auto in_flight = std::make_shared<std::atomic<uint32_t>>(0);
      while (!stop.load(std::memory_order_relaxed)) {
        const uint32_t n = in_flight->load(std::memory_order_acquire);
        if (n >= kWindow) {
          in_flight->wait(n, std::memory_order_acquire);
          continue;
        }
        in_flight->fetch_add(1, std::memory_order_relaxed);
        broker->PublishAsync(
            "", kQueue, warren::Message(body), publish_options,
            [in_flight, &fail](absl::StatusOr<warren::PublishOutcome> r) {
              if (!r.ok()) {
                fail("PublishAsync: " + r.status().ToString());
              } else if (r->queues != 1) {
                fail(fmt::format("PublishAsync reached {} queues, not 1",
                                 r->queues));
              }
              in_flight->fetch_sub(1, std::memory_order_release);
              in_flight->notify_one();
            });
        count_one();
      }
      for (uint32_t n = in_flight->load(std::memory_order_acquire); n != 0;
           n = in_flight->load(std::memory_order_acquire)) {
        in_flight->wait(n, std::memory_order_acquire);
      }
    });
  }
  while (ready.load() < config.publishers) std::this_thread::yield();
  const auto t0 = SteadyClock::now();
  go.store(true, std::memory_order_release);
  while (!stop.load(std::memory_order_relaxed) &&
         SecondsSince(t0) < settings.trial_seconds) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  stop.store(true);
  for (std::thread& t : threads) t.join();
  const double secs = SecondsSince(t0);

  const warren::BrokerStats stats = broker->Stats();
  const uint64_t messages = published.load();
  if (thread_error.empty()) {
    auto q = broker->GetQueueStats(kQueue);
    if (!q.ok()) {
      thread_error = "GetQueueStats: " + q.status().ToString();
    } else if (q->published != messages) {
      thread_error = fmt::format("the queue counts {} published, not {}",
                                 q->published, messages);
    }
  }
  broker->Close();
  broker.reset();
  RemoveAll(dir);
  if (!thread_error.empty()) {
    *error = thread_error;
    return false;
  }
  out->messages = messages;
  out->records = stats.wal.records - before.records;
  out->bytes = stats.wal.bytes - before.bytes;
  out->syncs = stats.wal.syncs - before.syncs;
  out->rate = static_cast<double>(messages) / secs;
  return true;
}

// --- The physical limit: write() + fdatasync()
// ----------------------------------

// Appends `bytes_per_sync` bytes with one write() and calls fdatasync(), in a
// loop, on a fresh file (mode 0600, O_APPEND, as a log segment), for
// `seconds`. Returns messages per second, counting `messages_per_sync`
// messages per sync; 0 and `*error` on failure.
double RawSyncLoop(ScratchDir& scratch, double bytes_per_sync,
                   double messages_per_sync, double seconds,
                   std::string* error) {
  const std::string path = scratch.Fresh("raw");
  Settle(scratch.path());
  const int fd = ::open(
      path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) {
    *error = fmt::format("open {}: {}", path, std::strerror(errno));
    return 0;
  }
  const size_t n =
      std::max<size_t>(1, static_cast<size_t>(std::llround(bytes_per_sync)));
  std::string buffer(n, 'r');
  uint64_t syncs = 0;
  const auto t0 = SteadyClock::now();
  do {
    for (size_t done = 0; done < n;) {
      const ssize_t w = ::write(fd, buffer.data() + done, n - done);
      if (w < 0) {
        if (errno == EINTR) continue;
        *error = fmt::format("write: {}", std::strerror(errno));
        ::close(fd);
        ::unlink(path.c_str());
        return 0;
      }
      done += static_cast<size_t>(w);
    }
    if (::fdatasync(fd) != 0) {
      *error = fmt::format("fdatasync: {}", std::strerror(errno));
      ::close(fd);
      ::unlink(path.c_str());
      return 0;
    }
    ++syncs;
  } while (SecondsSince(t0) < seconds);
  const double secs = SecondsSince(t0);
  ::close(fd);
  ::unlink(path.c_str());
  return static_cast<double>(syncs) * messages_per_sync / secs;
}

// --- SQLite
// ---------------------------------------------------------------------

#if WARREN_HAVE_SQLITE
// A fresh database (journal_mode=WAL, synchronous=FULL) with a queue table;
// inserts rows of `body_size` bytes for `seconds`, `rows_per_commit` per
// transaction (1: each INSERT in autocommit mode). Returns rows per second.
double SqliteTrial(ScratchDir& scratch, size_t body_size, int rows_per_commit,
                   double seconds, std::string* error) {
  const std::string dir = scratch.Fresh("sqlite");
  Settle(scratch.path());
  std::error_code ec;
  fs::create_directory(dir, ec);
  if (ec) {
    *error = "mkdir: " + ec.message();
    return 0;
  }
  sqlite3* db = nullptr;
  const std::string path = dir + "/queue.db";
  double rate = 0;
  auto exec = [&](const char* sql) {
    char* message = nullptr;
    if (sqlite3_exec(db, sql, nullptr, nullptr, &message) != SQLITE_OK) {
      *error = fmt::format("{}: {}", sql,
                           message != nullptr ? message : sqlite3_errmsg(db));
      sqlite3_free(message);
      return false;
    }
    return true;
  };
  sqlite3_stmt* insert = nullptr;
  if (sqlite3_open(path.c_str(), &db) != SQLITE_OK) {
    *error = fmt::format("sqlite3_open: {}", sqlite3_errmsg(db));
  } else if (exec("PRAGMA journal_mode=WAL") &&
             exec("PRAGMA synchronous=FULL") &&
             exec("CREATE TABLE queue (id INTEGER PRIMARY KEY, "
                  "body BLOB NOT NULL)")) {
    if (sqlite3_prepare_v2(db, "INSERT INTO queue (body) VALUES (?1)", -1,
                           &insert, nullptr) != SQLITE_OK) {
      *error = fmt::format("prepare: {}", sqlite3_errmsg(db));
    } else {
      std::string body(body_size, 's');
      uint64_t rows = 0;
      bool ok = true;
      const auto t0 = SteadyClock::now();
      do {
        if (rows_per_commit > 1) ok = exec("BEGIN");
        for (int i = 0; ok && i < rows_per_commit; ++i) {
          std::memcpy(body.data(), &rows, std::min(sizeof(rows), body.size()));
          sqlite3_bind_blob(insert, 1, body.data(),
                            static_cast<int>(body.size()), SQLITE_STATIC);
          if (sqlite3_step(insert) != SQLITE_DONE) {
            *error = fmt::format("INSERT: {}", sqlite3_errmsg(db));
            ok = false;
          }
          sqlite3_reset(insert);
          ++rows;
        }
        if (ok && rows_per_commit > 1) ok = exec("COMMIT");
      } while (ok && SecondsSince(t0) < seconds);
      if (ok) rate = static_cast<double>(rows) / SecondsSince(t0);
    }
  }
  sqlite3_finalize(insert);
  sqlite3_close(db);
  RemoveAll(dir);
  return rate;
}
#endif

// --- The rows
// -------------------------------------------------------------------

// A warren contender and what its trials observed.
struct WarrenSeries {
  explicit WarrenSeries(WarrenConfig c) : config(std::move(c)) {}

  WarrenConfig config;
  DurableContender contender;
  std::vector<WalObservation> observations;
  std::string error;  // the first failure, if any

  bool ok() const { return error.empty() && !contender.samples.empty(); }
  // Medians over the trials (0 when there are none).
  double MessagesPerSync(const DurableHarness& h) const {
    std::vector<double> v;
    for (const WalObservation& o : observations) {
      if (o.syncs > 0) v.push_back(static_cast<double>(o.messages) / o.syncs);
    }
    return h.median(v);
  }
  double BytesPerSync(const DurableHarness& h) const {
    std::vector<double> v;
    for (const WalObservation& o : observations) {
      if (o.syncs > 0) v.push_back(static_cast<double>(o.bytes) / o.syncs);
    }
    return h.median(v);
  }
  double BytesPerMessage(const DurableHarness& h) const {
    std::vector<double> v;
    for (const WalObservation& o : observations) {
      if (o.messages > 0)
        v.push_back(static_cast<double>(o.bytes) / o.messages);
    }
    return h.median(v);
  }
  double RecordsPerSync(const DurableHarness& h) const {
    std::vector<double> v;
    for (const WalObservation& o : observations) {
      if (o.syncs > 0) v.push_back(static_cast<double>(o.records) / o.syncs);
    }
    return h.median(v);
  }
};

// A peer contender, or why it did not run.
struct PeerSeries {
  DurableContender contender;
  std::string status;  // "" when it ran
  std::string error;   // the first failure during the run

  bool ok() const {
    return status.empty() && error.empty() && !contender.samples.empty();
  }
  std::string Why() const {
    if (!status.empty()) return status;
    if (!error.empty()) return "failed: " + error;
    return "not run";
  }
};

// Everything shared by the D rows of one run.
struct DurableRun {
  const DurableHarness& h;
  Settings settings;
  ScratchDir& scratch;
  bool d1 = false, d2 = false, d3 = false, d4 = false;
  // "unavailable: <status>" when Broker::Open with a wal_dir fails (the WAL
  // is not implemented yet), else "".
  std::string warren_unavailable;
  PrivateRabbitMq* rabbit = nullptr;
  std::string rabbit_status;  // why RabbitMQ does not run, or ""
  // D1-D3 rows of every body size, printed together per id at the end.
  std::vector<DurableRow> rows[3];
};

std::string Goal(const DurableHarness& h, double goal) {
  return goal > 0 ? fmt::format("≥ {}", h.times(goal)) : "— (report)";
}

// A row of throughputs: warren's series against a peer's (or a report-only
// row when `peer` is null and `peer_name` is "—").
void AddRatioRow(DurableRun& run, const std::string& id,
                 const std::string& workload, const WarrenSeries& ours,
                 const std::string& peer_name, const DurableContender* peer,
                 const std::string& peer_why, double goal) {
  const DurableHarness& h = run.h;
  DurableRow row{id, workload, "", peer_name, "", "—", Goal(h, goal), "n/a"};
  const bool ours_ok = run.warren_unavailable.empty() && ours.ok();
  if (!run.warren_unavailable.empty()) {
    row.ours = run.warren_unavailable;
  } else if (!ours.error.empty()) {
    row.ours = "failed: " + ours.error;
  } else {
    row.ours = h.rate(h.median(ours.contender.samples));
  }
  const bool peer_ok =
      peer != nullptr && !peer->samples.empty() && h.median(peer->samples) > 0;
  if (peer_ok) {
    row.peer_value = h.rate(h.median(peer->samples));
  } else {
    row.peer_value = peer_why.empty() ? "—" : peer_why;
  }
  if (ours_ok && peer_ok) {
    const double ratio =
        h.median(ours.contender.samples) / h.median(peer->samples);
    row.ratio = h.times(ratio);
    if (goal > 0) row.met = h.met(ratio >= goal);
  }
  if (run.scratch.memory_backed()) row.met = "n/a (files on tmpfs)";
  run.rows[id[1] - '1'].push_back(std::move(row));
}

// D1-D3 for one body size: every contender they need, interleaved.
void RunPublishGroup(DurableRun& run, size_t body_size) {
  const DurableHarness& h = run.h;
  const Settings& s = run.settings;
  const std::string size = fmt::format("{} B", body_size);
  const bool warren_runs = run.warren_unavailable.empty();

  WarrenSeries never{
      {"kNever, 1 publisher", warren::SyncPolicy::kNever, 1, false, 1}};
  WarrenSeries interval{{"kInterval (100 ms), 1 publisher",
                         warren::SyncPolicy::kInterval, 1, false, 1}};
  WarrenSeries gc1{{"kGroupCommit, 1 publisher (Publish)",
                    warren::SyncPolicy::kGroupCommit, 1, false, 1}};
  WarrenSeries gc8{
      {fmt::format("kGroupCommit, {} publishers (Publish)", kGroupPublishers),
       warren::SyncPolicy::kGroupCommit, kGroupPublishers, false,
       kGroupPublishers}};
  WarrenSeries gca{{fmt::format("kGroupCommit, 1 publisher, PublishAsync with "
                                "{} in flight",
                                kWindow),
                    warren::SyncPolicy::kGroupCommit, 1, true, 32}};
  WarrenSeries every{{"kEveryPublish, 1 publisher",
                      warren::SyncPolicy::kEveryPublish, 1, false, 1}};

  std::vector<DurableContender*> contenders;
  auto add_warren = [&](WarrenSeries& w, bool needed) {
    if (!needed || !warren_runs) return;
    w.contender.name = "warren " + w.config.name;
    w.contender.run = [&run, &w, body_size] {
      if (!w.error.empty()) return 0.0;
      WalObservation o;
      std::string error;
      bool open_failed = false;
      absl::Status open_status;
      if (!WarrenTrial(run.scratch, w.config, body_size, run.settings, &o,
                       &error, &open_failed, &open_status)) {
        w.error = error;
        run.h.bug(fmt::format("D: warren {} ({} B): {}", w.config.name,
                              body_size, error));
        return 0.0;
      }
      // What the policy promises: a confirmed publish was synced.
      const bool every = w.config.policy == warren::SyncPolicy::kEveryPublish;
      const bool group = w.config.policy == warren::SyncPolicy::kGroupCommit;
      if (o.messages > 0 &&
          ((every && o.syncs < o.messages) || (group && o.syncs == 0))) {
        w.error = fmt::format("{} publishes confirmed after only {} syncs",
                              o.messages, o.syncs);
        run.h.bug(fmt::format("D: warren {} ({} B): {}", w.config.name,
                              body_size, w.error));
        return 0.0;
      }
      w.observations.push_back(o);
      return o.rate;
    };
    contenders.push_back(&w.contender);
  };
  add_warren(never, run.d1);
  add_warren(interval, run.d1);
  add_warren(gc1, run.d1 || run.d3);
  add_warren(gc8, run.d1 || run.d2);
  add_warren(gca, run.d1 || run.d3);
  add_warren(every, run.d1 || run.d2);

  // The raw loop of each synced configuration: the bytes and messages per
  // sync of warren's latest trial of it (measured just before, in the same
  // round), or an assumption when warren cannot run.
  auto batch_of = [&run, body_size](const WarrenSeries& w, double* bytes,
                                    double* messages) {
    const WalObservation* last =
        w.observations.empty() ? nullptr : &w.observations.back();
    if (w.config.policy == warren::SyncPolicy::kEveryPublish) {
      // One record per sync, of warren's bytes per message.
      *messages = 1;
      *bytes = last != nullptr && last->messages > 0
                   ? static_cast<double>(last->bytes) / last->messages
                   : static_cast<double>(body_size + 32);
      return;
    }
    if (last != nullptr && last->syncs > 0) {
      *messages = static_cast<double>(last->messages) / last->syncs;
      *bytes = static_cast<double>(last->bytes) / last->syncs;
      return;
    }
    (void)run;
    *messages = w.config.assumed_messages_per_sync;
    *bytes = *messages * static_cast<double>(body_size + 32);
  };
  PeerSeries raw_gc1, raw_gc8, raw_gca, raw_every;
  auto add_raw = [&](PeerSeries& p, const WarrenSeries& w) {
    if (!run.d1) return;
    p.contender.name = "write()+fdatasync() loop, batch of " + w.config.name;
    p.contender.run = [&run, &p, &w, batch_of] {
      if (!p.error.empty()) return 0.0;
      double bytes = 0, messages = 0;
      batch_of(w, &bytes, &messages);
      std::string error;
      const double r = RawSyncLoop(run.scratch, bytes, messages,
                                   run.settings.trial_seconds, &error);
      if (r == 0) {
        p.error = error;
        run.h.bug("D1: raw loop: " + error);
      }
      return r;
    };
    contenders.push_back(&p.contender);
  };
  add_raw(raw_gc1, gc1);
  add_raw(raw_gc8, gc8);
  add_raw(raw_gca, gca);
  add_raw(raw_every, every);

  // SQLite: one row per commit, and batches of warren's group commit
  // (8 publishers) messages per sync.
  PeerSeries sqlite1, sqlite_batch;
  std::vector<double> sqlite_batches;
#if WARREN_HAVE_SQLITE
  if (run.d2) {
    sqlite1.contender.name = "SQLite, 1 row per commit";
    sqlite1.contender.run = [&run, &sqlite1, body_size] {
      if (!sqlite1.error.empty()) return 0.0;
      std::string error;
      const double r = SqliteTrial(run.scratch, body_size, 1,
                                   run.settings.trial_seconds, &error);
      if (r == 0) sqlite1.error = error;
      return r;
    };
    sqlite_batch.contender.name = "SQLite, batch of " + gc8.config.name;
    sqlite_batch.contender.run = [&run, &sqlite_batch, &gc8, &sqlite_batches,
                                  body_size, batch_of] {
      if (!sqlite_batch.error.empty()) return 0.0;
      double bytes = 0, messages = 0;
      batch_of(gc8, &bytes, &messages);
      const int rows = std::max(1, static_cast<int>(std::lround(messages)));
      sqlite_batches.push_back(rows);
      std::string error;
      const double r = SqliteTrial(run.scratch, body_size, rows,
                                   run.settings.trial_seconds, &error);
      if (r == 0) sqlite_batch.error = error;
      return r;
    };
    contenders.push_back(&sqlite1.contender);
    contenders.push_back(&sqlite_batch.contender);
  }
#else
  sqlite1.status = sqlite_batch.status = "not built (install libsqlite3-dev)";
#endif

  // RabbitMQ: wait for each confirm, and a window of kWindow.
  PeerSeries rabbit_each, rabbit_window;
  if (run.d3) {
    if (run.rabbit == nullptr) {
      rabbit_each.status = rabbit_window.status = run.rabbit_status;
    } else {
      auto add_rabbit = [&](PeerSeries& p, uint32_t window) {
        p.contender.name =
            window == 1
                ? "RabbitMQ, wait for each confirm"
                : fmt::format("RabbitMQ, {} confirms in flight", window);
        p.contender.run = [&run, &p, window, body_size] {
          if (!p.error.empty()) return 0.0;
          std::string error;
          double r = 0;
          if (AmqpPrepareDurableQueue(run.rabbit->amqp_port(), kAmqpQueue,
                                      &error)) {
            Settle(run.scratch.path());
            Settle("/tmp");  // the server's own files
            r = AmqpPersistentPublish(run.rabbit->amqp_port(), kAmqpQueue,
                                      body_size, window,
                                      run.settings.trial_seconds, &error);
          }
          if (r == 0) p.error = error;
          return r;
        };
        contenders.push_back(&p.contender);
      };
      add_rabbit(rabbit_each, 1);
      add_rabbit(rabbit_window, kWindow);
    }
  }

  if (contenders.empty()) return;
  h.progress(fmt::format(
      "== D1-D3: durable publish, {} bodies, {} contenders, {:.2f} s per "
      "trial",
      size, contenders.size(), s.trial_seconds));
  h.run_interleaved(fmt::format("D {}", size), contenders, h.rate);

  // --- Rows.
  const std::string to = fmt::format("{} persistent", size);
  auto per_sync = [&](const WarrenSeries& w) {
    if (!w.ok()) return std::string();
    return fmt::format(" [{:.1f} msgs, {} per fdatasync]", w.MessagesPerSync(h),
                       Bytes(w.BytesPerSync(h)));
  };
  const std::string raw = "write()+fdatasync() loop, same bytes per sync";
  if (run.d1) {
    AddRatioRow(run, "D1",
                fmt::format("durable publish {}, {}", never.config.name, to),
                never, "—", nullptr, "", 0);
    AddRatioRow(run, "D1",
                fmt::format("durable publish {}, {}", interval.config.name, to),
                interval, "—", nullptr, "", 0);
    for (auto [w, p] : {std::pair{&gc8, &raw_gc8}, std::pair{&gc1, &raw_gc1},
                        std::pair{&gca, &raw_gca}}) {
      AddRatioRow(run, "D1",
                  fmt::format("durable publish {}, {}{}", w->config.name, to,
                              per_sync(*w)),
                  *w, raw, &p->contender, p->Why(), 0.8);
    }
    AddRatioRow(run, "D1",
                fmt::format("durable publish {}, {}", every.config.name, to),
                every, "write()+fdatasync() loop, 1 record per sync",
                &raw_every.contender, raw_every.Why(), 0);
  }
  if (run.d2) {
    const std::string sqlite =
        "SQLite queue table, WAL, synchronous=FULL, 1 row per commit";
    AddRatioRow(run, "D2",
                fmt::format("durable publish {}, {}", gc8.config.name, to), gc8,
                sqlite, &sqlite1.contender, sqlite1.Why(), 10);
    AddRatioRow(run, "D2",
                fmt::format("durable publish {}, {}", gca.config.name, to), gca,
                sqlite, &sqlite1.contender, sqlite1.Why(), 10);
    AddRatioRow(
        run, "D2", fmt::format("… {} vs SQLite batched", gc8.config.name), gc8,
        fmt::format("SQLite, batch of warren's msgs per sync (median {:.0f} "
                    "rows per commit)",
                    h.median(sqlite_batches)),
        &sqlite_batch.contender, sqlite_batch.Why(), 0);
    AddRatioRow(run, "D2",
                fmt::format("… {} vs SQLite 1 row per commit (one sync "
                            "each)",
                            every.config.name),
                every, sqlite, &sqlite1.contender, sqlite1.Why(), 0);
  }
  if (run.d3) {
    AddRatioRow(run, "D3",
                fmt::format("durable publish {}, {}", gc1.config.name, to), gc1,
                "RabbitMQ durable queue, delivery_mode 2, wait for each "
                "confirm",
                &rabbit_each.contender, rabbit_each.Why(), 10);
    AddRatioRow(
        run, "D3", fmt::format("durable publish {}, {}", gca.config.name, to),
        gca,
        fmt::format("RabbitMQ durable queue, delivery_mode 2, {} confirms in "
                    "flight",
                    kWindow),
        &rabbit_window.contender, rabbit_window.Why(), 10);
  }

  // --- Notes: what warren's log did.
  if (warren_runs) {
    std::string line = fmt::format(
        "D1–D3 {} bodies, warren's log per trial (medians): ", size);
    bool first = true;
    for (const WarrenSeries* w :
         {&never, &interval, &gc1, &gc8, &gca, &every}) {
      if (w->observations.empty()) continue;
      line += fmt::format(
          "{}{}: {:.1f} records / {:.1f} msgs / {} per sync, {:.0f} B of log "
          "per message",
          first ? "" : "; ", w->config.name, w->RecordsPerSync(h),
          w->MessagesPerSync(h), Bytes(w->BytesPerSync(h)),
          w->BytesPerMessage(h));
      first = false;
    }
    h.note(line + ".");
  }
}

// --- D4: recovery
// ---------------------------------------------------------------

// Drops the page cache of every file under `dir` (clean pages only; the
// files were synced by Close).
void DropCache(const std::string& dir) {
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(dir, ec)) {
    if (!e.is_regular_file()) continue;
    const int fd = ::open(e.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ::fdatasync(fd);
    ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    ::close(fd);
  }
}

// Reads every file under `dir` with read() into one buffer; returns GB/s.
double ReadAll(const std::string& dir) {
  std::vector<char> buffer(size_t{1} << 20);
  uint64_t total = 0;
  const auto t0 = SteadyClock::now();
  std::error_code ec;
  for (const auto& e : fs::recursive_directory_iterator(dir, ec)) {
    if (!e.is_regular_file()) continue;
    const int fd = ::open(e.path().c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    for (ssize_t n; (n = ::read(fd, buffer.data(), buffer.size())) > 0;) {
      total += static_cast<uint64_t>(n);
    }
    ::close(fd);
  }
  const double secs = SecondsSince(t0);
  return secs > 0 ? static_cast<double>(total) / secs / 1e9 : 0;
}

void RunRecovery(DurableRun& run) {
  const DurableHarness& h = run.h;
  const Settings& s = run.settings;
  const std::string workload = fmt::format(
      "recovery: Broker::Open replays a {} log of persistent {} B messages "
      "(written with kNever); GB/s = Stats().wal.recovered_bytes / time of "
      "Open",
      Bytes(static_cast<double>(s.recovery_bytes)), kRecoveryBody);
  auto unavailable_rows = [&](const std::string& why) {
    for (const char* cache : {"page cache warm", "page cache dropped"}) {
      DurableRow row{"D4",        fmt::format("{} ({})", workload, cache),
                     why,         "(absolute goal)",
                     "1.00 GB/s", "—",
                     "≥ 1 GB/s",  "n/a"};
      h.add_row(std::move(row));
    }
  };
  if (!run.warren_unavailable.empty()) {
    unavailable_rows(run.warren_unavailable);
    return;
  }
  h.progress(fmt::format("== D4: building a {} log",
                         Bytes(static_cast<double>(s.recovery_bytes))));
  const std::string dir = run.scratch.Fresh("recovery");
  uint64_t published = 0;
  uint64_t log_bytes = 0;
  {
    warren::BrokerOptions options;
    options.wal_dir = dir;
    options.sync = warren::SyncPolicy::kNever;
    auto opened = warren::Broker::Open(options);
    if (!opened.ok()) {
      h.bug("D4: Open: " + opened.status().ToString());
      unavailable_rows("failed: " + opened.status().ToString());
      RemoveAll(dir);
      return;
    }
    std::unique_ptr<warren::Broker> broker = std::move(*opened);
    warren::QueueOptions queue_options;
    queue_options.durable = true;
    absl::Status st = broker->DeclareQueue(kQueue, queue_options);
    const std::string body(kRecoveryBody, 'r');
    warren::PublishOptions publish_options;
    publish_options.persistent = true;
    const auto t0 = SteadyClock::now();
    while (st.ok()) {
      auto r =
          broker->Publish("", kQueue, warren::Message(body), publish_options);
      if (!r.ok()) {
        st = r.status();
        break;
      }
      ++published;
      if (published % 1024 == 0) {
        log_bytes = broker->Stats().wal.bytes;
        if (log_bytes >= s.recovery_bytes) break;
        // Bounds memory should the log not count its bytes.
        if (published * kRecoveryBody > 2 * s.recovery_bytes) {
          st = absl::InternalError(
              fmt::format("Stats().wal.bytes is {} after {} publishes of {} B",
                          log_bytes, published, kRecoveryBody));
        }
      }
    }
    const double build_secs = SecondsSince(t0);
    broker->Close();
    if (!st.ok()) {
      h.bug("D4: building the log: " + st.ToString());
      unavailable_rows("failed: " + st.ToString());
      RemoveAll(dir);
      return;
    }
    h.progress(fmt::format("[D4] {} messages, {} of log in {:.1f} s", published,
                           Bytes(static_cast<double>(log_bytes)), build_secs));
  }

  std::vector<double> recovered_bytes;
  std::string error;
  auto open_once = [&](bool drop_cache) -> double {
    if (!error.empty()) return 0;
    if (drop_cache) DropCache(dir);
    warren::BrokerOptions options;
    options.wal_dir = dir;
    options.sync = warren::SyncPolicy::kNever;
    const auto t0 = SteadyClock::now();
    auto opened = warren::Broker::Open(options);
    const double secs = SecondsSince(t0);
    if (!opened.ok()) {
      error = "Open: " + opened.status().ToString();
      h.bug("D4: " + error);
      return 0;
    }
    std::unique_ptr<warren::Broker> broker = std::move(*opened);
    const warren::BrokerStats stats = broker->Stats();
    auto q = broker->GetQueueStats(kQueue);
    if (!q.ok() || q->ready != published) {
      error = fmt::format(
          "after recovery the queue holds {} ready messages, not {}",
          q.ok() ? std::to_string(q->ready) : q.status().ToString(), published);
      h.bug("D4: " + error);
    }
    broker->Close();
    broker.reset();
    recovered_bytes.push_back(static_cast<double>(stats.wal.recovered_bytes));
    return static_cast<double>(stats.wal.recovered_bytes) / secs / 1e9;
  };
  DurableContender warm{
      "warren Open, page cache warm", [&] { return open_once(false); }, {}};
  DurableContender cold{
      "warren Open, page cache dropped", [&] { return open_once(true); }, {}};
  DurableContender read_warm{"read() of the log files, page cache warm",
                             [&] { return ReadAll(dir); },
                             {}};
  DurableContender read_cold{"read() of the log files, page cache dropped",
                             [&] {
                               DropCache(dir);
                               return ReadAll(dir);
                             },
                             {}};
  // What materialising the messages costs on this machine, whatever does
  // it: as many heap strings of the body size as the log holds messages,
  // allocated, filled and freed, counted as GB/s of the same log bytes (in
  // this process, as warren's Open: memory freed by earlier rounds is
  // reused for both).
  DurableContender fresh{
      "one heap string per message, allocated and filled",
      [&] {
        const double secs = FillHeapStrings(published);
        return secs > 0 ? static_cast<double>(log_bytes) / secs / 1e9 : 0;
      },
      {}};
  // A restart: Open in a process of its own, whose memory is all fresh
  // (every page is touched for the first time), against the same process
  // filling the same heap strings.
  // `env`: variables set for the child, as "NAME=value " (or "").
  auto child = [&](const std::string& what, double* secs_out,
                   const std::string& env = "") -> double {
    if (!error.empty()) return 0;
    std::string out;
    const std::string command = fmt::format(
        "{}'{}' {}{}", env, fs::read_symlink("/proc/self/exe").string(),
        kChildFlag, what);
    if (FILE* pipe = ::popen(command.c_str(), "r")) {
      char buf[256];
      while (std::fgets(buf, sizeof buf, pipe) != nullptr) out += buf;
      if (::pclose(pipe) != 0) out.clear();
    }
    double secs = 0, bytes = 0, messages = 0;
    if (std::sscanf(out.c_str(), "%lf %lf %lf", &secs, &bytes, &messages) !=
            3 ||
        secs <= 0 || messages != static_cast<double>(published)) {
      error = fmt::format("a fresh process ({}) printed \"{}\"", what, out);
      h.bug("D4: " + error);
      return 0;
    }
    if (secs_out != nullptr) *secs_out = secs;
    return bytes / secs / 1e9;
  };
  DurableContender restart{"warren Open in a fresh process, page cache warm",
                           [&] { return child("open:" + dir, nullptr); },
                           {}};
  // The floor in a fresh process, as GB/s of the log's bytes.
  auto fill_in_child = [&](const std::string& env) {
    double secs = 0;
    child(fmt::format("fill:{}", published), &secs, env);
    return secs > 0 ? static_cast<double>(log_bytes) / secs / 1e9 : 0;
  };
  DurableContender restart_fill{
      "a fresh process allocating and filling one heap string per message",
      [&] { return fill_in_child(""); },
      {}};
  // The same two with glibc's malloc asking for transparent huge pages
  // (glibc 2.35 and later; the README's recipe for faster restarts): a
  // fresh process then takes one page fault per 2 MiB instead of per 4 KiB.
  const std::string huge = fmt::format("GLIBC_TUNABLES={} ", kHugePageTunable);
  DurableContender restart_huge{
      "warren Open in a fresh process with " + std::string(kHugePageTunable),
      [&] { return child("open:" + dir, nullptr, huge); },
      {}};
  DurableContender restart_fill_huge{"a fresh process with " +
                                         std::string(kHugePageTunable) +
                                         " filling one heap string per message",
                                     [&] { return fill_in_child(huge); },
                                     {}};
  h.run_interleaved("D4",
                    {&warm, &cold, &read_warm, &read_cold, &fresh, &restart,
                     &restart_fill, &restart_huge, &restart_fill_huge},
                    GigabytesPerSecond);
  RemoveAll(dir);

  auto add = [&](const DurableContender& ours, const std::string& cache,
                 const DurableContender& read) {
    DurableRow row{
        "D4",
        fmt::format("{} ({}; read() of the same files: {})", workload, cache,
                    GigabytesPerSecond(h.median(read.samples))),
        "",
        "(absolute goal)",
        "1.00 GB/s",
        "—",
        "≥ 1 GB/s",
        "n/a"};
    if (!error.empty()) {
      row.ours = "failed: " + error;
    } else {
      const double gbps = h.median(ours.samples);
      row.ours = GigabytesPerSecond(gbps);
      row.ratio = h.times(gbps);
      row.met = h.met(gbps >= 1.0);
    }
    h.add_row(std::move(row));
  };
  add(warm, "page cache warm", read_warm);
  add(cold, "page cache dropped with posix_fadvise(DONTNEED)", read_cold);
  // Against the floor: recovery makes every live message anew, so it cannot
  // beat allocating and filling their bodies. `goal`: the row also carries
  // the absolute goal.
  auto add_vs_floor = [&](const DurableContender& ours,
                          const DurableContender& floor,
                          const std::string& where, bool goal) {
    DurableRow row{"D4",
                   fmt::format("{} ({})", workload, where),
                   "",
                   floor.name + " (the floor)",
                   GigabytesPerSecond(h.median(floor.samples)),
                   "—",
                   goal ? "≥ 1 GB/s" : "—",
                   goal ? "n/a" : "—"};
    if (!error.empty()) {
      row.ours = "failed: " + error;
    } else {
      const double gbps = h.median(ours.samples);
      const double floor_gbps = h.median(floor.samples);
      row.ours = GigabytesPerSecond(gbps);
      if (floor_gbps > 0) row.ratio = h.times(gbps / floor_gbps);
      if (goal) row.met = h.met(gbps >= 1.0);
    }
    h.add_row(std::move(row));
  };
  add_vs_floor(warm, fresh, "page cache warm", false);
  add_vs_floor(restart, restart_fill, "in a fresh process, page cache warm",
               true);
  add_vs_floor(restart_huge, restart_fill_huge,
               fmt::format("in a fresh process with GLIBC_TUNABLES={}",
                           kHugePageTunable),
               true);
  h.note(fmt::format(
      "D4: log of {} messages of {} B, {} written (Stats().wal.bytes); each "
      "Open replayed a median {} (Stats().wal.recovered_bytes) and the queue "
      "held every message again. The page cache is dropped per file with "
      "posix_fadvise(POSIX_FADV_DONTNEED) (no root needed).",
      published, kRecoveryBody, Bytes(static_cast<double>(log_bytes)),
      Bytes(h.median(recovered_bytes))));
}

// "" when Broker::Open takes a wal_dir, else "unavailable: <status>" (or
// "failed: <status>" for an error other than kUnimplemented, also a bug).
std::string ProbeWal(const DurableHarness& h, ScratchDir& scratch) {
  const std::string dir = scratch.Fresh("probe");
  warren::BrokerOptions options;
  options.wal_dir = dir;
  auto opened = warren::Broker::Open(options);
  std::string why;
  if (!opened.ok()) {
    if (absl::IsUnimplemented(opened.status())) {
      // The status up to its first ';' (the rest says what to do instead).
      std::string status = opened.status().ToString();
      if (const size_t semi = status.find(';'); semi != std::string::npos) {
        status.resize(semi);
      }
      why = "unavailable: " + status;
    } else {
      why = "failed: " + opened.status().ToString();
      h.bug("D: Broker::Open with a wal_dir: " + opened.status().ToString());
    }
  } else {
    (*opened)->Close();
  }
  RemoveAll(dir);
  return why;
}

}  // namespace

int RunChild(std::string_view what) {
  double secs = 0, bytes = 0, messages = 0;
  if (what.rfind("open:", 0) == 0) {
    warren::BrokerOptions options;
    options.wal_dir = std::string(what.substr(5));
    options.sync = warren::SyncPolicy::kNever;
    const auto t0 = SteadyClock::now();
    auto opened = warren::Broker::Open(options);
    secs = SecondsSince(t0);
    if (!opened.ok()) {
      fmt::print(stderr, "Open: {}\n", opened.status().ToString());
      return 1;
    }
    bytes = static_cast<double>((*opened)->Stats().wal.recovered_bytes);
    auto q = (*opened)->GetQueueStats(kQueue);
    messages = q.ok() ? static_cast<double>(q->ready) : 0;
  } else if (what.rfind("fill:", 0) == 0) {
    const uint64_t count = std::strtoull(what.data() + 5, nullptr, 10);
    secs = FillHeapStrings(count);
    bytes = static_cast<double>(count * kRecoveryBody);
    messages = static_cast<double>(count);
  } else {
    fmt::print(stderr, "unknown {}{}\n", kChildFlag, what);
    return 2;
  }
  fmt::print("{} {} {}\n", secs, bytes, messages);
  return 0;
}

void RunDurableRows(const DurableHarness& h,
                    const std::function<bool(std::string_view)>& runs) {
  const bool d1 = runs("D1"), d2 = runs("D2"), d3 = runs("D3"), d4 = runs("D4");
  if (!d1 && !d2 && !d3 && !d4) return;
  Settings settings;
  if (h.quick) {
    settings.trial_seconds = 0.1;
    settings.max_messages = 50000;
    settings.recovery_bytes = uint64_t{32} << 20;
  }
  std::string error;
  std::unique_ptr<ScratchDir> scratch = ScratchDir::Make(h.dir, &error);
  if (scratch == nullptr) {
    for (std::string_view id : kDurableRowIds) {
      if (!runs(id)) continue;
      h.add_row(DurableRow{std::string(id), "durable rows", "not run: " + error,
                           "—", "—", "—", "—", "n/a"});
    }
    return;
  }
  h.progress(fmt::format("== D: files in {} ({})", scratch->path(),
                         scratch->fs_name()));
  DurableRun run{h, settings, *scratch, d1, d2, d3, d4, "", nullptr, "", {}};
  run.warren_unavailable = ProbeWal(h, *scratch);
  if (!run.warren_unavailable.empty()) {
    h.progress("[D] warren: " + run.warren_unavailable);
  }

  std::unique_ptr<PrivateRabbitMq> rabbit;
  if (d3) {
#if WARREN_HAVE_RABBITMQ_C
    if (!h.rabbitmq) {
      run.rabbit_status = "skipped (--no-rabbitmq)";
    } else {
      h.progress("[D3] starting a private RabbitMQ on 127.0.0.1 ...");
      const auto t0 = SteadyClock::now();
      rabbit = PrivateRabbitMq::Start(absl::Seconds(60), &error);
      if (rabbit == nullptr) {
        run.rabbit_status = "not run: " + error;
        h.progress("[D3] RabbitMQ: " + run.rabbit_status);
      } else {
        h.progress(fmt::format(
            "[D3] RabbitMQ {} up on 127.0.0.1:{} after {:.1f} s",
            rabbit->version(), rabbit->amqp_port(), SecondsSince(t0)));
        run.rabbit = rabbit.get();
        // Warm-up, not counted.
        std::string warm_error;
        if (AmqpPrepareDurableQueue(rabbit->amqp_port(), kAmqpQueue,
                                    &warm_error)) {
          AmqpPersistentPublish(rabbit->amqp_port(), kAmqpQueue, 64, kWindow,
                                0.2, &warm_error);
        }
      }
    }
#else
    run.rabbit_status = "not built (install librabbitmq-dev)";
#endif
  }

  if (d1 || d2 || d3) {
    for (size_t body_size : kBodySizes) RunPublishGroup(run, body_size);
    for (std::vector<DurableRow>& rows : run.rows) {
      for (DurableRow& row : rows) h.add_row(std::move(row));
    }
    if (!run.warren_unavailable.empty()) {
      h.note(
          "D1–D3 without warren: the raw loops and SQLite's batches assume "
          "1 (every publish, 1 publisher), 8 (8 publishers) and 32 "
          "(PublishAsync) messages of body + 32 B per sync.");
    }
  }
  if (rabbit != nullptr) {
    bool tmp_in_memory = false;
    const std::string rabbit_fs = FileSystemOf("/tmp", &tmp_in_memory);
    h.note(fmt::format(
        "D3 RabbitMQ: server {} started privately on 127.0.0.1:{} (private "
        "epmd; Mnesia and message store in its temp dir under /tmp, {}), a "
        "durable classic queue purged "
        "before each trial, persistent messages (delivery_mode 2) through "
        "the default exchange, one connection in confirm mode "
        "(confirm.select): publish and wait for each basic.ack, or keep {} "
        "unconfirmed; the rate counts confirmed messages up to the last "
        "confirm.",
        rabbit->version(), rabbit->amqp_port(), rabbit_fs, kWindow));
    rabbit->Stop();
    h.progress("[D3] RabbitMQ stopped");
  }
  if (d4) RunRecovery(run);

  h.note(fmt::format(
      "D rows: files in a private directory under {} ({}){}; each warren "
      "trial opens a fresh broker on a fresh log directory (default "
      "segment size, 64 MiB) with one durable queue and publishes for {:.2f} "
      "s or {} messages, whichever comes first; the raw loop appends the "
      "bytes per sync of warren's trial just before it (same round, same "
      "configuration) with one write() and then calls fdatasync(), on a "
      "fresh O_APPEND file, counting warren's messages per sync; SQLite {} "
      "with a fresh "
      "database per trial (prepared INSERT of a BLOB, default page size and "
      "autocheckpoint).",
      h.dir.empty() ? std::string("the build directory") : h.dir,
      scratch->fs_name(),
      scratch->memory_backed()
          ? " — **memory-backed: fdatasync costs nothing there, the D rows "
            "are not meaningful (pass --durable-dir= on a real disk)**"
          : "",
      settings.trial_seconds, settings.max_messages,
      WARREN_HAVE_SQLITE ? "runs" : "is not built"));
}

}  // namespace warren_bench
