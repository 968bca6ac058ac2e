#include "log_reader.h"

#include <bit>
#include <cassert>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>

#include "str_util.h"

namespace warren::internal::log {

namespace {

bool IsKnownType(uint8_t type) {
  return type != static_cast<uint8_t>(RecordType::kZero) &&
         type <= kMaxRecordType;
}

// The index of the first byte of data[from, end) that is a known record type
// (1 to 4), or `end`. Eight bytes at a time: scanning damaged data for a
// valid record checks every offset, and most bytes can be ruled out by their
// type byte alone.
size_t FindKnownType(const char* data, size_t from, size_t end) {
  static_assert(kMaxRecordType == 4);
  size_t i = from;
  if constexpr (std::endian::native == std::endian::little) {
    constexpr uint64_t kLow7 = 0x7f7f7f7f7f7f7f7fULL;
    constexpr uint64_t kHigh = 0x8080808080808080ULL;
    for (; i + 8 <= end; i += 8) {
      uint64_t x;
      std::memcpy(&x, data + i, sizeof(x));
      // Per byte b, without carries between bytes: the high bit of
      // `at_least_1` is set iff (b & 0x7f) >= 1, that of `at_least_5` iff
      // (b & 0x7f) >= 5; b itself must have its high bit clear.
      const uint64_t at_least_1 = (x & kLow7) + kLow7;
      const uint64_t at_least_5 = (x & kLow7) + 0x7b7b7b7b7b7b7b7bULL;
      const uint64_t match = at_least_1 & ~at_least_5 & ~x & kHigh;
      if (match != 0) return i + std::countr_zero(match) / 8;
    }
  }
  for (; i < end; ++i) {
    if (IsKnownType(static_cast<uint8_t>(data[i]))) return i;
  }
  return end;
}

}  // namespace

Reader::Reader(SequentialFile* src, Reporter* reporter, bool checksum,
               uint64_t initial_offset, OnCorruption on_corruption)
    : src_(src),
      reporter_(reporter),
      checksum_(checksum),
      initial_offset_(initial_offset),
      on_corruption_(on_corruption),
      resyncing_(initial_offset > 0) {
  if (initial_offset_ == 0) return;
  // Start at the block holding initial_offset, or at the next block when
  // initial_offset lies where no record can start (in the trailer).
  uint64_t start = initial_offset_ - initial_offset_ % kBlockSize;
  if (initial_offset_ % kBlockSize > kBlockSize - kHeaderSize) {
    start += kBlockSize;
  }
  block_start_ = start;
  last_record_offset_ = end_of_last_record_ = start;
  if (start > 0) {
    status_ = src_->Skip(start);
    done_ = !status_.ok();
  }
}

bool Reader::ReadNextBlock() {
  block_start_ += block_.size();
  pos_ = 0;
  block_ = {};
  if (eof_) return false;
  if (chunk_.empty()) {
    // A read returns fewer bytes than asked for only at the end of the file.
    if (absl::Status s =
            src_->Read(kBlocksPerRead * kBlockSize, &backing_, &chunk_);
        !s.ok()) {
      chunk_ = {};
      status_ = std::move(s);
      eof_ = true;
      return false;
    }
  }
  block_ = chunk_.substr(0, kBlockSize);
  chunk_.remove_prefix(block_.size());
  if (block_.size() < kBlockSize) eof_ = true;
  return !block_.empty();
}

Reader::Parse Reader::NextFragment(Fragment* fragment, uint64_t* bad_offset,
                                   const char** why) {
  for (;;) {
    if (block_.size() - pos_ < kHeaderSize) {
      // No room for a header: a trailer, or the end of the file.
      if (!eof_) {
        if (ReadNextBlock()) continue;
        if (!status_.ok()) return Parse::kError;
      }
      tail_begin_ = block_start_ + pos_;
      return Parse::kEnd;
    }
    const char* header = block_.data() + pos_;
    const uint32_t expected = DecodeFixed32(header);
    const size_t length = DecodeFixed16(header + 4);
    const auto type = static_cast<uint8_t>(header[6]);
    const uint64_t offset = block_start_ + pos_;
    if (length > kBlockSize - pos_ - kHeaderSize) {
      *bad_offset = offset;
      *why = "bad record length";
      return Parse::kBad;
    }
    if (length > block_.size() - pos_ - kHeaderSize) {
      // The record would fit in the block but the file ends first (only the
      // last block is short). A write cut short, if the length is right; if
      // it is damaged, valid records may follow: the scan will tell.
      assert(eof_);
      *bad_offset = offset;
      *why = "record cut short by the end of the file";
      return Parse::kBad;
    }
    if (type == static_cast<uint8_t>(RecordType::kZero)) {
      *bad_offset = offset;
      *why = "zeroed record header (preallocated or unwritten space)";
      return Parse::kBad;
    }
    const std::string_view payload = block_.substr(pos_ + kHeaderSize, length);
    if (checksum_) {
      if (RecordChecksum(offset, type, payload) != expected) {
        *bad_offset = offset;
        *why = "checksum mismatch";
        return Parse::kBad;
      }
    } else if (!IsKnownType(type)) {
      // Without a checksum an unknown type is just invalid bytes.
      *bad_offset = offset;
      *why = "bad record type";
      return Parse::kBad;
    }
    pos_ += kHeaderSize + length;
    *fragment = Fragment{type, payload, offset};
    return Parse::kFragment;
  }
}

Reader::Parse Reader::ScanForward(uint64_t from) {
  // Invariant: `from` lies in the current block, at most one past its end.
  assert(from >= block_start_ && from <= FileEnd());
  size_t p = static_cast<size_t>(from - block_start_);
  for (;;) {
    for (; p + kHeaderSize <= block_.size(); ++p) {
      // Jump to the next offset whose type byte is plausible.
      p = FindKnownType(block_.data(), p + kHeaderSize - 1, block_.size()) -
          (kHeaderSize - 1);
      if (p + kHeaderSize > block_.size()) break;
      const char* header = block_.data() + p;
      const auto type = static_cast<uint8_t>(header[6]);
      const size_t length = DecodeFixed16(header + 4);
      if (p + kHeaderSize + length > block_.size()) continue;
      if (RecordChecksum(block_start_ + p, type,
                         block_.substr(p + kHeaderSize, length)) !=
          DecodeFixed32(header)) {
        continue;
      }
      pos_ = p;
      return Parse::kFragment;
    }
    if (!ReadNextBlock()) {
      if (!status_.ok()) return Parse::kError;
      tail_begin_ = FileEnd();
      return Parse::kEnd;
    }
    p = 0;
  }
}

void Reader::StartDamage(uint64_t begin, std::string reason, bool valid_data) {
  if (!damage_active_) {
    damage_active_ = true;
    damage_begin_ = begin;
    damage_reason_ = std::move(reason);
  }
  damage_has_valid_data_ = damage_has_valid_data_ || valid_data;
}

bool Reader::ReportDamage(uint64_t end) {
  const ByteRange range{damage_begin_, end};
  damage_active_ = false;
  damage_has_valid_data_ = false;
  dropped_bytes_ += range.size();
  const absl::Status reason = absl::DataLossError(
      StrCat("corrupt log: bytes [", range.begin, ", ", range.end, ") (",
             range.size(), " bytes) damaged: ", damage_reason_));
  if (reporter_ != nullptr) {
    reporter_->Corruption(static_cast<size_t>(range.size()), reason, range);
  }
  if (on_corruption_ == OnCorruption::kStop) {
    status_ = reason;
    done_ = true;
    return false;
  }
  return true;
}

bool Reader::Finish(uint64_t tail_begin, const char* why) {
  done_ = true;
  const uint64_t end = FileEnd();
  if (damage_active_) {
    if (damage_has_valid_data_) {
      ReportDamage(end);
      return false;
    }
    // Nothing valid after the damage: the crash case.
    torn_tail_ = {damage_begin_, end};
    torn_tail_reason_ = std::move(damage_reason_);
    damage_active_ = false;
    return false;
  }
  torn_tail_ = {tail_begin, end};
  if (!torn_tail_.empty()) torn_tail_reason_ = why;
  return false;
}

bool Reader::ReadRecord(std::string_view* record, std::string* scratch) {
  scratch->clear();
  *record = {};
  if (done_) return false;
  // The user record being assembled from fragments, if any. Invariant: never
  // in progress while damage is pending.
  bool in_record = false;
  uint64_t record_begin = 0;
  for (;;) {
    Fragment f;
    uint64_t bad_offset = 0;
    const char* why = "";
    switch (NextFragment(&f, &bad_offset, &why)) {
      case Parse::kError:
        done_ = true;
        return false;
      case Parse::kEnd:
        if (in_record) {
          return Finish(record_begin,
                        "fragmented record cut short by the end of the file");
        }
        return Finish(tail_begin_, "header cut short by the end of the file");
      case Parse::kBad: {
        if (resyncing_ && bad_offset < initial_offset_) {
          // Before the requested start: not ours to report.
        } else {
          resyncing_ = false;
          StartDamage(in_record ? record_begin : bad_offset, why,
                      /*valid_data=*/false);
          in_record = false;
          scratch->clear();
        }
        const Parse next = ScanForward(bad_offset + 1);
        if (next == Parse::kError) {
          done_ = true;
          return false;
        }
        if (next == Parse::kEnd) return Finish(tail_begin_, "");
        if (damage_active_) damage_has_valid_data_ = true;
        continue;
      }
      case Parse::kFragment:
        break;
    }

    if (resyncing_) {
      // Skip records that start before initial_offset_ and the fragments
      // of a record that began before it.
      if (f.offset < initial_offset_) continue;
      if (f.type == static_cast<uint8_t>(RecordType::kMiddle) ||
          f.type == static_cast<uint8_t>(RecordType::kLast)) {
        continue;
      }
      resyncing_ = false;
    }

    const uint64_t f_end = f.offset + kHeaderSize + f.payload.size();
    switch (static_cast<RecordType>(f.type)) {
      case RecordType::kFull:
      case RecordType::kFirst:
        if (in_record) {
          StartDamage(record_begin, "partial record without end",
                      /*valid_data=*/true);
          in_record = false;
          scratch->clear();
        }
        if (damage_active_ && !ReportDamage(f.offset)) return false;
        if (f.type == static_cast<uint8_t>(RecordType::kFull)) {
          *record = f.payload;
          last_record_offset_ = f.offset;
          end_of_last_record_ = f_end;
          return true;
        }
        scratch->assign(f.payload);
        in_record = true;
        record_begin = f.offset;
        break;
      case RecordType::kMiddle:
      case RecordType::kLast:
        if (!in_record) {
          StartDamage(f.offset, "missing start of fragmented record",
                      /*valid_data=*/true);
          break;
        }
        scratch->append(f.payload);
        if (f.type == static_cast<uint8_t>(RecordType::kLast)) {
          *record = *scratch;
          last_record_offset_ = record_begin;
          end_of_last_record_ = f_end;
          return true;
        }
        break;
      default:
        // A valid checksum on an unknown type: written deliberately (by a
        // newer format?), so not a torn write.
        StartDamage(in_record ? record_begin : f.offset,
                    StrCat("unknown record type ", int{f.type}),
                    /*valid_data=*/true);
        in_record = false;
        scratch->clear();
        break;
    }
  }
}

}  // namespace warren::internal::log
