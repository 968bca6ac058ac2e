// Message bodies of the WAL crash test (wal_crash_test.cc and its child,
// wal_crash_child.cc): "p<pub> s<seq> b<first>/<n> <padding>", where
// <first>/<n> names the publish that carried the message (the first sequence
// number of a PublishBatch and its size; <seq>/1 for a single publish) and the
// padding is a function of (pub, seq), so that a damaged body is detected.

#ifndef WARREN_TESTS_WAL_CRASH_BODY_H_
#define WARREN_TESTS_WAL_CRASH_BODY_H_

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace warren::crash {

// The padding byte at `i` of message (pub, seq).
inline char PadByte(uint32_t pub, uint32_t seq, size_t i) {
  uint64_t x = ((uint64_t{pub} << 32) | seq) + 0x9e3779b97f4a7c15u * (i + 1);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
  x ^= x >> 31;
  return static_cast<char>('a' + x % 26);
}

inline std::string MakeBody(uint32_t pub, uint32_t seq, uint32_t first,
                            uint32_t n, size_t padding) {
  std::string body = "p" + std::to_string(pub) + " s" + std::to_string(seq) +
                     " b" + std::to_string(first) + "/" + std::to_string(n) +
                     " ";
  body.reserve(body.size() + padding);
  for (size_t i = 0; i < padding; ++i) body += PadByte(pub, seq, i);
  return body;
}

struct Body {
  uint32_t pub = 0;
  uint32_t seq = 0;
  uint32_t first = 0;  // of the publish (batch) that carried it
  uint32_t n = 0;      // messages in that publish
};

// Parses and checks a body made by MakeBody; kDataLoss when it is damaged.
// Parses a decimal number that is all of `s`.
inline bool ParseU32(std::string_view s, uint32_t* out) {
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && end == s.data() + s.size() && !s.empty();
}

inline absl::StatusOr<Body> ParseBody(std::string_view body) {
  const std::string_view whole = body;
  auto bad = [&] {
    return absl::DataLossError("damaged body: " +
                               std::string(whole.substr(0, 60)));
  };
  auto field = [&](char tag, char end, uint32_t* out) {
    if (body.empty() || body[0] != tag) return false;
    const size_t stop = body.find(end);
    if (stop == std::string_view::npos) return false;
    if (!ParseU32(body.substr(1, stop - 1), out)) return false;
    body.remove_prefix(stop + 1);
    return true;
  };
  Body b;
  if (!field('p', ' ', &b.pub) || !field('s', ' ', &b.seq) ||
      !field('b', '/', &b.first)) {
    return bad();
  }
  const size_t space = body.find(' ');
  if (space == std::string_view::npos ||
      !ParseU32(body.substr(0, space), &b.n)) {
    return bad();
  }
  body.remove_prefix(space + 1);
  if (b.n == 0 || b.seq < b.first || b.seq - b.first >= b.n) return bad();
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] != PadByte(b.pub, b.seq, i)) return bad();
  }
  return b;
}

}  // namespace warren::crash

#endif  // WARREN_TESTS_WAL_CRASH_BODY_H_
