// What the media processors hand the vision tower: patch rows and one (t, h, w) grid per image
// or video. Plain data, shared by the processors (model/media) and the model.
#ifndef Q3VL_MODEL_MEDIA_VISION_INPUT_H_
#define Q3VL_MODEL_MEDIA_VISION_INPUT_H_

#include <array>
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace q3vl::model {

using GridThw = std::array<int64_t, 3>;  // (t, h, w) in patches

struct VisionInput {
  Tensor pixel_values;          // [N, C * tp * ps * ps], patches in merge-block order
  std::vector<GridThw> grids;   // one (t, h, w) per image or video
};

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_MEDIA_VISION_INPUT_H_
