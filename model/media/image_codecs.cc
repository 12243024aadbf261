#include "model/media/image_codecs.h"

#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

// clang-format off
#include <png.h>
#include <jpeglib.h>
#include <jerror.h>
// clang-format on

namespace q3vl::model {
namespace {

absl::Status TooLarge(const CodecParams& params, int64_t height, int64_t width) {
  return absl::InvalidArgumentError(absl::StrCat("image ", params.source, ": ", width, "x", height, " = ",
                                                 width * height, " pixels is more than the limit of ",
                                                 params.max_pixels));
}

// ---- PNG ----------------------------------------------------------------------------------
// Everything the libpng callbacks touch lives here, created before setjmp, so that a longjmp
// never skips a destructor.
struct PngState {
  const CodecParams* params = nullptr;
  size_t pos = 0;
  char error[256] = {};
  bool too_large = false;
  int64_t height = 0, width = 0;
  std::vector<png_bytep> rows;
  DecodedFile out;
};

void PngReadFn(png_structp png, png_bytep data, size_t length) {
  auto* s = static_cast<PngState*>(png_get_io_ptr(png));
  const absl::string_view bytes = s->params->bytes;
  if (length > bytes.size() - s->pos) png_error(png, "unexpected end of file (truncated)");
  std::memcpy(data, bytes.data() + s->pos, length);
  s->pos += length;
}

void PngErrorFn(png_structp png, png_const_charp message) {
  auto* s = static_cast<PngState*>(png_get_error_ptr(png));
  std::snprintf(s->error, sizeof(s->error), "%s", message);
  png_longjmp(png, 1);
}

void PngWarningFn(png_structp, png_const_charp) {}

// Returns false on any libpng error (message in s->error) or when the image is too large.
bool RunPng(PngState* s) {
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, s, PngErrorFn, PngWarningFn);
  if (png == nullptr) {
    std::snprintf(s->error, sizeof(s->error), "cannot create the libpng reader");
    return false;
  }
  png_infop info = png_create_info_struct(png);
  if (info == nullptr || setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    return false;
  }
  png_set_read_fn(png, s, PngReadFn);
  png_read_info(png, info);
  png_uint_32 width = 0, height = 0;
  int bit_depth = 0, color_type = 0;
  png_get_IHDR(png, info, &width, &height, &bit_depth, &color_type, nullptr, nullptr, nullptr);
  s->height = height;
  s->width = width;
  if (s->height * s->width > s->params->max_pixels) {
    s->too_large = true;
    png_destroy_read_struct(&png, &info, nullptr);
    return false;
  }
  // As torchvision's decode_png(mode=RGB): palette -> RGB, grey -> RGB by replication, alpha
  // (including a palette's tRNS) dropped without blending; 16-bit samples keep the high byte.
  if (bit_depth == 16) png_set_strip_16(png);
  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if ((color_type & PNG_COLOR_MASK_COLOR) == 0) {
    if (bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    png_set_gray_to_rgb(png);
  }
  if ((color_type & PNG_COLOR_MASK_ALPHA) != 0 ||
      (color_type == PNG_COLOR_TYPE_PALETTE && png_get_valid(png, info, PNG_INFO_tRNS) != 0)) {
    png_set_strip_alpha(png);
  }
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_channels(png, info) != 3 || png_get_bit_depth(png, info) != 8) {
    png_error(png, "unsupported PNG pixel layout");
  }
  s->out.image = Image::Blank(s->height, s->width);
  s->rows.resize(height);
  for (png_uint_32 y = 0; y < height; ++y) s->rows[y] = s->out.image.row(y);
  png_read_image(png, s->rows.data());
  png_read_end(png, info);  // an eXIf chunk may follow the image data
  png_uint_32 exif_size = 0;
  png_bytep exif = nullptr;
  if (png_get_eXIf_1(png, info, &exif_size, &exif) != 0 && exif != nullptr) {
    s->out.exif.assign(reinterpret_cast<const char*>(exif), exif_size);
  }
  png_destroy_read_struct(&png, &info, nullptr);
  return true;
}

// ---- JPEG ---------------------------------------------------------------------------------
struct JpegErrorManager {
  jpeg_error_mgr pub;  // first, so j_common_ptr->err casts to this struct
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool premature_end;
};

void JpegErrorExit(j_common_ptr cinfo) {
  auto* e = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, e->message);
  std::longjmp(e->jump, 1);
}

// Warnings are silent, except that running out of data (libjpeg pads with a fake EOI and
// carries on) is remembered so that a truncated file becomes an error.
void JpegEmitMessage(j_common_ptr cinfo, int msg_level) {
  auto* e = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  if (msg_level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) e->premature_end = true;
}

void JpegOutputMessage(j_common_ptr) {}

struct JpegState {
  const CodecParams* params = nullptr;
  jpeg_decompress_struct cinfo;
  JpegErrorManager err;
  bool too_large = false;
  int64_t height = 0, width = 0;
  std::vector<uint8_t> cmyk_row;
  DecodedFile out;
};

bool RunJpeg(JpegState* s) {
  s->cinfo.err = jpeg_std_error(&s->err.pub);
  s->err.pub.error_exit = JpegErrorExit;
  s->err.pub.emit_message = JpegEmitMessage;
  s->err.pub.output_message = JpegOutputMessage;
  if (setjmp(s->err.jump)) {
    jpeg_destroy_decompress(&s->cinfo);
    return false;
  }
  jpeg_create_decompress(&s->cinfo);
  jpeg_mem_src(&s->cinfo, reinterpret_cast<const unsigned char*>(s->params->bytes.data()),
               static_cast<unsigned long>(s->params->bytes.size()));
  jpeg_save_markers(&s->cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&s->cinfo, TRUE);
  for (jpeg_saved_marker_ptr m = s->cinfo.marker_list; m != nullptr; m = m->next) {
    const absl::string_view data(reinterpret_cast<const char*>(m->data), m->data_length);
    if (m->marker == JPEG_APP0 + 1 && absl::StartsWith(data, absl::string_view("Exif\0\0", 6))) {
      s->out.exif.assign(data.data() + 6, data.size() - 6);
      break;
    }
  }
  s->height = s->cinfo.image_height;
  s->width = s->cinfo.image_width;
  if (s->height * s->width > s->params->max_pixels) {
    s->too_large = true;
    jpeg_destroy_decompress(&s->cinfo);
    return false;
  }
  // Library defaults otherwise (JDCT_ISLOW, fancy upsampling): the pixels torchvision and PIL get.
  const bool cmyk = s->cinfo.jpeg_color_space == JCS_CMYK || s->cinfo.jpeg_color_space == JCS_YCCK;
  s->cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  jpeg_start_decompress(&s->cinfo);
  s->out.image = Image::Blank(s->cinfo.output_height, s->cinfo.output_width);
  if (cmyk) s->cmyk_row.resize(static_cast<size_t>(s->cinfo.output_width) * 4);
  while (s->cinfo.output_scanline < s->cinfo.output_height) {
    uint8_t* rgb = s->out.image.row(s->cinfo.output_scanline);
    JSAMPROW row = cmyk ? s->cmyk_row.data() : rgb;
    jpeg_read_scanlines(&s->cinfo, &row, 1);
    if (!cmyk) continue;
    // Adobe CMYK JPEGs store inverted values; as torchvision: channel = value * k / 255.
    for (JDIMENSION x = 0; x < s->cinfo.output_width; ++x) {
      const uint8_t* p = s->cmyk_row.data() + 4 * x;
      for (int c = 0; c < 3; ++c) rgb[3 * x + c] = static_cast<uint8_t>(p[c] * p[3] / 255);
    }
  }
  jpeg_finish_decompress(&s->cinfo);
  jpeg_destroy_decompress(&s->cinfo);
  return true;
}

}  // namespace

absl::StatusOr<DecodedFile> DecodePng(const CodecParams& params) {
  PngState s;
  s.params = &params;
  if (!RunPng(&s)) {
    if (s.too_large) return TooLarge(params, s.height, s.width);
    return absl::InvalidArgumentError(absl::StrCat("image ", params.source, ": invalid PNG: ", s.error));
  }
  return std::move(s.out);
}

absl::StatusOr<DecodedFile> DecodeJpeg(const CodecParams& params) {
  auto s = std::make_unique<JpegState>();
  s->params = &params;
  if (!RunJpeg(s.get())) {
    if (s->too_large) return TooLarge(params, s->height, s->width);
    return absl::InvalidArgumentError(
        absl::StrCat("image ", params.source, ": invalid JPEG: ", s->err.message));
  }
  if (s->err.premature_end) {
    return absl::InvalidArgumentError(
        absl::StrCat("image ", params.source, ": truncated JPEG (the data ends before the image does)"));
  }
  return std::move(s->out);
}

}  // namespace q3vl::model
