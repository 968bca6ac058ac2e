#include "names.h"

#include <string>

#include "str_util.h"

namespace warren::internal {

absl::Status ValidateName(std::string_view name, std::string_view what) {
  if (name.empty()) {
    return absl::InvalidArgumentError(
        StrCat(std::string(what), " name must not be empty"));
  }
  if (name.size() > kMaxNameLength) {
    return absl::InvalidArgumentError(
        StrCat(std::string(what), " name is ", name.size(),
               " bytes; the limit is ", kMaxNameLength));
  }
  if (name.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError(
        StrCat(std::string(what), " name must not contain NUL"));
  }
  return absl::OkStatus();
}

absl::Status ValidateKey(std::string_view key, std::string_view what) {
  if (key.size() > kMaxNameLength) {
    return absl::InvalidArgumentError(
        StrCat(std::string(what), " is ", key.size(), " bytes; the limit is ",
               kMaxNameLength));
  }
  return absl::OkStatus();
}

}  // namespace warren::internal
