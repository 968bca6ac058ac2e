// Annotated locking primitives over the standard library.
//
// warren synchronises with std::mutex and std::condition_variable so that
// ThreadSanitizer sees every acquire and release, and wraps them here so that
// clang's -Wthread-safety checks the locking policy (the approach of leveldb's
// port/port_stdcxx.h). Debian's Abseil is not TSan-instrumented, so
// absl::Mutex, absl::CondVar and absl::Notification are not used anywhere.

#ifndef WARREN_SRC_SYNC_H_
#define WARREN_SRC_SYNC_H_

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <shared_mutex>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "warren/mpmc_queue.h"  // internal::CpuRelax

namespace warren::internal {

// Whether a thread about to block should spin briefly first: only on a
// machine with at least four hardware threads, where a spinning thread
// rarely takes the CPU from the one it waits for. Mutex and the log's sync
// waiters both follow it.
inline bool SpinningPays() {
  static const bool pays = std::thread::hardware_concurrency() >= 4;
  return pays;
}

// A mutual-exclusion lock checked by -Wthread-safety. Thread-safe.
//
// Where spinning pays (SpinningPays), Lock spins briefly
// (trying again after 1, 2, 4 ... 32 pauses, 256 pauses in all) before it
// blocks, as glibc's adaptive mutexes do: warren's critical
// sections are short, and when several threads arrive at once (publishers
// whose group commit just landed, say) each would otherwise sleep in the
// kernel and wait to be woken, one after another.
class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    if (mu_.try_lock()) return;
    if (SpinningPays()) {
      int pauses = 1;
      for (int spent = 0; spent < kMaxSpinPauses; spent += pauses) {
        for (int i = 0; i < pauses; ++i) CpuRelax();
        if (mu_.try_lock()) return;
        pauses = std::min(2 * pauses, 32);
      }
    }
    mu_.lock();
  }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  bool TryLock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) {
    return mu_.try_lock();
  }
  void AssertHeld() ABSL_ASSERT_EXCLUSIVE_LOCK() {}

 private:
  friend class CondVar;
  static constexpr int kMaxSpinPauses = 256;
  std::mutex mu_;
};

// Scoped exclusive lock on a Mutex.
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) {
    mu_->Lock();
  }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

// A reader-writer lock checked by -Wthread-safety. Thread-safe.
class ABSL_LOCKABLE SharedMutex {
 public:
  SharedMutex() = default;
  SharedMutex(const SharedMutex&) = delete;
  SharedMutex& operator=(const SharedMutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  void ReaderLock() ABSL_SHARED_LOCK_FUNCTION() { mu_.lock_shared(); }
  void ReaderUnlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock_shared(); }
  // Tells the analysis that a shared lock is held (for lambdas called under
  // it, which the analysis does not see into).
  void AssertReaderHeld() const ABSL_ASSERT_SHARED_LOCK() {}

 private:
  std::shared_mutex mu_;
};

// Scoped exclusive lock on a SharedMutex.
class ABSL_SCOPED_LOCKABLE WriterLock {
 public:
  explicit WriterLock(SharedMutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu)
      : mu_(mu) {
    mu_->Lock();
  }
  ~WriterLock() ABSL_UNLOCK_FUNCTION() {
    if (mu_ != nullptr) mu_->Unlock();
  }
  WriterLock(const WriterLock&) = delete;
  WriterLock& operator=(const WriterLock&) = delete;

  // Unlocks before the end of the scope.
  void Release() ABSL_UNLOCK_FUNCTION() {
    mu_->Unlock();
    mu_ = nullptr;
  }

 private:
  SharedMutex* mu_;
};

// Scoped shared lock on a SharedMutex.
class ABSL_SCOPED_LOCKABLE ReaderLock {
 public:
  explicit ReaderLock(SharedMutex* mu) ABSL_SHARED_LOCK_FUNCTION(mu) : mu_(mu) {
    mu_->ReaderLock();
  }
  ~ReaderLock() ABSL_UNLOCK_FUNCTION() {
    if (mu_ != nullptr) mu_->ReaderUnlock();
  }
  ReaderLock(const ReaderLock&) = delete;
  ReaderLock& operator=(const ReaderLock&) = delete;

  // Unlocks before the end of the scope.
  void Release() ABSL_UNLOCK_FUNCTION() {
    mu_->ReaderUnlock();
    mu_ = nullptr;
  }

 private:
  SharedMutex* mu_;
};

// A condition variable bound to warren's Mutex. Thread-safe.
class CondVar {
 public:
  CondVar() = default;
  CondVar(const CondVar&) = delete;
  CondVar& operator=(const CondVar&) = delete;

  // Blocks until notified (or spuriously woken). `mu` must be held.
  void Wait(Mutex* mu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    cv_.wait(lock);
    lock.release();
  }

  // Blocks until notified, spuriously woken, or `deadline` (a real-time
  // instant) passes. Returns true when the deadline has passed. `mu` must be
  // held.
  bool WaitWithDeadline(Mutex* mu, absl::Time deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (deadline == absl::InfiniteFuture()) {
      Wait(mu);
      return false;
    }
    std::unique_lock<std::mutex> lock(mu->mu_, std::adopt_lock);
    const auto until = std::chrono::system_clock::now() +
                       absl::ToChronoNanoseconds(deadline - absl::Now());
    const bool timed_out =
        cv_.wait_until(lock, until) == std::cv_status::timeout;
    lock.release();
    return timed_out;
  }

  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace warren::internal

#endif  // WARREN_SRC_SYNC_H_
