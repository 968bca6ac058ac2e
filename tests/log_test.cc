// The write-ahead log format: log::Writer and log::Reader (log_format.h).
//
// The test names are a catalogue of what can go wrong with a log file, after
// leveldb's db/log_test.cc, adapted to warren's rule: damage at the tail (a
// write cut short, nothing valid after it) is a clean end; damage followed by
// valid data is reported with its byte range.

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "env.h"
#include "log_format.h"
#include "log_reader.h"
#include "log_writer.h"
#include "xxh3.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace Catch {
template <>
struct StringMaker<warren::internal::log::Reader::ByteRange> {
  static std::string convert(
      const warren::internal::log::Reader::ByteRange& r) {
    return "[" + std::to_string(r.begin) + ", " + std::to_string(r.end) + ")";
  }
};
}  // namespace Catch

namespace warren::internal::log {
namespace {

using OnCorruption = Reader::OnCorruption;

// `partial` repeated up to `n` bytes.
std::string BigString(std::string_view partial, size_t n) {
  std::string result;
  while (result.size() < n) result.append(partial);
  result.resize(n);
  return result;
}

std::string NumberString(int n) { return std::to_string(n) + "."; }

// A string whose length is skewed towards small values (up to 128 KiB).
std::string RandomSkewedString(int i, std::mt19937& rnd) {
  const uint32_t bits = rnd() % 18;
  const size_t length = bits == 0 ? 0 : rnd() % (uint32_t{1} << bits);
  return BigString(NumberString(i), length);
}

class StringDest final : public WritableFile {
 public:
  absl::Status Append(std::string_view data) override {
    contents.append(data);
    return absl::OkStatus();
  }
  absl::Status Flush() override { return absl::OkStatus(); }
  absl::Status Sync() override { return absl::OkStatus(); }
  absl::Status Close() override { return absl::OkStatus(); }

  std::string contents;
};

// Reads `contents`, which must outlive it, returning views into it (as the
// SequentialFile contract allows).
class StringSource final : public SequentialFile {
 public:
  explicit StringSource(std::string_view contents) : contents_(contents) {}

  absl::Status Read(size_t n, std::string* /*scratch*/,
                    std::string_view* result) override {
    if (force_error) {
      *result = {};
      return absl::InternalError("read: injected error");
    }
    *result = pos_ < contents_.size() ? contents_.substr(pos_, n) : "";
    pos_ += result->size();
    return absl::OkStatus();
  }

  absl::Status Skip(uint64_t n) override {
    pos_ += n;
    return absl::OkStatus();
  }

  bool force_error = false;

 private:
  const std::string_view contents_;
  uint64_t pos_ = 0;
};

class ReportCollector final : public Reader::Reporter {
 public:
  void Corruption(size_t bytes, const absl::Status& reason,
                  Reader::ByteRange range) override {
    CHECK(bytes == range.size());
    CHECK(reason.code() == absl::StatusCode::kDataLoss);
    dropped_bytes += bytes;
    message += std::string(reason.message());
    ranges.push_back(range);
  }

  size_t dropped_bytes = 0;
  std::string message;
  std::vector<Reader::ByteRange> ranges;
};

// Writes a log into a string, damages it, reads it back.
class LogTest {
 public:
  LogTest() : writer_(std::make_unique<Writer>(&dest_)) {}

  void ReopenForAppend() {
    writer_ = std::make_unique<Writer>(&dest_, dest_.contents.size());
  }

  void Write(std::string_view payload) {
    REQUIRE(writer_->AddRecord(payload).ok());
  }

  size_t WrittenBytes() const { return dest_.contents.size(); }
  std::string& contents() { return dest_.contents; }

  // Reads the next record with the settings below, or "EOF".
  std::string Read() {
    if (reader_ == nullptr) {
      source_ = std::make_unique<StringSource>(dest_.contents);
      source_->force_error = force_error_;
      reader_ =
          std::make_unique<Reader>(source_.get(), &report_,
                                   /*checksum=*/true, initial_offset_, mode_);
    }
    std::string scratch;
    std::string_view record;
    if (reader_->ReadRecord(&record, &scratch)) return std::string(record);
    return "EOF";
  }

  // Every record up to the end of the log.
  std::vector<std::string> ReadAll() {
    std::vector<std::string> records;
    for (std::string r = Read(); r != "EOF"; r = Read()) records.push_back(r);
    return records;
  }

  void SetMode(OnCorruption mode) { mode_ = mode; }
  void StartReadingAt(uint64_t initial_offset) {
    initial_offset_ = initial_offset;
  }
  void ForceError() { force_error_ = true; }

  void IncrementByte(size_t offset, int delta) {
    contents()[offset] = static_cast<char>(contents()[offset] + delta);
  }
  void SetByte(size_t offset, char value) { contents()[offset] = value; }
  void ShrinkSize(size_t bytes) {
    contents().resize(contents().size() - bytes);
  }

  // Recomputes the checksum of the record at `header_offset`, whose payload
  // is `length` bytes, after its type or payload was changed.
  void FixChecksum(size_t header_offset, size_t length) {
    const std::string_view payload =
        std::string_view(contents())
            .substr(header_offset + kHeaderSize, length);
    const auto type = static_cast<uint8_t>(contents()[header_offset + 6]);
    EncodeFixed32(&contents()[header_offset],
                  RecordChecksum(header_offset, type, payload));
  }

  size_t DroppedBytes() const { return report_.dropped_bytes; }
  const std::string& ReportMessage() const { return report_.message; }
  const std::vector<Reader::ByteRange>& Reports() const {
    return report_.ranges;
  }
  const Reader& reader() const { return *reader_; }

 private:
  StringDest dest_;
  std::unique_ptr<Writer> writer_;
  std::unique_ptr<StringSource> source_;
  std::unique_ptr<Reader> reader_;
  ReportCollector report_;
  OnCorruption mode_ = OnCorruption::kSkip;
  uint64_t initial_offset_ = 0;
  bool force_error_ = false;
};

bool Contains(const std::string& text, std::string_view needle) {
  return text.find(needle) != std::string::npos;
}

constexpr char kFirst = static_cast<char>(RecordType::kFirst);
constexpr char kMiddle = static_cast<char>(RecordType::kMiddle);
constexpr char kLast = static_cast<char>(RecordType::kLast);

// ---------------------------------------------------------------------------
// Well-formed logs.

TEST_CASE_METHOD(LogTest, "LogTest.Empty", "[log]") {
  CHECK(Read() == "EOF");
  CHECK(reader().status().ok());
  CHECK(reader().torn_tail().empty());
  CHECK(DroppedBytes() == 0);
}

TEST_CASE_METHOD(LogTest, "LogTest.ReadWrite", "[log]") {
  Write("foo");
  Write("bar");
  Write("");
  Write("xxxx");
  CHECK(Read() == "foo");
  CHECK(Read() == "bar");
  CHECK(Read() == "");
  CHECK(Read() == "xxxx");
  CHECK(Read() == "EOF");
  CHECK(Read() == "EOF");  // Make sure reads at eof work.
  CHECK(reader().status().ok());
  CHECK(DroppedBytes() == 0);
}

TEST_CASE_METHOD(LogTest, "LogTest.ManyBlocks", "[log]") {
  for (int i = 0; i < 100000; ++i) Write(NumberString(i));
  REQUIRE(WrittenBytes() > 10 * kBlockSize);
  for (int i = 0; i < 100000; ++i) REQUIRE(Read() == NumberString(i));
  CHECK(Read() == "EOF");
  CHECK(DroppedBytes() == 0);
}

TEST_CASE_METHOD(LogTest, "LogTest.Fragmentation", "[log]") {
  Write("small");
  Write(BigString("medium", 50000));
  Write(BigString("large", 100000));
  CHECK(Read() == "small");
  CHECK(Read() == BigString("medium", 50000));
  CHECK(Read() == BigString("large", 100000));
  CHECK(Read() == "EOF");
  CHECK(DroppedBytes() == 0);
}

TEST_CASE("LogTest.MarginalTrailer", "[log]") {
  // A block with exactly kHeaderSize bytes left: room for a header and an
  // empty payload.
  const size_t n = kBlockSize - 2 * kHeaderSize;
  SECTION("an empty record fills it exactly") {
    LogTest t;
    t.Write(BigString("foo", n));
    REQUIRE(t.WrittenBytes() == kBlockSize - kHeaderSize);
    t.Write("");
    REQUIRE(t.WrittenBytes() == kBlockSize);
    t.Write("bar");
    CHECK(t.Read() == BigString("foo", n));
    CHECK(t.Read() == "");
    CHECK(t.Read() == "bar");
    CHECK(t.Read() == "EOF");
    CHECK(t.DroppedBytes() == 0);
  }
  SECTION("a larger record starts there with an empty FIRST fragment") {
    LogTest t;
    t.Write(BigString("foo", n));
    t.Write("bar");
    REQUIRE(t.WrittenBytes() == kBlockSize + kHeaderSize + 3);
    CHECK(t.contents()[kBlockSize - 1] == kFirst);
    CHECK(t.contents()[kBlockSize - 3] == 0);  // Length 0.
    CHECK(t.contents()[kBlockSize + 6] == kLast);
    CHECK(t.Read() == BigString("foo", n));
    CHECK(t.Read() == "bar");
    CHECK(t.Read() == "EOF");
    CHECK(t.DroppedBytes() == 0);
  }
}

TEST_CASE("LogTest.ShortTrailer", "[log]") {
  // 1 to 6 bytes left in a block: too few for a header; zero-filled.
  for (size_t left = 1; left < kHeaderSize; ++left) {
    CAPTURE(left);
    LogTest t;
    t.Write(BigString("foo", kBlockSize - kHeaderSize - left));
    REQUIRE(t.WrittenBytes() == kBlockSize - left);
    t.Write("");
    t.Write("bar");
    REQUIRE(t.WrittenBytes() == kBlockSize + 2 * kHeaderSize + 3);
    CHECK(t.contents().substr(kBlockSize - left, left) ==
          std::string(left, '\0'));
    CHECK(t.Read() == BigString("foo", kBlockSize - kHeaderSize - left));
    CHECK(t.Read() == "");
    CHECK(t.Read() == "bar");
    CHECK(t.Read() == "EOF");
    CHECK(t.DroppedBytes() == 0);
  }
}

TEST_CASE_METHOD(LogTest, "LogTest.ExactBlockEnd", "[log]") {
  // 0 bytes left: the next record starts the next block, with no trailer.
  Write(BigString("foo", kBlockSize - kHeaderSize));
  REQUIRE(WrittenBytes() == kBlockSize);
  Write("bar");
  REQUIRE(WrittenBytes() == kBlockSize + kHeaderSize + 3);
  CHECK(Read() == BigString("foo", kBlockSize - kHeaderSize));
  CHECK(Read() == "bar");
  CHECK(Read() == "EOF");
  CHECK(DroppedBytes() == 0);
}

TEST_CASE_METHOD(LogTest, "LogTest.AlignedEof", "[log]") {
  // The file ends exactly at a block boundary.
  Write(BigString("foo", kBlockSize - kHeaderSize));
  REQUIRE(WrittenBytes() == kBlockSize);
  CHECK(Read() == BigString("foo", kBlockSize - kHeaderSize));
  CHECK(Read() == "EOF");
  CHECK(reader().status().ok());
  CHECK(reader().torn_tail().empty());
  CHECK(DroppedBytes() == 0);
}

// The reader reads Reader::kBlocksPerRead blocks at a time: what a read
// boundary cuts through is read as if it were one block boundary among others.
TEST_CASE_METHOD(LogTest,
                 "A log longer than one read is read whole, whether it ends "
                 "on a read's boundary or not and wherever a record spans two "
                 "reads",
                 "[log]") {
  const size_t per_read = Reader::kBlocksPerRead;
  std::vector<std::string> written;
  auto write = [&](std::string payload) {
    Write(payload);
    written.push_back(std::move(payload));
  };
  SECTION("the file ends where a read ends") {
    for (size_t i = 0; i < per_read; ++i) {
      write(BigString(NumberString(static_cast<int>(i)),
                      kBlockSize - kHeaderSize));
    }
    REQUIRE(WrittenBytes() == per_read * kBlockSize);
  }
  SECTION("the file ends one record into the next read") {
    for (size_t i = 0; i < per_read; ++i) {
      write(BigString(NumberString(static_cast<int>(i)),
                      kBlockSize - kHeaderSize));
    }
    write("last");
    REQUIRE(WrittenBytes() == per_read * kBlockSize + kHeaderSize + 4);
  }
  SECTION("a record's fragments span two reads") {
    for (size_t i = 0; i + 1 < per_read; ++i) {
      write(BigString(NumberString(static_cast<int>(i)),
                      kBlockSize - kHeaderSize));
    }
    write(BigString("span", 2 * kBlockSize));  // FIRST, MIDDLE, LAST
    write("after");
    REQUIRE(WrittenBytes() > (per_read + 1) * kBlockSize);
  }
  for (const std::string& payload : written) REQUIRE(Read() == payload);
  CHECK(Read() == "EOF");
  CHECK(reader().status().ok());
  CHECK(reader().torn_tail().empty());
  CHECK(DroppedBytes() == 0);
}

TEST_CASE_METHOD(LogTest,
                 "A record torn in the read after the one holding its start "
                 "is a torn tail",
                 "[log]") {
  const size_t per_read = Reader::kBlocksPerRead;
  for (size_t i = 0; i + 1 < per_read; ++i) {
    Write(
        BigString(NumberString(static_cast<int>(i)), kBlockSize - kHeaderSize));
  }
  Write(BigString("span", 2 * kBlockSize));
  ShrinkSize(1);
  for (size_t i = 0; i + 1 < per_read; ++i) {
    REQUIRE(Read() == BigString(NumberString(static_cast<int>(i)),
                                kBlockSize - kHeaderSize));
  }
  CHECK(Read() == "EOF");
  CHECK(reader().status().ok());
  CHECK(reader().torn_tail() ==
        Reader::ByteRange{(per_read - 1) * kBlockSize, WrittenBytes()});
  CHECK(DroppedBytes() == 0);
}

TEST_CASE_METHOD(LogTest, "LogTest.EofBeforeTrailer", "[log]") {
  // The file ends 3 bytes before the block's end: the trailer is written only
  // when a next record comes.
  Write(BigString("foo", kBlockSize - kHeaderSize - 3));
  REQUIRE(WrittenBytes() == kBlockSize - 3);
  CHECK(Read() == BigString("foo", kBlockSize - kHeaderSize - 3));
  CHECK(Read() == "EOF");
  CHECK(reader().torn_tail().empty());
  CHECK(DroppedBytes() == 0);
}

TEST_CASE_METHOD(LogTest, "LogTest.OpenForAppend", "[log]") {
  Write("hello");
  ReopenForAppend();
  Write("world");
  const size_t x_size = kBlockSize - WrittenBytes() - kHeaderSize - 3;
  Write(BigString("x", x_size));
  REQUIRE(WrittenBytes() == kBlockSize - 3);  // A trailer to write next.
  ReopenForAppend();
  Write(BigString("y", 2 * kBlockSize));
  CHECK(Read() == "hello");
  CHECK(Read() == "world");
  CHECK(Read() == BigString("x", x_size));
  CHECK(Read() == BigString("y", 2 * kBlockSize));
  CHECK(Read() == "EOF");
  CHECK(DroppedBytes() == 0);
}

TEST_CASE_METHOD(LogTest, "LogTest.RandomRead", "[log]") {
  const int n = 500;
  std::mt19937 write_rnd(301);
  for (int i = 0; i < n; ++i) Write(RandomSkewedString(i, write_rnd));
  std::mt19937 read_rnd(301);
  for (int i = 0; i < n; ++i) {
    REQUIRE(Read() == RandomSkewedString(i, read_rnd));
  }
  CHECK(Read() == "EOF");
  CHECK(DroppedBytes() == 0);
}

TEST_CASE_METHOD(LogTest, "LogTest.LastRecordOffsets", "[log]") {
  Write("foo");
  Write(BigString("bar", kBlockSize));
  Write("baz");
  CHECK(Read() == "foo");
  CHECK(reader().LastRecordOffset() == 0);
  CHECK(reader().EndOfLastRecord() == kHeaderSize + 3);
  CHECK(Read() == BigString("bar", kBlockSize));
  CHECK(reader().LastRecordOffset() == kHeaderSize + 3);
  const uint64_t bar_end = 2 * kHeaderSize + 3 + kBlockSize + kHeaderSize;
  CHECK(reader().EndOfLastRecord() == bar_end);
  CHECK(Read() == "baz");
  CHECK(reader().LastRecordOffset() == bar_end);
  CHECK(reader().EndOfLastRecord() == WrittenBytes());
}

// ---------------------------------------------------------------------------
// I/O errors are not corruption.

TEST_CASE_METHOD(LogTest, "LogTest.ReadError", "[log]") {
  Write("foo");
  ForceError();
  CHECK(Read() == "EOF");
  CHECK(reader().status().code() == absl::StatusCode::kInternal);
  CHECK(DroppedBytes() == 0);
  CHECK(Reports().empty());
}

// ---------------------------------------------------------------------------
// Torn tails: a clean end of the log, never reported.

TEST_CASE_METHOD(LogTest, "LogTest.TruncatedTrailingRecordIsIgnored", "[log]") {
  Write("foo");
  ShrinkSize(4);  // Drop all payload as well as a header byte.
  CHECK(Read() == "EOF");
  CHECK(reader().status().ok());
  CHECK(DroppedBytes() == 0);
  CHECK(reader().torn_tail() == Reader::ByteRange{0, kHeaderSize - 1});
}

TEST_CASE_METHOD(LogTest, "LogTest.BadLengthAtEndIsIgnored", "[log]") {
  Write("foo");
  SECTION("the payload is cut short") { ShrinkSize(1); }
  SECTION("the length exceeds the data left in the file") {
    IncrementByte(5, 1);  // 259 bytes: fits in the block, not in the file.
  }
  SECTION("the length exceeds the block") { IncrementByte(5, 0x80); }
  CHECK(Read() == "EOF");
  CHECK(reader().status().ok());
  CHECK(DroppedBytes() == 0);
  CHECK(reader().torn_tail().begin == 0);
  CHECK(reader().torn_tail().end == WrittenBytes());
}

TEST_CASE_METHOD(LogTest, "LogTest.ChecksumMismatchAtEndIsTornTail", "[log]") {
  Write("foo");
  Write("bar");
  IncrementByte(kHeaderSize + 3 + kHeaderSize, 1);  // The payload of "bar".
  CHECK(Read() == "foo");
  CHECK(Read() == "EOF");
  CHECK(reader().status().ok());
  CHECK(DroppedBytes() == 0);
  CHECK(reader().torn_tail() ==
        Reader::ByteRange{kHeaderSize + 3, WrittenBytes()});
  CHECK(reader().torn_tail_reason() == "checksum mismatch");
}

TEST_CASE_METHOD(LogTest, "LogTest.MissingLastIsIgnored", "[log]") {
  Write(BigString("bar", kBlockSize));
  // Remove the LAST block, including its header.
  ShrinkSize(14);
  CHECK(Read() == "EOF");
  CHECK(reader().status().ok());
  CHECK(DroppedBytes() == 0);
  CHECK(reader().torn_tail() == Reader::ByteRange{0, kBlockSize});
}

TEST_CASE_METHOD(LogTest, "LogTest.PartialLastIsIgnored", "[log]") {
  Write(BigString("bar", kBlockSize));
  // Cause a bad record length in the LAST block.
  ShrinkSize(1);
  CHECK(Read() == "EOF");
  CHECK(reader().status().ok());
  CHECK(DroppedBytes() == 0);
  CHECK(reader().torn_tail() == Reader::ByteRange{0, WrittenBytes()});
}

TEST_CASE_METHOD(LogTest, "LogTest.ZeroFilledTailIsIgnored", "[log]") {
  // Preallocated space after the last record reads as zeroes.
  Write("foo");
  Write("bar");
  const size_t end = WrittenBytes();
  contents().append(2 * kBlockSize, '\0');
  CHECK(Read() == "foo");
  CHECK(Read() == "bar");
  CHECK(Read() == "EOF");
  CHECK(reader().status().ok());
  CHECK(DroppedBytes() == 0);
  CHECK(reader().torn_tail() == Reader::ByteRange{end, WrittenBytes()});
}

TEST_CASE_METHOD(LogTest, "LogTest.GarbageAfterTornRecordIsIgnored", "[log]") {
  // A torn record followed by bytes that are not records (a partly persisted
  // later write) is still a torn tail.
  Write("foo");
  Write(BigString("bar", 1000));
  Write(BigString("baz", 1000));
  contents()[kHeaderSize + 3 + 100] ^= 1;         // Damage "bar".
  contents()[WrittenBytes() - 10] ^= 1;           // And "baz".
  contents().append(BigString("garbage", 5000));  // And append garbage.
  CHECK(Read() == "foo");
  CHECK(Read() == "EOF");
  CHECK(reader().status().ok());
  CHECK(DroppedBytes() == 0);
  CHECK(reader().torn_tail().begin == kHeaderSize + 3);
}

TEST_CASE_METHOD(LogTest, "LogTest.EmbeddedRecordImageIsNotMistakenForData",
                 "[log]") {
  // The checksum covers the record's offset, so a payload holding the image
  // of a valid record (written for another offset) cannot fool the scan for
  // valid data after damage into calling a torn tail corruption.
  StringDest inner;
  Writer inner_writer(&inner);
  REQUIRE(inner_writer.AddRecord("inner").ok());
  CHECK(RecordChecksum(0, 1, "inner") != RecordChecksum(1, 1, "inner"));
  Write("foo");
  Write("prefix" + inner.contents + "suffix");
  contents()[WrittenBytes() - 1] ^= 1;  // Tear the last record.
  CHECK(Read() == "foo");
  CHECK(Read() == "EOF");
  CHECK(reader().status().ok());
  CHECK(DroppedBytes() == 0);
  CHECK(reader().torn_tail().begin == kHeaderSize + 3);
}

// ---------------------------------------------------------------------------
// Damage in the middle: reported with its byte range, never replayed.

TEST_CASE_METHOD(LogTest, "LogTest.BadLength", "[log]") {
  const size_t payload_size = kBlockSize - kHeaderSize;
  Write(BigString("bar", payload_size));
  Write("foo");
  // Least significant size byte is stored in header[4].
  IncrementByte(4, 1);
  SECTION("skipping") {
    CHECK(Read() == "foo");
    CHECK(Read() == "EOF");
    CHECK(reader().status().ok());
    CHECK(DroppedBytes() == kBlockSize);
    CHECK(Contains(ReportMessage(), "bad record length"));
    CHECK(Contains(ReportMessage(), "[0, 32768)"));
  }
  SECTION("stopping") {
    SetMode(OnCorruption::kStop);
    CHECK(Read() == "EOF");
    CHECK(reader().status().code() == absl::StatusCode::kDataLoss);
    CHECK(Contains(std::string(reader().status().message()), "[0, 32768)"));
    CHECK(Reports().size() == 1);
  }
}

TEST_CASE_METHOD(LogTest, "LogTest.ChecksumMismatch", "[log]") {
  Write("foo");
  Write("bar");
  IncrementByte(0, 10);
  SECTION("skipping") {
    CHECK(Read() == "bar");
    CHECK(Read() == "EOF");
    CHECK(DroppedBytes() == kHeaderSize + 3);
    CHECK(Contains(ReportMessage(), "checksum mismatch"));
    REQUIRE(Reports().size() == 1);
    CHECK(Reports()[0] == Reader::ByteRange{0, kHeaderSize + 3});
  }
  SECTION("stopping") {
    SetMode(OnCorruption::kStop);
    CHECK(Read() == "EOF");
    CHECK(reader().status().code() == absl::StatusCode::kDataLoss);
    CHECK(Contains(std::string(reader().status().message()), "[0, 10)"));
    CHECK(Read() == "EOF");
    CHECK(Reports().size() == 1);
  }
}

TEST_CASE_METHOD(LogTest, "LogTest.BadRecordType", "[log]") {
  // A valid checksum on an unknown type was written on purpose: reported even
  // as the last record.
  Write("foo");
  IncrementByte(6, 100);
  FixChecksum(0, 3);
  CHECK(Read() == "EOF");
  CHECK(DroppedBytes() == kHeaderSize + 3);
  CHECK(Contains(ReportMessage(), "unknown record type 101"));
}

TEST_CASE_METHOD(LogTest, "LogTest.UnexpectedMiddleType", "[log]") {
  Write("foo");
  SetByte(6, kMiddle);
  FixChecksum(0, 3);
  CHECK(Read() == "EOF");
  CHECK(DroppedBytes() == kHeaderSize + 3);
  CHECK(Contains(ReportMessage(), "missing start"));
}

TEST_CASE_METHOD(LogTest, "LogTest.UnexpectedLastType", "[log]") {
  Write("foo");
  SetByte(6, kLast);
  FixChecksum(0, 3);
  CHECK(Read() == "EOF");
  CHECK(DroppedBytes() == kHeaderSize + 3);
  CHECK(Contains(ReportMessage(), "missing start"));
}

TEST_CASE_METHOD(LogTest, "LogTest.UnexpectedFullType", "[log]") {
  Write("foo");
  Write("bar");
  SetByte(6, kFirst);
  FixChecksum(0, 3);
  CHECK(Read() == "bar");
  CHECK(Read() == "EOF");
  CHECK(DroppedBytes() == kHeaderSize + 3);
  CHECK(Contains(ReportMessage(), "partial record without end"));
}

TEST_CASE_METHOD(LogTest, "LogTest.UnexpectedFirstType", "[log]") {
  Write("foo");
  Write(BigString("bar", 100000));
  SetByte(6, kFirst);
  FixChecksum(0, 3);
  CHECK(Read() == BigString("bar", 100000));
  CHECK(Read() == "EOF");
  CHECK(DroppedBytes() == kHeaderSize + 3);
  CHECK(Contains(ReportMessage(), "partial record without end"));
}

TEST_CASE_METHOD(LogTest, "LogTest.ZeroedMiddleIsCorruption", "[log]") {
  // Zeroes are the end of the log only when nothing valid follows them.
  Write("foo");
  Write("bar");
  Write("baz");
  for (size_t i = kHeaderSize + 3; i < 2 * (kHeaderSize + 3); ++i) {
    SetByte(i, 0);
  }
  CHECK(Read() == "foo");
  CHECK(Read() == "baz");
  CHECK(Read() == "EOF");
  REQUIRE(Reports().size() == 1);
  CHECK(Reports()[0] ==
        Reader::ByteRange{kHeaderSize + 3, 2 * (kHeaderSize + 3)});
  CHECK(Contains(ReportMessage(), "zeroed record header"));
}

TEST_CASE_METHOD(LogTest, "LogTest.ErrorJoinsRecords", "[log]") {
  // Consider two fragmented records:
  //    first(R1) last(R1) first(R2) last(R2)
  // where the middle two fragments disappear. We do not want
  // first(R1),last(R2) to get joined and returned as a valid record.

  // Write records that span two blocks.
  Write(BigString("foo", kBlockSize));
  Write(BigString("bar", kBlockSize));
  Write("correct");
  // Wipe the middle block.
  for (size_t offset = kBlockSize; offset < 2 * kBlockSize; ++offset) {
    SetByte(offset, 'x');
  }
  SECTION("skipping") {
    CHECK(Read() == "correct");
    CHECK(Read() == "EOF");
    // One range: from the FIRST of R1 to the start of "correct".
    REQUIRE(Reports().size() == 1);
    CHECK(Reports()[0] == Reader::ByteRange{0, 2 * kBlockSize + 28});
    CHECK(DroppedBytes() <= 2 * kBlockSize + 100);
    CHECK(DroppedBytes() >= 2 * kBlockSize);
  }
  SECTION("stopping") {
    SetMode(OnCorruption::kStop);
    CHECK(Read() == "EOF");
    CHECK(reader().status().code() == absl::StatusCode::kDataLoss);
  }
}

TEST_CASE_METHOD(LogTest, "LogTest.DamageBeforeTornTailIsReported", "[log]") {
  // Damage followed by a valid FIRST fragment whose LAST is missing: the
  // FIRST is valid data, so the damage is in the middle; the FIRST itself
  // is then a torn tail.
  Write("foo");
  Write("bar");
  Write(BigString("big", kBlockSize));
  IncrementByte(kHeaderSize + 3 + kHeaderSize, 1);  // Damage "bar".
  ShrinkSize(1);                                    // Tear "big".
  CHECK(Read() == "foo");
  CHECK(Read() == "EOF");
  REQUIRE(Reports().size() == 1);
  CHECK(Reports()[0] ==
        Reader::ByteRange{kHeaderSize + 3, 2 * (kHeaderSize + 3)});
  CHECK(reader().torn_tail() ==
        Reader::ByteRange{2 * (kHeaderSize + 3), WrittenBytes()});
}

// ---------------------------------------------------------------------------
// Starting at an offset.

TEST_CASE_METHOD(LogTest, "LogTest.SkipIntoMultiRecord", "[log]") {
  // Consider a fragmented record:
  //    first(R1), middle(R1), last(R1), first(R2)
  // If initial_offset points to a record after first(R1) but before first(R2)
  // incomplete fragment errors are not actual errors, and must be suppressed
  // until a new first or full record is encountered.
  Write(BigString("foo", 3 * kBlockSize));
  Write("correct");
  StartReadingAt(kBlockSize);
  CHECK(Read() == "correct");
  CHECK(Read() == "EOF");
  CHECK(DroppedBytes() == 0);
}

TEST_CASE("LogTest.InitialOffset", "[log]") {
  // The reader returns exactly the records that start at or after the
  // initial offset, for offsets at, around and between record starts, in
  // trailers, at block boundaries, at and past the end of the file.
  const std::vector<size_t> sizes = {
      10000, 10000, 2 * kBlockSize - 1000, 1, kBlockSize - 2 * kHeaderSize - 3,
      5};
  LogTest writer;
  std::vector<uint64_t> starts;
  std::vector<std::string> records;
  for (size_t i = 0; i < sizes.size(); ++i) {
    starts.push_back(writer.WrittenBytes());
    records.push_back(BigString(NumberString(static_cast<int>(i)), sizes[i]));
    writer.Write(records.back());
  }
  const std::string contents = writer.contents();
  std::vector<uint64_t> offsets;
  for (uint64_t start : starts) {
    for (uint64_t o : {start, start + 1}) offsets.push_back(o);
    if (start > 0) offsets.push_back(start - 1);
  }
  for (uint64_t block = 0; block <= contents.size() / kBlockSize + 1; ++block) {
    for (uint64_t back = 1; back <= kHeaderSize + 1; ++back) {
      offsets.push_back((block + 1) * kBlockSize - back);
    }
    offsets.push_back(block * kBlockSize);
    offsets.push_back(block * kBlockSize + 1);
  }
  offsets.push_back(contents.size());
  offsets.push_back(contents.size() + 1);
  for (uint64_t offset : offsets) {
    CAPTURE(offset);
    StringSource source(contents);
    ReportCollector report;
    Reader reader(&source, &report, /*checksum=*/true, offset);
    std::string scratch;
    std::string_view record;
    for (size_t i = 0; i < records.size(); ++i) {
      if (starts[i] < offset) continue;
      REQUIRE(reader.ReadRecord(&record, &scratch));
      CHECK(record == records[i]);
      CHECK(reader.LastRecordOffset() == starts[i]);
    }
    CHECK_FALSE(reader.ReadRecord(&record, &scratch));
    CHECK(reader.status().ok());
    CHECK(report.dropped_bytes == 0);
  }
}

// ---------------------------------------------------------------------------
// The project's acceptance tests.

// About ten records of varied sizes, one of them fragmented across a block
// boundary (the log is just over one block), and the end offset of each
// record.
struct SmallLog {
  std::vector<std::string> records;
  std::vector<uint64_t> starts;
  std::vector<uint64_t> ends;
  std::string contents;
  // The zero-filled trailer bytes.
  std::vector<std::pair<uint64_t, uint64_t>> trailers;
};

SmallLog MakeSmallLog() {
  SmallLog log;
  const std::vector<size_t> sizes = {5,     0,    200, 1,   1000,
                                     30000, 2500, 7,   300, 40};
  StringDest dest;
  Writer writer(&dest);
  for (size_t i = 0; i < sizes.size(); ++i) {
    log.records.push_back(
        BigString("record " + NumberString(static_cast<int>(i)), sizes[i]));
    const uint64_t before = dest.contents.size();
    REQUIRE(writer.AddRecord(log.records.back()).ok());
    // A trailer written before this record belongs to no record.
    const uint64_t block_end = (before / kBlockSize + 1) * kBlockSize;
    if (block_end - before < kHeaderSize) {
      log.trailers.emplace_back(before, block_end);
      log.starts.push_back(block_end);
    } else {
      log.starts.push_back(before);
    }
    log.ends.push_back(dest.contents.size());
  }
  log.contents = dest.contents;
  // The 2500-byte record crosses the block boundary.
  REQUIRE(log.starts[6] < kBlockSize);
  REQUIRE(log.ends[6] > kBlockSize);
  return log;
}

struct ReadResult {
  std::vector<std::string> records;
  std::vector<Reader::ByteRange> reports;
  absl::Status status;
  Reader::ByteRange torn_tail;
};

ReadResult ReadLog(std::string_view contents, OnCorruption mode) {
  StringSource source(contents);
  ReportCollector report;
  Reader reader(&source, &report, /*checksum=*/true, 0, mode);
  ReadResult result;
  std::string scratch;
  std::string_view record;
  while (reader.ReadRecord(&record, &scratch)) {
    result.records.emplace_back(record);
  }
  result.reports = report.ranges;
  result.status = reader.status();
  result.torn_tail = reader.torn_tail();
  return result;
}

TEST_CASE(
    "A torn tail at every byte offset of a small log reads back exactly the "
    "complete records before the tear",
    "[log]") {
  const SmallLog log = MakeSmallLog();
  for (size_t length = 0; length <= log.contents.size(); ++length) {
    CAPTURE(length);
    const ReadResult r = ReadLog(
        std::string_view(log.contents).substr(0, length), OnCorruption::kStop);
    std::vector<std::string> expected;
    uint64_t last_end = 0;
    for (size_t i = 0; i < log.records.size() && log.ends[i] <= length; ++i) {
      expected.push_back(log.records[i]);
      last_end = log.ends[i];
    }
    REQUIRE(r.records == expected);
    REQUIRE(r.status.ok());
    REQUIRE(r.reports.empty());
    REQUIRE(r.torn_tail == Reader::ByteRange{last_end, length});
  }
}

TEST_CASE("Every single-byte flip of a small log is detected", "[log]") {
  // A flip inside record k is reported as exactly the range of record k and
  // the other records are read back intact; a flip inside the last record is
  // indistinguishable from a torn write (a torn tail, not reported); a flip
  // in a zero trailer changes nothing. Never is a modified record returned.
  const SmallLog log = MakeSmallLog();
  const size_t n = log.records.size();
  std::string contents = log.contents;
  for (size_t byte = 0; byte < contents.size(); ++byte) {
    size_t k = 0;
    while (k < n && log.ends[k] <= byte) ++k;
    const bool in_trailer = byte < log.starts[k];
    for (const char mask : {'\x01', '\xff'}) {
      CAPTURE(byte, k, int{mask});
      contents[byte] ^= mask;
      const ReadResult r = ReadLog(contents, OnCorruption::kSkip);
      std::vector<std::string> expected = log.records;
      if (in_trailer) {
        REQUIRE(r.records == expected);
        REQUIRE(r.reports.empty());
      } else if (k == n - 1) {
        expected.pop_back();
        REQUIRE(r.records == expected);
        REQUIRE(r.reports.empty());
        REQUIRE(r.torn_tail == Reader::ByteRange{log.starts[k], log.ends[k]});
      } else {
        expected.erase(expected.begin() + static_cast<std::ptrdiff_t>(k));
        REQUIRE(r.records == expected);
        REQUIRE(r.reports.size() == 1);
        REQUIRE(r.reports[0] ==
                Reader::ByteRange{log.starts[k], log.starts[k + 1]});
      }
      REQUIRE(r.status.ok());
      // Stopping at the damage returns the records before it.
      if (!in_trailer && k != n - 1 && byte % 16 == 0) {
        const ReadResult stop = ReadLog(contents, OnCorruption::kStop);
        REQUIRE(stop.records ==
                std::vector<std::string>(
                    log.records.begin(),
                    log.records.begin() + static_cast<std::ptrdiff_t>(k)));
        REQUIRE(stop.status.code() == absl::StatusCode::kDataLoss);
      }
      contents[byte] ^= mask;
    }
  }
}

TEST_CASE("LogTest.TrailerContentsAreIgnored", "[log]") {
  // The bytes of a trailer are not covered by any checksum: whatever they
  // hold, the records read back unchanged.
  for (size_t left = 1; left < kHeaderSize; ++left) {
    LogTest t;
    const std::string big = BigString("foo", kBlockSize - kHeaderSize - left);
    t.Write(big);
    t.Write("bar");
    for (size_t i = kBlockSize - left; i < kBlockSize; ++i) {
      for (const char mask : {'\x01', '\xff'}) {
        CAPTURE(left, i, int{mask});
        std::string contents = t.contents();
        contents[i] ^= mask;
        const ReadResult r = ReadLog(contents, OnCorruption::kStop);
        CHECK(r.records == std::vector<std::string>{big, "bar"});
        CHECK(r.reports.empty());
        CHECK(r.status.ok());
      }
    }
  }
}

// The checksum is XXH3 whichever code computes it: the baseline build and
// the AVX2 build (where this CPU and build have it) give XXH3's hash, as
// xxHash's own header computes it here, for every length up to past the
// largest record payload's block (XXH3 has separate code for lengths up to
// 16, 128 and 240 bytes, for the rest by 64-byte stripes and 1 KiB blocks)
// and seeds 0 and not.
TEST_CASE("LogTest.ChecksumIsXxh3OnEveryCodePath", "[log]") {
  std::mt19937_64 rng(7);
  std::string data(kBlockSize, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  const Xxh3Function avx2 = Xxh3WithSeedAvx2();
  INFO("AVX2 code " << (avx2 != nullptr ? "tested" : "not built or no CPU"));
  for (size_t size = 0; size <= data.size(); size += size < 2100 ? 1 : 997) {
    for (const uint64_t seed : {uint64_t{0}, uint64_t{rng()}}) {
      // Unaligned starts too: the vector code loads unaligned.
      const char* p = data.data() + size % 5;
      const size_t n = std::min(size, data.size() - size % 5);
      const uint64_t want = XXH3_64bits_withSeed(p, n, seed);
      INFO("size " << n << " seed " << seed);
      CHECK(Xxh3WithSeedBaseline(p, n, seed) == want);
      CHECK(Xxh3WithSeed(p, n, seed) == want);
      if (avx2 != nullptr) CHECK(avx2(p, n, seed) == want);
    }
  }
  // XXH3's own known answer for the empty input.
  CHECK(Xxh3WithSeed("", 0, 0) == 0x2D06800538D394C2ULL);
  // The record checksum is the formula in log_format.h.
  const std::string_view payload(data.data(), 1000);
  char meta[11] = {0x39, 0x30, 0, 0, 0, 0, 0, 0, 1, 0xe8 - 256, 3};
  CHECK(RecordChecksum(12345, 1, payload) ==
        static_cast<uint32_t>(XXH3_64bits_withSeed(
            payload.data(), payload.size(), XXH3_64bits(meta, sizeof(meta)))));
}

}  // namespace
}  // namespace warren::internal::log
