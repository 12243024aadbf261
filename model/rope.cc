#include "model/rope.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace q3vl::model {
namespace {

// Appends `n` text positions p, p+1, ... on all axes.
void AppendText(std::array<std::vector<int64_t>, 3>& pos, int64_t& p, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    for (auto& axis : pos) axis.push_back(p + i);
  }
  p += n;
}

// Appends one grid (t, h, w) after merging; returns false on an empty grid.
void AppendGrid(std::array<std::vector<int64_t>, 3>& pos, int64_t& p, int64_t t, int64_t h, int64_t w) {
  for (int64_t ti = 0; ti < t; ++ti) {
    for (int64_t r = 0; r < h; ++r) {
      for (int64_t c = 0; c < w; ++c) {
        pos[0].push_back(p + ti);
        pos[1].push_back(p + r);
        pos[2].push_back(p + c);
      }
    }
  }
  p += std::max({t, h, w});
}

}  // namespace

absl::StatusOr<RopeIndex> GetRopeIndex(const RopeIndexParams& p) {
  const std::vector<int64_t>& ids = *p.input_ids;
  const std::vector<GridThw> no_grids;
  const std::vector<GridThw>& images = p.image_grids ? *p.image_grids : no_grids;
  // Each video contributes one grid (1, h, w) per temporal group.
  std::vector<GridThw> groups;
  if (p.video_grids) {
    for (const GridThw& g : *p.video_grids) {
      for (int64_t t = 0; t < g[0]; ++t) groups.push_back({1, g[1], g[2]});
    }
  }
  const int64_t m = p.spatial_merge_size;
  std::array<std::vector<int64_t>, 3> pos;
  int64_t next = 0;
  size_t image = 0, group = 0;
  size_t i = 0;
  while (i < ids.size()) {
    const bool is_image = ids[i] == p.image_token_id, is_video = ids[i] == p.video_token_id;
    if (!is_image && !is_video) {
      size_t j = i;
      while (j < ids.size() && ids[j] != p.image_token_id && ids[j] != p.video_token_id) ++j;
      AppendText(pos, next, static_cast<int64_t>(j - i));
      i = j;
      continue;
    }
    const GridThw* grid = nullptr;
    if (is_image) {
      if (image >= images.size()) {
        return absl::InvalidArgumentError(absl::StrCat("prompt has more image placeholder runs than the ",
                                                       images.size(), " image grid(s) given"));
      }
      grid = &images[image++];
    } else {
      if (group >= groups.size()) {
        return absl::InvalidArgumentError(absl::StrCat("prompt has more video placeholder runs than the ",
                                                       groups.size(), " video frame group(s) given"));
      }
      grid = &groups[group++];
    }
    const int64_t t = (*grid)[0], h = (*grid)[1] / m, w = (*grid)[2] / m;
    const int64_t n = t * h * w;
    for (int64_t k = 0; k < n; ++k) {
      if (i + k >= ids.size() || ids[i + k] != ids[i]) {
        return absl::InvalidArgumentError(absl::StrCat("placeholder run at token ", i, " is shorter than the ",
                                                       n, " tokens its grid (", (*grid)[0], ", ", (*grid)[1], ", ",
                                                       (*grid)[2], ") needs"));
      }
    }
    AppendGrid(pos, next, t, h, w);
    i += n;
  }
  if (image != images.size() || group != groups.size()) {
    return absl::InvalidArgumentError(absl::StrCat("prompt uses ", image, " of ", images.size(), " image grid(s) and ",
                                                   group, " of ", groups.size(), " video frame group(s)"));
  }
  RopeIndex out;
  int64_t max_pos = -1;
  for (const auto& axis : pos) {
    for (int64_t v : axis) max_pos = std::max(max_pos, v);
    out.positions.insert(out.positions.end(), axis.begin(), axis.end());
  }
  out.rope_delta = max_pos + 1 - static_cast<int64_t>(ids.size());
  return out;
}

TextRopeFrequencies TextRope(const TextConfig& config) {
  const int64_t d = config.head_dim, half = d / 2;
  TextRopeFrequencies out;
  out.inv_freq.resize(half);
  const double base = config.rope_theta;
  if (!config.yarn.enabled) {
    for (int64_t j = 0; j < half; ++j) {
      out.inv_freq[j] = static_cast<float>(1.0 / std::pow(base, static_cast<double>(2 * j) / d));
    }
    return out;
  }
  const TextConfig::Yarn& y = config.yarn;
  const double factor = y.factor;
  const double original = static_cast<double>(
      y.original_max_position_embeddings > 0 ? y.original_max_position_embeddings : config.max_position_embeddings);
  const auto mscale = [](double scale, double m) { return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
  double attention = y.attention_factor;
  if (attention == 0.0) {
    attention = (y.mscale != 0.0 && y.mscale_all_dim != 0.0) ? mscale(factor, y.mscale) / mscale(factor, y.mscale_all_dim)
                                                             : mscale(factor, 1.0);
  }
  out.attention_scaling = static_cast<float>(attention);

  // The dimension whose wavelength turns `rotations` times over the original context.
  const auto correction_dim = [&](double rotations) {
    return static_cast<double>(d) * std::log(original / (rotations * 2.0 * M_PI)) / (2.0 * std::log(base));
  };
  double low = correction_dim(y.beta_fast), high = correction_dim(y.beta_slow);
  if (y.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, static_cast<double>(d - 1));
  if (low == high) high += 0.001;
  for (int64_t j = 0; j < half; ++j) {
    const double pos_freq = std::pow(base, static_cast<double>(2 * j) / d);
    const double extrapolation = 1.0 / pos_freq, interpolation = 1.0 / (factor * pos_freq);
    const double ramp = std::clamp((static_cast<double>(j) - low) / (high - low), 0.0, 1.0);
    const double keep = 1.0 - ramp;  // the share of extrapolation: 1 for the fast dimensions
    out.inv_freq[j] = static_cast<float>(interpolation * (1.0 - keep) + extrapolation * keep);
  }
  return out;
}

RopeTables MropeTables(const TextConfig& config, const std::vector<int64_t>& positions, int64_t num_tokens) {
  const int64_t d = config.head_dim, half = d / 2;
  Q3VL_CHECK_EQ(static_cast<int64_t>(positions.size()), 3 * num_tokens);
  const TextRopeFrequencies freq = TextRope(config);
  const std::vector<float>& inv = freq.inv_freq;
  const float scale = freq.attention_scaling;
  std::vector<int> axis(half);
  const auto& s = config.mrope_section;
  for (int64_t j = 0; j < half; ++j) {
    axis[j] = (j % 3 == 1 && j < 3 * s[1]) ? 1 : (j % 3 == 2 && j < 3 * s[2]) ? 2 : 0;
  }
  RopeTables out{Tensor::Empty(DType::kF32, {num_tokens, d}), Tensor::Empty(DType::kF32, {num_tokens, d})};
  float* c = out.cos.data<float>();
  float* sn = out.sin.data<float>();
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int64_t j = 0; j < half; ++j) {
      const float angle = static_cast<float>(positions[axis[j] * num_tokens + t]) * inv[j];
      c[t * d + j] = c[t * d + j + half] = std::cos(angle) * scale;
      sn[t * d + j] = sn[t * d + j + half] = std::sin(angle) * scale;
    }
  }
  return out;
}

RopeTables VisionRopeTables(int64_t head_dim, const std::vector<int64_t>& rows,
                            const std::vector<int64_t>& cols) {
  const int64_t n = static_cast<int64_t>(rows.size());
  const int64_t r = head_dim / 2, quarter = r / 2;
  std::vector<float> inv(quarter);
  for (int64_t q = 0; q < quarter; ++q) {
    inv[q] = static_cast<float>(1.0 / std::pow(10000.0, static_cast<double>(2 * q) / r));
  }
  RopeTables out{Tensor::Empty(DType::kF32, {n, head_dim}), Tensor::Empty(DType::kF32, {n, head_dim})};
  float* c = out.cos.data<float>();
  float* s = out.sin.data<float>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t q = 0; q < quarter; ++q) {
      const float angles[2] = {static_cast<float>(rows[i]) * inv[q], static_cast<float>(cols[i]) * inv[q]};
      for (int a = 0; a < 2; ++a) {
        const int64_t j = a * quarter + q;
        c[i * head_dim + j] = c[i * head_dim + j + r] = std::cos(angles[a]);
        s[i * head_dim + j] = s[i * head_dim + j + r] = std::sin(angles[a]);
      }
    }
  }
  return out;
}

}  // namespace q3vl::model
