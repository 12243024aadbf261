// q3vl chat-template --model DIR: one JSON object {"messages": [...], "kwargs": {...}} on stdin
// -> {"text": ..., "ids": [...]} on stdout: the chat template rendered as transformers'
// apply_chat_template(messages, tokenize=False, **kwargs) renders it, and the tokenizer's ids of
// that text (placeholders not expanded). Like golden/inputs/chat_template/cases.json.
#include <iostream>
#include <iterator>
#include <string>

#include "absl/strings/str_cat.h"
#include "launcher/options.h"
#include "model/text/chat_messages.h"
#include "model/text/chat_template.h"
#include "model/text/tokenizer.h"
#include "nlohmann/json.hpp"

namespace q3vl::launcher {
namespace {

// Key order matters: tool definitions are printed in the order the caller wrote them.
using Json = nlohmann::ordered_json;

absl::StatusOr<bool> BoolKwarg(const Json& kwargs, const char* key) {
  if (!kwargs.contains(key) || kwargs[key].is_null()) return false;
  if (!kwargs[key].is_boolean()) {
    return absl::InvalidArgumentError(absl::StrCat("kwargs.", key, " must be true or false, got ", kwargs[key].dump()));
  }
  return kwargs[key].get<bool>();
}

// The request as transformers takes it; every error names the part of the input at fault.
absl::StatusOr<model::ChatRequest> ParseRequest(const std::string& text) {
  Json input = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (input.is_discarded()) return absl::InvalidArgumentError("stdin is not valid JSON");
  if (!input.is_object() || !input.contains("messages")) {
    return absl::InvalidArgumentError("stdin must hold one JSON object with \"messages\" (and optional \"kwargs\")");
  }
  const Json kwargs = input.contains("kwargs") ? input["kwargs"] : Json::object();
  if (!kwargs.is_object() && !kwargs.is_null()) return absl::InvalidArgumentError("\"kwargs\" must be an object");
  model::ChatRequest request;
  absl::StatusOr<std::vector<model::ChatMessage>> messages = model::ParseChatMessages(input["messages"]);
  if (!messages.ok()) return messages.status();
  request.messages = *std::move(messages);
  if (kwargs.is_null()) return request;
  absl::StatusOr<std::vector<std::string>> tools =
      model::ParseChatTools(kwargs.contains("tools") ? kwargs["tools"] : Json());
  if (!tools.ok()) return tools.status();
  request.tools = *std::move(tools);
  absl::StatusOr<bool> add_generation_prompt = BoolKwarg(kwargs, "add_generation_prompt");
  if (!add_generation_prompt.ok()) return add_generation_prompt.status();
  absl::StatusOr<bool> add_vision_id = BoolKwarg(kwargs, "add_vision_id");
  if (!add_vision_id.ok()) return add_vision_id.status();
  request.add_generation_prompt = *add_generation_prompt;
  request.add_vision_id = *add_vision_id;
  return request;
}

}  // namespace

int ChatTemplateCommand(const Args& args) {
  constexpr char kName[] = "chat-template";
  po::options_description options(
      "Reads one JSON object from stdin:\n"
      "  {\"messages\": [...], \"kwargs\": {\"add_generation_prompt\": bool, \"add_vision_id\": bool, \"tools\": [...]}}\n"
      "(kwargs and each of its keys optional, false / none by default; other keys are ignored, as the\n"
      "template reads no others) and prints one JSON line {\"text\": \"...\", \"ids\": [...]}: the Qwen3-VL\n"
      "chat template rendered as transformers' apply_chat_template(messages, tokenize=False, **kwargs) does,\n"
      "and the token ids of that text. Images and videos stay one <|image_pad|> / <|video_pad|> each\n"
      "(not expanded to their token counts; no file is read). Errors: one line on stderr, exit 1.\n\n"
      "options");
  options.add_options()
      ("model", po::value<std::string>()->required(),
       "model directory: tokenizer.json and a declared chat template (only the Qwen3-VL Instruct one is built in)");
  po::positional_options_description positional;
  auto parsed = ParseArgs(kName, "--model DIR < request.json", options, positional, args);
  if (std::holds_alternative<int>(parsed)) return std::get<int>(parsed);
  const std::string model_dir = std::get<po::variables_map>(parsed)["model"].as<std::string>();

  auto tokenizer = model::Tokenizer::FromFile(model_dir + "/tokenizer.json");
  if (!tokenizer.ok()) return Fail(kName, tokenizer.status());
  if (absl::Status s = model::CheckModelChatTemplate(model_dir); !s.ok()) return Fail(kName, s);
  const std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  absl::StatusOr<model::ChatRequest> request = ParseRequest(input);
  if (!request.ok()) return Fail(kName, request.status());
  const model::RenderedChat rendered = model::RenderChat(*request);
  const Json output = {{"text", rendered.text}, {"ids", tokenizer->Encode(rendered.text)}};
  std::cout << output.dump(-1, ' ', false, Json::error_handler_t::replace) << std::endl;
  return 0;
}

}  // namespace q3vl::launcher
