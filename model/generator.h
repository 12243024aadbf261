// Generation over a batch of requests: validates each request, computes M-RoPE positions,
// runs the vision tower, places visual embeddings and DeepStack rows, prefills all sequences
// in one packed batch, then decodes them together (one token per sequence per step) over the
// paged KV cache, sampling each with its own seeded Rng. One Generate call at a time.
// Under data-parallel attention (a stage of S ranks with tp T < S) each of the S / T attention
// groups runs its own share of the requests (balanced by tokens) and keeps only their KV
// cache; a group with nothing left steps with zero tokens, because the MoE exchanges need every
// rank of the stage. The results are shared at the end, so every decoder rank returns all of
// them.
#ifndef Q3VL_MODEL_GENERATOR_H_
#define Q3VL_MODEL_GENERATOR_H_

#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/qwen3_vl.h"
#include "model/rope.h"
#include "model/sampler.h"
#include "model/trace.h"
#include "model/vision.h"

namespace q3vl::model {

struct GenerationRequest {
  std::vector<int64_t> input_ids;  // expanded prompt (placeholders already repeated)
  VisionInput images;              // all images of the prompt, in order (may be empty)
  VisionInput videos;              // all videos of the prompt, in order (may be empty)
  SamplingParams sampling;
};

struct GenerationResult {
  std::vector<int64_t> tokens;   // generated ids (a stop token, when hit, is the last one)
  std::string finish_reason;     // "stop" or "length"
  RopeIndex rope;                // prompt positions and rope_delta
  Tensor prefill_logits;         // [S, V] when GeneratorOptions::keep_prefill_logits
};

struct GeneratorOptions {
  int64_t page_size = 16;
  int64_t kv_pages = 0;              // 0: exactly what the batch needs
  bool keep_prefill_logits = false;  // logits at every prompt position
  const TraceFn* trace = nullptr;    // vision and decoder trace points (prefill only)
  // Called with (request index, token) as each token is sampled (under data-parallel attention:
  // tokens of requests another attention group ran, when the batch ends).
  std::function<void(size_t, int64_t)> on_token;
  // Decode micro-batches in flight through a pipeline (pp > 1; at most pp are used). 1: each
  // step walks every stage with the whole batch. More keeps the stages busy on different
  // micro-batches, which pays when a step's cost grows with its rows (long contexts, large
  // batches, stages on their own devices); a weight-bound step re-reads the weights once per
  // micro-batch instead (see benchmarks/README.md, mesh_bench).
  int micro_batches = 1;
  // Called once on every decoder rank when the prefill's first tokens have been sampled.
  std::function<void()> on_prefill;
};

// What the last Generate call did on this rank.
struct GeneratorStats {
  int64_t sequences = 0;     // requests this rank's attention group ran
  int64_t kv_pages = 0;      // pages of its KV cache
  int64_t decode_steps = 0;  // forward steps after the prefill (every rank of a stage: the same)
};

class Generator {
 public:
  Generator(const Qwen3VL& model, GeneratorOptions options) : model_(model), options_(std::move(options)) {}

  // InvalidArgument for a bad request (nothing is run); ResourceExhausted if the KV cache
  // cannot hold the batch.
  absl::StatusOr<std::vector<GenerationResult>> Generate(const std::vector<GenerationRequest>& requests);
  const GeneratorStats& stats() const { return stats_; }

 private:
  absl::Status Check(const GenerationRequest& request) const;
  void ShareResults(const std::vector<GenerationRequest>& requests, const std::vector<int>& owner,
                    std::vector<GenerationResult>& results) const;

  const Qwen3VL& model_;
  GeneratorOptions options_;
  GeneratorStats stats_;
};

// Vision ranks of a mesh: the tower for every image and video of `requests`, in the order in
// which Generator::Generate on the decoder ranks asks for them (per request: images, then
// videos). REQUIRES: model.is_vision_rank().
void ServeVisionFor(const Qwen3VL& model, const std::vector<GenerationRequest>& requests);

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_GENERATOR_H_
