#include "exchange.h"

#include <algorithm>
#include <iterator>
#include <utility>

namespace warren::internal {

Exchange::Exchange(std::string name, ExchangeType type, ExchangeOptions options)
    : name_(std::move(name)), type_(type), options_(std::move(options)) {}

void Exchange::Index(const Destination& d, std::string_view key) {
  if (type_ == ExchangeType::kDirect) {
    direct_[key].push_back(d);
  } else if (type_ == ExchangeType::kTopic) {
    topic_.Add(key, d);
  }
}

void Exchange::Unindex(const Destination& d, std::string_view key) {
  if (type_ == ExchangeType::kDirect) {
    auto it = direct_.find(key);
    if (it == direct_.end()) return;
    auto& v = it->second;
    v.erase(std::find(v.begin(), v.end(), d));
    if (v.empty()) direct_.erase(it);
  } else if (type_ == ExchangeType::kTopic) {
    topic_.Remove(key, d);
  }
}

bool Exchange::AddBinding(const Destination& d, std::string_view key,
                          const BindingArguments& args) {
  std::vector<BindingArguments>& sets = arguments_[BindingKey(d, key)];
  if (std::find(sets.begin(), sets.end(), args) != sets.end()) return false;
  // Direct and topic ignore arguments: (d, key) is indexed once however many
  // argument sets it is bound with.
  if (sets.empty() || !IsIndexedByKey()) Index(d, key);
  sets.push_back(args);
  bindings_.push_back(Binding{d, std::string(key), args});
  return true;
}

std::optional<BindingArguments> Exchange::RemoveBinding(
    const Destination& d, std::string_view key, const BindingArguments& args) {
  auto sets = arguments_.find(BindingKey(d, key));
  if (sets == arguments_.end()) return std::nullopt;
  auto set = std::find(sets->second.begin(), sets->second.end(), args);
  if (set == sets->second.end()) return std::nullopt;
  std::optional<BindingArguments> bound = std::move(*set);
  sets->second.erase(set);
  if (sets->second.empty()) arguments_.erase(sets);
  bindings_.erase(
      std::find_if(bindings_.begin(), bindings_.end(), [&](const Binding& b) {
        return b.destination == d && b.key == key && b.arguments == args;
      }));
  if (!IsIndexedByKey() || !arguments_.contains(BindingKey(d, key))) {
    Unindex(d, key);
  }
  return bound;
}

size_t Exchange::RemoveBindingsTo(const Destination& d) {
  std::vector<Binding> removed;
  auto keep = std::stable_partition(
      bindings_.begin(), bindings_.end(),
      [&](const Binding& b) { return !(b.destination == d); });
  std::move(keep, bindings_.end(), std::back_inserter(removed));
  bindings_.erase(keep, bindings_.end());
  for (const Binding& b : removed) {
    auto sets = arguments_.find(BindingKey(d, b.key));
    if (sets == arguments_.end()) continue;  // (d, key) already unindexed
    arguments_.erase(sets);
    Unindex(d, b.key);
  }
  return removed.size();
}

ExchangeStats Exchange::Stats() const {
  ExchangeStats s;
  s.name = name_;
  s.published = published_.load(std::memory_order_relaxed);
  s.routed = routed_.load(std::memory_order_relaxed);
  s.unroutable = unroutable_.load(std::memory_order_relaxed);
  s.returned = returned_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace warren::internal
