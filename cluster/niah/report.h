// The NIAH report from the results file's lines: a heat map PNG (video length x needle depth,
// each cell's accuracy and, when answers were scored, the mean teacher-forced log-probability
// of the reference answers, as colour and number, axes labelled; drawn with Cairo) and a
// self-contained HTML page (the heat map embedded, the table of cells, and each cell's
// questions, answers and needle image). Pure apart from the files it writes.
#ifndef Q3VL_CLUSTER_NIAH_REPORT_H_
#define Q3VL_CLUSTER_NIAH_REPORT_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "cluster/niah/eval.h"
#include "nlohmann/json.hpp"

namespace q3vl::cluster::niah {

// One cell of the grid over result lines: its questions, those answered right, those the
// server refused (error lines count as asked, not right); the answer log-probabilities of the
// scored questions (a line's "answer_logprob"); the vision seconds of its lines ("vision_s").
struct CellSummary {
  int64_t length = 0;
  double depth = 0;
  int64_t right = 0, asked = 0, errors = 0;
  int64_t scored = 0;
  double logprob_sum = 0.0;
  double vision_s = 0.0;
  int64_t timed = 0;  // lines that carried vision_s
  double accuracy() const { return asked > 0 ? static_cast<double>(right) / asked : 0.0; }
  // log p(reference answer | video, question), averaged over the scored questions; NaN if none.
  double mean_logprob() const;
};
// The cells of `rows`, by length then depth.
std::vector<CellSummary> SummarizeCells(const std::vector<nlohmann::ordered_json>& rows);

struct ReportFiles {
  std::string heatmap_png;  // written
  std::string html;         // written
  int width = 0, height = 0;  // the PNG's size
};

// Writes DIR/heatmap.png and DIR/report.html for `rows` (result lines; error lines count as
// wrong and are shown as errors). `needles` gives the images shown beside the answers (by id;
// ids without one are shown without an image).
absl::StatusOr<ReportFiles> WriteReport(const std::vector<nlohmann::ordered_json>& rows,
                                        const std::vector<Needle>& needles, const std::string& dir,
                                        const std::string& title);

}  // namespace q3vl::cluster::niah

#endif  // Q3VL_CLUSTER_NIAH_REPORT_H_
