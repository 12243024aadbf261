#include "cluster/niah/report.h"

#include <cairo.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
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

  // The heat map: depth across, length down (longest at the bottom).
  const int cell_w = 64, cell_h = 40, left = 90, top = 60, right = 30, bottom = 70;
  const int cols = static_cast<int>(depths.size()), nrows = static_cast<int>(lengths.size());
  ReportFiles files;
  files.width = left + cols * cell_w + right;
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
  int row = 0;
  for (int64_t length : lengths) {
    int col = 0;
    for (double depth : depths) {
      const double x = left + col * cell_w, y = top + row * cell_h;
      auto it = cells.find({length, depth});
      if (it == cells.end()) {
        cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
      } else {
        AccuracyColour(cr, it->second.accuracy());
      }
      cairo_rectangle(cr, x + 1, y + 1, cell_w - 2, cell_h - 2);
      cairo_fill(cr);
      cairo_set_source_rgb(cr, 0, 0, 0);
      if (it != cells.end()) {
        text(absl::StrFormat("%.0f%%", 100.0 * it->second.accuracy()), x + cell_w / 2.0,
             y + cell_h / 2.0 + 5, 13, true);
      }
      ++col;
    }
    cairo_set_source_rgb(cr, 0, 0, 0);
    text(LengthLabel(length), left - 10 - 40, top + row * cell_h + cell_h / 2.0 + 5, 13, false);
    ++row;
  }
  int col = 0;
  for (double depth : depths) {
    text(absl::StrFormat("%.2f", depth), left + col * cell_w + cell_w / 2.0, top + nrows * cell_h + 20, 12, true);
    ++col;
  }
  text("needle depth", left + cols * cell_w / 2.0, top + nrows * cell_h + 48, 13, true);
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
    << "<th>asked</th><th>errors</th></tr>\n";
  for (const auto& [k, c] : cells) {
    h << "<tr><td>" << k.first << "</td><td>" << absl::StrFormat("%.2f", k.second) << "</td><td>" << c.right
      << "</td><td>" << c.asked << "</td><td>" << c.errors << "</td></tr>\n";
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
