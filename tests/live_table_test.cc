// Tests for the write-ahead log's table of live messages (src/live_table.h):
// a window of slots indexed by message id, with an overflow map for the
// messages that outlive their neighbours.

#include "live_table.h"

#include <catch2/catch.hpp>
#include <cstdint>
#include <map>
#include <random>
#include <vector>

namespace warren::internal {
namespace {

using Table = LiveTable<int>;

std::map<uint64_t, int> Contents(Table& t) {
  std::map<uint64_t, int> out;
  t.ForEach([&](uint64_t id, int v) { out.emplace(id, v); });
  return out;
}

TEST_CASE("The live table finds what was inserted and forgets what was erased",
          "[wal][live_table]") {
  Table t;
  CHECK(t.empty());
  t[10] = 1;
  t[11] = 2;
  t[700] = 3;
  CHECK(t.size() == 3);
  REQUIRE(t.Find(10) != nullptr);
  CHECK(*t.Find(10) == 1);
  CHECK(*t.Find(700) == 3);
  CHECK(t.Find(12) == nullptr);
  CHECK(t.Find(5) == nullptr);
  CHECK(t.Find(1'000'000) == nullptr);
  CHECK(t[11] == 2);  // an existing id is found, not replaced
  CHECK(t.Erase(11));
  CHECK_FALSE(t.Erase(11));
  CHECK_FALSE(t.Erase(99));
  CHECK(t.Find(11) == nullptr);
  CHECK(t.size() == 2);
  CHECK(Contents(t) == std::map<uint64_t, int>{{10, 1}, {700, 3}});
}

TEST_CASE("An id older than the window is kept in the overflow map",
          "[wal][live_table]") {
  Table t;
  t[5000] = 1;
  t[3] = 2;  // arrives after a newer one
  CHECK(t.overflow_size() == 1);
  CHECK(*t.Find(3) == 2);
  CHECK(*t.Find(5000) == 1);
  CHECK(t.Erase(3));
  CHECK(t.Find(3) == nullptr);
  CHECK(t.size() == 1);
}

TEST_CASE("A message that stays live does not keep the window growing",
          "[wal][live_table]") {
  Table t;
  t[1] = 42;  // never settled
  for (uint64_t id = 2; id < 200'000; ++id) {
    t[id] = static_cast<int>(id);
    if (id >= 66) REQUIRE(t.Erase(id - 64));  // the rest settle in order
  }
  CHECK(t.size() == 1 + 64);
  CHECK(t.window_chunks() <= 2 * (64 / Table::kChunk + 1) +
                                 Table::kSlackChunks + 1);
  CHECK(t.overflow_size() == 1);
  REQUIRE(t.Find(1) != nullptr);
  CHECK(*t.Find(1) == 42);
  CHECK(t.Erase(1));
  CHECK(t.size() == 64);
}

TEST_CASE("An id far past the window moves the window there",
          "[wal][live_table]") {
  Table t;
  t[1] = 1;
  t[2] = 2;
  t[uint64_t{1} << 40] = 3;
  CHECK(t.window_chunks() == 1);
  CHECK(*t.Find(1) == 1);
  CHECK(*t.Find(2) == 2);
  CHECK(*t.Find(uint64_t{1} << 40) == 3);
  CHECK(t.size() == 3);
}

TEST_CASE("An id in the overflow map is not inserted twice once the window "
          "empties",
          "[wal][live_table]") {
  Table t;
  t[1] = 7;
  for (uint64_t id = 2; id < 20 * Table::kChunk; ++id) {
    t[id] = 0;
    REQUIRE(t.Erase(id));
  }
  REQUIRE(t.overflow_size() == 1);
  CHECK(t.window_chunks() == 0);
  CHECK(t[1] == 7);  // found in the overflow map, not a new slot
  t[1] = 8;
  CHECK(t.size() == 1);
  CHECK(Contents(t) == std::map<uint64_t, int>{{1, 8}});
  CHECK(t.Erase(1));
  CHECK(t.empty());
}

TEST_CASE("The live table agrees with a map under random publishes and settles",
          "[wal][live_table]") {
  std::mt19937_64 rng(GENERATE(1, 2, 3, 4));
  Table t;
  std::map<uint64_t, int> model;
  uint64_t next = 1;
  std::vector<uint64_t> ids;
  for (int step = 0; step < 100'000; ++step) {
    const uint64_t r = rng() % 100;
    if (r < 45) {
      // A publish: mostly the next id, sometimes a little out of order,
      // rarely a jump (ids taken by messages that were not logged).
      uint64_t id = next++;
      if (r < 3 && id > 8) id -= rng() % 8;
      if (r == 44) next += rng() % (20 * Table::kChunk);
      const int v = static_cast<int>(rng() % 1000);
      t[id] = v;
      model[id] = v;
    } else if (r < 90 && !model.empty()) {
      // A settle: mostly among the oldest, sometimes anywhere.
      auto it = model.begin();
      if (r >= 80) {
        std::advance(it, static_cast<long>(rng() % model.size()));
      }
      CHECK(t.Erase(it->first));
      model.erase(it);
    } else if (!model.empty()) {
      // A lookup of a live id, and of one that is not.
      auto it = model.begin();
      std::advance(it, static_cast<long>(rng() % model.size()));
      int* v = t.Find(it->first);
      REQUIRE(v != nullptr);
      CHECK(*v == it->second);
      const uint64_t absent = rng() % (next + 10);
      CHECK((t.Find(absent) != nullptr) == model.contains(absent));
    }
    REQUIRE(t.size() == model.size());
  }
  CHECK(Contents(t) == model);
}

}  // namespace
}  // namespace warren::internal
