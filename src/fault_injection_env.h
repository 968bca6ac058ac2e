// FaultInjectionEnv: an in-memory Env for tests that simulates crashes and
// injects I/O errors (the ideas of leveldb's db/fault_injection_test.cc).
//
// The model. Each file (an "inode", which may have several names over its
// life) has three layers of data:
//
//   buffered  bytes appended through a WritableFile but not yet flushed: they
//             live in that handle, like the user-space buffer of the POSIX
//             Env, and no reader sees them;
//   flushed   the file's contents as every reader sees them (the operating
//             system's page cache);
//   durable   what is on the "disk": the contents at the last successful
//             Sync of a handle of the file.
//
// Each directory entry (name -> inode) likewise exists in the live namespace
// as soon as a file is created, renamed or removed, and in the durable
// namespace only after a successful SyncDir of its directory.
//
// SimulateCrash(CrashKind::kProcess) models kill -9: every handle's buffered
// bytes are lost, flushed data and live names survive. SimulateCrash(
// CrashKind::kPowerLoss) models a power cut: additionally every file is reset
// to its durable contents (unsynced appends vanish; a truncation by
// NewWritableFile that was not followed by a Sync is undone, the old durable
// contents return) and the namespace is reset to its durable state (a file
// created since the last SyncDir of its directory vanishes, even if its data
// was synced; an unsynced rename is undone; an unsynced removal is undone).
// After either crash every lock is released and every handle opened before
// the crash is stale: its calls return kFailedPrecondition (a crashed process
// has no handles), and it may only be destroyed. The process is down, too:
// every counted call fails with kFailedPrecondition (uncounted) until
// Restart(), which stands for starting it again. Whatever the crashed process
// still runs in a test (a broker's background thread, its Close) cannot
// change the files the next one recovers; call Restart() once it is gone.
//
// Not modelled: partially persisted unsynced data (a power cut here keeps
// exactly the synced prefix, never a torn sector or a hole), reordering of
// metadata against data other than the above, and directory durability:
// directories exist, durably, from their CreateDir on.
//
// Paths are plain strings split at the last '/': the directory of "/wal/1.log"
// is "/wal". The root "/" and "" (the current directory) always exist; every
// other directory must be created with CreateDir before files are put in it.
//
// Fault injection. Every call that can fail is counted, in program order, with
// a 0-based index: every Env method except FileExists and the test helpers
// below, and every WritableFile (Append, Flush, Sync, Close) and
// SequentialFile (Read, Skip) method. InjectFault(n, code) makes call n fail
// with `code` (or, with FaultMode::kPersistent, call n and every later call,
// like a full disk), so a test can loop over every call index. A failed call
// has these effects, modelled on what a real failure can leave behind:
//
//   Append  the first half (rounded down) of the data is buffered; the rest
//           is dropped (a short write);
//   Flush   the first half of the buffered bytes reach the file; the rest is
//           dropped;
//   Sync    the buffered bytes reach the file but nothing becomes durable, and
//           the handle's later Append, Flush, Sync and Close fail with the
//           same status (a failed fsync is sticky, as the WritableFile
//           contract says);
//   Close   as Flush, and the handle is closed;
//   others  nothing happens.
//
// Destroying a WritableFile that was not closed flushes its buffer, as the
// POSIX one does, without counting a call; under a persistent fault, or after
// a failed Sync, the buffer is dropped instead.
//
// Thread-safe. Handles must not outlive their FaultInjectionEnv.

#ifndef WARREN_SRC_FAULT_INJECTION_ENV_H_
#define WARREN_SRC_FAULT_INJECTION_ENV_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "env.h"
#include "sync.h"

namespace warren::internal {

class FaultInjectionEnv final : public Env {
 public:
  enum class CrashKind {
    kProcess,    // kill -9: buffered data is lost.
    kPowerLoss,  // Power cut: only durable data and durable names survive.
  };
  enum class FaultMode {
    kOnce,        // Only the chosen call fails.
    kPersistent,  // The chosen call and every later one fail.
  };

  FaultInjectionEnv();
  ~FaultInjectionEnv() override;

  // Env. Each of these is a counted call (except FileExists).
  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(
      std::string_view path) override;
  absl::StatusOr<std::unique_ptr<WritableFile>> NewAppendableFile(
      std::string_view path) override;
  absl::StatusOr<std::unique_ptr<SequentialFile>> NewSequentialFile(
      std::string_view path) override;
  bool FileExists(std::string_view path) override;
  absl::StatusOr<std::vector<std::string>> GetChildren(
      std::string_view dir) override;
  absl::Status RemoveFile(std::string_view path) override;
  absl::Status RenameFile(std::string_view from, std::string_view to) override;
  absl::Status CreateDir(std::string_view dir) override;
  absl::Status SyncDir(std::string_view dir) override;
  absl::StatusOr<uint64_t> GetFileSize(std::string_view path) override;
  absl::StatusOr<std::unique_ptr<FileLock>> LockFile(
      std::string_view path) override;
  absl::Status UnlockFile(std::unique_ptr<FileLock> lock) override;

  // --- Fault injection ----------------------------------------------------

  // The number of counted calls so far (since construction or the last
  // ResetCallCount): the index the next call will get.
  uint64_t call_count() const ABSL_LOCKS_EXCLUDED(mu_);
  void ResetCallCount() ABSL_LOCKS_EXCLUDED(mu_);

  // Arms a fault: counted call `call_index` fails with `code` (not kOk), and
  // with FaultMode::kPersistent every later call too. Replaces any armed
  // fault.
  void InjectFault(uint64_t call_index, absl::StatusCode code,
                   FaultMode mode = FaultMode::kOnce) ABSL_LOCKS_EXCLUDED(mu_);
  // Disarms the fault; calls succeed again.
  void ClearFault() ABSL_LOCKS_EXCLUDED(mu_);
  // How many calls failed by injection since construction.
  uint64_t faults_injected() const ABSL_LOCKS_EXCLUDED(mu_);

  // Runs `hook(path)` at the start of every NewWritableFile, before the call
  // is counted and with no lock of this env held, so that a test can act in
  // the middle of the caller's work (say, while the log starts a segment).
  // An empty function removes it.
  void SetCreateHook(std::function<void(std::string_view path)> hook)
      ABSL_LOCKS_EXCLUDED(mu_);

  // --- Crashes --------------------------------------------------------------

  // Simulates a crash as the model above describes. Any armed fault stays
  // armed; the call count is not reset.
  void SimulateCrash(CrashKind kind = CrashKind::kPowerLoss)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Starts the process again after a crash: calls succeed again (those of
  // handles opened before it stay stale). A no-op when it is not down.
  void Restart() ABSL_LOCKS_EXCLUDED(mu_);
  bool down() const ABSL_LOCKS_EXCLUDED(mu_);

  // --- Test helpers (not counted, never failed by injection) ----------------

  // The flushed contents of file `path`. kNotFound when it does not exist.
  absl::StatusOr<std::string> GetContents(std::string_view path) const
      ABSL_LOCKS_EXCLUDED(mu_);

  // Replaces the contents of file `path` (creating it if needed, in an
  // existing directory), to corrupt or forge files. With `durable`, the new
  // contents and the file's name are durable at once; otherwise they are
  // flushed only.
  absl::Status SetContents(std::string_view path, std::string_view contents,
                           bool durable) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Inode;
  class MemWritableFile;
  class MemSequentialFile;
  class MemFileLock;
  using Namespace = std::map<std::string, std::shared_ptr<Inode>, std::less<>>;

  // Counts a call; returns the injected error for it, if any.
  absl::Status CountCall(std::string_view operation, std::string_view path)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool DirExists(std::string_view dir) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckParentDir(std::string_view operation,
                              std::string_view path) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::unique_ptr<WritableFile>> OpenWritable(
      std::string_view path, bool truncate) ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status StaleHandle(std::string_view operation,
                           std::string_view path) const;
  void ReleaseLock(const std::string& path, uint64_t generation)
      ABSL_LOCKS_EXCLUDED(mu_);

  mutable Mutex mu_;
  Namespace live_ ABSL_GUARDED_BY(mu_);
  Namespace durable_ ABSL_GUARDED_BY(mu_);
  std::set<std::string, std::less<>> dirs_ ABSL_GUARDED_BY(mu_);
  std::set<std::string, std::less<>> locked_ ABSL_GUARDED_BY(mu_);
  // Incremented by every crash; handles from an older generation are stale.
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  // Between a crash and Restart().
  bool down_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t calls_ ABSL_GUARDED_BY(mu_) = 0;
  bool fault_armed_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t fault_index_ ABSL_GUARDED_BY(mu_) = 0;
  absl::StatusCode fault_code_ ABSL_GUARDED_BY(mu_) = absl::StatusCode::kOk;
  FaultMode fault_mode_ ABSL_GUARDED_BY(mu_) = FaultMode::kOnce;
  uint64_t faults_injected_ ABSL_GUARDED_BY(mu_) = 0;
  std::function<void(std::string_view)> create_hook_ ABSL_GUARDED_BY(mu_);
};

}  // namespace warren::internal

#endif  // WARREN_SRC_FAULT_INJECTION_ENV_H_
