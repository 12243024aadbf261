// Chat messages in the OpenAI / Hugging Face form, parsed and validated from JSON for the chat
// template (chat_template.h). Plain values that own their strings; the functions are stateless
// and thread-safe.
#ifndef Q3VL_MODEL_TEXT_CHAT_MESSAGES_H_
#define Q3VL_MODEL_TEXT_CHAT_MESSAGES_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace q3vl::model {

enum class ChatRole { kSystem, kUser, kAssistant, kTool };

// One item of a content list, classified as the template does: an image if "type" is "image" or
// the item has an "image" or "image_url" key; else a video if "type" is "video" or "video_url" or
// it has a "video" or "video_url" key; else text if it has a "text" key. (The template itself
// knows no "video_url"; like transformers' image_url rewrite, such items become videos here.)
struct ContentPart {
  enum class Kind { kText, kImage, kVideo };
  Kind kind = Kind::kText;
  // The item's "text" key: always set for kText. System and assistant messages render only this,
  // whatever the kind (as the template does).
  std::optional<std::string> text;
  // kImage: the first of "image", "url", "path", "base64", "image_url" (a string or {"url": s});
  // kVideo: the first of "video", "url", "path", "video_url" (likewise). Empty for kText.
  std::string source;
};

struct ToolCall {
  std::string name;       // "function.name", or "name" when the call has no "function"
  std::string arguments;  // a string verbatim; any other JSON value as tojson writes it
};

struct ChatMessage {
  ChatRole role = ChatRole::kUser;
  bool content_is_list = false;      // content was a list of parts rather than a string
  std::string content;               // when !content_is_list
  std::vector<ContentPart> parts;    // when content_is_list
  std::vector<ToolCall> tool_calls;  // read for assistant messages only (the template's rule)

  // Jinja truthiness of `message.content`: a non-empty string or a non-empty list.
  bool HasContent() const { return content_is_list ? !parts.empty() : !content.empty(); }
};

// Parses a JSON array of messages. Each is an object with "role" (system, user, assistant, tool)
// and "content" (a string or a list of objects; null or absent only for assistant messages, read
// as ""), and for assistants optional "tool_calls" (a list of {"function": {"name", "arguments"}}
// or {"name", "arguments"}). Other keys are ignored. Errors are InvalidArgument and name the
// message, e.g. "messages[2].content[1]: image item without a source (...)". Pass an ordered_json
// so tool-call arguments keep their key order, as Python's json.dumps does.
absl::StatusOr<std::vector<ChatMessage>> ParseChatMessages(const nlohmann::ordered_json& messages);

// The `tools` argument: null or a JSON array; each tool as the template's tojson writes it.
absl::StatusOr<std::vector<std::string>> ParseChatTools(const nlohmann::ordered_json& tools);

// Python's json.dumps(value, ensure_ascii=False): separators ", " and ": ", key order kept,
// floats as Python's repr, only '"', '\\' and control characters escaped.
std::string PythonJsonDumps(const nlohmann::ordered_json& value);

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_TEXT_CHAT_MESSAGES_H_
