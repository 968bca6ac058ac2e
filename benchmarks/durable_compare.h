// -----------------------------------------------------------------------------
// File: benchmarks/durable_compare.h
// -----------------------------------------------------------------------------
//
// The durable rows of warren_peer_compare (issue 5, item 9): D1-D4. They
// measure warren with a write-ahead log against the physical limit of the
// disk and against durable peers, in one run and with the same bytes:
//
//   D1  durable publish throughput per sync policy (kNever, kInterval,
//       kGroupCommit with 1 and 8 publishers and with PublishAsync, 256 in
//       flight, kEveryPublish) against a plain loop of write() + fdatasync()
//       of the same bytes in the same batch sizes (warren's observed bytes
//       and messages per sync);
//   D2  against SQLite (a queue table, journal_mode=WAL, synchronous=FULL),
//       one row per commit and batched;
//   D3  against RabbitMQ (durable queue, persistent messages, publisher
//       confirms: wait for each, and a window of 256);
//   D4  recovery: Broker::Open on a log of about 256 MiB, GB/s of log, in
//       the runner's process and in a fresh one (what a restart costs).
//
// The runner (peer_compare.cc) owns the report; this file only measures and
// hands back rows through a DurableHarness, which wraps the runner's own
// Progress / AddRow / Note / RunInterleaved helpers. See benchmarks/README.md
// for what each row does.
//
// Example (what peer_compare.cc does):
//
//   warren_bench::DurableHarness h;
//   h.progress = Progress;
//   h.add_row = [](warren_bench::DurableRow r) { AddRow(...); };
//   ...
//   warren_bench::RunDurableRows(h, [](std::string_view id) { ... });

#ifndef WARREN_BENCHMARKS_DURABLE_COMPARE_H_
#define WARREN_BENCHMARKS_DURABLE_COMPARE_H_

#include <array>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace warren_bench {

// The ids of the durable rows, in run order (each selectable by --only=).
inline constexpr std::array<std::string_view, 4> kDurableRowIds = {"D1", "D2",
                                                                   "D3", "D4"};

// One table row of the runner's report (its rows are of this type too).
struct DurableRow {
  std::string id;
  std::string workload;
  std::string ours;
  std::string peer;
  std::string peer_value;
  std::string ratio;
  std::string goal;
  std::string met;
};

// One contender of an interleaved measurement: `run` performs one repetition
// and returns its value (higher is better); the harness appends it to
// `samples`.
struct DurableContender {
  std::string name;
  std::function<double()> run;
  std::vector<double> samples;
};

using DurableFormat = std::function<std::string(double)>;

// What the durable rows borrow from the runner. Every function must be set.
struct DurableHarness {
  bool quick = false;    // small sizes
  int reps = 5;          // repetitions per measurement
  bool rabbitmq = true;  // start the private RabbitMQ server
  // Where the log, SQLite and raw files go (a private subdirectory is made
  // there and removed afterwards); "" is a directory beside the executable,
  // inside the build directory.
  std::string dir;

  std::function<void(const std::string&)> progress;
  std::function<void(DurableRow)> add_row;
  std::function<void(std::string)> note;
  std::function<void(std::string)> bug;
  // Runs the contenders interleaved, `reps` rounds, filling their samples,
  // and records every repetition for the report's appendix.
  std::function<void(const std::string& label,
                     const std::vector<DurableContender*>& contenders,
                     const DurableFormat& show)>
      run_interleaved;
  std::function<double(std::vector<double>)> median;
  DurableFormat rate;   // 1234.5 -> "1.2 k/s"
  DurableFormat times;  // 12.34 -> "12.3×"
  std::function<std::string(bool)> met;
};

// Runs the durable rows for which `runs(id)` is true (nothing when none is).
void RunDurableRows(const DurableHarness& h,
                    const std::function<bool(std::string_view)>& runs);

// D4's measurements in a fresh process: the runner starts itself again with
// `kChildFlag` followed by "open:DIR" (time Broker::Open on the log in DIR)
// or "fill:COUNT" (time allocating and filling COUNT heap strings of the
// recovery body size), and this prints "seconds bytes messages" on stdout.
// Returns the process's exit status.
inline constexpr std::string_view kChildFlag = "--d4-child=";
int RunChild(std::string_view what);

}  // namespace warren_bench

#endif  // WARREN_BENCHMARKS_DURABLE_COMPARE_H_
