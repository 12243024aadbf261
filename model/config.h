// Model configuration read from a Hugging Face config.json of the Qwen3-VL-MoE family (the
// official layout with rope_theta + rope_scaling and the newer rope_parameters layout, with
// nested text_config / vision_config). Parsed once, validated, then passed by const reference.
#ifndef Q3VL_MODEL_CONFIG_H_
#define Q3VL_MODEL_CONFIG_H_

#include <array>
#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"

namespace q3vl::model {

struct TextConfig {
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t num_experts = 0;
  int64_t top_k = 0;
  int64_t moe_intermediate_size = 0;
  int64_t intermediate_size = 0;  // dense MLP width (layers in mlp_only_layers)
  int64_t decoder_sparse_step = 1;
  std::vector<int64_t> mlp_only_layers;
  bool norm_topk_prob = true;
  float rms_norm_eps = 1e-6f;
  double rope_theta = 5e6;
  // rope_type "yarn" (rope_scaling / rope_parameters): YaRN's frequency interpolation and
  // attention scaling for contexts beyond the trained length, as Qwen documents for 1M-token
  // video. The fields and defaults of Hugging Face's rope_scaling.
  struct Yarn {
    bool enabled = false;
    double factor = 1.0;
    int64_t original_max_position_embeddings = 0;  // 0: max_position_embeddings
    double beta_fast = 32.0;
    double beta_slow = 1.0;
    double attention_factor = 0.0;  // 0: derived from factor (and mscale, mscale_all_dim)
    double mscale = 0.0;
    double mscale_all_dim = 0.0;
    bool truncate = true;
  } yarn;
  std::array<int64_t, 3> mrope_section = {0, 0, 0};
  bool mrope_interleaved = true;
  int64_t max_position_embeddings = 262144;
  std::vector<int64_t> eos_token_ids;

  // True when layer `layer` uses the MoE block (else the dense SwiGLU MLP).
  bool IsMoeLayer(int64_t layer) const;
};

struct VisionConfig {
  int64_t depth = 0;
  int64_t hidden_size = 0;
  int64_t num_heads = 0;
  int64_t intermediate_size = 0;
  int64_t patch_size = 16;
  int64_t temporal_patch_size = 2;
  int64_t spatial_merge_size = 2;
  int64_t in_channels = 3;
  int64_t num_position_embeddings = 0;
  int64_t out_hidden_size = 0;
  std::vector<int64_t> deepstack_visual_indexes;

  int64_t head_dim() const { return hidden_size / num_heads; }
  // Elements of one flattened patch: in_channels * temporal_patch_size * patch_size^2.
  int64_t patch_dim() const { return in_channels * temporal_patch_size * patch_size * patch_size; }
};

struct ModelConfig {
  TextConfig text;
  VisionConfig vision;
  int64_t image_token_id = 151655;
  int64_t video_token_id = 151656;
  int64_t vision_start_token_id = 151652;
  int64_t vision_end_token_id = 151653;
  bool tie_word_embeddings = false;

  // Parses config.json text; `name` appears in error messages. Calls Validate().
  static absl::StatusOr<ModelConfig> FromJson(absl::string_view json, absl::string_view name);
  static absl::StatusOr<ModelConfig> FromFile(const std::string& path);
  // Checks ranges and divisibility; InvalidArgument says which key is wrong and why.
  absl::Status Validate() const;
};

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_CONFIG_H_
