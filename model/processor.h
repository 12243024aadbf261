// The request front end, as Hugging Face's Qwen3VLProcessor: chat messages -> the chat template
// -> images and videos decoded and preprocessed -> the expanded prompt ids and the VisionInputs
// a GenerationRequest takes. Loaded once per model directory; immutable afterwards, so Process
// may be called from several threads.
#ifndef Q3VL_MODEL_PROCESSOR_H_
#define Q3VL_MODEL_PROCESSOR_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "model/media/vision_input.h"
#include "model/media/vision_processor.h"
#include "model/text/prompt.h"
#include "model/text/tokenizer.h"
#include "nlohmann/json.hpp"

namespace q3vl::model {

// DIR/preprocessor_config.json (images) and DIR/video_preprocessor_config.json (videos), each
// overlaid on transformers' defaults; a file that is absent gives the defaults.
struct VisionProcessorConfigs {
  VisionProcessorConfig image = VisionProcessorConfig::ImageDefaults();
  VisionProcessorConfig video = VisionProcessorConfig::VideoDefaults();
};
absl::StatusOr<VisionProcessorConfigs> LoadVisionProcessorConfigs(const std::string& model_dir);

struct ProcessOptions {
  bool add_generation_prompt = true;
  bool continue_final_message = false;  // ChatRequest::continue_final_message
  bool add_vision_id = false;
  VideoLayout video_layout = VideoLayout::kTransformers4_57;
  // Relative image and video paths in the messages resolve against this directory (empty: the
  // working directory).
  std::string media_root;
  // When set, local files (plain paths and file:// URLs) must lie inside one of these
  // directories once symlinks and ".." are resolved (PermissionDenied otherwise); an empty list
  // allows none. Unset: any file the process can read.
  std::optional<std::vector<std::string>> allowed_media_dirs;
  // This request's image and video processing (a client's mm_processor_kwargs over the
  // model's preprocessor configs); unset: the model's.
  std::optional<VisionProcessorConfig> image_config;
  std::optional<VisionProcessorConfig> video_config;
};

struct ProcessedRequest {
  std::string prompt_text;          // the rendered template, placeholders not yet expanded
  std::vector<int64_t> input_ids;   // the expanded prompt
  VisionInput images;               // every image, in prompt order
  VisionInput videos;               // every video, in prompt order
  std::vector<std::string> video_timestamps;  // per video: its groups' "<t seconds>", joined
};

class Processor {
 public:
  // Reads DIR/tokenizer.json, checks the chat template DIR declares (only the Qwen3-VL Instruct
  // template is built in), and reads DIR/preprocessor_config.json and
  // DIR/video_preprocessor_config.json when present (transformers' defaults otherwise).
  static absl::StatusOr<Processor> Load(const std::string& model_dir);

  // `messages` is an OpenAI-style JSON array. Images: data: URLs, file:// URLs and paths; videos:
  // the same (a data: URL's bytes are decoded from memory). InvalidArgument for bad messages or
  // media (the message names the item), NotFound for a missing file, PermissionDenied for a
  // file outside options.allowed_media_dirs, Unimplemented for a remote URL.
  absl::StatusOr<ProcessedRequest> Process(const nlohmann::ordered_json& messages,
                                           const ProcessOptions& options) const;

  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const VisionProcessorConfig& image_config() const { return image_config_; }
  const VisionProcessorConfig& video_config() const { return video_config_; }

 private:
  Processor(std::shared_ptr<const Tokenizer> tokenizer, VisionProcessorConfig image_config,
            VisionProcessorConfig video_config)
      : tokenizer_(std::move(tokenizer)), image_config_(image_config), video_config_(video_config) {}

  std::shared_ptr<const Tokenizer> tokenizer_;
  VisionProcessorConfig image_config_;
  VisionProcessorConfig video_config_;
};

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_PROCESSOR_H_
