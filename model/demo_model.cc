#include "model/demo_model.h"

#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/cpu/cpu_backend.h"
#include "core/status_macros.h"
#include "model/decoder.h"
#include "model/vision.h"
#include "nlohmann/json.hpp"

namespace q3vl::model {

ModelConfig DemoConfig() {
  ModelConfig c;
  TextConfig& t = c.text;
  t.hidden_size = 256;
  t.num_layers = 4;
  t.num_heads = 8;
  t.num_kv_heads = 2;
  t.head_dim = 32;
  t.vocab_size = 151936;
  t.num_experts = 16;
  t.top_k = 4;
  t.moe_intermediate_size = 128;
  t.intermediate_size = 512;
  t.mrope_section = {6, 5, 5};
  t.eos_token_ids = {151645};
  VisionConfig& v = c.vision;
  v.depth = 4;
  v.hidden_size = 128;
  v.num_heads = 4;
  v.intermediate_size = 256;
  v.num_position_embeddings = 2304;
  v.out_hidden_size = 256;
  v.deepstack_visual_indexes = {0, 1, 2};
  return c;
}

absl::StatusOr<ModelConfig> PublishedConfig(absl::string_view name) {
  if (name != "235b" && name != "30b") {
    return absl::InvalidArgumentError(absl::StrCat("no published config \"", name, "\" (235b, 30b)"));
  }
  const bool big = name == "235b";
  ModelConfig c = DemoConfig();  // special token ids, eos, patch geometry
  TextConfig& t = c.text;
  t.hidden_size = big ? 4096 : 2048;
  t.num_layers = big ? 94 : 48;
  t.num_heads = big ? 64 : 32;
  t.num_kv_heads = 4;
  t.head_dim = 128;
  t.vocab_size = 151936;
  t.num_experts = 128;
  t.top_k = 8;
  t.moe_intermediate_size = big ? 1536 : 768;
  t.intermediate_size = big ? 12288 : 6144;
  t.rope_theta = 5e6;
  t.mrope_section = {24, 20, 20};
  VisionConfig& v = c.vision;
  v.depth = 27;
  v.hidden_size = 1152;
  v.num_heads = 16;
  v.intermediate_size = 4304;
  v.num_position_embeddings = 2304;
  v.out_hidden_size = t.hidden_size;
  v.deepstack_visual_indexes = {8, 16, 24};
  Q3VL_RETURN_IF_ERROR(c.Validate());
  return c;
}

std::string ConfigToJson(const ModelConfig& c) {
  using Json = nlohmann::json;
  const TextConfig& t = c.text;
  const VisionConfig& v = c.vision;
  Json text = {
      {"model_type", "qwen3_vl_moe_text"}, {"hidden_size", t.hidden_size},
      {"num_hidden_layers", t.num_layers}, {"num_attention_heads", t.num_heads},
      {"num_key_value_heads", t.num_kv_heads}, {"head_dim", t.head_dim},
      {"vocab_size", t.vocab_size}, {"num_experts", t.num_experts},
      {"num_experts_per_tok", t.top_k}, {"moe_intermediate_size", t.moe_intermediate_size},
      {"intermediate_size", t.intermediate_size}, {"decoder_sparse_step", t.decoder_sparse_step},
      {"mlp_only_layers", t.mlp_only_layers}, {"norm_topk_prob", t.norm_topk_prob},
      {"rms_norm_eps", t.rms_norm_eps}, {"hidden_act", "silu"}, {"attention_bias", false},
      {"max_position_embeddings", t.max_position_embeddings}, {"rope_theta", t.rope_theta},
      {"rope_scaling", {{"mrope_interleaved", true}, {"mrope_section", t.mrope_section}, {"rope_type", "default"}}},
      {"eos_token_id", t.eos_token_ids.empty() ? Json(nullptr) : Json(t.eos_token_ids[0])},
      {"dtype", "bfloat16"}};
  Json vision = {
      {"model_type", "qwen3_vl_moe"}, {"depth", v.depth}, {"hidden_size", v.hidden_size},
      {"num_heads", v.num_heads}, {"intermediate_size", v.intermediate_size},
      {"patch_size", v.patch_size}, {"temporal_patch_size", v.temporal_patch_size},
      {"spatial_merge_size", v.spatial_merge_size}, {"in_channels", v.in_channels},
      {"num_position_embeddings", v.num_position_embeddings}, {"out_hidden_size", v.out_hidden_size},
      {"deepstack_visual_indexes", v.deepstack_visual_indexes}, {"hidden_act", "gelu_pytorch_tanh"}};
  Json config = {{"architectures", {"Qwen3VLMoeForConditionalGeneration"}},
                 {"model_type", "qwen3_vl_moe"}, {"text_config", text}, {"vision_config", vision},
                 {"image_token_id", c.image_token_id}, {"video_token_id", c.video_token_id},
                 {"vision_start_token_id", c.vision_start_token_id},
                 {"vision_end_token_id", c.vision_end_token_id},
                 {"tie_word_embeddings", c.tie_word_embeddings}};
  return config.dump(2);
}

namespace {

// N(0, std) bf16 weights; norm scales near 1, biases near 0. Filled in blocks of 1M elements,
// each from its own generator seeded by (seed, tensor, block), in parallel: the values do not
// depend on the thread count.
void FillRandom(const std::string& name, uint64_t seed, size_t index, Tensor& t) {
  uint16_t* p = t.data<uint16_t>();
  const Shape& shape = t.shape();
  const bool is_norm = absl::StrContains(name, "norm") && absl::EndsWith(name, ".weight");
  const bool is_bias = absl::EndsWith(name, ".bias");
  const int64_t fan_in = shape.size() >= 2 ? shape.back() : 1;
  const float stddev = is_norm ? 0.05f : is_bias ? 0.02f : 1.0f / std::sqrt(static_cast<float>(fan_in));
  const float mean = is_norm ? 1.0f : 0.0f;
  constexpr int64_t kBlock = int64_t{1} << 20;
  const int64_t n = t.numel(), blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(dynamic)
  for (int64_t b = 0; b < blocks; ++b) {
    std::seed_seq seq{seed, static_cast<uint64_t>(index), static_cast<uint64_t>(b)};
    std::mt19937_64 rng(seq);
    std::normal_distribution<float> dist(mean, stddev);
    for (int64_t i = b * kBlock; i < std::min(n, (b + 1) * kBlock); ++i) p[i] = F32ToBF16(dist(rng));
  }
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text << "\n";
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot write"));
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteRandomCheckpoint(const ModelConfig& config, const MakeModelOptions& options) {
  Q3VL_RETURN_IF_ERROR(config.Validate());
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(options.dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(options.dir, ": ", ec.message()));
  // Enumerate the declarations by constructing the model against an empty checkpoint (no
  // weight is allocated), then write one tensor at a time: memory stays at the largest tensor.
  CpuBackend backend;
  auto empty = Checkpoint::Empty();
  WeightLoader loader = WeightLoader::DeclareOnly(*empty, backend);
  {
    VisionTower vision(config.vision, loader);
    TextDecoder decoder(config.text, loader, config.tie_word_embeddings);
  }
  std::vector<std::pair<std::string, Shape>> decls = loader.declarations();
  if (options.per_expert_layout) {
    std::vector<std::pair<std::string, Shape>> expanded;
    const int64_t d = config.text.hidden_size, inter = config.text.moe_intermediate_size;
    for (auto& [name, shape] : decls) {
      if (absl::EndsWith(name, "experts.down_proj")) continue;
      if (!absl::EndsWith(name, "experts.gate_up_proj")) {
        expanded.emplace_back(name, shape);
        continue;
      }
      const std::string prefix = name.substr(0, name.size() - std::string("gate_up_proj").size());
      for (int64_t e = 0; e < config.text.num_experts; ++e) {
        expanded.emplace_back(absl::StrCat(prefix, e, ".gate_proj.weight"), Shape{inter, d});
        expanded.emplace_back(absl::StrCat(prefix, e, ".up_proj.weight"), Shape{inter, d});
        expanded.emplace_back(absl::StrCat(prefix, e, ".down_proj.weight"), Shape{d, inter});
      }
    }
    decls = std::move(expanded);
  }
  const int shards = std::max(1, options.num_shards);
  std::vector<std::vector<TensorSpec>> files(shards);
  std::vector<std::vector<size_t>> decl_index(shards);  // declaration index of each file's tensors
  for (size_t i = 0; i < decls.size(); ++i) {
    const size_t f = i * shards / decls.size();
    files[f].push_back({decls[i].first, DType::kBF16, decls[i].second});
    decl_index[f].push_back(i);
  }
  nlohmann::json weight_map = nlohmann::json::object();
  for (int s = 0; s < shards; ++s) {
    const std::string file = shards == 1 ? "model.safetensors"
                                         : absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, shards);
    Q3VL_RETURN_IF_ERROR(WriteSafetensorsStreaming(
        (fs::path(options.dir) / file).string(), files[s],
        [&](size_t i, Tensor& t) { FillRandom(files[s][i].name, options.seed, decl_index[s][i], t); }));
    for (const TensorSpec& t : files[s]) weight_map[t.name] = file;
  }
  if (shards > 1) {
    const nlohmann::json index = {{"metadata", nlohmann::json::object()}, {"weight_map", weight_map}};
    Q3VL_RETURN_IF_ERROR(WriteText((fs::path(options.dir) / "model.safetensors.index.json").string(), index.dump(2)));
  }
  Q3VL_RETURN_IF_ERROR(WriteText((fs::path(options.dir) / "config.json").string(), ConfigToJson(config)));
  const VisionConfig& v = config.vision;
  const nlohmann::json image_proc = {
      {"size", {{"shortest_edge", 65536}, {"longest_edge", 16777216}}}, {"patch_size", v.patch_size},
      {"temporal_patch_size", v.temporal_patch_size}, {"merge_size", v.spatial_merge_size},
      {"image_mean", {0.5, 0.5, 0.5}}, {"image_std", {0.5, 0.5, 0.5}},
      {"image_processor_type", "Qwen2VLImageProcessorFast"}};
  return WriteText((fs::path(options.dir) / "preprocessor_config.json").string(), image_proc.dump(2));
}

}  // namespace q3vl::model
