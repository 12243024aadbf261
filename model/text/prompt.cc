#include "model/text/prompt.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/status_macros.h"

namespace q3vl::model {
namespace {

constexpr char kImagePad[] = "<|image_pad|>";
constexpr char kVideoPad[] = "<|video_pad|>";
constexpr char kVisionStart[] = "<|vision_start|>";
constexpr char kVisionEnd[] = "<|vision_end|>";

size_t CountOf(absl::string_view text, absl::string_view needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != absl::string_view::npos; at = text.find(needle, at + needle.size())) ++n;
  return n;
}

// "<" digits ["." digits] " seconds>", the text transformers writes with f"<{t:.1f} seconds>".
bool IsTimestamp(absl::string_view s) {
  if (!absl::ConsumePrefix(&s, "<") || !absl::ConsumeSuffix(&s, " seconds>") || s.empty()) return false;
  const size_t dot = s.find('.');
  if (dot == 0 || dot + 1 == s.size()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i != dot && !absl::ascii_isdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}

// Far beyond any context length; keeps a corrupt count from exhausting memory.
constexpr int64_t kMaxPadTokens = int64_t{1} << 30;

absl::Status Validate(const PromptParts& parts) {
  const size_t num_image_pads = CountOf(parts.text, kImagePad);
  if (num_image_pads != parts.images.size()) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt has ", num_image_pads, " ", kImagePad,
                                                   " placeholders but ", parts.images.size(), " images were given"));
  }
  const size_t num_video_pads = CountOf(parts.text, kVideoPad);
  if (num_video_pads != parts.videos.size()) {
    return absl::InvalidArgumentError(absl::StrCat("the prompt has ", num_video_pads, " ", kVideoPad,
                                                   " placeholders but ", parts.videos.size(), " videos were given"));
  }
  int64_t num_pads = 0;
  for (size_t i = 0; i < parts.images.size(); ++i) {
    if (parts.images[i].num_tokens <= 0 || parts.images[i].num_tokens > kMaxPadTokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("image ", i, ": num_tokens must be in [1, 2^30], got ", parts.images[i].num_tokens));
    }
    num_pads += parts.images[i].num_tokens;
  }
  for (size_t i = 0; i < parts.videos.size(); ++i) {
    const VideoPlaceholder& v = parts.videos[i];
    if (v.tokens_per_group <= 0 || v.tokens_per_group > kMaxPadTokens) {
      return absl::InvalidArgumentError(
          absl::StrCat("video ", i, ": tokens_per_group must be in [1, 2^30], got ", v.tokens_per_group));
    }
    if (v.timestamps.empty()) return absl::InvalidArgumentError(absl::StrCat("video ", i, ": no frame groups"));
    num_pads += v.tokens_per_group * static_cast<int64_t>(v.timestamps.size());
    for (size_t g = 0; g < v.timestamps.size(); ++g) {
      if (!IsTimestamp(v.timestamps[g])) {
        return absl::InvalidArgumentError(absl::StrCat("video ", i, ", group ", g, ": timestamp \"", v.timestamps[g],
                                                       "\" is not of the form \"<0.3 seconds>\""));
      }
    }
  }
  if (num_pads > kMaxPadTokens) {
    return absl::InvalidArgumentError(absl::StrCat("the images and videos need ", num_pads, " tokens (at most 2^30)"));
  }
  return absl::OkStatus();
}

// Collects text until a run of pad tokens, then tokenizes it in one piece. Pads are added tokens,
// which split HF's input anyway, so this equals tokenizing the fully expanded text.
class IdBuilder {
 public:
  explicit IdBuilder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}

  void Text(absl::string_view text) { pending_.append(text.data(), text.size()); }
  void Pads(int32_t id, int64_t n) {
    Flush();
    ids_.insert(ids_.end(), n, id);
  }
  std::vector<int32_t> Finish() && {
    Flush();
    return std::move(ids_);
  }

 private:
  void Flush() {
    if (pending_.empty()) return;
    const std::vector<int32_t> ids = tokenizer_.Encode(pending_);
    ids_.insert(ids_.end(), ids.begin(), ids.end());
    pending_.clear();
  }

  const Tokenizer& tokenizer_;
  std::string pending_;
  std::vector<int32_t> ids_;
};

absl::StatusOr<int32_t> RequireToken(const Tokenizer& tokenizer, const char* token) {
  const std::optional<int32_t> id = tokenizer.TokenId(token);
  if (!id.has_value()) return absl::FailedPreconditionError(absl::StrCat("the tokenizer has no ", token, " token"));
  return *id;
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> BuildPromptIds(const Tokenizer& tokenizer, const PromptParts& parts) {
  Q3VL_RETURN_IF_ERROR(Validate(parts));
  Q3VL_ASSIGN_OR_RETURN(const int32_t image_pad_id, RequireToken(tokenizer, kImagePad));
  Q3VL_ASSIGN_OR_RETURN(const int32_t video_pad_id, RequireToken(tokenizer, kVideoPad));
  const absl::string_view text = parts.text;
  IdBuilder builder(tokenizer);
  size_t next_image = 0, next_video = 0;
  size_t pos = 0;
  while (true) {
    const size_t image_at = text.find(kImagePad, pos);
    const size_t video_at = text.find(kVideoPad, pos);
    const size_t at = std::min(image_at, video_at);
    if (at == absl::string_view::npos) {
      builder.Text(text.substr(pos));
      break;
    }
    absl::string_view before = text.substr(pos, at - pos);
    if (at == image_at) {
      builder.Text(before);
      builder.Pads(image_pad_id, parts.images[next_image++].num_tokens);
      pos = at + std::strlen(kImagePad);
      continue;
    }
    pos = at + std::strlen(kVideoPad);
    if (parts.video_layout == VideoLayout::kTransformers4_57 && absl::EndsWith(before, kVisionStart) &&
        absl::StartsWith(text.substr(pos), kVisionEnd)) {
      before.remove_suffix(std::strlen(kVisionStart));
      pos += std::strlen(kVisionEnd);
    }
    builder.Text(before);
    const VideoPlaceholder& video = parts.videos[next_video++];
    for (const std::string& timestamp : video.timestamps) {
      builder.Text(timestamp);
      builder.Text(kVisionStart);
      builder.Pads(video_pad_id, video.tokens_per_group);
      builder.Text(kVisionEnd);
    }
  }
  return std::move(builder).Finish();
}

}  // namespace q3vl::model
