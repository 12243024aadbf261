// PNG (libpng) and JPEG (libjpeg-turbo, default ISLOW IDCT + fancy upsampling) decoding of
// in-memory files to 8-bit RGB, plus their raw EXIF block. Internal to image_decode.cc.
// Library errors are caught with setjmp/longjmp and returned as a Status; never exits or throws.
// Stateless and thread-safe.
#ifndef Q3VL_MODEL_MEDIA_IMAGE_CODECS_H_
#define Q3VL_MODEL_MEDIA_IMAGE_CODECS_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/media/image.h"

namespace q3vl::model {

struct CodecParams {
  absl::string_view bytes;   // the whole file
  absl::string_view source;  // for error messages
  int64_t max_pixels = 0;    // width * height above this is rejected before decoding
};

struct DecodedFile {
  Image image;       // as stored: grey replicated, alpha dropped, 16-bit cut to the high byte
  std::string exif;  // TIFF block (APP1 Exif payload or eXIf chunk); empty when absent
};

absl::StatusOr<DecodedFile> DecodePng(const CodecParams& params);
absl::StatusOr<DecodedFile> DecodeJpeg(const CodecParams& params);

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_MEDIA_IMAGE_CODECS_H_
