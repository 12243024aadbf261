#include "model/vision_stage.h"

#include "core/check.h"
#include "parallel/layers.h"

namespace q3vl::model {
namespace {

int64_t Tokens(const ModelConfig& config, const VisionInput& input) {
  const int64_t m = config.vision.spatial_merge_size;
  int64_t patches = 0;
  for (const GridThw& g : input.grids) patches += g[0] * g[1] * g[2];
  return patches / (m * m);
}

// [1 + K, N, D]: embeds then each DeepStack feature, the one buffer that is broadcast.
Tensor Packed(Backend& backend, const ModelConfig& config, int64_t tokens) {
  const int64_t k = static_cast<int64_t>(config.vision.deepstack_visual_indexes.size());
  return backend.Allocate(DType::kF32, {1 + k, tokens, config.vision.out_hidden_size});
}

VisionOutput Unpack(const Tensor& packed) {
  VisionOutput out{.embeds = packed.Select(0)};
  for (int64_t i = 1; i < packed.dim(0); ++i) out.deepstack.push_back(packed.Select(i));
  return out;
}

}  // namespace

FrameGroupSplit SplitFrameGroups(const VisionInput& input, int parts) {
  FrameGroupSplit split;
  split.first_row.push_back(0);
  for (const GridThw& g : input.grids) {
    for (int64_t t = 0; t < g[0]; ++t) {
      split.groups.push_back({1, g[1], g[2]});
      split.first_row.push_back(split.first_row.back() + g[1] * g[2]);
    }
  }
  const int64_t total = split.first_row.back();
  split.first.assign(parts + 1, static_cast<int64_t>(split.groups.size()));
  split.first[0] = 0;
  // Share p starts at the first group whose start row reaches p / parts of the patches.
  size_t group = 0;
  for (int p = 1; p < parts; ++p) {
    while (group < split.groups.size() && split.first_row[group] * parts < total * p) ++group;
    split.first[p] = static_cast<int64_t>(group);
  }
  return split;
}

void ServeVision(Backend& backend, const VisionTower& tower, const VisionInput& input,
                 const VisionStageGroups& groups) {
  Q3VL_CHECK(groups.vision != nullptr);
  parallel::Communicator& vision = *groups.vision;
  const int rank = vision.rank(), size = vision.size();
  Q3VL_CHECK(rank != 0 || groups.bcast != nullptr) << "vision rank 0 broadcasts to stage 0";
  const FrameGroupSplit split = SplitFrameGroups(input, size);
  const int64_t m2 = tower.config().spatial_merge_size * tower.config().spatial_merge_size;
  // This rank's share as a VisionInput of (1, h, w) groups.
  const int64_t g0 = split.first[rank], g1 = split.first[rank + 1];
  VisionInput mine{.pixel_values = input.pixel_values.Slice(0, split.first_row[g0], split.first_row[g1]),
                   .grids = {split.groups.begin() + g0, split.groups.begin() + g1}};
  VisionOutput part;
  if (g1 > g0) part = tower.Forward(backend, mine);
  const int64_t num_features = 1 + static_cast<int64_t>(tower.config().deepstack_visual_indexes.size());
  auto feature = [&](int64_t f) -> const Tensor& { return f == 0 ? part.embeds : part.deepstack[f - 1]; };
  auto rows_of = [&](int p) { return std::make_pair(split.first_row[split.first[p]] / m2,
                                                    split.first_row[split.first[p + 1]] / m2); };
  std::vector<Tensor> mine_rows;  // this share's features (none when it is empty)
  for (int64_t f = 0; f < num_features && g1 > g0; ++f) mine_rows.push_back(feature(f));
  if (rank != 0) {  // this share to vision rank 0
    parallel::GatherAtRoot(vision, 0, mine_rows, {});
    return;
  }
  const int64_t tokens = split.first_row.back() / m2, d = tower.config().out_hidden_size;
  Tensor packed = backend.Allocate(DType::kF32, {num_features, tokens, d});  // [1 + K, N, D]
  std::vector<std::vector<Tensor>> shares(size);  // rank p's rows of each feature in `packed`
  for (int p = 0; p < size; ++p) {
    const auto [begin, end] = rows_of(p);
    for (int64_t f = 0; f < num_features && end > begin; ++f) shares[p].push_back(packed.Select(f).Slice(0, begin, end));
  }
  for (size_t f = 0; f < shares[0].size(); ++f) backend.Copy(mine_rows[f], shares[0][f]);
  parallel::GatherAtRoot(vision, 0, {}, shares);
  parallel::BroadcastFrom(groups.bcast, 0, packed);
}

VisionOutput ReceiveVision(Backend& backend, const ModelConfig& config, const VisionInput& input,
                           const VisionStageGroups& groups) {
  Q3VL_CHECK(groups.bcast != nullptr);
  Tensor packed = Packed(backend, config, Tokens(config, input));
  parallel::BroadcastFrom(groups.bcast, 0, packed);
  return Unpack(packed);
}

VisionOutput PlaceholderVision(Backend& backend, const ModelConfig& config, const VisionInput& input) {
  return Unpack(Packed(backend, config, Tokens(config, input)));
}

}  // namespace q3vl::model
