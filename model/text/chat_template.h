// The Qwen3-VL Instruct chat template, written out in C++ (there is no Jinja engine): renders
// parsed chat messages (chat_messages.h) to exactly the text transformers renders, and refuses a
// model directory that declares any other template. Stateless functions; thread-safe.
#ifndef Q3VL_MODEL_TEXT_CHAT_TEMPLATE_H_
#define Q3VL_MODEL_TEXT_CHAT_TEMPLATE_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "model/text/chat_messages.h"

namespace q3vl::model {

struct ChatRequest {
  std::vector<ChatMessage> messages;  // REQUIRES: non-empty (ParseChatMessages ensures it)
  std::vector<std::string> tools;     // tool definitions as tojson text (ParseChatTools)
  bool add_generation_prompt = false;
  // The final message (an assistant's) is left open: rendered without its end of turn, so the
  // model continues it (transformers' continue_final_message). REQUIRES: the final message is
  // an assistant's and add_generation_prompt is false (CheckContinueFinalMessage).
  bool continue_final_message = false;
  bool add_vision_id = false;  // "Picture N: " / "Video N: ", counted over the whole conversation
};

struct RenderedChat {
  // The prompt: one <|vision_start|><|image_pad|><|vision_end|> per image and one
  // <|vision_start|><|video_pad|><|vision_end|> per video; prompt.h expands them.
  std::string text;
  std::vector<std::string> image_sources;  // per image placeholder, in prompt order
  std::vector<std::string> video_sources;  // per video placeholder, in prompt order
};

// The template's rules: a system message is rendered only when it is messages[0] (later ones are
// dropped, as the template does); system and assistant content lists render only their "text"
// keys; images and videos count only in user and tool messages; with tools, the system turn
// carries the tool list; consecutive tool messages share one user turn of <tool_response>s; a
// tool call starts on a new line unless it is the first of a message with empty content.
RenderedChat RenderChat(const ChatRequest& request);

// InvalidArgument unless continue_final_message's requirements hold (OK when it is unset).
absl::Status CheckContinueFinalMessage(const ChatRequest& request);

// The built-in template's text, byte for byte model/assets/qwen3_vl/chat_template.jinja.
absl::string_view Qwen3VlChatTemplate();

// OK iff `template_text` is exactly the built-in template; `source` names it in the error.
absl::Status CheckChatTemplate(absl::string_view template_text, absl::string_view source);

// Checks the template a model directory declares, found where transformers' processor looks
// first: chat_template.jinja, then chat_template.json, processor_config.json, tokenizer_config.json
// (key "chat_template"; a list of {name, template} uses "default"). NotFound when none declares
// one; Unimplemented ("unsupported chat template in DIR/FILE: ...") when it is not the built-in.
absl::Status CheckModelChatTemplate(const std::string& model_dir);

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_TEXT_CHAT_TEMPLATE_H_
