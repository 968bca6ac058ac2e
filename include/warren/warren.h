// -----------------------------------------------------------------------------
// File: warren/warren.h
// -----------------------------------------------------------------------------
//
// The umbrella header: includes the whole public API of warren, an embeddable
// in-process message broker with RabbitMQ's model (exchanges, bindings,
// queues, consumers with manual acknowledgement).
//
//   * warren/broker.h   — Broker, PublishOutcome
//   * warren/consumer.h — Consumer, Delivery, Subscription
//   * warren/dead_letter.h — DeathReason, DeathRecord, DeathHistory()
//   * warren/message.h  — Message, Properties, Headers, HeaderValue
//   * warren/options.h  — BrokerOptions, QueueOptions, ... (plain structs)
//   * warren/stats.h    — QueueStats, ExchangeStats, BrokerStats
//
// Example:
//
//   #include <warren/warren.h>
//
//   auto broker = warren::Broker::Open({}).value();
//   broker->DeclareQueue("hello");
//   broker->Publish("", "hello", warren::Message("hi"));
//   auto consumer = broker->Consume("hello").value();
//   auto d = consumer->Receive(absl::Seconds(1)).value();
//   consumer->Ack(d);

#ifndef WARREN_WARREN_H_
#define WARREN_WARREN_H_

#include "warren/broker.h"       // IWYU pragma: export
#include "warren/consumer.h"     // IWYU pragma: export
#include "warren/dead_letter.h"  // IWYU pragma: export
#include "warren/message.h"      // IWYU pragma: export
#include "warren/options.h"      // IWYU pragma: export
#include "warren/stats.h"        // IWYU pragma: export

#endif  // WARREN_WARREN_H_
