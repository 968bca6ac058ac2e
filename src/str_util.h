// String helpers that accept std::string_view (Debian's Abseil has its own
// absl::string_view, so absl::StrCat does not take std::string_view).

#ifndef WARREN_SRC_STR_UTIL_H_
#define WARREN_SRC_STR_UTIL_H_

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <type_traits>

namespace warren::internal {

namespace strings_internal {
inline void Append(std::string& out, std::string_view s) { out.append(s); }
inline void Append(std::string& out, char c) { out.push_back(c); }
template <typename T,
          std::enable_if_t<std::is_arithmetic_v<T> && !std::is_same_v<T, char>,
                           int> = 0>
void Append(std::string& out, T v) {
  out.append(std::to_string(v));
}
}  // namespace strings_internal

// Concatenates strings, string views, characters and numbers.
template <typename... Args>
std::string StrCat(const Args&... args) {
  std::string out;
  (strings_internal::Append(out, args), ...);
  return out;
}

// Transparent hashing so that maps keyed by std::string can be searched with a
// std::string_view without building a string.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const {
    return std::hash<std::string_view>{}(s);
  }
};
struct StringEq {
  using is_transparent = void;
  bool operator()(std::string_view a, std::string_view b) const {
    return a == b;
  }
};

}  // namespace warren::internal

#endif  // WARREN_SRC_STR_UTIL_H_
