// Writes random-weight Qwen3-VL-MoE checkpoints in the Hugging Face layout (config.json,
// model.safetensors or shards + index, processor configs), from any config. The tensor list
// comes from the model's own weight declarations, so it cannot drift from what Load expects.
#ifndef Q3VL_MODEL_DEMO_MODEL_H_
#define Q3VL_MODEL_DEMO_MODEL_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/config.h"

namespace q3vl::model {

// The default demo: a few layers at small width with the real vocabulary, special token ids
// and vision patch geometry, so real prompts and images fit it.
ModelConfig DemoConfig();

// The released shapes (../shared/golden/SPEC.md, section 0): "235b" is Qwen3-VL-235B-A22B,
// "30b" Qwen3-VL-30B-A3B. For benchmarks and the performance model, which need the real widths
// without a checkpoint. InvalidArgument for another name.
absl::StatusOr<ModelConfig> PublishedConfig(absl::string_view name);

struct MakeModelOptions {
  std::string dir;
  uint64_t seed = 0;
  int num_shards = 1;
  bool per_expert_layout = false;  // experts.N.{gate,up,down}_proj.weight instead of fused
};

// config.json as a Hugging Face checkpoint stores it.
std::string ConfigToJson(const ModelConfig& config);
absl::Status WriteRandomCheckpoint(const ModelConfig& config, const MakeModelOptions& options);

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_DEMO_MODEL_H_
