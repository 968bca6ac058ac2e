// Validation of names and keys (SEMANTICS.md section 1).

#ifndef WARREN_SRC_NAMES_H_
#define WARREN_SRC_NAMES_H_

#include <string_view>

#include "absl/status/status.h"

namespace warren::internal {

inline constexpr size_t kMaxNameLength = 255;

// Exchange and queue names: 1 to 255 bytes, no NUL. `what` names the kind of
// object in the error ("exchange", "queue").
absl::Status ValidateName(std::string_view name, std::string_view what);

// Routing and binding keys: 0 to 255 bytes.
absl::Status ValidateKey(std::string_view key, std::string_view what);

}  // namespace warren::internal

#endif  // WARREN_SRC_NAMES_H_
