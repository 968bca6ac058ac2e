// -----------------------------------------------------------------------------
// File: warren/dead_letter.h
// -----------------------------------------------------------------------------
//
// Dead-lettering: when a queue gives up on a message (rejected without
// requeue, expired, pushed out by a length limit, or out of delivery
// attempts), it republishes the message to its dead-letter exchange with a
// record of why. This header defines the typed view of that record:
//
//   * `DeathReason` — rejected, expired, maxlen, delivery_limit.
//   * `DeathRecord` — one entry of a message's death history, the equivalent
//                     of one table in RabbitMQ's `x-death` header.
//   * `DeathHistory(message)`, `FirstDeath(message)`, `LastDeath(message)`.
//
// The history lives in the message's headers exactly as RabbitMQ writes it
// (`x-death`, `x-first-death-queue`, `x-first-death-reason`,
// `x-first-death-exchange`, `x-last-death-*`), so code written against
// RabbitMQ reads it unchanged; these functions parse it.
//
// Example:
//
//   broker->DeclareExchange("dlx", warren::ExchangeType::kFanout);
//   broker->DeclareQueue("dead");
//   broker->Bind("dead", "dlx", "");
//   broker->DeclareQueue("work", {.dead_letter_exchange = "dlx"});
//   ...
//   consumer->Reject(d, {.requeue = false});       // -> "dead"
//   auto dlq = broker->Consume("dead").value();  // keep it: closing returns
//   auto dead = dlq->Receive(absl::Seconds(1));   // what it holds
//   for (const warren::DeathRecord& r : warren::DeathHistory(dead->message()))
//   {
//     // r.queue == "work", r.reason == warren::DeathReason::kRejected
//   }
//   dlq->Ack(*dead);

#ifndef WARREN_DEAD_LETTER_H_
#define WARREN_DEAD_LETTER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/time/time.h"
#include "warren/message.h"

namespace warren {

enum class DeathReason {
  kRejected,       // nack or reject without requeue
  kExpired,        // its time-to-live ran out
  kMaxLen,         // pushed out or refused by a length limit
  kDeliveryLimit,  // out of delivery attempts
};

// "rejected", "expired", "maxlen", "delivery_limit" (RabbitMQ's names).
std::string_view DeathReasonName(DeathReason reason);

// One (queue, reason) entry of a death history.
struct DeathRecord {
  std::string queue;
  DeathReason reason = DeathReason::kRejected;
  // How many times the message died in this queue for this reason.
  int64_t count = 0;
  // When it first died there for this reason (second precision, as AMQP
  // timestamps).
  absl::Time time;
  // The exchange and routing keys the message had when it first died there.
  std::string exchange;
  std::vector<std::string> routing_keys;
  // The per-message expiration it had, which dead-lettering removes.
  std::optional<absl::Duration> original_expiration;

  friend bool operator==(const DeathRecord&, const DeathRecord&) = default;
};

// Where and why a message died: the first or the last time.
struct DeathSite {
  std::string queue;
  DeathReason reason = DeathReason::kRejected;
  std::string exchange;

  friend bool operator==(const DeathSite&, const DeathSite&) = default;
};

// The message's death history, most recent first; empty when it never died.
std::vector<DeathRecord> DeathHistory(const Message& message);
std::optional<DeathSite> FirstDeath(const Message& message);
std::optional<DeathSite> LastDeath(const Message& message);

}  // namespace warren

#endif  // WARREN_DEAD_LETTER_H_
