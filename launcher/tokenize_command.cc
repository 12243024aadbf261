// q3vl tokenize --tokenizer FILE [--decode]: JSON lines on stdin -> one JSON line per input on
// stdout ({"text"} -> {"ids"}, or {"ids"} -> {"text"} with --decode). A bad line is reported on
// stderr with its line number and answered with {"error": ...} so outputs stay aligned with the
// inputs; the command goes on and exits 1 at the end if any line failed.
#include <iostream>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "launcher/options.h"
#include "model/text/tokenizer.h"
#include "nlohmann/json.hpp"

namespace q3vl::launcher {
namespace {

using Json = nlohmann::json;

absl::StatusOr<Json> ParseObject(const std::string& line, const char* key) {
  Json input;
  try {
    input = Json::parse(line);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("not valid JSON: ", e.what()));
  }
  if (!input.is_object() || !input.contains(key)) {
    return absl::InvalidArgumentError(absl::StrCat("expected a JSON object with \"", key, "\""));
  }
  return input;
}

absl::StatusOr<Json> EncodeLine(const model::Tokenizer& tokenizer, const std::string& line) {
  auto input = ParseObject(line, "text");
  if (!input.ok()) return input.status();
  const Json& text = (*input)["text"];
  if (!text.is_string()) return absl::InvalidArgumentError("\"text\" must be a string");
  return Json{{"ids", tokenizer.Encode(text.get_ref<const std::string&>())}};
}

absl::StatusOr<Json> DecodeLine(const model::Tokenizer& tokenizer, const std::string& line, bool skip_special) {
  auto input = ParseObject(line, "ids");
  if (!input.ok()) return input.status();
  const Json& ids = (*input)["ids"];
  if (!ids.is_array()) return absl::InvalidArgumentError("\"ids\" must be an array of token ids");
  std::vector<int32_t> tokens;
  tokens.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (!ids[i].is_number_integer() || ids[i] < 0 || ids[i] >= tokenizer.vocab_size()) {
      return absl::InvalidArgumentError(absl::StrCat("ids[", i, "] = ", ids[i].dump(), " is not a token id in [0, ",
                                                     tokenizer.vocab_size(), ")"));
    }
    tokens.push_back(ids[i].get<int32_t>());
  }
  return Json{{"text", tokenizer.Decode(tokens, skip_special)}};
}

}  // namespace

int TokenizeCommand(const Args& args) {
  constexpr char kName[] = "tokenize";
  po::options_description options(
      "Reads JSON lines from stdin and writes one JSON line per input line to stdout:\n"
      "  {\"text\": \"...\"} -> {\"ids\": [...]}   (no BOS/EOS added; special tokens in the text are matched)\n"
      "  {\"ids\": [...]} -> {\"text\": \"...\"}   (with --decode)\n"
      "Blank lines are skipped. A bad line gets \"q3vl tokenize: line N: <reason>\" on stderr and\n"
      "{\"error\": \"line N: <reason>\"} on stdout; later lines are still processed and the exit status is 1.\n\n"
      "options");
  options.add_options()
      ("tokenizer", po::value<std::string>()->required(), "tokenizer.json (Hugging Face format, byte-level BPE)")
      ("decode", po::bool_switch(), "decode {\"ids\"} lines to {\"text\"} instead of encoding")
      ("skip-special-tokens", po::bool_switch(),
       "with --decode: drop tokens flagged special (<|im_end|>, <|image_pad|>, ...; <think> stays)");
  po::positional_options_description positional;
  auto parsed = ParseArgs(kName, "--tokenizer FILE [--decode [--skip-special-tokens]] < in.jsonl > out.jsonl",
                          options, positional, args);
  if (std::holds_alternative<int>(parsed)) return std::get<int>(parsed);
  const po::variables_map& vm = std::get<po::variables_map>(parsed);
  const bool decode = vm["decode"].as<bool>();
  const bool skip_special = vm["skip-special-tokens"].as<bool>();
  if (skip_special && !decode) return UsageError(kName, "--skip-special-tokens needs --decode");
  auto tokenizer = model::Tokenizer::FromFile(vm["tokenizer"].as<std::string>());
  if (!tokenizer.ok()) return Fail(kName, tokenizer.status());

  int64_t line_number = 0, failures = 0;
  for (std::string line; std::getline(std::cin, line);) {
    ++line_number;
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    auto output = decode ? DecodeLine(*tokenizer, line, skip_special) : EncodeLine(*tokenizer, line);
    if (!output.ok()) {
      ++failures;
      std::cerr << "q3vl " << kName << ": line " << line_number << ": " << output.status().message() << std::endl;
      output = Json{{"error", absl::StrCat("line ", line_number, ": ", output.status().message())}};
    }
    std::cout << output->dump(-1, ' ', false, Json::error_handler_t::replace) << std::endl;
  }
  return failures > 0 ? 1 : 0;
}

}  // namespace q3vl::launcher
