#include "model/media/image_decode.h"

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "model/media/exif.h"
#include "model/media/image_codecs.h"

namespace q3vl::model {
namespace {

constexpr absl::string_view kPngMagic("\x89PNG\r\n\x1a\n", 8);
constexpr absl::string_view kJpegMagic("\xff\xd8\xff", 3);

// Names common formats we do not decode, so that the error says what the file is.
absl::string_view OtherFormatName(absl::string_view b) {
  if (absl::StartsWith(b, "GIF87a") || absl::StartsWith(b, "GIF89a")) return "GIF";
  if (b.size() >= 12 && absl::StartsWith(b, "RIFF") && b.substr(8, 4) == "WEBP") return "WebP";
  if (absl::StartsWith(b, "BM")) return "BMP";
  if (absl::StartsWith(b, "II*") || absl::StartsWith(b, absl::string_view("MM\0*", 4))) return "TIFF";
  if (b.size() >= 12 && b.substr(4, 4) == "ftyp") {  // ISO base media: the brand says which
    const absl::string_view brand = b.substr(8, 4);
    for (absl::string_view still : {"heic", "heix", "hevc", "mif1", "msf1", "avif", "avis"}) {
      if (brand == still) return "HEIF/AVIF";
    }
    if (brand == "qt  ") return "a QuickTime (MOV) video (send videos as video parts)";
    if (absl::StartsWith(brand, "3g")) return "a 3GP video (send videos as video parts)";
    return "an MP4 video (send videos as video parts)";
  }
  if (absl::StartsWith(b, "\x1a\x45\xdf\xa3")) return "a WebM/Matroska video (send videos as video parts)";
  return "";
}

absl::Status ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat("image file '", path, "' cannot be opened"));
  const std::streamoff size = in.tellg();
  if (size < 0) return absl::DataLossError(absl::StrCat("image file '", path, "' cannot be read"));
  if (size > kMaxImageFileBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("image file '", path, "' is ", size, " bytes, more than ", kMaxImageFileBytes));
  }
  out->resize(static_cast<size_t>(size));
  in.seekg(0);
  if (!in.read(out->data(), size)) {
    return absl::DataLossError(absl::StrCat("image file '", path, "' cannot be read"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Image> DecodeImageBytes(absl::string_view bytes, absl::string_view source,
                                       const ImageDecodeOptions& options) {
  const CodecParams params{.bytes = bytes, .source = source, .max_pixels = options.max_pixels};
  absl::StatusOr<DecodedFile> decoded;
  if (absl::StartsWith(bytes, kPngMagic)) {
    decoded = DecodePng(params);
  } else if (absl::StartsWith(bytes, kJpegMagic)) {
    decoded = DecodeJpeg(params);
  } else if (bytes.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("image ", source, " is empty"));
  } else {
    const absl::string_view other = OtherFormatName(bytes);
    if (!other.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("image ", source, " is ", other, "; only PNG and JPEG are supported"));
    }
    return absl::InvalidArgumentError(
        absl::StrCat("image ", source, " is not a PNG or JPEG file (unrecognised leading bytes)"));
  }
  if (!decoded.ok()) return decoded.status();
  if (!options.apply_exif_orientation || decoded->exif.empty()) return std::move(decoded->image);
  return ApplyExifOrientation(std::move(decoded->image), ParseExifOrientation(decoded->exif));
}

absl::StatusOr<Image> DecodeImageFile(const std::string& path, const ImageDecodeOptions& options) {
  std::string bytes;
  Q3VL_RETURN_IF_ERROR(ReadFile(path, &bytes));
  return DecodeImageBytes(bytes, absl::StrCat("'", path, "'"), options);
}

absl::StatusOr<Image> DecodeImageDataUrl(absl::string_view url, const ImageDecodeOptions& options) {
  const std::string shown = absl::StrCat("data URL '", url.substr(0, 40), url.size() > 40 ? "...'" : "'");
  if (!absl::StartsWithIgnoreCase(url, "data:")) {
    return absl::InvalidArgumentError(absl::StrCat(shown, " does not start with 'data:'"));
  }
  const size_t comma = url.find(',');
  if (comma == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(shown, " has no ',' before the payload"));
  }
  const absl::string_view header = url.substr(5, comma - 5);
  if (!absl::EndsWithIgnoreCase(header, ";base64")) {
    return absl::InvalidArgumentError(absl::StrCat(shown, " is not base64-encoded (';base64' missing)"));
  }
  std::string payload;
  payload.reserve(url.size() - comma - 1);
  for (const char c : url.substr(comma + 1)) {
    if (!absl::ascii_isspace(static_cast<unsigned char>(c))) payload.push_back(c);
  }
  std::string bytes;
  if (!absl::Base64Unescape(payload, &bytes) && !absl::WebSafeBase64Unescape(payload, &bytes)) {
    return absl::InvalidArgumentError(absl::StrCat(shown, " has an invalid base64 payload"));
  }
  return DecodeImageBytes(bytes, shown, options);
}

absl::StatusOr<Image> LoadImage(absl::string_view reference, const ImageDecodeOptions& options) {
  if (absl::StartsWithIgnoreCase(reference, "data:")) return DecodeImageDataUrl(reference, options);
  if (absl::StartsWithIgnoreCase(reference, "http://") || absl::StartsWithIgnoreCase(reference, "https://")) {
    return absl::UnimplementedError(
        absl::StrCat("image '", reference, "': remote URLs are not fetched here"));
  }
  if (absl::StartsWithIgnoreCase(reference, "file://")) reference.remove_prefix(7);
  return DecodeImageFile(std::string(reference), options);
}

}  // namespace q3vl::model
