// tokenizer_bench: single-thread encode and decode throughput of model::Tokenizer on the real
// Qwen3 tokenizer, printed as one JSON object on stdout (progress on stderr). Inputs of several
// MB are built from the text lines of the tokenizer goldens (encode.jsonl) per category, plus
// randomly generated CJK clauses that defeat the piece cache. See README.md.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "model/text/tokenizer.h"
#include "nlohmann/json.hpp"

namespace q3vl::bench {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::vector<Json> ReadJsonLines(const std::string& path) {
  std::ifstream file(path);
  if (!file) {
    std::cerr << "tokenizer_bench: cannot open " << path << "\n";
    std::exit(1);
  }
  std::vector<Json> lines;
  for (std::string line; std::getline(file, line);) lines.push_back(Json::parse(line));
  return lines;
}

// Lines of the given categories, shuffled and joined (newline or space) until `bytes` long.
std::string RepeatLines(const std::vector<Json>& cases, const std::vector<std::string>& categories, size_t bytes,
                        uint32_t seed) {
  std::vector<std::string> lines;
  for (const Json& c : cases) {
    if (std::find(categories.begin(), categories.end(), c["category"].get<std::string>()) != categories.end()) {
      lines.push_back(c["text"].get<std::string>());
    }
  }
  std::mt19937 rng(seed);
  std::string text;
  while (text.size() < bytes) {
    std::shuffle(lines.begin(), lines.end(), rng);
    for (const std::string& line : lines) text += line + (rng() % 4 == 0 ? "\n" : " ");
  }
  return text;
}

// Clauses of 4-40 random chars drawn from the CJK golden lines, each ended by CJK punctuation:
// almost every pre-token is new, so this measures BPE itself rather than the piece cache.
std::string RandomCjkClauses(const std::vector<Json>& cases, size_t bytes, uint32_t seed) {
  std::vector<std::string> chars;
  for (const Json& c : cases) {
    if (c["category"] != "cjk") continue;
    const std::string text = c["text"].get<std::string>();
    for (size_t i = 0; i < text.size();) {
      const unsigned char lead = text[i];
      const size_t len = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
      if (len == 3) chars.push_back(text.substr(i, len));  // the BMP CJK and kana
      i += len;
    }
  }
  const char* punctuation[] = {"\xEF\xBC\x8C", "\xE3\x80\x82", "\xE3\x80\x81", "\xEF\xBC\x9F"};  // ，。、？
  std::mt19937 rng(seed);
  std::string text;
  while (text.size() < bytes) {
    const int n = 4 + static_cast<int>(rng() % 37);
    for (int i = 0; i < n; ++i) text += chars[rng() % chars.size()];
    text += punctuation[rng() % 4];
  }
  return text;
}

Json Measure(const model::Tokenizer& tokenizer, const std::string& text, int passes) {
  double first_s = 0.0, best_encode_s = 1e30, best_decode_s = 1e30, best_stream_s = 1e30;
  std::vector<int32_t> ids;
  std::string decoded;
  for (int pass = 0; pass < passes; ++pass) {
    auto start = Clock::now();
    ids = tokenizer.Encode(text);
    const double encode_s = Seconds(start);
    if (pass == 0) first_s = encode_s;
    best_encode_s = std::min(best_encode_s, encode_s);
    start = Clock::now();
    decoded = tokenizer.Decode(ids);
    best_decode_s = std::min(best_decode_s, Seconds(start));
    start = Clock::now();
    model::StreamDecoder stream(tokenizer);
    size_t streamed_bytes = 0;
    for (int32_t id : ids) streamed_bytes += stream.Push(id).size();
    streamed_bytes += stream.Flush().size();
    best_stream_s = std::min(best_stream_s, Seconds(start));
    if (streamed_bytes != decoded.size()) std::cerr << "tokenizer_bench: stream and Decode disagree\n";
  }
  const double mb = text.size() / 1e6;
  return {{"bytes", text.size()},
          {"tokens", ids.size()},
          {"bytes_per_token", static_cast<double>(text.size()) / std::max<size_t>(ids.size(), 1)},
          {"roundtrip_exact", decoded == text},
          {"encode_mb_per_s", mb / best_encode_s},
          {"encode_first_pass_mb_per_s", mb / first_s},
          {"encode_tokens_per_s", ids.size() / best_encode_s},
          {"decode_mb_per_s", decoded.size() / 1e6 / best_decode_s},
          {"stream_decode_mb_per_s", decoded.size() / 1e6 / best_stream_s}};
}

constexpr char kUsage[] =
    "usage: tokenizer_bench [--tokenizer FILE] [--encode-jsonl FILE] [--mb N] [--passes N]\n"
    "  --tokenizer     tokenizer.json (default: model/assets/qwen3/tokenizer.json in the source tree)\n"
    "  --encode-jsonl  golden lines to build inputs from (default: tests/data/inputs/tokenizer/encode.jsonl)\n"
    "  --mb            megabytes of text per input (default 4)\n"
    "  --passes        encode/decode passes per input; the best is reported (default 3)\n";

int Main(int argc, char** argv) {
  std::string tokenizer_path = std::string(Q3VL_SOURCE_DIR) + "/model/assets/qwen3/tokenizer.json";
  std::string encode_path = std::string(Q3VL_SOURCE_DIR) + "/tests/data/inputs/tokenizer/encode.jsonl";
  double mb = 4.0;
  int passes = 3;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--tokenizer" && has_value) {
      tokenizer_path = argv[++i];
    } else if (arg == "--encode-jsonl" && has_value) {
      encode_path = argv[++i];
    } else if (arg == "--mb" && has_value) {
      mb = std::atof(argv[++i]);
    } else if (arg == "--passes" && has_value) {
      passes = std::max(1, std::atoi(argv[++i]));
    } else {
      (arg == "--help" || arg == "-h" ? std::cout : std::cerr) << kUsage;
      return arg == "--help" || arg == "-h" ? 0 : 2;
    }
  }
  auto start = Clock::now();
  auto tokenizer = model::Tokenizer::FromFile(tokenizer_path);
  if (!tokenizer.ok()) {
    std::cerr << "tokenizer_bench: " << tokenizer.status().message() << "\n";
    return 1;
  }
  const double load_s = Seconds(start);
  const std::vector<Json> cases = ReadJsonLines(encode_path);
  const size_t bytes = static_cast<size_t>(mb * 1e6);
  const std::vector<std::pair<std::string, std::string>> inputs = {
      {"english_prose", RepeatLines(cases, {"prose", "prose_generated"}, bytes, 1)},
      {"code", RepeatLines(cases, {"code"}, bytes, 2)},
      {"cjk", RepeatLines(cases, {"cjk"}, bytes, 3)},
      {"cjk_random_clauses", RandomCjkClauses(cases, bytes, 4)},
  };
  Json results = Json::object();
  for (const auto& [name, text] : inputs) {
    std::cerr << "tokenizer_bench: " << name << " (" << text.size() / 1e6 << " MB)\n";
    results[name] = Measure(*tokenizer, text, passes);
  }
  const Json out = {{"benchmark", "tokenizer_bench"}, {"threads", 1}, {"load_s", load_s}, {"inputs", results}};
  std::cout << out.dump(2) << std::endl;
  return 0;
}

}  // namespace
}  // namespace q3vl::bench

int main(int argc, char** argv) { return q3vl::bench::Main(argc, argv); }
