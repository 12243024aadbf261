// Antialiased bicubic resize of 8-bit RGB images, bit-exact with PyTorch's CPU uint8 kernel
// (interpolate(mode="bicubic", antialias=True, align_corners=False), which torchvision's
// resize uses): PIL-style support widened when downscaling, cubic a = -0.5, weights rounded
// to int16 fixed point at one precision per axis; the horizontal pass is rounded and clamped
// to uint8, then the vertical pass runs on that. Stateless and thread-safe.
#ifndef Q3VL_MODEL_MEDIA_RESIZE_H_
#define Q3VL_MODEL_MEDIA_RESIZE_H_

#include <cstdint>
#include <vector>

#include "model/media/image.h"

namespace q3vl::model {

// Fixed-point filter taps for one axis (exposed for tests).
struct ResizeAxisWeights {
  int64_t max_taps = 0;          // stride of `weights`
  int precision = 0;             // output = (sum + 2^(precision-1)) >> precision
  std::vector<int64_t> first;    // [out_size] first source index
  std::vector<int64_t> count;    // [out_size] taps used (<= max_taps)
  std::vector<int16_t> weights;  // [out_size, max_taps]
};

// REQUIRES: in_size >= 1, out_size >= 1.
ResizeAxisWeights ComputeResizeAxisWeights(int64_t in_size, int64_t out_size);

// Resizes `src` to `size`; returns a copy when the size is unchanged.
// REQUIRES: src non-empty, size.height >= 1, size.width >= 1.
Image ResizeBicubicAntialias(const Image& src, ImageSize size);

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_MEDIA_RESIZE_H_
