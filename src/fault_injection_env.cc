#include "fault_injection_env.h"

#include <cerrno>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "str_util.h"

namespace warren::internal {

namespace {

// The directory part of `path`: "" for a bare name, "/" for "/name".
std::string_view Dirname(std::string_view path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string_view::npos) return "";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string_view Basename(std::string_view path) {
  const size_t slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

}  // namespace

// One file's data. Guarded by the owning FaultInjectionEnv's mu_.
struct FaultInjectionEnv::Inode {
  // The flushed contents, as readers see them.
  std::string data;
  // The durable contents are data[0, synced_size) while `durable_is_prefix`
  // (the file was only appended to since its last Sync), `durable_copy`
  // otherwise (it was truncated since).
  bool durable_is_prefix = true;
  size_t synced_size = 0;
  std::string durable_copy;

  std::string Durable() const {
    return durable_is_prefix ? data.substr(0, synced_size) : durable_copy;
  }
  void MarkDurable() {
    durable_is_prefix = true;
    synced_size = data.size();
    durable_copy = std::string();
  }
  // Empties the flushed contents; the durable ones stay until the next Sync.
  void Truncate() {
    if (durable_is_prefix) {
      durable_copy = data.substr(0, synced_size);
      durable_is_prefix = false;
    }
    data.clear();
  }
  // Power loss: back to the durable contents.
  void Restore() {
    data = Durable();
    MarkDurable();
  }
};

class FaultInjectionEnv::MemWritableFile final : public WritableFile {
 public:
  MemWritableFile(FaultInjectionEnv* env, std::string path,
                  std::shared_ptr<Inode> inode, uint64_t generation)
      : env_(env),
        path_(std::move(path)),
        inode_(std::move(inode)),
        generation_(generation) {}

  // Flushes like the POSIX file's destructor, without counting a call; a
  // persistent fault (a full disk) drops the buffer instead.
  ~MemWritableFile() override {
    MutexLock lock(&env_->mu_);
    if (closed_ || generation_ != env_->generation_ || !sync_error_.ok()) {
      return;
    }
    if (env_->fault_armed_ && env_->fault_mode_ == FaultMode::kPersistent &&
        env_->calls_ > env_->fault_index_) {
      return;
    }
    inode_->data += buffer_;
  }

  absl::Status Append(std::string_view data) override {
    MutexLock lock(&env_->mu_);
    absl::Status s = Begin("append");
    if (s.ok()) {
      buffer_.append(data);
    } else if (injected_) {
      buffer_.append(data.substr(0, data.size() / 2));
    }
    return s;
  }

  absl::Status Flush() override {
    MutexLock lock(&env_->mu_);
    absl::Status s = Begin("flush");
    if (s.ok()) {
      MoveBuffer(buffer_.size());
    } else if (injected_) {
      MoveBuffer(buffer_.size() / 2);
    }
    return s;
  }

  absl::Status Sync() override {
    MutexLock lock(&env_->mu_);
    absl::Status s = Begin("sync");
    if (s.ok()) {
      MoveBuffer(buffer_.size());
      inode_->MarkDurable();
    } else if (injected_) {
      MoveBuffer(buffer_.size());
      sync_error_ = s;
    }
    return s;
  }

  absl::Status Close() override {
    MutexLock lock(&env_->mu_);
    absl::Status s = Begin("close");
    if (s.ok()) {
      MoveBuffer(buffer_.size());
    } else if (injected_) {
      MoveBuffer(buffer_.size() / 2);
    } else if (closed_) {
      return s;
    }
    buffer_.clear();
    closed_ = true;
    return s;
  }

 private:
  // Counts the call, then checks the handle. Sets `injected_` when the error
  // returned is an injected fault (whose effects the caller then applies).
  absl::Status Begin(std::string_view operation)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(env_->mu_) {
    injected_ = false;
    absl::Status fault = env_->CountCall(operation, path_);
    if (generation_ != env_->generation_) {
      return env_->StaleHandle(operation, path_);
    }
    if (closed_) {
      return absl::FailedPreconditionError(
          StrCat(operation, " ", path_, ": the file is closed"));
    }
    if (!fault.ok()) {
      injected_ = true;
      return fault;
    }
    return sync_error_;
  }

  void MoveBuffer(size_t n) ABSL_EXCLUSIVE_LOCKS_REQUIRED(env_->mu_) {
    inode_->data.append(buffer_, 0, n);
    buffer_.clear();
  }

  FaultInjectionEnv* const env_;
  const std::string path_;
  const std::shared_ptr<Inode> inode_;
  const uint64_t generation_;
  std::string buffer_;
  bool closed_ = false;
  bool injected_ = false;
  absl::Status sync_error_;
};

class FaultInjectionEnv::MemSequentialFile final : public SequentialFile {
 public:
  MemSequentialFile(FaultInjectionEnv* env, std::string path,
                    std::shared_ptr<Inode> inode, uint64_t generation)
      : env_(env),
        path_(std::move(path)),
        inode_(std::move(inode)),
        generation_(generation) {}

  absl::Status Read(size_t n, std::string* scratch,
                    std::string_view* result) override {
    MutexLock lock(&env_->mu_);
    *result = {};
    absl::Status s = env_->CountCall("read", path_);
    if (generation_ != env_->generation_) {
      return env_->StaleHandle("read", path_);
    }
    if (!s.ok()) return s;
    const std::string& data = inode_->data;
    const size_t available = pos_ < data.size() ? data.size() - pos_ : 0;
    const size_t k = n < available ? n : available;
    scratch->assign(data, pos_ < data.size() ? pos_ : data.size(), k);
    pos_ += k;
    *result = *scratch;
    return absl::OkStatus();
  }

  absl::Status Skip(uint64_t n) override {
    MutexLock lock(&env_->mu_);
    absl::Status s = env_->CountCall("skip in", path_);
    if (generation_ != env_->generation_) {
      return env_->StaleHandle("skip in", path_);
    }
    if (!s.ok()) return s;
    pos_ += n;
    return absl::OkStatus();
  }

 private:
  FaultInjectionEnv* const env_;
  const std::string path_;
  const std::shared_ptr<Inode> inode_;
  const uint64_t generation_;
  uint64_t pos_ = 0;
};

class FaultInjectionEnv::MemFileLock final : public FileLock {
 public:
  MemFileLock(FaultInjectionEnv* env, std::string path, uint64_t generation)
      : env_(env), path_(std::move(path)), generation_(generation) {}
  ~MemFileLock() override { Release(); }

  const std::string& path() const { return path_; }

  void Release() {
    if (released_) return;
    released_ = true;
    env_->ReleaseLock(path_, generation_);
  }

 private:
  FaultInjectionEnv* const env_;
  const std::string path_;
  const uint64_t generation_;
  bool released_ = false;
};

FaultInjectionEnv::FaultInjectionEnv() = default;
FaultInjectionEnv::~FaultInjectionEnv() = default;

absl::Status FaultInjectionEnv::CountCall(std::string_view operation,
                                          std::string_view path) {
  if (down_) {
    return absl::FailedPreconditionError(
        StrCat(operation, " ", path,
               ": the process crashed (a simulated crash; Restart() first)"));
  }
  const uint64_t index = calls_++;
  if (!fault_armed_) return absl::OkStatus();
  const bool fails =
      index == fault_index_ ||
      (fault_mode_ == FaultMode::kPersistent && index > fault_index_);
  if (!fails) return absl::OkStatus();
  ++faults_injected_;
  return absl::Status(fault_code_, StrCat("injected fault at call #", index,
                                          ": ", operation, " ", path));
}

bool FaultInjectionEnv::DirExists(std::string_view dir) const {
  return dir.empty() || dir == "/" || dirs_.find(dir) != dirs_.end();
}

absl::Status FaultInjectionEnv::CheckParentDir(std::string_view operation,
                                               std::string_view path) const {
  if (!DirExists(Dirname(path))) return ErrnoToStatus(ENOENT, operation, path);
  if (DirExists(path)) return ErrnoToStatus(EISDIR, operation, path);
  return absl::OkStatus();
}

absl::Status FaultInjectionEnv::StaleHandle(std::string_view operation,
                                            std::string_view path) const {
  return absl::FailedPreconditionError(StrCat(
      operation, " ", path, ": stale handle, opened before a simulated crash"));
}

void FaultInjectionEnv::ReleaseLock(const std::string& path,
                                    uint64_t generation) {
  MutexLock lock(&mu_);
  if (generation == generation_) locked_.erase(path);
}

absl::StatusOr<std::unique_ptr<WritableFile>> FaultInjectionEnv::OpenWritable(
    std::string_view path, bool truncate) {
  MutexLock lock(&mu_);
  const std::string_view operation = truncate ? "create" : "open for appending";
  if (absl::Status s = CountCall(operation, path); !s.ok()) return s;
  if (absl::Status s = CheckParentDir(operation, path); !s.ok()) return s;
  auto it = live_.find(path);
  if (it == live_.end()) {
    it = live_.emplace(std::string(path), std::make_shared<Inode>()).first;
  } else if (truncate) {
    it->second->Truncate();
  }
  return std::make_unique<MemWritableFile>(this, std::string(path), it->second,
                                           generation_);
}

absl::StatusOr<std::unique_ptr<WritableFile>>
FaultInjectionEnv::NewWritableFile(std::string_view path) {
  std::function<void(std::string_view)> hook;
  {
    MutexLock lock(&mu_);
    hook = create_hook_;
  }
  if (hook) hook(path);
  return OpenWritable(path, /*truncate=*/true);
}

void FaultInjectionEnv::SetCreateHook(
    std::function<void(std::string_view path)> hook) {
  MutexLock lock(&mu_);
  create_hook_ = std::move(hook);
}

absl::StatusOr<std::unique_ptr<WritableFile>>
FaultInjectionEnv::NewAppendableFile(std::string_view path) {
  return OpenWritable(path, /*truncate=*/false);
}

absl::StatusOr<std::unique_ptr<SequentialFile>>
FaultInjectionEnv::NewSequentialFile(std::string_view path) {
  MutexLock lock(&mu_);
  if (absl::Status s = CountCall("open", path); !s.ok()) return s;
  auto it = live_.find(path);
  if (it == live_.end()) return ErrnoToStatus(ENOENT, "open", path);
  return std::make_unique<MemSequentialFile>(this, std::string(path),
                                             it->second, generation_);
}

bool FaultInjectionEnv::FileExists(std::string_view path) {
  MutexLock lock(&mu_);
  return live_.find(path) != live_.end() || DirExists(path);
}

absl::StatusOr<std::vector<std::string>> FaultInjectionEnv::GetChildren(
    std::string_view dir) {
  MutexLock lock(&mu_);
  if (absl::Status s = CountCall("list", dir); !s.ok()) return s;
  if (!DirExists(dir)) return ErrnoToStatus(ENOENT, "list", dir);
  std::vector<std::string> names;
  for (const auto& [path, inode] : live_) {
    if (Dirname(path) == dir) names.emplace_back(Basename(path));
  }
  for (const std::string& path : dirs_) {
    if (Dirname(path) == dir) names.emplace_back(Basename(path));
  }
  return names;
}

absl::Status FaultInjectionEnv::RemoveFile(std::string_view path) {
  MutexLock lock(&mu_);
  if (absl::Status s = CountCall("remove", path); !s.ok()) return s;
  auto it = live_.find(path);
  if (it == live_.end()) return ErrnoToStatus(ENOENT, "remove", path);
  live_.erase(it);
  return absl::OkStatus();
}

absl::Status FaultInjectionEnv::RenameFile(std::string_view from,
                                           std::string_view to) {
  MutexLock lock(&mu_);
  const std::string what = StrCat(from, " to ", to);
  if (absl::Status s = CountCall("rename", what); !s.ok()) return s;
  auto it = live_.find(from);
  if (it == live_.end()) return ErrnoToStatus(ENOENT, "rename", what);
  if (absl::Status s = CheckParentDir("rename", to); !s.ok()) return s;
  if (from == to) return absl::OkStatus();
  std::shared_ptr<Inode> inode = it->second;
  live_.erase(it);
  live_.insert_or_assign(std::string(to), std::move(inode));
  return absl::OkStatus();
}

absl::Status FaultInjectionEnv::CreateDir(std::string_view dir) {
  MutexLock lock(&mu_);
  if (absl::Status s = CountCall("create directory", dir); !s.ok()) return s;
  if (DirExists(dir) || live_.find(dir) != live_.end()) {
    return ErrnoToStatus(EEXIST, "create directory", dir);
  }
  if (!DirExists(Dirname(dir))) {
    return ErrnoToStatus(ENOENT, "create directory", dir);
  }
  dirs_.emplace(dir);
  return absl::OkStatus();
}

absl::Status FaultInjectionEnv::SyncDir(std::string_view dir) {
  MutexLock lock(&mu_);
  if (absl::Status s = CountCall("sync directory", dir); !s.ok()) return s;
  if (!DirExists(dir)) return ErrnoToStatus(ENOENT, "sync directory", dir);
  for (auto it = durable_.begin(); it != durable_.end();) {
    it = Dirname(it->first) == dir ? durable_.erase(it) : std::next(it);
  }
  for (const auto& [path, inode] : live_) {
    if (Dirname(path) == dir) durable_.emplace(path, inode);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> FaultInjectionEnv::GetFileSize(std::string_view path) {
  MutexLock lock(&mu_);
  if (absl::Status s = CountCall("stat", path); !s.ok()) return s;
  auto it = live_.find(path);
  if (it == live_.end()) return ErrnoToStatus(ENOENT, "stat", path);
  return it->second->data.size();
}

absl::StatusOr<std::unique_ptr<FileLock>> FaultInjectionEnv::LockFile(
    std::string_view path) {
  MutexLock lock(&mu_);
  if (absl::Status s = CountCall("lock", path); !s.ok()) return s;
  if (absl::Status s = CheckParentDir("lock", path); !s.ok()) return s;
  if (locked_.find(path) != locked_.end()) {
    return absl::FailedPreconditionError(
        StrCat("lock ", path, ": already held by this process"));
  }
  if (live_.find(path) == live_.end()) {
    live_.emplace(std::string(path), std::make_shared<Inode>());
  }
  locked_.emplace(path);
  return std::make_unique<MemFileLock>(this, std::string(path), generation_);
}

absl::Status FaultInjectionEnv::UnlockFile(std::unique_ptr<FileLock> lock) {
  // Precondition: `lock` came from this Env's LockFile.
  auto* mem_lock = static_cast<MemFileLock*>(lock.get());
  absl::Status s;
  {
    MutexLock l(&mu_);
    s = CountCall("unlock", mem_lock->path());
  }
  // As with close(2), the lock is released even when the call fails.
  mem_lock->Release();
  return s;
}

uint64_t FaultInjectionEnv::call_count() const {
  MutexLock lock(&mu_);
  return calls_;
}

void FaultInjectionEnv::ResetCallCount() {
  MutexLock lock(&mu_);
  calls_ = 0;
}

void FaultInjectionEnv::InjectFault(uint64_t call_index, absl::StatusCode code,
                                    FaultMode mode) {
  MutexLock lock(&mu_);
  fault_armed_ = code != absl::StatusCode::kOk;
  fault_index_ = call_index;
  fault_code_ = code;
  fault_mode_ = mode;
}

void FaultInjectionEnv::ClearFault() {
  MutexLock lock(&mu_);
  fault_armed_ = false;
}

uint64_t FaultInjectionEnv::faults_injected() const {
  MutexLock lock(&mu_);
  return faults_injected_;
}

void FaultInjectionEnv::SimulateCrash(CrashKind kind) {
  MutexLock lock(&mu_);
  ++generation_;
  down_ = true;
  locked_.clear();
  if (kind == CrashKind::kPowerLoss) {
    // Restore is idempotent, so an inode reachable from both namespaces may
    // be restored twice.
    for (auto& [path, inode] : live_) inode->Restore();
    for (auto& [path, inode] : durable_) inode->Restore();
    live_ = durable_;
  }
}

void FaultInjectionEnv::Restart() {
  MutexLock lock(&mu_);
  down_ = false;
}

bool FaultInjectionEnv::down() const {
  MutexLock lock(&mu_);
  return down_;
}

absl::StatusOr<std::string> FaultInjectionEnv::GetContents(
    std::string_view path) const {
  MutexLock lock(&mu_);
  auto it = live_.find(path);
  if (it == live_.end()) return ErrnoToStatus(ENOENT, "open", path);
  return it->second->data;
}

absl::Status FaultInjectionEnv::SetContents(std::string_view path,
                                            std::string_view contents,
                                            bool durable) {
  MutexLock lock(&mu_);
  if (absl::Status s = CheckParentDir("create", path); !s.ok()) return s;
  auto it = live_.find(path);
  if (it == live_.end()) {
    it = live_.emplace(std::string(path), std::make_shared<Inode>()).first;
  }
  Inode& inode = *it->second;
  inode.Truncate();
  inode.data.assign(contents);
  if (durable) {
    inode.MarkDurable();
    durable_.insert_or_assign(std::string(path), it->second);
  }
  return absl::OkStatus();
}

}  // namespace warren::internal
