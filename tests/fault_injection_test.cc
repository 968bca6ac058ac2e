// FaultInjectionEnv (crashes, injected I/O errors) and the write-ahead log
// under it: what survives a crash, and what an I/O error may leave behind.

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "env.h"
#include "fault_injection_env.h"
#include "log_format.h"
#include "log_reader.h"
#include "log_writer.h"

namespace warren::internal {
namespace {

using CrashKind = FaultInjectionEnv::CrashKind;
using FaultMode = FaultInjectionEnv::FaultMode;

std::unique_ptr<WritableFile> MustCreate(Env& env, const std::string& path) {
  auto file = env.NewWritableFile(path);
  REQUIRE(file.ok());
  return *std::move(file);
}

std::string Contents(const FaultInjectionEnv& env, const std::string& path) {
  auto contents = env.GetContents(path);
  REQUIRE(contents.ok());
  return *contents;
}

// An env with directory /d.
class FaultTest {
 public:
  FaultTest() { REQUIRE(env.CreateDir("/d").ok()); }
  FaultInjectionEnv env;
};

// ---------------------------------------------------------------------------
// The crash model.

TEST_CASE_METHOD(FaultTest, "FaultInjectionTest.UnsyncedDataIsLostOnPowerLoss",
                 "[fault]") {
  auto file = MustCreate(env, "/d/f");
  REQUIRE(env.SyncDir("/d").ok());
  REQUIRE(file->Append("synced").ok());
  REQUIRE(file->Sync().ok());
  REQUIRE(file->Append("+flushed").ok());
  REQUIRE(file->Flush().ok());
  REQUIRE(file->Append("+buffered").ok());
  CHECK(Contents(env, "/d/f") == "synced+flushed");  // Readers see flushed.
  env.SimulateCrash(CrashKind::kPowerLoss);
  CHECK(Contents(env, "/d/f") == "synced");
}

TEST_CASE_METHOD(FaultTest,
                 "FaultInjectionTest.FlushedDataSurvivesProcessCrash",
                 "[fault]") {
  auto file = MustCreate(env, "/d/f");
  REQUIRE(file->Append("flushed").ok());
  REQUIRE(file->Flush().ok());
  REQUIRE(file->Append("+buffered").ok());
  env.SimulateCrash(CrashKind::kProcess);
  CHECK(Contents(env, "/d/f") == "flushed");  // No SyncDir needed either.
}

TEST_CASE_METHOD(FaultTest,
                 "FaultInjectionTest.NewFileWithoutSyncDirVanishesOnPowerLoss",
                 "[fault]") {
  auto unsynced_dir = MustCreate(env, "/d/unsynced");
  REQUIRE(unsynced_dir->Append("data").ok());
  REQUIRE(unsynced_dir->Sync().ok());  // The data, not the name.
  auto synced_dir = MustCreate(env, "/d/synced");
  REQUIRE(synced_dir->Append("data").ok());
  REQUIRE(synced_dir->Sync().ok());
  REQUIRE(env.SyncDir("/d").ok());
  REQUIRE(env.RemoveFile("/d/unsynced").ok());
  REQUIRE(env.SyncDir("/d").ok());  // Now durably gone.
  auto late = MustCreate(env, "/d/late");
  REQUIRE(late->Sync().ok());
  env.SimulateCrash();
  CHECK(env.FileExists("/d/synced"));
  CHECK(Contents(env, "/d/synced") == "data");
  CHECK_FALSE(env.FileExists("/d/unsynced"));
  CHECK_FALSE(env.FileExists("/d/late"));
}

TEST_CASE_METHOD(FaultTest, "FaultInjectionTest.RenameWithoutSyncDirIsUndone",
                 "[fault]") {
  auto file = MustCreate(env, "/d/a");
  REQUIRE(file->Append("contents").ok());
  REQUIRE(file->Sync().ok());
  REQUIRE(env.SyncDir("/d").ok());
  REQUIRE(env.RenameFile("/d/a", "/d/b").ok());
  CHECK(env.FileExists("/d/b"));
  env.SimulateCrash();
  CHECK(env.FileExists("/d/a"));
  CHECK_FALSE(env.FileExists("/d/b"));

  env.Restart();
  REQUIRE(env.RenameFile("/d/a", "/d/b").ok());
  REQUIRE(env.SyncDir("/d").ok());
  env.SimulateCrash();
  CHECK_FALSE(env.FileExists("/d/a"));
  CHECK(Contents(env, "/d/b") == "contents");
}

TEST_CASE_METHOD(FaultTest, "FaultInjectionTest.RemoveWithoutSyncDirIsUndone",
                 "[fault]") {
  REQUIRE(env.SetContents("/d/f", "contents", /*durable=*/true).ok());
  REQUIRE(env.RemoveFile("/d/f").ok());
  CHECK_FALSE(env.FileExists("/d/f"));
  env.SimulateCrash();
  CHECK(Contents(env, "/d/f") == "contents");
}

TEST_CASE_METHOD(FaultTest, "FaultInjectionTest.TruncationWithoutSyncIsUndone",
                 "[fault]") {
  REQUIRE(env.SetContents("/d/f", "old", /*durable=*/true).ok());
  {
    auto file = MustCreate(env, "/d/f");  // Truncates.
    REQUIRE(file->Append("new").ok());
    REQUIRE(file->Flush().ok());
    CHECK(Contents(env, "/d/f") == "new");
  }
  env.SimulateCrash();
  CHECK(Contents(env, "/d/f") == "old");

  env.Restart();
  auto file = MustCreate(env, "/d/f");
  REQUIRE(file->Append("new").ok());
  REQUIRE(file->Sync().ok());
  env.SimulateCrash();
  CHECK(Contents(env, "/d/f") == "new");
}

TEST_CASE_METHOD(FaultTest, "FaultInjectionTest.HandlesAreStaleAfterCrash",
                 "[fault]") {
  auto file = MustCreate(env, "/d/f");
  REQUIRE(env.SyncDir("/d").ok());
  auto in = env.NewSequentialFile("/d/f");
  REQUIRE(in.ok());
  env.SimulateCrash(CrashKind::kProcess);
  CHECK(file->Append("x").code() == absl::StatusCode::kFailedPrecondition);
  CHECK(file->Sync().code() == absl::StatusCode::kFailedPrecondition);
  std::string scratch;
  std::string_view result;
  CHECK((*in)->Read(1, &scratch, &result).code() ==
        absl::StatusCode::kFailedPrecondition);
}

TEST_CASE_METHOD(
    FaultTest, "FaultInjectionTest.TheCrashedProcessTouchesNothingUntilRestart",
    "[fault]") {
  REQUIRE(env.SetContents("/d/f", "contents", /*durable=*/true).ok());
  env.SimulateCrash(CrashKind::kProcess);
  const uint64_t calls = env.call_count();
  CHECK(env.down());
  // What the crashed process still runs changes nothing and is not counted.
  CHECK(env.NewWritableFile("/d/f").status().code() ==
        absl::StatusCode::kFailedPrecondition);
  CHECK(env.NewWritableFile("/d/g").status().code() ==
        absl::StatusCode::kFailedPrecondition);
  CHECK(env.RemoveFile("/d/f").code() == absl::StatusCode::kFailedPrecondition);
  CHECK(env.LockFile("/d/LOCK").status().code() ==
        absl::StatusCode::kFailedPrecondition);
  CHECK(env.call_count() == calls);
  CHECK(Contents(env, "/d/f") == "contents");
  CHECK_FALSE(env.FileExists("/d/g"));
  env.Restart();
  CHECK_FALSE(env.down());
  CHECK(env.GetChildren("/d").ok());
  CHECK(env.RemoveFile("/d/f").ok());
  CHECK(env.call_count() == calls + 2);
}

TEST_CASE_METHOD(FaultTest,
                 "FaultInjectionTest.LockFileTwiceFailsAndCrashReleasesLocks",
                 "[fault]") {
  auto lock = env.LockFile("/d/LOCK");
  REQUIRE(lock.ok());
  CHECK(env.LockFile("/d/LOCK").status().code() ==
        absl::StatusCode::kFailedPrecondition);
  REQUIRE(env.UnlockFile(*std::move(lock)).ok());
  auto again = env.LockFile("/d/LOCK");
  REQUIRE(again.ok());
  env.SimulateCrash(CrashKind::kProcess);  // The process that held it died.
  env.Restart();
  auto after_crash = env.LockFile("/d/LOCK");
  REQUIRE(after_crash.ok());
  again->reset();  // The stale lock must not release the new holder's lock.
  CHECK(env.LockFile("/d/LOCK").status().code() ==
        absl::StatusCode::kFailedPrecondition);
}

TEST_CASE_METHOD(FaultTest, "FaultInjectionTest.MissingPathsAreNotFound",
                 "[fault]") {
  CHECK(env.NewSequentialFile("/d/missing").status().code() ==
        absl::StatusCode::kNotFound);
  CHECK(env.NewWritableFile("/nodir/f").status().code() ==
        absl::StatusCode::kNotFound);
  CHECK(env.RenameFile("/d/missing", "/d/x").code() ==
        absl::StatusCode::kNotFound);
  CHECK(env.RemoveFile("/d/missing").code() == absl::StatusCode::kNotFound);
  CHECK(env.GetFileSize("/d/missing").status().code() ==
        absl::StatusCode::kNotFound);
  CHECK(env.CreateDir("/d").code() == absl::StatusCode::kAlreadyExists);
  CHECK(env.CreateDir("/x/y").code() == absl::StatusCode::kNotFound);
  REQUIRE(env.CreateDir("/d/sub").ok());
  REQUIRE(env.SetContents("/d/f", "12345", /*durable=*/false).ok());
  auto children = env.GetChildren("/d");
  REQUIRE(children.ok());
  std::sort(children->begin(), children->end());
  CHECK(*children == std::vector<std::string>{"f", "sub"});
  auto size = env.GetFileSize("/d/f");
  REQUIRE(size.ok());
  CHECK(*size == 5);
}

// ---------------------------------------------------------------------------
// Fault injection.

TEST_CASE_METHOD(FaultTest, "FaultInjectionTest.FailedAppendWritesAPrefix",
                 "[fault]") {
  auto file = MustCreate(env, "/d/f");
  env.InjectFault(env.call_count(), absl::StatusCode::kResourceExhausted);
  const absl::Status s = file->Append("abcdef");
  CHECK(s.code() == absl::StatusCode::kResourceExhausted);
  CHECK(std::string(s.message()).find("injected fault at call #") == 0);
  REQUIRE(file->Flush().ok());  // kOnce: the next call succeeds.
  CHECK(Contents(env, "/d/f") == "abc");
  CHECK(env.faults_injected() == 1);
}

TEST_CASE_METHOD(FaultTest, "FaultInjectionTest.FailedFlushWritesAPrefix",
                 "[fault]") {
  auto file = MustCreate(env, "/d/f");
  REQUIRE(file->Append("abcdef").ok());
  env.InjectFault(env.call_count(), absl::StatusCode::kDataLoss);
  CHECK(file->Flush().code() == absl::StatusCode::kDataLoss);
  CHECK(Contents(env, "/d/f") == "abc");
}

TEST_CASE_METHOD(FaultTest, "FaultInjectionTest.FailedSyncIsSticky",
                 "[fault]") {
  auto file = MustCreate(env, "/d/f");
  REQUIRE(env.SyncDir("/d").ok());
  REQUIRE(file->Append("abcdef").ok());
  env.InjectFault(env.call_count(), absl::StatusCode::kDataLoss);
  CHECK(file->Sync().code() == absl::StatusCode::kDataLoss);
  CHECK(Contents(env, "/d/f") == "abcdef");  // Flushed, not durable.
  CHECK(file->Append("x").code() == absl::StatusCode::kDataLoss);
  CHECK(file->Sync().code() == absl::StatusCode::kDataLoss);
  env.SimulateCrash();
  CHECK(Contents(env, "/d/f").empty());
}

TEST_CASE_METHOD(FaultTest,
                 "FaultInjectionTest.PersistentFaultFailsEveryLaterCall",
                 "[fault]") {
  auto file = MustCreate(env, "/d/f");
  env.InjectFault(env.call_count() + 1, absl::StatusCode::kResourceExhausted,
                  FaultMode::kPersistent);
  CHECK(file->Append("a").ok());
  CHECK(file->Append("b").code() == absl::StatusCode::kResourceExhausted);
  CHECK(file->Flush().code() == absl::StatusCode::kResourceExhausted);
  CHECK(env.SyncDir("/d").code() == absl::StatusCode::kResourceExhausted);
  CHECK(env.faults_injected() == 3);
  env.ClearFault();
  CHECK(env.SyncDir("/d").ok());
}

// Runs one call of each kind, recording (call index, status) of each.
std::vector<std::pair<uint64_t, absl::Status>> RunEveryKindOfCall(
    FaultInjectionEnv& env) {
  std::vector<std::pair<uint64_t, absl::Status>> calls;
  auto record = [&](const absl::Status& s) {
    calls.emplace_back(env.call_count() - 1, s);
    return s.ok();
  };
  REQUIRE(env.SetContents("/d/in", "0123456789", /*durable=*/true).ok());
  record(env.CreateDir("/d/sub"));
  auto out = env.NewWritableFile("/d/out");
  if (record(out.status())) {
    record((*out)->Append("data"));
    record((*out)->Flush());
    record((*out)->Sync());
    record((*out)->Close());
  }
  auto appendable = env.NewAppendableFile("/d/out");
  if (record(appendable.status())) record((*appendable)->Append("more"));
  record(env.SyncDir("/d"));
  record(env.GetFileSize("/d/in").status());
  auto in = env.NewSequentialFile("/d/in");
  if (record(in.status())) {
    std::string scratch;
    std::string_view result;
    record((*in)->Skip(2));
    record((*in)->Read(3, &scratch, &result));
  }
  record(env.GetChildren("/d").status());
  record(env.RenameFile("/d/in", "/d/renamed"));
  record(env.RemoveFile("/d/out"));
  auto lock = env.LockFile("/d/LOCK");
  if (record(lock.status())) record(env.UnlockFile(*std::move(lock)));
  return calls;
}

TEST_CASE("FaultInjectionTest.FaultAtEveryCallIndex", "[fault]") {
  uint64_t total = 0;
  {
    FaultTest t;
    t.env.ResetCallCount();
    const auto calls = RunEveryKindOfCall(t.env);
    total = t.env.call_count();
    REQUIRE(calls.size() == total);
    for (const auto& [index, status] : calls) REQUIRE(status.ok());
  }
  for (const FaultMode mode : {FaultMode::kOnce, FaultMode::kPersistent}) {
    for (uint64_t n = 0; n < total; ++n) {
      CAPTURE(n, static_cast<int>(mode));
      FaultTest t;
      t.env.ResetCallCount();
      t.env.InjectFault(n, absl::StatusCode::kResourceExhausted, mode);
      for (const auto& [index, status] : RunEveryKindOfCall(t.env)) {
        CAPTURE(index, status.ToString());
        const bool should_fail =
            index == n || (mode == FaultMode::kPersistent && index > n);
        if (should_fail) {
          REQUIRE(status.code() == absl::StatusCode::kResourceExhausted);
          REQUIRE(std::string(status.message())
                      .find("injected fault at call #" +
                            std::to_string(index)) == 0);
        } else {
          // A failed Sync is sticky: the handle's later calls repeat it.
          const bool sticky_sync =
              std::string(status.message())
                  .find("injected fault at call #" + std::to_string(n) +
                        ": sync ") == 0;
          REQUIRE((status.ok() || sticky_sync));
        }
      }
      if (mode == FaultMode::kOnce) REQUIRE(t.env.faults_injected() == 1);
    }
  }
}

// ---------------------------------------------------------------------------
// The write-ahead log under faults: the project's acceptance test.

struct WriteOutcome {
  // Records whose AddRecord and Sync both returned OK (always a prefix).
  size_t confirmed = 0;
  // Records for which AddRecord was called.
  size_t attempted = 0;
  // Whether any call returned an error.
  bool saw_error = false;
};

const char kLogPath[] = "/wal/000001.log";

// Creates a log and writes `records`, syncing after each, as the broker's
// "sync every publish" policy would; keeps going after errors (which must
// all be sticky).
WriteOutcome WriteLog(FaultInjectionEnv& env,
                      const std::vector<std::string>& records) {
  WriteOutcome out;
  auto note = [&](const absl::Status& s) {
    if (!s.ok()) out.saw_error = true;
    return s.ok();
  };
  if (!note(env.CreateDir("/wal"))) return out;
  auto file = env.NewWritableFile(kLogPath);
  if (!note(file.status())) return out;
  // Without a durable name a synced log could vanish: a broker must give up.
  if (!note(env.SyncDir("/wal"))) return out;
  log::Writer writer(file->get());
  for (const std::string& record : records) {
    ++out.attempted;
    absl::Status s = writer.AddRecord(record);
    if (s.ok()) s = writer.Sync();
    if (note(s)) {
      // Errors are sticky: nothing is confirmed after a failure.
      REQUIRE(out.confirmed == out.attempted - 1);
      ++out.confirmed;
    }
  }
  note((*file)->Close());
  return out;
}

TEST_CASE(
    "An I/O error at every call index surfaces as a Status and never produces "
    "a record that was not fully written",
    "[fault][log]") {
  const std::vector<std::string> records = {"first",
                                            "",
                                            std::string(1000, 'a'),
                                            std::string(40000, 'b'),
                                            "after the big one",
                                            std::string(300, 'c'),
                                            std::string(20000, 'd'),
                                            "last"};
  uint64_t total = 0;
  {
    FaultInjectionEnv env;
    const WriteOutcome out = WriteLog(env, records);
    REQUIRE(out.confirmed == records.size());
    REQUIRE_FALSE(out.saw_error);
    total = env.call_count();
  }
  struct Crash {
    bool crash;
    CrashKind kind;
  };
  for (const absl::StatusCode code :
       {absl::StatusCode::kResourceExhausted, absl::StatusCode::kDataLoss}) {
    for (const FaultMode mode : {FaultMode::kOnce, FaultMode::kPersistent}) {
      for (const Crash crash :
           {Crash{false, CrashKind::kProcess}, Crash{true, CrashKind::kProcess},
            Crash{true, CrashKind::kPowerLoss}}) {
        for (uint64_t n = 0; n <= total; ++n) {
          CAPTURE(static_cast<int>(code), static_cast<int>(mode), crash.crash,
                  static_cast<int>(crash.kind), n);
          FaultInjectionEnv env;
          env.InjectFault(n, code, mode);
          const WriteOutcome out = WriteLog(env, records);
          // The fault surfaced as a Status.
          REQUIRE(out.saw_error == (env.faults_injected() > 0));
          REQUIRE(out.saw_error == (n < total));
          env.ClearFault();
          if (crash.crash) {
            env.SimulateCrash(crash.kind);
            env.Restart();
          }

          std::vector<std::string> read;
          if (env.FileExists(kLogPath)) {
            auto file = env.NewSequentialFile(kLogPath);
            REQUIRE(file.ok());
            log::Reader reader(file->get(), nullptr, /*checksum=*/true);
            std::string scratch;
            std::string_view record;
            while (reader.ReadRecord(&record, &scratch)) {
              read.emplace_back(record);
            }
            // A torn tail at most: never reported damage.
            REQUIRE(reader.status().ok());
            REQUIRE(reader.dropped_bytes() == 0);
          }
          // Every confirmed record is there, intact; nothing but whole
          // records that were written, in order.
          REQUIRE(read.size() >= out.confirmed);
          REQUIRE(read.size() <= out.attempted);
          REQUIRE(std::equal(read.begin(), read.end(), records.begin()));
          if (crash.crash && crash.kind == CrashKind::kPowerLoss) {
            // Only synced data survives a power loss.
            REQUIRE(read.size() == out.confirmed);
          } else {
            // A record added but not synced may survive a process crash.
            REQUIRE(read.size() <= out.confirmed + 1);
          }
        }
      }
    }
  }
}

TEST_CASE("FaultInjectionTest.UnsyncedRecordsAreATornTailAfterPowerLoss",
          "[fault][log]") {
  // A log synced every few records, cut by a power loss at every record: the
  // synced prefix reads back; the rest is gone, or a torn tail.
  for (int cut = 0; cut <= 20; ++cut) {
    CAPTURE(cut);
    FaultInjectionEnv env;
    REQUIRE(env.CreateDir("/wal").ok());
    auto file = env.NewWritableFile(kLogPath);
    REQUIRE(file.ok());
    REQUIRE(env.SyncDir("/wal").ok());
    log::Writer writer(file->get());
    int synced = 0;
    for (int i = 0; i < cut; ++i) {
      REQUIRE(writer.AddRecord(std::string(5000 + i, 'a' + i % 26)).ok());
      if (i % 3 == 2) {
        REQUIRE(writer.Sync().ok());
        synced = i + 1;
      }
    }
    env.SimulateCrash(CrashKind::kPowerLoss);
    env.Restart();
    auto in = env.NewSequentialFile(kLogPath);
    REQUIRE(in.ok());
    log::Reader reader(in->get(), nullptr, /*checksum=*/true);
    std::string scratch;
    std::string_view record;
    int count = 0;
    while (reader.ReadRecord(&record, &scratch)) {
      REQUIRE(record == std::string(5000 + count, 'a' + count % 26));
      ++count;
    }
    CHECK(reader.status().ok());
    CHECK(count == synced);
  }
}

}  // namespace
}  // namespace warren::internal
