// A request's visual features in prompt order: the vision tower's merged rows and DeepStack
// features of its images and videos, interleaved as their placeholder tokens appear in the
// prompt, so that visual token j (counting image and video pads together) is row j. Both the
// engine's runner and the Generator place prefill rows from these tables. Also the request
// checks shared by both (ids, lengths, placeholder counts against the grids).
#ifndef Q3VL_MODEL_VISUAL_FEATURES_H_
#define Q3VL_MODEL_VISUAL_FEATURES_H_

#include <vector>

#include "absl/status/status.h"
#include "core/backend.h"
#include "model/encoder_cache.h"
#include "model/qwen3_vl.h"
#include "model/sampler.h"
#include "model/trace.h"
#include "model/vision.h"

namespace q3vl::model {

struct VisualFeatures {
  Tensor embeds;                  // [Nv, D] in the backend's memory
  std::vector<Tensor> deepstack;  // per DeepStack layer: [Nv, D]
};

// Runs the tower (or receives its features, see Qwen3VL::RunVision) for `images` and `videos`
// and interleaves the rows in the order of the visual tokens in `input_ids`. Without a cache,
// one tower pass per kind over all its items. With `cache`, units (images and video frame
// groups, see encoder_cache.h) found there by content are not encoded, a unit repeated within
// the request is encoded once, and the new units are kept; the tower runs once per kind over
// the missing units, if any.
// REQUIRES: the placeholder counts match the grids (CheckPrompt).
// `digests`: the request's DigestMedia, when known (else the cache hashes the pixels).
VisualFeatures EncodeVisualFeatures(const Qwen3VL& model, const std::vector<int64_t>& input_ids,
                                    const VisionInput& images, const VisionInput& videos,
                                    const TraceFn* trace = nullptr, EncoderCache* cache = nullptr,
                                    const MediaDigests* digests = nullptr);

// Vision ranks: serves (Qwen3VL::ServeVision) exactly the tower passes EncodeVisualFeatures
// makes on stage 0 when both hold caches of the same capacity fed the same calls (or none).
// A vision rank's cache keeps keys only.
void ServeVisualFeatures(const Qwen3VL& model, const VisionInput& images, const VisionInput& videos,
                         EncoderCache* cache = nullptr);

// Stacks [n_i, D] tensors into one [sum n_i, D] tensor.
Tensor ConcatRows(Backend& backend, const std::vector<Tensor>& parts);

// InvalidArgument for a bad prompt: empty, ids outside the vocabulary, prompt + max_new_tokens
// over the context, invalid sampling, placeholder counts that disagree with the grids.
absl::Status CheckPrompt(const ModelConfig& config, const std::vector<int64_t>& input_ids,
                         const VisionInput& images, const VisionInput& videos, const SamplingParams& sampling);

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_VISUAL_FEATURES_H_
