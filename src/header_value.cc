// Equality of header values (declared in include/warren/message.h).

#include "warren/message.h"

namespace warren {

// Equal when both hold the same kind and equal contents, recursively for
// lists (element by element, in order) and tables (same keys, equal values).
// The kind is part of the value: an integer never equals a double, a bool
// never equals an integer, a string never equals bytes. Doubles compare as
// IEEE values (NaN equals nothing, 0.0 equals -0.0). Void equals void.
bool operator==(const HeaderValue& a, const HeaderValue& b) {
  // std::variant's == compares the alternative index first, then the held
  // values; for lists and tables that recurses into this function.
  return a.value_ == b.value_;
}

}  // namespace warren
