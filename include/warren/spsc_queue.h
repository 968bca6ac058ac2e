// -----------------------------------------------------------------------------
// File: warren/spsc_queue.h
// -----------------------------------------------------------------------------
//
// A bounded single-producer single-consumer lock-free ring, usable without
// the broker. This header defines:
//
//   * `SpscQueue<T>` — the ring, for exactly one producer thread and one
//                      consumer thread. Same API as `MpmcQueue<T>`.
//
// The design is rigtorp/SPSCQueue's. The capacity is rounded up to a power of
// two and the slots are allocated up front, packed, in storage that starts and
// ends on a cache-line boundary. Two 64-bit indices, the write index (owned by
// the producer) and the read index (owned by the consumer), each on its own
// cache line, say which slots are full; with one thread per side no per-slot
// turn is needed. Each side keeps, on its own line, a cached copy of the other
// side's index and reads the real one only when the copy says the ring is full
// (producer) or empty (consumer). That saves a cache miss on almost every call
// and is the single biggest speed-up of this design.
//
// Blocking calls spin briefly, then park the thread with C++20
// `std::atomic::wait` on a flag that the other side checks after each call,
// so a consumer can wait for work without burning a core. The check is cheap:
// a push or pop publishes its index with a plain release store, then loads
// the other side's flag (relaxed) on a line that only changes when a side
// parks; only a set flag costs an exchange and a notify. The parking side pays
// for the handshake with a process-wide barrier (see
// `internal::AsymmetricFence` in `warren/mpmc_queue.h`), so no wake-up is
// lost; where `membarrier` is unavailable each publish runs a `seq_cst` fence
// instead. The bulk calls publish once per batch.
//
// Example:
//
//   warren::SpscQueue<Event> q(4096);
//
//   // Producer thread only:
//   if (!q.try_push(event)) { /* full */ }
//   q.push(std::move(event));             // waits while full
//
//   // Consumer thread only:
//   Event e;
//   while (q.try_pop(e)) Handle(e);
//   q.pop(e);                             // parks while empty
//
// Thread-safety: one producer thread may call the producer calls (`push`,
// `emplace`, `try_push`, `try_emplace`, `try_push_bulk`) while one consumer
// thread calls the consumer calls (`pop`, `try_pop`, `try_pop_bulk`);
// `capacity`, `size` and `empty` may be called from any thread. Which thread
// is the producer (or the consumer) may change only across a synchronisation
// that orders the old thread's calls before the new one's. Anything else is a
// data race.
//
// Guarantees and non-guarantees:
//
//   * Strict FIFO: the consumer pops the elements in the order pushed; none
//     is lost or duplicated. Elements still queued at destruction are
//     destroyed.
//   * `size()` and `empty()` are best-effort guesses under concurrency.
//   * The library throws nothing. The element's constructors, its move
//     assignment and its destructor must not throw either (the calls are
//     `noexcept`, so a throwing element terminates the program). Allocating
//     the slots in the constructor uses `operator new`.

#ifndef WARREN_SPSC_QUEUE_H_
#define WARREN_SPSC_QUEUE_H_

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <type_traits>
#include <utility>

#include "warren/mpmc_queue.h"  // kCacheLineSize, internal::CpuRelax, ...

namespace warren {

// SpscQueue<T>
//
// A bounded FIFO ring of `T` for one producer thread and one consumer thread.
// `T` need not be default-constructible; `pop` and `try_pop` move-assign into
// their argument. Not copyable or movable.
//
// Thread-safe for one producer and one consumer (see the file comment); the
// destructor must not run concurrently with any other call.
template <typename T>
class SpscQueue {
 public:
  static_assert(std::is_nothrow_destructible_v<T>,
                "SpscQueue requires a non-throwing destructor");

  // Makes an empty ring holding `capacity` elements, rounded up to a power of
  // two (at least 2). All slots are allocated here.
  explicit SpscQueue(std::size_t capacity)
      : mask_(internal::RoundUpCapacity(capacity) - 1),
        light_fence_compiler_only_(
            internal::AsymmetricFence::LightIsCompilerOnly()),
        storage_(AllocateStorage(mask_ + 1)) {
    // The layout: the constants, the producer's fields, the consumer's fields
    // and the parking flags each on their own cache line.
    static_assert(std::is_standard_layout_v<SpscQueue>);
    static_assert(alignof(SpscQueue) % kCacheLineSize == 0);
    static_assert(offsetof(SpscQueue, write_index_) % kCacheLineSize == 0);
    static_assert(offsetof(SpscQueue, write_index_) >=
                  offsetof(SpscQueue, storage_) + sizeof(storage_));
    static_assert(offsetof(SpscQueue, read_index_cache_) +
                      sizeof(std::size_t) <=
                  offsetof(SpscQueue, write_index_) + kCacheLineSize);
    static_assert(offsetof(SpscQueue, read_index_) % kCacheLineSize == 0);
    static_assert(offsetof(SpscQueue, read_index_) -
                      offsetof(SpscQueue, write_index_) >=
                  kCacheLineSize);
    static_assert(offsetof(SpscQueue, write_index_cache_) +
                      sizeof(std::size_t) <=
                  offsetof(SpscQueue, read_index_) + kCacheLineSize);
    static_assert(offsetof(SpscQueue, producer_parked_) % kCacheLineSize == 0);
    static_assert(offsetof(SpscQueue, producer_parked_) -
                      offsetof(SpscQueue, read_index_) >=
                  kCacheLineSize);
    static_assert(sizeof(SpscQueue) - offsetof(SpscQueue, producer_parked_) >=
                  kCacheLineSize);
  }

  // Destroys the elements still queued. No other call may be running.
  ~SpscQueue() {
    // relaxed: every other call happens-before the destructor (contract).
    const std::size_t write = write_index_.load(std::memory_order_relaxed);
    for (std::size_t i = read_index_.load(std::memory_order_relaxed);
         i != write; ++i) {
      ElementAt(i)->~T();
    }
    FreeStorage(storage_);
  }

  SpscQueue(const SpscQueue&) = delete;
  SpscQueue& operator=(const SpscQueue&) = delete;

  // Producer only. Constructs an element from `args` at the back of the ring
  // if there is room. Returns false, without touching `args`, when the ring
  // is full. Never waits.
  template <typename... Args>
  [[nodiscard]] bool try_emplace(Args&&... args) noexcept {
    static_assert(std::is_constructible_v<T, Args&&...>);
    // relaxed: only this thread writes write_index_.
    const std::size_t write = write_index_.load(std::memory_order_relaxed);
    if (write - read_index_cache_ > mask_ && !RefreshReadIndex(write, 1)) {
      return false;
    }
    ::new (SlotAt(write)) T(std::forward<Args>(args)...);
    PublishWrite(write + 1);
    return true;
  }

  // Producer only. Copies or moves `value` to the back of the ring if there
  // is room. Returns false, leaving `value` untouched, when the ring is full.
  [[nodiscard]] bool try_push(const T& value) noexcept {
    return try_emplace(value);
  }
  [[nodiscard]] bool try_push(T&& value) noexcept {
    return try_emplace(std::move(value));
  }

  // Producer only. Constructs an element from `args` at the back of the
  // ring, waiting while the ring is full: it spins briefly, then parks the
  // thread until the consumer pops.
  template <typename... Args>
  void emplace(Args&&... args) noexcept {
    static_assert(std::is_constructible_v<T, Args&&...>);
    // relaxed: only this thread writes write_index_.
    const std::size_t write = write_index_.load(std::memory_order_relaxed);
    for (int spins = 0;
         write - read_index_cache_ > mask_ && !RefreshReadIndex(write, 1);
         ++spins) {
      if (spins < internal::kSpinsBeforePark) {
        internal::CpuRelax();
        continue;
      }
      // The parking half of the handshake with the consumer's PublishRead()
      // (store read_index_, barrier, load this flag): raise the flag, heavy
      // barrier, re-check; one of the two sides sees the other's store.
      // relaxed: Heavy() orders the store before the re-check.
      producer_parked_.store(1, std::memory_order_relaxed);
      internal::AsymmetricFence::Heavy(light_fence_compiler_only_);
      // acquire: as in RefreshReadIndex().
      if (write - read_index_.load(std::memory_order_acquire) > mask_) {
        // Sleeps only while the flag is still 1; Wake() clears it first.
        producer_parked_.wait(1, std::memory_order_acquire);
      }
      // relaxed: only this thread sets the flag; a late Wake() is harmless.
      producer_parked_.store(0, std::memory_order_relaxed);
    }
    ::new (SlotAt(write)) T(std::forward<Args>(args)...);
    PublishWrite(write + 1);
  }

  // Producer only. Copies or moves `value` to the back of the ring, waiting
  // (spinning, then parked) while the ring is full.
  void push(const T& value) noexcept { emplace(value); }
  void push(T&& value) noexcept { emplace(std::move(value)); }

  // Consumer only. Moves the front element into `out` and destroys it in the
  // ring. Returns false, leaving `out` untouched, when the ring is empty.
  // Never waits.
  [[nodiscard]] bool try_pop(T& out) noexcept {
    // relaxed: only this thread writes read_index_.
    const std::size_t read = read_index_.load(std::memory_order_relaxed);
    if (read == write_index_cache_ && !RefreshWriteIndex(read, 1)) {
      return false;
    }
    PopAt(read, out);
    PublishRead(read + 1);
    return true;
  }

  // Consumer only. Moves the front element into `out`, waiting while the
  // ring is empty: it spins briefly, then parks the thread (no CPU used)
  // until the producer pushes.
  void pop(T& out) noexcept {
    // relaxed: only this thread writes read_index_.
    const std::size_t read = read_index_.load(std::memory_order_relaxed);
    for (int spins = 0;
         read == write_index_cache_ && !RefreshWriteIndex(read, 1); ++spins) {
      if (spins < internal::kSpinsBeforePark) {
        internal::CpuRelax();
        continue;
      }
      // The parking half of the handshake with the producer's PublishWrite()
      // (store write_index_, barrier, load this flag), as in emplace().
      consumer_parked_.store(1, std::memory_order_relaxed);
      internal::AsymmetricFence::Heavy(light_fence_compiler_only_);
      // acquire: as in RefreshWriteIndex().
      if (write_index_.load(std::memory_order_acquire) == read) {
        // Sleeps only while the flag is still 1; Wake() clears it first.
        consumer_parked_.wait(1, std::memory_order_acquire);
      }
      // relaxed: only this thread sets the flag; a late Wake() is harmless.
      consumer_parked_.store(0, std::memory_order_relaxed);
    }
    PopAt(read, out);
    PublishRead(read + 1);
  }

  // Producer only. Pushes elements constructed from `*first` (advancing
  // `first` once per element pushed) until `n` are pushed or the ring is
  // full. Returns how many were pushed, 0 when the ring is full. Never
  // waits. To move from a range, pass `std::make_move_iterator(it)`.
  template <typename It>
  [[nodiscard]] std::size_t try_push_bulk(It first, std::size_t n) noexcept {
    // relaxed: only this thread writes write_index_.
    const std::size_t write = write_index_.load(std::memory_order_relaxed);
    std::size_t room = capacity() - (write - read_index_cache_);
    if (room < n) {
      RefreshReadIndex(write, n);
      room = capacity() - (write - read_index_cache_);
    }
    const std::size_t count = room < n ? room : n;
    if (count == 0) return 0;
    for (std::size_t i = 0; i < count; ++i, ++first) {
      ::new (SlotAt(write + i)) T(*first);
    }
    PublishWrite(write + count);
    return count;
  }

  // Consumer only. Pops up to `max` elements from the front, writing each to
  // `*out` and advancing `out`. Returns how many were popped, 0 when the ring
  // is empty. Never waits.
  template <typename OutIt>
  [[nodiscard]] std::size_t try_pop_bulk(OutIt out, std::size_t max) noexcept {
    // relaxed: only this thread writes read_index_.
    const std::size_t read = read_index_.load(std::memory_order_relaxed);
    std::size_t queued = write_index_cache_ - read;
    if (queued < max) {
      RefreshWriteIndex(read, max);
      queued = write_index_cache_ - read;
    }
    const std::size_t count = queued < max ? queued : max;
    if (count == 0) return 0;
    for (std::size_t i = 0; i < count; ++i, ++out) {
      T* element = ElementAt(read + i);
      *out = std::move(*element);
      element->~T();
    }
    PublishRead(read + count);
    return count;
  }

  // The number of elements the ring holds when full (a power of two).
  std::size_t capacity() const noexcept { return mask_ + 1; }

  // A best-effort guess at the number of queued elements: exact only when the
  // other side is idle. Always within [0, capacity()].
  std::size_t size() const noexcept {
    // acquire: pairs with PublishRead()'s release, so the write index loaded
    // next is at least the one the consumer saw: `write - read` cannot wrap.
    const std::size_t read = read_index_.load(std::memory_order_acquire);
    // relaxed: a snapshot; it may be stale anyway.
    const std::size_t write = write_index_.load(std::memory_order_relaxed);
    return write - read < capacity() ? write - read : capacity();
  }

  // A best-effort guess, like size().
  bool empty() const noexcept { return size() == 0; }

 private:
  friend struct internal::RingTestPeer<SpscQueue>;

  static constexpr std::align_val_t kStorageAlignment{
      std::max(alignof(T), kCacheLineSize)};

  // Storage for `capacity` packed slots that starts on a cache-line boundary
  // and is rounded up to whole cache lines, so that no other object shares
  // its first or last line.
  static unsigned char* AllocateStorage(std::size_t capacity) {
    // Invariant: the storage size fits in a size_t.
    assert(capacity <= std::numeric_limits<std::size_t>::max() / sizeof(T) -
                           kCacheLineSize);
    const std::size_t bytes = (capacity * sizeof(T) + kCacheLineSize - 1) /
                              kCacheLineSize * kCacheLineSize;
    return static_cast<unsigned char*>(
        ::operator new(bytes, kStorageAlignment));
  }
  static void FreeStorage(unsigned char* storage) noexcept {
    ::operator delete(storage, kStorageAlignment);
  }

  void* SlotAt(std::size_t index) const noexcept {
    return storage_ + (index & mask_) * sizeof(T);
  }
  T* ElementAt(std::size_t index) const noexcept {
    return std::launder(static_cast<T*>(SlotAt(index)));
  }
  void PopAt(std::size_t index, T& out) noexcept {
    T* element = ElementAt(index);
    out = std::move(*element);
    element->~T();
  }

  // Producer only. Reloads the cached read index; true when at least `want`
  // slots are now free for a push at `write`.
  bool RefreshReadIndex(std::size_t write, std::size_t want) noexcept {
    // acquire: pairs with PublishRead()'s release, so the consumer's
    // destruction of the popped elements happens-before we reuse the slots.
    read_index_cache_ = read_index_.load(std::memory_order_acquire);
    return capacity() - (write - read_index_cache_) >= want;
  }

  // Consumer only. Reloads the cached write index; true when at least `want`
  // elements are now queued from `read`.
  bool RefreshWriteIndex(std::size_t read, std::size_t want) noexcept {
    // acquire: pairs with PublishWrite()'s release, so the producer's
    // construction of the pushed elements happens-before we read them.
    write_index_cache_ = write_index_.load(std::memory_order_acquire);
    return write_index_cache_ - read >= want;
  }

  // Producer only. Makes the elements before `write` visible to the consumer
  // and wakes it if it is parked.
  void PublishWrite(std::size_t write) noexcept {
    // release: pairs with the consumer's acquire loads in RefreshWriteIndex()
    // and pop(), publishing the constructed elements.
    write_index_.store(write, std::memory_order_release);
    // The passing half of the handshake with pop(): keeps the flag load after
    // the store (a compiler barrier, or a fence without membarrier).
    internal::AsymmetricFence::Light(light_fence_compiler_only_);
    // relaxed: the handshake makes it see the flag whenever pop()'s re-check
    // could miss our store.
    if (consumer_parked_.load(std::memory_order_relaxed) != 0) [[unlikely]] {
      Wake(consumer_parked_);
    }
  }

  // Consumer only. Frees the slots before `read` for the producer and wakes
  // it if it is parked.
  void PublishRead(std::size_t read) noexcept {
    // release: pairs with the producer's acquire loads in RefreshReadIndex()
    // and emplace() and with size(), handing the freed slots back.
    read_index_.store(read, std::memory_order_release);
    // The passing half of the handshake with emplace(), as in PublishWrite().
    internal::AsymmetricFence::Light(light_fence_compiler_only_);
    // relaxed: as in PublishWrite().
    if (producer_parked_.load(std::memory_order_relaxed) != 0) [[unlikely]] {
      Wake(producer_parked_);
    }
  }

  static void Wake(std::atomic<std::uint32_t>& parked) noexcept {
    // seq_cst: clearing the flag is what unblocks the sleeper's wait(1); the
    // full barrier also orders our index store before notify_one()'s own
    // check for sleepers. Only the first Wake() to clear a given raise
    // notifies. The data itself is published by the index stores.
    if (parked.exchange(0, std::memory_order_seq_cst) != 0) {
      parked.notify_one();
    }
  }

  // Constant after construction; read by both sides, written by neither.
  const std::size_t mask_;
  const bool light_fence_compiler_only_;  // AsymmetricFence::Light()'s kind.
  unsigned char* const storage_;

  // The producer's line: written only by the producer.
  alignas(kCacheLineSize) std::atomic<std::size_t> write_index_{0};
  std::size_t read_index_cache_ = 0;  // The producer's copy of read_index_.

  // The consumer's line: written only by the consumer.
  alignas(kCacheLineSize) std::atomic<std::size_t> read_index_{0};
  std::size_t write_index_cache_ = 0;  // The consumer's copy of write_index_.

  // Parking flags: 1 while that side is parked or about to park. Written only
  // when a side parks or wakes the other, so reading them is cheap.
  alignas(kCacheLineSize) std::atomic<std::uint32_t> producer_parked_{0};
  std::atomic<std::uint32_t> consumer_parked_{0};
};

}  // namespace warren

#endif  // WARREN_SPSC_QUEUE_H_
