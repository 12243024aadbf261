#include "cluster/niah/report.h"

#include <cairo.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <set>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"
#include "model/media/resize.h"

namespace q3vl::cluster::niah {
namespace {

using Json = nlohmann::ordered_json;

std::string LengthLabel(int64_t n) {
  if (n % (1024 * 1024) == 0) return absl::StrCat(n / (1024 * 1024), "M");
  if (n % 1024 == 0) return absl::StrCat(n / 1024, "K");
  return absl::StrCat(n);
}

// Red (0) through yellow to green (1).
void AccuracyColour(cairo_t* cr, double a) {
  a = std::clamp(a, 0.0, 1.0);
  const double r = a < 0.5 ? 0.85 : 0.85 - (a - 0.5) * 2 * 0.65;
  const double g = a < 0.5 ? 0.2 + a * 2 * 0.6 : 0.8;
  cairo_set_source_rgb(cr, r, g, 0.25);
}

cairo_status_t AppendBytes(void* closure, const unsigned char* data, unsigned int length) {
  static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
  return CAIRO_STATUS_SUCCESS;
}

// A PNG of an RGB image, at most `max_side` pixels a side.
std::string PngOf(const model::Image& image, int64_t max_side) {
  const double scale = std::min(1.0, static_cast<double>(max_side) / std::max(image.width, image.height));
  const model::ImageSize size{.height = std::max<int64_t>(1, std::llround(image.height * scale)),
                              .width = std::max<int64_t>(1, std::llround(image.width * scale))};
  const model::Image small = model::ResizeBicubicAntialias(image, size);
  cairo_surface_t* surface =
      cairo_image_surface_create(CAIRO_FORMAT_RGB24, static_cast<int>(small.width), static_cast<int>(small.height));
  unsigned char* data = cairo_image_surface_get_data(surface);
  const int stride = cairo_image_surface_get_stride(surface);
  cairo_surface_flush(surface);
  for (int64_t y = 0; y < small.height; ++y) {
    auto* row = reinterpret_cast<uint32_t*>(data + y * stride);
    for (int64_t x = 0; x < small.width; ++x) {
      const uint8_t* p = small.row(y) + 3 * x;
      row[x] = (uint32_t{p[0]} << 16) | (uint32_t{p[1]} << 8) | p[2];
    }
  }
  cairo_surface_mark_dirty(surface);
  std::string png;
  cairo_surface_write_to_png_stream(surface, AppendBytes, &png);
  cairo_surface_destroy(surface);
  return png;
}

std::string Html(const std::string& s) {
  return absl::StrReplaceAll(s, {{"&", "&amp;"}, {"<", "&lt;"}, {">", "&gt;"}, {"\"", "&quot;"}});
}

}  // namespace

double CellSummary::mean_logprob() const {
  return scored > 0 ? logprob_sum / static_cast<double>(scored) : std::numeric_limits<double>::quiet_NaN();
}

std::vector<CellSummary> SummarizeCells(const std::vector<Json>& rows) {
  std::map<std::pair<int64_t, double>, CellSummary> cells;
  for (const Json& r : rows) {
    if (!r.contains("length") || !r.contains("depth")) continue;
    const auto key = std::make_pair(r["length"].get<int64_t>(), r["depth"].get<double>());
    CellSummary& c = cells[key];
    c.length = key.first;
    c.depth = key.second;
    ++c.asked;
    if (r.contains("error")) ++c.errors;
    if (r.value("correct", false)) ++c.right;
    if (r.contains("answer_logprob") && r["answer_logprob"].is_number()) {
      ++c.scored;
      c.logprob_sum += r["answer_logprob"].get<double>();
    }
    if (r.contains("vision_s") && r["vision_s"].is_number()) {
      ++c.timed;
      c.vision_s += r["vision_s"].get<double>();
    }
  }
  std::vector<CellSummary> out;
  for (const auto& [k, c] : cells) out.push_back(c);
  return out;
}

absl::StatusOr<ReportFiles> WriteReport(const std::vector<Json>& rows, const std::vector<Needle>& needles,
                                        const std::string& dir, const std::string& title) {
  std::set<int64_t> lengths;
  std::set<double> depths;
  std::map<std::pair<int64_t, double>, CellSummary> cells;
  for (const CellSummary& c : SummarizeCells(rows)) {
    lengths.insert(c.length);
    depths.insert(c.depth);
    cells[{c.length, c.depth}] = c;
  }
  if (cells.empty()) return absl::InvalidArgumentError("no results to report");

  bool scored = false;
  for (const auto& [k, c] : cells) scored |= c.scored > 0;

  // The heat map: depth across, length down (longest at the bottom); the accuracy panel, and
  // beside it the mean answer log-probability's when answers were scored.
  const int cell_w = 64, cell_h = 40, left = 90, top = 60, right = 30, bottom = 70, gap = 40;
  const int cols = static_cast<int>(depths.size()), nrows = static_cast<int>(lengths.size());
  const int panel_w = cols * cell_w;
  ReportFiles files;
  files.width = left + panel_w + (scored ? gap + panel_w : 0) + right;
  files.height = top + nrows * cell_h + bottom;
  cairo_surface_t* surface = cairo_image_surface_create(CAIRO_FORMAT_RGB24, files.width, files.height);
  cairo_t* cr = cairo_create(surface);
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);
  cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  auto text = [&](const std::string& s, double x, double y, double size, bool centred) {
    cairo_set_font_size(cr, size);
    cairo_text_extents_t e;
    cairo_text_extents(cr, s.c_str(), &e);
    cairo_move_to(cr, centred ? x - e.width / 2 - e.x_bearing : x, y);
    cairo_show_text(cr, s.c_str());
  };
  cairo_set_source_rgb(cr, 0, 0, 0);
  text(title, files.width / 2.0, 24, 15, true);
  // One panel at x0: each cell coloured by `colour` (in [0, 1]: red to green) and labelled;
  // cells without a value grey.
  auto panel = [&](int x0, const std::string& name, const std::function<std::optional<double>(const CellSummary&)>& colour,
                   const std::function<std::string(const CellSummary&)>& label) {
    cairo_set_source_rgb(cr, 0, 0, 0);
    text(name, x0 + panel_w / 2.0, top - 12, 12, true);
    int row = 0;
    for (int64_t length : lengths) {
      int col = 0;
      for (double depth : depths) {
        const double x = x0 + col * cell_w, y = top + row * cell_h;
        auto it = cells.find({length, depth});
        const std::optional<double> value = it == cells.end() ? std::nullopt : colour(it->second);
        if (value) {
          AccuracyColour(cr, *value);
        } else {
          cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
        }
        cairo_rectangle(cr, x + 1, y + 1, cell_w - 2, cell_h - 2);
        cairo_fill(cr);
        cairo_set_source_rgb(cr, 0, 0, 0);
        if (value) text(label(it->second), x + cell_w / 2.0, y + cell_h / 2.0 + 5, 13, true);
        ++col;
      }
      ++row;
    }
    int col = 0;
    for (double depth : depths) {
      text(absl::StrFormat("%.2f", depth), x0 + col * cell_w + cell_w / 2.0, top + nrows * cell_h + 20, 12, true);
      ++col;
    }
    text("needle depth", x0 + panel_w / 2.0, top + nrows * cell_h + 48, 13, true);
  };
  panel(left, "accuracy", [](const CellSummary& c) { return std::optional<double>(c.accuracy()); },
        [](const CellSummary& c) { return absl::StrFormat("%.0f%%", 100.0 * c.accuracy()); });
  if (scored) {
    // Coloured by the answer's mean probability, exp(mean log p); labelled with the log p.
    panel(left + panel_w + gap, "mean log p(answer)",
          [](const CellSummary& c) { return c.scored > 0 ? std::optional<double>(std::exp(c.mean_logprob())) : std::nullopt; },
          [](const CellSummary& c) { return absl::StrFormat("%.2f", c.mean_logprob()); });
  }
  cairo_set_source_rgb(cr, 0, 0, 0);
  int row = 0;
  for (int64_t length : lengths) {
    text(LengthLabel(length), left - 10 - 40, top + row * cell_h + cell_h / 2.0 + 5, 13, false);
    ++row;
  }
  cairo_save(cr);
  cairo_translate(cr, 18, top + nrows * cell_h / 2.0);
  cairo_rotate(cr, -1.5707963);
  text("video length (visual tokens)", 0, 0, 13, true);
  cairo_restore(cr);
  cairo_destroy(cr);
  std::filesystem::create_directories(dir);
  files.heatmap_png = (std::filesystem::path(dir) / "heatmap.png").string();
  std::string png;
  cairo_surface_write_to_png_stream(surface, AppendBytes, &png);
  const cairo_status_t written = cairo_surface_write_to_png(surface, files.heatmap_png.c_str());
  cairo_surface_destroy(surface);
  if (written != CAIRO_STATUS_SUCCESS) {
    return absl::UnavailableError(absl::StrCat("cannot write ", files.heatmap_png, ": ", cairo_status_to_string(written)));
  }

  // The page: everything inline (the heat map and the needles as data: URLs).
  std::map<std::string, std::string> needle_png;
  for (const Needle& n : needles) needle_png[n.id] = absl::Base64Escape(PngOf(n.image, 96));
  std::ostringstream h;
  h << "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" << Html(title) << "</title><style>"
    << "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
       "padding:4px 8px;vertical-align:top}.right{background:#dfd}.wrong{background:#fdd}.error{background:#eee}"
    << "</style></head><body>\n<h1>" << Html(title) << "</h1>\n<img alt=\"accuracy by length and depth\" src=\"data:image/png;base64,"
    << absl::Base64Escape(png) << "\">\n<h2>Cells</h2>\n<table><tr><th>length</th><th>depth</th><th>right</th>"
    << "<th>asked</th><th>errors</th><th>mean log p(answer)</th><th>vision s</th></tr>\n";
  for (const auto& [k, c] : cells) {
    h << "<tr><td>" << k.first << "</td><td>" << absl::StrFormat("%.2f", k.second) << "</td><td>" << c.right
      << "</td><td>" << c.asked << "</td><td>" << c.errors << "</td><td>"
      << (c.scored > 0 ? absl::StrFormat("%.3f", c.mean_logprob()) : "") << "</td><td>"
      << (c.timed > 0 ? absl::StrFormat("%.2f", c.vision_s) : "") << "</td></tr>\n";
  }
  h << "</table>\n<h2>Questions</h2>\n<table><tr><th>cell</th><th>needle</th><th>question</th><th>needle at</th>"
    << "<th>answer</th></tr>\n";
  for (const Json& r : rows) {
    if (!r.contains("key")) continue;
    const std::string cls = r.contains("error") ? "error" : r.value("correct", false) ? "right" : "wrong";
    const std::string needle = r.value("needle", "");
    h << "<tr class=\"" << cls << "\"><td>" << Html(r["key"].get<std::string>()) << "</td><td>";
    if (auto it = needle_png.find(needle); it != needle_png.end()) {
      h << "<img alt=\"" << Html(needle) << "\" src=\"data:image/png;base64," << it->second << "\"><br>";
    }
    h << Html(needle) << "</td><td>" << Html(r.value("kind", "")) << " " << r.value("question", 0) << "</td><td>"
      << Html(r.value("needle_timestamp", "")) << " (group " << r.value("needle_group", 0) << " of "
      << r.value("frame_groups", 0) << ")</td><td>";
    if (r.contains("error")) {
      h << "error " << r["error"].value("status", 0) << ": " << Html(r["error"].value("message", ""));
    } else {
      h << Html(r.value("answer", ""));
      if (r.contains("answer_logprob") && r["answer_logprob"].is_number()) {
        h << "<br><small>log p(" << Html(r.value("reference", "")) << ") = "
          << absl::StrFormat("%.3f", r["answer_logprob"].get<double>()) << "</small>";
      }
    }
    h << "</td></tr>\n";
  }
  h << "</table>\n</body></html>\n";
  files.html = (std::filesystem::path(dir) / "report.html").string();
  std::ofstream out(files.html);
  out << h.str();
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write ", files.html));
  return files;
}

}  // namespace q3vl::cluster::niah
