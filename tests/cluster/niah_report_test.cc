// The NIAH report: a PNG heat map of the expected size whose cells are coloured by accuracy,
// and an HTML page that names every cell and question and embeds the needles.
#include "cluster/niah/report.h"

#include <cmath>
#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "model/media/image_decode.h"
#include "tests/test_util.h"

namespace q3vl::cluster::niah {
namespace {

using Json = nlohmann::ordered_json;

TEST(NiahReportTest, HeatMapAndPage) {
  std::vector<Json> rows;
  const std::vector<int64_t> lengths = {8192, 32768};
  const std::vector<double> depths = {0.0, 0.5, 1.0};
  for (int64_t l : lengths) {
    for (double d : depths) {
      for (int q = 0; q < 2; ++q) {
        Json r = {{"key", CellKey{l, d, "red", q}.ToString()}, {"length", l},     {"depth", d},
                  {"needle", "red"},                           {"question", q},  {"kind", q ? "when" : "what"},
                  {"needle_timestamp", "<1.2 seconds>"},       {"needle_group", 1}, {"frame_groups", 40}};
        if (l == 32768 && d == 1.0) {
          r["error"] = {{"status", 400}, {"message", "too <long>"}};
        } else {
          r["answer"] = "Red";
          r["correct"] = l == 8192;  // 8K: all right; 32K: all wrong
          r["reference"] = "red";
          r["answer_logprob"] = l == 8192 ? -0.01 * (q + 1) : -5.0;  // 8K: likely; 32K: unlikely
          r["vision_s"] = 0.5;
        }
        rows.push_back(r);
      }
    }
  }
  const std::string dir = testing::ScratchDir() + "/report";
  auto files = WriteReport(rows, DefaultNeedles(), dir, "demo: NIAH");
  ASSERT_TRUE(files.ok()) << files.status();

  auto png = model::DecodeImageFile(files->heatmap_png);
  ASSERT_TRUE(png.ok()) << png.status();
  EXPECT_EQ(png->width, files->width);
  EXPECT_EQ(png->height, files->height);
  EXPECT_EQ(files->width, 90 + 3 * 64 + 40 + 3 * 64 + 30) << "two panels: accuracy and log-probability";
  EXPECT_EQ(files->height, 60 + 2 * 40 + 70);
  // A cell's corner (no text there): green where all were right, red where all were wrong.
  auto pixel = [&](int x, int y) { return png->row(y) + 3 * x; };
  const uint8_t* right = pixel(90 + 5, 60 + 5);
  const uint8_t* wrong = pixel(90 + 5, 60 + 40 + 5);
  EXPECT_GT(right[1], right[0] + 50) << "8K row is green";
  EXPECT_GT(wrong[0], wrong[1] + 50) << "32K row is red";
  // The log-probability panel: 8K's answers likely (green), 32K's unlikely (red), and the
  // 32K cell at depth 1 (errors only, nothing scored) grey.
  const int lp = 90 + 3 * 64 + 40;
  const uint8_t* likely = pixel(lp + 5, 60 + 5);
  const uint8_t* unlikely = pixel(lp + 5, 60 + 40 + 5);
  const uint8_t* unscored = pixel(lp + 2 * 64 + 5, 60 + 40 + 5);
  EXPECT_GT(likely[1], likely[0] + 50);
  EXPECT_GT(unlikely[0], unlikely[1] + 50);
  EXPECT_TRUE(unscored[0] == unscored[1] && unscored[1] == unscored[2] && unscored[0] > 200) << "grey";
  const std::vector<CellSummary> cells = SummarizeCells(rows);
  ASSERT_EQ(cells.size(), 6u);
  EXPECT_EQ(cells[0].scored, 2);
  EXPECT_NEAR(cells[0].mean_logprob(), -0.015, 1e-12);
  EXPECT_NEAR(cells[0].vision_s, 1.0, 1e-12);
  EXPECT_TRUE(std::isnan(cells[5].mean_logprob()));

  std::ifstream in(files->html);
  std::stringstream html;
  html << in.rdbuf();
  const std::string page = html.str();
  for (const Json& r : rows) EXPECT_NE(page.find(r["key"].get<std::string>()), std::string::npos) << r["key"];
  EXPECT_NE(page.find("data:image/png;base64,"), std::string::npos);
  EXPECT_NE(page.find("too &lt;long&gt;"), std::string::npos);  // escaped
  EXPECT_NE(page.find("<td>8192</td><td>0.50</td><td>2</td><td>2</td><td>0</td><td>-0.015</td><td>1.00</td>"),
            std::string::npos);
  EXPECT_NE(page.find("log p(red) = -0.010"), std::string::npos);
  EXPECT_FALSE(WriteReport({}, {}, dir, "x").ok());
}

}  // namespace
}  // namespace q3vl::cluster::niah
