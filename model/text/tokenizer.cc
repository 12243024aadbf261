#include "model/text/tokenizer.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <sstream>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "model/text/bpe.h"
#include "model/text/byte_level.h"
#include "model/text/pretokenizer.h"
#include "model/text/tokenizer_json.h"

namespace q3vl::model {

struct Tokenizer::Impl {
  bool nfc = false;
  std::unique_ptr<SplitRegex> split;
  std::unique_ptr<BytePairEncoder> bpe;
  std::vector<AddedToken> added_tokens;
  absl::flat_hash_map<std::string, int32_t> added_ids;  // content -> id
  // Indices into added_tokens of the tokens starting with each byte, longest first.
  std::array<std::vector<int32_t>, 256> added_by_first_byte;
  std::string token_bytes;              // every token's bytes, back to back
  std::vector<uint32_t> token_offsets;  // [vocab_size + 1]: id -> [offsets[id], offsets[id + 1])
  std::vector<bool> special;            // [vocab_size]

  // Appends the ids of a text segment that holds no added token.
  void EncodeSegment(absl::string_view segment, std::string* buffer, std::vector<int32_t>* ids) const {
    if (segment.empty()) return;
    const absl::string_view normalized = nfc ? NormalizeNfc(segment, buffer) : segment;
    split->Split(normalized, [&](absl::string_view piece) { bpe->Encode(piece, ids); });
  }

  // Index into added_tokens of the longest added token at the start of `text`, or -1.
  int32_t MatchAddedToken(absl::string_view text) const {
    for (int32_t index : added_by_first_byte[static_cast<uint8_t>(text[0])]) {
      const std::string& content = added_tokens[index].content;
      if (text.size() >= content.size() && text.compare(0, content.size(), content) == 0) return index;
    }
    return -1;
  }
};

namespace {

// What the ByteLevel decoder makes of a token spelling: its bytes when every char is in the
// byte-level alphabet, else the spelling's own UTF-8 (as tokenizers' ByteLevel decoder does).
std::string DecodedBytes(absl::string_view spelling) {
  std::optional<std::string> bytes = ByteLevelToBytes(spelling);
  return bytes ? std::move(*bytes) : std::string(spelling);
}

}  // namespace

absl::StatusOr<Tokenizer> Tokenizer::FromFile(const std::string& tokenizer_json_path) {
  std::ifstream file(tokenizer_json_path, std::ios::binary);
  if (!file) return absl::NotFoundError(absl::StrCat(tokenizer_json_path, ": cannot open"));
  std::ostringstream text;
  text << file.rdbuf();
  if (file.bad()) return absl::DataLossError(absl::StrCat(tokenizer_json_path, ": read failed"));
  const std::string content = text.str();
  absl::StatusOr<Tokenizer> tokenizer = FromJson(content, tokenizer_json_path);
  // A symbolic link that a copy or a checkout flattened into a text file holding its target.
  const absl::string_view target = absl::StripTrailingAsciiWhitespace(content);
  if (!tokenizer.ok() && target.size() < 1024 && absl::EndsWith(target, ".json") &&
      target.find('{') == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        tokenizer_json_path, ": holds the path '", target,
        "' instead of JSON: a symbolic link flattened into a file; copy the real tokenizer.json there"));
  }
  return tokenizer;
}

absl::StatusOr<Tokenizer> Tokenizer::FromJson(absl::string_view json_text, absl::string_view source) {
  auto spec = ParseTokenizerJson(json_text);
  if (!spec.ok()) return Annotate(spec.status(), source);
  auto impl = std::make_unique<Impl>();
  impl->nfc = spec->nfc;
  auto split = SplitRegex::Compile(spec->split_pattern);
  if (!split.ok()) return Annotate(split.status(), absl::StrCat(source, ": pre_tokenizer"));
  impl->split = std::move(*split);
  impl->bpe = std::make_unique<BytePairEncoder>(spec->byte_ids, spec->merges);

  std::vector<std::string> bytes = std::move(spec->vocab);
  for (std::string& spelling : bytes) spelling = DecodedBytes(spelling);
  int32_t num_ids = static_cast<int32_t>(bytes.size());
  for (const AddedToken& t : spec->added_tokens) num_ids = std::max(num_ids, t.id + 1);
  bytes.resize(num_ids);
  impl->special.assign(num_ids, false);
  impl->added_tokens = std::move(spec->added_tokens);
  for (size_t i = 0; i < impl->added_tokens.size(); ++i) {
    const AddedToken& t = impl->added_tokens[i];
    bytes[t.id] = DecodedBytes(t.content);
    impl->special[t.id] = t.special;
    impl->added_ids[t.content] = t.id;
    impl->added_by_first_byte[static_cast<uint8_t>(t.content[0])].push_back(static_cast<int32_t>(i));
  }
  for (std::vector<int32_t>& candidates : impl->added_by_first_byte) {
    std::stable_sort(candidates.begin(), candidates.end(), [&](int32_t a, int32_t b) {
      return impl->added_tokens[a].content.size() > impl->added_tokens[b].content.size();
    });
  }
  impl->token_offsets.reserve(num_ids + 1);
  for (const std::string& b : bytes) {
    impl->token_offsets.push_back(static_cast<uint32_t>(impl->token_bytes.size()));
    impl->token_bytes += b;
  }
  impl->token_offsets.push_back(static_cast<uint32_t>(impl->token_bytes.size()));
  return Tokenizer(std::move(impl));
}

Tokenizer::Tokenizer(std::unique_ptr<const Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::Encode(absl::string_view text) const {
  std::string sanitized;
  if (!IsValidUtf8(text)) {
    AppendUtf8Lossy(text, /*final=*/true, &sanitized);
    text = sanitized;
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 4 + 1);
  std::string buffer;
  size_t segment_start = 0;
  for (size_t i = 0; i < text.size();) {
    const int32_t match = impl_->MatchAddedToken(text.substr(i));
    if (match < 0) {
      ++i;
      continue;
    }
    impl_->EncodeSegment(text.substr(segment_start, i - segment_start), &buffer, &ids);
    const AddedToken& token = impl_->added_tokens[match];
    ids.push_back(token.id);
    i += token.content.size();
    segment_start = i;
  }
  impl_->EncodeSegment(text.substr(segment_start), &buffer, &ids);
  return ids;
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int32_t id : ids) {
    if (skip_special_tokens && IsSpecial(id)) continue;
    const absl::string_view b = TokenBytes(id);
    bytes.append(b.data(), b.size());
  }
  if (IsValidUtf8(bytes)) return bytes;
  std::string text;
  AppendUtf8Lossy(bytes, /*final=*/true, &text);
  return text;
}

std::optional<int32_t> Tokenizer::TokenId(absl::string_view token) const {
  const auto it = impl_->added_ids.find(token);
  if (it == impl_->added_ids.end()) return std::nullopt;
  return it->second;
}

int32_t Tokenizer::vocab_size() const { return static_cast<int32_t>(impl_->special.size()); }

bool Tokenizer::IsSpecial(int32_t id) const { return id >= 0 && id < vocab_size() && impl_->special[id]; }

absl::string_view Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return {};
  const uint32_t begin = impl_->token_offsets[id];
  return absl::string_view(impl_->token_bytes).substr(begin, impl_->token_offsets[id + 1] - begin);
}

const std::vector<AddedToken>& Tokenizer::added_tokens() const { return impl_->added_tokens; }

std::string StreamDecoder::Push(int32_t id) {
  if (skip_special_tokens_ && tokenizer_->IsSpecial(id)) return "";
  const absl::string_view bytes = tokenizer_->TokenBytes(id);
  pending_.append(bytes.data(), bytes.size());
  std::string text;
  pending_.erase(0, AppendUtf8Lossy(pending_, /*final=*/false, &text));
  return text;
}

std::string StreamDecoder::Flush() {
  std::string text;
  AppendUtf8Lossy(pending_, /*final=*/true, &text);
  pending_.clear();
  return text;
}

}  // namespace q3vl::model
