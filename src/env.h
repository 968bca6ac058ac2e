// The file-system seam of warren's write-ahead log.
//
// Every file operation of the WAL goes through an `Env`, in the way of
// leveldb's Env, so that tests can swap the real file system for an in-memory
// one that injects faults and simulates crashes (fault_injection_env.h).
//
//   * WritableFile   — an append-only file: Append, Flush, Sync, Close.
//   * SequentialFile — a file read from front to back: Read, Skip.
//   * FileLock       — a held advisory lock on a file (see Env::LockFile).
//   * Env            — opens files and runs directory operations;
//                      Env::Posix() is the real file system.
//
// Durability contract (what each call promises once it returns OK):
//
//   * WritableFile::Append  — the data is in the file object; it may still sit
//                             in a user-space buffer.
//   * WritableFile::Flush   — the data has been handed to the operating
//                             system: it survives a crash of the process
//                             (kill -9), not a power loss.
//   * WritableFile::Sync    — the file's data survives a power loss
//                             (fdatasync).
//   * Env::SyncDir(dir)     — the creation, renaming and removal of the
//                             entries of `dir` survive a power loss (fsync of
//                             the directory). A new file whose directory was
//                             never synced may vanish after a power loss even
//                             though the file itself was synced.
//
// Errors. Every call returns an absl::Status; nothing throws. Codes:
//
//   kNotFound           the file or directory does not exist (ENOENT,
//                       ENOTDIR).
//   kAlreadyExists      CreateDir on an existing path (EEXIST).
//   kResourceExhausted  the device or a quota is full (ENOSPC, EDQUOT,
//                       EFBIG).
//   kPermissionDenied   EACCES, EPERM, EROFS.
//   kFailedPrecondition the lock is already held (LockFile), or the file
//                       object was closed.
//   kDataLoss           the device reported an I/O error (EIO): data written
//                       may be lost.
//   kInternal           any other errno.
//
// Messages name the operation, the path and strerror(errno), e.g.
// "append /var/lib/warren/000007.log: No space left on device".
//
// Files are created with mode 0600 and directories with 0700 (before the
// umask).
//
// Thread-safety: an Env is thread-safe. A WritableFile or SequentialFile is
// thread-compatible: owned by one thread at a time.

#ifndef WARREN_SRC_ENV_H_
#define WARREN_SRC_ENV_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace warren::internal {

// A file opened for appending. Owned by one thread at a time.
//
// After a failed call the file's contents past the last successful Flush are
// unspecified (a prefix of the data may have been written); callers must not
// assume that a failed Append wrote nothing. Once Sync has failed, every later
// Append, Flush and Sync fails with the same status: the kernel may have
// dropped the unsynced data and would report the next fsync as a success.
class WritableFile {
 public:
  WritableFile() = default;
  WritableFile(const WritableFile&) = delete;
  WritableFile& operator=(const WritableFile&) = delete;
  // Closes the file if Close was not called, ignoring errors.
  virtual ~WritableFile() = default;

  // Appends `data` at the end of the file (possibly only into a buffer).
  // kResourceExhausted (disk full), kDataLoss (EIO), kFailedPrecondition
  // (closed), kInternal.
  virtual absl::Status Append(std::string_view data) = 0;

  // Hands buffered data to the operating system. Codes as Append.
  virtual absl::Status Flush() = 0;

  // Flushes, then makes the file's data durable (fdatasync). Codes as Append.
  virtual absl::Status Sync() = 0;

  // Flushes and closes. The file is closed even when an error is returned;
  // later calls return kFailedPrecondition. Codes as Append.
  virtual absl::Status Close() = 0;
};

// A file read from front to back. Owned by one thread at a time.
class SequentialFile {
 public:
  SequentialFile() = default;
  SequentialFile(const SequentialFile&) = delete;
  SequentialFile& operator=(const SequentialFile&) = delete;
  virtual ~SequentialFile() = default;

  // Reads up to `n` bytes. On OK, `*result` holds the bytes read; it points
  // into `*scratch` (which may be resized) or into memory owned by the file
  // that stays valid until the next call. `result->size() < n` only at the end
  // of the file (and 0 at the end). kDataLoss (EIO), kInternal.
  virtual absl::Status Read(size_t n, std::string* scratch,
                            std::string_view* result) = 0;

  // Skips `n` bytes; skipping past the end of the file is not an error (the
  // next Read returns nothing). kInternal.
  virtual absl::Status Skip(uint64_t n) = 0;
};

// A held lock, returned by Env::LockFile; pass it to Env::UnlockFile. If it is
// destroyed without UnlockFile, the lock is released then. Owned by one thread
// at a time.
class FileLock {
 public:
  FileLock() = default;
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  virtual ~FileLock() = default;
};

// Opens files and runs directory operations. Thread-safe.
class Env {
 public:
  Env() = default;
  Env(const Env&) = delete;
  Env& operator=(const Env&) = delete;
  virtual ~Env() = default;

  // The real file system. Never destroyed.
  static Env* Posix();

  // Creates `path` (mode 0600), or truncates it if it exists, for appending.
  virtual absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(
      std::string_view path) = 0;

  // As NewWritableFile, for a log that is synced often: the file may keep up
  // to `zero_ahead` bytes of zeroes written past its data, and appends
  // overwrite them. A Sync writes more, before it syncs, once half of the
  // last run is used (runs double from 64 KiB up to `zero_ahead`); Close
  // truncates the file to its data. A sync of data written over those
  // zeroes need not persist a new file size or newly allocated blocks as
  // well, which on ext4 makes it markedly faster. Until Close, readers see
  // the data followed by zeroes (so does recovery after a crash). If
  // writing the zeroes fails, the file stops writing them and goes on as
  // NewWritableFile's would: they are an optimisation, never an error. 0,
  // and the default implementation, write none.
  virtual absl::StatusOr<std::unique_ptr<WritableFile>> NewLogFile(
      std::string_view path, uint64_t zero_ahead) {
    (void)zero_ahead;
    return NewWritableFile(path);
  }

  // Opens `path` for appending at its end, creating it (mode 0600) if it does
  // not exist.
  virtual absl::StatusOr<std::unique_ptr<WritableFile>> NewAppendableFile(
      std::string_view path) = 0;

  // Opens an existing file for reading. kNotFound when it does not exist.
  virtual absl::StatusOr<std::unique_ptr<SequentialFile>> NewSequentialFile(
      std::string_view path) = 0;

  // Whether `path` exists.
  virtual bool FileExists(std::string_view path) = 0;

  // The names (not paths) of the entries of directory `dir`, without "." and
  // "..", in no particular order. kNotFound when `dir` does not exist.
  virtual absl::StatusOr<std::vector<std::string>> GetChildren(
      std::string_view dir) = 0;

  // Removes the file `path`. kNotFound when it does not exist. Durable only
  // after SyncDir of its directory.
  virtual absl::Status RemoveFile(std::string_view path) = 0;

  // Atomically renames `from` to `to`, replacing `to` if it exists. Durable
  // only after SyncDir of both directories. kNotFound when `from` does not
  // exist.
  virtual absl::Status RenameFile(std::string_view from,
                                  std::string_view to) = 0;

  // Creates directory `dir` (mode 0700); its parent must exist.
  // kAlreadyExists when `dir` exists, kNotFound when its parent does not.
  virtual absl::Status CreateDir(std::string_view dir) = 0;

  // Makes the entries of directory `dir` (files created, renamed or removed
  // in it) durable: fsync of the directory.
  virtual absl::Status SyncDir(std::string_view dir) = 0;

  // The size of file `path` in bytes. kNotFound when it does not exist.
  virtual absl::StatusOr<uint64_t> GetFileSize(std::string_view path) = 0;

  // Takes an exclusive advisory lock on `path`, creating the file (mode 0600)
  // if needed, to keep a second broker away from the same directory.
  // kFailedPrecondition when the lock is held, by another process or by this
  // one (a second LockFile of the same path from the same process fails too).
  virtual absl::StatusOr<std::unique_ptr<FileLock>> LockFile(
      std::string_view path) = 0;

  // Releases a lock returned by LockFile.
  virtual absl::Status UnlockFile(std::unique_ptr<FileLock> lock) = 0;
};

// The status for errno value `err` raised by `operation` on `path`, coded as
// the table above shows; the message is "<operation> <path>: <strerror>".
absl::Status ErrnoToStatus(int err, std::string_view operation,
                           std::string_view path);

}  // namespace warren::internal

#endif  // WARREN_SRC_ENV_H_
