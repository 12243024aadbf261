#include "model/visual_features.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace q3vl::model {
namespace {

// One kind's items through the cache. Without a cache: `media` as one tower pass. With one:
// the cache's units (images, video frame groups: CacheUnits) looked up in order (a unit
// repeated within the request is looked up once), the missing ones encoded in one pass
// (served, on a vision rank) and inserted as views of that pass's output (no copy; the pass's
// buffer lives until its last unit leaves the cache), and the kind's table assembled from hits
// and new units in order (the pass's output itself when every unit was new).
VisionOutput EncodeKind(const Qwen3VL& model, const VisionInput& media, MediaKind kind, EncoderCache* cache,
                        const TraceFn* trace, bool serve, const std::vector<Digest256>* known = nullptr) {
  if (media.grids.empty()) return {};
  if (cache == nullptr) {
    if (serve) {
      model.ServeVision(media);
      return {};
    }
    return model.RunVision(media, trace);
  }
  const VisionInput in = CacheUnits(media, kind);
  const int64_t merge = model.config().vision.spatial_merge_size * model.config().vision.spatial_merge_size;
  const std::vector<Digest256> digests = known != nullptr ? *known : DigestMediaItems(in, kind);
  Q3VL_CHECK_EQ(digests.size(), in.grids.size()) << "digests do not match the media";
  const size_t n = digests.size();
  std::vector<EncodedItem> items(n);
  std::vector<int64_t> source(n, -1);  // index into the missing items, or -1 for a hit
  std::vector<size_t> missing;         // item index of each missing item (first occurrences)
  std::vector<int64_t> first_row(n + 1, 0);
  for (size_t i = 0; i < n; ++i) first_row[i + 1] = first_row[i] + in.grids[i][0] * in.grids[i][1] * in.grids[i][2];
  for (size_t i = 0; i < n; ++i) {
    const auto earlier = std::find(digests.begin(), digests.begin() + i, digests[i]) - digests.begin();
    if (static_cast<size_t>(earlier) < i) {
      source[i] = source[earlier];
      items[i] = items[earlier];
      continue;
    }
    if (const EncodedItem* hit = cache->Lookup(digests[i])) {
      items[i] = *hit;
      continue;
    }
    source[i] = static_cast<int64_t>(missing.size());
    missing.push_back(i);
  }
  std::vector<EncodedItem> fresh(missing.size());
  if (!missing.empty()) {
    VisionInput subset;
    if (missing.size() == n) {
      subset = in;
    } else {
      const int64_t cols = in.pixel_values.dim(1);
      int64_t rows = 0;
      for (size_t i : missing) rows += first_row[i + 1] - first_row[i];
      subset.pixel_values = Tensor::Empty(DType::kF32, {rows, cols});
      int64_t at = 0;
      for (size_t i : missing) {
        const int64_t r = first_row[i + 1] - first_row[i];
        std::copy_n(in.pixel_values.data<float>() + first_row[i] * cols, r * cols,
                    subset.pixel_values.data<float>() + at * cols);
        at += r;
        subset.grids.push_back(in.grids[i]);
      }
    }
    VisionOutput out;
    if (serve) model.ServeVision(subset);
    else out = model.RunVision(subset, trace);
    int64_t row = 0;
    for (size_t j = 0; j < missing.size(); ++j) {
      const size_t i = missing[j];
      EncodedItem& item = fresh[j];
      item.tokens = (first_row[i + 1] - first_row[i]) / merge;
      if (!serve) {
        item.embeds = out.embeds.Slice(0, row, row + item.tokens);
        for (const Tensor& d : out.deepstack) item.deepstack.push_back(d.Slice(0, row, row + item.tokens));
      }
      row += item.tokens;
      cache->Insert(digests[i], item);
    }
    if (!serve && missing.size() == n) return out;  // every item new, in order: the pass itself
  }
  if (serve) return {};
  VisionOutput table;
  std::vector<Tensor> embeds;
  std::vector<std::vector<Tensor>> deepstack;
  for (size_t i = 0; i < n; ++i) {
    const EncodedItem& item = source[i] >= 0 ? fresh[source[i]] : items[i];
    embeds.push_back(item.embeds);
    deepstack.resize(item.deepstack.size());
    for (size_t k = 0; k < item.deepstack.size(); ++k) deepstack[k].push_back(item.deepstack[k]);
  }
  table.embeds = ConcatRows(model.backend(), embeds);
  for (const std::vector<Tensor>& parts : deepstack) table.deepstack.push_back(ConcatRows(model.backend(), parts));
  return table;
}

// Rows of `image` ([Ni, D]) and `video` ([Nv, D]) in the order of the visual tokens `ids`.
Tensor Interleave(Backend& backend, const Tensor& image, const Tensor& video, const std::vector<int64_t>& ids,
                  int64_t image_token, int64_t hidden) {
  std::vector<int64_t> order;
  int64_t next_image = 0, next_video = 0;
  const int64_t num_images = image.defined() ? image.dim(0) : 0;
  for (int64_t id : ids) {
    if (id == image_token) order.push_back(next_image++);
    else order.push_back(num_images + next_video++);
  }
  const int64_t n = static_cast<int64_t>(order.size());
  Tensor table = ConcatRows(backend, num_images > 0 && next_video > 0 ? std::vector<Tensor>{image, video}
                                     : num_images > 0               ? std::vector<Tensor>{image}
                                                                    : std::vector<Tensor>{video});
  Tensor out = backend.Allocate(DType::kF32, {n, hidden});
  if (n > 0) {
    backend.GatherRows({.table = table, .ids = Upload(backend, Tensor::FromVectorI64(order, {n})), .out = out});
  }
  return out;
}

}  // namespace

Tensor ConcatRows(Backend& backend, const std::vector<Tensor>& parts) {
  int64_t rows = 0;
  for (const Tensor& t : parts) rows += t.dim(0);
  Tensor out = backend.Allocate(DType::kF32, {rows, parts.empty() ? 0 : parts[0].dim(1)});
  int64_t at = 0;
  for (const Tensor& t : parts) {
    if (t.dim(0) == 0) continue;
    Tensor dst = out.Slice(0, at, at + t.dim(0));
    backend.Copy(t, dst);
    at += t.dim(0);
  }
  return out;
}

VisualFeatures EncodeVisualFeatures(const Qwen3VL& model, const std::vector<int64_t>& input_ids,
                                    const VisionInput& images, const VisionInput& videos, const TraceFn* trace,
                                    EncoderCache* cache, const MediaDigests* digests) {
  const ModelConfig& cfg = model.config();
  Backend& backend = model.backend();
  std::vector<int64_t> visual_ids;
  for (int64_t id : input_ids) {
    if (id == cfg.image_token_id || id == cfg.video_token_id) visual_ids.push_back(id);
  }
  VisualFeatures out;
  if (visual_ids.empty()) return out;
  const VisionOutput image = EncodeKind(model, images, MediaKind::kImage, cache, trace, /*serve=*/false,
                                        digests ? &digests->images : nullptr);
  const VisionOutput video = EncodeKind(model, videos, MediaKind::kVideo, cache, trace, /*serve=*/false,
                                        digests ? &digests->videos : nullptr);
  const int64_t d = cfg.text.hidden_size;
  out.embeds = Interleave(backend, image.embeds, video.embeds, visual_ids, cfg.image_token_id, d);
  for (size_t k = 0; k < cfg.vision.deepstack_visual_indexes.size(); ++k) {
    out.deepstack.push_back(Interleave(backend, image.deepstack.empty() ? Tensor() : image.deepstack[k],
                                       video.deepstack.empty() ? Tensor() : video.deepstack[k], visual_ids,
                                       cfg.image_token_id, d));
  }
  return out;
}

void ServeVisualFeatures(const Qwen3VL& model, const VisionInput& images, const VisionInput& videos,
                         EncoderCache* cache) {
  EncodeKind(model, images, MediaKind::kImage, cache, nullptr, /*serve=*/true);
  EncodeKind(model, videos, MediaKind::kVideo, cache, nullptr, /*serve=*/true);
}

absl::Status CheckPrompt(const ModelConfig& cfg, const std::vector<int64_t>& input_ids, const VisionInput& images,
                         const VisionInput& videos, const SamplingParams& sampling) {
  Q3VL_RETURN_IF_ERROR(sampling.Validate());
  if (input_ids.empty()) return absl::InvalidArgumentError("empty prompt");
  for (size_t i = 0; i < input_ids.size(); ++i) {
    if (input_ids[i] < 0 || input_ids[i] >= cfg.text.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", input_ids[i], " at position ", i,
                                                     " is outside the vocabulary [0, ", cfg.text.vocab_size, ")"));
    }
  }
  const int64_t total = static_cast<int64_t>(input_ids.size()) + sampling.max_new_tokens;
  if (total > cfg.text.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("prompt (", input_ids.size(), ") + max_new_tokens (",
        sampling.max_new_tokens, ") exceeds the context limit ", cfg.text.max_position_embeddings));
  }
  const int64_t merge = cfg.vision.spatial_merge_size * cfg.vision.spatial_merge_size;
  const struct { const VisionInput& in; int64_t token; const char* what; } kinds[] = {
      {images, cfg.image_token_id, "image"}, {videos, cfg.video_token_id, "video"}};
  for (const auto& k : kinds) {
    int64_t patches = 0;
    for (const GridThw& g : k.in.grids) patches += g[0] * g[1] * g[2];
    if (!k.in.grids.empty()) Q3VL_RETURN_IF_ERROR(Annotate(CheckVisionInput(cfg.vision, k.in), k.what));
    const int64_t placeholders = std::count(input_ids.begin(), input_ids.end(), k.token);
    if (placeholders != patches / merge) {
      return absl::InvalidArgumentError(absl::StrCat("prompt has ", placeholders, " ", k.what,
          " placeholder tokens but the ", k.what, " grids give ", patches / merge));
    }
  }
  return absl::OkStatus();
}

}  // namespace q3vl::model
