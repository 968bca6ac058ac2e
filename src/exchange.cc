#include "exchange.h"

#include <algorithm>
#include <utility>

namespace warren::internal {

Exchange::Exchange(std::string name, ExchangeType type,
                   ExchangeOptions options)
    : name_(std::move(name)), type_(type), options_(std::move(options)) {}

bool Exchange::HasOtherBinding(const Destination& d,
                               std::string_view key) const {
  return std::any_of(bindings_.begin(), bindings_.end(), [&](const Binding& b) {
    return b.destination == d && b.key == key;
  });
}

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
  for (const Binding& b : bindings_) {
    if (b.destination == d && b.key == key && b.arguments == args) {
      return false;
    }
  }
  // Direct and topic ignore arguments: (d, key) is indexed once however many
  // argument sets it is bound with.
  if (!IsIndexedByKey() || !HasOtherBinding(d, key)) Index(d, key);
  bindings_.push_back(Binding{d, std::string(key), args});
  return true;
}

bool Exchange::RemoveBinding(const Destination& d, std::string_view key,
                             const BindingArguments& args) {
  auto it = std::find_if(bindings_.begin(), bindings_.end(),
                         [&](const Binding& b) {
                           return b.destination == d && b.key == key &&
                                  b.arguments == args;
                         });
  if (it == bindings_.end()) return false;
  bindings_.erase(it);
  if (!IsIndexedByKey() || !HasOtherBinding(d, key)) Unindex(d, key);
  return true;
}

size_t Exchange::RemoveBindingsTo(const Destination& d) {
  size_t removed = 0;
  for (size_t i = bindings_.size(); i-- > 0;) {
    if (bindings_[i].destination == d) {
      const std::string key = std::move(bindings_[i].key);
      bindings_.erase(bindings_.begin() + static_cast<std::ptrdiff_t>(i));
      if (!IsIndexedByKey() || !HasOtherBinding(d, key)) Unindex(d, key);
      ++removed;
    }
  }
  return removed;
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
