// Tests for src/headers_match.h (headers-exchange matching) and for
// HeaderValue's operator== (src/header_value.cc), which it relies on.

#include "headers_match.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "warren/message.h"

namespace warren::internal {
namespace {

TEST_CASE("HeaderValue: equal only with the same kind and contents",
          "[headers_match]") {
  CHECK(HeaderValue() == HeaderValue());
  CHECK(HeaderValue(true) == HeaderValue(true));
  CHECK(HeaderValue(true) != HeaderValue(false));
  CHECK(HeaderValue(int64_t{3}) == HeaderValue(3));
  CHECK(HeaderValue(3) != HeaderValue(4));
  CHECK(HeaderValue(2.5) == HeaderValue(2.5));
  CHECK(HeaderValue("x") == HeaderValue(std::string("x")));
  CHECK(HeaderValue("x") != HeaderValue("y"));
  CHECK(HeaderValue(Bytes{"x"}) == HeaderValue(Bytes{"x"}));

  // The kind is part of the value.
  CHECK(HeaderValue(1) != HeaderValue(1.0));
  CHECK(HeaderValue(0) != HeaderValue(0.0));
  CHECK(HeaderValue(1) != HeaderValue(true));
  CHECK(HeaderValue(0) != HeaderValue(false));
  CHECK(HeaderValue("x") != HeaderValue(Bytes{"x"}));
  CHECK(HeaderValue("") != HeaderValue());
  CHECK(HeaderValue(HeaderList{}) != HeaderValue(Headers{}));
  CHECK(HeaderValue(HeaderList{}) != HeaderValue());

  // Doubles compare as IEEE values.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  CHECK(HeaderValue(nan) != HeaderValue(nan));
  CHECK(HeaderValue(0.0) == HeaderValue(-0.0));
}

TEST_CASE("HeaderValue: nested lists and tables compare deeply",
          "[headers_match]") {
  const HeaderValue a = HeaderList{
      1, "x", Headers{{"k", 2}, {"inner", HeaderList{true, Bytes{"b"}}}}};
  const HeaderValue same = HeaderList{
      1, "x", Headers{{"k", 2}, {"inner", HeaderList{true, Bytes{"b"}}}}};
  const HeaderValue reordered = HeaderList{
      "x", 1, Headers{{"k", 2}, {"inner", HeaderList{true, Bytes{"b"}}}}};
  const HeaderValue deep_int_vs_double = HeaderList{
      1, "x", Headers{{"k", 2.0}, {"inner", HeaderList{true, Bytes{"b"}}}}};
  const HeaderValue deepest_differs = HeaderList{
      1, "x", Headers{{"k", 2}, {"inner", HeaderList{true, Bytes{"c"}}}}};
  const HeaderValue extra_key = HeaderList{
      1, "x",
      Headers{{"k", 2}, {"inner", HeaderList{true, Bytes{"b"}}}, {"z", 0}}};
  const HeaderValue shorter = HeaderList{1, "x"};

  CHECK(a == same);
  CHECK(a != reordered);
  CHECK(a != deep_int_vs_double);
  CHECK(a != deepest_differs);
  CHECK(a != extra_key);
  CHECK(a != shorter);
  CHECK(HeaderValue(Headers{{"a", 1}, {"b", 2}}) ==
        HeaderValue(Headers{{"b", 2}, {"a", 1}}));  // Tables are unordered.
  CHECK(HeaderValue(Headers{{"a", 1}}) != HeaderValue(Headers{{"b", 1}}));
}

TEST_CASE("ValidateHeadersBindingArguments: accepts the four x-match modes",
          "[headers_match]") {
  CHECK(ValidateHeadersBindingArguments({}).ok());
  CHECK(ValidateHeadersBindingArguments({{"a", 1}, {"x-other", "zz"}}).ok());
  for (const char* mode : {"all", "any", "all-with-x", "any-with-x"}) {
    INFO("x-match " << mode);
    CHECK(ValidateHeadersBindingArguments({{"x-match", mode}, {"a", 1}}).ok());
  }
}

TEST_CASE("ValidateHeadersBindingArguments: rejects any other x-match",
          "[headers_match]") {
  const std::vector<HeaderValue> bad = {"ALL",
                                        "All",
                                        "",
                                        "none",
                                        "all ",
                                        "all-with-X",
                                        "any-with-y",
                                        Bytes{"all"},
                                        1,
                                        true,
                                        1.5,
                                        HeaderValue(),
                                        HeaderList{"all"},
                                        Headers{{"all", "all"}}};
  for (const HeaderValue& value : bad) {
    const absl::Status status =
        ValidateHeadersBindingArguments({{"x-match", value}});
    INFO(status.ToString());
    CHECK(status.code() == absl::StatusCode::kInvalidArgument);
    CHECK(status.message().find("x-match") != absl::string_view::npos);
  }
  const absl::Status status =
      ValidateHeadersBindingArguments({{"x-match", "first"}});
  CHECK(status.message() ==
        "headers binding argument 'x-match' must be the string \"all\", "
        "\"any\", \"all-with-x\" or \"any-with-x\"; got string \"first\"");
  CHECK(ValidateHeadersBindingArguments({{"x-match", 7}})
            .message()
            .find("got int 7") != absl::string_view::npos);
  CHECK(ValidateHeadersBindingArguments({{"x-match", Bytes{"all"}}})
            .message()
            .find("got bytes \"all\"") != absl::string_view::npos);
}

TEST_CASE("HeadersMatch: all is the default and needs every argument",
          "[headers_match]") {
  for (const Headers& args :
       {Headers{{"format", "pdf"}, {"type", "report"}},
        Headers{{"x-match", "all"}, {"format", "pdf"}, {"type", "report"}}}) {
    CHECK(HeadersMatch(args, {{"format", "pdf"}, {"type", "report"}}));
    // Extra message headers do not matter.
    CHECK(
        HeadersMatch(args, {{"format", "pdf"}, {"type", "report"}, {"z", 1}}));
    CHECK_FALSE(HeadersMatch(args, {{"format", "pdf"}}));
    CHECK_FALSE(HeadersMatch(args, {{"format", "pdf"}, {"type", "log"}}));
    CHECK_FALSE(HeadersMatch(args, {}));
  }
}

TEST_CASE("HeadersMatch: any needs at least one argument", "[headers_match]") {
  const Headers args = {
      {"x-match", "any"}, {"format", "pdf"}, {"type", "report"}};
  CHECK(HeadersMatch(args, {{"format", "pdf"}, {"type", "report"}}));
  CHECK(HeadersMatch(args, {{"format", "pdf"}}));
  CHECK(HeadersMatch(args, {{"type", "report"}, {"format", "zip"}}));
  CHECK_FALSE(HeadersMatch(args, {{"format", "zip"}, {"type", "log"}}));
  CHECK_FALSE(HeadersMatch(args, {{"other", "pdf"}}));
  CHECK_FALSE(HeadersMatch(args, {}));
}

TEST_CASE("HeadersMatch: all with no arguments matches every message",
          "[headers_match]") {
  CHECK(HeadersMatch({}, {}));
  CHECK(HeadersMatch({}, {{"a", 1}}));
  CHECK(HeadersMatch({{"x-match", "all"}}, {}));
  CHECK(HeadersMatch({{"x-match", "all-with-x"}}, {}));
  // Only ignored (x-) arguments: none count.
  CHECK(HeadersMatch({{"x-match", "all"}, {"x-a", 1}}, {}));
  CHECK(HeadersMatch({{"x-a", 1}, {"x-b", 2}}, {{"a", 1}}));
}

TEST_CASE("HeadersMatch: any with no arguments matches no message",
          "[headers_match]") {
  CHECK_FALSE(HeadersMatch({{"x-match", "any"}}, {}));
  CHECK_FALSE(HeadersMatch({{"x-match", "any"}}, {{"a", 1}}));
  CHECK_FALSE(HeadersMatch({{"x-match", "any-with-x"}}, {{"a", 1}}));
  // x-match itself never counts, not even under any-with-x.
  CHECK_FALSE(
      HeadersMatch({{"x-match", "any-with-x"}}, {{"x-match", "any-with-x"}}));
  // Only ignored (x-) arguments, even when the message has them.
  CHECK_FALSE(HeadersMatch({{"x-match", "any"}, {"x-a", 1}}, {{"x-a", 1}}));
}

TEST_CASE("HeadersMatch: x- arguments are ignored under all and any",
          "[headers_match]") {
  // all: a missing or different x- header does not fail the match.
  const Headers all_args = {{"x-match", "all"}, {"x-a", 1}, {"b", 2}};
  CHECK(HeadersMatch(all_args, {{"b", 2}}));
  CHECK(HeadersMatch(all_args, {{"b", 2}, {"x-a", 99}}));
  CHECK_FALSE(HeadersMatch(all_args, {{"x-a", 1}}));
  // any: a matching x- header does not make the match.
  const Headers any_args = {{"x-match", "any"}, {"x-a", 1}, {"b", 2}};
  CHECK_FALSE(HeadersMatch(any_args, {{"x-a", 1}}));
  CHECK(HeadersMatch(any_args, {{"b", 2}}));
  // Only the "x-" prefix is special: "x" and "xa" are ordinary keys.
  CHECK_FALSE(HeadersMatch({{"x", 1}}, {}));
  CHECK_FALSE(HeadersMatch({{"xa", 1}}, {}));
  CHECK(HeadersMatch({{"x-match", "any"}, {"x", 1}}, {{"x", 1}}));
}

TEST_CASE("HeadersMatch: x- arguments count under all-with-x and any-with-x",
          "[headers_match]") {
  const Headers all_args = {{"x-match", "all-with-x"}, {"x-a", 1}, {"b", 2}};
  CHECK(HeadersMatch(all_args, {{"x-a", 1}, {"b", 2}}));
  CHECK_FALSE(HeadersMatch(all_args, {{"b", 2}}));
  CHECK_FALSE(HeadersMatch(all_args, {{"x-a", 2}, {"b", 2}}));
  // x-match is not required in the message.
  CHECK(HeadersMatch({{"x-match", "all-with-x"}, {"x-a", 1}}, {{"x-a", 1}}));

  const Headers any_args = {{"x-match", "any-with-x"}, {"x-a", 1}, {"b", 2}};
  CHECK(HeadersMatch(any_args, {{"x-a", 1}}));
  CHECK(HeadersMatch(any_args, {{"b", 2}}));
  CHECK_FALSE(HeadersMatch(any_args, {{"x-a", 2}, {"b", 3}}));
  CHECK_FALSE(HeadersMatch(any_args, {}));
}

TEST_CASE("HeadersMatch: a void argument means the header is present",
          "[headers_match]") {
  const Headers all_args = {{"a", HeaderValue()}, {"b", 2}};
  CHECK(HeadersMatch(all_args, {{"a", "anything"}, {"b", 2}}));
  CHECK(HeadersMatch(all_args, {{"a", 1.5}, {"b", 2}}));
  CHECK(HeadersMatch(all_args, {{"a", HeaderValue()}, {"b", 2}}));
  CHECK(HeadersMatch(all_args, {{"a", HeaderList{}}, {"b", 2}}));
  CHECK_FALSE(HeadersMatch(all_args, {{"b", 2}}));

  const Headers any_args = {{"x-match", "any"}, {"a", HeaderValue()}};
  CHECK(HeadersMatch(any_args, {{"a", false}}));
  CHECK_FALSE(HeadersMatch(any_args, {{"b", false}}));

  // A void x- argument under the with-x modes: presence of the x- header.
  const Headers with_x = {{"x-match", "all-with-x"}, {"x-a", HeaderValue()}};
  CHECK(HeadersMatch(with_x, {{"x-a", "v"}}));
  CHECK_FALSE(HeadersMatch(with_x, {}));

  // A void message header matches only a void or equal (void) argument.
  CHECK_FALSE(HeadersMatch({{"a", 1}}, {{"a", HeaderValue()}}));
}

TEST_CASE("HeadersMatch: values compare by kind, int never equals double",
          "[headers_match]") {
  CHECK(HeadersMatch({{"n", 1}}, {{"n", 1}}));
  CHECK(HeadersMatch({{"n", int64_t{1}}}, {{"n", 1}}));
  CHECK_FALSE(HeadersMatch({{"n", 1}}, {{"n", 1.0}}));
  CHECK_FALSE(HeadersMatch({{"n", 1.0}}, {{"n", 1}}));
  CHECK_FALSE(HeadersMatch({{"n", 1}}, {{"n", true}}));
  CHECK_FALSE(HeadersMatch({{"n", 1}}, {{"n", "1"}}));
  CHECK_FALSE(HeadersMatch({{"s", "v"}}, {{"s", Bytes{"v"}}}));
  CHECK(HeadersMatch({{"s", Bytes{"v"}}}, {{"s", Bytes{"v"}}}));
  // Keys are case-sensitive.
  CHECK_FALSE(HeadersMatch({{"Key", 1}}, {{"key", 1}}));
}

TEST_CASE("HeadersMatch: nested tables and lists must be equal",
          "[headers_match]") {
  const HeaderValue nested =
      Headers{{"list", HeaderList{1, 2.0, "three"}}, {"flag", true}};
  const Headers args = {{"meta", nested}};
  CHECK(HeadersMatch(
      args, {{"meta", Headers{{"flag", true},
                              {"list", HeaderList{1, 2.0, "three"}}}}}));
  CHECK_FALSE(HeadersMatch(
      args, {{"meta",
              Headers{{"flag", true}, {"list", HeaderList{1, 2, "three"}}}}}));
  CHECK_FALSE(HeadersMatch(
      args, {{"meta", Headers{{"flag", true},
                              {"list", HeaderList{2.0, 1, "three"}}}}}));
  CHECK_FALSE(HeadersMatch(args, {{"meta", Headers{{"flag", true}}}}));
  CHECK(HeadersMatch({{"l", HeaderList{}}}, {{"l", HeaderList{}}}));
  CHECK_FALSE(HeadersMatch({{"l", HeaderList{}}}, {{"l", Headers{}}}));
}

TEST_CASE("HeadersMatch: an invalid x-match falls back to all",
          "[headers_match]") {
  // Validation rejects these; matching still behaves as RabbitMQ does.
  const Headers args = {{"x-match", "bogus"}, {"a", 1}, {"b", 2}};
  CHECK(HeadersMatch(args, {{"a", 1}, {"b", 2}}));
  CHECK_FALSE(HeadersMatch(args, {{"a", 1}}));
  CHECK(HeadersMatch({{"x-match", 5}}, {}));
}

}  // namespace
}  // namespace warren::internal
