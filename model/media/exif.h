// EXIF orientation: reading tag 0x0112 from a TIFF/EXIF block (JPEG APP1 "Exif\0\0" payload or
// a PNG eXIf chunk) and applying it the way PIL's ImageOps.exif_transpose does. Stateless and
// thread-safe; malformed EXIF is never an error (orientation 1 is assumed, as PIL does).
#ifndef Q3VL_MODEL_MEDIA_EXIF_H_
#define Q3VL_MODEL_MEDIA_EXIF_H_

#include "absl/strings/string_view.h"
#include "model/media/image.h"

namespace q3vl::model {

// The orientation (1..8) stored in `exif`, or 1 when absent or malformed. `exif` is a TIFF
// header + IFD0, optionally preceded by "Exif\0\0". Never reads out of bounds.
int ParseExifOrientation(absl::string_view exif);

// Returns `image` transformed so that it displays upright: 2 mirror, 3 rotate 180, 4 flip,
// 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise. Orientations
// 5-8 swap height and width. Any other value returns the image unchanged.
Image ApplyExifOrientation(Image image, int orientation);

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_MEDIA_EXIF_H_
