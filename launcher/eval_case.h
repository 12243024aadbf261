// Golden reference cases (../shared/golden/cases/*): reading a case directory into a
// GenerationRequest and running it, as `q3vl eval-case` and the golden tests do.
#ifndef Q3VL_LAUNCHER_EVAL_CASE_H_
#define Q3VL_LAUNCHER_EVAL_CASE_H_

#include <string>

#include "absl/status/statusor.h"
#include "cluster/engine/engine.h"
#include "model/generator.h"

namespace q3vl::launcher {

struct GoldenCase {
  std::string dir;
  model::GenerationRequest request;  // greedy, num_generated tokens, no stop tokens
  int64_t num_generated = 0;
};

// Reads CASE_DIR/case.json and CASE_DIR/inputs/*.npy.
absl::StatusOr<GoldenCase> ReadGoldenCase(const std::string& case_dir);

struct EvalCaseOutput {
  model::GenerationResult result;  // prefill_logits [S, V], tokens, rope
  double seconds = 0.0;
};

// --from-raw: replaces the shipped pixel values by the project's own preprocessing of the raw
// images and frames in CASE_DIR/inputs (image_N.npy, videos.json + video_N_frames.npy), with the
// processor configs in CASE_DIR/model. Internal error if the grids differ from the shipped ones.
absl::Status ReplaceWithRawPixels(GoldenCase& golden);

// Runs a case through `engine` (submitted, stepped to the end on this thread) with every
// prompt logit kept: the engine's chunked prefill and step plans, as eval-case runs it.
absl::StatusOr<EvalCaseOutput> RunGoldenCaseOnEngine(cluster::Engine& engine, const model::ModelConfig& config,
                                                     const GoldenCase& golden);

// Runs a case on a single-rank `model` through an engine of its own (the whole prompt in one
// prefill step), every prompt logit kept and the prefill's intermediates reported to `trace`
// (optional): the golden tests localise errors with it.
absl::StatusOr<EvalCaseOutput> RunGoldenCase(const model::Qwen3VL& model, const GoldenCase& golden,
                                             const model::TraceFn* trace = nullptr);

// The same with the whole-batch Generator, which runs in lockstep on every rank of a mesh
// (vision ranks included) without a replica executor: the in-process mesh golden tests use it.
absl::StatusOr<EvalCaseOutput> RunGoldenCaseWithGenerator(const model::Qwen3VL& model, const GoldenCase& golden);

// Writes logits.npy, position_ids.npy, greedy_tokens.npy and result.json into `out_dir`.
absl::Status WriteEvalCaseOutputs(const std::string& out_dir, const EvalCaseOutput& output,
                                  int64_t seq_len);

}  // namespace q3vl::launcher

#endif  // Q3VL_LAUNCHER_EVAL_CASE_H_
