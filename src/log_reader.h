// log::Reader: reads user records back from a write-ahead log file in the
// format of log_format.h, telling a torn tail (the crash case) from damage.
//
//   log::Reader reader(file.get(), &reporter, /*checksum=*/true);
//   std::string scratch;
//   std::string_view record;
//   while (reader.ReadRecord(&record, &scratch)) Replay(record);
//   if (!reader.status().ok()) return reader.status();  // kDataLoss or I/O
//
// What the reader decides, for bytes that are not a valid record:
//
//   * Torn tail — a clean end of the log, not reported. The file ends inside a
//     record header or payload; or it ends after a FIRST or MIDDLE fragment
//     whose continuation is missing; or from some offset on it holds only
//     invalid bytes (bad checksum, impossible length, zeroes from
//     preallocation, ...) and no valid record after them. This is what a
//     crash leaves behind: a write cut short. torn_tail() says which bytes
//     were ignored.
//
//   * Damage in the middle — reported, never silently replayed. Invalid bytes
//     followed by a valid record (found by scanning forward byte by byte with
//     the checksum, which covers each record's file offset); and valid records
//     in an impossible order: a MIDDLE or LAST fragment without its FIRST, a
//     FIRST followed by FULL or FIRST, a record of unknown type (its checksum
//     is valid, so it was written deliberately: it is reported even at the
//     end of the file). The damage is reported once, as one byte range
//     [begin, end): from the start of the record it destroyed (the FIRST
//     fragment of a record in progress, or the first invalid byte) to the
//     start of the next record that can be returned, or the end of the file.
//     With OnCorruption::kStop (the default) ReadRecord then returns false
//     and status() is kDataLoss naming the range; with OnCorruption::kSkip it
//     goes on with the next record.
//
// The scan for a valid record after invalid bytes tries every offset up to
// the next valid record (ruling most out by their type byte, eight at a
// time), so it costs time linear in the damaged span, plus a checksum per
// plausible header.
//
// Limitations: damage to the last record of the file (a bit flip in a synced
// record with nothing after it) is indistinguishable from a torn write and is
// read as a torn tail. Conversely, a power loss that persisted unsynced pages
// out of order (a hole of zeroes followed by later, unsynced records) reads
// as damage in the middle and is reported, although only records that were
// never synced are affected (FaultInjectionEnv does not model such holes).
//
// I/O errors from the file are not corruption: ReadRecord returns false and
// status() is the file's error; nothing is reported.
//
// Thread-compatible: owned by one thread at a time.

#ifndef WARREN_SRC_LOG_READER_H_
#define WARREN_SRC_LOG_READER_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "env.h"
#include "log_format.h"

namespace warren::internal::log {

class Reader {
 public:
  // A range of file offsets, [begin, end).
  struct ByteRange {
    uint64_t begin = 0;
    uint64_t end = 0;
    uint64_t size() const { return end - begin; }
    bool empty() const { return begin == end; }
    friend bool operator==(const ByteRange&, const ByteRange&) = default;
  };

  // Receives damage in the middle of the log.
  class Reporter {
   public:
    virtual ~Reporter() = default;
    // Bytes `range` of the file are damaged and were dropped; `bytes` is
    // range.size(). `reason` is kDataLoss and its message names the range and
    // the first cause, e.g. "corrupt log: bytes [32768, 65536) (32768 bytes)
    // damaged: checksum mismatch".
    virtual void Corruption(size_t bytes, const absl::Status& reason,
                            ByteRange range) = 0;
  };

  // The file is read this many blocks at a time (1 MiB): one read per block
  // would cost a system call per 32 KiB.
  static constexpr size_t kBlocksPerRead = 32;

  enum class OnCorruption {
    kStop,  // ReadRecord returns false at the first damage; status() says why.
    kSkip,  // Report the damage and continue with the next valid record.
  };

  // Reads from `src`, reporting damage to `reporter` (may be null). With
  // `checksum` false, records are returned without verifying their checksums
  // (the scan for valid records after damage verifies them regardless).
  // Records whose first fragment starts before file offset `initial_offset`
  // are skipped, silently. `src` and `reporter` must outlive the reader.
  Reader(SequentialFile* src, Reporter* reporter, bool checksum,
         uint64_t initial_offset = 0,
         OnCorruption on_corruption = OnCorruption::kStop);
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  // Reads the next user record into `*record`, which stays valid until the
  // next call (it may point into `*scratch`). Returns false at the end of the
  // log (status() OK, including a torn tail), at damage with
  // OnCorruption::kStop (status() kDataLoss), or on a read error (status() is
  // the file's error); false again on every later call.
  bool ReadRecord(std::string_view* record, std::string* scratch);

  // The file offset of the first fragment of the record last returned.
  uint64_t LastRecordOffset() const { return last_record_offset_; }

  // The file offset just past the last fragment of the record last returned.
  uint64_t EndOfLastRecord() const { return end_of_last_record_; }

  // OK, or why ReadRecord returned false: kDataLoss with the damaged range
  // (OnCorruption::kStop), or the file's read error.
  const absl::Status& status() const { return status_; }

  // Once ReadRecord has returned false with status() OK: the bytes ignored as
  // a torn tail (empty when the log ended cleanly), and why. A writer must not
  // append behind a torn tail (see log_writer.h): start a new file.
  ByteRange torn_tail() const { return torn_tail_; }
  const std::string& torn_tail_reason() const { return torn_tail_reason_; }

  // The total size of the damaged ranges reported so far.
  uint64_t dropped_bytes() const { return dropped_bytes_; }

 private:
  // A physical record.
  struct Fragment {
    uint8_t type = 0;
    std::string_view payload;
    uint64_t offset = 0;  // Of its header.
  };
  enum class Parse {
    kFragment,  // *fragment holds a valid record.
    kBad,       // Invalid bytes at *bad_offset; *why says why.
    kEnd,       // End of file; tail_begin_ marks any truncated bytes.
    kError,     // Read error; status_ holds it.
  };

  Parse NextFragment(Fragment* fragment, uint64_t* bad_offset,
                     const char** why);
  // Looks for the first valid record starting after `from` (inclusive);
  // leaves pos_ at it. Returns kFragment (found), kEnd or kError.
  Parse ScanForward(uint64_t from);
  bool ReadNextBlock();
  uint64_t FileEnd() const { return block_start_ + block_.size(); }

  void StartDamage(uint64_t begin, std::string reason, bool valid_data);
  // Reports the damage [damage_begin_, end). Returns false with
  // OnCorruption::kStop (reading is over).
  bool ReportDamage(uint64_t end);
  // Ends the log at the end of the file, where bytes from `tail_begin` on are
  // a torn tail for reason `why` unless damage is pending; returns false.
  bool Finish(uint64_t tail_begin, const char* why);

  // Constant after construction.
  SequentialFile* const src_;
  Reporter* const reporter_;
  const bool checksum_;
  const uint64_t initial_offset_;
  const OnCorruption on_corruption_;

  // The last read (of kBlocksPerRead blocks) into backing_: what of it
  // follows block_.
  std::string backing_;
  std::string_view chunk_;
  // The current block: file bytes [block_start_, block_start_ + size).
  std::string_view block_;
  uint64_t block_start_ = 0;
  // The position of the next header in block_.
  size_t pos_ = 0;
  // The last read reached the end of the file: no block follows block_.
  bool eof_ = false;
  // Set by NextFragment when it returns kEnd: where truncated bytes at the
  // end of the file begin (FileEnd() when there are none).
  uint64_t tail_begin_ = 0;

  // Skipping the remains of a record that began before initial_offset_.
  bool resyncing_;
  bool done_ = false;
  absl::Status status_;

  // Damage seen but not reported yet: it is reported when a valid record
  // follows it, or dismissed as a torn tail at the end of the file.
  bool damage_active_ = false;
  uint64_t damage_begin_ = 0;
  std::string damage_reason_;
  // A valid record (of any type) lies inside or after the damage, so it is
  // not a torn tail.
  bool damage_has_valid_data_ = false;

  uint64_t last_record_offset_ = 0;
  uint64_t end_of_last_record_ = 0;
  ByteRange torn_tail_;
  std::string torn_tail_reason_;
  uint64_t dropped_bytes_ = 0;
};

}  // namespace warren::internal::log

#endif  // WARREN_SRC_LOG_READER_H_
