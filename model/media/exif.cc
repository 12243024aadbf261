#include "model/media/exif.h"

#include <cstdint>
#include <cstring>

#include "absl/strings/match.h"

namespace q3vl::model {
namespace {

constexpr uint16_t kOrientationTag = 0x0112;
constexpr uint16_t kTypeShort = 3;
constexpr uint16_t kTypeLong = 4;
constexpr size_t kIfdEntryBytes = 12;

class TiffReader {
 public:
  TiffReader(absl::string_view data, bool big_endian) : data_(data), big_endian_(big_endian) {}
  bool U16(size_t pos, uint16_t* v) const {
    if (pos + 2 > data_.size()) return false;
    const auto* p = reinterpret_cast<const uint8_t*>(data_.data() + pos);
    *v = big_endian_ ? static_cast<uint16_t>(p[0] << 8 | p[1]) : static_cast<uint16_t>(p[1] << 8 | p[0]);
    return true;
  }
  bool U32(size_t pos, uint32_t* v) const {
    uint16_t a, b;
    if (!U16(pos, &a) || !U16(pos + 2, &b)) return false;
    *v = big_endian_ ? (uint32_t{a} << 16 | b) : (uint32_t{b} << 16 | a);
    return true;
  }

 private:
  absl::string_view data_;
  bool big_endian_;
};

// Destination (y, x) reads source (y0 + yy * y + yx * x, x0 + xy * y + xx * x).
struct SourceMap {
  int64_t y0, yy, yx, x0, xy, xx;
};

SourceMap MapFor(int orientation, int64_t h, int64_t w) {
  switch (orientation) {
    case 2:
      return {0, 1, 0, w - 1, 0, -1};  // mirror
    case 3:
      return {h - 1, -1, 0, w - 1, 0, -1};  // rotate 180
    case 4:
      return {h - 1, -1, 0, 0, 0, 1};  // flip
    case 5:
      return {0, 0, 1, 0, 1, 0};  // transpose
    case 6:
      return {h - 1, 0, -1, 0, 1, 0};  // rotate 90 clockwise
    case 7:
      return {h - 1, 0, -1, w - 1, -1, 0};  // transverse
    case 8:
      return {0, 0, 1, w - 1, -1, 0};  // rotate 90 counter-clockwise
    default:
      return {0, 1, 0, 0, 0, 1};
  }
}

}  // namespace

int ParseExifOrientation(absl::string_view exif) {
  if (absl::StartsWith(exif, absl::string_view("Exif\0\0", 6))) exif.remove_prefix(6);
  if (exif.size() < 8) return 1;
  bool big_endian;
  if (absl::StartsWith(exif, "MM")) {
    big_endian = true;
  } else if (absl::StartsWith(exif, "II")) {
    big_endian = false;
  } else {
    return 1;
  }
  const TiffReader r(exif, big_endian);
  uint16_t magic, num_entries;
  uint32_t ifd0;
  if (!r.U16(2, &magic) || magic != 42 || !r.U32(4, &ifd0) || !r.U16(ifd0, &num_entries)) return 1;
  for (size_t i = 0; i < num_entries; ++i) {
    const size_t entry = size_t{ifd0} + 2 + i * kIfdEntryBytes;
    uint16_t tag, type;
    uint32_t count;
    if (!r.U16(entry, &tag) || !r.U16(entry + 2, &type) || !r.U32(entry + 4, &count)) return 1;
    if (tag != kOrientationTag) continue;
    uint32_t value = 0;
    uint16_t short_value = 0;
    if (count < 1) return 1;
    if (type == kTypeShort && r.U16(entry + 8, &short_value)) {
      value = short_value;
    } else if (type != kTypeLong || !r.U32(entry + 8, &value)) {
      return 1;
    }
    return value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
  }
  return 1;
}

Image ApplyExifOrientation(Image image, int orientation) {
  if (orientation < 2 || orientation > 8) return image;
  const bool swap = orientation >= 5;
  const int64_t h = image.height, w = image.width;
  Image out = Image::Blank(swap ? w : h, swap ? h : w);
  const SourceMap m = MapFor(orientation, h, w);
  for (int64_t y = 0; y < out.height; ++y) {
    uint8_t* dst = out.row(y);
    for (int64_t x = 0; x < out.width; ++x) {
      const int64_t sy = m.y0 + m.yy * y + m.yx * x, sx = m.x0 + m.xy * y + m.xx * x;
      std::memcpy(dst + 3 * x, image.row(sy) + 3 * sx, 3);
    }
  }
  return out;
}

}  // namespace q3vl::model
