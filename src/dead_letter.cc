#include "warren/dead_letter.h"

#include <algorithm>
#include <string>
#include <utility>

#include "death_history.h"

namespace warren {

namespace {

constexpr std::string_view kXDeath = "x-death";

std::optional<DeathReason> ParseReason(const HeaderValue* v) {
  if (v == nullptr || v->as_string() == nullptr) return std::nullopt;
  const std::string& s = *v->as_string();
  for (DeathReason r : {DeathReason::kRejected, DeathReason::kExpired,
                        DeathReason::kMaxLen, DeathReason::kDeliveryLimit}) {
    if (s == DeathReasonName(r)) return r;
  }
  return std::nullopt;
}

const HeaderValue* Field(const Headers& table, std::string_view key) {
  auto it = table.find(key);
  return it == table.end() ? nullptr : &it->second;
}

std::string StringField(const Headers& table, std::string_view key) {
  const HeaderValue* v = Field(table, key);
  return v != nullptr && v->as_string() != nullptr ? *v->as_string() : "";
}

std::optional<DeathSite> Site(const Message& m, std::string_view prefix) {
  const Headers& h = m.headers();
  const std::string p(prefix);
  auto reason = ParseReason(Field(h, p + "-reason"));
  const HeaderValue* queue = Field(h, p + "-queue");
  if (!reason || queue == nullptr || queue->as_string() == nullptr) {
    return std::nullopt;
  }
  return DeathSite{*queue->as_string(), *reason,
                   StringField(h, p + "-exchange")};
}

}  // namespace

std::string_view DeathReasonName(DeathReason reason) {
  switch (reason) {
    case DeathReason::kRejected:
      return "rejected";
    case DeathReason::kExpired:
      return "expired";
    case DeathReason::kMaxLen:
      return "maxlen";
    case DeathReason::kDeliveryLimit:
      return "delivery_limit";
  }
  return "unknown";
}

std::vector<DeathRecord> DeathHistory(const Message& message) {
  std::vector<DeathRecord> out;
  const HeaderValue* x_death = Field(message.headers(), kXDeath);
  if (x_death == nullptr || x_death->as_list() == nullptr) return out;
  for (const HeaderValue& entry : *x_death->as_list()) {
    const Headers* t = entry.as_table();
    if (t == nullptr) continue;
    auto reason = ParseReason(Field(*t, "reason"));
    if (!reason) continue;
    DeathRecord r;
    r.queue = StringField(*t, "queue");
    r.reason = *reason;
    if (const HeaderValue* c = Field(*t, "count"); c && c->as_int()) {
      r.count = *c->as_int();
    }
    if (const HeaderValue* tm = Field(*t, "time"); tm && tm->as_int()) {
      r.time = absl::FromUnixSeconds(*tm->as_int());
    }
    r.exchange = StringField(*t, "exchange");
    if (const HeaderValue* keys = Field(*t, "routing-keys");
        keys && keys->as_list()) {
      for (const HeaderValue& k : *keys->as_list()) {
        if (k.as_string()) r.routing_keys.push_back(*k.as_string());
      }
    }
    if (const HeaderValue* e = Field(*t, "original-expiration");
        e && e->as_string()) {
      // RabbitMQ writes the expiration as a string of milliseconds.
      int64_t ms = 0;
      bool digits = !e->as_string()->empty();
      for (char ch : *e->as_string()) {
        if (ch < '0' || ch > '9') {
          digits = false;
          break;
        }
        ms = ms * 10 + (ch - '0');
      }
      if (digits) r.original_expiration = absl::Milliseconds(ms);
    }
    out.push_back(std::move(r));
  }
  return out;
}

std::optional<DeathSite> FirstDeath(const Message& message) {
  return Site(message, "x-first-death");
}

std::optional<DeathSite> LastDeath(const Message& message) {
  return Site(message, "x-last-death");
}

namespace internal {

void RecordDeath(Message& message, std::string_view queue, DeathReason reason,
                 std::string_view exchange, std::string_view routing_key,
                 absl::Time now) {
  Headers& h = message.headers();
  const std::string_view reason_name = DeathReasonName(reason);
  HeaderValue& x_death = h[std::string(kXDeath)];
  if (x_death.as_list() == nullptr) x_death = HeaderList{};
  HeaderList& deaths = *x_death.as_list();

  auto same = std::find_if(deaths.begin(), deaths.end(), [&](const auto& e) {
    const Headers* t = e.as_table();
    return t != nullptr && StringField(*t, "queue") == queue &&
           StringField(*t, "reason") == reason_name;
  });
  if (same != deaths.end()) {
    Headers& t = *same->as_table();
    const HeaderValue* count = Field(t, "count");
    t["count"] = (count && count->as_int() ? *count->as_int() : 0) + 1;
    std::rotate(deaths.begin(), same, same + 1);  // to the front
  } else {
    Headers entry;
    entry["count"] = int64_t{1};
    entry["reason"] = std::string(reason_name);
    entry["queue"] = std::string(queue);
    entry["time"] = absl::ToUnixSeconds(now);
    entry["exchange"] = std::string(exchange);
    entry["routing-keys"] = HeaderList{std::string(routing_key)};
    if (const auto& exp = message.properties().expiration) {
      entry["original-expiration"] =
          std::to_string(absl::ToInt64Milliseconds(*exp));
    }
    deaths.insert(deaths.begin(), HeaderValue(std::move(entry)));
  }
  if (h.find("x-first-death-queue") == h.end()) {
    h["x-first-death-queue"] = std::string(queue);
    h["x-first-death-reason"] = std::string(reason_name);
    h["x-first-death-exchange"] = std::string(exchange);
  }
  h["x-last-death-queue"] = std::string(queue);
  h["x-last-death-reason"] = std::string(reason_name);
  h["x-last-death-exchange"] = std::string(exchange);
  message.properties().expiration.reset();
}

bool IsDeadLetterCycle(const Message& message, std::string_view queue) {
  // As RabbitMQ's is_cycle: the cycle is the deaths since the message was
  // last in `queue` (most recent first, down to and including that queue's
  // latest entry). Only a rejection within it makes it a client's doing; one
  // before it, on the way into the cycle, does not.
  for (const DeathRecord& r : DeathHistory(message)) {
    if (r.reason == DeathReason::kRejected) return false;
    if (r.queue == queue) return true;
  }
  return false;
}

}  // namespace internal
}  // namespace warren
