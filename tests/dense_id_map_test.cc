// Tests of DenseIdMap (src/dense_id_map.h): ids in chunks, the hash map for
// those that do not fit, and the memory a moving window of ids keeps.

#include "dense_id_map.h"

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "catch2/catch.hpp"

namespace warren::internal {
namespace {

using Map = DenseIdMap<std::string>;
constexpr uint64_t kChunk = Map::kChunk;

// Every (id, value) of `map`, through ForEach, in id order.
std::map<uint64_t, std::string> Contents(Map& map) {
  std::map<uint64_t, std::string> out;
  size_t visits = 0;
  map.ForEach([&](uint64_t id, std::string& v) {
    out.emplace(id, v);
    ++visits;
  });
  CHECK(visits == out.size());  // each id once
  return out;
}

TEST_CASE("A dense id map finds what was inserted, wherever the id falls",
          "[dense_id_map]") {
  Map map;
  CHECK(map.Find(5) == nullptr);
  CHECK_FALSE(map.Erase(5));
  const std::vector<uint64_t> ids = {
      kChunk * 10 + 3,          // opens the window
      kChunk * 10 + 1,          // in the same chunk, lower
      kChunk * 12,              // a chunk further up
      kChunk * 10 - 1,          // below the window
      kChunk * 500,             // far above it
      0,                        // the lowest id
      ~uint64_t{0},             // the highest
      kChunk * 11 + kChunk - 1  // fills the gap chunk
  };
  for (uint64_t id : ids) map.FindOrInsert(id) = std::to_string(id);
  CHECK(map.size() == ids.size());
  for (uint64_t id : ids) {
    INFO("id " << id);
    REQUIRE(map.Find(id) != nullptr);
    CHECK(*map.Find(id) == std::to_string(id));
    // Found again, not inserted twice.
    CHECK(&map.FindOrInsert(id) == map.Find(id));
  }
  CHECK(map.size() == ids.size());
  CHECK(map.Find(kChunk * 10 + 2) == nullptr);
  std::map<uint64_t, std::string> want;
  for (uint64_t id : ids) want[id] = std::to_string(id);
  CHECK(Contents(map) == want);
  for (uint64_t id : ids) {
    CHECK(map.Erase(id));
    CHECK(map.Find(id) == nullptr);
    CHECK_FALSE(map.Erase(id));
  }
  CHECK(map.empty());
  CHECK(map.chunks() == 0);
}

TEST_CASE(
    "A window of ids that moves up keeps a few chunks, whatever its distance "
    "travelled",
    "[dense_id_map]") {
  Map map;
  const uint64_t window = kChunk / 2;
  size_t most_chunks = 0;
  size_t longest_window = 0;
  for (uint64_t id = 1; id < 100 * kChunk; ++id) {
    map.FindOrInsert(id) = "m";
    if (id > window) REQUIRE(map.Erase(id - window));
    most_chunks = std::max(most_chunks, map.chunks());
    longest_window = std::max(longest_window, map.window_chunks());
  }
  CHECK(map.size() == window);
  CHECK(map.overflowed() == 0);
  CHECK(most_chunks <= 2);
  CHECK(longest_window <= 2);
}

TEST_CASE(
    "The ids left behind in an older chunk move to the hash map and free "
    "the chunk",
    "[dense_id_map]") {
  Map map;
  const uint64_t chunks = 10;
  for (uint64_t id = 0; id < chunks * kChunk; ++id) {
    map.FindOrInsert(id) = std::to_string(id);
  }
  CHECK(map.chunks() == chunks);
  // Everything is acked but for one id in every chunk.
  std::map<uint64_t, std::string> want;
  for (uint64_t id = 0; id < chunks * kChunk; ++id) {
    if (id % kChunk == 7) {
      want[id] = std::to_string(id);
    } else {
      REQUIRE(map.Erase(id));
    }
  }
  CHECK(map.size() == chunks);
  // Only the newest chunks, still filling, may keep theirs.
  CHECK(map.chunks() <= Map::kRecent);
  CHECK(map.overflowed() >= chunks - Map::kRecent);
  CHECK(Contents(map) == want);
  for (const auto& [id, value] : want) {
    REQUIRE(map.Find(id) != nullptr);
    CHECK(*map.Find(id) == value);
  }
  // An id of a freed older chunk, inserted again, is found there too.
  map.FindOrInsert(3) = "again";
  REQUIRE(map.Find(3) != nullptr);
  CHECK(*map.Find(3) == "again");
}

TEST_CASE(
    "An id nobody erases does not hold the window's start as later ids come "
    "and go",
    "[dense_id_map]") {
  Map map;
  map.FindOrInsert(0) = "kept";
  const uint64_t window = kChunk / 2;
  size_t longest_window = 0;
  for (uint64_t id = 1; id < 100 * kChunk; ++id) {
    map.FindOrInsert(id) = "m";
    if (id > window) REQUIRE(map.Erase(id - window));
    longest_window = std::max(longest_window, map.window_chunks());
  }
  CHECK(longest_window <= 3);
  CHECK(map.overflowed() == 1);
  CHECK(map.size() == window + 1);
  REQUIRE(map.Find(0) != nullptr);
  CHECK(*map.Find(0) == "kept");
}

TEST_CASE("A straggler far below new ids does not keep them out of chunks",
          "[dense_id_map]") {
  Map map;
  map.FindOrInsert(5) = "old";
  const uint64_t start = 1'000'000;
  for (uint64_t id = start; id < start + 10 * kChunk; ++id) {
    map.FindOrInsert(id) = "new";
  }
  CHECK(map.overflowed() == 1);
  CHECK(map.chunked() == 10 * kChunk);
  CHECK(map.window_chunks() <= 11);
  REQUIRE(map.Find(5) != nullptr);
  CHECK(*map.Find(5) == "old");
  CHECK(map.Find(start + 3 * kChunk) != nullptr);
}

TEST_CASE("An erased value is reset before its slot is used again",
          "[dense_id_map]") {
  Map map;
  map.FindOrInsert(1) = "one";
  map.FindOrInsert(2) = "two";  // keeps the chunk
  REQUIRE(map.Erase(1));
  CHECK(map.FindOrInsert(1).empty());
}

TEST_CASE(
    "A dense id map agrees with std::map under random inserts and erases "
    "around a moving window",
    "[dense_id_map]") {
  std::mt19937_64 rng(GENERATE(1, 2, 3));
  Map map;
  std::map<uint64_t, std::string> model;
  uint64_t next = 1;
  for (int step = 0; step < 200'000; ++step) {
    const int what = static_cast<int>(rng() % 100);
    if (what < 45) {
      // A new id, or now and then one from below or far above.
      uint64_t id = next++;
      if (what == 0) id = rng() % next;
      if (what == 1) id = next + kChunk * (rng() % (4 * Map::kMaxGap));
      map.FindOrInsert(id) = std::to_string(step);
      model[id] = std::to_string(step);
    } else if (!model.empty()) {
      // Mostly the oldest (a FIFO queue acked), sometimes any.
      auto it = model.begin();
      if (what > 90) {
        it = model.lower_bound(rng() % next);
        if (it == model.end()) it = model.begin();
      } else if (what > 80) {
        // Leave the oldest as a straggler; take the next.
        if (std::next(it) != model.end()) ++it;
      }
      REQUIRE(map.Erase(it->first));
      model.erase(it);
    }
    if (step % 997 == 0) {
      REQUIRE(map.size() == model.size());
      const uint64_t probe = rng() % (next + 1);
      auto it = model.find(probe);
      std::string* found = map.Find(probe);
      REQUIRE((found != nullptr) == (it != model.end()));
      if (found != nullptr) CHECK(*found == it->second);
    }
  }
  CHECK(Contents(map) == model);
  // The chunks hold no more than kSparse times their values, plus the
  // newest ones.
  CHECK(map.chunks() * Map::kChunk <= Map::kSparse * map.chunked() +
                                          (Map::kRecent + 1) * Map::kChunk +
                                          Map::kChunk);
}

}  // namespace
}  // namespace warren::internal
