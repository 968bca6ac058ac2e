// Env::Posix(): the file-system seam over the real file system (env.h).

#include "env.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "log_reader.h"
#include "log_writer.h"

namespace warren::internal {
namespace {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents.
class TempDir {
 public:
  TempDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern =
        std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") +
        "/warren_env_test.XXXXXX";
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string Child(std::string_view name) const {
    return path_ + "/" + std::string(name);
  }

 private:
  std::string path_;
};

bool Contains(std::string_view text, std::string_view needle) {
  return text.find(needle) != std::string_view::npos;
}

std::string Message(const absl::Status& s) { return std::string(s.message()); }

void WriteFile(Env* env, const std::string& path, std::string_view data) {
  auto file = env->NewWritableFile(path);
  REQUIRE(file.ok());
  REQUIRE((*file)->Append(data).ok());
  REQUIRE((*file)->Sync().ok());
  REQUIRE((*file)->Close().ok());
}

std::string ReadFile(Env* env, const std::string& path) {
  auto file = env->NewSequentialFile(path);
  REQUIRE(file.ok());
  std::string contents;
  std::string scratch;
  for (;;) {
    std::string_view chunk;
    REQUIRE((*file)->Read(4096, &scratch, &chunk).ok());
    if (chunk.empty()) break;
    contents.append(chunk);
  }
  return contents;
}

// The records of the log file `path`, read back with checksums; `*tail`
// gets the reader's torn tail.
std::vector<std::string> ReadLog(Env* env, const std::string& path,
                                 log::Reader::ByteRange* tail = nullptr) {
  auto file = env->NewSequentialFile(path);
  REQUIRE(file.ok());
  log::Reader reader(file->get(), nullptr, /*checksum=*/true);
  std::vector<std::string> read;
  std::string scratch;
  std::string_view record;
  while (reader.ReadRecord(&record, &scratch)) read.emplace_back(record);
  CHECK(reader.status().ok());
  if (tail != nullptr) *tail = reader.torn_tail();
  return read;
}

mode_t Permissions(const std::string& path) {
  struct stat st;
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 0777;
}

TEST_CASE("EnvTest.PosixWriteReadRoundTrip", "[env]") {
  Env* env = Env::Posix();
  TempDir dir;
  const std::string path = dir.Child("file");
  const std::string big(100000, 'x');  // Larger than the write buffer.

  auto file = env->NewWritableFile(path);
  REQUIRE(file.ok());
  REQUIRE((*file)->Append("hello ").ok());
  REQUIRE((*file)->Append(big).ok());
  REQUIRE((*file)->Append("world").ok());
  REQUIRE((*file)->Flush().ok());
  REQUIRE((*file)->Sync().ok());
  REQUIRE((*file)->Close().ok());
  CHECK((*file)->Close().code() == absl::StatusCode::kFailedPrecondition);
  CHECK((*file)->Append("more").code() ==
        absl::StatusCode::kFailedPrecondition);

  auto size = env->GetFileSize(path);
  REQUIRE(size.ok());
  CHECK(*size == 6 + big.size() + 5);

  auto in = env->NewSequentialFile(path);
  REQUIRE(in.ok());
  std::string scratch;
  std::string_view result;
  REQUIRE((*in)->Read(6, &scratch, &result).ok());
  CHECK(result == "hello ");
  REQUIRE((*in)->Skip(big.size()).ok());
  REQUIRE((*in)->Read(100, &scratch, &result).ok());
  CHECK(result == "world");  // Short only at the end of the file.
  REQUIRE((*in)->Read(100, &scratch, &result).ok());
  CHECK(result.empty());
  REQUIRE((*in)->Skip(10).ok());  // Past the end is not an error.

  // NewAppendableFile appends; NewWritableFile truncates.
  auto appendable = env->NewAppendableFile(path);
  REQUIRE(appendable.ok());
  REQUIRE((*appendable)->Append("!").ok());
  REQUIRE((*appendable)->Close().ok());
  CHECK(ReadFile(env, path) == "hello " + big + "world!");
  WriteFile(env, path, "new");
  CHECK(ReadFile(env, path) == "new");
}

TEST_CASE("EnvTest.PosixUnclosedFileIsFlushedOnDestruction", "[env]") {
  Env* env = Env::Posix();
  TempDir dir;
  const std::string path = dir.Child("file");
  {
    auto file = env->NewWritableFile(path);
    REQUIRE(file.ok());
    REQUIRE((*file)->Append("buffered").ok());
  }
  CHECK(ReadFile(env, path) == "buffered");
}

TEST_CASE("EnvTest.PosixFilesAre0600AndDirectories0700", "[env]") {
  Env* env = Env::Posix();
  TempDir dir;
  const mode_t old_umask = ::umask(0);  // Show the modes themselves.
  WriteFile(env, dir.Child("file"), "data");
  auto appendable = env->NewAppendableFile(dir.Child("appended"));
  REQUIRE(appendable.ok());
  REQUIRE(env->CreateDir(dir.Child("sub")).ok());
  auto lock = env->LockFile(dir.Child("LOCK"));
  REQUIRE(lock.ok());
  ::umask(old_umask);
  CHECK(Permissions(dir.Child("file")) == 0600);
  CHECK(Permissions(dir.Child("appended")) == 0600);
  CHECK(Permissions(dir.Child("LOCK")) == 0600);
  CHECK(Permissions(dir.Child("sub")) == 0700);
  CHECK(env->UnlockFile(*std::move(lock)).ok());
}

TEST_CASE("EnvTest.PosixLockFileTwiceFails", "[env]") {
  Env* env = Env::Posix();
  TempDir dir;
  const std::string path = dir.Child("LOCK");
  auto first = env->LockFile(path);
  REQUIRE(first.ok());

  // The same path from the same process: refused by the table of locks.
  auto second = env->LockFile(path);
  REQUIRE(second.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(Contains(Message(second.status()), path));

  // Another spelling of the same file: refused by flock(2) itself.
  auto alias = env->LockFile(dir.path() + "//LOCK");
  CHECK(alias.status().code() == absl::StatusCode::kFailedPrecondition);

  REQUIRE(env->UnlockFile(*std::move(first)).ok());
  auto third = env->LockFile(path);
  REQUIRE(third.ok());
  third->reset();  // Destroying the lock releases it too.
  auto fourth = env->LockFile(path);
  REQUIRE(fourth.ok());
  CHECK(env->UnlockFile(*std::move(fourth)).ok());
}

TEST_CASE("EnvTest.PosixRenameAndSyncDir", "[env]") {
  Env* env = Env::Posix();
  TempDir dir;
  WriteFile(env, dir.Child("a.tmp"), "contents");
  WriteFile(env, dir.Child("b"), "old");
  REQUIRE(env->RenameFile(dir.Child("a.tmp"), dir.Child("b")).ok());
  REQUIRE(env->SyncDir(dir.path()).ok());
  CHECK_FALSE(env->FileExists(dir.Child("a.tmp")));
  CHECK(env->FileExists(dir.Child("b")));
  CHECK(ReadFile(env, dir.Child("b")) == "contents");

  REQUIRE(env->CreateDir(dir.Child("sub")).ok());
  auto children = env->GetChildren(dir.path());
  REQUIRE(children.ok());
  std::sort(children->begin(), children->end());
  CHECK(*children == std::vector<std::string>{"b", "sub"});

  REQUIRE(env->RemoveFile(dir.Child("b")).ok());
  REQUIRE(env->SyncDir(dir.path()).ok());
  CHECK_FALSE(env->FileExists(dir.Child("b")));
}

TEST_CASE("EnvTest.PosixMissingFileIsNotFound", "[env]") {
  Env* env = Env::Posix();
  TempDir dir;
  const std::string missing = dir.Child("missing");
  const std::string in_missing_dir = dir.Child("no/such/file");

  auto in = env->NewSequentialFile(missing);
  REQUIRE(in.status().code() == absl::StatusCode::kNotFound);
  CHECK(Contains(Message(in.status()), missing));
  CHECK(Contains(Message(in.status()), "No such file or directory"));

  CHECK(env->GetFileSize(missing).status().code() ==
        absl::StatusCode::kNotFound);
  CHECK(env->RemoveFile(missing).code() == absl::StatusCode::kNotFound);
  CHECK(env->RenameFile(missing, dir.Child("x")).code() ==
        absl::StatusCode::kNotFound);
  CHECK(env->GetChildren(missing).status().code() ==
        absl::StatusCode::kNotFound);
  CHECK(env->SyncDir(missing).code() == absl::StatusCode::kNotFound);
  CHECK(env->NewWritableFile(in_missing_dir).status().code() ==
        absl::StatusCode::kNotFound);
  CHECK(env->LockFile(in_missing_dir).status().code() ==
        absl::StatusCode::kNotFound);
  CHECK(env->CreateDir(in_missing_dir).code() == absl::StatusCode::kNotFound);
  CHECK(env->CreateDir(dir.path()).code() == absl::StatusCode::kAlreadyExists);
  CHECK_FALSE(env->FileExists(missing));
}

TEST_CASE("EnvTest.PosixDiskFullIsResourceExhausted", "[env]") {
  // Writes to /dev/full fail with ENOSPC.
  Env* env = Env::Posix();
  if (::access("/dev/full", W_OK) != 0) {
    WARN("/dev/full is not writable here; skipped");
    return;
  }
  auto file = env->NewAppendableFile("/dev/full");
  REQUIRE(file.ok());
  REQUIRE((*file)->Append("data").ok());  // Buffered.
  const absl::Status s = (*file)->Flush();
  CHECK(s.code() == absl::StatusCode::kResourceExhausted);
  CHECK(Contains(Message(s), "/dev/full"));
  CHECK(Contains(Message(s), "No space left on device"));
}

TEST_CASE("EnvTest.ErrnoToStatusMapsCodes", "[env]") {
  struct Case {
    int err;
    absl::StatusCode code;
  };
  for (const Case& c : {Case{ENOSPC, absl::StatusCode::kResourceExhausted},
                        Case{EDQUOT, absl::StatusCode::kResourceExhausted},
                        Case{EFBIG, absl::StatusCode::kResourceExhausted},
                        Case{ENOENT, absl::StatusCode::kNotFound},
                        Case{ENOTDIR, absl::StatusCode::kNotFound},
                        Case{EEXIST, absl::StatusCode::kAlreadyExists},
                        Case{EACCES, absl::StatusCode::kPermissionDenied},
                        Case{EROFS, absl::StatusCode::kPermissionDenied},
                        Case{EIO, absl::StatusCode::kDataLoss},
                        Case{EINVAL, absl::StatusCode::kInternal}}) {
    CAPTURE(c.err);
    const absl::Status s = ErrnoToStatus(c.err, "append", "/wal/1.log");
    CHECK(s.code() == c.code);
    CHECK(Contains(Message(s), "append /wal/1.log: "));
  }
  CHECK(Message(ErrnoToStatus(EIO, "sync", "/f")) ==
        "sync /f: Input/output error");
}

TEST_CASE("EnvTest.PosixLogRoundTrip", "[env]") {
  // The log writer and reader over real files.
  Env* env = Env::Posix();
  TempDir dir;
  const std::string path = dir.Child("000001.log");
  const std::vector<std::string> records = {"first", "",
                                            std::string(70000, 'b'), "last"};
  {
    auto file = env->NewWritableFile(path);
    REQUIRE(file.ok());
    REQUIRE(env->SyncDir(dir.path()).ok());
    log::Writer writer(file->get());
    for (const std::string& r : records) REQUIRE(writer.AddRecord(r).ok());
    REQUIRE(writer.Sync().ok());
    REQUIRE((*file)->Close().ok());
  }
  CHECK(ReadLog(env, path) == records);
}

TEST_CASE(
    "A log file keeps zeroes written ahead of its data and appends over them",
    "[env]") {
  Env* env = Env::Posix();
  TempDir dir;
  const std::string path = dir.Child("000001.log");
  constexpr uint64_t kAhead = 64 << 10;
  auto file = env->NewLogFile(path, kAhead);
  REQUIRE(file.ok());
  const std::string first(1000, 'a');
  REQUIRE((*file)->Append(first).ok());
  // Appended but not synced: no zeroes yet.
  REQUIRE((*file)->Flush().ok());
  CHECK(env->GetFileSize(path).value() == first.size());
  // A sync writes them past the data first.
  REQUIRE((*file)->Sync().ok());
  CHECK(env->GetFileSize(path).value() == first.size() + kAhead);
  std::string contents = ReadFile(env, path);
  CHECK(contents == first + std::string(kAhead, '\0'));

  // Data goes over the zeroes, and a sync that leaves more than half of them
  // writes no more.
  const std::string second(kAhead / 4, 'b');
  REQUIRE((*file)->Append(second).ok());
  REQUIRE((*file)->Sync().ok());
  CHECK(env->GetFileSize(path).value() == first.size() + kAhead);
  contents = ReadFile(env, path);
  CHECK(contents.substr(0, first.size() + second.size()) == first + second);
  CHECK(contents.find_first_not_of('\0', first.size() + second.size()) ==
        std::string::npos);

  // Once half or less is left, the next sync renews them from the data's end.
  const std::string third(kAhead / 2, 'c');
  REQUIRE((*file)->Append(third).ok());
  REQUIRE((*file)->Sync().ok());
  const uint64_t data = first.size() + second.size() + third.size();
  CHECK(env->GetFileSize(path).value() == data + kAhead);
  contents = ReadFile(env, path);
  CHECK(contents.substr(0, data) == first + second + third);
  CHECK(contents.find_first_not_of('\0', data) == std::string::npos);
  // Close leaves the data alone.
  REQUIRE((*file)->Close().ok());
  CHECK(ReadFile(env, path) == first + second + third);

  // Without zeroes ahead it is an ordinary new file.
  auto plain = env->NewLogFile(dir.Child("plain"), 0);
  REQUIRE(plain.ok());
  REQUIRE((*plain)->Append(first).ok());
  REQUIRE((*plain)->Sync().ok());
  CHECK(env->GetFileSize(dir.Child("plain")).value() == first.size());
}

TEST_CASE("A log read back over zeroes written ahead ends at its last record",
          "[env]") {
  Env* env = Env::Posix();
  TempDir dir;
  const std::string path = dir.Child("000001.log");
  const std::vector<std::string> records = {"first", std::string(70000, 'b'),
                                            "last"};
  uint64_t end = 0;
  {
    auto file = env->NewLogFile(path, 256 << 10);
    REQUIRE(file.ok());
    log::Writer writer(file->get());
    for (const std::string& r : records) {
      REQUIRE(writer.AddRecord(r).ok());
      REQUIRE(writer.Sync().ok());
    }
    end = writer.offset();
    // A record cut short by a crash: its first bytes over the zeroes.
    log::Writer torn(file->get(), end);
    REQUIRE(torn.AddRecord(std::string(500, 't')).ok());
    REQUIRE((*file)->Flush().ok());
  }
  {
    // Keep the torn record's header and part of its payload, zeroes after.
    const std::string contents = ReadFile(env, path);
    REQUIRE(contents.size() > end + 100);
    std::string cut = contents.substr(0, end + 100);
    cut.append(contents.size() - cut.size(), '\0');
    auto file = env->NewWritableFile(path);
    REQUIRE(file.ok());
    REQUIRE((*file)->Append(cut).ok());
    REQUIRE((*file)->Close().ok());
  }
  log::Reader::ByteRange tail;
  CHECK(ReadLog(env, path, &tail) == records);
  CHECK(tail.begin == end);
  CHECK(tail.end == env->GetFileSize(path).value());
}

}  // namespace
}  // namespace warren::internal
