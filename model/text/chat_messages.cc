#include "model/text/chat_messages.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <initializer_list>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace q3vl::model {
namespace {

using Json = nlohmann::ordered_json;

absl::Status Invalid(absl::string_view where, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", what));
}

// Python's float repr: the shortest round-trip digits, positional for 1e-4 <= |v| < 1e16
// (always with a fractional part), else d.ddde[+-]XX.
void AppendPythonFloat(double v, std::string* out) {
  if (std::isnan(v)) {
    *out += "NaN";
    return;
  }
  if (std::isinf(v)) {
    *out += v < 0 ? "-Infinity" : "Infinity";
    return;
  }
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  const std::string_view s(buf, result.ptr - buf);  // "-1.25e+03"
  const size_t e = s.find('e');
  std::string digits;
  for (char c : s.substr(0, e)) {
    if (c >= '0' && c <= '9') digits += c;
  }
  int exp = 0;
  std::string_view exp_text = s.substr(e + 1);
  if (exp_text[0] == '+') exp_text.remove_prefix(1);
  std::from_chars(exp_text.data(), exp_text.data() + exp_text.size(), exp);
  if (s[0] == '-') *out += '-';
  if (exp >= -4 && exp < 16) {
    if (exp >= 0) {
      if (digits.size() < static_cast<size_t>(exp) + 1) digits.resize(exp + 1, '0');
      const std::string frac = digits.substr(exp + 1);
      absl::StrAppend(out, digits.substr(0, exp + 1), ".", frac.empty() ? "0" : frac);
    } else {
      absl::StrAppend(out, "0.", std::string(-exp - 1, '0'), digits);
    }
    return;
  }
  *out += digits[0];
  if (digits.size() > 1) absl::StrAppend(out, ".", digits.substr(1));
  char exp_buf[16];
  std::snprintf(exp_buf, sizeof(exp_buf), "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
  *out += exp_buf;
}

void AppendPythonString(const std::string& s, std::string* out) {
  *out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': *out += "\\\""; break;
      case '\\': *out += "\\\\"; break;
      case '\n': *out += "\\n"; break;
      case '\r': *out += "\\r"; break;
      case '\t': *out += "\\t"; break;
      case '\b': *out += "\\b"; break;
      case '\f': *out += "\\f"; break;
      default:
        if (c < 0x20) {
          char esc[8];
          std::snprintf(esc, sizeof(esc), "\\u%04x", c);
          *out += esc;
        } else {
          *out += static_cast<char>(c);
        }
    }
  }
  *out += '"';
}

void AppendPythonJson(const Json& v, std::string* out) {
  switch (v.type()) {
    case Json::value_t::null: *out += "null"; break;
    case Json::value_t::boolean: *out += v.get<bool>() ? "true" : "false"; break;
    case Json::value_t::number_integer: absl::StrAppend(out, v.get<int64_t>()); break;
    case Json::value_t::number_unsigned: absl::StrAppend(out, v.get<uint64_t>()); break;
    case Json::value_t::number_float: AppendPythonFloat(v.get<double>(), out); break;
    case Json::value_t::string: AppendPythonString(v.get_ref<const std::string&>(), out); break;
    case Json::value_t::array: {
      *out += '[';
      for (size_t i = 0; i < v.size(); ++i) {
        if (i > 0) *out += ", ";
        AppendPythonJson(v[i], out);
      }
      *out += ']';
      break;
    }
    case Json::value_t::object: {
      *out += '{';
      bool first = true;
      for (const auto& [key, value] : v.items()) {
        if (!first) *out += ", ";
        first = false;
        AppendPythonString(key, out);
        *out += ": ";
        AppendPythonJson(value, out);
      }
      *out += '}';
      break;
    }
    default: *out += "null"; break;  // binary / discarded: not produced by parsing
  }
}

// The first of `keys` present in `item`; a key ending in "_url" may also hold {"url": "..."}.
// NotFound when none is present; InvalidArgument for a present key of the wrong form.
absl::StatusOr<std::string> FindSource(const Json& item, std::initializer_list<const char*> keys) {
  for (const char* key : keys) {
    const auto it = item.find(key);
    if (it == item.end()) continue;
    const bool url_key = absl::EndsWith(key, "_url");
    const Json* value = &*it;
    if (url_key && value->is_object() && value->contains("url")) value = &(*value)["url"];
    if (!value->is_string() || value->get_ref<const std::string&>().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", key, "\" must be a non-empty string", url_key ? " or {\"url\": string}" : "", ", got ",
          value->type_name()));
    }
    return value->get<std::string>();
  }
  return absl::NotFoundError("no source");
}

absl::StatusOr<ContentPart> ParsePart(const Json& item, const std::string& where) {
  if (!item.is_object()) return Invalid(where, absl::StrCat("content item is a ", item.type_name(), ", not an object"));
  std::string type;
  if (const auto t = item.find("type"); t != item.end()) {
    if (!t->is_string()) return Invalid(where, absl::StrCat("\"type\" must be a string, got ", t->type_name()));
    type = t->get<std::string>();
  }
  ContentPart part;
  if (const auto t = item.find("text"); t != item.end()) {
    if (!t->is_string()) return Invalid(where, absl::StrCat("\"text\" must be a string, got ", t->type_name()));
    part.text = t->get<std::string>();
  }
  const bool image = type == "image" || type == "image_url" || item.contains("image") || item.contains("image_url");
  const bool video = type == "video" || type == "video_url" || item.contains("video") || item.contains("video_url");
  if (image || video) {
    part.kind = image ? ContentPart::Kind::kImage : ContentPart::Kind::kVideo;
    auto source = image ? FindSource(item, {"image", "url", "path", "base64", "image_url"})
                        : FindSource(item, {"video", "url", "path", "video_url"});
    if (absl::IsNotFound(source.status())) {
      return Invalid(where, image ? "image item without a source (image, url, path, base64 or image_url)"
                                  : "video item without a source (video, url, path or video_url)");
    }
    if (!source.ok()) return Invalid(where, source.status().message());
    part.source = *std::move(source);
    return part;
  }
  if (part.text.has_value()) return part;
  if (type == "text") return Invalid(where, "text item without \"text\"");
  if (!type.empty()) return Invalid(where, absl::StrCat("unsupported content item type \"", type, "\""));
  return Invalid(where, "content item has no \"type\" and no image, video or text key");
}

absl::StatusOr<ToolCall> ParseToolCall(const Json& call, const std::string& where) {
  if (!call.is_object()) return Invalid(where, absl::StrCat("tool call is a ", call.type_name(), ", not an object"));
  const Json* fn = &call;
  // `{% if tool_call.function %}`: a missing, null or empty "function" means the call itself.
  if (const auto f = call.find("function"); f != call.end() && !f->is_null() && !(f->is_object() && f->empty())) {
    if (!f->is_object()) return Invalid(where, absl::StrCat("\"function\" must be an object, got ", f->type_name()));
    fn = &*f;
  }
  const auto name = fn->find("name");
  if (name == fn->end() || !name->is_string()) return Invalid(where, "tool call without a string \"name\"");
  const auto args = fn->find("arguments");
  if (args == fn->end()) return Invalid(where, "tool call without \"arguments\"");
  ToolCall out{.name = name->get<std::string>()};
  out.arguments = args->is_string() ? args->get<std::string>() : PythonJsonDumps(*args);
  return out;
}

absl::StatusOr<ChatRole> ParseRole(const Json& message, const std::string& where) {
  const auto role = message.find("role");
  if (role == message.end()) return Invalid(where, "missing \"role\"");
  if (!role->is_string()) return Invalid(where, absl::StrCat("\"role\" must be a string, got ", role->type_name()));
  const std::string& r = role->get_ref<const std::string&>();
  if (r == "system") return ChatRole::kSystem;
  if (r == "user") return ChatRole::kUser;
  if (r == "assistant") return ChatRole::kAssistant;
  if (r == "tool") return ChatRole::kTool;
  return Invalid(where, absl::StrCat("unknown role \"", r, "\" (system, user, assistant or tool)"));
}

absl::StatusOr<ChatMessage> ParseMessage(const Json& message, const std::string& where) {
  if (!message.is_object()) {
    return Invalid(where, absl::StrCat("message is a ", message.type_name(), ", not an object"));
  }
  ChatMessage out;
  Q3VL_ASSIGN_OR_RETURN(out.role, ParseRole(message, where));
  const auto content = message.find("content");
  if (content == message.end() || content->is_null()) {
    // OpenAI allows an assistant turn that only calls tools to omit its content.
    if (out.role != ChatRole::kAssistant) return Invalid(where, "missing \"content\"");
  } else if (content->is_string()) {
    out.content = content->get<std::string>();
  } else if (content->is_array()) {
    out.content_is_list = true;
    for (size_t j = 0; j < content->size(); ++j) {
      Q3VL_ASSIGN_OR_RETURN(ContentPart part, ParsePart((*content)[j], absl::StrCat(where, ".content[", j, "]")));
      out.parts.push_back(std::move(part));
    }
  } else {
    return Invalid(where, absl::StrCat("\"content\" must be a string or a list, got ", content->type_name()));
  }
  const auto calls = message.find("tool_calls");
  if (out.role != ChatRole::kAssistant || calls == message.end() || calls->is_null()) return out;
  if (!calls->is_array()) {
    return Invalid(where, absl::StrCat("\"tool_calls\" must be a list, got ", calls->type_name()));
  }
  for (size_t j = 0; j < calls->size(); ++j) {
    Q3VL_ASSIGN_OR_RETURN(ToolCall call, ParseToolCall((*calls)[j], absl::StrCat(where, ".tool_calls[", j, "]")));
    out.tool_calls.push_back(std::move(call));
  }
  return out;
}

}  // namespace

std::string PythonJsonDumps(const Json& value) {
  std::string out;
  AppendPythonJson(value, &out);
  return out;
}

absl::StatusOr<std::vector<ChatMessage>> ParseChatMessages(const Json& messages) {
  if (!messages.is_array() || messages.empty()) {
    return absl::InvalidArgumentError("messages must be a non-empty list of message objects");
  }
  std::vector<ChatMessage> out;
  out.reserve(messages.size());
  for (size_t i = 0; i < messages.size(); ++i) {
    Q3VL_ASSIGN_OR_RETURN(ChatMessage m, ParseMessage(messages[i], absl::StrCat("messages[", i, "]")));
    out.push_back(std::move(m));
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> ParseChatTools(const Json& tools) {
  std::vector<std::string> out;
  if (tools.is_null()) return out;
  if (!tools.is_array()) {
    return absl::InvalidArgumentError(absl::StrCat("tools must be a list, got ", tools.type_name()));
  }
  for (const Json& tool : tools) out.push_back(PythonJsonDumps(tool));
  return out;
}

}  // namespace q3vl::model
