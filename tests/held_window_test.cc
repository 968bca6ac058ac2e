// HeldWindow: a consumer's held deliveries by tag (src/consumer_state.h).

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "catch2/catch.hpp"
#include "consumer_state.h"

namespace warren::internal {
namespace {

struct Held {
  std::unique_ptr<uint64_t> node;  // holds its own tag
};

Held Make(uint64_t tag) { return Held{std::make_unique<uint64_t>(tag)}; }

std::vector<uint64_t> Tags(const std::vector<Held>& out) {
  std::vector<uint64_t> tags;
  for (const Held& h : out) tags.push_back(*h.node);
  return tags;
}

TEST_CASE(
    "A delivery held while many after it are settled does not stretch the "
    "window") {
  HeldWindow<Held> w;
  w.Add(Make(1));
  for (uint64_t tag = 2; tag < 20000; ++tag) {
    REQUIRE(w.next_tag() == tag);
    w.Add(Make(tag));
    std::vector<Held> out;
    w.Remove(tag, /*multiple=*/false, out);
    REQUIRE(Tags(out) == std::vector<uint64_t>{tag});
  }
  CHECK(w.capacity() <= 32);
  CHECK(w.size() == 1);
  REQUIRE(w.Find(1) != nullptr);
  CHECK(*w.Find(1)->node == 1);
  CHECK(w.Find(2) == nullptr);
  std::vector<Held> out;
  w.Remove(1, /*multiple=*/false, out);
  CHECK(Tags(out) == std::vector<uint64_t>{1});
  CHECK(w.size() == 0);
}

TEST_CASE("HeldWindow matches an ordered map under random use") {
  std::mt19937_64 rng(GENERATE(1, 2, 3, 4));
  HeldWindow<Held> w;
  std::map<uint64_t, bool> model;  // held tags
  for (int step = 0; step < 5000; ++step) {
    const int op = static_cast<int>(rng() % 10);
    if (op < 5 || model.empty()) {
      const uint64_t tag = w.next_tag();
      w.Add(Make(tag));
      model[tag] = true;
    } else {
      // A tag held (usually) or not, at random.
      auto it = model.begin();
      std::advance(it, static_cast<long>(rng() % model.size()));
      const uint64_t tag = rng() % 8 == 0 ? it->first + 1 : it->first;
      std::vector<Held> out;
      std::vector<uint64_t> expected;
      if (op == 9) {
        w.RemoveAllBut(tag, out);
        for (auto& [t, held] : model) {
          if (t != tag) expected.push_back(t);
        }
        const bool kept = model.count(tag) > 0;
        model.clear();
        if (kept) model[tag] = true;
      } else {
        const bool multiple = op >= 7;
        w.Remove(tag, multiple, out);
        for (auto m = model.begin(); m != model.end();) {
          if (m->first == tag || (multiple && m->first < tag)) {
            expected.push_back(m->first);
            m = model.erase(m);
          } else {
            ++m;
          }
        }
      }
      REQUIRE(Tags(out) == expected);
    }
    REQUIRE(w.size() == model.size());
    if (step % 97 == 0) {
      for (uint64_t t = 1; t < w.next_tag(); ++t) {
        CAPTURE(step, t);
        Held* h = w.Find(t);
        REQUIRE((h != nullptr) == (model.count(t) > 0));
        if (h != nullptr) REQUIRE(*h->node == t);
      }
    }
  }
}

}  // namespace
}  // namespace warren::internal
