// The pipeline stage runner: one rank's decoder stage as a step runs it. Hidden states come in
// from the previous stage, this stage's layers run (TextDecoder::Forward), and they go out to
// the next; logits and sampled tokens come from the last stage to every stage. The decoder
// itself never moves data between stages: every pipeline collective is here, through
// parallel/layers.h, over the decoder's pp groups. With one stage it is the decoder alone.
// Collective over pp: every stage makes the same calls in the same order. Stateless; as
// thread-safe as the decoder.
#ifndef Q3VL_MODEL_PIPELINE_STAGE_H_
#define Q3VL_MODEL_PIPELINE_STAGE_H_

#include <vector>

#include "core/backend.h"
#include "model/decoder.h"
#include "model/sampler.h"

namespace q3vl::model {

class PipelineStage {
 public:
  explicit PipelineStage(const TextDecoder& decoder) : decoder_(decoder) {}

  int stage() const;
  int num_stages() const;
  bool first() const { return stage() == 0; }
  bool last() const { return stage() == num_stages() - 1; }

  // batch.hidden <- the previous stage's output (stage > 0; stage 0 brings the embeddings),
  // this stage's layers, then the result to the next stage (stage < last).
  void Forward(Backend& backend, DecoderBatch& batch) const;
  // The last stage's logits [N, V] (host) on every stage.
  Tensor Logits(Backend& backend, const Tensor& hidden, const std::vector<int64_t>& rows,
                const TraceFn* trace = nullptr) const;
  // The last stage's tokens (TextDecoder::SampleRows) on every stage; only the last stage's
  // Rngs advance.
  std::vector<int64_t> SampleRows(Backend& backend, const Tensor& hidden, const std::vector<int64_t>& rows,
                                  const std::vector<const SamplingParams*>& params,
                                  const std::vector<Rng*>& rngs) const;

 private:
  const TextDecoder& decoder_;
};

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_PIPELINE_STAGE_H_
