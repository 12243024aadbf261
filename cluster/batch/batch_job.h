// A batch job over the replicas of a run: the job leader (replica 0's leader) prepares the
// input lines (parse, template, media) on a thread of its own, feeds its own engine and sends
// work to the other replicas' leaders as they ask for it (one queue: a replica that finishes
// early takes more), and writes every result line as it arrives. Each replica leader keeps up
// to max_concurrency requests in its engine, which batches them continuously.
// Threads: each function runs on the thread that drives its engine (Engine::Step), which also
// uses the mailbox; the leader adds one preparing thread. A stop request (a signal) ends the
// intake; requests in flight get drain_timeout to finish and are then abandoned (no result
// line: a rerun runs them).
#ifndef Q3VL_CLUSTER_BATCH_BATCH_JOB_H_
#define Q3VL_CLUSTER_BATCH_BATCH_JOB_H_

#include <atomic>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cluster/api/openai.h"
#include "cluster/batch/batch_io.h"
#include "cluster/engine/engine.h"
#include "parallel/mailbox.h"

namespace q3vl::cluster::batch {

struct BatchJobOptions {
  std::string model_name;                 // "model" in the response bodies
  std::vector<std::string> served_names;  // a body naming another model fails (empty: any)
  api::PrepareOptions prepare;            // processor, media directories, limits (job leader)
  int max_concurrency = 64;               // requests in flight per replica
  absl::Duration drain_timeout = absl::Seconds(30);
};

struct BatchProgress {
  int64_t total = 0;      // lines this run takes on (those already done excluded)
  int64_t succeeded = 0;
  int64_t failed = 0;
  int64_t abandoned = 0;  // in flight when the job was stopped: no result written
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  double seconds = 0.0;
  bool stopped = false;   // ended early by a stop request
  std::vector<int64_t> per_replica;  // requests each replica finished (those that failed before the engine: none)
  int64_t finished() const { return succeeded + failed; }
};
using ProgressFn = std::function<void(const BatchProgress&)>;

// The job leader. `todo`: the input lines without a result yet. `mailbox` (null for one
// replica): rank 0 is this leader, rank r the leader of replica r. `progress` is called after
// every result and at least every second. Errors: the output cannot be written, or a replica
// was lost.
absl::StatusOr<BatchProgress> RunBatchLeader(Engine& engine, const model::Tokenizer& tokenizer,
                                             std::vector<InputLine> todo, ResultWriter& writer,
                                             parallel::Mailbox* mailbox, const BatchJobOptions& options,
                                             const std::atomic<bool>& stop, const ProgressFn& progress);

// The leader of another replica: runs what the job leader sends until it says finish.
absl::Status RunBatchReplica(Engine& engine, const model::Tokenizer& tokenizer, parallel::Mailbox& mailbox,
                             const BatchJobOptions& options, const std::atomic<bool>& stop);

}  // namespace q3vl::cluster::batch

#endif  // Q3VL_CLUSTER_BATCH_BATCH_JOB_H_
