#include "log_writer.h"

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <string_view>
#include <utility>

#include "xxh3.h"

namespace warren::internal::log {

uint32_t RecordChecksum(uint64_t offset, uint8_t type,
                        std::string_view payload) {
  assert(payload.size() <= 0xffff);
  char meta[8 + 1 + 2];
  for (int i = 0; i < 8; ++i) meta[i] = static_cast<char>(offset >> (8 * i));
  meta[8] = static_cast<char>(type);
  EncodeFixed16(meta + 9, static_cast<uint16_t>(payload.size()));
  const uint64_t seed = Xxh3WithSeed(meta, sizeof(meta), 0);
  return static_cast<uint32_t>(
      Xxh3WithSeed(payload.data(), payload.size(), seed));
}

Writer::Writer(WritableFile* dest, uint64_t dest_length)
    : dest_(dest),
      offset_(dest_length),
      block_offset_(static_cast<size_t>(dest_length % kBlockSize)) {}

absl::Status Writer::Fail(absl::Status s) {
  status_ = std::move(s);
  return status_;
}

absl::Status Writer::AddRecord(std::string_view payload, bool flush) {
  if (!status_.ok()) return status_;
  // Emit at least one physical record, even for an empty payload.
  bool begin = true;
  do {
    const size_t leftover = kBlockSize - block_offset_;
    if (leftover < kHeaderSize) {
      // Too small for a header: fill the trailer with zeroes.
      if (leftover > 0) {
        static constexpr char kZeroes[kHeaderSize - 1] = {};
        if (absl::Status s = dest_->Append(std::string_view(kZeroes, leftover));
            !s.ok()) {
          return Fail(std::move(s));
        }
        offset_ += leftover;
      }
      block_offset_ = 0;
    }
    // Invariant: a header fits in the rest of the block.
    assert(kBlockSize - block_offset_ >= kHeaderSize);
    const size_t available = kBlockSize - block_offset_ - kHeaderSize;
    const size_t length = std::min(payload.size(), available);
    const bool end = length == payload.size();
    const RecordType type = begin && end ? RecordType::kFull
                            : begin      ? RecordType::kFirst
                            : end        ? RecordType::kLast
                                         : RecordType::kMiddle;
    if (absl::Status s = EmitPhysicalRecord(type, payload.substr(0, length));
        !s.ok()) {
      return Fail(std::move(s));
    }
    payload.remove_prefix(length);
    begin = false;
  } while (!payload.empty());
  if (!flush) return absl::OkStatus();
  return Flush();
}

absl::Status Writer::Flush() {
  if (!status_.ok()) return status_;
  if (absl::Status s = dest_->Flush(); !s.ok()) return Fail(std::move(s));
  return absl::OkStatus();
}

absl::Status Writer::Sync() {
  if (!status_.ok()) return status_;
  if (absl::Status s = dest_->Sync(); !s.ok()) return Fail(std::move(s));
  return absl::OkStatus();
}

absl::Status Writer::EmitPhysicalRecord(RecordType type,
                                        std::string_view fragment) {
  // Invariant: the record fits in the block.
  assert(block_offset_ + kHeaderSize + fragment.size() <= kBlockSize);
  char header[kHeaderSize];
  const auto type_byte = static_cast<uint8_t>(type);
  EncodeFixed32(header, RecordChecksum(offset_, type_byte, fragment));
  EncodeFixed16(header + 4, static_cast<uint16_t>(fragment.size()));
  header[6] = static_cast<char>(type_byte);
  if (absl::Status s = dest_->Append(std::string_view(header, kHeaderSize));
      !s.ok()) {
    return s;
  }
  if (!fragment.empty()) {
    if (absl::Status s = dest_->Append(fragment); !s.ok()) return s;
  }
  offset_ += kHeaderSize + fragment.size();
  block_offset_ += kHeaderSize + fragment.size();
  return absl::OkStatus();
}

}  // namespace warren::internal::log
