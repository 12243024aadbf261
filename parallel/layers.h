// The collectives of the model's parallel layers, named by what they mean: row-parallel sums,
// vocab-parallel gathers, pipeline stage send/receive and broadcasts. The only places where
// model code meets its groups (the MoE all-to-all lives in moe/ep_dispatcher.h). Each is a no-op for a missing or size-1 group. A failed
// collective means a lost peer: the rank aborts and the launcher ends the job. Stateless.
#ifndef Q3VL_PARALLEL_LAYERS_H_
#define Q3VL_PARALLEL_LAYERS_H_

#include <string>
#include <vector>

#include "core/backend.h"
#include "parallel/communicator.h"

namespace q3vl::parallel {

// Row-parallel output Y = Σ_r X_r W_rᵀ: this rank's partial sum, summed over `group` in place.
void SumPartials(Communicator* group, Tensor& partial);

// Pipeline: `hidden` <- the previous stage's output (stage > 0).
void ReceiveFromPreviousStage(Communicator* pp, Tensor& hidden);
// Pipeline: this stage's output -> the next stage (all but the last stage).
void SendToNextStage(Communicator* pp, const Tensor& hidden);
// The last stage's `data` on every stage (same shape everywhere).
void BroadcastFromLastStage(Communicator* pp, Tensor& data);

// The largest `value` over `group` (host control plane): data-parallel attention groups agree
// on whether any of them still has a step to run.
int64_t MaxOverGroup(Communicator* group, int64_t value);
// `data` (host tensor, same shape everywhere) and `bytes` of rank `root` to every rank of `group`.
void BroadcastFrom(Communicator* group, int root, Tensor& data);
void BroadcastFrom(Communicator* group, int root, std::string& bytes);

// Pipeline messages of any length (a count, then the values) between stages `from` -> `to`
// of pp, in order; Send returns once the small count is on its way.
void SendValues(Communicator* pp, int to, const std::vector<int64_t>& values);
std::vector<int64_t> ReceiveValues(Communicator* pp, int from);

// Point to point at `root`: every other rank sends its `mine` tensors in order, and root
// receives rank p's into dest[p] (shapes agreed in advance; empty tensors are not sent).
// Root's own entry of `dest` is left alone.
void GatherAtRoot(Communicator& group, int root, const std::vector<Tensor>& mine,
                  const std::vector<std::vector<Tensor>>& dest);

// Every rank's `mine` (one shape on all ranks), stacked in rank order: [size, ...mine].
Tensor GatherFromAll(Communicator* group, const Tensor& mine);

// Vocab-parallel rows: rank r holds columns [r chunk, (r + 1) chunk) of [N, vocab] as
// local [N, chunk] (columns past vocab are padding); every rank gets the whole [N, vocab] as a
// host tensor.
Tensor GatherVocab(Backend& backend, Communicator* tp, const Tensor& local, int64_t vocab);

}  // namespace q3vl::parallel

#endif  // Q3VL_PARALLEL_LAYERS_H_
