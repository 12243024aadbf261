#include "model/qwen3_vl.h"

#include <filesystem>

#include "core/status_macros.h"

namespace q3vl::model {

absl::StatusOr<std::unique_ptr<Qwen3VL>> Qwen3VL::Load(const std::string& dir, Backend& backend) {
  const std::string config_path = (std::filesystem::path(dir) / "config.json").string();
  Q3VL_ASSIGN_OR_RETURN(ModelConfig config, ModelConfig::FromFile(config_path));
  std::unique_ptr<Qwen3VL> model(new Qwen3VL(std::move(config), backend));
  Q3VL_ASSIGN_OR_RETURN(model->checkpoint_, Checkpoint::Open(dir));
  WeightLoader loader(*model->checkpoint_, backend);
  model->vision_ = std::make_unique<VisionTower>(model->config_.vision, loader);
  model->decoder_ = std::make_unique<TextDecoder>(model->config_.text, loader,
                                                  model->config_.tie_word_embeddings);
  Q3VL_RETURN_IF_ERROR(Annotate(loader.Finish(), dir));
  return model;
}

}  // namespace q3vl::model
