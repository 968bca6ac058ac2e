// -----------------------------------------------------------------------------
// File: benchmarks/topic_workload.h
// -----------------------------------------------------------------------------
//
// The topic-routing workload shared by broker_benchmark.cc and
// peer_compare.cc (row P6): binding patterns and routing keys of 4 words.
//
// Example:
//
//   const warren_bench::TopicWorkload w = warren_bench::MakeTopicWorkload(2000,
//   4096); for (const std::string& p : w.patterns) broker->Bind(queue, "topic",
//   p); broker->Publish("topic", w.keys[i % w.keys.size()], message);

#ifndef WARREN_BENCHMARKS_TOPIC_WORKLOAD_H_
#define WARREN_BENCHMARKS_TOPIC_WORKLOAD_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "fmt/core.h"

namespace warren_bench {

struct TopicWorkload {
  std::vector<std::string> patterns;  // distinct binding patterns
  std::vector<std::string> keys;      // routing keys to publish with
};

// `n` distinct binding patterns of 4 words (a<i>.b<j>.c<k>.d<l>, from
// vocabularies of 20, 50, 200 and 1,000 words): 10% with one `*` in a random
// position, 1% with a `#` (half `a.b.#`, half `#.c.d`), at least one of each,
// the rest literal; and `nkeys` routing keys, every other one equal to a
// literal pattern (so it matches at least one binding), the rest random.
// Deterministic for a given `n`.
inline TopicWorkload MakeTopicWorkload(size_t n, size_t nkeys) {
  std::mt19937_64 rng(42 + n);
  const uint64_t vocab[4] = {20, 50, 200, 1000};
  auto word = [&](int level) {
    return fmt::format("{}{}", static_cast<char>('a' + level),
                       rng() % vocab[level]);
  };
  auto random_key = [&] {
    std::string w0 = word(0), w1 = word(1), w2 = word(2), w3 = word(3);
    return fmt::format("{}.{}.{}.{}", w0, w1, w2, w3);
  };
  const size_t n_hash = std::max<size_t>(1, n / 100);
  const size_t n_star = std::max<size_t>(1, n / 10);
  TopicWorkload w;
  absl::flat_hash_set<std::string> unique;
  std::vector<std::string> literals;
  auto add = [&](const std::string& p) {
    if (!unique.insert(p).second) return false;
    w.patterns.push_back(p);
    return true;
  };
  for (size_t i = 0; i < n_hash;) {
    std::string a = word(i % 2 == 0 ? 0 : 2), b = word(i % 2 == 0 ? 1 : 3);
    if (add(i % 2 == 0 ? fmt::format("{}.{}.#", a, b)
                       : fmt::format("#.{}.{}", a, b))) {
      ++i;
    }
  }
  for (size_t i = 0; i < n_star;) {
    std::string words[4] = {word(0), word(1), word(2), word(3)};
    words[rng() % 4] = std::string(1, '*');
    if (add(fmt::format("{}.{}.{}.{}", words[0], words[1], words[2],
                        words[3]))) {
      ++i;
    }
  }
  while (w.patterns.size() < n) {
    std::string p = random_key();
    if (add(p)) literals.push_back(std::move(p));
  }
  for (size_t i = 0; i < nkeys; ++i) {
    w.keys.push_back(i % 2 == 0 && !literals.empty()
                         ? literals[rng() % literals.size()]
                         : random_key());
  }
  return w;
}

}  // namespace warren_bench

#endif  // WARREN_BENCHMARKS_TOPIC_WORKLOAD_H_
