// An exchange: bindings and the routing of one exchange type.

#ifndef WARREN_SRC_EXCHANGE_H_
#define WARREN_SRC_EXCHANGE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "headers_match.h"
#include "str_util.h"
#include "topic_trie.h"
#include "warren/broker.h"
#include "warren/options.h"
#include "warren/stats.h"

namespace warren::internal {

class Exchange;
class Queue;

// Where a binding leads: a queue or another exchange.
struct Destination {
  Queue* queue = nullptr;
  Exchange* exchange = nullptr;

  friend bool operator==(const Destination&, const Destination&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const Destination& d) {
    return H::combine(std::move(h), d.queue, d.exchange);
  }
};

struct Binding {
  Destination destination;
  std::string key;
  BindingArguments arguments;
};

// Not thread-safe by itself: the broker calls the mutators under its
// topology lock held exclusively, and Route under it held shared (Route is
// const and keeps no scratch state, so concurrent Routes are safe). The
// statistics counters are atomic.
class Exchange {
 public:
  Exchange(std::string name, ExchangeType type, ExchangeOptions options);

  const std::string& name() const { return name_; }
  ExchangeType type() const { return type_; }
  const ExchangeOptions& options() const { return options_; }
  const std::vector<Binding>& bindings() const { return bindings_; }

  // Adds a binding; false when an identical one exists.
  bool AddBinding(const Destination& d, std::string_view key,
                  const BindingArguments& args);
  // Removes a binding and returns its arguments as they were bound (equal
  // to `args`, though not always the same bytes: 0.0 equals -0.0); nullopt
  // when there was none.
  std::optional<BindingArguments> RemoveBinding(const Destination& d,
                                                std::string_view key,
                                                const BindingArguments& args);
  // Removes every binding to `d`; returns how many.
  size_t RemoveBindingsTo(const Destination& d);

  // Calls `fn(const Destination&)` for each binding that matches (a
  // destination bound several ways may be reported several times).
  template <typename Fn>
  void Route(std::string_view routing_key, const Headers& headers,
             Fn&& fn) const;

  ExchangeStats Stats() const;
  void CountPublished() { published_.fetch_add(1, std::memory_order_relaxed); }
  void CountRouted() { routed_.fetch_add(1, std::memory_order_relaxed); }
  void CountUnroutable() {
    unroutable_.fetch_add(1, std::memory_order_relaxed);
  }
  void CountReturned() { returned_.fetch_add(1, std::memory_order_relaxed); }

 private:
  bool IsIndexedByKey() const {
    return type_ == ExchangeType::kDirect || type_ == ExchangeType::kTopic;
  }
  void Index(const Destination& d, std::string_view key);
  void Unindex(const Destination& d, std::string_view key);
  using BindingKey = std::pair<Destination, std::string>;

  const std::string name_;
  const ExchangeType type_;
  const ExchangeOptions options_;

  std::vector<Binding> bindings_;
  // The argument sets bound for each (destination, key): finds a duplicate
  // binding without scanning every binding.
  absl::flat_hash_map<BindingKey, std::vector<BindingArguments>> arguments_;
  // Direct: key -> destinations.
  absl::flat_hash_map<std::string, std::vector<Destination>, StringHash,
                      StringEq>
      direct_;
  // Topic: pattern trie.
  TopicTrie<Destination> topic_;

  std::atomic<uint64_t> published_{0};
  std::atomic<uint64_t> routed_{0};
  std::atomic<uint64_t> unroutable_{0};
  std::atomic<uint64_t> returned_{0};
};

template <typename Fn>
void Exchange::Route(std::string_view routing_key, const Headers& headers,
                     Fn&& fn) const {
  switch (type_) {
    case ExchangeType::kDirect: {
      auto it = direct_.find(routing_key);
      if (it == direct_.end()) return;
      for (const Destination& d : it->second) fn(d);
      return;
    }
    case ExchangeType::kFanout:
      for (const Binding& b : bindings_) fn(b.destination);
      return;
    case ExchangeType::kTopic:
      topic_.Match(routing_key, fn);
      return;
    case ExchangeType::kHeaders:
      for (const Binding& b : bindings_) {
        if (HeadersMatch(b.arguments, headers)) fn(b.destination);
      }
      return;
  }
}

}  // namespace warren::internal

#endif  // WARREN_SRC_EXCHANGE_H_
