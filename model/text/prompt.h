// The final prompt ids: a rendered chat (chat_template.h) with each image and video placeholder
// expanded to the number of vision tokens its encoder produces, then tokenized. Takes plain
// counts and timestamp strings (from vision_processor.h / video_processor.h). Stateless;
// thread-safe (the Tokenizer is only read).
#ifndef Q3VL_MODEL_TEXT_PROMPT_H_
#define Q3VL_MODEL_TEXT_PROMPT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "model/text/tokenizer.h"

namespace q3vl::model {

struct ImagePlaceholder {
  int64_t num_tokens = 0;  // <|image_pad|> tokens: grid_h * grid_w / merge^2
};

struct VideoPlaceholder {
  std::vector<std::string> timestamps;  // [grid_t] "<0.3 seconds>" per temporal group (FormatTimestamp)
  int64_t tokens_per_group = 0;         // <|video_pad|> tokens per group: grid_h * grid_w / merge^2
};

// Where a video's frame groups go. Both put, per group, "<t seconds><|vision_start|>" +
// <|video_pad|> x tokens_per_group + "<|vision_end|>".
enum class VideoLayout {
  // transformers 4.57 and vLLM (the layout the models were released with): the group sequence
  // replaces the template's whole <|vision_start|><|video_pad|><|vision_end|>.
  kTransformers4_57,
  // transformers 5.x: it replaces only the <|video_pad|>, so an outer vision_start/end pair stays.
  kTransformers5,
};

struct PromptParts {
  absl::string_view text;                     // RenderChat(...).text
  absl::Span<const ImagePlaceholder> images;  // one per <|image_pad|>, in prompt order
  absl::Span<const VideoPlaceholder> videos;  // one per <|video_pad|>, in prompt order
  VideoLayout video_layout = VideoLayout::kTransformers4_57;
};

// The ids HF's processor gives: placeholders expanded in the text, then the whole text tokenized.
// Expansion works on text because a timestamp is tokenized together with the text before it
// ("Video 1: <0.3 seconds>" is not "Video 1: " + "<0.3 seconds>"); pad runs are never tokenized.
// A literal <|image_pad|> / <|video_pad|> in message text counts as a placeholder, as in HF; a
// <|video_pad|> outside the template's triple is replaced alone. InvalidArgument when the numbers of
// placeholders and images / videos differ, for non-positive token counts, no groups, or a
// timestamp that is not "<digits[.digits] seconds>".
absl::StatusOr<std::vector<int32_t>> BuildPromptIds(const Tokenizer& tokenizer, const PromptParts& parts);

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_TEXT_PROMPT_H_
