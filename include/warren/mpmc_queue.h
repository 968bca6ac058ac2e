// -----------------------------------------------------------------------------
// File: warren/mpmc_queue.h
// -----------------------------------------------------------------------------
//
// A bounded multi-producer multi-consumer lock-free ring, usable without the
// broker. Capacity is rounded up to a power of two and allocated up front.
//
// Example:
//
//   warren::MpmcQueue<int> q(1024);
//   if (!q.try_push(42)) { /* full */ }
//   int v;
//   if (q.try_pop(v)) { /* got v */ }
//
// Thread-safe: any number of threads may push and pop concurrently.

#ifndef WARREN_MPMC_QUEUE_H_
#define WARREN_MPMC_QUEUE_H_

#include <atomic>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

namespace warren {

inline constexpr std::size_t kCacheLineSize = 64;

template <typename T>
class MpmcQueue {
 public:
  explicit MpmcQueue(std::size_t capacity) {
    std::size_t cap = 2;
    while (cap < capacity) cap <<= 1;
    mask_ = cap - 1;
    slots_ = std::make_unique<Slot[]>(cap);
    for (std::size_t i = 0; i < cap; ++i) {
      slots_[i].seq.store(i, std::memory_order_relaxed);
    }
  }
  ~MpmcQueue() {
    T v;
    while (try_pop(v)) {
    }
  }
  MpmcQueue(const MpmcQueue&) = delete;
  MpmcQueue& operator=(const MpmcQueue&) = delete;

  template <typename... Args>
  [[nodiscard]] bool try_emplace(Args&&... args) {
    std::size_t pos = tail_.load(std::memory_order_relaxed);
    for (;;) {
      Slot& s = slots_[pos & mask_];
      const std::size_t seq = s.seq.load(std::memory_order_acquire);
      const auto diff =
          static_cast<std::ptrdiff_t>(seq) - static_cast<std::ptrdiff_t>(pos);
      if (diff == 0) {
        if (tail_.compare_exchange_weak(pos, pos + 1,
                                        std::memory_order_relaxed)) {
          new (&s.storage) T(std::forward<Args>(args)...);
          s.seq.store(pos + 1, std::memory_order_release);
          return true;
        }
      } else if (diff < 0) {
        return false;
      } else {
        pos = tail_.load(std::memory_order_relaxed);
      }
    }
  }
  [[nodiscard]] bool try_push(const T& v) { return try_emplace(v); }
  [[nodiscard]] bool try_push(T&& v) { return try_emplace(std::move(v)); }

  [[nodiscard]] bool try_pop(T& out) {
    std::size_t pos = head_.load(std::memory_order_relaxed);
    for (;;) {
      Slot& s = slots_[pos & mask_];
      const std::size_t seq = s.seq.load(std::memory_order_acquire);
      const auto diff = static_cast<std::ptrdiff_t>(seq) -
                        static_cast<std::ptrdiff_t>(pos + 1);
      if (diff == 0) {
        if (head_.compare_exchange_weak(pos, pos + 1,
                                        std::memory_order_relaxed)) {
          T* p = std::launder(reinterpret_cast<T*>(&s.storage));
          out = std::move(*p);
          p->~T();
          s.seq.store(pos + mask_ + 1, std::memory_order_release);
          return true;
        }
      } else if (diff < 0) {
        return false;
      } else {
        pos = head_.load(std::memory_order_relaxed);
      }
    }
  }

  std::size_t capacity() const { return mask_ + 1; }
  // A best-effort guess under concurrency.
  std::size_t size() const {
    const std::size_t t = tail_.load(std::memory_order_relaxed);
    const std::size_t h = head_.load(std::memory_order_relaxed);
    return t > h ? t - h : 0;
  }
  bool empty() const { return size() == 0; }

 private:
  struct alignas(kCacheLineSize) Slot {
    std::atomic<std::size_t> seq{0};
    alignas(T) unsigned char storage[sizeof(T)];
  };
  std::size_t mask_ = 0;
  std::unique_ptr<Slot[]> slots_;
  alignas(kCacheLineSize) std::atomic<std::size_t> head_{0};
  alignas(kCacheLineSize) std::atomic<std::size_t> tail_{0};
};

}  // namespace warren

#endif  // WARREN_MPMC_QUEUE_H_
