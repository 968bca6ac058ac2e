// -----------------------------------------------------------------------------
// File: src/headers_match.h
// -----------------------------------------------------------------------------
//
// Headers-exchange routing: RabbitMQ's headers matching.
//
// A headers-exchange binding carries an argument table. Its optional
// `x-match` entry selects the mode:
//
//   | x-match              | a message matches when                           |
//   |----------------------|--------------------------------------------------|
//   | `all` (the default)  | every counting argument matches a header         |
//   | `any`                | at least one counting argument matches a header  |
//   | `all-with-x`         | as `all`, and `x-` arguments count               |
//   | `any-with-x`         | as `any`, and `x-` arguments count               |
//
// Counting arguments: every argument except `x-match` itself and, under `all`
// and `any`, except those whose key starts with `x-`. An argument matches
// when the message has a header of the same name and, unless the argument's
// value is void (a default-constructed HeaderValue, meaning "present, any
// value"), an equal value (`HeaderValue`'s ==: same kind and contents; an
// integer never equals a double). So `all` with no counting arguments matches
// every message and `any` with no counting arguments matches none.
//
// Example:
//
//   warren::Headers args = {{"x-match", "any"}, {"format", "pdf"},
//                           {"type", "report"}};
//   if (!ValidateHeadersBindingArguments(args).ok()) { ... }
//   HeadersMatch(args, {{"format", "pdf"}});  // true
//
// Thread-safety: free functions over values; safe to call concurrently.

#ifndef WARREN_SRC_HEADERS_MATCH_H_
#define WARREN_SRC_HEADERS_MATCH_H_

#include "absl/status/status.h"
#include "warren/message.h"

namespace warren::internal {

// Checks a headers-exchange binding's argument table. Returns OK when it has
// no `x-match` entry or when that entry is a string (HeaderValue::Kind::
// kString, not bytes) equal to "all", "any", "all-with-x" or "any-with-x"
// (case-sensitive). Otherwise returns kInvalidArgument naming the bad value.
// Other arguments are not checked: any key and any value may be matched on.
absl::Status ValidateHeadersBindingArguments(const warren::Headers& args);

// Checks the values of a message's headers or of a binding's arguments
// (`what` names them in the error, e.g. "message header"): kInvalidArgument
// when one is nested more than kMaxHeaderNesting lists and tables deep or,
// unless `allow_nan`, is a NaN double (which equals nothing, so a binding
// holding one could never be unbound).
absl::Status ValidateHeaderValues(const warren::Headers& headers,
                                  std::string_view what, bool allow_nan);

// Returns true when a message with headers `message_headers` matches a
// headers-exchange binding with arguments `binding_args`, under the rules in
// the file comment. `binding_args` should have passed
// ValidateHeadersBindingArguments; an invalid `x-match` is treated as `all`,
// as RabbitMQ does. Cost: O(counting arguments * log(message headers)).
bool HeadersMatch(const warren::Headers& binding_args,
                  const warren::Headers& message_headers);

}  // namespace warren::internal

#endif  // WARREN_SRC_HEADERS_MATCH_H_
