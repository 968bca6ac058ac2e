// SegmentReader: the thread that reads a log's segments and checks their
// records ahead of the replay (segment_reader.h).

#include "segment_reader.h"

#include <catch2/catch.hpp>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "fault_injection_env.h"
#include "log_format.h"
#include "log_writer.h"

namespace warren::internal {
namespace {

constexpr std::string_view kDir = "/wal";

std::string Path(uint64_t number) {
  return std::string(kDir) + "/" + std::to_string(number) + ".wal";
}

// Writes `records` as the log file of segment `number`; returns its size.
uint64_t WriteSegment(FaultInjectionEnv& env, uint64_t number,
                      const std::vector<std::string>& records) {
  auto file = env.NewWritableFile(Path(number));
  REQUIRE(file.ok());
  log::Writer writer(file->get());
  for (const std::string& r : records) REQUIRE(writer.AddRecord(r).ok());
  REQUIRE((*file)->Close().ok());
  return writer.offset();
}

// What a reader handed over, in order.
struct Sequence {
  struct Record {
    uint64_t segment;
    uint64_t offset;
    std::string payload;
  };
  std::vector<Record> records;
  // (segment, file size, skipped bytes) of each segment_end batch.
  std::vector<std::tuple<uint64_t, uint64_t, uint64_t>> ends;
  absl::Status error;
  bool null_after_end = false;

  std::vector<std::string> payloads() const {
    std::vector<std::string> out;
    for (const Record& r : records) out.push_back(r.payload);
    return out;
  }
};

Sequence ReadAll(FaultInjectionEnv& env, const std::vector<uint64_t>& numbers,
                 log::Reader::OnCorruption on_corruption =
                     log::Reader::OnCorruption::kStop) {
  std::vector<SegmentReader::Segment> segments;
  for (uint64_t n : numbers) segments.emplace_back(n, Path(n));
  SegmentReader reader(&env, std::move(segments), on_corruption);
  Sequence seq;
  while (std::unique_ptr<RecordBatch> batch = reader.Next()) {
    if (!batch->status.ok()) {
      seq.error = batch->status;
      break;
    }
    for (const RecordBatch::Record& r : batch->records) {
      seq.records.push_back(
          {batch->segment, r.offset, std::string(batch->record(r))});
    }
    if (batch->segment_end) {
      seq.ends.emplace_back(batch->segment, batch->file_size,
                            batch->skipped_bytes);
    }
    reader.Recycle(std::move(batch));
  }
  seq.null_after_end = reader.Next() == nullptr;
  return seq;
}

std::string Payload(uint64_t segment, size_t i, size_t size) {
  std::string s = std::to_string(segment) + "." + std::to_string(i) + ".";
  while (s.size() < size) s += static_cast<char>('a' + s.size() % 26);
  s.resize(size);
  return s;
}

// An in-memory file system holding the log's directory.
struct SegmentReaderTest {
  SegmentReaderTest() { REQUIRE(env.CreateDir(kDir).ok()); }
  FaultInjectionEnv env;
};

// `count` payloads of `size` bytes for segment `segment`.
std::vector<std::string> Payloads(uint64_t segment, size_t count, size_t size) {
  std::vector<std::string> out;
  for (size_t i = 0; i < count; ++i) out.push_back(Payload(segment, i, size));
  return out;
}

TEST_CASE_METHOD(
    SegmentReaderTest,
    "The segment reader hands over every record of every segment in log "
    "order, with each segment's size",
    "[wal][log]") {
  // Segment 1 holds more than the batches the reader may run ahead by, so
  // it waits for the replay and refills recycled batches; some records are
  // fragmented across blocks, one is larger than a batch.
  std::vector<std::string> one;
  size_t bytes = 0;
  for (size_t i = 0;
       bytes < 3 * SegmentReader::kMaxBatches * SegmentReader::kBatchBytes / 2;
       ++i) {
    const size_t size = i == 10 ? SegmentReader::kBatchBytes + 1
                                : (i * 7919) % (2 * log::kBlockSize);
    one.push_back(Payload(1, i, size));
    bytes += size;
  }
  const std::vector<std::string> three = {"a", "", std::string(40000, 'c')};
  const uint64_t size1 = WriteSegment(env, 1, one);
  const uint64_t size2 = WriteSegment(env, 2, {});
  const uint64_t size3 = WriteSegment(env, 3, three);

  const Sequence seq = ReadAll(env, {1, 2, 3});
  CHECK(seq.error.ok());
  CHECK(seq.null_after_end);
  std::vector<std::string> expected = one;
  expected.insert(expected.end(), three.begin(), three.end());
  REQUIRE(seq.payloads() == expected);
  for (size_t i = 0; i < seq.records.size(); ++i) {
    CHECK(seq.records[i].segment == (i < one.size() ? 1 : 3));
  }
  // Offsets are where each record's header starts in its segment.
  const size_t first3 = one.size();
  CHECK(seq.records[0].offset == 0);
  CHECK(seq.records[first3].offset == 0);
  CHECK(seq.records[first3 + 1].offset == log::kHeaderSize + 1);
  CHECK(seq.records[first3 + 2].offset == 2 * log::kHeaderSize + 1);
  using End = std::tuple<uint64_t, uint64_t, uint64_t>;
  CHECK(seq.ends ==
        std::vector<End>{{1, size1, 0}, {2, size2, 0}, {3, size3, 0}});
}

TEST_CASE_METHOD(
    SegmentReaderTest,
    "Damage in the middle of a segment ends the segment reader's sequence "
    "with kDataLoss naming the segment, or is skipped and counted",
    "[wal][log]") {
  const uint64_t size1 = WriteSegment(env, 1, {"first", "second", "third"});
  WriteSegment(env, 2, {"fourth"});
  // Flip a byte of "second"'s payload: a valid record follows it.
  auto contents = env.GetContents(Path(1));
  REQUIRE(contents.ok());
  const size_t second = log::kHeaderSize + 5;
  (*contents)[second + log::kHeaderSize] ^= 1;
  REQUIRE(env.SetContents(Path(1), *contents, /*durable=*/true).ok());

  SECTION("kStop") {
    const Sequence seq = ReadAll(env, {1, 2});
    CHECK(seq.error.code() == absl::StatusCode::kDataLoss);
    const std::string message(seq.error.message());
    CHECK(message.find(Path(1)) != std::string::npos);
    CHECK(message.find("OnCorruption::kSkip") != std::string::npos);
    CHECK(seq.null_after_end);
    // Nothing of segment 2, and no end of segment 1.
    CHECK(seq.ends.empty());
    for (const Sequence::Record& r : seq.records) CHECK(r.segment == 1);
  }
  SECTION("kSkip") {
    const Sequence seq = ReadAll(env, {1, 2}, log::Reader::OnCorruption::kSkip);
    CHECK(seq.error.ok());
    CHECK(seq.payloads() ==
          std::vector<std::string>{"first", "third", "fourth"});
    using End = std::tuple<uint64_t, uint64_t, uint64_t>;
    REQUIRE(seq.ends.size() == 2);
    CHECK(seq.ends[0] == End{1, size1, log::kHeaderSize + 6});
  }
}

TEST_CASE_METHOD(
    SegmentReaderTest,
    "Every failed file call of the segment reader ends its sequence with "
    "that call's error",
    "[wal][log][fault]") {
  // Several reads of kBlocksPerRead blocks.
  WriteSegment(env, 1, Payloads(1, 200, 9000));
  WriteSegment(env, 2, {"x", "y"});
  WriteSegment(env, 3, {});

  env.ResetCallCount();
  const Sequence clean = ReadAll(env, {1, 2, 3});
  REQUIRE(clean.error.ok());
  REQUIRE(clean.ends.size() == 3);
  const uint64_t calls = env.call_count();
  // Opens, reads and sizes of three segments.
  REQUIRE(calls >= 9);
  for (uint64_t i = 0; i < calls; ++i) {
    CAPTURE(i);
    env.ResetCallCount();
    env.InjectFault(i, absl::StatusCode::kInternal);
    const Sequence seq = ReadAll(env, {1, 2, 3});
    CHECK(seq.error.code() == absl::StatusCode::kInternal);
    CHECK(seq.null_after_end);
    CHECK(seq.ends.size() < 3);
    CHECK(env.faults_injected() == i + 1);
    env.ClearFault();
  }
}

TEST_CASE_METHOD(
    SegmentReaderTest,
    "A segment reader destroyed before the replay took everything stops "
    "its thread",
    "[wal][log]") {
  // Far more than kMaxBatches batches: the thread is left waiting for room.
  const std::vector<std::string> records =
      Payloads(1, 4 * SegmentReader::kMaxBatches, SegmentReader::kBatchBytes);
  WriteSegment(env, 1, records);
  WriteSegment(env, 2, records);
  env.ResetCallCount();
  REQUIRE(ReadAll(env, {1, 2}).ends.size() == 2);
  const uint64_t whole = env.call_count();
  env.ResetCallCount();
  {
    SegmentReader reader(&env, {{1, Path(1)}, {2, Path(2)}},
                         log::Reader::OnCorruption::kStop);
    std::unique_ptr<RecordBatch> batch = reader.Next();
    REQUIRE(batch != nullptr);
    CHECK(batch->status.ok());
  }
  // The thread stopped once the batches it may run ahead by were full (it
  // would otherwise have waited for room forever, and the destructor with
  // it): it made far fewer calls than reading both segments takes.
  CHECK(env.call_count() * 2 < whole);
}

}  // namespace
}  // namespace warren::internal
