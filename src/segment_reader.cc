#include "segment_reader.h"

#include <algorithm>
#include <utility>

#include "str_util.h"

namespace warren::internal {
namespace {

class CountingReporter final : public log::Reader::Reporter {
 public:
  void Corruption(size_t dropped, const absl::Status& /*reason*/,
                  log::Reader::ByteRange /*range*/) override {
    bytes += dropped;
  }
  uint64_t bytes = 0;
};

}  // namespace

SegmentReader::SegmentReader(Env* env, std::vector<Segment> segments,
                             log::Reader::OnCorruption on_corruption)
    : env_(env),
      segments_(std::move(segments)),
      on_corruption_(on_corruption),
      thread_([this] { Run(); }) {}

SegmentReader::~SegmentReader() {
  {
    MutexLock l(&mu_);
    stop_ = true;
  }
  room_cv_.SignalAll();
  thread_.join();
}

std::unique_ptr<RecordBatch> SegmentReader::Next() {
  std::unique_ptr<RecordBatch> batch;
  bool wake = false;
  {
    MutexLock l(&mu_);
    while (ready_.empty() && !done_) {
      replay_waiting_ = true;
      ready_cv_.Wait(&mu_);
      replay_waiting_ = false;
    }
    if (ready_.empty()) return nullptr;
    batch = std::move(ready_.front());
    ready_.pop_front();
    wake = thread_waiting_;
  }
  if (wake) room_cv_.Signal();
  return batch;
}

void SegmentReader::Recycle(std::unique_ptr<RecordBatch> batch) {
  batch->Clear();
  MutexLock l(&mu_);
  free_.push_back(std::move(batch));
}

std::unique_ptr<RecordBatch> SegmentReader::Fresh() {
  {
    MutexLock l(&mu_);
    if (!free_.empty()) {
      std::unique_ptr<RecordBatch> batch = std::move(free_.back());
      free_.pop_back();
      return batch;
    }
  }
  return std::make_unique<RecordBatch>();
}

bool SegmentReader::Hand(std::unique_ptr<RecordBatch> batch) {
  bool wake = false;
  {
    MutexLock l(&mu_);
    while (ready_.size() >= kMaxBatches && !stop_) {
      thread_waiting_ = true;
      room_cv_.Wait(&mu_);
      thread_waiting_ = false;
    }
    if (stop_) return false;
    ready_.push_back(std::move(batch));
    wake = replay_waiting_;
  }
  if (wake) ready_cv_.Signal();
  return true;
}

void SegmentReader::HandError(std::unique_ptr<RecordBatch> batch,
                              uint64_t segment, absl::Status status) {
  batch->Clear();
  batch->segment = segment;
  batch->status = std::move(status);
  Hand(std::move(batch));
}

bool SegmentReader::Open(size_t i, std::unique_ptr<SequentialFile>* file) {
  auto opened = env_->NewSequentialFile(segments_[i].second);
  if (!opened.ok()) {
    HandError(Fresh(), segments_[i].first, opened.status());
    return false;
  }
  *file = std::move(*opened);
  return true;
}

void SegmentReader::Run() {
  std::unique_ptr<SequentialFile> next;
  bool ok = segments_.empty() || Open(0, &next);
  for (size_t i = 0; ok && i < segments_.size(); ++i) {
    std::unique_ptr<SequentialFile> file = std::move(next);
    // The next segment is opened first: the file system reads it in while
    // this one is read and checked.
    ok = (i + 1 == segments_.size() || Open(i + 1, &next)) &&
         ReadSegment(i, std::move(file));
  }
  bool wake = false;
  {
    MutexLock l(&mu_);
    done_ = true;
    wake = replay_waiting_;
  }
  if (wake) ready_cv_.Signal();
}

bool SegmentReader::ReadSegment(size_t i,
                                std::unique_ptr<SequentialFile> file) {
  const auto& [number, path] = segments_[i];
  CountingReporter reporter;
  log::Reader reader(file.get(), &reporter, /*checksum=*/true,
                     /*initial_offset=*/0, on_corruption_);
  std::string scratch;
  std::string_view record;
  std::unique_ptr<RecordBatch> batch = Fresh();
  batch->segment = number;
  while (reader.ReadRecord(&record, &scratch)) {
    batch->records.push_back(
        {reader.LastRecordOffset(), batch->bytes.size(), record.size()});
    batch->bytes.append(record);
    if (batch->bytes.size() >= kBatchBytes) {
      if (!Hand(std::move(batch))) return false;
      batch = Fresh();
      batch->segment = number;
    }
  }
  const absl::Status& status = reader.status();
  if (!status.ok()) {
    if (absl::IsDataLoss(status)) {
      HandError(
          std::move(batch), number,
          absl::DataLossError(StrCat(
              "the WAL is damaged: ", path, ": ", std::string(status.message()),
              " (open with OnCorruption::kSkip to skip the damage)")));
    } else {
      HandError(std::move(batch), number, status);
    }
    return false;
  }
  auto size = env_->GetFileSize(path);
  if (!size.ok()) {
    HandError(std::move(batch), number, size.status());
    return false;
  }
  batch->segment_end = true;
  batch->file_size = *size;
  const log::Reader::ByteRange tail = reader.torn_tail();
  batch->log_end = tail.empty() ? *size : std::min(*size, tail.begin);
  batch->skipped_bytes = reporter.bytes;
  return Hand(std::move(batch));
}

}  // namespace warren::internal
