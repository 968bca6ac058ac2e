// -----------------------------------------------------------------------------
// File: warren/stats.h
// -----------------------------------------------------------------------------
//
// Statistics snapshots. `Broker::GetQueueStats`, `Broker::GetExchangeStats`
// and `Broker::Stats` return these by value; taking one never stops the
// broker. Gauges (ready, unacked, consumers) are read at one moment per queue;
// counters only grow.
//
// Example:
//
//   auto stats = broker->GetQueueStats("email").value();
//   std::cout << stats.ready << " ready, " << stats.unacked << " unacked\n";

#ifndef WARREN_STATS_H_
#define WARREN_STATS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace warren {

struct QueueStats {
  std::string name;
  // Gauges.
  uint64_t ready = 0;        // waiting for a consumer (returned ones included)
  uint64_t ready_bytes = 0;  // body bytes of the ready messages
  uint64_t unacked = 0;      // delivered and not yet settled
  uint64_t delayed = 0;      // waiting for a retry backoff or a publish delay
  uint64_t consumers = 0;    // registered, not cancelled or closed
  // Publishes waiting for room in this full queue (Overflow::kBlock).
  uint64_t blocked_publishers = 0;
  // How long the oldest ready message has waited since it was published (on
  // the broker's clock); zero when there is none.
  absl::Duration oldest_ready_age = absl::ZeroDuration();
  // Counters.
  uint64_t published = 0;    // messages accepted into the queue
  uint64_t delivered = 0;    // deliveries, redeliveries included
  uint64_t redelivered = 0;  // deliveries with `redelivered` set
  uint64_t acked = 0;
  uint64_t nacked = 0;    // Nack, with or without requeue
  uint64_t rejected = 0;  // Reject, with or without requeue
  // Returned to the queue: nack or reject with requeue, a consumer's close,
  // an expired lease (a retry counts when it is scheduled).
  uint64_t requeued = 0;
  // A message given up on (rejected without requeue, expired, over the
  // length limit, out of attempts) ends in exactly one of the next two,
  // whatever the reason (which `nacked`, `rejected` or `expired` may count
  // besides).
  //
  // Republished to the dead-letter exchange and taken by a queue there (or
  // refused by a full kRejectPublishDlx queue, which dead-letters it on).
  uint64_t dead_lettered = 0;
  // Removed without delivery and not dead-lettered: no dead-letter exchange
  // (drop-head, requeue=false, expiry, delivery limit), a dead-letter
  // exchange that does not exist, nothing bound to it, a dead-letter cycle,
  // or every queue there refused it (full, and not kRejectPublishDlx).
  uint64_t dropped = 0;
  uint64_t refused = 0;  // publishes refused by the length limit
  uint64_t purged = 0;   // removed by PurgeQueue
  // Removed because their time-to-live ran out (and dead-lettered or
  // dropped: counted there too).
  uint64_t expired = 0;
  uint64_t deduplicated = 0;  // publishes dropped as duplicates
  uint64_t lease_expired =
      0;  // deliveries returned because their lease ran out
};

struct ExchangeStats {
  std::string name;
  // Publishes to this exchange, dead-lettering and redrive included. A
  // message that reaches it through an exchange-to-exchange binding, or as
  // an alternate exchange, is counted by the exchange it was published to
  // only.
  uint64_t published = 0;
  uint64_t routed = 0;      // publishes that reached at least one queue
  uint64_t unroutable = 0;  // publishes that reached no queue
  uint64_t returned = 0;    // unroutable mandatory publishes handed back
};

// The write-ahead log (all zero without one).
struct WalStats {
  uint64_t records = 0;        // log records written since Open
  uint64_t bytes = 0;          // bytes written since Open
  uint64_t syncs = 0;          // fdatasync calls since Open
  uint64_t segments = 0;       // segment files now in the directory
  uint64_t live_messages = 0;  // persistent messages not yet settled
  uint64_t compactions = 0;    // segments rewritten to free space
  // A failed write or sync left records of the current segment unsynced:
  // they may never be durable, nor the settles among them, so the log
  // deletes no segment until the broker is opened again.
  bool segments_held = false;
  // At Open: bytes replayed and damaged bytes skipped (OnCorruption::kSkip).
  uint64_t recovered_bytes = 0;
  uint64_t skipped_bytes = 0;
  uint64_t recovered_messages = 0;
};

struct BrokerStats {
  std::vector<QueueStats> queues;        // sorted by name
  std::vector<ExchangeStats> exchanges;  // sorted by name; "" is the default
  WalStats wal;
};

}  // namespace warren

#endif  // WARREN_STATS_H_
