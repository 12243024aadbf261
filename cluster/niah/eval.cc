#include "cluster/niah/eval.h"

#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/file_io.h"
#include "model/media/image_decode.h"

namespace q3vl::cluster::niah {
namespace {

model::Image Filled(uint8_t r, uint8_t g, uint8_t b) {
  model::Image image = model::Image::Blank(256, 256);
  for (size_t i = 0; i < image.rgb.size(); i += 3) {
    image.rgb[i] = r;
    image.rgb[i + 1] = g;
    image.rgb[i + 2] = b;
  }
  return image;
}

}  // namespace

std::vector<Needle> DefaultNeedles() {
  struct Colour {
    const char* name;
    uint8_t r, g, b;
  };
  std::vector<Needle> out;
  for (const Colour& c : {Colour{"red", 220, 30, 30}, Colour{"green", 30, 180, 60}, Colour{"blue", 30, 60, 220}}) {
    Needle n{.id = c.name, .image = Filled(c.r, c.g, c.b), .source = "built-in"};
    n.questions.push_back({.kind = QuestionKind::kWhat,
                           .text = "One moment of this video shows a frame filled with a single colour. Which colour? "
                                   "Answer with one word.",
                           .answers = {c.name}});
    n.questions.push_back({.kind = QuestionKind::kWhen,
                           .text = "One moment of this video shows a frame filled with a single colour. At what time "
                                   "does it appear? Answer with the number of seconds."});
    out.push_back(std::move(n));
  }
  return out;
}

absl::StatusOr<std::vector<Needle>> LoadNeedles(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  nlohmann::json doc = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("needles") || !doc["needles"].is_array() ||
      doc["needles"].empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected {\"needles\": [...]} with at least one needle"));
  }
  const std::filesystem::path base = std::filesystem::path(path).parent_path();
  std::vector<Needle> out;
  std::set<std::string> ids;
  for (size_t i = 0; i < doc["needles"].size(); ++i) {
    const nlohmann::json& e = doc["needles"][i];
    const std::string where = absl::StrCat(path, ": needle ", i + 1);
    if (!e.is_object() || !e.contains("image") || !e["image"].is_string() || !e.contains("questions") ||
        !e["questions"].is_array() || e["questions"].empty()) {
      return absl::InvalidArgumentError(absl::StrCat(where, " needs \"image\" and a non-empty \"questions\" list"));
    }
    Needle n;
    n.id = e.contains("id") && e["id"].is_string() ? e["id"].get<std::string>() : absl::StrCat("needle", i + 1);
    if (!ids.insert(n.id).second) return absl::InvalidArgumentError(absl::StrCat(where, ": id \"", n.id, "\" repeats"));
    std::filesystem::path image = e["image"].get<std::string>();
    if (image.is_relative()) image = base / image;
    n.source = image.string();
    auto decoded = model::DecodeImageFile(n.source);
    if (!decoded.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", decoded.status().message()));
    n.image = *std::move(decoded);
    for (size_t q = 0; q < e["questions"].size(); ++q) {
      const nlohmann::json& qe = e["questions"][q];
      const std::string qwhere = absl::StrCat(where, " question ", q + 1);
      if (!qe.is_object() || !qe.contains("question") || !qe["question"].is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(qwhere, " needs \"question\""));
      }
      Question question{.text = qe["question"].get<std::string>()};
      const std::string kind = qe.value("kind", "what");
      if (kind == "when") {
        question.kind = QuestionKind::kWhen;
      } else if (kind == "what") {
        if (!qe.contains("answers") || !qe["answers"].is_array() || qe["answers"].empty() ||
            !std::all_of(qe["answers"].begin(), qe["answers"].end(), [](const nlohmann::json& a) {
              return a.is_string() && !a.get<std::string>().empty();
            })) {
          return absl::InvalidArgumentError(absl::StrCat(qwhere, " needs \"answers\": a non-empty list of strings"));
        }
        question.answers = qe["answers"].get<std::vector<std::string>>();
      } else {
        return absl::InvalidArgumentError(absl::StrCat(qwhere, ": kind \"", kind, "\" is not what or when"));
      }
      n.questions.push_back(std::move(question));
    }
    out.push_back(std::move(n));
  }
  return out;
}

bool AnswerMatches(const std::string& answer, const std::vector<std::string>& accepted) {
  const std::string a = absl::AsciiStrToLower(answer);
  for (const std::string& x : accepted) {
    const std::string want = absl::AsciiStrToLower(absl::StripAsciiWhitespace(x));
    if (!want.empty() && absl::StrContains(a, want)) return true;
  }
  return false;
}

std::optional<double> ParseSeconds(const std::string& answer) {
  static const std::regex clock(R"((\d+):([0-5]\d)(?:\.(\d+))?)");
  static const std::regex number(R"((\d+(?:\.\d+)?))");
  std::smatch m;
  if (std::regex_search(answer, m, clock)) {
    return std::stod(m[1].str()) * 60 + std::stod(m[2].str()) + (m[3].matched ? std::stod("0." + m[3].str()) : 0.0);
  }
  if (std::regex_search(answer, m, number)) return std::stod(m[1].str());
  return std::nullopt;
}

bool TimeMatches(const std::string& answer, double truth_s, double tolerance_s) {
  const std::optional<double> t = ParseSeconds(answer);
  return t.has_value() && std::abs(*t - truth_s) <= tolerance_s + 1e-9;
}

std::string CellKey::ToString() const { return absl::StrFormat("%d/%.6f/%s/%d", length, depth, needle, question); }

absl::StatusOr<std::set<std::string>> RecoverResults(const std::string& path) {
  std::set<std::string> keys;
  std::ifstream in(path, std::ios::binary);
  if (!in) return keys;
  std::stringstream all;
  all << in.rdbuf();
  const std::string text = all.str();
  size_t pos = 0, line = 0, good_end = 0;
  while (pos < text.size()) {
    const size_t nl = text.find('\n', pos);
    ++line;
    if (nl == std::string::npos) break;  // a last line without its newline: cut short
    const std::string row = text.substr(pos, nl - pos);
    pos = nl + 1;
    if (absl::StripAsciiWhitespace(row).empty()) {
      good_end = pos;
      continue;
    }
    nlohmann::json j = nlohmann::json::parse(row, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("key") || !j["key"].is_string()) {
      return absl::DataLossError(absl::StrCat(path, ": line ", line, " is not a result line; fix or remove the file"));
    }
    keys.insert(j["key"].get<std::string>());
    good_end = pos;
  }
  if (good_end < text.size()) std::filesystem::resize_file(path, good_end);
  return keys;
}

absl::Status AppendResult(const std::string& path, const nlohmann::ordered_json& line) {
  const std::string text = line.dump() + "\n";
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("cannot write ", path, ": ", std::strerror(errno)));
  if (absl::Status st = WriteAll(fd, text, path); !st.ok()) {
    ::close(fd);
    return st;
  }
  const int synced = ::fsync(fd);
  ::close(fd);
  if (synced != 0) return absl::UnavailableError(absl::StrCat("cannot sync ", path, ": ", std::strerror(errno)));
  return absl::OkStatus();
}

}  // namespace q3vl::cluster::niah
