#include "model/processor.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"
#include "model/media/image_decode.h"
#include "model/media/video_processor.h"
#include "model/text/byte_level.h"
#include "model/text/chat_messages.h"
#include "model/text/chat_template.h"

namespace q3vl::model {
namespace {

// The processor config at DIR/name overlaid on `defaults`; the defaults when the file is absent.
absl::StatusOr<VisionProcessorConfig> ReadProcessorConfig(const std::filesystem::path& dir,
                                                          const char* name,
                                                          const VisionProcessorConfig& defaults) {
  const std::filesystem::path path = dir / name;
  if (!std::filesystem::exists(path)) return defaults;
  std::ifstream in(path);
  if (!in) return absl::PermissionDeniedError(absl::StrCat(path.string(), ": cannot read"));
  std::stringstream text;
  text << in.rdbuf();
  return VisionProcessorConfig::FromJson(text.str(), path.string(), defaults);
}

// A media reference as written in a message: data: and file:// URLs and absolute paths as they
// are, relative paths under `root`.
std::string Resolve(const std::string& source, const std::string& root) {
  if (root.empty() || absl::StartsWith(source, "data:") || absl::StrContains(source, "://") ||
      std::filesystem::path(source).is_absolute()) {
    return source;
  }
  return (std::filesystem::path(root) / source).string();
}

std::string FilePath(const std::string& reference) {
  return absl::StartsWith(reference, "file://") ? reference.substr(7) : reference;
}

// Whether local file `path` may be read under options.allowed_media_dirs.
absl::Status CheckAllowed(const std::string& path, const ProcessOptions& options, const std::string& what) {
  if (!options.allowed_media_dirs) return absl::OkStatus();
  std::error_code ec;
  const std::filesystem::path real = std::filesystem::weakly_canonical(path, ec);
  if (!ec) {
    for (const std::string& dir : *options.allowed_media_dirs) {
      const std::filesystem::path root = std::filesystem::weakly_canonical(dir, ec);
      if (ec) continue;
      auto [r, p] = std::mismatch(root.begin(), root.end(), real.begin(), real.end());
      if (r == root.end()) return absl::OkStatus();
    }
  }
  return absl::PermissionDeniedError(absl::StrCat(what, ": ", path, " is outside the allowed media directories (",
                                                  absl::StrJoin(*options.allowed_media_dirs, ", "), ")"));
}

// A video given as `data:[<type>];base64,<payload>`: the bytes go to an anonymous in-memory
// file that FFmpeg opens by its /proc path.
absl::StatusOr<ProcessedVideo> LoadVideoDataUrl(absl::string_view url, const VisionProcessorConfig& config) {
  const size_t comma = url.find(',');
  if (comma == absl::string_view::npos || !absl::EndsWith(url.substr(0, comma), ";base64")) {
    return absl::InvalidArgumentError("a video data: URL must be base64 (data:video/mp4;base64,...)");
  }
  std::string bytes;
  if (!absl::Base64Unescape(url.substr(comma + 1), &bytes)) {
    return absl::InvalidArgumentError("the video data: URL's payload is not valid base64");
  }
  const int fd = memfd_create("q3vl-video", MFD_CLOEXEC);
  if (fd < 0) return absl::InternalError("memfd_create failed");
  size_t written = 0;
  while (written < bytes.size()) {
    const ssize_t n = write(fd, bytes.data() + written, bytes.size() - written);
    if (n <= 0) {
      close(fd);
      return absl::InternalError("writing the video to memory failed");
    }
    written += static_cast<size_t>(n);
  }
  auto video = LoadVideo(absl::StrCat("/proc/self/fd/", fd), config);
  close(fd);
  return video;
}

// Every string in a request must be UTF-8: silently replacing bytes would change the prompt.
absl::Status CheckUtf8(const nlohmann::ordered_json& value, const std::string& path) {
  if (value.is_string()) {
    if (IsValidUtf8(value.get_ref<const std::string&>())) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(path, ": text is not valid UTF-8"));
  }
  if (value.is_array()) {
    for (size_t i = 0; i < value.size(); ++i) {
      Q3VL_RETURN_IF_ERROR(CheckUtf8(value[i], absl::StrCat(path, "[", i, "]")));
    }
  } else if (value.is_object()) {
    for (auto it = value.begin(); it != value.end(); ++it) {
      Q3VL_RETURN_IF_ERROR(CheckUtf8(it.value(), absl::StrCat(path, ".", it.key())));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<VisionProcessorConfigs> LoadVisionProcessorConfigs(const std::string& model_dir) {
  const std::filesystem::path dir(model_dir);
  VisionProcessorConfigs configs;
  Q3VL_ASSIGN_OR_RETURN(configs.image, ReadProcessorConfig(dir, "preprocessor_config.json", configs.image));
  Q3VL_ASSIGN_OR_RETURN(configs.video, ReadProcessorConfig(dir, "video_preprocessor_config.json", configs.video));
  return configs;
}

absl::StatusOr<Processor> Processor::Load(const std::string& model_dir) {
  const std::filesystem::path dir(model_dir);
  Q3VL_ASSIGN_OR_RETURN(Tokenizer tokenizer, Tokenizer::FromFile((dir / "tokenizer.json").string()));
  Q3VL_RETURN_IF_ERROR(CheckModelChatTemplate(model_dir));
  Q3VL_ASSIGN_OR_RETURN(VisionProcessorConfigs configs, LoadVisionProcessorConfigs(model_dir));
  return Processor(std::make_shared<const Tokenizer>(std::move(tokenizer)), configs.image, configs.video);
}

absl::StatusOr<ProcessedRequest> Processor::Process(const nlohmann::ordered_json& messages,
                                                    const ProcessOptions& options) const {
  Q3VL_RETURN_IF_ERROR(CheckUtf8(messages, "messages"));
  ChatRequest chat{.add_generation_prompt = options.add_generation_prompt,
                   .continue_final_message = options.continue_final_message,
                   .add_vision_id = options.add_vision_id};
  Q3VL_ASSIGN_OR_RETURN(chat.messages, ParseChatMessages(messages));
  Q3VL_RETURN_IF_ERROR(CheckContinueFinalMessage(chat));
  const RenderedChat rendered = RenderChat(chat);

  const VisionProcessorConfig& image_config = options.image_config ? *options.image_config : image_config_;
  const VisionProcessorConfig& video_config = options.video_config ? *options.video_config : video_config_;
  ProcessedRequest out;
  out.prompt_text = rendered.text;
  std::vector<ProcessedImage> images;
  std::vector<ImagePlaceholder> image_slots;
  for (size_t i = 0; i < rendered.image_sources.size(); ++i) {
    const std::string ref = Resolve(rendered.image_sources[i], options.media_root);
    if (!absl::StartsWith(ref, "data:") && !absl::StrContains(FilePath(ref), "://")) {
      Q3VL_RETURN_IF_ERROR(CheckAllowed(FilePath(ref), options, absl::StrCat("image ", i + 1)));
    }
    auto image = LoadImage(ref);
    if (!image.ok()) return Annotate(image.status(), absl::StrCat("image ", i + 1));
    auto processed = ProcessImage(*image, image_config);
    if (!processed.ok()) return Annotate(processed.status(), absl::StrCat("image ", i + 1, " (", ref, ")"));
    image_slots.push_back({.num_tokens = processed->num_tokens});
    images.push_back(*std::move(processed));
  }
  std::vector<ProcessedVideo> videos;
  std::vector<VideoPlaceholder> video_slots;
  for (size_t i = 0; i < rendered.video_sources.size(); ++i) {
    const std::string ref = Resolve(rendered.video_sources[i], options.media_root);
    absl::StatusOr<ProcessedVideo> video;
    if (absl::StartsWith(ref, "data:")) {
      video = LoadVideoDataUrl(ref, video_config);
    } else if (absl::StrContains(FilePath(ref), "://")) {
      return absl::UnimplementedError(absl::StrCat("video ", i + 1, ": remote URLs are not fetched (got \"",
                                                   ref.substr(0, 40), "\")"));
    } else {
      Q3VL_RETURN_IF_ERROR(CheckAllowed(FilePath(ref), options, absl::StrCat("video ", i + 1)));
      video = LoadVideo(FilePath(ref), video_config);
    }
    if (!video.ok()) return Annotate(video.status(), absl::StrCat("video ", i + 1));
    video_slots.push_back({.timestamps = video->plan.timestamps,
                           .tokens_per_group = video->plan.tokens_per_group});
    out.video_timestamps.push_back(absl::StrJoin(video->plan.timestamps, ""));
    videos.push_back(*std::move(video));
  }
  Q3VL_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                        BuildPromptIds(*tokenizer_, {.text = rendered.text,
                                                     .images = image_slots,
                                                     .videos = video_slots,
                                                     .video_layout = options.video_layout}));
  out.input_ids.assign(ids.begin(), ids.end());
  if (!images.empty()) out.images = MakeVisionInput(images);
  if (!videos.empty()) out.videos = MakeVisionInput(videos);
  return out;
}

}  // namespace q3vl::model
