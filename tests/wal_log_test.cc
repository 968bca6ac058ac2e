// Tests of the write-ahead log itself (src/wal.h), below the broker: what it
// confirms after disk errors, when it deletes segments, and who writes a
// record nobody waits for. The broker-level durability tests are in
// wal_test.cc.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "catch2/catch.hpp"
#include "envelope.h"
#include "fault_injection_env.h"
#include "log_reader.h"
#include "log_writer.h"
#include "wal.h"
#include "wal_records.h"
#include "warren/clock.h"

namespace warren::internal {
namespace {

constexpr char kDir[] = "/wal";

struct LogFixture {
  FaultInjectionEnv env;
  ManualClock clock;
  Wal::Options options;

  LogFixture() {
    options.dir = kDir;
    options.env = &env;
    options.clock = &clock;
    options.sync = SyncPolicy::kGroupCommit;
  }
  // Opens the log as a process (re)started after any simulated crash does.
  absl::StatusOr<std::shared_ptr<Wal>> Open(RecoveredState* recovered) {
    env.Restart();
    return Wal::Open(options, recovered);
  }
  std::shared_ptr<Wal> MustOpen() {
    RecoveredState recovered;
    auto wal = Open(&recovered);
    REQUIRE(wal.ok());
    return *std::move(wal);
  }
  // Opens with the smallest segments allowed (64 KiB) and declares durable
  // queues 1..n.
  std::shared_ptr<Wal> MustOpenSmallWithQueues(uint32_t n);
  // Opens the log again and returns the bodies of the messages it recovered,
  // in order.
  std::vector<std::string> RecoveredBodies() {
    RecoveredState recovered;
    auto wal = Open(&recovered);
    REQUIRE(wal.ok());
    std::vector<std::string> bodies;
    for (const auto& m : recovered.messages) {
      bodies.emplace_back(m.envelope->message.body());
    }
    REQUIRE((*wal)->Close().ok());
    return bodies;
  }
};

// Appends `record` and waits until it is synced.
absl::Status Commit(Wal& wal, wal::RecordBuilder& record) {
  return wal.Wait(wal.Append(record, /*own_sync=*/false, /*will_wait=*/true),
                  /*sync=*/true);
}

std::shared_ptr<Wal> LogFixture::MustOpenSmallWithQueues(uint32_t n) {
  options.segment_bytes = 64 << 10;
  auto wal = MustOpen();
  wal::RecordBuilder record;
  for (uint32_t q = 1; q <= n; ++q) {
    record.Queue(q, "q" + std::to_string(q), {.durable = true});
  }
  REQUIRE(Commit(*wal, record).ok());
  return wal;
}

// A record that publishes message `id` to queue `queue`.
wal::RecordBuilder PublishRecord(uint64_t id, uint32_t queue,
                                 std::string body) {
  wal::RecordBuilder record;
  record.Publish(id, "", "", absl::UnixEpoch(), Message(std::move(body)),
                 {{queue, 0, absl::InfinitePast()}});
  return record;
}

// Appends a record the log's model ignores (a settle of an unknown message).
uint64_t AppendFiller(Wal& wal) {
  wal::RecordBuilder record;
  const uint64_t id = 1'000'000;
  record.Settle(1, &id, 1);
  return wal.Append(record, /*own_sync=*/false, /*will_wait=*/true);
}

TEST_CASE(
    "A record written but not synced before a failed write is never "
    "confirmed as synced even after more failures than the log keeps",
    "[wal]") {
  // Failures after the one that covers the first record, while the thread
  // that appended it has not looked yet: none, or far more than the log
  // keeps a record of.
  const int more_failures = GENERATE(0, 1000);
  LogFixture f;
  auto wal = f.MustOpen();
  // Written, not synced: nobody asked for a sync yet.
  const uint64_t first = AppendFiller(*wal);
  REQUIRE(wal->Wait(first, /*sync=*/false).ok());
  // The next write fails, and its segment is abandoned.
  f.env.ResetCallCount();
  f.env.InjectFault(0, absl::StatusCode::kResourceExhausted,
                    FaultInjectionEnv::FaultMode::kPersistent);
  const uint64_t second = AppendFiller(*wal);
  CHECK(wal->Wait(second, /*sync=*/true).code() ==
        absl::StatusCode::kResourceExhausted);
  for (int i = 0; i < more_failures; ++i) {
    REQUIRE_FALSE(wal->Wait(AppendFiller(*wal), /*sync=*/true).ok());
  }
  f.env.ClearFault();
  // A later record goes to a new segment and is synced there.
  const uint64_t third = AppendFiller(*wal);
  REQUIRE(wal->Wait(third, /*sync=*/true).ok());
  // That sync did not make the first record durable: it stayed behind in
  // the abandoned segment (and when the failure that says so is no longer
  // kept, the log does not know, which is not a confirm either).
  CHECK(wal->Wait(first, /*sync=*/true).code() ==
        absl::StatusCode::kResourceExhausted);
  CHECK(wal->Wait(first, /*sync=*/false).ok());  // it was written
  // A record appended after all of that is confirmed as before.
  CHECK(wal->Wait(AppendFiller(*wal), /*sync=*/true).ok());
  REQUIRE(wal->Close().ok());
}

// Appends a record of 70 KiB that holds no live message, so the segment
// that takes it (with the smallest segment size) is full after it.
uint64_t AppendBig(Wal& wal, uint64_t msg_id) {
  wal::RecordBuilder record;
  record.Publish(msg_id, "", "", absl::UnixEpoch(),
                 Message(std::string(70 << 10, 'z')), {});
  return wal.Append(record, /*own_sync=*/false, /*will_wait=*/true);
}

// Waits until the log has `n` segment files, for at most 10 s.
bool AwaitSegments(Wal& wal, uint64_t n) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (wal.Stats().segments != n) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// Opens with small segments and queues 1 and 2, and logs message 1 (70 KiB,
// in queue 1) so that it fills segment 1; segment 2 is started.
std::shared_ptr<Wal> OpenWithMessageInFullSegment(LogFixture& f) {
  auto wal = f.MustOpenSmallWithQueues(2);
  wal::RecordBuilder record = PublishRecord(1, 1, std::string(70 << 10, 'x'));
  REQUIRE(Commit(*wal, record).ok());
  REQUIRE(wal->Wait(AppendFiller(*wal), /*sync=*/true).ok());
  REQUIRE(wal->Stats().segments == 2);
  return wal;
}

// Moves message 1 from queue 1 to queue 2 as dead-lettering does: a new
// message ("moved", id 2) and the old one's settle, in one record.
wal::RecordBuilder MoveRecord() {
  wal::RecordBuilder record = PublishRecord(2, 2, "moved");
  const uint64_t id = 1;
  record.Settle(1, &id, 1);
  return record;
}

TEST_CASE(
    "A settled segment is deleted only once the records that settled it are "
    "synced",
    "[wal]") {
  LogFixture f;
  {
    auto wal = OpenWithMessageInFullSegment(f);
    // Message 1 moves to queue 2, and nobody waits: the background thread
    // writes the record, and segment 1, settled now, goes.
    wal::RecordBuilder record = MoveRecord();
    wal->Append(record);
    REQUIRE(AwaitSegments(*wal, 1));
    f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kPowerLoss);
  }
  CHECK(f.RecoveredBodies() == std::vector<std::string>{"moved"});
}

TEST_CASE(
    "A message logged while a segment's start fails is kept when the segment "
    "starts again",
    "[wal]") {
  LogFixture f;
  {
    auto wal = f.MustOpenSmallWithQueues(1);
    // Segment 1 is full: the next write starts segment 2.
    REQUIRE(wal->Wait(AppendBig(*wal, 100), /*sync=*/true).ok());
    // While segment 2's file is being created (and fails to be), another
    // thread logs message 2.
    uint64_t lsn2 = 0;
    f.env.SetCreateHook([&](std::string_view) {
      f.env.SetCreateHook(nullptr);
      wal::RecordBuilder record = PublishRecord(2, 1, "2");
      lsn2 = wal->Append(record, false, true);
      f.env.ResetCallCount();
      f.env.InjectFault(0, absl::StatusCode::kResourceExhausted);
    });
    CHECK_FALSE(wal->Wait(AppendFiller(*wal), /*sync=*/true).ok());
    REQUIRE(lsn2 != 0);
    // The retry starts segment 2, which takes messages 2 and 3.
    wal::RecordBuilder record = PublishRecord(3, 1, "3");
    REQUIRE(Commit(*wal, record).ok());
    REQUIRE(wal->Wait(lsn2, /*sync=*/true).ok());
    // Message 3 is settled; message 2 stays live.
    const uint64_t id = 3;
    record.Settle(1, &id, 1);
    REQUIRE(Commit(*wal, record).ok());
    // Fill segment 2 and start segment 3: segment 1 goes, and segment 2 goes
    // only once message 2 is written again after it.
    REQUIRE(wal->Wait(AppendBig(*wal, 101), /*sync=*/true).ok());
    REQUIRE(wal->Wait(AppendFiller(*wal), /*sync=*/true).ok());
    const bool one_left = AwaitSegments(*wal, 1);
    INFO("segments " << wal->Stats().segments << ", live messages "
                     << wal->Stats().live_messages);
    REQUIRE(one_left);
    REQUIRE(wal->Close().ok());
  }
  CHECK(f.RecoveredBodies() == std::vector<std::string>{"2"});
}

TEST_CASE(
    "A message appended before a full segment closes is counted against the "
    "segment that holds it, so the full segment can go",
    "[wal]") {
  LogFixture f;
  {
    auto wal = f.MustOpenSmallWithQueues(1);
    // Segment 1 is full and closed; segment 2 starts with the next write.
    REQUIRE(wal->Wait(AppendBig(*wal, 100), /*sync=*/true).ok());
    // Message 2 is appended while segment 1 is still the last one, and is
    // written into segment 2, which the wait starts.
    wal::RecordBuilder record = PublishRecord(2, 1, "2");
    REQUIRE(Commit(*wal, record).ok());
    // Segment 1 holds no live message: it goes. Counted against segment 1,
    // message 2 would keep it forever, since its record is not there to be
    // written again.
    const bool one_left = AwaitSegments(*wal, 1);
    INFO("segments " << wal->Stats().segments);
    REQUIRE(one_left);
    REQUIRE(wal->Close().ok());
  }
  CHECK(f.RecoveredBodies() == std::vector<std::string>{"2"});
}

TEST_CASE(
    "The records of a failed write are written again once the disk "
    "recovers",
    "[wal]") {
  LogFixture f;
  {
    auto wal = OpenWithMessageInFullSegment(f);
    // Message 1 moves to queue 2, but the write fails. Memory holds the
    // move; the log must catch up.
    f.env.ResetCallCount();
    f.env.InjectFault(0, absl::StatusCode::kResourceExhausted);
    wal::RecordBuilder record = MoveRecord();
    CHECK(Commit(*wal, record).code() == absl::StatusCode::kResourceExhausted);
    // The disk is back: the next write takes the move along into segment 3.
    // Segment 1, settled by it, goes, and so does segment 2, abandoned after
    // the failed write: the move's message is counted where it was written.
    REQUIRE(wal->Wait(AppendFiller(*wal), /*sync=*/true).ok());
    REQUIRE(AwaitSegments(*wal, 1));
    f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kPowerLoss);
  }
  CHECK(f.RecoveredBodies() == std::vector<std::string>{"moved"});
}

TEST_CASE(
    "A move whose write or sync fails keeps the moved message through a "
    "power loss once the disk recovers",
    "[wal]") {
  // The move's write is a few calls: a failure at each of them.
  const int fail_at = GENERATE(range(0, 6));
  CAPTURE(fail_at);
  LogFixture f;
  {
    auto wal = OpenWithMessageInFullSegment(f);
    f.env.ResetCallCount();
    f.env.InjectFault(fail_at, absl::StatusCode::kDataLoss);
    wal::RecordBuilder record = MoveRecord();
    (void)Commit(*wal, record);
    f.env.ClearFault();
    // The disk is back; later records are synced in a segment of their own,
    // and segment 1 may go once what settled its message is durable.
    REQUIRE(wal->Wait(AppendFiller(*wal), /*sync=*/true).ok());
    REQUIRE(wal->Wait(AppendFiller(*wal), /*sync=*/true).ok());
    // Give the background thread the chance to delete segment 1, which it
    // may once what settled its message is durable (unless records were
    // lost to a failed sync: then the log keeps every segment).
    if (!wal->Stats().segments_held) AwaitSegments(*wal, 1);
    f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kPowerLoss);
  }
  // Moved or not, the message survives.
  const std::vector<std::string> bodies = f.RecoveredBodies();
  CHECK(bodies.size() == 1);
  CHECK((bodies == std::vector<std::string>{"moved"} ||
         bodies == std::vector<std::string>{std::string(70 << 10, 'x')}));
}

TEST_CASE(
    "After a failed sync the log writes the unsynced records again and "
    "deletes no segment until it is opened again",
    "[wal]") {
  LogFixture f;
  {
    auto wal = OpenWithMessageInFullSegment(f);
    // Segment 2 holds a message that stays live: it is not compacted.
    wal::RecordBuilder record = PublishRecord(5, 2, std::string(40 << 10, 'k'));
    REQUIRE(Commit(*wal, record).ok());
    // Message 1 moves to queue 2; the record is written, but its sync fails.
    const uint64_t sync_call = 3;  // after the record's appends and flush
    f.env.ResetCallCount();
    f.env.InjectFault(sync_call, absl::StatusCode::kDataLoss);
    record = MoveRecord();
    const absl::Status moved = Commit(*wal, record);
    REQUIRE(moved.code() == absl::StatusCode::kDataLoss);
    REQUIRE(std::string(moved.message()).find("sync") != std::string::npos);
    // The disk is back; the move is written again in segment 3, ahead of
    // the later records synced there.
    REQUIRE(wal->Wait(AppendFiller(*wal), /*sync=*/true).ok());
    CHECK(wal->Stats().segments_held);
    // Segment 1, whose message the move settled, stays all the same.
    REQUIRE(wal->Wait(AppendFiller(*wal), /*sync=*/true).ok());
    CHECK(wal->Stats().segments == 3);
    f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kPowerLoss);
  }
  // The move survives the power loss in segment 3 (its first copy, never
  // synced, is gone): message 1 is in queue 2, as memory had it.
  CHECK(f.RecoveredBodies() ==
        std::vector<std::string>{"moved", std::string(40 << 10, 'k')});
  // Reopened, the log deletes segments again.
  RecoveredState recovered;
  auto wal = f.Open(&recovered);
  REQUIRE(wal.ok());
  CHECK_FALSE((*wal)->Stats().segments_held);
  REQUIRE((*wal)->Close().ok());
}

TEST_CASE(
    "Records nobody waits for are synced once 16 MiB of them are unsynced",
    "[wal]") {
  // The log keeps the records a sync has not covered, to write them again
  // should it fail: a sync bounds what it keeps.
  LogFixture f;
  f.options.segment_bytes = uint64_t{64} << 20;
  auto wal = f.MustOpen();
  const uint64_t syncs = wal->Stats().syncs;
  // 15 MiB: no sync (nobody waits, and the segment is far from full).
  auto append = [&](int n) {
    uint64_t lsn = 0;
    for (int i = 0; i < n; ++i) {
      wal::RecordBuilder record;
      record.Publish(uint64_t(i) + 1, "", "", absl::UnixEpoch(),
                     Message(std::string(256 << 10, 'u')), {});
      lsn = wal->Append(record, /*own_sync=*/false, /*will_wait=*/true);
    }
    REQUIRE(wal->Wait(lsn, /*sync=*/false).ok());
  };
  append(60);
  CHECK(wal->Stats().syncs == syncs);
  // 2 MiB more: over 16 MiB, a sync. (The write after it waits for the
  // write that synced to finish.)
  append(8);
  REQUIRE(wal->Wait(AppendFiller(*wal), /*sync=*/false).ok());
  CHECK(wal->Stats().syncs > syncs);
  REQUIRE(wal->Close().ok());
}

TEST_CASE(
    "A delivery written again after a failed write is counted once after a "
    "crash",
    "[wal]") {
  // The delivery and a larger record are written together; a failure at each
  // call of that write. A failed flush leaves the delivery in the abandoned
  // segment, and the log writes it again in the next one.
  const int fail_at = GENERATE(range(0, 6));
  CAPTURE(fail_at);
  LogFixture f;
  {
    auto wal = f.MustOpenSmallWithQueues(1);
    wal::RecordBuilder record = PublishRecord(1, 1, "m");
    REQUIRE(Commit(*wal, record).ok());
    f.env.ResetCallCount();
    f.env.InjectFault(fail_at, absl::StatusCode::kDataLoss);
    wal::RecordBuilder delivered;
    delivered.Delivered(1, 1, 1);
    (void)wal->Append(delivered, /*own_sync=*/false, /*will_wait=*/true);
    record = PublishRecord(2, 1, std::string(8 << 10, 'b'));
    (void)Commit(*wal, record);
    f.env.ClearFault();
    REQUIRE(wal->Wait(AppendFiller(*wal), /*sync=*/true).ok());
    f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kProcess);
  }
  RecoveredState recovered;
  auto wal = f.Open(&recovered);
  REQUIRE(wal.ok());
  REQUIRE(!recovered.messages.empty());
  const auto& refs = recovered.messages[0].refs;
  REQUIRE(refs.size() == 1);
  CHECK(refs[0].deliveries == 1);
  REQUIRE((*wal)->Close().ok());
}

TEST_CASE("Close writes again the records of a failed write", "[wal]") {
  LogFixture f;
  {
    auto wal = f.MustOpenSmallWithQueues(1);
    f.env.ResetCallCount();
    f.env.InjectFault(0, absl::StatusCode::kResourceExhausted);
    wal::RecordBuilder record = PublishRecord(1, 1, "late");
    CHECK_FALSE(Commit(*wal, record).ok());
    // Close writes it, though its status stays the failure it was given.
    CHECK(wal->Close().code() == absl::StatusCode::kResourceExhausted);
  }
  CHECK(f.RecoveredBodies() == std::vector<std::string>{"late"});
}

TEST_CASE(
    "Threads that spin for a group commit are confirmed only for records a "
    "sync covered, while writes and syncs fail at random",
    "[wal]") {
  // Registered: each thread appends with AppendForWait, as a synchronous
  // publish does, and so may join a group being gathered and spin for its
  // sync without taking the log's mutex.
  const bool registered = GENERATE(false, true);
  CAPTURE(registered);
  LogFixture f;
  f.options.spin_for_sync = true;
  constexpr int kThreads = 4;
  constexpr int kCommits = 4000;  // before the power cut, in all
  std::vector<std::vector<std::string>> confirmed(kThreads);
  std::atomic<int> commits{0};
  std::atomic<int> failed{0};
  std::atomic<int> joined{0};
  std::atomic<bool> cut{false};
  {
    auto wal = f.MustOpenSmallWithQueues(1);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; !cut.load(); ++i) {
          const std::string body =
              "t" + std::to_string(t) + "-" + std::to_string(i);
          wal::RecordBuilder record =
              PublishRecord(uint64_t(i) * kThreads + uint64_t(t) + 1, 1, body);
          absl::Status s;
          if (registered) {
            const Wal::Ticket ticket =
                wal->AppendForWait(record, /*own_sync=*/false, /*sync=*/true);
            if (ticket.joined) joined.fetch_add(1);
            s = wal->Wait(ticket);
          } else {
            s = Commit(*wal, record);
          }
          // Confirmed before the power cut began: it must survive it.
          if (s.ok() && !cut.load()) confirmed[t].push_back(body);
          if (!s.ok()) failed.fetch_add(1);
          commits.fetch_add(1);
        }
      });
    }
    // A write or sync fails every 50 commits or so while the publishers
    // wait; then the power goes, with commits in flight.
    std::mt19937 rng(Catch::rngSeed());
    int next_fault = 0;
    while (commits.load() < kCommits) {
      if (commits.load() >= next_fault) {
        f.env.ResetCallCount();
        f.env.InjectFault(rng() % 16, absl::StatusCode::kResourceExhausted);
        next_fault += 50;
      }
      std::this_thread::yield();
    }
    cut.store(true);
    f.env.SimulateCrash(FaultInjectionEnv::CrashKind::kPowerLoss);
    for (std::thread& t : threads) t.join();
    f.env.ClearFault();
  }
  INFO(failed.load() << " of " << commits.load() << " commits failed, "
                     << joined.load() << " joined a gathering group");
  CHECK(failed.load() > 0);
  // Every confirmed message survived the power cut, in its thread's order.
  std::vector<std::vector<std::string>> recovered(kThreads);
  for (const std::string& body : f.RecoveredBodies()) {
    recovered[body[1] - '0'].push_back(body);
  }
  for (int t = 0; t < kThreads; ++t) {
    size_t next = 0;
    for (const std::string& body : recovered[t]) {
      if (next < confirmed[t].size() && body == confirmed[t][next]) ++next;
    }
    INFO("thread " << t << ": " << confirmed[t].size() << " confirmed, "
                   << recovered[t].size() << " recovered");
    CHECK(next == confirmed[t].size());
  }
}

// The first ops of the first record of log segment `path`.
std::vector<wal::OpType> FirstOps(FaultInjectionEnv& env,
                                  const std::string& path, size_t n) {
  auto file = env.NewSequentialFile(path);
  REQUIRE(file.ok());
  log::Reader reader(file->get(), /*reporter=*/nullptr, /*checksum=*/true);
  std::string scratch;
  std::string_view record;
  REQUIRE(reader.ReadRecord(&record, &scratch));
  wal::RecordReader ops(record);
  std::vector<wal::OpType> types;
  wal::Op op;
  while (types.size() < n && !ops.done()) {
    REQUIRE(ops.Next(&op).ok());
    if (op.type == wal::OpType::kFormat) CHECK(op.format == wal::kLogFormat);
    types.push_back(op.type);
  }
  return types;
}

TEST_CASE("Every log segment begins by naming its log format", "[wal]") {
  LogFixture f;
  auto wal = f.MustOpenSmallWithQueues(1);
  // Fill the first segment so that a second one starts.
  for (uint64_t id = 1; id <= 3; ++id) {
    wal::RecordBuilder record =
        PublishRecord(id, 1, std::string(40 << 10, 'x'));
    REQUIRE(Commit(*wal, record).ok());
  }
  REQUIRE(wal->Close().ok());
  auto children = f.env.GetChildren(kDir);
  REQUIRE(children.ok());
  int segments = 0;
  for (const std::string& name : *children) {
    if (!name.ends_with(".wal")) continue;
    ++segments;
    INFO(name);
    CHECK(FirstOps(f.env, std::string(kDir) + "/" + name, 2) ==
          std::vector<wal::OpType>{wal::OpType::kFormat,
                                   wal::OpType::kCheckpoint});
  }
  CHECK(segments >= 2);
}

TEST_CASE(
    "A log in a newer log format is refused and left as it was even when "
    "corruption is skipped",
    "[wal]") {
  const OnCorruption on_corruption =
      GENERATE(OnCorruption::kFail, OnCorruption::kSkip);
  LogFixture f;
  f.options.on_corruption = on_corruption;
  auto wal = f.MustOpenSmallWithQueues(1);
  wal::RecordBuilder record = PublishRecord(1, 1, "before");
  REQUIRE(Commit(*wal, record).ok());
  // What a later warren, writing a format this build does not read, might
  // append.
  record.clear();
  record.Format(wal::kLogFormat + 1);
  REQUIRE(Commit(*wal, record).ok());
  REQUIRE(wal->Close().ok());
  auto before = f.env.GetContents(std::string(kDir) + "/000001.wal");
  REQUIRE(before.ok());

  RecoveredState recovered;
  auto reopened = f.Open(&recovered);
  REQUIRE_FALSE(reopened.ok());
  CHECK(reopened.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK_THAT(std::string(reopened.status().message()),
             Catch::Contains("000001.wal is in log format " +
                             std::to_string(wal::kLogFormat + 1)) &&
                 Catch::Contains("newer warren"));
  CHECK(f.env.GetContents(std::string(kDir) + "/000001.wal").value() ==
        *before);
  auto children = f.env.GetChildren(kDir);
  REQUIRE(children.ok());
  CHECK(std::count_if(children->begin(), children->end(),
                      [](auto& name) { return name.ends_with(".wal"); }) == 1);
}

TEST_CASE(
    "A segment written before the log format had a number is read as "
    "format 1",
    "[wal]") {
  LogFixture f;
  REQUIRE(f.env.CreateDir(kDir).ok());
  {
    auto file = f.env.NewWritableFile(std::string(kDir) + "/000001.wal");
    REQUIRE(file.ok());
    REQUIRE(f.env.SyncDir(kDir).ok());
    log::Writer writer(file->get());
    // Its checkpoint, as such a warren wrote it: no kFormat.
    wal::RecordBuilder record;
    record.Checkpoint(1, 1);
    record.Segments(1);
    REQUIRE(writer.AddRecord(record.out()).ok());
    record.clear();
    record.Queue(1, "q1", {.durable = true});
    REQUIRE(writer.AddRecord(record.out()).ok());
    record = PublishRecord(1, 1, "kept");
    REQUIRE(writer.AddRecord(record.out()).ok());
    REQUIRE(writer.Sync().ok());
    REQUIRE((*file)->Close().ok());
  }
  CHECK(f.RecoveredBodies() == std::vector<std::string>{"kept"});
  // Segments it starts from then on name the format.
  CHECK(FirstOps(f.env, std::string(kDir) + "/000002.wal", 1) ==
        std::vector<wal::OpType>{wal::OpType::kFormat});
}

}  // namespace
}  // namespace warren::internal
