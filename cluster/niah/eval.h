// The evaluation side of a NIAH cell: needles and their questions, scoring an answer, and the
// results file (JSON lines, one per length x depth x needle x question, resumable). Pure
// functions and plain values; thread-compatible.
#ifndef Q3VL_CLUSTER_NIAH_EVAL_H_
#define Q3VL_CLUSTER_NIAH_EVAL_H_

#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "model/media/image.h"
#include "nlohmann/json.hpp"

namespace q3vl::cluster::niah {

enum class QuestionKind {
  kWhat,  // what the needle shows: right when the answer contains an accepted answer
  kWhen,  // when it appears: right within one frame group of the needle's timestamp
};

struct Question {
  QuestionKind kind = QuestionKind::kWhat;
  std::string text;
  std::vector<std::string> answers;  // kWhat: accepted answers (case-insensitive)
};

struct Needle {
  std::string id;
  model::Image image;
  std::string source;  // the file, or "built-in"
  std::vector<Question> questions;
};

// needles.json: {"needles": [{"id", "image" (path, relative to the file), "questions":
// [{"question", "answers": [...]} | {"question", "kind": "when"}]}]}. InvalidArgument naming
// the entry for anything malformed; the images are decoded here.
absl::StatusOr<std::vector<Needle>> LoadNeedles(const std::string& path);
// Three needles drawn here (a frame filled with one colour), each with a "what" and a "when"
// question: the command runs with no file.
std::vector<Needle> DefaultNeedles();

// Whether `answer` contains one of `accepted` (case-insensitive, surrounding spaces ignored).
bool AnswerMatches(const std::string& answer, const std::vector<std::string>& accepted);
// The first time in `answer`: "12.5 seconds", "12 s", "at 1:05" (1 min 5 s) or a bare number.
std::optional<double> ParseSeconds(const std::string& answer);
// kWhen: the parsed time within `tolerance_s` of `truth_s`.
bool TimeMatches(const std::string& answer, double truth_s, double tolerance_s);

// One result line's identity: the cell and the question.
struct CellKey {
  int64_t length = 0;
  double depth = 0;
  std::string needle;
  int question = 0;
  std::string ToString() const;  // "L/D/needle/q", depth to 6 decimals
  bool operator<(const CellKey& o) const { return ToString() < o.ToString(); }
};

// The keys already in a results file (a missing file: none). A last line cut short by a kill
// is cut off the file (so appending continues whole lines); a malformed line elsewhere is an
// error naming its number.
absl::StatusOr<std::set<std::string>> RecoverResults(const std::string& path);
// Appends one line and flushes it to the disk (fsync): a kill after this returns loses nothing.
absl::Status AppendResult(const std::string& path, const nlohmann::ordered_json& line);

}  // namespace q3vl::cluster::niah

#endif  // Q3VL_CLUSTER_NIAH_EVAL_H_
