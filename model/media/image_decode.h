// Loading images for the vision pipeline: PNG and JPEG from a file path, a `data:` URL
// (base64) or raw bytes (format sniffed from the magic bytes), decoded to 8-bit RGB with the
// EXIF orientation applied (as transformers 4.x / PIL's exif_transpose do). Every failure is a
// Status whose message names the source; nothing exits or throws. Stateless and thread-safe.
#ifndef Q3VL_MODEL_MEDIA_IMAGE_DECODE_H_
#define Q3VL_MODEL_MEDIA_IMAGE_DECODE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "model/media/image.h"

namespace q3vl::model {

// PIL's decompression-bomb warning threshold (1024^3 / 4 / 3 pixels).
inline constexpr int64_t kDefaultMaxImagePixels = 89478485;
inline constexpr int64_t kMaxImageFileBytes = int64_t{1} << 30;

struct ImageDecodeOptions {
  // false gives the stored pixel order (what transformers 5.x's torchvision loader sees).
  bool apply_exif_orientation = true;
  // Images with more pixels are rejected (InvalidArgument) before any pixel is decoded.
  int64_t max_pixels = kDefaultMaxImagePixels;
};

// Decodes a whole PNG or JPEG file held in memory; `source` names it in error messages.
absl::StatusOr<Image> DecodeImageBytes(absl::string_view bytes, absl::string_view source,
                                       const ImageDecodeOptions& options = {});

// Reads and decodes a file. NotFound when it cannot be opened.
absl::StatusOr<Image> DecodeImageFile(const std::string& path, const ImageDecodeOptions& options = {});

// Decodes `data:[<media type>];base64,<payload>`.
absl::StatusOr<Image> DecodeImageDataUrl(absl::string_view url, const ImageDecodeOptions& options = {});

// A chat-message image reference: a data: URL, a file:// URL or a local path. Remote
// (http/https) URLs give Unimplemented: fetching is the server's job.
absl::StatusOr<Image> LoadImage(absl::string_view reference, const ImageDecodeOptions& options = {});

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_MEDIA_IMAGE_DECODE_H_
