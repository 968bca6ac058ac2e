// Fixed-size block pools, so the per-message objects (a queue's node, the
// shared envelope) cost no heap allocation in steady state.
//
// Each block size has one process-wide free list: a bounded lock-free MPMC
// ring of free blocks. Allocation pops a block (or falls back to operator
// new when the list is empty); freeing pushes it back (or deletes it when the
// list is full). Blocks move freely between threads: a publisher allocates,
// a consumer frees. The pools are never destroyed, so blocks freed during
// static destruction stay valid.

#ifndef WARREN_SRC_POOL_H_
#define WARREN_SRC_POOL_H_

#include <cstddef>
#include <memory>
#include <new>
#include <utility>

#include "warren/mpmc_queue.h"

namespace warren::internal {

// A free list of blocks of `Size` bytes aligned to `Align`. Thread-safe.
template <size_t Size, size_t Align>
class BlockPool {
 public:
  // Free blocks kept per size; beyond that, freed blocks go back to the heap.
  static constexpr size_t kCapacity = 1 << 16;

  static BlockPool& Get() {
    static BlockPool* pool = new BlockPool();  // never destroyed
    return *pool;
  }

  void* Allocate() {
    void* block;
    if (free_.try_pop(block)) return block;
    return ::operator new (Size, std::align_val_t{Align});
  }

  void Free(void* block) {
    if (!free_.try_push(block)) {
      ::operator delete (block, std::align_val_t{Align});
    }
  }

 private:
  BlockPool() : free_(kCapacity) {}
  MpmcQueue<void*> free_;
};

// A standard allocator drawing single objects from BlockPool (for
// std::allocate_shared); arrays come from the heap.
template <typename T>
struct PoolAllocator {
  using value_type = T;
  PoolAllocator() = default;
  template <typename U>
  PoolAllocator(const PoolAllocator<U>&) {
  }  // NOLINT(google-explicit-constructor)

  T* allocate(size_t n) {
    if (n == 1) {
      return static_cast<T*>(
          BlockPool<sizeof(T), alignof(T)>::Get().Allocate());
    }
    return std::allocator<T>().allocate(n);
  }
  void deallocate(T* p, size_t n) {
    if (n == 1) {
      BlockPool<sizeof(T), alignof(T)>::Get().Free(p);
      return;
    }
    std::allocator<T>().deallocate(p, n);
  }
  template <typename U>
  friend bool operator==(const PoolAllocator&, const PoolAllocator<U>&) {
    return true;
  }
};

// Deleter returning a T to its pool.
template <typename T>
struct PoolDelete {
  void operator()(T* p) const {
    p->~T();
    BlockPool<sizeof(T), alignof(T)>::Get().Free(p);
  }
};

template <typename T, typename... Args>
std::unique_ptr<T, PoolDelete<T>> MakePooled(Args&&... args) {
  void* block = BlockPool<sizeof(T), alignof(T)>::Get().Allocate();
  return std::unique_ptr<T, PoolDelete<T>>(new (block)
                                               T(std::forward<Args>(args)...));
}

}  // namespace warren::internal

#endif  // WARREN_SRC_POOL_H_
