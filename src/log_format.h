// The on-disk format of warren's write-ahead log (after leveldb's
// db/log_format.h and doc/log_format.md; the code is warren's own).
//
// A log file is a sequence of 32 KiB blocks; only the last block may be
// shorter. A block holds records; a record never straddles a block boundary.
//
//   file     := block* partial_block?
//   block    := record* trailer?                   (exactly kBlockSize bytes)
//   record   := checksum length type payload
//   checksum := uint32, little-endian              (see RecordChecksum)
//   length   := uint16, little-endian              (payload size in bytes)
//   type     := uint8: kFull = 1 | kFirst = 2 | kMiddle = 3 | kLast = 4
//                      (0 is reserved: zeroed or preallocated space)
//   payload  := byte[length]
//   trailer  := 0x00{1,6}    (the rest of a block too small for a header)
//
// A record header is kHeaderSize = 7 bytes. When fewer than 7 bytes remain in a
// block, the writer fills them with zeroes and continues in the next block;
// when exactly 7 remain, the next record starts there (possibly as a FIRST
// fragment with an empty payload).
//
// A user record (the payload handed to Writer::AddRecord; any size, empty
// included) is stored as one FULL record, or, when it does not fit in what is
// left of the block, as a FIRST record, zero or more MIDDLE records and a
// LAST record, in consecutive blocks:
//
//   user_record := FULL | FIRST MIDDLE* LAST
//
// Checksum. For the record whose header starts at file offset `offset`:
//
//   seed     = XXH3_64bits(le64(offset) || type || le16(length))
//   checksum = low 32 bits of XXH3_64bits_withSeed(payload, seed)
//
// It covers the type, the length and the payload, and also the record's
// position in the file: the image of a valid record copied anywhere else (a
// user payload that happens to contain log bytes, a stale block) does not
// verify, so a reader resynchronising after damage cannot be fooled by it. A
// consequence: a log file cannot be moved inside another file, or
// concatenated, without rewriting it.
//
// Reading (see log_reader.h): a record cut short by the end of the file, and
// any run of invalid bytes (a bad checksum, an impossible length, a zeroed or
// unknown header) after which the file holds no valid record, is a torn tail:
// the crash case, a clean end of the log. Invalid bytes followed by any valid
// record, valid records in an impossible order (a MIDDLE or LAST without its
// FIRST, a FIRST followed by a FULL or another FIRST) and records of unknown
// type are corruption, reported with their byte range.

#ifndef WARREN_SRC_LOG_FORMAT_H_
#define WARREN_SRC_LOG_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace warren::internal::log {

enum class RecordType : uint8_t {
  // Zeroed or preallocated space; never written as a record.
  kZero = 0,
  kFull = 1,
  // The fragments of a record split across blocks.
  kFirst = 2,
  kMiddle = 3,
  kLast = 4,
};
inline constexpr uint8_t kMaxRecordType = 4;

inline constexpr size_t kBlockSize = 32768;

// checksum (4 bytes), length (2 bytes), type (1 byte).
inline constexpr size_t kHeaderSize = 4 + 2 + 1;

// The largest payload of one physical record (a whole block).
inline constexpr size_t kMaxFragmentSize = kBlockSize - kHeaderSize;

// The checksum of the record whose header starts at file offset `offset`, as
// the comment above defines it. Defined in log_writer.cc.
uint32_t RecordChecksum(uint64_t offset, uint8_t type,
                        std::string_view payload);

// Little-endian encoding of header fields.
inline void EncodeFixed16(char* dst, uint16_t value) {
  dst[0] = static_cast<char>(value & 0xff);
  dst[1] = static_cast<char>(value >> 8);
}
inline void EncodeFixed32(char* dst, uint32_t value) {
  for (int i = 0; i < 4; ++i) dst[i] = static_cast<char>(value >> (8 * i));
}
inline uint16_t DecodeFixed16(const char* src) {
  const auto* p = reinterpret_cast<const unsigned char*>(src);
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}
inline uint32_t DecodeFixed32(const char* src) {
  const auto* p = reinterpret_cast<const unsigned char*>(src);
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) |
         (uint32_t{p[3]} << 24);
}

}  // namespace warren::internal::log

#endif  // WARREN_SRC_LOG_FORMAT_H_
