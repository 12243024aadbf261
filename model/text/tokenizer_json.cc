#include "model/text/tokenizer_json.h"

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "model/text/byte_level.h"
#include "nlohmann/json.hpp"

namespace q3vl::model {
namespace {

using Json = nlohmann::json;

constexpr int64_t kMaxTokenId = (int64_t{1} << 24) - 1;

absl::Status Invalid(absl::string_view path, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", message));
}

absl::Status Unsupported(absl::string_view path, const Json& value, absl::string_view supported) {
  std::string shown = value.dump();
  if (shown.size() > 200) shown = shown.substr(0, 200) + "...";
  return Invalid(path, absl::StrCat("not supported: ", shown, " (supported: ", supported, ")"));
}

// The member `key` of object `object`, or nullptr when it is absent or null.
const Json* Member(const Json& object, const char* key) {
  const auto it = object.find(key);
  return it == object.end() || it->is_null() ? nullptr : &*it;
}

std::string TypeOf(const Json& object) {
  const Json* type = Member(object, "type");
  return type != nullptr && type->is_string() ? type->get<std::string>() : "";
}

// True when `object.key` is absent, null, or equal to `expected`.
bool AbsentOr(const Json& object, const char* key, const Json& expected) {
  const Json* value = Member(object, key);
  return value == nullptr || *value == expected;
}

std::string Utf8(char32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {  // the byte-level alphabet stays below U+0800
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

absl::Status ParseNormalizer(const Json& root, TokenizerSpec* spec) {
  const Json* normalizer = Member(root, "normalizer");
  if (normalizer == nullptr) return absl::OkStatus();
  const Json* single = normalizer;
  if (TypeOf(*normalizer) == "Sequence") {
    const Json* list = Member(*normalizer, "normalizers");
    if (list == nullptr || !list->is_array() || list->size() > 1) {
      return Unsupported("normalizer", *normalizer, "NFC, a Sequence of at most one NFC, or null");
    }
    if (list->empty()) return absl::OkStatus();
    single = &(*list)[0];
  }
  if (TypeOf(*single) != "NFC") return Unsupported("normalizer", *normalizer, "NFC or null");
  spec->nfc = true;
  return absl::OkStatus();
}

absl::Status ParsePreTokenizer(const Json& root, TokenizerSpec* spec) {
  constexpr char kSupported[] =
      "Sequence of Split (Regex pattern, behavior Isolated, invert false) and ByteLevel "
      "(add_prefix_space false, use_regex false)";
  const Json* pre = Member(root, "pre_tokenizer");
  if (pre == nullptr) return Invalid("pre_tokenizer", "missing");
  const Json* list = Member(*pre, "pretokenizers");
  if (TypeOf(*pre) != "Sequence" || list == nullptr || !list->is_array() || list->size() != 2) {
    return Unsupported("pre_tokenizer", *pre, kSupported);
  }
  const Json& split = (*list)[0];
  const Json& byte_level = (*list)[1];
  const Json* pattern = Member(split, "pattern");
  const Json* regex = pattern != nullptr && pattern->is_object() ? Member(*pattern, "Regex") : nullptr;
  if (TypeOf(split) != "Split" || regex == nullptr || !regex->is_string() ||
      !AbsentOr(split, "behavior", "Isolated") || !AbsentOr(split, "invert", false)) {
    return Unsupported("pre_tokenizer.pretokenizers[0]", split, kSupported);
  }
  if (TypeOf(byte_level) != "ByteLevel" || !AbsentOr(byte_level, "add_prefix_space", false) ||
      !AbsentOr(byte_level, "use_regex", false)) {
    return Unsupported("pre_tokenizer.pretokenizers[1]", byte_level, kSupported);
  }
  spec->split_pattern = regex->get<std::string>();
  return absl::OkStatus();
}

absl::Status ParseOtherStages(const Json& root) {
  const Json* decoder = Member(root, "decoder");
  if (decoder == nullptr || TypeOf(*decoder) != "ByteLevel") {
    return Unsupported("decoder", decoder ? *decoder : Json(), "ByteLevel");
  }
  const Json* post = Member(root, "post_processor");
  if (post != nullptr && TypeOf(*post) != "ByteLevel") return Unsupported("post_processor", *post, "ByteLevel or null");
  if (const Json* truncation = Member(root, "truncation")) return Unsupported("truncation", *truncation, "null");
  if (const Json* padding = Member(root, "padding")) return Unsupported("padding", *padding, "null");
  return absl::OkStatus();
}

absl::Status ParseAddedTokens(const Json& root, TokenizerSpec* spec) {
  const Json* added = Member(root, "added_tokens");
  if (added == nullptr) return absl::OkStatus();
  if (!added->is_array()) return Invalid("added_tokens", "must be an array");
  absl::flat_hash_set<std::string> contents;
  for (size_t i = 0; i < added->size(); ++i) {
    const Json& t = (*added)[i];
    const std::string path = absl::StrCat("added_tokens[", i, "]");
    const Json* id = t.is_object() ? Member(t, "id") : nullptr;
    const Json* content = t.is_object() ? Member(t, "content") : nullptr;
    if (id == nullptr || !id->is_number_integer() || *id < 0 || *id > kMaxTokenId) {
      return Invalid(path, absl::StrCat("needs an integer \"id\" in [0, ", kMaxTokenId, "]"));
    }
    if (content == nullptr || !content->is_string() || content->get_ref<const std::string&>().empty()) {
      return Invalid(path, "needs a non-empty string \"content\"");
    }
    for (const char* flag : {"lstrip", "rstrip", "single_word", "normalized"}) {
      if (!AbsentOr(t, flag, false)) return Unsupported(path, t, absl::StrCat("\"", flag, "\": false"));
    }
    const Json* special = Member(t, "special");
    if (special != nullptr && !special->is_boolean()) return Invalid(path, "\"special\" must be a boolean");
    AddedToken token{.id = id->get<int32_t>(), .content = content->get<std::string>(),
                     .special = special != nullptr && special->get<bool>()};
    if (!contents.insert(token.content).second) {
      return Invalid(path, absl::StrCat("duplicate content ", content->dump()));
    }
    spec->added_tokens.push_back(std::move(token));
  }
  return absl::OkStatus();
}

// Splits one merges entry into its two token spellings: "a b" or ["a", "b"].
absl::Status MergeParts(const Json& entry, const std::string& path, std::string* left, std::string* right) {
  if (entry.is_array() && entry.size() == 2 && entry[0].is_string() && entry[1].is_string()) {
    *left = entry[0].get<std::string>();
    *right = entry[1].get<std::string>();
    return absl::OkStatus();
  }
  if (entry.is_string()) {
    const std::string& line = entry.get_ref<const std::string&>();
    const size_t space = line.find(' ');
    if (space != std::string::npos && line.find(' ', space + 1) == std::string::npos) {
      *left = line.substr(0, space);
      *right = line.substr(space + 1);
      return absl::OkStatus();
    }
  }
  return Invalid(path, absl::StrCat("must be \"left right\" or [\"left\", \"right\"], got ", entry.dump()));
}

// The BPE model's options: only those that leave plain byte-level BPE are accepted.
absl::Status CheckModelOptions(const Json& model) {
  static const Json kNull;
  auto shown = [&](const char* key) -> const Json& { return Member(model, key) ? model[key] : kNull; };
  if (TypeOf(model) != "BPE") return Unsupported("model.type", shown("type"), "BPE");
  if (!AbsentOr(model, "dropout", 0.0)) return Unsupported("model.dropout", shown("dropout"), "null");
  if (!AbsentOr(model, "ignore_merges", false)) {
    return Unsupported("model.ignore_merges", shown("ignore_merges"), "false");
  }
  for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (!AbsentOr(model, affix, "")) return Unsupported(absl::StrCat("model.", affix), shown(affix), "\"\" or null");
  }
  return absl::OkStatus();
}

// Fills spec->vocab and spec->byte_ids; `ids` maps spellings (views into `vocab`) to ids.
absl::Status ParseVocab(const Json& vocab, TokenizerSpec* spec, absl::flat_hash_map<absl::string_view, int32_t>* ids) {
  if (!vocab.is_object() || vocab.empty()) {
    return Invalid("model.vocab", "missing or empty (an object token -> id is required)");
  }
  ids->reserve(vocab.size());
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id < 0 || id > kMaxTokenId) {
      return Invalid(absl::StrCat("model.vocab[", Json(token).dump(), "]"),
                     absl::StrCat("id must be an integer in [0, ", kMaxTokenId, "], got ", id.dump()));
    }
    if (token.empty()) return Invalid("model.vocab", "has an empty token");
    const int32_t i = id.get<int32_t>();
    if (static_cast<size_t>(i) >= spec->vocab.size()) spec->vocab.resize(i + 1);
    if (!spec->vocab[i].empty()) return Invalid("model.vocab", absl::StrCat("id ", i, " is used twice"));
    spec->vocab[i] = token;
    (*ids)[token] = i;
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = ids->find(Utf8(ByteLevelChar(static_cast<uint8_t>(b))));
    if (it == ids->end()) {
      return Invalid("model.vocab", absl::StrCat("no token for byte ", b, " (a byte-level vocab needs all 256)"));
    }
    spec->byte_ids[b] = it->second;
  }
  return absl::OkStatus();
}

absl::Status ParseMerges(const Json& merges, const absl::flat_hash_map<absl::string_view, int32_t>& ids,
                         TokenizerSpec* spec) {
  spec->merges.reserve(merges.size());
  std::string left, right;
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string path = absl::StrCat("model.merges[", i, "]");
    Q3VL_RETURN_IF_ERROR(MergeParts(merges[i], path, &left, &right));
    const auto l = ids.find(left), r = ids.find(right), m = ids.find(left + right);
    for (const auto& [it, what] : {std::pair{l, &left}, std::pair{r, &right}}) {
      if (it == ids.end()) return Invalid(path, absl::StrCat("token ", Json(*what).dump(), " is not in model.vocab"));
    }
    if (m == ids.end()) {
      return Invalid(path, absl::StrCat("merged token ", Json(left + right).dump(), " is not in model.vocab"));
    }
    spec->merges.push_back({l->second, r->second, m->second});
  }
  return absl::OkStatus();
}

absl::Status ParseModel(const Json& root, TokenizerSpec* spec) {
  const Json* model = Member(root, "model");
  if (model == nullptr || !model->is_object()) {
    return Invalid("model", "missing (an object with type BPE is required)");
  }
  Q3VL_RETURN_IF_ERROR(CheckModelOptions(*model));
  const Json* vocab = Member(*model, "vocab");
  if (vocab == nullptr) return Invalid("model.vocab", "missing (an object token -> id is required)");
  absl::flat_hash_map<absl::string_view, int32_t> ids;
  Q3VL_RETURN_IF_ERROR(ParseVocab(*vocab, spec, &ids));
  const Json* merges = Member(*model, "merges");
  if (merges == nullptr || !merges->is_array()) return Invalid("model.merges", "missing (an array is required)");
  return ParseMerges(*merges, ids, spec);
}

absl::StatusOr<TokenizerSpec> ParseRoot(const Json& root) {
  if (!root.is_object()) return Invalid("(top level)", "must be a JSON object");
  TokenizerSpec spec;
  Q3VL_RETURN_IF_ERROR(ParseModel(root, &spec));
  Q3VL_RETURN_IF_ERROR(ParseNormalizer(root, &spec));
  Q3VL_RETURN_IF_ERROR(ParsePreTokenizer(root, &spec));
  Q3VL_RETURN_IF_ERROR(ParseOtherStages(root));
  Q3VL_RETURN_IF_ERROR(ParseAddedTokens(root, &spec));
  return spec;
}

}  // namespace

absl::StatusOr<TokenizerSpec> ParseTokenizerJson(absl::string_view json_text) {
  Json root;
  try {
    root = Json::parse(json_text.begin(), json_text.end());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("not valid JSON: ", e.what()));
  }
  try {
    return ParseRoot(root);
  } catch (const Json::exception& e) {  // a type mismatch the checks above did not foresee
    return absl::InvalidArgumentError(absl::StrCat("unexpected JSON structure: ", e.what()));
  }
}

}  // namespace q3vl::model
