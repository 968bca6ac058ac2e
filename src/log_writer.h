// log::Writer: appends user records to a write-ahead log file in the format of
// log_format.h.
//
//   std::unique_ptr<WritableFile> file = env->NewWritableFile(path).value();
//   log::Writer writer(file.get());
//   absl::Status s = writer.AddRecord(payload);   // in the OS after this
//   if (s.ok()) s = writer.Sync();                // on disk after this
//
// Durability: the writer never syncs by itself. When AddRecord returns OK the
// record has been handed to the operating system (WritableFile::Flush) and
// survives a crash of the process; it survives a power loss once a later
// Sync returns OK. Syncing after one record or after many (group commit) is
// the caller's choice.
//
// Errors are sticky. After any failed call the file's tail holds an unknown
// part of the record being written, and appending further records behind it
// would turn that torn record into damage in the middle of the log, which a
// reader reports as corruption. So once a call fails, every later AddRecord and
// Sync returns the same status without touching the file: the caller must
// stop using this file and start a new one. What was synced before the error
// stays readable; the torn record is read back as a clean end (a torn tail).
//
// For the same reason a writer must only continue a file (`dest_length` > 0)
// whose contents end with complete records; never append to a file whose
// tail a reader found torn (start a new file instead).
//
// Thread-compatible: owned by one thread at a time.

#ifndef WARREN_SRC_LOG_WRITER_H_
#define WARREN_SRC_LOG_WRITER_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "env.h"
#include "log_format.h"

namespace warren::internal::log {

class Writer {
 public:
  // Appends to `dest`, which must be `dest_length` bytes long and end with a
  // complete record (or be empty). `dest` must outlive the writer.
  explicit Writer(WritableFile* dest, uint64_t dest_length = 0);
  Writer(const Writer&) = delete;
  Writer& operator=(const Writer&) = delete;

  // Appends `payload` as one user record (fragmented across blocks as
  // needed) and flushes it to the operating system. Returns the status of the
  // first failed Append or Flush, as WritableFile returns it
  // (kResourceExhausted, kDataLoss, ...), or the sticky error of an earlier
  // call. With `flush` false the record may stay in the file's buffer until
  // the next Flush (or a flushing AddRecord, or Sync): several records then
  // reach the operating system in one write.
  absl::Status AddRecord(std::string_view payload, bool flush = true);

  // Hands buffered records to the operating system.
  absl::Status Flush();

  // Makes every record added so far durable (WritableFile::Sync). Returns the
  // file's status, or the sticky error of an earlier call.
  absl::Status Sync();

  // The file offset at which the next record will start (the file's length
  // if every call succeeded).
  uint64_t offset() const { return offset_; }

  // OK, or the first error, which every later call returns.
  const absl::Status& status() const { return status_; }

 private:
  absl::Status EmitPhysicalRecord(RecordType type, std::string_view fragment);
  absl::Status Fail(absl::Status s);

  WritableFile* const dest_;
  // The file offset where the next physical record or trailer goes.
  uint64_t offset_;
  // Bytes used in the current block: offset_ % kBlockSize.
  size_t block_offset_;
  absl::Status status_;
};

}  // namespace warren::internal::log

#endif  // WARREN_SRC_LOG_WRITER_H_
