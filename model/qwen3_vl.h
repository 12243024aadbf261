// A loaded Qwen3-VL-MoE model: config, vision tower and text decoder, plus the request-level
// pieces that tie them together (visual embedding placement, DeepStack rows). Immutable after
// Load; forward calls are made by one Generator (or engine) at a time.
#ifndef Q3VL_MODEL_QWEN3_VL_H_
#define Q3VL_MODEL_QWEN3_VL_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/backend.h"
#include "model/config.h"
#include "model/decoder.h"
#include "model/safetensors.h"
#include "model/vision.h"

namespace q3vl::model {

class Qwen3VL {
 public:
  // Reads DIR/config.json and the safetensors checkpoint in DIR; every missing, mismatched or
  // unexpected tensor is reported in one error.
  static absl::StatusOr<std::unique_ptr<Qwen3VL>> Load(const std::string& dir, Backend& backend);

  const ModelConfig& config() const { return config_; }
  const VisionTower& vision() const { return *vision_; }
  const TextDecoder& decoder() const { return *decoder_; }
  Backend& backend() const { return backend_; }
  uint64_t bytes_read() const { return checkpoint_->bytes_read(); }

 private:
  Qwen3VL(ModelConfig config, Backend& backend) : config_(std::move(config)), backend_(backend) {}

  ModelConfig config_;
  Backend& backend_;
  std::unique_ptr<Checkpoint> checkpoint_;  // keeps mapped tensors (the embedding) alive
  std::unique_ptr<VisionTower> vision_;
  std::unique_ptr<TextDecoder> decoder_;
};

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_QWEN3_VL_H_
