#include "model/pipeline_stage.h"

#include "parallel/layers.h"

namespace q3vl::model {

int PipelineStage::stage() const { return decoder_.shard().pp ? decoder_.shard().pp->rank() : 0; }
int PipelineStage::num_stages() const { return decoder_.shard().pp ? decoder_.shard().pp->size() : 1; }

void PipelineStage::Forward(Backend& backend, DecoderBatch& batch) const {
  parallel::ReceiveFromPreviousStage(decoder_.shard().pp, batch.hidden);
  decoder_.Forward(backend, batch);
  parallel::SendToNextStage(decoder_.shard().pp, batch.hidden);
}

Tensor PipelineStage::Logits(Backend& backend, const Tensor& hidden, const std::vector<int64_t>& rows,
                             const TraceFn* trace) const {
  Tensor logits = last() ? decoder_.Logits(backend, hidden, rows, trace)
                         : Tensor::Empty(DType::kF32, {static_cast<int64_t>(rows.size()), decoder_.vocab_size()});
  parallel::BroadcastFromLastStage(decoder_.shard().pp_host, logits);  // a host tensor
  return logits;
}

std::vector<int64_t> PipelineStage::SampleRows(Backend& backend, const Tensor& hidden,
                                               const std::vector<int64_t>& rows,
                                               const std::vector<const SamplingParams*>& params,
                                               const std::vector<Rng*>& rngs) const {
  const int64_t n = static_cast<int64_t>(rows.size());
  std::vector<int64_t> tokens = last() ? decoder_.SampleRows(backend, hidden, rows, params, rngs)
                                       : std::vector<int64_t>(n, 0);
  if (num_stages() > 1) {
    Tensor t = Tensor::FromVectorI64(tokens, {n});
    parallel::BroadcastFromLastStage(decoder_.shard().pp_host, t);
    tokens.assign(t.data<int64_t>(), t.data<int64_t>() + n);
  }
  return tokens;
}

}  // namespace q3vl::model
