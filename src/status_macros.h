// Status propagation helpers (Debian's Abseil 20220623 has no
// ABSL_RETURN_IF_ERROR).

#ifndef WARREN_SRC_STATUS_MACROS_H_
#define WARREN_SRC_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define WARREN_RETURN_IF_ERROR(expr)                                  \
  do {                                                                \
    if (absl::Status warren_status_ = (expr); !warren_status_.ok()) { \
      return warren_status_;                                          \
    }                                                                 \
  } while (false)

#define WARREN_STATUS_CONCAT_INNER_(a, b) a##b
#define WARREN_STATUS_CONCAT_(a, b) WARREN_STATUS_CONCAT_INNER_(a, b)

#define WARREN_ASSIGN_OR_RETURN(lhs, rexpr) \
  WARREN_ASSIGN_OR_RETURN_IMPL_(            \
      WARREN_STATUS_CONCAT_(warren_statusor_, __LINE__), lhs, rexpr)

#define WARREN_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                  \
  if (!statusor.ok()) return std::move(statusor).status();  \
  lhs = std::move(statusor).value()

#endif  // WARREN_SRC_STATUS_MACROS_H_
