#include "model/vision.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace q3vl::model {
namespace {
constexpr char kPrefix[] = "model.visual.";
}  // namespace

VisionTower::Merger VisionTower::LoadMerger(WeightLoader& loader, const std::string& prefix,
                                            int64_t norm_dim, int64_t merged_dim, int64_t out_dim,
                                            bool postshuffle) {
  Merger m;
  m.norm_w = loader.Get(prefix + "norm.weight", {norm_dim});
  m.norm_b = loader.Get(prefix + "norm.bias", {norm_dim});
  m.fc1_w = loader.GetMatrix(prefix + "linear_fc1.weight", {merged_dim, merged_dim});
  m.fc1_b = loader.Get(prefix + "linear_fc1.bias", {merged_dim});
  m.fc2_w = loader.GetMatrix(prefix + "linear_fc2.weight", {out_dim, merged_dim});
  m.fc2_b = loader.Get(prefix + "linear_fc2.bias", {out_dim});
  m.postshuffle_norm = postshuffle;
  return m;
}

VisionTower::VisionTower(const VisionConfig& config, WeightLoader& loader) : config_(config) {
  const int64_t dv = config.hidden_size, iv = config.intermediate_size;
  const std::string p = kPrefix;
  patch_w_ = loader.Get(p + "patch_embed.proj.weight",
                        {dv, config.in_channels, config.temporal_patch_size, config.patch_size,
                         config.patch_size}).Reshape({dv, config.patch_dim()});
  patch_b_ = loader.Get(p + "patch_embed.proj.bias", {dv});
  // Interpolated on the host per input (VisionTower::PositionEmbedding), so kept there.
  pos_table_ = loader.GetOnHost(p + "pos_embed.weight", {config.num_position_embeddings, dv});
  for (int64_t j = 0; j < config.depth; ++j) {
    const std::string b = absl::StrCat(p, "blocks.", j, ".");
    blocks_.push_back({
        .norm1_w = loader.Get(b + "norm1.weight", {dv}),
        .norm1_b = loader.Get(b + "norm1.bias", {dv}),
        .norm2_w = loader.Get(b + "norm2.weight", {dv}),
        .norm2_b = loader.Get(b + "norm2.bias", {dv}),
        .qkv_w = loader.GetMatrix(b + "attn.qkv.weight", {3 * dv, dv}),
        .qkv_b = loader.Get(b + "attn.qkv.bias", {3 * dv}),
        .proj_w = loader.GetMatrix(b + "attn.proj.weight", {dv, dv}),
        .proj_b = loader.Get(b + "attn.proj.bias", {dv}),
        .fc1_w = loader.GetMatrix(b + "mlp.linear_fc1.weight", {iv, dv}),
        .fc1_b = loader.Get(b + "mlp.linear_fc1.bias", {iv}),
        .fc2_w = loader.GetMatrix(b + "mlp.linear_fc2.weight", {dv, iv}),
        .fc2_b = loader.Get(b + "mlp.linear_fc2.bias", {dv}),
    });
  }
  const int64_t merged = dv * config.spatial_merge_size * config.spatial_merge_size;
  merger_ = LoadMerger(loader, p + "merger.", dv, merged, config.out_hidden_size, false);
  for (size_t k = 0; k < config.deepstack_visual_indexes.size(); ++k) {
    deepstack_mergers_.push_back(LoadMerger(loader, absl::StrCat(p, "deepstack_merger_list.", k, "."),
                                            merged, merged, config.out_hidden_size, true));
  }
}

absl::Status VisionTower::CheckInput(const VisionInput& input) const {
  return CheckVisionInput(config_, input);
}

absl::Status CheckVisionInput(const VisionConfig& config, const VisionInput& input) {
  const int64_t m = config.spatial_merge_size;
  int64_t patches = 0;
  for (const GridThw& g : input.grids) {
    if (g[0] <= 0 || g[1] <= 0 || g[2] <= 0 || g[1] % m != 0 || g[2] % m != 0) {
      return absl::InvalidArgumentError(absl::StrCat("grid (", g[0], ", ", g[1], ", ", g[2],
          ") must be positive with h and w multiples of spatial_merge_size ", m));
    }
    patches += g[0] * g[1] * g[2];
  }
  if (input.pixel_values.rank() != 2 || input.pixel_values.dim(0) != patches ||
      input.pixel_values.dim(1) != config.patch_dim()) {
    return absl::InvalidArgumentError(absl::StrCat("pixel_values ", ShapeString(input.pixel_values.shape()),
        " do not match the grids: expected [", patches, ", ", config.patch_dim(), "]"));
  }
  return absl::OkStatus();
}

Tensor VisionTower::PositionEmbedding(const std::vector<GridThw>& grids, std::vector<int64_t>* rows,
                                      std::vector<int64_t>* cols) const {
  const int64_t dv = config_.hidden_size, m = config_.spatial_merge_size;
  int64_t side = 1;
  while (side * side < config_.num_position_embeddings) ++side;
  int64_t total = 0;
  for (const GridThw& g : grids) total += g[0] * g[1] * g[2];
  Tensor out = Tensor::Empty(DType::kF32, {total, dv});
  const Tensor table = pos_table_.ToF32();
  const float* tab = table.data<float>();
  float* o = out.data<float>();
  // torch.linspace(0, side - 1, n) on CPU in float32.
  auto linspace = [&](int64_t n) {
    std::vector<float> v(n, 0.0f);
    if (n == 1) return v;
    const float end = static_cast<float>(side - 1);
    const float step = end / static_cast<float>(n - 1);
    for (int64_t i = 0; i < n; ++i) {
      v[i] = i < n / 2 ? step * static_cast<float>(i) : end - step * static_cast<float>(n - 1 - i);
    }
    return v;
  };
  int64_t row_out = 0;
  for (const GridThw& g : grids) {
    const int64_t t = g[0], h = g[1], w = g[2];
    const std::vector<float> ys = linspace(h), xs = linspace(w);
    // Interpolated raster table [h * w, dv].
    std::vector<float> raster(h * w * dv);
    for (int64_t i = 0; i < h; ++i) {
      const int64_t fy = static_cast<int64_t>(ys[i]);
      const int64_t cy = std::min(fy + 1, side - 1);
      const float dy = ys[i] - static_cast<float>(fy);
      for (int64_t j = 0; j < w; ++j) {
        const int64_t fx = static_cast<int64_t>(xs[j]);
        const int64_t cx = std::min(fx + 1, side - 1);
        const float dx = xs[j] - static_cast<float>(fx);
        const float w00 = (1 - dy) * (1 - dx), w01 = (1 - dy) * dx, w10 = dy * (1 - dx), w11 = dy * dx;
        const float* t00 = tab + (fy * side + fx) * dv;
        const float* t01 = tab + (fy * side + cx) * dv;
        const float* t10 = tab + (cy * side + fx) * dv;
        const float* t11 = tab + (cy * side + cx) * dv;
        float* r = raster.data() + (i * w + j) * dv;
        for (int64_t c = 0; c < dv; ++c) r[c] = t00[c] * w00 + t01[c] * w01 + t10[c] * w10 + t11[c] * w11;
      }
    }
    // Merge-block order (t, bh, bw, ih, iw).
    for (int64_t ti = 0; ti < t; ++ti) {
      for (int64_t bh = 0; bh < h / m; ++bh) {
        for (int64_t bw = 0; bw < w / m; ++bw) {
          for (int64_t ih = 0; ih < m; ++ih) {
            for (int64_t iw = 0; iw < m; ++iw) {
              const int64_t r = bh * m + ih, c = bw * m + iw;
              std::copy_n(raster.data() + (r * w + c) * dv, dv, o + row_out * dv);
              rows->push_back(r);
              cols->push_back(c);
              ++row_out;
            }
          }
        }
      }
    }
  }
  return out;
}

void VisionTower::RunBlock(Backend& backend, const Block& block, const RopeTables& rope,
                           const std::vector<int64_t>& segments, Tensor& x) const {
  const int64_t n = x.dim(0), dv = config_.hidden_size, heads = config_.num_heads;
  const int64_t hv = config_.head_dim();
  Tensor y = backend.AllocateUninitialized(DType::kF32, {n, dv});  // [N, Dv]
  backend.LayerNorm({.x = x, .weight = block.norm1_w, .bias = block.norm1_b, .out = y});
  Tensor qkv = backend.AllocateUninitialized(DType::kF32, {n, 3 * dv});  // [N, 3 Dv] = [N, 3, heads, hv]
  backend.Gemm({.a = y, .b = block.qkv_w, .bias = block.qkv_b, .out = qkv});
  const Tensor qkv4 = qkv.Reshape({n, 3, heads, hv});
  Tensor q = backend.AllocateUninitialized(DType::kF32, {n, heads, hv});
  Tensor k = backend.AllocateUninitialized(DType::kF32, {n, heads, hv});
  Tensor v = backend.AllocateUninitialized(DType::kF32, {n, heads, hv});
  Tensor* parts[3] = {&q, &k, &v};
  for (int64_t i = 0; i < 3; ++i) {
    Tensor dst = parts[i]->Reshape({n, 1, heads, hv});
    backend.Copy(qkv4.Slice(1, i, i + 1), dst);
  }
  backend.Rope({.x = q, .cos = rope.cos, .sin = rope.sin});
  backend.Rope({.x = k, .cos = rope.cos, .sin = rope.sin});
  Tensor attn = backend.AllocateUninitialized(DType::kF32, {n, heads, hv});
  backend.Attention({.q = q, .k = k, .v = v, .q_starts = segments, .k_starts = segments,
                     .causal = false, .scale = 1.0f / std::sqrt(static_cast<float>(hv)), .out = attn});
  // x = x + attn · Wprojᵀ + b
  backend.Gemm({.a = attn.Reshape({n, dv}), .b = block.proj_w, .bias = block.proj_b, .out = x, .beta = 1.0f});
  backend.LayerNorm({.x = x, .weight = block.norm2_w, .bias = block.norm2_b, .out = y});
  Tensor hidden = backend.AllocateUninitialized(DType::kF32, {n, config_.intermediate_size});  // [N, Iv]
  backend.Gemm({.a = y, .b = block.fc1_w, .bias = block.fc1_b, .out = hidden});
  backend.Activation({.kind = ActivationKind::kGeluTanh, .x = hidden, .out = hidden});
  backend.Gemm({.a = hidden, .b = block.fc2_w, .bias = block.fc2_b, .out = x, .beta = 1.0f});
}

Tensor VisionTower::RunMerger(Backend& backend, const Merger& merger, const Tensor& x) const {
  const int64_t n = x.dim(0), dv = config_.hidden_size;
  const int64_t group = config_.spatial_merge_size * config_.spatial_merge_size;
  Tensor merged = backend.AllocateUninitialized(DType::kF32, {n / group, dv * group});  // [N/4, 4 Dv]
  if (merger.postshuffle_norm) {
    backend.LayerNorm({.x = x.Reshape({n / group, dv * group}), .weight = merger.norm_w,
                       .bias = merger.norm_b, .out = merged});
  } else {
    backend.LayerNorm({.x = x, .weight = merger.norm_w, .bias = merger.norm_b,
                       .out = merged.Reshape({n, dv})});
  }
  Tensor hidden = backend.AllocateUninitialized(DType::kF32, {n / group, dv * group});
  backend.Gemm({.a = merged, .b = merger.fc1_w, .bias = merger.fc1_b, .out = hidden});
  backend.Activation({.kind = ActivationKind::kGeluErf, .x = hidden, .out = hidden});
  Tensor out = backend.AllocateUninitialized(DType::kF32, {n / group, config_.out_hidden_size});
  backend.Gemm({.a = hidden, .b = merger.fc2_w, .bias = merger.fc2_b, .out = out});
  return out;
}

VisionOutput VisionTower::Forward(Backend& backend, const VisionInput& input, const TraceFn* trace) const {
  return Forward(backend, input, kMaxPatchesPerPass, trace);
}

VisionOutput VisionTower::Forward(Backend& backend, const VisionInput& input, int64_t max_patches,
                                  const TraceFn* trace) const {
  Q3VL_CHECK_GT(max_patches, 0);
  // Passes of consecutive segments: a video item is cut between frame groups, its pieces are
  // videos of fewer frame groups (the position embedding and rotary repeat per frame group).
  std::vector<VisionInput> passes;
  std::vector<int64_t> pass_rows = {0};  // patch row where each pass starts
  VisionInput current;
  int64_t current_patches = 0;
  auto flush = [&] {
    if (current_patches == 0) return;
    const int64_t begin = pass_rows.back();
    current.pixel_values = input.pixel_values.Slice(0, begin, begin + current_patches);
    pass_rows.push_back(begin + current_patches);
    passes.push_back(std::move(current));
    current = {};
    current_patches = 0;
  };
  for (const GridThw& g : input.grids) {
    const int64_t group = g[1] * g[2];
    for (int64_t t = 0; t < g[0];) {
      if (current_patches > 0 && current_patches + group > max_patches) flush();
      // As many of the item's remaining frame groups as fit (at least one).
      const int64_t take = std::clamp<int64_t>((max_patches - current_patches) / group, 1, g[0] - t);
      current.grids.push_back({take, g[1], g[2]});
      current_patches += take * group;
      t += take;
    }
  }
  flush();
  if (passes.size() <= 1) return RunPass(backend, input, trace);
  // Run each pass and place its merged rows (and DeepStack rows) after the previous ones.
  const int64_t merge = config_.spatial_merge_size * config_.spatial_merge_size;
  const int64_t rows = input.pixel_values.dim(0) / merge, out_dim = config_.out_hidden_size;
  VisionOutput out;
  out.embeds = backend.AllocateUninitialized(DType::kF32, {rows, out_dim});
  for (size_t i = 0; i < config_.deepstack_visual_indexes.size(); ++i) {
    out.deepstack.push_back(backend.AllocateUninitialized(DType::kF32, {rows, out_dim}));
  }
  for (size_t p = 0; p < passes.size(); ++p) {
    const VisionOutput part = RunPass(backend, passes[p], trace);
    const int64_t first = pass_rows[p] / merge, n = part.embeds.dim(0);
    std::vector<int64_t> ids(n);
    for (int64_t i = 0; i < n; ++i) ids[i] = first + i;
    const Tensor at = Upload(backend, Tensor::FromVectorI64(ids, {n}));
    backend.ScatterAddRows({.src = part.embeds, .ids = at, .out = out.embeds, .accumulate = false});
    for (size_t i = 0; i < part.deepstack.size(); ++i) {
      backend.ScatterAddRows({.src = part.deepstack[i], .ids = at, .out = out.deepstack[i], .accumulate = false});
    }
  }
  return out;
}

VisionOutput VisionTower::RunPass(Backend& backend, const VisionInput& input, const TraceFn* trace) const {
  const int64_t n = input.pixel_values.dim(0), dv = config_.hidden_size;
  Tensor x = backend.AllocateUninitialized(DType::kF32, {n, dv});  // [N, Dv]
  backend.Gemm({.a = Upload(backend, input.pixel_values.ToF32()), .b = patch_w_, .bias = patch_b_, .out = x});
  Trace(backend, trace, "vision_patch_embed", 0, x);
  std::vector<int64_t> rows, cols;
  const Tensor pos = Upload(backend, PositionEmbedding(input.grids, &rows, &cols));  // [N, Dv]
  Trace(backend, trace, "vision_pos_embed", 0, pos);
  backend.Add({.a = x, .b = pos, .out = x});
  const RopeTables rope = Upload(backend, VisionRopeTables(config_.head_dim(), rows, cols));
  std::vector<int64_t> segments = {0};
  for (const GridThw& g : input.grids) {
    for (int64_t t = 0; t < g[0]; ++t) segments.push_back(segments.back() + g[1] * g[2]);
  }
  VisionOutput out;
  size_t next_tap = 0;
  for (int64_t j = 0; j < config_.depth; ++j) {
    RunBlock(backend, blocks_[j], rope, segments, x);
    Trace(backend, trace, "vision_block", j, x);
    if (next_tap < config_.deepstack_visual_indexes.size() &&
        config_.deepstack_visual_indexes[next_tap] == j) {
      out.deepstack.push_back(RunMerger(backend, deepstack_mergers_[next_tap], x));
      ++next_tap;
    }
  }
  out.embeds = RunMerger(backend, merger_, x);
  return out;
}

}  // namespace q3vl::model
