// The tokenizer against Hugging Face tokenizers' goldens (every encode.jsonl and decode.jsonl
// line, byte exact), the stream decoder against Decode, thread-safety of the piece cache, and
// clear errors for malformed or unsupported tokenizer.json files.
#include "model/text/tokenizer.h"

#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "gtest/gtest.h"
#include "model/text/byte_level.h"
#include "model/text/pretokenizer.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace q3vl::model {
namespace {

using Json = nlohmann::json;

std::string TokenizerPath() { return testing::SourcePath("model/assets/qwen3/tokenizer.json"); }

std::vector<Json> ReadJsonLines(const std::string& name) {
  std::ifstream file(testing::TestDataDir() + "/inputs/tokenizer/" + name);
  std::vector<Json> lines;
  for (std::string line; std::getline(file, line);) lines.push_back(Json::parse(line));
  return lines;
}

std::string Hex(absl::string_view bytes) {
  std::string hex;
  for (unsigned char c : bytes) {
    hex += "0123456789abcdef"[c >> 4];
    hex += "0123456789abcdef"[c & 15];
  }
  return hex;
}

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto tokenizer = Tokenizer::FromFile(TokenizerPath());
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = new Tokenizer(std::move(*tokenizer));
  }
  static void TearDownTestSuite() { delete tokenizer_; }

  // Streams `ids` token by token; every piece must be valid UTF-8; returns the concatenation.
  static std::string StreamDecode(const std::vector<int32_t>& ids, bool skip_special) {
    StreamDecoder stream(*tokenizer_, skip_special);
    std::string text;
    for (int32_t id : ids) {
      const std::string piece = stream.Push(id);
      EXPECT_TRUE(IsValidUtf8(piece)) << Hex(piece);
      text += piece;
    }
    const std::string tail = stream.Flush();
    EXPECT_TRUE(IsValidUtf8(tail)) << Hex(tail);
    return text + tail;
  }

  static Tokenizer* tokenizer_;
};

Tokenizer* TokenizerTest::tokenizer_ = nullptr;

TEST_F(TokenizerTest, EveryEncodeGoldenGivesExactlyItsIds) {
  const std::vector<Json> cases = ReadJsonLines("encode.jsonl");
  ASSERT_EQ(cases.size(), 384u);
  int passed = 0;
  for (const Json& c : cases) {
    const std::string text = c["text"].get<std::string>();
    ASSERT_EQ(Hex(text), c["utf8_hex"].get<std::string>()) << "case " << c["id"];
    const std::vector<int32_t> ids = tokenizer_->Encode(text);
    EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>()) << "case " << c["id"] << " (" << c["category"] << ") "
                                                         << c["text"].dump();
    passed += ids == c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(tokenizer_->Decode(ids), c["decoded"].get<std::string>()) << "case " << c["id"];
  }
  EXPECT_EQ(passed, 384);
  std::cout << "encode.jsonl: " << passed << "/" << cases.size() << " exact\n";
}

TEST_F(TokenizerTest, EveryDecodeGoldenGivesExactlyItsText) {
  const std::vector<Json> cases = ReadJsonLines("decode.jsonl");
  ASSERT_EQ(cases.size(), 284u);
  int passed = 0;
  for (const Json& c : cases) {
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    const std::string text = tokenizer_->Decode(ids, false);
    const std::string skipped = tokenizer_->Decode(ids, true);
    ASSERT_EQ(Hex(c["text"].get<std::string>()), c["text_utf8_hex"].get<std::string>());
    EXPECT_EQ(Hex(text), c["text_utf8_hex"].get<std::string>()) << c["kind"] << " " << c["note"];
    EXPECT_EQ(skipped, c["text_skip_special"].get<std::string>()) << c["kind"] << " " << c["note"];
    passed += text == c["text"].get<std::string>() && skipped == c["text_skip_special"].get<std::string>();
  }
  EXPECT_EQ(passed, 284);
  std::cout << "decode.jsonl: " << passed << "/" << cases.size() << " exact\n";
}

TEST_F(TokenizerTest, StreamDecodingEqualsDecodeAndNeverBreaksUtf8) {
  std::vector<std::vector<int32_t>> all_ids;
  for (const Json& c : ReadJsonLines("decode.jsonl")) all_ids.push_back(c["ids"].get<std::vector<int32_t>>());
  for (const Json& c : ReadJsonLines("encode.jsonl")) all_ids.push_back(c["ids"].get<std::vector<int32_t>>());
  for (const std::vector<int32_t>& ids : all_ids) {
    for (bool skip : {false, true}) {
      EXPECT_EQ(Hex(StreamDecode(ids, skip)), Hex(tokenizer_->Decode(ids, skip))) << ::testing::PrintToString(ids);
    }
  }
}

TEST_F(TokenizerTest, StreamDecoderHoldsBackAnIncompleteChar) {
  auto byte_token = [](char byte) {
    for (int32_t id = 0; id < tokenizer_->vocab_size(); ++id) {
      if (tokenizer_->TokenBytes(id) == absl::string_view(&byte, 1)) return id;
    }
    return -1;
  };
  // U+1F600 as its four single-byte tokens: nothing comes out until the char is complete.
  StreamDecoder stream(*tokenizer_);
  for (char b : std::string("\xF0\x9F\x98")) EXPECT_EQ(stream.Push(byte_token(b)), "");
  EXPECT_EQ(stream.Push(byte_token('\x80')), "\xF0\x9F\x98\x80");
  // A truncated char is emitted as one U+FFFD as soon as a byte proves it invalid.
  EXPECT_EQ(stream.Push(byte_token('\xF0')), "");
  EXPECT_EQ(stream.Push(byte_token('\x9F')), "");
  EXPECT_EQ(stream.Push(byte_token('a')), "\xEF\xBF\xBD" "a");
  // Flush turns a trailing incomplete char into one U+FFFD and resets the stream.
  EXPECT_EQ(stream.Push(byte_token('\xE2')), "");
  EXPECT_EQ(stream.Flush(), "\xEF\xBF\xBD");
  EXPECT_EQ(stream.Flush(), "");
  // Special tokens are dropped only with skip_special_tokens.
  StreamDecoder skipping(*tokenizer_, /*skip_special_tokens=*/true);
  EXPECT_EQ(skipping.Push(151645), "");
  EXPECT_EQ(skipping.Push(151667), "<think>");
}

TEST_F(TokenizerTest, AddedTokensAndVocabulary) {
  EXPECT_EQ(tokenizer_->vocab_size(), 151669);
  EXPECT_EQ(tokenizer_->added_tokens().size(), 26u);
  EXPECT_EQ(tokenizer_->TokenId("<|im_end|>"), 151645);
  EXPECT_EQ(tokenizer_->TokenId("<think>"), 151667);
  EXPECT_EQ(tokenizer_->TokenId("<|im_end|"), std::nullopt);
  EXPECT_EQ(tokenizer_->TokenId("hello"), std::nullopt);
  EXPECT_TRUE(tokenizer_->IsSpecial(151643));
  EXPECT_TRUE(tokenizer_->IsSpecial(151656));
  EXPECT_FALSE(tokenizer_->IsSpecial(151657));
  EXPECT_FALSE(tokenizer_->IsSpecial(151668));
  EXPECT_FALSE(tokenizer_->IsSpecial(9707));
  EXPECT_FALSE(tokenizer_->IsSpecial(-1));
  EXPECT_FALSE(tokenizer_->IsSpecial(1 << 30));
  EXPECT_EQ(tokenizer_->Decode({9707, -5, 1 << 30, 151700, 0}), "Hello!");  // unknown ids skipped
  EXPECT_EQ(tokenizer_->TokenBytes(220), " ");
  EXPECT_EQ(tokenizer_->TokenBytes(151645), "<|im_end|>");
}

TEST_F(TokenizerTest, InvalidUtf8InputIsEncodedAsReplacementChars) {
  EXPECT_EQ(tokenizer_->Encode("a\xFF" "b\xE2\x82"), tokenizer_->Encode("a\xEF\xBF\xBD" "b\xEF\xBF\xBD"));
  EXPECT_EQ(tokenizer_->Encode(absl::string_view("nul\0byte", 8)).size(), 4u);
}

// NFC as Python and HF's normalizer give it. U+11A7 is not a trailing consonant (T index 0), so
// it never joins a Hangul syllable; Debian's utf8proc 2.8 joins (drops) it when handed "LV U+11A7"
// (JuliaStrings/utf8proc#317), which NormalizeNfc must never do. Found by tokenizer_fuzz.
TEST_F(TokenizerTest, NfcKeepsU11A7AfterAHangulSyllable) {
  const std::string ga = "\xEA\xB0\x80", l = "\xE1\x84\x80", v = "\xE1\x85\xA1", u11a7 = "\xE1\x86\xA7";
  for (const std::string& text : {ga + u11a7, l + v + u11a7, l + v + u11a7 + "\xCC\x81", "x" + l + v + u11a7 + v}) {
    std::string expected = text;
    for (size_t at; (at = expected.find(l + v)) != std::string::npos;) expected.replace(at, 6, ga);
    EXPECT_EQ(tokenizer_->Decode(tokenizer_->Encode(text)), expected);
  }
  EXPECT_EQ(tokenizer_->Decode(tokenizer_->Encode("e\xCC\x81 <\xCC\xB8")), "\xC3\xA9 \xE2\x89\xAE");
}

TEST_F(TokenizerTest, LargeInputsRoundTrip) {
  const std::vector<std::string> inputs = {
      std::string(1 << 20, ' '), std::string(1 << 20, 'a'), std::string(1 << 20, '\n'),
      [] { std::string s; for (int i = 0; i < 200000; ++i) s += " \n\t"; return s; }(),
      [] { std::string s; for (int i = 0; i < 100000; ++i) s += "\xE4\xB8\xAD\xE6\x96\x87"; return s; }(),
      [] { std::string s; for (int i = 0; i < 100000; ++i) s += "<|im_end|<|"; return s; }(),
  };
  for (const std::string& text : inputs) {
    EXPECT_EQ(tokenizer_->Decode(tokenizer_->Encode(text)), text) << text.substr(0, 16);
  }
}

TEST_F(TokenizerTest, ConcurrentEncodesAgreeWithSerialOnes) {
  std::vector<std::string> texts;
  for (const Json& c : ReadJsonLines("encode.jsonl")) texts.push_back(c["text"].get<std::string>());
  std::vector<std::vector<int32_t>> expected;
  for (const std::string& t : texts) expected.push_back(tokenizer_->Encode(t));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) mismatches[t] += tokenizer_->Encode(texts[i]) != expected[i];
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int m : mismatches) EXPECT_EQ(m, 0);
}

// A small valid tokenizer.json: the 256 byte tokens, "he", "ll", "hell", "hello", two added tokens.
Json MinimalTokenizerJson() {
  Json vocab = Json::object();
  for (int b = 0; b < 256; ++b) {
    const char32_t c = ByteLevelChar(static_cast<uint8_t>(b));
    std::string spelling;
    if (c < 0x80) {
      spelling += static_cast<char>(c);
    } else {
      spelling += static_cast<char>(0xC0 | (c >> 6));
      spelling += static_cast<char>(0x80 | (c & 0x3F));
    }
    vocab[spelling] = b;
  }
  for (const char* token : {"he", "ll", "hell", "hello"}) vocab[token] = static_cast<int>(vocab.size());
  Json json = Json::parse(R"({
    "version": "1.0", "truncation": null, "padding": null,
    "added_tokens": [
      {"id": 300, "content": "<|end|>", "special": true,
       "lstrip": false, "rstrip": false, "normalized": false, "single_word": false},
      {"id": 301, "content": "<|end|>x", "special": false,
       "lstrip": false, "rstrip": false, "normalized": false, "single_word": false}],
    "normalizer": {"type": "NFC"},
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "\\s+|[^\\s]+"}, "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]},
    "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
    "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
              "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
              "merges": [["h", "e"], ["l", "l"], ["he", "ll"], ["hell", "o"]]}})");
  json["model"]["vocab"] = vocab;
  return json;
}

// The error for `json` (which must fail to load), or "" when it loads.
std::string LoadError(const Json& json) {
  auto tokenizer = Tokenizer::FromJson(json.dump(), "bad/tokenizer.json");
  return tokenizer.ok() ? "" : std::string(tokenizer.status().message());
}

TEST(TokenizerFileTest, MinimalTokenizerWorksWithBothMergeSpellings) {
  Json json = MinimalTokenizerJson();
  for (int spelling = 0; spelling < 2; ++spelling) {
    if (spelling == 1) json["model"]["merges"] = {"h e", "l l", "he ll", "hell o"};
    auto tokenizer = Tokenizer::FromJson(json.dump());
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    EXPECT_EQ(tokenizer->vocab_size(), 302);
    // "hello" -> he+ll -> hell -> hello; " " alone; longest added token wins.
    EXPECT_EQ(tokenizer->Encode("hello hel<|end|>x<|end|>"),
              (std::vector<int32_t>{259, 32, 256, 'l', 301, 300}));
    EXPECT_EQ(tokenizer->Decode({259, 300, 301}, /*skip_special_tokens=*/true), "hello<|end|>x");
  }
}

TEST(TokenizerFileTest, MalformedFilesGiveAClearError) {
  const std::string dir = ::q3vl::testing::ScratchDir();
  std::ifstream real(TokenizerPath(), std::ios::binary);
  std::string head(4096, '\0');
  real.read(head.data(), head.size());
  std::ofstream(dir + "/truncated.json", std::ios::binary) << head;
  auto truncated = Tokenizer::FromFile(dir + "/truncated.json");
  ASSERT_FALSE(truncated.ok());
  EXPECT_NE(truncated.status().message().find(dir + "/truncated.json: not valid JSON"), std::string::npos)
      << truncated.status();
  std::ofstream(dir + "/flattened.json") << "../../tokenizer/tokenizer.json";
  auto flattened = Tokenizer::FromFile(dir + "/flattened.json");
  ASSERT_FALSE(flattened.ok());
  EXPECT_NE(flattened.status().message().find("holds the path '../../tokenizer/tokenizer.json' instead of JSON"),
            std::string::npos)
      << flattened.status();
  auto missing = Tokenizer::FromFile(dir + "/no_such_tokenizer.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("no_such_tokenizer.json"), std::string::npos);

  struct Case {
    const char* what;
    std::function<void(Json&)> edit;
    const char* expected;  // in the message, after "bad/tokenizer.json: "
  };
  const std::vector<Case> cases = {
      {"no model", [](Json& j) { j.erase("model"); }, "model: missing"},
      {"model type", [](Json& j) { j["model"]["type"] = "WordPiece"; }, "model.type: not supported: \"WordPiece\""},
      {"no vocab", [](Json& j) { j["model"].erase("vocab"); }, "model.vocab: missing"},
      {"vocab id", [](Json& j) { j["model"]["vocab"]["he"] = "x"; }, "model.vocab[\"he\"]: id must be an integer"},
      {"byte missing", [](Json& j) { j["model"]["vocab"].erase("a"); }, "model.vocab: no token for byte 97"},
      {"no merges", [](Json& j) { j["model"].erase("merges"); }, "model.merges: missing"},
      {"merge token", [](Json& j) { j["model"]["merges"][1] = {"l", "zz"}; },
       "model.merges[1]: token \"zz\" is not in model.vocab"},
      {"merged token", [](Json& j) { j["model"]["merges"][1] = {"l", "o"}; },
       "model.merges[1]: merged token \"lo\" is not in model.vocab"},
      {"merge shape", [](Json& j) { j["model"]["merges"][0] = "h e x"; }, "model.merges[0]: must be"},
      {"dropout", [](Json& j) { j["model"]["dropout"] = 0.1; }, "model.dropout: not supported"},
      {"normalizer", [](Json& j) { j["normalizer"] = {{"type", "NFKC"}}; }, "normalizer: not supported"},
      {"no pre_tokenizer", [](Json& j) { j.erase("pre_tokenizer"); }, "pre_tokenizer: missing"},
      {"prefix space", [](Json& j) { j["pre_tokenizer"]["pretokenizers"][1]["add_prefix_space"] = true; },
       "pre_tokenizer.pretokenizers[1]: not supported"},
      {"regex", [](Json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {{"Regex", "(unclosed"}}; },
       "pre_tokenizer: split pattern does not compile"},
      {"decoder", [](Json& j) { j["decoder"] = {{"type", "WordPiece"}}; }, "decoder: not supported"},
      {"post_processor", [](Json& j) { j["post_processor"] = {{"type", "TemplateProcessing"}}; },
       "post_processor: not supported"},
      {"lstrip", [](Json& j) { j["added_tokens"][0]["lstrip"] = true; }, "added_tokens[0]: not supported"},
      {"added content", [](Json& j) { j["added_tokens"][1].erase("content"); },
       "added_tokens[1]: needs a non-empty string"},
      {"top level", [](Json& j) { j = Json::array(); }, "(top level): must be a JSON object"},
  };
  for (const Case& c : cases) {
    Json json = MinimalTokenizerJson();
    c.edit(json);
    EXPECT_NE(LoadError(json).find(std::string("bad/tokenizer.json: ") + c.expected), std::string::npos)
        << c.what << ": " << LoadError(json);
  }
}

// \s is Unicode White_Space: U+00A0 and U+0085 split like spaces, U+180E does not.
TEST(SplitRegexTest, WhiteSpaceIsUnicodeWhiteSpace) {
  auto regex = SplitRegex::Compile(R"(\s+|[^\s\p{L}]+)");
  ASSERT_TRUE(regex.ok()) << regex.status();
  auto pieces = [&](absl::string_view text) {
    std::vector<std::string> out;
    (*regex)->Split(text, [&](absl::string_view p) { out.emplace_back(p); });
    return out;
  };
  EXPECT_EQ(pieces("!\xC2\xA0!").size(), 3u);
  EXPECT_EQ(pieces("!\xC2\x85!").size(), 3u);
  EXPECT_EQ(pieces("!\xE1\xA0\x8E!").size(), 1u);  // U+180E
  EXPECT_EQ(pieces("!\xE2\x80\x8B!").size(), 1u);  // U+200B
  EXPECT_FALSE(TranslateSplitPattern(R"([^\S])").ok());
}

}  // namespace
}  // namespace q3vl::model
