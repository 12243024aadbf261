// Fuzz target: chat messages as a client sends them. Arbitrary bytes are parsed as JSON (no
// exceptions), either a messages array or {"messages", "tools", "add_generation_prompt",
// "add_vision_id"}, then ParseChatMessages / ParseChatTools and RenderChat. A rejection must carry
// a message; an accepted request must render to a prompt that opens a turn and holds a
// placeholder per image and video; Python-style JSON of any parsed value must parse back equal.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "model/text/chat_messages.h"
#include "model/text/chat_template.h"
#include "nlohmann/json.hpp"

namespace {

using Json = nlohmann::ordered_json;
namespace model = q3vl::model;

size_t Count(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++n;
  return n;
}

bool AllFinite(const Json& j) {
  if (j.is_number_float()) return std::isfinite(j.get<double>());
  if (j.is_structured()) {
    for (const Json& item : j) {
      if (!AllFinite(item)) return false;
    }
  }
  return true;
}

// PythonJsonDumps writes JSON that reads back as the same value (key order included).
void CheckPythonDumps(const Json& j) {
  if (!AllFinite(j)) return;  // Python writes NaN / Infinity, which is not JSON
  const Json back = Json::parse(model::PythonJsonDumps(j), nullptr, /*allow_exceptions=*/false);
  if (back.is_discarded() || back != j) std::abort();
}

void CheckRender(const model::ChatRequest& request) {
  const model::RenderedChat rendered = model::RenderChat(request);
  if (rendered.text.rfind("<|im_start|>", 0) != 0) std::abort();
  // Message text may hold literal placeholders too, so there are at least as many as sources.
  if (Count(rendered.text, "<|image_pad|>") < rendered.image_sources.size()) std::abort();
  if (Count(rendered.text, "<|video_pad|>") < rendered.video_sources.size()) std::abort();
  const std::string generation_prompt = "<|im_start|>assistant\n";
  if (request.add_generation_prompt &&
      (rendered.text.size() < generation_prompt.size() ||
       rendered.text.compare(rendered.text.size() - generation_prompt.size(), generation_prompt.size(),
                             generation_prompt) != 0)) {
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Json input = Json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (input.is_discarded()) return 0;
  CheckPythonDumps(input);
  model::ChatRequest request;
  Json messages = input;
  if (input.is_object()) {
    messages = input.contains("messages") ? input["messages"] : Json();
    auto tools = model::ParseChatTools(input.contains("tools") ? input["tools"] : Json());
    if (!tools.ok()) {
      if (tools.status().message().empty()) std::abort();
      return 0;
    }
    request.tools = *std::move(tools);
    request.add_generation_prompt = input.value("add_generation_prompt", Json(false)) == Json(true);
    request.add_vision_id = input.value("add_vision_id", Json(false)) == Json(true);
  }
  auto parsed = model::ParseChatMessages(messages);
  if (!parsed.ok()) {
    if (parsed.status().message().empty()) std::abort();
    return 0;
  }
  if (parsed->empty()) std::abort();  // RenderChat's precondition; the parser must refuse []
  request.messages = *std::move(parsed);
  CheckRender(request);
  return 0;
}
