// Writes a NIAH cell's video (plan.h): the haystack's frames at the cell's rate and size,
// looped when the haystack is shorter than the cell and trimmed when longer, with the needle
// image in place of the frames of its group. H.264 MP4 (model/media/video_encode.h), which the
// serving path decodes like any user's video.
#ifndef Q3VL_CLUSTER_NIAH_COMPOSE_H_
#define Q3VL_CLUSTER_NIAH_COMPOSE_H_

#include <string>

#include "absl/status/status.h"
#include "cluster/niah/plan.h"
#include "model/media/image.h"

namespace q3vl::cluster::niah {

struct ComposeStats {
  int64_t haystack_frames_read = 0;  // decoded from the haystack (each output frame reads one)
  int64_t loops = 0;                 // passes over the haystack (1: no looping)
};

// Writes `out_path`: frame k shows the haystack at k / fps seconds (modulo its duration),
// resized to the geometry, except the needle's frames. `needle` is resized likewise.
absl::Status ComposeCellVideo(const std::string& haystack_path, const model::Image& needle, const Geometry& geometry,
                              const CellPlan& cell, const std::string& out_path, ComposeStats* stats = nullptr);

}  // namespace q3vl::cluster::niah

#endif  // Q3VL_CLUSTER_NIAH_COMPOSE_H_
