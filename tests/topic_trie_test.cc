// Tests for src/topic_trie.h: RabbitMQ's topic matching, the trie that
// indexes it, and the reference matcher the trie is checked against.

#include "topic_trie.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace warren::internal {
namespace {

// The values a trie reports for `key`, sorted, duplicates kept (so a value
// reported twice shows up twice).
template <typename T>
std::vector<T> Matches(const TopicTrie<T>& trie, std::string_view key) {
  std::vector<T> out;
  trie.Match(key, [&out](const T& value) { out.push_back(value); });
  std::sort(out.begin(), out.end());
  return out;
}

// An independent oracle that follows the definition literally: its own word
// split and a plain recursive matcher (exponential in the worst case, which
// is fine for the short patterns it is given).
std::vector<std::string> OracleSplit(const std::string& s) {
  std::vector<std::string> words;
  if (s.empty()) return words;
  std::string word;
  for (char c : s) {
    if (c == '.') {
      words.push_back(word);
      word.clear();
    } else {
      word.push_back(c);
    }
  }
  words.push_back(word);
  return words;
}

bool OracleMatchFrom(const std::vector<std::string>& p, std::size_t i,
                     const std::vector<std::string>& k, std::size_t j) {
  if (i == p.size()) return j == k.size();
  if (p[i] == "#") {
    return OracleMatchFrom(p, i + 1, k, j) ||
           (j < k.size() && OracleMatchFrom(p, i, k, j + 1));
  }
  if (j == k.size()) return false;
  if (p[i] == "*" || p[i] == k[j]) return OracleMatchFrom(p, i + 1, k, j + 1);
  return false;
}

bool OracleMatches(const std::string& pattern, const std::string& key) {
  return OracleMatchFrom(OracleSplit(pattern), 0, OracleSplit(key), 0);
}

// The topic acceptance vector of SEMANTICS.md section 2, from rabbitmq-server
// deps/rabbit/test/routing_SUITE.erl, topic1 (there is no t24).
const std::vector<std::pair<std::string, std::string>>& AcceptanceBindings() {
  static const auto* const kBindings =
      new std::vector<std::pair<std::string, std::string>>{
          {"a.b.c", "t1"},
          {"a.*.c", "t2"},
          {"a.#.b", "t3"},
          {"a.b.b.c", "t4"},
          {"#", "t5"},
          {"#.#", "t6"},
          {"#.b", "t7"},
          {"*.*", "t8"},
          {"a.*", "t9"},
          {"*.b.c", "t10"},
          {"a.#", "t11"},
          {"a.#.#", "t12"},
          {"b.b.c", "t13"},
          {"a.b.b", "t14"},
          {"a.b", "t15"},
          {"b.c", "t16"},
          {"", "t17"},
          {"*.*.*", "t18"},
          {"vodka.martini", "t19"},
          {"a.b.c", "t20"},
          {"*.#", "t21"},
          {"#.*.#", "t22"},
          {"*.#.#", "t23"},
          {"*", "t25"},
          {"#.b.#", "t26"},
      };
  return *kBindings;
}

const std::vector<std::pair<std::string, std::vector<std::string>>>&
AcceptanceExpectations() {
  static const auto* const kExpected =
      new std::vector<std::pair<std::string, std::vector<std::string>>>{
          {"a.b.c",
           {"t1", "t2", "t5", "t6", "t10", "t11", "t12", "t18", "t20", "t21",
            "t22", "t23", "t26"}},
          {"a.b",
           {"t3", "t5", "t6", "t7", "t8", "t9", "t11", "t12", "t15", "t21",
            "t22", "t23", "t26"}},
          {"a.b.b",
           {"t3", "t5", "t6", "t7", "t11", "t12", "t14", "t18", "t21", "t22",
            "t23", "t26"}},
          {"", {"t5", "t6", "t17"}},
          {"b.c.c", {"t5", "t6", "t18", "t21", "t22", "t23", "t26"}},
          {"a.a.a.a.a", {"t5", "t6", "t11", "t12", "t21", "t22", "t23"}},
          {"vodka.gin", {"t5", "t6", "t8", "t21", "t22", "t23"}},
          {"vodka.martini", {"t5", "t6", "t8", "t19", "t21", "t22", "t23"}},
          {"b.b.c",
           {"t5", "t6", "t10", "t13", "t18", "t21", "t22", "t23", "t26"}},
          {"nothing.here.at.all", {"t5", "t6", "t21", "t22", "t23"}},
          {"oneword", {"t5", "t6", "t21", "t22", "t23", "t25"}},
      };
  return *kExpected;
}

TopicTrie<std::string> AcceptanceTrie() {
  TopicTrie<std::string> trie;
  for (const auto& [pattern, name] : AcceptanceBindings()) {
    REQUIRE(trie.Add(pattern, name));
  }
  return trie;
}

std::vector<std::string> Sorted(std::vector<std::string> v) {
  std::sort(v.begin(), v.end());
  return v;
}

// A pattern of `hashes` `#` words followed by `last`: "#.#.....#.last".
std::string ManyHashes(int hashes, std::string_view last) {
  std::string pattern;
  for (int i = 0; i < hashes; ++i) pattern += "#.";
  pattern += last;
  return pattern;
}

// A key of `words` copies of "a", then `last` when it is non-empty.
std::string ManyWords(int words, std::string_view last) {
  std::string key;
  for (int i = 0; i < words; ++i) key += i == 0 ? "a" : ".a";
  if (!last.empty()) key.append(".").append(last);
  return key;
}

TEST_CASE("TopicTrie: acceptance vector from routing_SUITE topic1",
          "[topic_trie]") {
  const TopicTrie<std::string> trie = AcceptanceTrie();
  REQUIRE(trie.size() == 25);
  for (const auto& [key, expected] : AcceptanceExpectations()) {
    INFO("routing key \"" << key << "\"");
    CHECK(Matches(trie, key) == Sorted(expected));
  }
}

TEST_CASE("TopicPatternMatches: acceptance vector from routing_SUITE topic1",
          "[topic_trie]") {
  for (const auto& [key, expected] : AcceptanceExpectations()) {
    std::vector<std::string> matched;
    for (const auto& [pattern, name] : AcceptanceBindings()) {
      if (TopicPatternMatches(pattern, key)) matched.push_back(name);
    }
    INFO("routing key \"" << key << "\"");
    CHECK(Sorted(matched) == Sorted(expected));
  }
}

TEST_CASE("SplitTopicWords: empty string has zero words, empty pieces count",
          "[topic_trie]") {
  CHECK(SplitTopicWords("").empty());
  CHECK(SplitTopicWords("a") == TopicWords{"a"});
  CHECK(SplitTopicWords("a.b.c") == TopicWords{"a", "b", "c"});
  CHECK(SplitTopicWords("a..b") == TopicWords{"a", "", "b"});
  CHECK(SplitTopicWords(".") == TopicWords{"", ""});
  CHECK(SplitTopicWords(".a") == TopicWords{"", "a"});
  CHECK(SplitTopicWords("a.") == TopicWords{"a", ""});
  CHECK(SplitTopicWords("..") == TopicWords{"", "", ""});
}

TEST_CASE("TopicTrie: empty key, empty pattern and empty words",
          "[topic_trie]") {
  TopicTrie<std::string> trie;
  REQUIRE(trie.Add("", "empty"));
  REQUIRE(trie.Add("#", "hash"));
  REQUIRE(trie.Add("*", "star"));
  REQUIRE(trie.Add("*.*", "star.star"));
  REQUIRE(trie.Add("a.*.b", "a.star.b"));
  REQUIRE(trie.Add("a..b", "a..b"));
  REQUIRE(trie.Add(".", "dot"));

  // The empty key has zero words: `#` and "" match it, `*` does not.
  CHECK(Matches(trie, "") == Sorted({"empty", "hash"}));
  // "." is two empty words.
  CHECK(Matches(trie, ".") == Sorted({"dot", "hash", "star.star"}));
  // The middle word of "a..b" is empty, and `*` matches it.
  CHECK(Matches(trie, "a..b") == Sorted({"a..b", "a.star.b", "hash"}));
  CHECK(Matches(trie, "a.x.b") == Sorted({"a.star.b", "hash"}));
  CHECK(Matches(trie, "x") == Sorted({"hash", "star"}));

  CHECK(TopicPatternMatches("", ""));
  CHECK(TopicPatternMatches("#", ""));
  CHECK_FALSE(TopicPatternMatches("*", ""));
  CHECK_FALSE(TopicPatternMatches("", "a"));
  CHECK_FALSE(TopicPatternMatches("", "."));
  CHECK(TopicPatternMatches("*.*", "."));
  CHECK(TopicPatternMatches("a.*.b", "a..b"));
  CHECK_FALSE(TopicPatternMatches("a.b", "a..b"));
}

TEST_CASE("TopicTrie: wildcards count only as whole words", "[topic_trie]") {
  TopicTrie<std::string> trie;
  REQUIRE(trie.Add("a#b", "a#b"));
  REQUIRE(trie.Add("##", "##"));
  REQUIRE(trie.Add("a*", "a*"));
  REQUIRE(trie.Add("**", "**"));
  REQUIRE(trie.Add("x.*#", "x.*#"));

  CHECK(Matches(trie, "a#b") == std::vector<std::string>{"a#b"});
  CHECK(Matches(trie, "ab").empty());
  CHECK(Matches(trie, "a.b").empty());
  CHECK(Matches(trie, "##") == std::vector<std::string>{"##"});
  CHECK(Matches(trie, "").empty());
  CHECK(Matches(trie, "x").empty());
  CHECK(Matches(trie, "a*") == std::vector<std::string>{"a*"});
  CHECK(Matches(trie, "ab").empty());
  CHECK(Matches(trie, "**") == std::vector<std::string>{"**"});
  CHECK(Matches(trie, "x.*#") == std::vector<std::string>{"x.*#"});
  CHECK(Matches(trie, "x.y").empty());

  CHECK(TopicPatternMatches("a#b", "a#b"));
  CHECK_FALSE(TopicPatternMatches("a#b", "a.b"));
  CHECK_FALSE(TopicPatternMatches("##", ""));
  CHECK_FALSE(TopicPatternMatches("##", "x"));
  CHECK_FALSE(TopicPatternMatches("a*", "ab"));
  // In a routing key, `*` and `#` are literal words; a pattern `*` matches
  // them like any word.
  CHECK(TopicPatternMatches("*", "#"));
  CHECK(TopicPatternMatches("a.*", "a.*"));
}

TEST_CASE("TopicTrie: hash matches zero or more words anywhere",
          "[topic_trie]") {
  TopicTrie<std::string> trie;
  REQUIRE(trie.Add("a.#", "a.#"));
  REQUIRE(trie.Add("#.a", "#.a"));
  REQUIRE(trie.Add("a.#.z", "a.#.z"));

  // A trailing `#` matches nothing more: `a.#` matches `a`.
  CHECK(Matches(trie, "a") == Sorted({"a.#", "#.a"}));
  CHECK(Matches(trie, "a.b") == std::vector<std::string>{"a.#"});
  CHECK(Matches(trie, "a.b.c.d") == std::vector<std::string>{"a.#"});
  CHECK(Matches(trie, "b.a") == std::vector<std::string>{"#.a"});
  CHECK(Matches(trie, "a.z") == Sorted({"a.#", "a.#.z"}));
  CHECK(Matches(trie, "a.b.c.z") == Sorted({"a.#", "a.#.z"}));
  CHECK(Matches(trie, "b").empty());
  CHECK(Matches(trie, "").empty());
}

TEST_CASE("TopicTrie: Add and Remove report duplicates and absences",
          "[topic_trie]") {
  TopicTrie<int> trie;
  CHECK(trie.empty());
  CHECK(trie.size() == 0);

  CHECK(trie.Add("a.*", 1));
  CHECK_FALSE(trie.Add("a.*", 1));  // Same pair.
  CHECK(trie.Add("a.*", 2));        // Same pattern, another value.
  CHECK(trie.Add("#", 1));          // Same value, another pattern.
  CHECK(trie.size() == 3);
  CHECK_FALSE(trie.empty());

  CHECK_FALSE(trie.Remove("a.*", 3));  // Pattern present, value absent.
  CHECK_FALSE(trie.Remove("a.b", 1));  // Pattern absent.
  CHECK_FALSE(trie.Remove("a", 1));    // A prefix of a pattern.
  CHECK_FALSE(trie.Remove("a.*.c", 1));
  CHECK(trie.size() == 3);

  CHECK(trie.Remove("a.*", 1));
  CHECK_FALSE(trie.Remove("a.*", 1));
  CHECK(Matches(trie, "a.x") == std::vector<int>{1, 2});
  CHECK(trie.Remove("a.*", 2));
  CHECK(trie.Remove("#", 1));
  CHECK(trie.empty());
  CHECK(Matches(trie, "a.x").empty());
  CHECK(Matches(trie, "").empty());
}

TEST_CASE("TopicTrie: one value under several patterns is reported per pair",
          "[topic_trie]") {
  TopicTrie<int> trie;
  REQUIRE(trie.Add("a.*", 7));
  REQUIRE(trie.Add("#", 7));
  REQUIRE(trie.Add("#.#", 7));
  REQUIRE(trie.Add("a.b", 8));
  // Exactly once per matching (pattern, value) pair; the broker, not the
  // trie, delivers one copy per queue.
  CHECK(Matches(trie, "a.b") == std::vector<int>{7, 7, 7, 8});
  CHECK(Matches(trie, "a") == std::vector<int>{7, 7});
}

TEST_CASE("TopicTrie: Remove prunes nodes and keeps other patterns",
          "[topic_trie]") {
  TopicTrie<int> trie;
  const std::size_t empty_cost = trie.CountMatchVisits("a.b.c.d.e");

  REQUIRE(trie.Add("a.b.c.d.e", 1));
  REQUIRE(trie.Add("a.*.#.d.e", 2));
  REQUIRE(trie.Add("a.b", 3));
  REQUIRE(trie.Add("a.b.#", 4));
  CHECK(Matches(trie, "a.b.c.d.e") == std::vector<int>{1, 2, 4});

  REQUIRE(trie.Remove("a.b.c.d.e", 1));
  CHECK(Matches(trie, "a.b.c.d.e") == std::vector<int>{2, 4});
  CHECK(Matches(trie, "a.b") == std::vector<int>{3, 4});
  REQUIRE(trie.Remove("a.b", 3));
  // "a.b" still leads to "a.b.#": its node stays.
  CHECK(Matches(trie, "a.b") == std::vector<int>{4});
  REQUIRE(trie.Remove("a.b.#", 4));
  REQUIRE(trie.Remove("a.*.#.d.e", 2));
  CHECK(trie.empty());
  // Every node but the root is gone: matching costs what it does on a new
  // trie.
  CHECK(trie.CountMatchVisits("a.b.c.d.e") == empty_cost);
  CHECK(trie.CountMatchVisits("") == empty_cost);
}

TEST_CASE("TopicTrie: many hashes do not backtrack", "[topic_trie]") {
  constexpr int kHashes = 20;
  constexpr int kKeyWords = 40;
  const std::string pattern = ManyHashes(kHashes, "x");
  TopicTrie<int> trie;
  REQUIRE(trie.Add(pattern, 1));

  // The trie has 22 nodes (root, 20 `#`, "x"). Each key word steps over at
  // most every node and follows at most one `#` edge per node, and the end
  // reports at most every node: linear in the key's words. A backtracking
  // matcher would try on the order of C(60, 20) ways to split the key.
  constexpr std::size_t kNodes = kHashes + 2;
  constexpr std::size_t kBound = (kKeyWords + 2) * 2 * kNodes + kNodes;

  const std::string miss = ManyWords(kKeyWords, "");
  CHECK(Matches(trie, miss).empty());
  CHECK(trie.CountMatchVisits(miss) <= kBound);
  CHECK_FALSE(TopicPatternMatches(pattern, miss));

  const std::string hit = ManyWords(kKeyWords, "x");
  CHECK(Matches(trie, hit) == std::vector<int>{1});
  CHECK(trie.CountMatchVisits(hit) <= kBound);
  CHECK(TopicPatternMatches(pattern, hit));

  // Interleaved literals and `#`, against a key that almost matches.
  const std::string mixed = "#.a.#.a.#.a.#.a.#.a.#.a.#.a.#.a.#.b";
  REQUIRE(trie.Add(mixed, 2));
  CHECK(Matches(trie, miss).empty());
  CHECK(Matches(trie, ManyWords(kKeyWords, "b")) == std::vector<int>{2});
  CHECK_FALSE(TopicPatternMatches(mixed, miss));
  CHECK(TopicPatternMatches(mixed, ManyWords(kKeyWords, "b")));
}

TEST_CASE("TopicTrie: match cost does not grow with non-matching bindings",
          "[topic_trie]") {
  TopicTrie<int> trie;
  REQUIRE(trie.Add("a.b.c", 0));
  REQUIRE(trie.Add("a.*.c", 1));
  const std::size_t small_cost = trie.CountMatchVisits("a.b.c");

  for (int i = 0; i < 10000; ++i) {
    const std::string n = std::to_string(i);
    REQUIRE(trie.Add("k" + n + ".b.c", 100 + i));
    REQUIRE(trie.Add("a.k" + n, 100 + i));
    REQUIRE(trie.Add("a.b.k" + n + ".#", 100 + i));
  }
  CHECK(trie.size() == 30002);
  CHECK(Matches(trie, "a.b.c") == std::vector<int>{0, 1});
  CHECK(trie.CountMatchVisits("a.b.c") == small_cost);
}

TEST_CASE("TopicTrie: randomised cross-check against the reference matcher",
          "[topic_trie]") {
  // A small alphabet so that patterns and keys collide often. "a#" and "*"
  // and "#" in keys check that only whole pattern words are wildcards.
  const std::vector<std::string> key_words = {"", "a", "b", "c", "a#"};
  const std::vector<std::string> rare_key_words = {"*", "#"};
  std::mt19937 rng(20240611);  // Fixed seed: the run is reproducible.
  auto below = [&rng](std::size_t n) {
    return static_cast<std::size_t>(rng() % n);
  };
  auto join = [](const std::vector<std::string>& words) {
    std::string s;
    for (std::size_t i = 0; i < words.size(); ++i) {
      if (i > 0) s += '.';
      s += words[i];
    }
    return s;
  };
  auto random_pattern = [&] {
    std::vector<std::string> words(below(6));
    for (std::string& w : words) {
      const std::size_t r = below(10);
      if (r < 3) {
        w = "#";
      } else if (r < 5) {
        w = "*";
      } else {
        w = key_words[below(key_words.size())];
      }
    }
    return join(words);
  };
  auto random_key = [&] {
    std::vector<std::string> words(below(8));
    for (std::string& w : words) {
      w = below(20) == 0 ? rare_key_words[below(rare_key_words.size())]
                         : key_words[below(key_words.size())];
    }
    return join(words);
  };

  // Pairs (pattern, value); some patterns carry two values.
  std::vector<std::pair<std::string, int>> pairs;
  TopicTrie<int> trie;
  for (int i = 0; i < 300; ++i) {
    const std::string pattern = random_pattern();
    const bool added = trie.Add(pattern, i);
    REQUIRE(added);
    REQUIRE_FALSE(trie.Add(pattern, i));
    pairs.emplace_back(pattern, i);
    if (i % 10 == 0) {
      REQUIRE(trie.Add(pattern, 100000 + i));
      pairs.emplace_back(pattern, 100000 + i);
    }
  }
  REQUIRE(trie.size() == pairs.size());

  std::vector<std::string> keys;
  for (int i = 0; i < 2000; ++i) keys.push_back(random_key());
  for (const auto& [pattern, value] : AcceptanceBindings()) {
    keys.push_back(pattern);  // Patterns read as keys are interesting too.
  }

  // Compares the trie with the oracle on every key; the reference matcher
  // with the oracle on every (pattern, key). Mismatches are counted and the
  // first one reported, to keep the assertion count small.
  auto cross_check = [&](const std::vector<std::pair<std::string, int>>& live) {
    std::size_t trie_mismatches = 0;
    std::size_t reference_mismatches = 0;
    std::string first_mismatch;
    std::size_t total_matches = 0;
    for (const std::string& key : keys) {
      std::vector<int> expected;
      for (const auto& [pattern, value] : live) {
        const bool oracle = OracleMatches(pattern, key);
        if (oracle) expected.push_back(value);
        if (TopicPatternMatches(pattern, key) != oracle) {
          if (reference_mismatches++ == 0) {
            first_mismatch =
                "reference: pattern \"" + pattern + "\" key \"" + key + "\"";
          }
        }
      }
      std::sort(expected.begin(), expected.end());
      total_matches += expected.size();
      if (Matches(trie, key) != expected) {
        if (trie_mismatches++ == 0 && first_mismatch.empty()) {
          first_mismatch = "trie: key \"" + key + "\"";
        }
      }
    }
    INFO("first mismatch: " << first_mismatch);
    CHECK(trie_mismatches == 0);
    CHECK(reference_mismatches == 0);
    // The data is not degenerate: a good share of pairs match some keys.
    CHECK(total_matches > keys.size());
  };
  cross_check(pairs);

  // Remove every other pair (checking that a second Remove fails) and check
  // again: pruning must not disturb the patterns that remain.
  std::vector<std::pair<std::string, int>> remaining;
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    if (i % 2 == 0) {
      REQUIRE(trie.Remove(pairs[i].first, pairs[i].second));
      REQUIRE_FALSE(trie.Remove(pairs[i].first, pairs[i].second));
    } else {
      remaining.push_back(pairs[i]);
    }
  }
  REQUIRE(trie.size() == remaining.size());
  cross_check(remaining);

  for (const auto& [pattern, value] : remaining) {
    REQUIRE(trie.Remove(pattern, value));
  }
  CHECK(trie.empty());
  CHECK(trie.CountMatchVisits("a.b.c") ==
        TopicTrie<int>().CountMatchVisits("a.b.c"));
}

TEST_CASE("TopicTrie: concurrent Match from many threads", "[topic_trie]") {
  const TopicTrie<std::string> trie = AcceptanceTrie();
  constexpr int kThreads = 8;
  constexpr int kRounds = 200;
  std::vector<int> failures(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&trie, &failures, t] {
      for (int round = 0; round < kRounds; ++round) {
        for (const auto& [key, expected] : AcceptanceExpectations()) {
          if (Matches(trie, key) != Sorted(expected)) ++failures[t];
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  CHECK(failures == std::vector<int>(kThreads, 0));
}

TEST_CASE("TopicTrie: custom hash and equality", "[topic_trie]") {
  // Values equal when equal ignoring case: adding "Q1" after "q1" under the
  // same pattern is a duplicate.
  struct CaseInsensitiveHash {
    std::size_t operator()(const std::string& s) const {
      std::string lower = s;
      for (char& c : lower) {
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      }
      return std::hash<std::string>()(lower);
    }
  };
  struct CaseInsensitiveEq {
    bool operator()(const std::string& a, const std::string& b) const {
      return std::equal(a.begin(), a.end(), b.begin(), b.end(),
                        [](unsigned char x, unsigned char y) {
                          return std::tolower(x) == std::tolower(y);
                        });
    }
  };
  TopicTrie<std::string, CaseInsensitiveHash, CaseInsensitiveEq> trie;
  CHECK(trie.Add("a.#", "q1"));
  CHECK_FALSE(trie.Add("a.#", "Q1"));
  CHECK(trie.Remove("a.#", "Q1"));
  CHECK(trie.empty());
}

}  // namespace
}  // namespace warren::internal
