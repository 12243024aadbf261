// Image: an owned 8-bit RGB picture, row-major and interleaved ([height, width, 3]). The common
// currency of the image/video decoders, the resize and the patchifier. A plain value type:
// copies are deep, and it is not synchronised (one writer at a time).
#ifndef Q3VL_MODEL_MEDIA_IMAGE_H_
#define Q3VL_MODEL_MEDIA_IMAGE_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace q3vl::model {

struct ImageSize {
  int64_t height = 0;
  int64_t width = 0;
};

struct Image {
  int64_t height = 0;
  int64_t width = 0;
  std::vector<uint8_t> rgb;  // [height, width, 3]

  static Image Blank(int64_t height, int64_t width) {
    return Image{height, width, std::vector<uint8_t>(static_cast<std::size_t>(height * width * 3))};
  }
  int64_t num_pixels() const { return height * width; }
  const uint8_t* row(int64_t y) const { return rgb.data() + y * width * 3; }
  uint8_t* row(int64_t y) { return rgb.data() + y * width * 3; }
};

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_MEDIA_IMAGE_H_
