// DenseIdMap: a map from 64-bit ids to values, for ids handed out by one
// counter and dropped roughly in the order they were handed out, such as
// the write-ahead log's live messages by message id.
//
//   DenseIdMap<Entry> live;
//   live.FindOrInsert(id).bytes = 100;      // default-constructs if absent
//   if (Entry* e = live.Find(id)) ...;
//   live.Erase(id);
//   live.ForEach([](uint64_t id, Entry& e) { ... });
//
// The ids in use form a window that moves up as new ones are inserted and
// old ones erased. The map keeps that window in chunks of kChunk consecutive
// ids: an id's slot is found by subtraction, nothing is hashed, and growing
// never moves what is already there (a hash map rehashes into fresh memory
// each time it doubles). A chunk is freed once its last id is erased, and
// the chunks behind the window are dropped, so a queue that is consumed as
// fast as it is filled reuses the same few chunks.
//
// Ids that do not fit the window go to a hash map of their own:
//   * an id below the window, or far above it (more than kMaxGap chunks);
//   * an id whose chunk was freed and is no longer one of the newest;
//   * stragglers: the ids left in a chunk, other than the newest kRecent,
//     that holds fewer than kChunk / kSparse ids in use, once an erase in it
//     or a new chunk above it finds it so (a message nobody acks keeps its
//     id, not its chunk, and does not hold the window's start). So the
//     chunks but the newest take at most about kSparse times the memory of
//     the values in them.
//
// Values are default-constructed when their chunk is allocated, and reset
// to T{} when erased. A reference to a value is valid until the next insert
// or erase. Not thread-safe.

#ifndef WARREN_SRC_DENSE_ID_MAP_H_
#define WARREN_SRC_DENSE_ID_MAP_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <utility>

#include "absl/container/flat_hash_map.h"

namespace warren::internal {

template <typename T>
class DenseIdMap {
 public:
  // Consecutive ids per chunk.
  static constexpr uint64_t kChunk = 1024;
  // An older chunk whose ids in use fall below kChunk / kSparse hands them
  // to the hash map and is freed.
  static constexpr uint64_t kSparse = 8;
  // The newest chunks, which are still filling: never counted as sparse.
  static constexpr size_t kRecent = 2;
  // How far above the window (in chunks) an id still extends it.
  static constexpr uint64_t kMaxGap = 64;

  DenseIdMap() = default;
  DenseIdMap(const DenseIdMap&) = delete;
  DenseIdMap& operator=(const DenseIdMap&) = delete;

  size_t size() const { return size_ + overflow_.size(); }
  bool empty() const { return size() == 0; }

  // The value of `id`, or null.
  T* Find(uint64_t id) {
    if (Chunk* c = ChunkOf(id); c != nullptr && c->Has(Slot(id))) {
      return &c->values[Slot(id)];
    }
    if (overflow_.empty()) return nullptr;
    auto it = overflow_.find(id);
    return it == overflow_.end() ? nullptr : &it->second;
  }

  // The value of `id`, default-constructed first if it is absent.
  T& FindOrInsert(uint64_t id) {
    if (T* v = Find(id)) return *v;
    if (Chunk* c = ChunkForInsert(id)) {
      c->Set(Slot(id));
      ++c->used;
      ++size_;
      return c->values[Slot(id)];
    }
    return overflow_[id];
  }

  // Erases `id`; false if it was absent.
  bool Erase(uint64_t id) {
    Chunk* c = ChunkOf(id);
    if (c == nullptr || !c->Has(Slot(id))) return overflow_.erase(id) != 0;
    c->values[Slot(id)] = T{};
    c->Clear(Slot(id));
    --c->used;
    --size_;
    const size_t index = (id - base_) / kChunk;
    if (c->used == 0) {
      chunks_[index].reset();
    } else if (c->used < kChunk / kSparse && index + kRecent < chunks_.size()) {
      Retire(index);
    }
    TrimBottom(/*keep=*/0, /*min_used=*/0);
    return true;
  }

  // Calls `fn(id, value)` for every value, chunks first (in id order), then
  // the hash map's (in no order). `fn` must not insert or erase.
  template <typename Fn>
  void ForEach(Fn&& fn) {
    for (size_t i = 0; i < chunks_.size(); ++i) {
      Chunk* c = chunks_[i].get();
      if (c == nullptr) continue;
      const uint64_t first = base_ + i * kChunk;
      for (uint64_t slot = 0; slot < kChunk; ++slot) {
        if (c->Has(slot)) fn(first + slot, c->values[slot]);
      }
    }
    for (auto& [id, value] : overflow_) fn(id, value);
  }

  // How many values live in chunks and how many in the hash map (for tests).
  size_t chunked() const { return size_; }
  size_t overflowed() const { return overflow_.size(); }
  // Chunks allocated now, and the window's length in chunks (freed ones
  // between them included).
  size_t chunks() const {
    size_t n = 0;
    for (const auto& c : chunks_) n += c != nullptr;
    return n;
  }
  size_t window_chunks() const { return chunks_.size(); }

 private:
  struct Chunk {
    uint64_t used = 0;
    uint64_t bits[kChunk / 64] = {};
    T values[kChunk];

    bool Has(uint64_t slot) const {
      return (bits[slot / 64] >> (slot % 64)) & 1;
    }
    void Set(uint64_t slot) { bits[slot / 64] |= uint64_t{1} << (slot % 64); }
    void Clear(uint64_t slot) {
      bits[slot / 64] &= ~(uint64_t{1} << (slot % 64));
    }
  };

  static uint64_t Slot(uint64_t id) { return id % kChunk; }

  // The allocated chunk that covers `id`, or null.
  Chunk* ChunkOf(uint64_t id) const {
    if (id < base_) return nullptr;
    const uint64_t index = (id - base_) / kChunk;
    return index < chunks_.size() ? chunks_[index].get() : nullptr;
  }

  // The chunk a new `id` goes to, allocated (and the window extended) as
  // needed; null when it goes to the hash map.
  Chunk* ChunkForInsert(uint64_t id) {
    if (chunks_.empty()) base_ = id - Slot(id);
    if (id < base_) return nullptr;
    uint64_t index = (id - base_) / kChunk;
    if (index >= chunks_.size()) {
      // A new chunk at the top. Sparse chunks at the bottom go first, so
      // that stragglers hold neither the window's start nor memory, nor make
      // new ids look far away; the newest stays unless the new id is far.
      const bool far = index >= chunks_.size() + kMaxGap;
      TrimBottom(far ? 0 : kRecent - 1, kChunk / kSparse);
      if (chunks_.empty()) base_ = id - Slot(id);
      index = (id - base_) / kChunk;
      if (index >= chunks_.size() + kMaxGap) return nullptr;
      chunks_.resize(index + 1);
    }
    std::unique_ptr<Chunk>& c = chunks_[index];
    if (c == nullptr) {
      // A freed chunk comes back only among the newest; an old id there is
      // a straggler from the start.
      if (index + kRecent < chunks_.size()) return nullptr;
      c = std::make_unique<Chunk>();
    }
    return c.get();
  }

  // Drops chunks from the bottom of the window while they are freed or hold
  // fewer than `min_used` values (which move to the hash map), keeping the
  // newest `keep`.
  void TrimBottom(size_t keep, uint64_t min_used) {
    while (chunks_.size() > keep) {
      Chunk* bottom = chunks_.front().get();
      if (bottom != nullptr && bottom->used >= min_used) return;
      if (bottom != nullptr) Retire(0);
      chunks_.pop_front();
      base_ += kChunk;
    }
  }

  // Moves the values of chunks_[index] to the hash map and frees it.
  void Retire(size_t index) {
    Chunk& c = *chunks_[index];
    const uint64_t first = base_ + index * kChunk;
    for (uint64_t slot = 0; slot < kChunk; ++slot) {
      if (c.Has(slot))
        overflow_.emplace(first + slot, std::move(c.values[slot]));
    }
    size_ -= c.used;
    chunks_[index].reset();
  }

  // chunks_[i] covers ids base_ + i * kChunk up to kChunk more; null when
  // freed. The front one is never null.
  std::deque<std::unique_ptr<Chunk>> chunks_;
  uint64_t base_ = 0;
  size_t size_ = 0;  // values in chunks
  absl::flat_hash_map<uint64_t, T> overflow_;
};

}  // namespace warren::internal

#endif  // WARREN_SRC_DENSE_ID_MAP_H_
