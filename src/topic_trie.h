// -----------------------------------------------------------------------------
// File: src/topic_trie.h
// -----------------------------------------------------------------------------
//
// Topic-exchange routing: RabbitMQ's topic matching, exactly.
//
// This header defines:
//
//   * `SplitTopicWords()`     — the word split that topic keys and binding
//                               patterns share.
//   * `TopicPatternMatches()` — a reference matcher for one pattern and one
//                               key. Used to cross-check the trie in tests and
//                               as the "linear scan" baseline in benchmarks.
//   * `TopicTrie<T>`          — the index a topic exchange routes with: a set
//                               of (pattern, value) pairs, matched against a
//                               routing key in time that depends on the key's
//                               words and the patterns that match it, not on
//                               the number of bindings.
//
// The rules (SEMANTICS.md section 2):
//
//   * A key or pattern is split on '.' into words. The empty string has zero
//     words; otherwise every piece counts, empty ones included: "a..b" has
//     three words (the middle one empty) and "." has two empty words.
//   * In a pattern, the word `*` matches exactly one word (an empty word too)
//     and the word `#` matches zero or more words. They are wildcards only as
//     whole words: `a#b`, `##` and `**` are literal words. In a routing key
//     every word is literal.
//   * So `a.#` matches `a`, `#` matches every key including the empty one,
//     `*` does not match the empty key, and the pattern "" matches only the
//     empty key.
//
// Example:
//
//   warren::internal::TopicTrie<QueueId> trie;
//   trie.Add("orders.*.created", q1);
//   trie.Add("orders.#", q2);
//   trie.Match("orders.eu.created", [&](const QueueId& q) { Deliver(q); });
//   // Deliver(q1) and Deliver(q2), once each, in unspecified order.

#ifndef WARREN_SRC_TOPIC_TRIE_H_
#define WARREN_SRC_TOPIC_TRIE_H_

#include <algorithm>
#include <cassert>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/inlined_vector.h"
#include "absl/hash/hash.h"
#include "absl/strings/string_view.h"

namespace warren::internal {

// The words of a topic key or pattern. Views into the split string.
// Keys and patterns are at most 255 bytes; 16 inline words cover the common
// case without a heap allocation.
using TopicWords = absl::InlinedVector<std::string_view, 16>;

// Splits `key` into its topic words: none for the empty string, otherwise the
// '.'-separated pieces with empty pieces kept ("a..b" -> {"a", "", "b"},
// "." -> {"", ""}). The views point into `key`.
inline TopicWords SplitTopicWords(std::string_view key) {
  TopicWords words;
  if (key.empty()) return words;
  std::size_t start = 0;
  while (true) {
    const std::size_t dot = key.find('.', start);
    if (dot == std::string_view::npos) {
      words.push_back(key.substr(start));
      return words;
    }
    words.push_back(key.substr(start, dot - start));
    start = dot + 1;
  }
}

// Returns true when the topic binding pattern `pattern` matches the routing
// key `key` under the rules in the file comment.
//
// Cost: O(pattern words * key words) in the worst case, whatever the number
// of `#` (a greedy match that backtracks only to the most recent `#`; it never
// backtracks exponentially). No heap allocation for up to 16 words each.
inline bool TopicPatternMatches(std::string_view pattern,
                                std::string_view key) {
  const TopicWords p = SplitTopicWords(pattern);
  const TopicWords k = SplitTopicWords(key);
  constexpr std::size_t kNoHash = static_cast<std::size_t>(-1);
  std::size_t pi = 0;
  std::size_t ki = 0;
  // The most recent `#` seen and the first key word it has not yet absorbed.
  // Retrying from an earlier `#` can never succeed where retrying from the
  // latest one fails, because the latest `#` can absorb anything the earlier
  // one could.
  std::size_t hash_pi = kNoHash;
  std::size_t hash_ki = 0;
  while (ki < k.size()) {
    if (pi < p.size() && p[pi] == "#") {
      hash_pi = pi++;
      hash_ki = ki;
    } else if (pi < p.size() && (p[pi] == "*" || p[pi] == k[ki])) {
      ++pi;
      ++ki;
    } else if (hash_pi != kNoHash) {
      // Let the latest `#` absorb one more key word and retry after it.
      pi = hash_pi + 1;
      ki = ++hash_ki;
    } else {
      return false;
    }
  }
  // Key exhausted: only `#` (matching zero words) may remain.
  while (pi < p.size() && p[pi] == "#") ++pi;
  return pi == p.size();
}

// A set of (topic pattern, value) pairs that finds, for a routing key, every
// pair whose pattern matches it.
//
// Structure: a trie over pattern words. Each node has literal children keyed
// by word, at most one `*` child and at most one `#` child, and holds the
// values of the patterns that end at it. Match runs the trie as an NFA: it
// keeps a duplicate-free set of active nodes and advances it one key word at
// a time (a `#` node stays active on any word; entering a node also enters its
// chain of `#` children, which match zero words). A step costs O(active nodes)
// hash lookups, so Match costs O(key words * active nodes + matches), where
// the active nodes are the pattern prefixes that match a prefix of the key; it
// does not grow with the number of bindings and never backtracks, however many
// `#` a pattern has.
//
// `T` must be copyable; `Hash` and `Eq` must be a consistent hash and equality
// for it (as for absl::flat_hash_set).
//
// Thread-compatible: const methods (Match, CountMatchVisits, size, empty) may
// run concurrently from many threads with each other; Add and Remove need
// exclusive access (the broker serialises them with its own lock). Move-only.
template <typename T, typename Hash = absl::Hash<T>,
          typename Eq = std::equal_to<T>>
class TopicTrie {
 public:
  TopicTrie() = default;
  TopicTrie(const TopicTrie&) = delete;
  TopicTrie& operator=(const TopicTrie&) = delete;
  TopicTrie(TopicTrie&&) = default;
  TopicTrie& operator=(TopicTrie&&) = default;
  ~TopicTrie() = default;

  // Adds the pair (pattern, value). Returns false, changing nothing, when the
  // pair is already present. The same value may be added under several
  // patterns, and several values under one pattern.
  bool Add(std::string_view pattern, const T& value) {
    Node* node = &root_;
    for (std::string_view word : SplitTopicWords(pattern)) {
      node = FindOrAddChild(node, word);
    }
    if (!node->values.insert(value).second) return false;
    ++size_;
    return true;
  }

  // Removes the pair (pattern, value). Returns false, changing nothing, when
  // the pair is absent. Nodes left with no values and no children are freed.
  bool Remove(std::string_view pattern, const T& value) {
    if (!RemoveBelow(&root_, SplitTopicWords(pattern), 0, value)) return false;
    // Invariant: size_ counts the pairs stored in the trie.
    assert(size_ > 0);
    --size_;
    return true;
  }

  // Calls `fn(const T&)` exactly once for every pair whose pattern matches
  // `routing_key`, in unspecified order. `fn` must not modify the trie.
  // Const and free of shared scratch state: safe to call from many threads at
  // once while no Add or Remove runs.
  template <typename Fn>
  void Match(std::string_view routing_key, Fn&& fn) const {
    MatchImpl(routing_key, fn);
  }

  // Returns the number of node visits a Match of `routing_key` makes (each
  // active node stepped over a word, each node entered through a `#` chain,
  // each final node whose values are reported). Calls nothing. For tests and
  // benchmarks that check Match's cost by counting rather than by timing.
  std::size_t CountMatchVisits(std::string_view routing_key) const {
    auto ignore = [](const T&) {};
    return MatchImpl(routing_key, ignore);
  }

  // The number of (pattern, value) pairs.
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

 private:
  struct Node {
    // True when no pattern ends at or passes through this node.
    bool IsEmpty() const {
      return values.empty() && literals.empty() && star == nullptr &&
             hash == nullptr;
    }

    // Children by literal word. Keys are std::string; lookups use
    // absl::string_view (Debian's Abseil has its own string_view type).
    absl::flat_hash_map<std::string, std::unique_ptr<Node>> literals;
    std::unique_ptr<Node> star;  // The child through a `*` word.
    std::unique_ptr<Node> hash;  // The child through a `#` word.
    // The values of the patterns that end here.
    absl::flat_hash_set<T, Hash, Eq> values;
    // True when this node is some node's `hash` child: it absorbs any word
    // and stays active.
    bool is_hash = false;
  };

  // A set of active nodes during Match. Duplicate-free.
  using NodeSet = absl::InlinedVector<const Node*, 16>;

  static absl::string_view ToAbsl(std::string_view s) {
    return absl::string_view(s.data(), s.size());
  }

  static Node* FindChild(Node* node, std::string_view word) {
    if (word == "*") return node->star.get();
    if (word == "#") return node->hash.get();
    const auto it = node->literals.find(ToAbsl(word));
    return it == node->literals.end() ? nullptr : it->second.get();
  }

  static Node* FindOrAddChild(Node* node, std::string_view word) {
    std::unique_ptr<Node>* slot;
    if (word == "*") {
      slot = &node->star;
    } else if (word == "#") {
      slot = &node->hash;
    } else {
      slot = &node->literals[ToAbsl(word)];
    }
    if (*slot == nullptr) {
      *slot = std::make_unique<Node>();
      (*slot)->is_hash = word == "#";
    }
    return slot->get();
  }

  // Removes the pair (words[i..] joined, value) from the subtrie at `node`.
  // Returns false, changing nothing, when it is absent. On the way back up,
  // frees each child the removal left empty, so no node without values or
  // children survives (the root excepted). Recursion depth: the pattern's
  // word count, like the trie's depth.
  static bool RemoveBelow(Node* node, const TopicWords& words, std::size_t i,
                          const T& value) {
    if (i == words.size()) return node->values.erase(value) > 0;
    Node* child = FindChild(node, words[i]);
    if (child == nullptr || !RemoveBelow(child, words, i + 1, value)) {
      return false;
    }
    if (child->IsEmpty()) EraseChild(node, words[i]);
    return true;
  }

  // Frees `node`'s child through `word`, which must exist and be empty.
  static void EraseChild(Node* node, std::string_view word) {
    if (word == "*") {
      node->star.reset();
    } else if (word == "#") {
      node->hash.reset();
    } else {
      const auto it = node->literals.find(ToAbsl(word));
      // Invariant: RemoveBelow only erases children it walked through.
      assert(it != node->literals.end());
      node->literals.erase(it);
    }
  }

  // Adds to `nodes` the `#` children of its nodes, transitively (a `#` word
  // matches zero words, so entering a node enters its `#` chain).
  //
  // `nodes` must be duplicate-free and must be either {root} or the result of
  // one Match step; it stays duplicate-free. Why: a step reaches a `#` node
  // only through its self-loop and any other node only through its unique
  // parent's literal or `*` edge, so a step yields no duplicates; the closure
  // reaches a `#` node only through its unique parent, so the only possible
  // duplicate is a `#` node already present from the step, which is checked
  // by binary search over the (sorted) step result.
  static void AddHashClosure(NodeSet* nodes, std::size_t* visits) {
    const std::size_t stepped = nodes->size();
    std::sort(nodes->begin(), nodes->end(), std::less<const Node*>());
    for (std::size_t i = 0; i < nodes->size(); ++i) {
      const Node* hash = (*nodes)[i]->hash.get();
      if (hash == nullptr) continue;
      ++*visits;
      if (std::binary_search(nodes->begin(), nodes->begin() + stepped, hash,
                             std::less<const Node*>())) {
        continue;  // Already active; its own chain is handled at its index.
      }
      nodes->push_back(hash);
    }
  }

  // Returns true when `nodes` holds no node twice. For assertions.
  static bool IsDuplicateFree(const NodeSet& nodes) {
    NodeSet sorted = nodes;
    std::sort(sorted.begin(), sorted.end(), std::less<const Node*>());
    return std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end();
  }

  // Match's body: reports each matching pair to `fn` and returns the number
  // of node visits.
  template <typename Fn>
  std::size_t MatchImpl(std::string_view routing_key, Fn& fn) const {
    std::size_t visits = 1;  // The root.
    NodeSet active;
    active.push_back(&root_);
    AddHashClosure(&active, &visits);
    NodeSet next;
    for (std::string_view word : SplitTopicWords(routing_key)) {
      // Invariant: the active set is duplicate-free, so no pair is reported
      // twice and no work is repeated.
      assert(IsDuplicateFree(active));
      next.clear();
      const absl::string_view lookup = ToAbsl(word);
      for (const Node* node : active) {
        ++visits;
        if (node->is_hash) next.push_back(node);  // `#` absorbs the word.
        if (node->star != nullptr) next.push_back(node->star.get());
        if (!node->literals.empty()) {
          const auto it = node->literals.find(lookup);
          if (it != node->literals.end()) next.push_back(it->second.get());
        }
      }
      if (next.empty()) return visits;  // No pattern prefix matches.
      AddHashClosure(&next, &visits);
      active.swap(next);
    }
    // Invariant: as above; each pair lives in exactly one node.
    assert(IsDuplicateFree(active));
    for (const Node* node : active) {
      ++visits;
      for (const T& value : node->values) fn(value);
    }
    return visits;
  }

  Node root_;
  std::size_t size_ = 0;  // Number of (pattern, value) pairs.
};

}  // namespace warren::internal

#endif  // WARREN_SRC_TOPIC_TRIE_H_
