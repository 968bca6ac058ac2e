#include "headers_match.h"

#include <cmath>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "warren/message.h"

namespace warren::internal {
namespace {

constexpr std::string_view kXMatchKey = "x-match";
constexpr std::string_view kExtensionPrefix = "x-";

// The values of `x-match`.
enum class XMatch { kAll, kAny, kAllWithX, kAnyWithX };

// Returns the mode an `x-match` value names, or nullopt when it names none.
std::optional<XMatch> ParseXMatch(const HeaderValue& value) {
  const std::string* s = value.as_string();
  if (s == nullptr) return std::nullopt;
  if (*s == "all") return XMatch::kAll;
  if (*s == "any") return XMatch::kAny;
  if (*s == "all-with-x") return XMatch::kAllWithX;
  if (*s == "any-with-x") return XMatch::kAnyWithX;
  return std::nullopt;
}

// `s` quoted and C-escaped for an error message, cut to a readable length.
std::string QuoteForError(const std::string& s) {
  constexpr std::size_t kMaxShown = 64;
  const std::size_t shown = s.size() < kMaxShown ? s.size() : kMaxShown;
  return absl::StrCat("\"",
                      absl::CHexEscape(absl::string_view(s.data(), shown)),
                      s.size() > kMaxShown ? "\"..." : "\"");
}

// A short description of a header value for error messages: its kind and,
// for scalars, its value.
std::string DescribeForError(const HeaderValue& value) {
  switch (value.kind()) {
    case HeaderValue::Kind::kVoid:
      return "void";
    case HeaderValue::Kind::kBool:
      return absl::StrCat("bool ", *value.as_bool() ? "true" : "false");
    case HeaderValue::Kind::kInt:
      return absl::StrCat("int ", *value.as_int());
    case HeaderValue::Kind::kDouble:
      return absl::StrCat("double ", *value.as_double());
    case HeaderValue::Kind::kString:
      return absl::StrCat("string ", QuoteForError(*value.as_string()));
    case HeaderValue::Kind::kBytes:
      return absl::StrCat("bytes ", QuoteForError(value.as_bytes()->data));
    case HeaderValue::Kind::kList:
      return "a list";
    case HeaderValue::Kind::kTable:
      return "a table";
  }
  return "a value of unknown kind";
}

// The first of `v` and the values it holds that breaks ValidateHeaderValues'
// rules, `depth` lists and tables deep; its problem in `*why`.
bool BadValue(const HeaderValue& v, int depth, bool allow_nan,
              std::string* why) {
  if (depth > kMaxHeaderNesting) {
    *why = absl::StrCat("nests lists and tables more than ", kMaxHeaderNesting,
                        " deep");
    return true;
  }
  if (const double* d = v.as_double();
      d != nullptr && !allow_nan && std::isnan(*d)) {
    *why = "is NaN, which equals nothing (the binding could never be removed)";
    return true;
  }
  if (const HeaderList* list = v.as_list()) {
    for (const HeaderValue& e : *list) {
      if (BadValue(e, depth + 1, allow_nan, why)) return true;
    }
  } else if (const Headers* table = v.as_table()) {
    for (const auto& [name, e] : *table) {
      if (BadValue(e, depth + 1, allow_nan, why)) return true;
    }
  }
  return false;
}

}  // namespace

absl::Status ValidateHeaderValues(const warren::Headers& headers,
                                  std::string_view what, bool allow_nan) {
  std::string why;
  for (const auto& [name, value] : headers) {
    if (BadValue(value, 0, allow_nan, &why)) {
      return absl::InvalidArgumentError(
          absl::StrCat(absl::string_view(what.data(), what.size()), " ",
                       QuoteForError(name), " ", why));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateHeadersBindingArguments(const warren::Headers& args) {
  const auto it = args.find(kXMatchKey);
  if (it == args.end() || ParseXMatch(it->second).has_value()) {
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "headers binding argument 'x-match' must be the string \"all\", "
      "\"any\", \"all-with-x\" or \"any-with-x\"; got ",
      DescribeForError(it->second)));
}

bool HeadersMatch(const warren::Headers& binding_args,
                  const warren::Headers& message_headers) {
  XMatch mode = XMatch::kAll;
  if (const auto it = binding_args.find(kXMatchKey); it != binding_args.end()) {
    mode = ParseXMatch(it->second).value_or(XMatch::kAll);
  }
  const bool all = mode == XMatch::kAll || mode == XMatch::kAllWithX;
  const bool x_counts = mode == XMatch::kAllWithX || mode == XMatch::kAnyWithX;
  for (const auto& [key, expected] : binding_args) {
    if (key == kXMatchKey) continue;
    if (!x_counts && key.starts_with(kExtensionPrefix)) continue;
    const auto header = message_headers.find(key);
    const bool matched = header != message_headers.end() &&
                         (expected.is_void() || header->second == expected);
    if (all && !matched) return false;
    if (!all && matched) return true;
  }
  // `all`: nothing failed (vacuously true with no counting arguments).
  // `any`: nothing matched (so false with no counting arguments).
  return all;
}

}  // namespace warren::internal
