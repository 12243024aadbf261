#include "model/text/chat_template.h"

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/check.h"
#include "nlohmann/json.hpp"

namespace q3vl::model {
namespace {

constexpr char kImagePlaceholder[] = "<|vision_start|><|image_pad|><|vision_end|>";
constexpr char kVideoPlaceholder[] = "<|vision_start|><|video_pad|><|vision_end|>";
constexpr char kToolsHeader[] =
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
constexpr char kToolsFooter[] =
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call><|im_end|>\n";

// System and assistant content: the string, or the "text" of every list item.
void AppendTextOnly(const ChatMessage& m, std::string* out) {
  if (!m.content_is_list) {
    *out += m.content;
    return;
  }
  for (const ContentPart& part : m.parts) {
    if (part.text.has_value()) *out += *part.text;
  }
}

class Renderer {
 public:
  explicit Renderer(const ChatRequest& request) : request_(request) {}

  RenderedChat Render() && {
    const std::vector<ChatMessage>& messages = request_.messages;
    Q3VL_CHECK(!messages.empty()) << "RenderChat needs at least one message";
    const bool system_first = messages[0].role == ChatRole::kSystem;
    if (!request_.tools.empty()) {
      out_.text += "<|im_start|>system\n";
      if (system_first) {
        AppendTextOnly(messages[0], &out_.text);
        out_.text += "\n\n";
      }
      out_.text += kToolsHeader;
      for (const std::string& tool : request_.tools) absl::StrAppend(&out_.text, "\n", tool);
      out_.text += kToolsFooter;
    } else if (system_first) {
      out_.text += "<|im_start|>system\n";
      AppendTextOnly(messages[0], &out_.text);
      out_.text += "<|im_end|>\n";
    }
    for (size_t i = 0; i < messages.size(); ++i) {
      const ChatMessage& m = messages[i];
      switch (m.role) {
        case ChatRole::kUser:
          out_.text += "<|im_start|>user\n";
          AppendWithVision(m);
          out_.text += "<|im_end|>\n";
          break;
        case ChatRole::kAssistant:
          AppendAssistant(m, /*open=*/request_.continue_final_message && i + 1 == messages.size());
          break;
        case ChatRole::kTool:
          if (i == 0 || messages[i - 1].role != ChatRole::kTool) out_.text += "<|im_start|>user";
          out_.text += "\n<tool_response>\n";
          AppendWithVision(m);
          out_.text += "\n</tool_response>";
          if (i + 1 == messages.size() || messages[i + 1].role != ChatRole::kTool) out_.text += "<|im_end|>\n";
          break;
        case ChatRole::kSystem:
          break;  // messages[0] was rendered above; the template drops any later one
      }
    }
    if (request_.add_generation_prompt) out_.text += "<|im_start|>assistant\n";
    return std::move(out_);
  }

 private:
  // User and tool content: text, and a numbered placeholder per image or video.
  void AppendWithVision(const ChatMessage& m) {
    if (!m.content_is_list) {
      out_.text += m.content;
      return;
    }
    for (const ContentPart& part : m.parts) {
      switch (part.kind) {
        case ContentPart::Kind::kImage:
          out_.image_sources.push_back(part.source);
          if (request_.add_vision_id) absl::StrAppend(&out_.text, "Picture ", out_.image_sources.size(), ": ");
          out_.text += kImagePlaceholder;
          break;
        case ContentPart::Kind::kVideo:
          out_.video_sources.push_back(part.source);
          if (request_.add_vision_id) absl::StrAppend(&out_.text, "Video ", out_.video_sources.size(), ": ");
          out_.text += kVideoPlaceholder;
          break;
        case ContentPart::Kind::kText:
          out_.text += *part.text;
          break;
      }
    }
  }

  // `open`: the message's text only, to be continued (no tool calls, no end of turn).
  void AppendAssistant(const ChatMessage& m, bool open) {
    out_.text += "<|im_start|>assistant\n";
    AppendTextOnly(m, &out_.text);
    if (open) return;
    for (size_t j = 0; j < m.tool_calls.size(); ++j) {
      if (j > 0 || m.HasContent()) out_.text += "\n";
      const ToolCall& call = m.tool_calls[j];
      absl::StrAppend(&out_.text, "<tool_call>\n{\"name\": \"", call.name, "\", \"arguments\": ", call.arguments,
                      "}\n</tool_call>");
    }
    out_.text += "<|im_end|>\n";
  }

  const ChatRequest& request_;
  RenderedChat out_;
};

}  // namespace

absl::Status CheckContinueFinalMessage(const ChatRequest& request) {
  if (!request.continue_final_message) return absl::OkStatus();
  if (request.add_generation_prompt) {
    return absl::InvalidArgumentError("continue_final_message and add_generation_prompt cannot both be true");
  }
  if (request.messages.empty() || request.messages.back().role != ChatRole::kAssistant) {
    return absl::InvalidArgumentError("continue_final_message needs the final message to be an assistant's");
  }
  return absl::OkStatus();
}

namespace {

std::optional<std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// The "chat_template" string of a JSON file; nullopt when the key is absent.
absl::StatusOr<std::optional<std::string>> TemplateFromJson(const std::string& text, const std::string& path) {
  const nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  const auto it = json.find("chat_template");
  if (it == json.end() || it->is_null()) return std::optional<std::string>();
  if (it->is_string()) return std::optional<std::string>(it->get<std::string>());
  if (it->is_array()) {  // [{"name": ..., "template": ...}]: the processor uses "default"
    for (const nlohmann::json& entry : *it) {
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string()) {
        return std::optional<std::string>(entry["template"].get<std::string>());
      }
    }
    return absl::InvalidArgumentError(absl::StrCat(path, ": \"chat_template\" lists no \"default\" template"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": \"chat_template\" must be a string or a list, got ", it->type_name()));
}

}  // namespace

RenderedChat RenderChat(const ChatRequest& request) { return Renderer(request).Render(); }

absl::Status CheckChatTemplate(absl::string_view template_text, absl::string_view source) {
  if (template_text == Qwen3VlChatTemplate()) return absl::OkStatus();
  return absl::UnimplementedError(absl::StrCat(
      "unsupported chat template in ", source, ": only the Qwen3-VL Instruct template is built in (",
      template_text.size(), " bytes, expected the ", Qwen3VlChatTemplate().size(),
      "-byte model/assets/qwen3_vl/chat_template.jinja)"));
}

absl::Status CheckModelChatTemplate(const std::string& model_dir) {
  const std::filesystem::path dir(model_dir);
  const std::filesystem::path jinja = dir / "chat_template.jinja";
  if (std::optional<std::string> text = ReadFile(jinja)) return CheckChatTemplate(*text, jinja.string());
  for (const char* name : {"chat_template.json", "processor_config.json", "tokenizer_config.json"}) {
    const std::string path = (dir / name).string();
    const std::optional<std::string> text = ReadFile(path);
    if (!text.has_value()) continue;
    absl::StatusOr<std::optional<std::string>> tmpl = TemplateFromJson(*text, path);
    if (!tmpl.ok()) return tmpl.status();
    if (tmpl->has_value()) return CheckChatTemplate(**tmpl, path);
  }
  return absl::NotFoundError(absl::StrCat(
      "no chat template in ", model_dir,
      " (looked for chat_template.jinja and \"chat_template\" in chat_template.json, processor_config.json, "
      "tokenizer_config.json)"));
}

}  // namespace q3vl::model
