// The write-ahead log of a durable broker: segment files in one directory,
// records appended by the broker's threads, written and synced by whichever
// thread needs them durable (group commit), and replayed at open.
//
// Files in the directory:
//
//   LOCK            held (flock) by the broker that has the directory open
//   000001.wal ...  segments, numbered in log order; each a log file in the
//                   format of log_format.h whose records are wal_records.h
//                   batches, the first one a checkpoint of the topology
//
// Appending never does I/O: Append copies the record into a pending buffer
// under the log's mutex (a leaf lock: it may be called with broker, queue or
// consumer locks held) and returns its log sequence number (LSN). A thread
// that needs an LSN written or synced calls Wait, with no broker lock held:
// if nobody is writing it becomes the writer and writes everything pending in
// one go (and syncs once, when anyone waiting needs a sync), so concurrent
// waiters share one write and one fdatasync. Where syncs are short and cores
// spare, the others spin for the sync instead of sleeping, and return as
// soon as it lands without taking the mutex again (Options::spin_for_sync).
// A caller that goes on to wait appends with AppendForWait, which counts it
// as a sync waiter at once: one that joins a group its leader is gathering
// spins for that sync without taking the mutex a second time.
// A background thread writes what nobody waits for, syncs on the interval,
// and compacts.
//
// Space: the log keeps, for each live persistent message (one not yet settled
// by every durable queue it reached), the segment that holds its newest
// record naming all its queues (the segment that record was written to,
// even when it was appended before the previous segment filled). A segment
// whose messages are all settled is deleted once every older segment is
// gone. The oldest segment is compacted (its live messages are written again
// at the end of the log, with their current state, and it is deleted) when
// less than half of it is live, or when the settled bytes of the segments
// before the one being written exceed the live data and a segment's size
// (each segment weighing at least a block). So the log stays within about
// twice the live data plus a segment or two.
//
// Errors: a failed write or sync fails the waiters of the records it
// concerned (and only them); the segment is abandoned and the next write
// starts a new one, so the broker goes on once the disk recovers. The
// records that failed to be written, and (but under kNever) those written
// to the abandoned segment after its last sync, are written again ahead of
// later ones, so that the log catches up with memory in order.
//
// Thread-safe.

#ifndef WARREN_SRC_WAL_H_
#define WARREN_SRC_WAL_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "dense_id_map.h"
#include "env.h"
#include "log_writer.h"
#include "sync.h"
#include "wal_records.h"
#include "warren/clock.h"
#include "warren/mpmc_queue.h"  // kCacheLineSize
#include "warren/options.h"
#include "warren/stats.h"

namespace warren::internal {

struct Envelope;

// What recovery found, for the broker to rebuild.
struct RecoveredState {
  struct ExchangeDecl {
    std::string name;
    ExchangeType type;
    ExchangeOptions options;
  };
  struct QueueDecl {
    uint32_t id;
    std::string name;
    QueueOptions options;
  };
  // A live message: its envelope (as the broker will share it) and the
  // queues that hold it.
  struct LiveMessage {
    std::shared_ptr<const Envelope> envelope;
    absl::InlinedVector<wal::Ref, 1> refs;
  };
  struct DedupEntry {
    uint32_t queue_id;
    std::string message_id;
    absl::Time until;
  };
  std::vector<ExchangeDecl> exchanges;
  std::vector<QueueDecl> queues;
  std::vector<wal::BindingOp> bindings;
  // The live messages in id (publish) order.
  std::vector<LiveMessage> messages;
  std::vector<DedupEntry> dedup;
};

class Wal {
 public:
  struct Options {
    std::string dir;
    SyncPolicy sync = SyncPolicy::kGroupCommit;
    absl::Duration sync_interval = absl::Milliseconds(100);
    uint64_t segment_bytes = uint64_t{64} << 20;
    OnCorruption on_corruption = OnCorruption::kFail;
    Env* env = nullptr;
    Clock* clock = nullptr;
    // Whether a thread waiting for a sync spins (then yields) for a while
    // before it sleeps, so that it returns as soon as the sync lands rather
    // than after a wake-up (see SpinDeadlineLocked). Defaults to
    // SpinningPays() (at least four hardware threads).
    std::optional<bool> spin_for_sync;
  };

  // Locks the directory, replays its log into `*recovered`, and starts a new
  // segment.
  static absl::StatusOr<std::shared_ptr<Wal>> Open(const Options& options,
                                                   RecoveredState* recovered);
  ~Wal();
  Wal(const Wal&) = delete;
  Wal& operator=(const Wal&) = delete;

  SyncPolicy policy() const { return options_.sync; }

  uint64_t NewMessageId();
  uint32_t NewQueueId();
  // The LSN of the last record appended so far (0: none).
  uint64_t LastLsn() ABSL_LOCKS_EXCLUDED(mu_);

  using SteadyClock = std::chrono::steady_clock;
  using SteadyTime = SteadyClock::time_point;

  // Appends `record` (cleared on return); returns its LSN. `own_sync`: the
  // record is synced by a sync of its own (SyncPolicy::kEveryPublish).
  // `will_wait`: the caller goes on to Wait or WhenDurable for it, so the
  // background thread need not be woken to write it.
  uint64_t Append(wal::RecordBuilder& record, bool own_sync = false,
                  bool will_wait = false);

  // What AppendForWait hands the caller, for Wait.
  struct Ticket {
    uint64_t lsn = 0;
    bool sync = false;
    // Append counted the caller among the threads waiting for a sync.
    bool registered = false;
    // ...while a leader was gathering its group (GatherLocked): the record
    // is in that leader's write, so Wait first spins for its sync without
    // taking the mutex, until `spin_until`, a failure (`failures` counts
    // those recorded before) or the end of a write (`writes`).
    bool joined = false;
    uint64_t failures = 0;
    uint64_t writes = 0;
    SteadyTime spin_until;
  };
  // Appends `record` (cleared on return) for a caller that goes on to
  // Wait(ticket) for it, written or (with `sync`) synced. A caller that waits
  // for a sync counts as a sync waiter from here on, so a leader gathering
  // its group does not wait for it to reach Wait, and the caller takes the
  // log's mutex once instead of twice when it joins a gathering group.
  Ticket AppendForWait(wal::RecordBuilder& record, bool own_sync, bool sync);

  // Whether `policy` is one of the four.
  static bool KnownPolicy(SyncPolicy policy) {
    return policy == SyncPolicy::kNever || policy == SyncPolicy::kInterval ||
           policy == SyncPolicy::kGroupCommit ||
           policy == SyncPolicy::kEveryPublish;
  }
  // Whether `policy` confirms only after a sync.
  static bool NeedsSync(SyncPolicy policy) {
    return policy == SyncPolicy::kGroupCommit ||
           policy == SyncPolicy::kEveryPublish;
  }

  // Blocks until record `lsn` is written (or synced, with `sync`), writing
  // it itself when nobody else is. Call with no broker lock held.
  absl::Status Wait(uint64_t lsn, bool sync) {
    Ticket ticket;
    ticket.lsn = lsn;
    ticket.sync = sync;
    return Wait(ticket);
  }
  // The same for a record appended with AppendForWait; call it once.
  absl::Status Wait(const Ticket& ticket);

  // Runs `done` once record `lsn` is written (or synced): on the thread that
  // wrote it, or at once (on this thread) if it already is.
  void WhenDurable(uint64_t lsn, bool sync,
                   absl::AnyInvocable<void(absl::Status) &&> done);

  // The node of a persistent message left durable queue `queue_id` for good
  // (acked, dropped, expired, purged...): logs a settle. Ignored once
  // StopSettling was called.
  void Settled(uint32_t queue_id, uint64_t msg_id);
  // The same for a message that durable queue `queue_id` did not take (a
  // duplicate, or refused), with deduplication id `message_id` and the end
  // of its window in that queue (InfinitePast when the queue does not
  // remember it): the publish's record counted the id as seen.
  void NotTaken(uint32_t queue_id, uint64_t msg_id, std::string_view message_id,
                absl::Time until);
  // Durable queue `queue_id` took a message with deduplication id
  // `message_id` later than its publish's record says (it waited for room):
  // its window ends at `until`. Appended as Settled is; returns the record's
  // LSN, for the publish's confirm to wait for (0: not appended).
  uint64_t TakenLate(uint32_t queue_id, std::string_view message_id,
                     absl::Time until);
  // From now on Settled is ignored: the broker is closing, and what its
  // queues release stays in the log.
  void StopSettling();

  // Writes and syncs what is pending, stops the background thread, closes
  // the segment and releases the directory. Idempotent.
  absl::Status Close();

  WalStats Stats() const;

 private:
  struct Segment {
    uint64_t number = 0;
    uint64_t size = 0;  // bytes written (final once closed)
    uint64_t live = 0;  // live messages whose newest record is here
    uint64_t live_bytes = 0;
    // False until its file is created with its checkpoint; a segment whose
    // start failed stays last in the model, unstarted, with the records
    // counted against it, and the next start retries it.
    bool started = false;
  };
  struct Entry {
    uint64_t segment = 0;
    uint32_t bytes = 0;
    absl::InlinedVector<wal::Ref, 1> refs;
  };
  struct PendingRecord {
    size_t end;  // in pending_
    bool own_sync;
    // The segment its messages are counted against: the last one when it
    // was appended. Writing it into a later one (the segment filled first)
    // moves them there.
    uint64_t segment;
  };
  struct Failure {
    uint64_t first;
    uint64_t last;
    bool sync_only;  // written (confirmed for write waiters), not synced
    absl::Status status;
  };
  struct Callback {
    uint64_t lsn;
    bool sync;
    absl::AnyInvocable<void(absl::Status) &&> done;
  };
  using Done = std::vector<
      std::pair<absl::AnyInvocable<void(absl::Status) &&>, absl::Status>>;

  explicit Wal(const Options& options);
  // Replays the segments; `self` is this log, for the recovered envelopes.
  absl::Status Recover(const std::shared_ptr<Wal>& self,
                       RecoveredState* recovered);
  std::string SegmentPath(uint64_t number) const;

  // Updates the model of live messages and topology for `effects` of a
  // record in segment `segment` (`record` holds their bytes).
  // Append with mu_ held: updates the model and queues the record; returns
  // its LSN.
  uint64_t AppendLocked(const wal::RecordBuilder& record, bool own_sync)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ApplyLocked(absl::Span<const wal::Effect> effects,
                   std::string_view record, uint64_t segment)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Segment* FindSegmentLocked(uint64_t number)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ForgetRefLocked(uint32_t queue_id, uint64_t msg_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Appends a record of settles (and deduplication entries) that nobody
  // waits for, unless settling has stopped.
  // Appends `record` unless StopSettling was called; returns its LSN, or 0.
  uint64_t AppendSettles(wal::RecordBuilder& record) ABSL_LOCKS_EXCLUDED(mu_);
  // Drops the bindings that went with a deleted exchange or queue (`gone`
  // says which), as replay does, so checkpoints do not bring them back.
  void DropBindingsLocked(
      const std::function<bool(const wal::BindingOp&)>& gone)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The checkpoint of a segment whose file holds the records up to LSN
  // `written`: the deduplication windows are those of these records, not of
  // the later ones (written after it, in its segment, or never: a window in
  // the checkpoint without its message would drop the message's retry as a
  // duplicate after a crash).
  void BuildCheckpointLocked(wal::RecordBuilder& out, uint64_t written)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets the model's deduplication window of (queue_id, id) to `until`
  // (InfinitePast: none; with `extend_only`, only when that ends it later),
  // noting the change for BuildCheckpointLocked.
  void SetDedupLocked(uint32_t queue_id, const std::string& id,
                      absl::Time until, bool extend_only = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Checks whether `lsn` is done: the status, or nullopt while pending.
  std::optional<absl::Status> DoneLocked(uint64_t lsn, bool sync) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool WorkLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A message published by a record that was written into a later segment
  // than the one it is counted against.
  struct Recount {
    uint64_t msg_id;
    uint64_t from;
    uint64_t to;
  };
  // Notes a Recount (from `from` to `to`) of each message that `record`
  // publishes.
  static void PublishedIds(std::string_view record, uint64_t from, uint64_t to,
                           std::vector<Recount>& out);
  // Counts each message against the segment that holds its record, unless
  // a newer record of it has been counted since.
  void RecountLocked(const std::vector<Recount>& moves)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Counts a live message against `segment`, with a record of `bytes`,
  // instead of entry.segment.
  void CountAgainstLocked(Entry& entry, uint64_t segment, uint32_t bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Puts the records of a failed write from `records[from]` on back at the
  // front of the pending ones (see retry_records_), ahead of any put back
  // before.
  void RequeueLocked(const std::string& batch,
                     const std::vector<PendingRecord>& records, size_t from)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits (leading writes when nobody else does) until record `target` is
  // synced; its status.
  absl::Status SyncUpToLocked(uint64_t target, Done& done)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The status of a failure that covers any of records first..last.
  std::optional<absl::Status> FailedLocked(uint64_t first, uint64_t last) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // An error when a forgotten failure may cover any of records first..last
  // (sync-only ones too when `sync`).
  std::optional<absl::Status> ForgottenLocked(uint64_t first, uint64_t last,
                                              bool sync) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether the oldest segment should be rewritten (or, with nothing live,
  // deleted): when it is less than half live, or when the settled bytes of
  // the segments before the one being written outweigh the live data (and a
  // segment's worth). The second rule keeps a backlog that fills the oldest
  // segment from holding every later segment on disk for as long as it
  // lasts; it writes again no more live bytes than there are settled bytes
  // to free.
  bool CompactionDueLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool SettledOutweighLiveLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether records were written that a sync of the current segment would
  // make durable.
  bool UnsyncedLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sets synced_lsn_ (and its mirror) to `lsn` when that is later, and
  // drops the sync waiters it covers: their threads may return without
  // taking mu_ again (SpinForSync).
  void SetSyncedLocked(uint64_t lsn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Counts `lsn` among the threads waiting for a sync.
  void AddSyncWaiterLocked(uint64_t lsn) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Until when a thread that starts waiting for a sync now may spin before
  // it sleeps on done_cv_: about two of the last syncs, when those are
  // short enough for a sleeping thread's wake-up to matter and the machine
  // has cores to spare; SteadyTime() (no spinning) otherwise.
  SteadyTime SpinDeadlineLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Without mu_: spins, then yields, until record `lsn` is synced (true),
  // or until a failure is recorded, a write finishes without syncing it,
  // `until` passes or the CPU turns out to be contended (false: the caller
  // looks again under mu_). `failures` and `writes` are the values of
  // failures_recorded_ and writes_done_ when the caller last looked.
  bool SpinForSync(uint64_t lsn, uint64_t failures, uint64_t writes,
                   SteadyTime until) const ABSL_LOCKS_EXCLUDED(mu_);
  // Called by a waiter about to lead a sync: while fewer threads wait for a
  // sync than waited when the last one finished (the rest are likely
  // publishing their next record), waits for them: until the group is
  // complete, no new one arrived in an eighth of the last sync's time, or
  // half that sync's time (1 ms at most) has passed. Where waiters spin for
  // syncs (spin_for_sync_), it spins too, without mu_, rather than sleep
  // until the last one wakes it.
  void GatherLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes everything pending (and syncs when wanted); unlocks meanwhile.
  // Appends the callbacks now due to `done`.
  void LeadLocked(Done& done) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Starts segment `number` with a checkpoint; the log's files hold the
  // records up to LSN `written`. Without `mu_`, as the writer.
  absl::Status StartSegment(uint64_t written);
  void CollectDoneLocked(Done& done) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RecordFailureLocked(Failure f) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static void RunDone(Done& done);
  void BackgroundLoop();
  // Deletes dead segments at the head of the log and compacts a sparse
  // oldest one. As the writer (io_busy_ held), with `mu_` held on entry and
  // exit.
  void CompactLocked(Done& done) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  Env* const env_;
  const bool spin_for_sync_;

  mutable Mutex mu_;
  CondVar done_cv_;    // writes finished, failures recorded
  CondVar bg_cv_;      // work for the background thread
  CondVar gather_cv_;  // a sync waiter arrived while a leader gathers
  bool bg_sleeping_ ABSL_GUARDED_BY(mu_) = false;
  // ...until the next interval sync is due (kInterval, something unsynced).
  bool bg_timed_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool settling_ ABSL_GUARDED_BY(mu_) = true;
  // A compaction failed: not tried again before the next segment.
  bool compact_failed_ ABSL_GUARDED_BY(mu_) = false;
  // Records of an abandoned segment were written and never synced: what
  // they settled may come back after a power loss, so no segment is deleted
  // (until the log is opened again).
  bool segments_held_ ABSL_GUARDED_BY(mu_) = false;

  // Pending records: bytes back to back, LSNs next_lsn_ - n .. next_lsn_-1.
  std::string pending_ ABSL_GUARDED_BY(mu_);
  std::vector<PendingRecord> pending_records_ ABSL_GUARDED_BY(mu_);
  // The first retry_records_ pending records failed to be written once, or
  // were written to a segment abandoned before they were synced (their
  // callers were told so). They are written again, ahead of the
  // rest, with the next records or at Close, so the log catches up with
  // memory once the disk recovers; they are not work on their own, so a
  // failing disk is not retried in a loop.
  size_t retry_records_ ABSL_GUARDED_BY(mu_) = 0;
  // The records written to the current segment since its last sync (not
  // under kNever), kept to be written again should that sync fail: the
  // failed segment's unsynced records may be gone after a power loss, while
  // later records, synced in the next segment, may depend on them (the ack
  // of a dead letter on the move that made it). Bytes back to back, as in
  // pending_; a sync is due once they reach kMaxUnsyncedBytes.
  std::string unsynced_ ABSL_GUARDED_BY(mu_);
  std::vector<PendingRecord> unsynced_records_ ABSL_GUARDED_BY(mu_);
  static constexpr size_t kMaxUnsyncedBytes = 16 << 20;
  uint64_t next_lsn_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t written_lsn_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t synced_lsn_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t sync_wanted_ ABSL_GUARDED_BY(mu_) = 0;
  // The last LSN written to a segment abandoned after a failure: what it
  // wrote after its last sync can never be synced.
  uint64_t abandoned_lsn_ ABSL_GUARDED_BY(mu_) = 0;
  // Group commit: the LSNs of the threads waiting for a sync (in Wait, or
  // between AppendForWait and Wait), all above synced_lsn_ (a sync drops
  // those it covers); how many there were when
  // the last sync finished, and how long it took; whether a leader is
  // waiting for more of them (GatherLocked).
  std::vector<uint64_t> sync_waiters_ ABSL_GUARDED_BY(mu_);
  size_t group_size_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Duration last_sync_took_ ABSL_GUARDED_BY(mu_);
  bool gathering_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time last_sync_ ABSL_GUARDED_BY(mu_);
  // For threads that wait for a sync by spinning, without mu_: a copy of
  // synced_lsn_, and counts of the failures recorded and the writes
  // finished. Stored under mu_; a failure is counted before the LSNs it
  // covers can be synced by a later segment. On a cache line of their own,
  // which only the writer stores to: the spinners poll it, and every append
  // writes the fields around it.
  alignas(kCacheLineSize) std::atomic<uint64_t> synced_hint_{0};
  std::atomic<uint64_t> failures_recorded_{0};
  std::atomic<uint64_t> writes_done_{0};
  // sync_waiters_.size(), for a leader gathering without mu_ (on the next
  // line: each sync waiter's append stores it).
  alignas(kCacheLineSize) std::atomic<size_t> sync_waiter_count_{0};
  // True while a thread writes (the only one touching file_ and writer_).
  alignas(kCacheLineSize) bool io_busy_ ABSL_GUARDED_BY(mu_) = false;
  // The latest kMaxFailures failures; older ones are folded into
  // forgotten_.
  std::deque<Failure> failures_ ABSL_GUARDED_BY(mu_);
  // The records covered by the failures dropped from failures_, as one range
  // each for write failures ([0]) and sync-only ones ([1]), and the latest
  // such failure's status. A record in a range may or may not have failed:
  // only a waiter that has not looked while kMaxFailures failures were
  // recorded can hold one (a failure covers records appended before it), and
  // it is not confirmed.
  struct Forgotten {
    uint64_t first = std::numeric_limits<uint64_t>::max();
    uint64_t last = 0;
    absl::Status status;
  };
  Forgotten forgotten_[2] ABSL_GUARDED_BY(mu_);
  std::vector<Callback> callbacks_ ABSL_GUARDED_BY(mu_);

  // The writer's, touched only with io_busy_ set (or before the log is
  // shared, and in Close).
  std::unique_ptr<WritableFile> file_;
  std::unique_ptr<log::Writer> writer_;
  uint64_t writer_segment_ = 0;  // the number of the segment writer_ writes
  std::unique_ptr<FileLock> lock_;
  // The batch being written.
  std::string batch_;
  std::vector<PendingRecord> batch_records_;

  // The model: segments, live messages, topology, deduplication entries.
  std::deque<Segment> segments_ ABSL_GUARDED_BY(mu_);
  uint64_t next_segment_ ABSL_GUARDED_BY(mu_) = 1;
  DenseIdMap<Entry> live_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> exchanges_ ABSL_GUARDED_BY(mu_);
  struct QueueModel {
    std::string op;
    absl::Duration dedup_window;
  };
  std::map<uint32_t, QueueModel> queues_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> bindings_ ABSL_GUARDED_BY(mu_);
  // Per durable queue: message id -> when its deduplication window ends.
  std::map<uint32_t, absl::flat_hash_map<std::string, absl::Time>> dedup_
      ABSL_GUARDED_BY(mu_);
  // The changes to dedup_ made by records not yet written (in LSN order),
  // with the window each replaced, so a checkpoint can leave them out.
  struct DedupChange {
    uint64_t lsn;
    uint32_t queue_id;
    std::string id;
    absl::Time before;
  };
  std::deque<DedupChange> dedup_changes_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> next_msg_id_{1};
  std::atomic<uint32_t> next_queue_id_{1};

  // Statistics.
  uint64_t records_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t syncs_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t compactions_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t recovered_bytes_ = 0;
  uint64_t skipped_bytes_ = 0;
  uint64_t recovered_messages_ = 0;

  std::thread background_;
};

// The key that identifies a binding in the log's model.
std::string BindingKey(const wal::BindingOp& b);

}  // namespace warren::internal

#endif  // WARREN_SRC_WAL_H_
