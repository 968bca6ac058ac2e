// Env::Posix(): the real file system, over POSIX system calls.
//
// Writable files buffer up to 64 KiB in user space (as leveldb's do), so that
// a log writer's header and payload appends become one write(2). Locks are
// flock(2) locks, which belong to an open file description: unlike fcntl(2)
// locks they are not dropped when another descriptor of the same file is
// closed. A table of the paths this process has locked also refuses a second
// lock of the same path from this process, whatever the lock primitive does.

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "env.h"
#include "str_util.h"
#include "sync.h"

namespace warren::internal {

namespace {

constexpr mode_t kFileMode = 0600;
constexpr mode_t kDirMode = 0700;
constexpr size_t kWritableFileBufferSize = 64 * 1024;

// strerror_r comes in a GNU flavour (returns the message) and an XSI flavour
// (fills the buffer); these overloads accept either.
[[maybe_unused]] const char* StrErrorResult(const char* message,
                                            const char* /*buffer*/) {
  return message;
}
[[maybe_unused]] const char* StrErrorResult(int rc, const char* buffer) {
  return rc == 0 ? buffer : "unknown error";
}

std::string StrError(int err) {
  char buffer[256] = {};
  return StrErrorResult(strerror_r(err, buffer, sizeof(buffer)), buffer);
}

// Paths are passed to the C library, which needs NUL-terminated strings.
std::string CPath(std::string_view path) { return std::string(path); }

class PosixWritableFile final : public WritableFile {
 public:
  // `zero_ahead`: see Env::NewLogFile (0 for none); only for a file
  // written from its start.
  PosixWritableFile(std::string path, int fd, uint64_t zero_ahead = 0)
      : path_(std::move(path)), fd_(fd), zero_ahead_(zero_ahead) {}

  ~PosixWritableFile() override {
    if (fd_ >= 0) (void)Close();
  }

  absl::Status Append(std::string_view data) override {
    if (absl::Status s = CheckUsable(); !s.ok()) return s;
    const size_t copied = std::min(data.size(), kWritableFileBufferSize - pos_);
    std::memcpy(buffer_ + pos_, data.data(), copied);
    pos_ += copied;
    data.remove_prefix(copied);
    if (data.empty()) return absl::OkStatus();
    if (absl::Status s = FlushBuffer(); !s.ok()) return s;
    if (data.size() < kWritableFileBufferSize) {
      std::memcpy(buffer_, data.data(), data.size());
      pos_ = data.size();
      return absl::OkStatus();
    }
    return WriteUnbuffered(data);
  }

  absl::Status Flush() override {
    if (absl::Status s = CheckUsable(); !s.ok()) return s;
    return FlushBuffer();
  }

  absl::Status Sync() override {
    if (absl::Status s = CheckUsable(); !s.ok()) return s;
    if (absl::Status s = FlushBuffer(); !s.ok()) return s;
    ZeroAhead();
    if (::fdatasync(fd_) != 0) {
      // After a failed fsync the kernel may have dropped the dirty pages and
      // report success next time: remember the failure for good.
      sync_error_ = ErrnoToStatus(errno, "sync", path_);
      return sync_error_;
    }
    return absl::OkStatus();
  }

  absl::Status Close() override {
    if (fd_ < 0) return Closed();
    absl::Status s = sync_error_.ok() ? FlushBuffer() : sync_error_;
    // A closed log keeps no zeroes past its data (they served its syncs);
    // should the truncation fail, or not survive a power cut, they read as
    // unused space.
    if (zeroed_end_ > end_) (void)::ftruncate(fd_, static_cast<off_t>(end_));
    if (::close(fd_) != 0 && s.ok()) s = ErrnoToStatus(errno, "close", path_);
    fd_ = -1;
    return s;
  }

 private:
  absl::Status Closed() const {
    return absl::FailedPreconditionError(
        StrCat("append ", path_, ": the file is closed"));
  }

  absl::Status CheckUsable() const {
    if (fd_ < 0) return Closed();
    return sync_error_;
  }

  absl::Status FlushBuffer() {
    const size_t size = pos_;
    // On error the buffered bytes are dropped: the file's tail is
    // unspecified after a failed write, as the WritableFile contract says.
    pos_ = 0;
    return WriteUnbuffered(std::string_view(buffer_, size));
  }

  absl::Status WriteUnbuffered(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::write(fd_, data.data(), data.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        return ErrnoToStatus(errno, "append", path_);
      }
      data.remove_prefix(static_cast<size_t>(n));
      end_ += static_cast<uint64_t>(n);
    }
    return absl::OkStatus();
  }

  // Keeps zeroes written past the data, up to zero_ahead_ bytes beyond it,
  // so that the next syncs find the file's size and blocks already durable
  // (see Env::NewLogFile). Renewed once half of a run is used, with pwrite,
  // which leaves the file position (where the next append goes) alone. A
  // failure stops it for good and is otherwise ignored: the zeroes past the
  // data, however many were written, read as unused space.
  void ZeroAhead() {
    if (zero_ahead_ == 0 || end_ + run_ / 2 < zeroed_end_) return;
    static constexpr char kZeroes[64 << 10] = {};
    // The run doubles from 64 KiB up to zero_ahead_, so a short-lived file
    // writes few zeroes.
    run_ = std::min(zero_ahead_, run_ == 0 ? sizeof(kZeroes) : 2 * run_);
    uint64_t at = std::max(end_, zeroed_end_);
    const uint64_t until = end_ + run_;
    while (at < until) {
      const size_t n =
          static_cast<size_t>(std::min<uint64_t>(sizeof(kZeroes), until - at));
      const ssize_t w = ::pwrite(fd_, kZeroes, n, static_cast<off_t>(at));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        zero_ahead_ = 0;
        return;
      }
      at += static_cast<uint64_t>(w);
    }
    zeroed_end_ = until;
  }

  const std::string path_;
  int fd_;
  absl::Status sync_error_;
  uint64_t zero_ahead_;      // 0 once writing zeroes failed
  uint64_t run_ = 0;         // zeroes written ahead at the last renewal
  uint64_t end_ = 0;         // bytes of data handed to the file system
  uint64_t zeroed_end_ = 0;  // zeroes are written up to here (when > end_)
  size_t pos_ = 0;
  char buffer_[kWritableFileBufferSize];
};

class PosixSequentialFile final : public SequentialFile {
 public:
  PosixSequentialFile(std::string path, int fd)
      : path_(std::move(path)), fd_(fd) {}
  ~PosixSequentialFile() override { ::close(fd_); }

  absl::Status Read(size_t n, std::string* scratch,
                    std::string_view* result) override {
    scratch->resize(n);
    size_t done = 0;
    while (done < n) {
      const ssize_t r = ::read(fd_, scratch->data() + done, n - done);
      if (r < 0) {
        if (errno == EINTR) continue;
        *result = {};
        return ErrnoToStatus(errno, "read", path_);
      }
      if (r == 0) break;  // End of file.
      done += static_cast<size_t>(r);
    }
    *result = std::string_view(scratch->data(), done);
    return absl::OkStatus();
  }

  absl::Status Skip(uint64_t n) override {
    if (::lseek(fd_, static_cast<off_t>(n), SEEK_CUR) ==
        static_cast<off_t>(-1)) {
      return ErrnoToStatus(errno, "skip in", path_);
    }
    return absl::OkStatus();
  }

 private:
  const std::string path_;
  const int fd_;
};

// The paths locked by this process. Thread-safe.
class LockTable {
 public:
  bool Insert(const std::string& path) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    return paths_.insert(path).second;
  }
  void Remove(const std::string& path) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(&mu_);
    paths_.erase(path);
  }

 private:
  Mutex mu_;
  std::set<std::string, std::less<>> paths_ ABSL_GUARDED_BY(mu_);
};

class PosixFileLock final : public FileLock {
 public:
  PosixFileLock(LockTable* table, std::string path, int fd)
      : table_(table), path_(std::move(path)), fd_(fd) {}
  ~PosixFileLock() override { (void)Release(); }

  absl::Status Release() {
    if (fd_ < 0) return absl::OkStatus();
    absl::Status s;
    if (::flock(fd_, LOCK_UN) != 0) s = ErrnoToStatus(errno, "unlock", path_);
    ::close(fd_);  // Closing the descriptor releases the lock in any case.
    fd_ = -1;
    table_->Remove(path_);
    return s;
  }

 private:
  LockTable* const table_;
  const std::string path_;
  int fd_;
};

class PosixEnv final : public Env {
 public:
  absl::StatusOr<std::unique_ptr<WritableFile>> NewWritableFile(
      std::string_view path) override {
    return OpenWritable(path, O_TRUNC, "create");
  }

  absl::StatusOr<std::unique_ptr<WritableFile>> NewLogFile(
      std::string_view path, uint64_t zero_ahead) override {
    return OpenWritable(path, O_TRUNC, "create", zero_ahead);
  }

  absl::StatusOr<std::unique_ptr<WritableFile>> NewAppendableFile(
      std::string_view path) override {
    return OpenWritable(path, O_APPEND, "open for appending");
  }

  absl::StatusOr<std::unique_ptr<SequentialFile>> NewSequentialFile(
      std::string_view path) override {
    std::string p = CPath(path);
    const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoToStatus(errno, "open", p);
    // Read front to back: ask for a large readahead, and start reading the
    // whole file now (both are hints; a failure changes nothing).
    (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED);
    return std::make_unique<PosixSequentialFile>(std::move(p), fd);
  }

  bool FileExists(std::string_view path) override {
    return ::access(CPath(path).c_str(), F_OK) == 0;
  }

  absl::StatusOr<std::vector<std::string>> GetChildren(
      std::string_view dir) override {
    const std::string d = CPath(dir);
    DIR* handle = ::opendir(d.c_str());
    if (handle == nullptr) return ErrnoToStatus(errno, "list", d);
    std::vector<std::string> names;
    for (;;) {
      errno = 0;
      const struct dirent* entry = ::readdir(handle);
      if (entry == nullptr) break;
      const std::string_view name = entry->d_name;
      if (name != "." && name != "..") names.emplace_back(name);
    }
    const int err = errno;
    ::closedir(handle);
    if (err != 0) return ErrnoToStatus(err, "list", d);
    return names;
  }

  absl::Status RemoveFile(std::string_view path) override {
    const std::string p = CPath(path);
    if (::unlink(p.c_str()) != 0) return ErrnoToStatus(errno, "remove", p);
    return absl::OkStatus();
  }

  absl::Status RenameFile(std::string_view from, std::string_view to) override {
    const std::string f = CPath(from);
    const std::string t = CPath(to);
    if (::rename(f.c_str(), t.c_str()) != 0) {
      return ErrnoToStatus(errno, "rename", StrCat(f, " to ", t));
    }
    return absl::OkStatus();
  }

  absl::Status CreateDir(std::string_view dir) override {
    const std::string d = CPath(dir);
    if (::mkdir(d.c_str(), kDirMode) != 0) {
      return ErrnoToStatus(errno, "create directory", d);
    }
    return absl::OkStatus();
  }

  absl::Status SyncDir(std::string_view dir) override {
    const std::string d = CPath(dir);
    const int fd = ::open(d.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ErrnoToStatus(errno, "sync directory", d);
    absl::Status s;
    if (::fsync(fd) != 0) s = ErrnoToStatus(errno, "sync directory", d);
    ::close(fd);
    return s;
  }

  absl::StatusOr<uint64_t> GetFileSize(std::string_view path) override {
    const std::string p = CPath(path);
    struct stat st;
    if (::stat(p.c_str(), &st) != 0) return ErrnoToStatus(errno, "stat", p);
    return static_cast<uint64_t>(st.st_size);
  }

  absl::StatusOr<std::unique_ptr<FileLock>> LockFile(
      std::string_view path) override {
    std::string p = CPath(path);
    if (!locks_.Insert(p)) {
      return absl::FailedPreconditionError(
          StrCat("lock ", p, ": already held by this process"));
    }
    const int fd = ::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, kFileMode);
    if (fd < 0) {
      absl::Status s = ErrnoToStatus(errno, "lock", p);
      locks_.Remove(p);
      return s;
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      ::close(fd);
      locks_.Remove(p);
      if (err == EWOULDBLOCK) {
        return absl::FailedPreconditionError(
            StrCat("lock ", p, ": held by another process"));
      }
      return ErrnoToStatus(err, "lock", p);
    }
    return std::make_unique<PosixFileLock>(&locks_, std::move(p), fd);
  }

  absl::Status UnlockFile(std::unique_ptr<FileLock> lock) override {
    // Precondition: `lock` came from this Env's LockFile.
    return static_cast<PosixFileLock*>(lock.get())->Release();
  }

 private:
  // `zero_ahead`: see NewLogFile; only with O_TRUNC.
  absl::StatusOr<std::unique_ptr<WritableFile>> OpenWritable(
      std::string_view path, int mode_flag, std::string_view operation,
      uint64_t zero_ahead = 0) {
    std::string p = CPath(path);
    const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | mode_flag,
                          kFileMode);
    if (fd < 0) return ErrnoToStatus(errno, operation, p);
    return std::make_unique<PosixWritableFile>(std::move(p), fd, zero_ahead);
  }

  LockTable locks_;
};

}  // namespace

absl::Status ErrnoToStatus(int err, std::string_view operation,
                           std::string_view path) {
  const std::string message = StrCat(operation, " ", path, ": ", StrError(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return absl::NotFoundError(message);
    case EEXIST:
      return absl::AlreadyExistsError(message);
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
      return absl::ResourceExhaustedError(message);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(message);
    case EIO:
      return absl::DataLossError(message);
    default:
      return absl::InternalError(message);
  }
}

Env* Env::Posix() {
  static Env* const env = new PosixEnv();
  return env;
}

}  // namespace warren::internal
