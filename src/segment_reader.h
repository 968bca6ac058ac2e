// SegmentReader: reads the segments of a write-ahead log and checks their
// records on a thread of its own, ahead of the replay that decodes and
// applies them, so that while a restart's replaying thread rebuilds state,
// another core reads the files and verifies the checksums. (The replay
// allocates the messages itself: the memory a thread frees is reused by its
// own next allocations, which keeps a second Open in one process fast.)
//
//   SegmentReader reader(env, {{1, "wal/000001.wal"}, {2, ...}},
//                        log::Reader::OnCorruption::kStop);
//   while (std::unique_ptr<RecordBatch> batch = reader.Next()) {
//     if (!batch->status.ok()) return batch->status;  // nothing follows
//     for (const RecordBatch::Record& r : batch->records) {
//       Apply(batch->record(r));
//     }
//     reader.Recycle(std::move(batch));
//   }
//
// Batches come out in log order: the records of each segment in file order
// (whole user records, reassembled from their fragments), each segment's
// batches ending with one marked `segment_end`, segments in the order given.
// The first error ends the sequence: a batch whose `status` is not OK,
// holding nothing to apply, after which Next returns null. Errors carry the
// text Wal::Open reports:
//   * an I/O error opening or reading a segment, as the Env returned it;
//   * kDataLoss for damage the log reader reports under kStop, naming the
//     segment and the byte range, and suggesting OnCorruption::kSkip.
//
// Every Env call (opening each segment one ahead of its reading, so the file
// system reads it in meanwhile; its reads; its size once read) is made by the
// reading thread in one fixed order, so a fault injected at a given call
// index hits the same call on every run.
//
// At most kMaxBatches batches are read ahead of the replay, which bounds
// the memory held by batches not yet applied.
//
// Thread-compatible: Next and Recycle are called by one thread, the replay.
// The destructor stops the reading thread and waits for it.

#ifndef WARREN_SRC_SEGMENT_READER_H_
#define WARREN_SRC_SEGMENT_READER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "env.h"
#include "log_reader.h"
#include "sync.h"

namespace warren::internal {

// A run of checked records of one segment, copied out of the file.
struct RecordBatch {
  struct Record {
    uint64_t offset = 0;  // of its first fragment's header in the segment
    size_t begin = 0;     // in `bytes`
    size_t size = 0;
  };

  uint64_t segment = 0;
  std::string bytes;  // the records' payloads, back to back
  std::vector<Record> records;
  // The last batch of its segment: the segment's size, where its log ends
  // (the start of a torn tail, such as the zeroes a segment keeps written
  // ahead of its records; else file_size), and the bytes the log reader
  // skipped as damage (OnCorruption::kSkip).
  bool segment_end = false;
  uint64_t file_size = 0;
  uint64_t log_end = 0;
  uint64_t skipped_bytes = 0;
  // Not OK: the sequence ends here, and the batch holds nothing to apply.
  absl::Status status;

  std::string_view record(const Record& r) const {
    return std::string_view(bytes).substr(r.begin, r.size);
  }
  void Clear() {
    segment = 0;
    bytes.clear();
    records.clear();
    segment_end = false;
    file_size = 0;
    log_end = 0;
    skipped_bytes = 0;
    status = absl::OkStatus();
  }
};

class SegmentReader {
 public:
  // A segment's number and path.
  using Segment = std::pair<uint64_t, std::string>;

  // Starts reading `segments` (in order) at once. `env` must outlive this.
  SegmentReader(Env* env, std::vector<Segment> segments,
                log::Reader::OnCorruption on_corruption);
  ~SegmentReader();

  SegmentReader(const SegmentReader&) = delete;
  SegmentReader& operator=(const SegmentReader&) = delete;

  // The next batch in log order, waiting for it to be read; null once
  // every segment was handed over, or after a batch with an error.
  std::unique_ptr<RecordBatch> Next();

  // Gives an applied batch back, to be refilled.
  void Recycle(std::unique_ptr<RecordBatch> batch);

  // The most batches read and not yet taken by Next.
  static constexpr size_t kMaxBatches = 8;
  // A batch is handed over once its records hold this many bytes.
  static constexpr size_t kBatchBytes = 256 << 10;

 private:
  void Run();
  // Opens segments_[i] into `file`; false after handing over the error.
  bool Open(size_t i, std::unique_ptr<SequentialFile>* file);
  // Reads segments_[i] from `file`; false after handing over an error (or
  // when told to stop).
  bool ReadSegment(size_t i, std::unique_ptr<SequentialFile> file);
  // A batch to fill: a recycled one, or a new one.
  std::unique_ptr<RecordBatch> Fresh() ABSL_LOCKS_EXCLUDED(mu_);
  // Hands `batch` over, waiting while kMaxBatches are waiting already; false
  // when told to stop.
  bool Hand(std::unique_ptr<RecordBatch> batch) ABSL_LOCKS_EXCLUDED(mu_);
  // Hands over an error batch for `segment`: the end of the sequence.
  void HandError(std::unique_ptr<RecordBatch> batch, uint64_t segment,
                 absl::Status status);

  Env* const env_;
  const std::vector<Segment> segments_;
  const log::Reader::OnCorruption on_corruption_;

  Mutex mu_;
  CondVar ready_cv_;  // a batch was handed over, or the sequence ended
  CondVar room_cv_;   // a batch was taken, or stop_ was set
  std::deque<std::unique_ptr<RecordBatch>> ready_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<RecordBatch>> free_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;  // nothing more will be handed over
  bool stop_ ABSL_GUARDED_BY(mu_) = false;  // the replay is gone
  bool replay_waiting_ ABSL_GUARDED_BY(mu_) = false;
  bool thread_waiting_ ABSL_GUARDED_BY(mu_) = false;

  std::thread thread_;  // last: started once the rest is built
};

}  // namespace warren::internal

#endif  // WARREN_SRC_SEGMENT_READER_H_
