// The write-ahead log's table of live persistent messages, keyed by message
// id.
//
// Message ids come from one counter, so the live messages cluster at the
// newest ids: a publish inserts next to the previous one and a settle
// usually removes near the front. The table keeps a window of slots indexed
// by `id - base`, in chunks of kChunk slots; a chunk whose slots are all
// empty leaves the front of the window. A publish or settle therefore
// touches a slot next to the last one, instead of a random bucket of a hash
// table that rehashes as it grows.
//
// A message that stays live long after its neighbours settled (a poison
// message, a job parked on a long delay) would pin the front of the window
// and keep every chunk after it. So once the window spans more than twice
// the chunks its live messages need (plus kSlackChunks), its front chunk's
// survivors move to an overflow hash map and the chunk goes; and an id far
// past the window moves all of it there. Each message moves at most once
// per window it outlives, so the cost stays O(1) amortised, and memory
// stays within about twice the live messages.
//
//   LiveTable<Entry> live;
//   live[7].bytes = 100;          // inserts a default Entry, then sets it
//   if (Entry* e = live.Find(7)) ...
//   live.Erase(7);
//
// An id is in the window or in the overflow map, never both. Pointers and
// references to values stay valid until the next insertion or erasure.
// Thread-compatible.

#ifndef WARREN_SRC_LIVE_TABLE_H_
#define WARREN_SRC_LIVE_TABLE_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_map.h"

namespace warren::internal {

template <typename V>
class LiveTable {
 public:
  static constexpr uint64_t kChunk = 512;
  static constexpr size_t kSlackChunks = 4;

  LiveTable() = default;
  LiveTable(const LiveTable&) = delete;
  LiveTable& operator=(const LiveTable&) = delete;

  size_t size() const { return window_size_ + overflow_.size(); }
  bool empty() const { return size() == 0; }

  // The value of `id`, or null.
  V* Find(uint64_t id) {
    if (V* v = FindInWindow(id)) return v;
    return overflow_.empty() ? nullptr : FindOverflow(id);
  }

  // The value of `id`, inserted default-constructed when absent.
  V& operator[](uint64_t id) {
    if (V* v = Find(id)) return *v;
    if (chunks_.empty()) {
      base_ = id - id % kChunk;
    } else if (id < base_) {
      return overflow_[id];
    } else if ((id - base_) / kChunk >= chunks_.size() * 2 + kSlackChunks) {
      // Far past the window: what the window holds is old by now.
      while (!chunks_.empty()) EvictFront();
      base_ = id - id % kChunk;
    }
    // Trim keeps the newest chunk, so the window never moves past `id`.
    while ((id - base_) / kChunk >= chunks_.size()) {
      chunks_.push_back(NewChunk());
      Trim();
    }
    const uint64_t i = id - base_;
    Chunk& chunk = *chunks_[i / kChunk];
    std::optional<V>& slot = chunk.slots[i % kChunk];
    slot.emplace();
    ++chunk.used;
    ++window_size_;
    return *slot;
  }

  // Removes `id`; false if it was absent.
  bool Erase(uint64_t id) {
    if (std::optional<V>* slot = WindowSlot(id);
        slot != nullptr && slot->has_value()) {
      slot->reset();
      --chunks_[(id - base_) / kChunk]->used;
      --window_size_;
      while (!chunks_.empty() && chunks_.front()->used == 0) PopFront();
      return true;
    }
    return overflow_.erase(id) > 0;
  }

  // Calls f(id, value) for every entry, in no particular order. `f` must not
  // insert or erase.
  template <typename F>
  void ForEach(F&& f) {
    for (auto& [id, value] : overflow_) f(id, value);
    for (size_t c = 0; c < chunks_.size(); ++c) {
      Chunk& chunk = *chunks_[c];
      if (chunk.used == 0) continue;
      for (uint64_t k = 0; k < kChunk; ++k) {
        if (chunk.slots[k].has_value()) {
          f(base_ + c * kChunk + k, *chunk.slots[k]);
        }
      }
    }
  }

  // How many ids live in the overflow map (for tests).
  size_t overflow_size() const { return overflow_.size(); }
  // How many chunks the window spans (for tests).
  size_t window_chunks() const { return chunks_.size(); }

 private:
  struct Chunk {
    std::array<std::optional<V>, kChunk> slots;
    uint64_t used = 0;
  };

  // The window's slot for `id`, or null outside the window.
  std::optional<V>* WindowSlot(uint64_t id) {
    if (chunks_.empty() || id < base_) return nullptr;
    const uint64_t i = id - base_;
    if (i / kChunk >= chunks_.size()) return nullptr;
    return &chunks_[i / kChunk]->slots[i % kChunk];
  }

  V* FindInWindow(uint64_t id) {
    std::optional<V>* slot = WindowSlot(id);
    return slot != nullptr && slot->has_value() ? &**slot : nullptr;
  }

  V* FindOverflow(uint64_t id) {
    auto it = overflow_.find(id);
    return it == overflow_.end() ? nullptr : &it->second;
  }

  std::unique_ptr<Chunk> NewChunk() {
    if (spare_ != nullptr) return std::move(spare_);
    return std::make_unique<Chunk>();
  }

  // Drops the front chunk (its slots are empty) and keeps it as the spare.
  void PopFront() {
    spare_ = std::move(chunks_.front());
    chunks_.pop_front();
    base_ += kChunk;
  }

  // Moves the front chunk's values to the overflow map and drops it.
  void EvictFront() {
    Chunk& chunk = *chunks_.front();
    for (uint64_t k = 0; k < kChunk && chunk.used > 0; ++k) {
      if (!chunk.slots[k].has_value()) continue;
      overflow_.emplace(base_ + k, *std::move(chunk.slots[k]));
      chunk.slots[k].reset();
      --chunk.used;
      --window_size_;
    }
    PopFront();
  }

  // Keeps the window within twice the chunks its values need.
  void Trim() {
    while (chunks_.size() > 1 &&
           chunks_.size() > 2 * (window_size_ / kChunk + 1) + kSlackChunks) {
      EvictFront();
    }
    while (chunks_.size() > 1 && chunks_.front()->used == 0) PopFront();
  }

  std::deque<std::unique_ptr<Chunk>> chunks_;
  uint64_t base_ = 0;  // the id of chunks_.front()'s first slot
  size_t window_size_ = 0;
  std::unique_ptr<Chunk> spare_;
  absl::flat_hash_map<uint64_t, V> overflow_;
};

}  // namespace warren::internal

#endif  // WARREN_SRC_LIVE_TABLE_H_
