// -----------------------------------------------------------------------------
// File: warren/mpmc_queue.h
// -----------------------------------------------------------------------------
//
// A bounded multi-producer multi-consumer lock-free ring, usable without the
// broker. This header defines:
//
//   * `MpmcQueue<T>`   — the ring. Any number of threads push and pop.
//   * `kCacheLineSize` — the cache-line size the rings pad their hot fields
//                        to (also used by `warren/spsc_queue.h`).
//
// The design is rigtorp/MPMCQueue's "turn" ring. The capacity is rounded up
// to a power of two and every slot is allocated up front, one cache line (or
// more) per slot. Each push and each pop takes a ticket from a 64-bit counter
// (`head_` for pushes, `tail_` for pops); ticket `t` uses slot
// `t % capacity` in lap `t / capacity`. A slot's turn word says whose turn it
// is: the producer of lap L, then the consumer of lap L, then the producer of
// lap L + 1, and so on. The blocking calls take their ticket with one
// `fetch_add` (no retry loop) and wait for their turn; the `try_` calls claim a
// ticket with a compare-and-swap only once they have seen that its slot is
// ready, so they never wait.
//
// Blocking calls spin briefly, then park the thread on the slot's turn word
// with C++20 `std::atomic::wait`, so a consumer can wait for work without
// burning a core. Parking support costs the non-blocking path almost nothing:
// passing a turn on is a plain release store followed by a relaxed load of the
// ring's waiter count, and only when that count is non-zero a fence and a
// notify. What makes the relaxed load safe (no lost wake-up) is an asymmetric
// Dekker handshake: a thread about to park counts itself in, then runs a
// process-wide memory barrier (Linux `membarrier`), so every thread passing a
// turn either has its turn store seen by the parking thread's re-check or sees
// the count. Where `membarrier` is unavailable the passing thread runs a
// `seq_cst` fence instead (see `internal::AsymmetricFence`).
//
// Example:
//
//   warren::MpmcQueue<std::string> q(1024);   // capacity 1024
//
//   // Producers:
//   if (!q.try_push("hello")) { /* full: drop, retry or back off */ }
//   q.emplace(3, 'x');                        // waits while full
//
//   // Consumers:
//   std::string s;
//   if (q.try_pop(s)) { /* got s */ }
//   q.pop(s);                                 // parks while empty
//   if (q.try_pop_claimed(s)) { /* waits for a push already under way */ }
//
// Thread-safety: every member function except the destructor may be called
// concurrently from any number of threads.
//
// Guarantees and non-guarantees:
//
//   * Every element pushed is popped at most once; none is lost while the
//     queue lives. Elements still queued at destruction are destroyed.
//   * Each consumer sees the elements of each producer in the order that
//     producer pushed them. Across producers there is no order, and with
//     several consumers there is no global order of delivery.
//   * No fairness: a thread in a `try_` loop may lose to others indefinitely.
//   * `size()` and `empty()` are best-effort guesses under concurrency.
//   * The library throws nothing. The element's constructors, its move
//     assignment and its destructor must not throw either (the calls are
//     `noexcept`, so a throwing element terminates the program). Allocating
//     the slots in the constructor uses `operator new`.

#ifndef WARREN_MPMC_QUEUE_H_
#define WARREN_MPMC_QUEUE_H_

#include <atomic>
#include <bit>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <new>
#include <thread>
#include <type_traits>
#include <utility>

#if defined(__linux__) && __has_include(<linux/membarrier.h>)
#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>
#if defined(SYS_membarrier)
#define WARREN_RING_HAVE_MEMBARRIER 1
#endif
#endif
#ifndef WARREN_RING_HAVE_MEMBARRIER
#define WARREN_RING_HAVE_MEMBARRIER 0
#endif

namespace warren {

// The cache-line size the rings align their slots and hot fields to. A
// project constant because `std::hardware_destructive_interference_size` does
// not compile with clang 14 and libstdc++ 12.
inline constexpr std::size_t kCacheLineSize = 64;

namespace internal {

// How many times a blocking ring call re-checks (with a CPU pause between)
// before it parks its thread.
inline constexpr int kSpinsBeforePark = 64;

// Tells the CPU that this thread is spinning.
inline void CpuRelax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  __asm__ __volatile__("yield");
#endif
}

// The capacity a ring really has when asked for `capacity` slots: the next
// power of two, at least 2.
inline std::size_t RoundUpCapacity(std::size_t capacity) noexcept {
  // Invariant: the result must fit in a size_t.
  assert(capacity <= std::numeric_limits<std::size_t>::max() / 2 + 1);
  return capacity < 2 ? 2 : std::bit_ceil(capacity);
}

// The two halves of the Dekker handshake between a thread that parks and
// the threads that may have to wake it, made asymmetric so that the frequent
// half (run by every push and pop) is nearly free and the rare half (run
// before parking, next to a futex syscall anyway) pays for both.
//
//   parking thread:  count itself in (waiter count / parked flag);
//                    Heavy();  re-check the ring;  park if still blocked.
//   passing thread:  publish (turn or index store, release);
//                    Light();  load the waiter count (relaxed);
//                    non-zero: seq_cst fence, notify.
//
// With `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)` Heavy() makes every
// other running thread of the process execute a full memory barrier, and
// Light() is only a compiler barrier: the barrier lands in the passing
// thread either before its load (which then sees the count) or after its
// publishing store (which the re-check then sees). Without `membarrier`
// (not Linux, an old kernel, a sandbox that forbids it, valgrind) both halves
// are `seq_cst` fences, the textbook handshake.
class AsymmetricFence {
 public:
  // Whether Light() may be a compiler barrier only. The first call registers
  // the process for expedited `membarrier`; every ring asks in its
  // constructor, so this is settled before any thread uses a ring.
  static bool LightIsCompilerOnly() noexcept {
    static const bool available = Register();
    return available;
  }

  // The passing thread's half. `compiler_only` is LightIsCompilerOnly().
  static void Light(bool compiler_only) noexcept {
    if (compiler_only) {
      std::atomic_signal_fence(std::memory_order_seq_cst);
    } else {
      std::atomic_thread_fence(std::memory_order_seq_cst);
    }
  }

  // The parking thread's half. `compiler_only` is LightIsCompilerOnly().
  static void Heavy(bool compiler_only) noexcept {
#if WARREN_RING_HAVE_MEMBARRIER
    if (compiler_only) {
      // Cannot fail once registered. If it ever did, the passing threads
      // (which run no fence) could lose this thread's wake-up: stop instead.
      if (::syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0) != 0) {
        std::abort();
      }
      return;
    }
#endif
    (void)compiler_only;
    std::atomic_thread_fence(std::memory_order_seq_cst);
  }

 private:
  static bool Register() noexcept {
#if WARREN_RING_HAVE_MEMBARRIER
    const long commands = ::syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0);
    return commands > 0 && (commands & MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 &&
           ::syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
                     0) == 0;
#else
    return false;
#endif
  }
};

// Lets tests look inside a ring. Specialised only in the ring tests.
template <typename Ring>
struct RingTestPeer;

}  // namespace internal

// MpmcQueue<T>
//
// A bounded FIFO ring of `T` for any number of producer and consumer threads.
// `T` need not be default-constructible; `pop` and `try_pop` move-assign into
// their argument. Not copyable or movable.
//
// Thread-safe, except that the destructor must not run concurrently with any
// other call (in particular, no thread may be parked in `push` or `pop`).
template <typename T>
class MpmcQueue {
 public:
  static_assert(std::is_nothrow_destructible_v<T>,
                "MpmcQueue requires a non-throwing destructor");

  // Makes an empty ring holding `capacity` elements, rounded up to a power of
  // two (at least 2). All slots are allocated here.
  explicit MpmcQueue(std::size_t capacity)
      : mask_(internal::RoundUpCapacity(capacity) - 1),
        shift_(std::countr_zero(mask_ + 1)),
        light_fence_compiler_only_(
            internal::AsymmetricFence::LightIsCompilerOnly()),
        slots_(new Slot[mask_ + 1]) {
    // The layout: every slot on its own cache line(s); the constants, the
    // push ticket, the pop ticket and the waiter count each on their own
    // cache line.
    static_assert(alignof(Slot) % kCacheLineSize == 0);
    static_assert(sizeof(Slot) % kCacheLineSize == 0);
    static_assert(std::is_standard_layout_v<MpmcQueue>);
    static_assert(alignof(MpmcQueue) % kCacheLineSize == 0);
    static_assert(offsetof(MpmcQueue, head_) % kCacheLineSize == 0);
    static_assert(offsetof(MpmcQueue, head_) >=
                  offsetof(MpmcQueue, slots_) + sizeof(slots_));
    static_assert(offsetof(MpmcQueue, tail_) % kCacheLineSize == 0);
    static_assert(offsetof(MpmcQueue, tail_) - offsetof(MpmcQueue, head_) >=
                  kCacheLineSize);
    static_assert(offsetof(MpmcQueue, waiters_) % kCacheLineSize == 0);
    static_assert(offsetof(MpmcQueue, waiters_) - offsetof(MpmcQueue, tail_) >=
                  kCacheLineSize);
    static_assert(sizeof(MpmcQueue) - offsetof(MpmcQueue, waiters_) >=
                  kCacheLineSize);
  }

  // Destroys the elements still queued. No other call may be running.
  ~MpmcQueue() {
    for (std::size_t i = 0; i <= mask_; ++i) {
      // relaxed: every other call happens-before the destructor (contract).
      if (IsFull(slots_[i].turn.load(std::memory_order_relaxed))) {
        slots_[i].element()->~T();
      }
    }
    delete[] slots_;
  }

  MpmcQueue(const MpmcQueue&) = delete;
  MpmcQueue& operator=(const MpmcQueue&) = delete;

  // Constructs an element from `args` at the back of the ring if there is
  // room. Returns false, without touching `args`, when the ring is full.
  // Never waits.
  template <typename... Args>
  [[nodiscard]] bool try_emplace(Args&&... args) noexcept {
    static_assert(std::is_constructible_v<T, Args&&...>);
    // relaxed: a ticket only names a slot; the slot's turn word carries the
    // synchronisation.
    std::size_t ticket = head_.load(std::memory_order_relaxed);
    for (;;) {
      // IsTurn()'s acquire: the consumer that emptied the slot destroyed its
      // element before our construction.
      const std::uint32_t turn = ProducerTurn(ticket);
      if (IsTurn(ticket, turn)) {
        // relaxed: see above; on failure `ticket` is reloaded.
        if (head_.compare_exchange_weak(ticket, ticket + 1,
                                        std::memory_order_relaxed,
                                        std::memory_order_relaxed)) {
          Slot& slot = SlotFor(ticket);
          slot.Construct(std::forward<Args>(args)...);
          PassTurn(slot, turn + kTurnStep);
          return true;
        }
      } else {
        const std::size_t seen = ticket;
        // relaxed: as above.
        ticket = head_.load(std::memory_order_relaxed);
        if (ticket == seen) return false;  // The slot is still in use: full.
      }
    }
  }

  // Copies or moves `value` to the back of the ring if there is room.
  // Returns false, leaving `value` untouched, when the ring is full.
  [[nodiscard]] bool try_push(const T& value) noexcept {
    return try_emplace(value);
  }
  [[nodiscard]] bool try_push(T&& value) noexcept {
    return try_emplace(std::move(value));
  }

  // Constructs an element from `args` at the back of the ring, waiting while
  // the ring is full: it spins briefly, then parks the thread until a
  // consumer frees its slot.
  template <typename... Args>
  void emplace(Args&&... args) noexcept {
    static_assert(std::is_constructible_v<T, Args&&...>);
    // relaxed: the read-modify-write alone makes tickets unique; the slot's
    // turn word carries the synchronisation.
    const std::size_t ticket = head_.fetch_add(1, std::memory_order_relaxed);
    Slot& slot = SlotFor(ticket);
    const std::uint32_t turn = ProducerTurn(ticket);
    AwaitTurn(slot, turn);
    slot.Construct(std::forward<Args>(args)...);
    PassTurn(slot, turn + kTurnStep);
  }

  // Copies or moves `value` to the back of the ring, waiting (spinning, then
  // parked) while the ring is full.
  void push(const T& value) noexcept { emplace(value); }
  void push(T&& value) noexcept { emplace(std::move(value)); }

  // Moves the front element into `out` and destroys it in the ring. Returns
  // false, leaving `out` untouched, when the ring is empty. Never waits.
  [[nodiscard]] bool try_pop(T& out) noexcept {
    // relaxed: as in try_emplace.
    std::size_t ticket = tail_.load(std::memory_order_relaxed);
    for (;;) {
      // IsTurn()'s acquire: the producer that filled the slot constructed its
      // element before our read.
      const std::uint32_t turn = ConsumerTurn(ticket);
      if (IsTurn(ticket, turn)) {
        // relaxed: as in try_emplace.
        if (tail_.compare_exchange_weak(ticket, ticket + 1,
                                        std::memory_order_relaxed,
                                        std::memory_order_relaxed)) {
          Slot& slot = SlotFor(ticket);
          slot.MoveOutAndDestroy(out);
          PassTurn(slot, turn + kTurnStep);
          return true;
        }
      } else {
        const std::size_t seen = ticket;
        // relaxed: as above.
        ticket = tail_.load(std::memory_order_relaxed);
        if (ticket == seen) return false;  // Not filled yet: empty.
      }
    }
  }

  // As try_pop, but a push that has claimed the front slot and not yet filled
  // it is waited for (spinning briefly, then yielding), where try_pop reports
  // the ring empty although elements pushed after that one may be ready. So
  // false means no push had a slot that no pop has taken: a caller that then
  // looks elsewhere (another ring, a list behind it) never passes over an
  // element of this ring. Never parks.
  [[nodiscard]] bool try_pop_claimed(T& out) noexcept {
    for (int spins = 0;; ++spins) {
      if (try_pop(out)) return true;
      // relaxed: tickets only (try_pop's acquire covers the element); a
      // claim made before whatever this caller saw of it is seen.
      if (head_.load(std::memory_order_relaxed) ==
          tail_.load(std::memory_order_relaxed)) {
        return false;
      }
      if (spins < internal::kSpinsBeforePark) {
        internal::CpuRelax();
      } else {
        std::this_thread::yield();  // its producer may be preempted
      }
    }
  }

  // Moves the front element into `out`, waiting while the ring is empty: it
  // spins briefly, then parks the thread (no CPU used) until a producer fills
  // its slot.
  void pop(T& out) noexcept {
    // relaxed: as in emplace.
    const std::size_t ticket = tail_.fetch_add(1, std::memory_order_relaxed);
    Slot& slot = SlotFor(ticket);
    const std::uint32_t turn = ConsumerTurn(ticket);
    AwaitTurn(slot, turn);
    slot.MoveOutAndDestroy(out);
    PassTurn(slot, turn + kTurnStep);
  }

  // Pushes elements constructed from `*first` (advancing `first` once per
  // element pushed) until `n` are pushed or the next slot is not free.
  // Returns how many were pushed, 0 when the ring is full. The pushed
  // elements take consecutive places in the ring. Never waits. To move from
  // a range, pass `std::make_move_iterator(it)`.
  template <typename It>
  [[nodiscard]] std::size_t try_push_bulk(It first, std::size_t n) noexcept {
    // relaxed: as in try_emplace.
    std::size_t ticket = head_.load(std::memory_order_relaxed);
    for (;;) {
      std::size_t count = 0;
      while (count < n &&
             IsTurn(ticket + count, ProducerTurn(ticket + count))) {
        ++count;
      }
      if (count == 0) {
        const std::size_t seen = ticket;
        // relaxed: as above.
        ticket = head_.load(std::memory_order_relaxed);
        if (ticket == seen) return 0;
        continue;
      }
      // relaxed: as in try_emplace; on failure `ticket` is reloaded.
      if (head_.compare_exchange_weak(ticket, ticket + count,
                                      std::memory_order_relaxed,
                                      std::memory_order_relaxed)) {
        for (std::size_t i = 0; i < count; ++i, ++first) {
          Slot& slot = SlotFor(ticket + i);
          slot.Construct(*first);
          PassTurn(slot, ProducerTurn(ticket + i) + kTurnStep);
        }
        return count;
      }
    }
  }

  // Pops up to `max` elements from the front, writing each to `*out` and
  // advancing `out`, until `max` are popped or the next slot is not filled.
  // Returns how many were popped, 0 when the ring is empty. Never waits.
  template <typename OutIt>
  [[nodiscard]] std::size_t try_pop_bulk(OutIt out, std::size_t max) noexcept {
    // relaxed: as in try_emplace.
    std::size_t ticket = tail_.load(std::memory_order_relaxed);
    for (;;) {
      std::size_t count = 0;
      while (count < max &&
             IsTurn(ticket + count, ConsumerTurn(ticket + count))) {
        ++count;
      }
      if (count == 0) {
        const std::size_t seen = ticket;
        // relaxed: as above.
        ticket = tail_.load(std::memory_order_relaxed);
        if (ticket == seen) return 0;
        continue;
      }
      // relaxed: as in try_emplace; on failure `ticket` is reloaded.
      if (tail_.compare_exchange_weak(ticket, ticket + count,
                                      std::memory_order_relaxed,
                                      std::memory_order_relaxed)) {
        for (std::size_t i = 0; i < count; ++i, ++out) {
          Slot& slot = SlotFor(ticket + i);
          T* element = slot.element();
          *out = std::move(*element);
          element->~T();
          PassTurn(slot, ConsumerTurn(ticket + i) + kTurnStep);
        }
        return count;
      }
    }
  }

  // The number of elements the ring holds when full (a power of two).
  std::size_t capacity() const noexcept { return mask_ + 1; }

  // A best-effort guess at the number of queued elements: exact only when no
  // other thread is using the ring. Always within [0, capacity()].
  std::size_t size() const noexcept {
    // relaxed: a snapshot of two counters can be stale either way anyway.
    const std::size_t tail = tail_.load(std::memory_order_relaxed);
    const std::size_t head = head_.load(std::memory_order_relaxed);
    // Parked consumers can take tickets beyond `head`, parked producers
    // tickets beyond `tail + capacity()`.
    if (head <= tail) return 0;
    return head - tail < capacity() ? head - tail : capacity();
  }

  // A best-effort guess, like size().
  bool empty() const noexcept { return size() == 0; }

 private:
  friend struct internal::RingTestPeer<MpmcQueue>;

  // A slot's turn word: 2L while the producer of lap L may fill the slot and
  // 2L + 1 while the consumer of lap L may empty it (mod 2^32: fine while the
  // threads waiting on one slot are fewer than 2^31 laps apart; they are at
  // most a few).
  static constexpr std::uint32_t kTurnStep = 1;

  struct alignas(kCacheLineSize) Slot {
    T* element() noexcept {
      return std::launder(reinterpret_cast<T*>(storage));
    }
    template <typename... Args>
    void Construct(Args&&... args) noexcept {
      ::new (static_cast<void*>(storage)) T(std::forward<Args>(args)...);
    }
    void MoveOutAndDestroy(T& out) noexcept {
      T* e = element();
      out = std::move(*e);
      e->~T();
    }

    std::atomic<std::uint32_t> turn{0};
    alignas(T) unsigned char storage[sizeof(T)];
  };

  Slot& SlotFor(std::size_t ticket) const noexcept {
    return slots_[ticket & mask_];
  }
  std::uint32_t ProducerTurn(std::size_t ticket) const noexcept {
    return static_cast<std::uint32_t>((ticket >> shift_) << 1);
  }
  std::uint32_t ConsumerTurn(std::size_t ticket) const noexcept {
    return ProducerTurn(ticket) + kTurnStep;
  }
  // Whether it is `turn`'s turn at `ticket`'s slot.
  bool IsTurn(std::size_t ticket, std::uint32_t turn) const noexcept {
    // acquire: pairs with the release in PassTurn() by the thread that passed
    // the slot on, so its work on the slot happens-before ours.
    return SlotFor(ticket).turn.load(std::memory_order_acquire) == turn;
  }
  // A consumer's turn (2L + 1) means the slot holds an element.
  static bool IsFull(std::uint32_t word) noexcept { return (word & 1) != 0; }

  // Waits until `slot`'s turn is `turn`: spins, then parks.
  void AwaitTurn(Slot& slot, std::uint32_t turn) noexcept {
    // acquire (every load here): pairs with the release in PassTurn() by the
    // thread that handed us the turn.
    std::uint32_t word = slot.turn.load(std::memory_order_acquire);
    for (int spins = 0; word != turn && spins < internal::kSpinsBeforePark;
         ++spins) {
      internal::CpuRelax();
      word = slot.turn.load(std::memory_order_acquire);
    }
    if (word == turn) return;
    // The parking half of the handshake (see internal::AsymmetricFence):
    // count ourselves in, barrier, then re-check. relaxed: Heavy() orders the
    // increment before the re-check, and against every thread's PassTurn().
    waiters_.fetch_add(1, std::memory_order_relaxed);
    internal::AsymmetricFence::Heavy(light_fence_compiler_only_);
    word = slot.turn.load(std::memory_order_acquire);
    while (word != turn) {
      // Sleeps only while the word still holds `word`. Every PassTurn() whose
      // store the load above missed sees waiters_ != 0 and notifies.
      slot.turn.wait(word, std::memory_order_acquire);
      word = slot.turn.load(std::memory_order_acquire);
    }
    // relaxed: a late count only makes some PassTurn() notify needlessly.
    waiters_.fetch_sub(1, std::memory_order_relaxed);
  }

  // Hands `slot` to the thread whose turn is `next`, waking parked threads.
  void PassTurn(Slot& slot, std::uint32_t next) noexcept {
    // release: pairs with the acquire loads in AwaitTurn(), try_* and the
    // *_bulk calls, publishing the constructed element (or the freed slot).
    slot.turn.store(next, std::memory_order_release);
    // The passing half of the handshake: a compiler barrier (or a fence
    // where membarrier is unavailable) keeps the load below after the store.
    internal::AsymmetricFence::Light(light_fence_compiler_only_);
    // relaxed: the handshake above makes it see a parking thread's count
    // whenever that thread's re-check could miss our store.
    if (waiters_.load(std::memory_order_relaxed) != 0) [[unlikely]] {
      // seq_cst: orders our store before notify_all()'s own check for
      // sleepers, so a thread that went to sleep on the old word is woken.
      std::atomic_thread_fence(std::memory_order_seq_cst);
      slot.turn.notify_all();  // Waiters of several laps may share a slot.
    }
  }

  // Constant after construction; read by every call, written by none.
  const std::size_t mask_;
  const int shift_;
  const bool light_fence_compiler_only_;  // AsymmetricFence::Light()'s kind.
  Slot* const slots_;

  // Next push ticket.
  alignas(kCacheLineSize) std::atomic<std::size_t> head_{0};
  // Next pop ticket.
  alignas(kCacheLineSize) std::atomic<std::size_t> tail_{0};
  // Threads parked, or about to park, in AwaitTurn(). Read by every
  // PassTurn(), written only around parking.
  alignas(kCacheLineSize) std::atomic<std::uint32_t> waiters_{0};
};

}  // namespace warren

#endif  // WARREN_MPMC_QUEUE_H_
