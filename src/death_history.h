// Writing a death into a message's history (the `x-death` headers).

#ifndef WARREN_SRC_DEATH_HISTORY_H_
#define WARREN_SRC_DEATH_HISTORY_H_

#include <string_view>

#include "absl/time/time.h"
#include "warren/dead_letter.h"
#include "warren/message.h"

namespace warren::internal {

// Records that `message`, last published to `exchange` with `routing_key`,
// died in `queue` for `reason` at `now`: increments and moves to the front
// the (queue, reason) entry of `x-death`, or adds one; sets the first- and
// last-death headers; removes the message's expiration (keeping it as the
// entry's original expiration) so it does not expire again.
void RecordDeath(Message& message, std::string_view queue, DeathReason reason,
                 std::string_view exchange, std::string_view routing_key,
                 absl::Time now);

// True when routing the message to `queue` again would close a dead-letter
// cycle to drop: `queue` is in the history, and no death since the message
// was last there (that death included) was a rejection.
bool IsDeadLetterCycle(const Message& message, std::string_view queue);

}  // namespace warren::internal

#endif  // WARREN_SRC_DEATH_HISTORY_H_
