#include "model/config.h"

#include <cmath>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace q3vl::model {
namespace {

using Json = nlohmann::json;

// Reads typed keys from one JSON object, collecting the first error with its path.
class Reader {
 public:
  Reader(const Json& object, std::string path) : object_(object), path_(std::move(path)) {}

  template <typename T>
  void Required(const char* key, T* out) {
    if (!object_.contains(key)) {
      Fail(absl::StrCat("missing required key \"", path_, key, "\""));
      return;
    }
    Get(key, out);
  }

  template <typename T>
  void Optional(const char* key, T* out) {
    if (object_.contains(key) && !object_[key].is_null()) Get(key, out);
  }

  absl::Status status() const { return status_; }
  void Fail(std::string message) {
    if (status_.ok()) status_ = absl::InvalidArgumentError(std::move(message));
  }

 private:
  template <typename T>
  void Get(const char* key, T* out) {
    const Json& v = object_[key];
    bool ok = false;
    if constexpr (std::is_same_v<T, bool>) {
      ok = v.is_boolean();
    } else if constexpr (std::is_integral_v<T>) {
      ok = v.is_number_integer();
    } else if constexpr (std::is_floating_point_v<T>) {
      ok = v.is_number();
    } else {
      ok = v.is_array() && std::all_of(v.begin(), v.end(), [](const Json& e) { return e.is_number_integer(); });
    }
    if (!ok) {
      Fail(absl::StrCat("key \"", path_, key, "\" has the wrong type: ", v.dump()));
      return;
    }
    *out = v.get<T>();
  }

  const Json& object_;
  std::string path_;
  absl::Status status_;
};

absl::Status ParseRope(const Json& text, TextConfig* cfg) {
  // Newer layout: rope_parameters {rope_theta, mrope_section, mrope_interleaved, rope_type};
  // official layout: rope_theta + rope_scaling {mrope_section, mrope_interleaved, rope_type}.
  const Json* params = nullptr;
  if (text.contains("rope_parameters") && text["rope_parameters"].is_object()) {
    params = &text["rope_parameters"];
  } else if (text.contains("rope_scaling") && text["rope_scaling"].is_object()) {
    params = &text["rope_scaling"];
  }
  Reader top(text, "text_config.");
  top.Optional("rope_theta", &cfg->rope_theta);
  Q3VL_RETURN_IF_ERROR(top.status());
  if (params == nullptr) {
    return absl::InvalidArgumentError(
        "text_config has neither rope_scaling nor rope_parameters with mrope_section");
  }
  Reader rope(*params, "text_config.rope.");
  rope.Optional("rope_theta", &cfg->rope_theta);
  std::vector<int64_t> section;
  rope.Required("mrope_section", &section);
  rope.Optional("mrope_interleaved", &cfg->mrope_interleaved);
  Q3VL_RETURN_IF_ERROR(rope.status());
  if (params->contains("rope_type") && (*params)["rope_type"].is_string()) {
    const std::string type = (*params)["rope_type"].get<std::string>();
    if (type == "yarn") {
      TextConfig::Yarn& y = cfg->yarn;
      y.enabled = true;
      rope.Required("factor", &y.factor);
      rope.Optional("original_max_position_embeddings", &y.original_max_position_embeddings);
      rope.Optional("beta_fast", &y.beta_fast);
      rope.Optional("beta_slow", &y.beta_slow);
      rope.Optional("attention_factor", &y.attention_factor);
      rope.Optional("mscale", &y.mscale);
      rope.Optional("mscale_all_dim", &y.mscale_all_dim);
      rope.Optional("truncate", &y.truncate);
      Q3VL_RETURN_IF_ERROR(rope.status());
      if (!(y.factor >= 1.0) || !std::isfinite(y.factor)) {
        return absl::InvalidArgumentError(absl::StrCat("yarn factor must be >= 1, got ", y.factor));
      }
      if (y.original_max_position_embeddings < 0) {
        return absl::InvalidArgumentError("yarn original_max_position_embeddings must be >= 1");
      }
      if (!(y.beta_fast > 0) || !(y.beta_slow > 0) || !(y.attention_factor >= 0) || !std::isfinite(y.beta_fast) ||
          !std::isfinite(y.beta_slow) || !std::isfinite(y.attention_factor)) {
        return absl::InvalidArgumentError("yarn beta_fast, beta_slow must be > 0 and attention_factor >= 0");
      }
    } else if (type != "default" && type != "mrope") {
      return absl::InvalidArgumentError(
          absl::StrCat("rope_type \"", type, "\" is not supported (default, yarn)"));
    }
  }
  if (section.size() != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("mrope_section must have 3 entries (t, h, w), got ", section.size()));
  }
  std::copy(section.begin(), section.end(), cfg->mrope_section.begin());
  return absl::OkStatus();
}

absl::Status ParseText(const Json& text, TextConfig* cfg) {
  Reader r(text, "text_config.");
  r.Required("hidden_size", &cfg->hidden_size);
  r.Required("num_hidden_layers", &cfg->num_layers);
  r.Required("num_attention_heads", &cfg->num_heads);
  r.Required("num_key_value_heads", &cfg->num_kv_heads);
  r.Required("vocab_size", &cfg->vocab_size);
  r.Required("num_experts", &cfg->num_experts);
  r.Required("num_experts_per_tok", &cfg->top_k);
  r.Required("moe_intermediate_size", &cfg->moe_intermediate_size);
  r.Optional("intermediate_size", &cfg->intermediate_size);
  r.Optional("decoder_sparse_step", &cfg->decoder_sparse_step);
  r.Optional("mlp_only_layers", &cfg->mlp_only_layers);
  r.Optional("norm_topk_prob", &cfg->norm_topk_prob);
  r.Optional("rms_norm_eps", &cfg->rms_norm_eps);
  r.Optional("max_position_embeddings", &cfg->max_position_embeddings);
  Q3VL_RETURN_IF_ERROR(r.status());
  cfg->head_dim = cfg->num_heads > 0 ? cfg->hidden_size / cfg->num_heads : 0;
  r.Optional("head_dim", &cfg->head_dim);
  if (text.contains("eos_token_id")) {
    const Json& eos = text["eos_token_id"];
    if (eos.is_number_integer()) {
      cfg->eos_token_ids = {eos.get<int64_t>()};
    } else {
      r.Optional("eos_token_id", &cfg->eos_token_ids);
    }
  }
  if (text.contains("hidden_act") && text["hidden_act"] != "silu") {
    r.Fail(absl::StrCat("text_config.hidden_act ", text["hidden_act"].dump(), " is not supported (silu)"));
  }
  if (text.contains("attention_bias") && text["attention_bias"] == true) {
    r.Fail("text_config.attention_bias = true is not supported by this architecture");
  }
  Q3VL_RETURN_IF_ERROR(r.status());
  return ParseRope(text, cfg);
}

absl::Status ParseVision(const Json& vision, VisionConfig* cfg) {
  Reader r(vision, "vision_config.");
  r.Required("depth", &cfg->depth);
  r.Required("hidden_size", &cfg->hidden_size);
  r.Required("num_heads", &cfg->num_heads);
  r.Required("intermediate_size", &cfg->intermediate_size);
  r.Required("num_position_embeddings", &cfg->num_position_embeddings);
  r.Required("out_hidden_size", &cfg->out_hidden_size);
  r.Optional("patch_size", &cfg->patch_size);
  r.Optional("temporal_patch_size", &cfg->temporal_patch_size);
  r.Optional("spatial_merge_size", &cfg->spatial_merge_size);
  r.Optional("in_channels", &cfg->in_channels);
  r.Optional("deepstack_visual_indexes", &cfg->deepstack_visual_indexes);
  if (vision.contains("hidden_act") && vision["hidden_act"] != "gelu_pytorch_tanh") {
    r.Fail(absl::StrCat("vision_config.hidden_act ", vision["hidden_act"].dump(),
                        " is not supported (gelu_pytorch_tanh)"));
  }
  return r.status();
}

}  // namespace

bool TextConfig::IsMoeLayer(int64_t layer) const {
  if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end()) {
    return false;
  }
  return num_experts > 0 && decoder_sparse_step > 0 && (layer + 1) % decoder_sparse_step == 0;
}

absl::StatusOr<ModelConfig> ModelConfig::FromJson(absl::string_view text, absl::string_view name) {
  const Json json = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": not a JSON object"));
  }
  ModelConfig cfg;
  absl::Status status = [&]() -> absl::Status {
    if (json.contains("model_type") && json["model_type"] != "qwen3_vl_moe") {
      return absl::InvalidArgumentError(absl::StrCat(
          "model_type ", json["model_type"].dump(), " is not supported (qwen3_vl_moe)"));
    }
    if (!json.contains("text_config") || !json["text_config"].is_object()) {
      return absl::InvalidArgumentError("missing object \"text_config\"");
    }
    if (!json.contains("vision_config") || !json["vision_config"].is_object()) {
      return absl::InvalidArgumentError("missing object \"vision_config\"");
    }
    Q3VL_RETURN_IF_ERROR(ParseText(json["text_config"], &cfg.text));
    Q3VL_RETURN_IF_ERROR(ParseVision(json["vision_config"], &cfg.vision));
    Reader r(json, "");
    r.Optional("image_token_id", &cfg.image_token_id);
    r.Optional("video_token_id", &cfg.video_token_id);
    r.Optional("vision_start_token_id", &cfg.vision_start_token_id);
    r.Optional("vision_end_token_id", &cfg.vision_end_token_id);
    r.Optional("tie_word_embeddings", &cfg.tie_word_embeddings);
    if (json["text_config"].contains("tie_word_embeddings")) {
      Reader t(json["text_config"], "text_config.");
      t.Optional("tie_word_embeddings", &cfg.tie_word_embeddings);
      Q3VL_RETURN_IF_ERROR(t.status());
    }
    if (cfg.text.eos_token_ids.empty()) {
      std::vector<int64_t> eos;
      if (json.contains("eos_token_id") && json["eos_token_id"].is_number_integer()) {
        eos = {json["eos_token_id"].get<int64_t>()};
      }
      cfg.text.eos_token_ids = eos;
    }
    return r.status();
  }();
  if (!status.ok()) return Annotate(status, name);
  Q3VL_RETURN_IF_ERROR(Annotate(cfg.Validate(), name));
  return cfg;
}

absl::StatusOr<ModelConfig> ModelConfig::FromFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return FromJson(buffer.str(), path);
}

absl::Status ModelConfig::Validate() const {
  // Every size is bounded so that products of a few of them fit in int64 and loops over them
  // end: a hostile config must fail here, not overflow or spin later.
  constexpr int64_t kMaxWidth = int64_t{1} << 20;
  constexpr int64_t kMaxCount = int64_t{1} << 16;
  auto in_range = [](int64_t v, const char* key, int64_t max) -> absl::Status {
    if (v > 0 && v <= max) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(key, " must be in [1, ", max, "], got ", v));
  };
  const TextConfig& t = text;
  Q3VL_RETURN_IF_ERROR(in_range(t.hidden_size, "text_config.hidden_size", kMaxWidth));
  Q3VL_RETURN_IF_ERROR(in_range(t.num_layers, "text_config.num_hidden_layers", kMaxCount));
  Q3VL_RETURN_IF_ERROR(in_range(t.num_heads, "text_config.num_attention_heads", kMaxCount));
  Q3VL_RETURN_IF_ERROR(in_range(t.num_kv_heads, "text_config.num_key_value_heads", kMaxCount));
  Q3VL_RETURN_IF_ERROR(in_range(t.head_dim, "text_config.head_dim", kMaxCount));
  Q3VL_RETURN_IF_ERROR(in_range(t.vocab_size, "text_config.vocab_size", kMaxWidth * 16));
  Q3VL_RETURN_IF_ERROR(in_range(t.num_experts, "text_config.num_experts", kMaxCount));
  Q3VL_RETURN_IF_ERROR(in_range(t.moe_intermediate_size, "text_config.moe_intermediate_size", kMaxWidth));
  Q3VL_RETURN_IF_ERROR(in_range(t.decoder_sparse_step, "text_config.decoder_sparse_step", kMaxCount));
  Q3VL_RETURN_IF_ERROR(in_range(t.max_position_embeddings, "text_config.max_position_embeddings",
                                kMaxWidth * 64));
  if (t.intermediate_size < 0 || t.intermediate_size > kMaxWidth) {
    return absl::InvalidArgumentError(absl::StrCat("text_config.intermediate_size must be in [0, ",
                                                   kMaxWidth, "], got ", t.intermediate_size));
  }
  if (t.num_heads % t.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("num_attention_heads (", t.num_heads,
        ") must be a multiple of num_key_value_heads (", t.num_kv_heads, ")"));
  }
  if (t.head_dim % 2 != 0) return absl::InvalidArgumentError("head_dim must be even");
  if (t.top_k < 1 || t.top_k > t.num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("num_experts_per_tok (", t.top_k,
        ") must be in [1, num_experts = ", t.num_experts, "]"));
  }
  int64_t section_sum = 0;
  for (int64_t s : t.mrope_section) section_sum += std::clamp<int64_t>(s, -1, t.head_dim);
  if (section_sum != t.head_dim / 2 || t.mrope_section[0] < 0 || t.mrope_section[1] < 0 ||
      t.mrope_section[2] < 0) {
    return absl::InvalidArgumentError(absl::StrCat("mrope_section must sum to head_dim/2 = ",
        t.head_dim / 2, ", got ", section_sum));
  }
  if (!t.mrope_interleaved) {
    return absl::UnimplementedError("mrope_interleaved = false is not supported (Qwen3-VL uses true)");
  }
  for (int64_t l : t.mlp_only_layers) {
    if (l < 0 || l >= t.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat("mlp_only_layers entry ", l, " outside [0, ", t.num_layers, ")"));
    }
  }
  for (int64_t l = 0; l < t.num_layers; ++l) {
    if (!t.IsMoeLayer(l) && t.intermediate_size <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", l,
          " is dense (mlp_only_layers / decoder_sparse_step) but intermediate_size is not set"));
    }
  }
  const VisionConfig& v = vision;
  Q3VL_RETURN_IF_ERROR(in_range(v.depth, "vision_config.depth", kMaxCount));
  Q3VL_RETURN_IF_ERROR(in_range(v.hidden_size, "vision_config.hidden_size", kMaxWidth));
  Q3VL_RETURN_IF_ERROR(in_range(v.num_heads, "vision_config.num_heads", kMaxCount));
  Q3VL_RETURN_IF_ERROR(in_range(v.intermediate_size, "vision_config.intermediate_size", kMaxWidth));
  Q3VL_RETURN_IF_ERROR(in_range(v.patch_size, "vision_config.patch_size", 1024));
  Q3VL_RETURN_IF_ERROR(in_range(v.temporal_patch_size, "vision_config.temporal_patch_size", 64));
  Q3VL_RETURN_IF_ERROR(in_range(v.spatial_merge_size, "vision_config.spatial_merge_size", 64));
  Q3VL_RETURN_IF_ERROR(in_range(v.in_channels, "vision_config.in_channels", 64));
  Q3VL_RETURN_IF_ERROR(in_range(v.num_position_embeddings, "vision_config.num_position_embeddings",
                                kMaxWidth * 16));
  if (v.hidden_size % v.num_heads != 0 || v.head_dim() % 4 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("vision hidden_size ", v.hidden_size,
        " / num_heads ", v.num_heads, " must be a multiple of 4 (2-D rotary)"));
  }
  int64_t side = 1;
  while (side * side < v.num_position_embeddings) ++side;
  if (side * side != v.num_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vision_config.num_position_embeddings must be a square, got ", v.num_position_embeddings));
  }
  if (v.out_hidden_size != t.hidden_size) {
    return absl::InvalidArgumentError(absl::StrCat("vision_config.out_hidden_size (",
        v.out_hidden_size, ") must equal text_config.hidden_size (", t.hidden_size, ")"));
  }
  for (size_t k = 0; k < v.deepstack_visual_indexes.size(); ++k) {
    const int64_t b = v.deepstack_visual_indexes[k];
    if (b < 0 || b >= v.depth) {
      return absl::InvalidArgumentError(absl::StrCat("deepstack_visual_indexes entry ", b,
          " outside [0, depth = ", v.depth, ")"));
    }
    if (k > 0 && b <= v.deepstack_visual_indexes[k - 1]) {
      return absl::InvalidArgumentError("deepstack_visual_indexes must be strictly increasing");
    }
  }
  if (static_cast<int64_t>(v.deepstack_visual_indexes.size()) > t.num_layers) {
    return absl::InvalidArgumentError("more deepstack_visual_indexes than decoder layers");
  }
  return absl::OkStatus();
}

}  // namespace q3vl::model
