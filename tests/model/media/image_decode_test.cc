// Image decoding beyond the goldens: every PNG colour type / bit depth (written here with
// libpng), greyscale and EXIF-tagged JPEGs (written with libjpeg), EXIF parsing and the eight
// orientations, and bad input (truncated, corrupt, garbage, bad base64, missing file, too large)
// returning a clear Status.
#include "model/media/image_decode.h"

#include <csetjmp>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "gtest/gtest.h"
#include "model/media/exif.h"
#include "tests/model/input_test_util.h"

// clang-format off
#include <png.h>
#include <jpeglib.h>
// clang-format on

namespace q3vl::model {
namespace {

using ::q3vl::testing::InputPath;
using ::q3vl::testing::ReadBytes;

struct PngSpec {
  int width = 0, height = 0, color_type = PNG_COLOR_TYPE_RGB, bit_depth = 8;
  std::vector<uint8_t> samples;  // packed rows as libpng expects them (big-endian 16-bit)
  std::vector<png_color> palette;
  std::vector<uint8_t> trans;  // palette alpha
  std::string exif;            // eXIf payload
  bool interlaced = false;
};

void AppendToString(png_structp png, png_bytep data, size_t size) {
  static_cast<std::string*>(png_get_io_ptr(png))->append(reinterpret_cast<const char*>(data), size);
}

std::string WritePng(const PngSpec& s) {
  std::string out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    ADD_FAILURE() << "libpng write failed";
    return "";
  }
  png_set_write_fn(png, &out, AppendToString, nullptr);
  png_set_IHDR(png, info, s.width, s.height, s.bit_depth, s.color_type,
               s.interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (!s.palette.empty()) png_set_PLTE(png, info, s.palette.data(), static_cast<int>(s.palette.size()));
  if (!s.trans.empty()) png_set_tRNS(png, info, s.trans.data(), static_cast<int>(s.trans.size()), nullptr);
  if (!s.exif.empty()) {
    png_set_eXIf_1(png, info, static_cast<png_uint_32>(s.exif.size()),
                   reinterpret_cast<png_bytep>(const_cast<char*>(s.exif.data())));
  }
  png_write_info(png, info);
  const size_t row_bytes = s.samples.size() / s.height;
  std::vector<png_bytep> rows(s.height);
  for (int y = 0; y < s.height; ++y) rows[y] = const_cast<png_bytep>(s.samples.data() + y * row_bytes);
  png_write_image(png, rows.data());
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  return out;
}

std::string WriteJpeg(int width, int height, int components, const std::vector<uint8_t>& samples,
                      const std::string& app1 = "") {
  jpeg_compress_struct cinfo;
  jpeg_error_mgr err;
  cinfo.err = jpeg_std_error(&err);
  jpeg_create_compress(&cinfo);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = width;
  cinfo.image_height = height;
  cinfo.input_components = components;
  cinfo.in_color_space = components == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, 95, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  if (!app1.empty()) {
    jpeg_write_marker(&cinfo, JPEG_APP0 + 1, reinterpret_cast<const JOCTET*>(app1.data()), app1.size());
  }
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(samples.data() + cinfo.next_scanline * width * components);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  std::string out(reinterpret_cast<char*>(buffer), size);
  free(buffer);
  return out;
}

// Big-endian TIFF with one IFD0 entry: orientation (SHORT) = `orientation`.
std::string TiffWithOrientation(int orientation, bool big_endian = true) {
  const unsigned char be[] = {'M',  'M',  0, 42, 0, 0, 0, 8, 0, 1,
                              0x01, 0x12, 0, 3,  0, 0, 0, 1, 0, static_cast<unsigned char>(orientation),
                              0,    0,    0, 0,  0, 0};
  const unsigned char le[] = {'I',
                              'I',
                              42,
                              0,
                              8,
                              0,
                              0,
                              0,
                              1,
                              0,
                              0x12,
                              0x01,
                              3,
                              0,
                              1,
                              0,
                              0,
                              0,
                              static_cast<unsigned char>(orientation),
                              0,
                              0,
                              0,
                              0,
                              0,
                              0,
                              0};
  return big_endian ? std::string(reinterpret_cast<const char*>(be), sizeof(be))
                    : std::string(reinterpret_cast<const char*>(le), sizeof(le));
}

// A 3 (wide) x 2 (tall) RGB image whose pixel (y, x) has R = 10 y + x.
Image SmallImage() {
  Image image = Image::Blank(2, 3);
  for (int y = 0; y < 2; ++y) {
    for (int x = 0; x < 3; ++x) image.row(y)[3 * x] = static_cast<uint8_t>(10 * y + x);
  }
  return image;
}

std::vector<uint8_t> Reds(const Image& image) {
  std::vector<uint8_t> r;
  for (int64_t i = 0; i < image.num_pixels(); ++i) r.push_back(image.rgb[3 * i]);
  return r;
}

TEST(ImageDecodeTest, PngColourTypesAndDepths) {
  // Grey 8-bit -> replicated.
  auto grey = DecodeImageBytes(
      WritePng({.width = 2, .height = 1, .color_type = PNG_COLOR_TYPE_GRAY, .samples = {7, 200}}), "grey");
  ASSERT_TRUE(grey.ok()) << grey.status();
  EXPECT_EQ(grey->rgb, (std::vector<uint8_t>{7, 7, 7, 200, 200, 200}));
  // Grey 1-bit -> 0 / 255.
  auto bits = DecodeImageBytes(WritePng({.width = 3,
                                         .height = 1,
                                         .color_type = PNG_COLOR_TYPE_GRAY,
                                         .bit_depth = 1,
                                         .samples = {0b10100000}}),
                               "grey1");
  ASSERT_TRUE(bits.ok()) << bits.status();
  EXPECT_EQ(bits->rgb, (std::vector<uint8_t>{255, 255, 255, 0, 0, 0, 255, 255, 255}));
  // Grey + alpha: alpha dropped.
  auto ga = DecodeImageBytes(
      WritePng({.width = 1, .height = 1, .color_type = PNG_COLOR_TYPE_GRAY_ALPHA, .samples = {90, 0}}), "ga");
  ASSERT_TRUE(ga.ok()) << ga.status();
  EXPECT_EQ(ga->rgb, (std::vector<uint8_t>{90, 90, 90}));
  // RGBA: the stored colour is kept even where alpha is 0 (no blending).
  auto rgba = DecodeImageBytes(
      WritePng({.width = 1, .height = 1, .color_type = PNG_COLOR_TYPE_RGBA, .samples = {1, 2, 3, 0}}),
      "rgba");
  ASSERT_TRUE(rgba.ok()) << rgba.status();
  EXPECT_EQ(rgba->rgb, (std::vector<uint8_t>{1, 2, 3}));
  // Palette with tRNS.
  auto pal = DecodeImageBytes(WritePng({.width = 2,
                                        .height = 1,
                                        .color_type = PNG_COLOR_TYPE_PALETTE,
                                        .samples = {1, 0},
                                        .palette = {{10, 20, 30}, {40, 50, 60}},
                                        .trans = {0, 128}}),
                              "palette");
  ASSERT_TRUE(pal.ok()) << pal.status();
  EXPECT_EQ(pal->rgb, (std::vector<uint8_t>{40, 50, 60, 10, 20, 30}));
  // 16-bit RGB and grey keep the high byte.
  auto rgb16 = DecodeImageBytes(
      WritePng({.width = 1, .height = 1, .bit_depth = 16, .samples = {0x12, 0xff, 0x80, 0x01, 0xfe, 0x00}}),
      "rgb16");
  ASSERT_TRUE(rgb16.ok()) << rgb16.status();
  EXPECT_EQ(rgb16->rgb, (std::vector<uint8_t>{0x12, 0x80, 0xfe}));
  auto grey16 = DecodeImageBytes(WritePng({.width = 1,
                                           .height = 1,
                                           .color_type = PNG_COLOR_TYPE_GRAY,
                                           .bit_depth = 16,
                                           .samples = {0xab, 0xcd}}),
                                 "grey16");
  ASSERT_TRUE(grey16.ok()) << grey16.status();
  EXPECT_EQ(grey16->rgb, (std::vector<uint8_t>{0xab, 0xab, 0xab}));
  // Interlaced (Adam7) gives the same pixels.
  std::vector<uint8_t> samples(9 * 5 * 3);
  for (size_t i = 0; i < samples.size(); ++i) samples[i] = static_cast<uint8_t>(i * 7);
  auto plain = DecodeImageBytes(WritePng({.width = 9, .height = 5, .samples = samples}), "plain");
  auto adam7 =
      DecodeImageBytes(WritePng({.width = 9, .height = 5, .samples = samples, .interlaced = true}), "adam7");
  ASSERT_TRUE(plain.ok() && adam7.ok()) << plain.status() << adam7.status();
  EXPECT_EQ(plain->rgb, samples);
  EXPECT_EQ(adam7->rgb, samples);
}

TEST(ImageDecodeTest, ExifOrientations) {
  const Image src = SmallImage();  // reds: row 0 = 0 1 2, row 1 = 10 11 12
  const std::vector<std::vector<uint8_t>> expected = {
      {0, 1, 2, 10, 11, 12},  // 1
      {2, 1, 0, 12, 11, 10},  // 2 mirror
      {12, 11, 10, 2, 1, 0},  // 3 rotate 180
      {10, 11, 12, 0, 1, 2},  // 4 flip
      {0, 10, 1, 11, 2, 12},  // 5 transpose
      {10, 0, 11, 1, 12, 2},  // 6 rotate 90 clockwise
      {12, 2, 11, 1, 10, 0},  // 7 transverse
      {2, 12, 1, 11, 0, 10},  // 8 rotate 90 counter-clockwise
  };
  for (int o = 1; o <= 8; ++o) {
    const Image out = ApplyExifOrientation(src, o);
    EXPECT_EQ(out.height, o >= 5 ? 3 : 2) << o;
    EXPECT_EQ(Reds(out), expected[o - 1]) << "orientation " << o;
    // The same through a PNG eXIf chunk (little- and big-endian TIFF).
    PngSpec spec{.width = 3, .height = 2, .samples = src.rgb, .exif = TiffWithOrientation(o, o % 2 == 0)};
    auto decoded = DecodeImageBytes(WritePng(spec), "exif png");
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(Reds(*decoded), expected[o - 1]) << "png orientation " << o;
    auto stored = DecodeImageBytes(WritePng(spec), "exif png", {.apply_exif_orientation = false});
    ASSERT_TRUE(stored.ok()) << stored.status();
    EXPECT_EQ(stored->rgb, src.rgb);
  }
}

TEST(ImageDecodeTest, ExifParsing) {
  EXPECT_EQ(ParseExifOrientation(TiffWithOrientation(6)), 6);
  EXPECT_EQ(ParseExifOrientation(TiffWithOrientation(3, /*big_endian=*/false)), 3);
  EXPECT_EQ(ParseExifOrientation(std::string("Exif\0\0", 6) + TiffWithOrientation(8)), 8);
  EXPECT_EQ(ParseExifOrientation(TiffWithOrientation(9)), 1);
  EXPECT_EQ(ParseExifOrientation(TiffWithOrientation(6).substr(0, 16)), 1);  // cut inside IFD0
  std::string far = TiffWithOrientation(6);
  far[7] = 100;  // IFD0 offset past the end
  EXPECT_EQ(ParseExifOrientation(far), 1);
  EXPECT_EQ(ParseExifOrientation(""), 1);
  EXPECT_EQ(ParseExifOrientation("garbage garbage"), 1);
}

TEST(ImageDecodeTest, GreyAndExifJpeg) {
  std::vector<uint8_t> grey(16 * 8);
  for (size_t i = 0; i < grey.size(); ++i) grey[i] = static_cast<uint8_t>(i * 2);
  auto g = DecodeImageBytes(WriteJpeg(16, 8, 1, grey), "grey jpeg");
  ASSERT_TRUE(g.ok()) << g.status();
  ASSERT_EQ(g->num_pixels(), 16 * 8);
  for (int64_t i = 0; i < g->num_pixels(); ++i) {
    ASSERT_EQ(g->rgb[3 * i], g->rgb[3 * i + 1]);
    ASSERT_EQ(g->rgb[3 * i], g->rgb[3 * i + 2]);
    ASSERT_NEAR(g->rgb[3 * i], grey[i], 3);
  }
  std::vector<uint8_t> rgb(24 * 16 * 3);
  for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = static_cast<uint8_t>(i % 251);
  const std::string tagged = WriteJpeg(24, 16, 3, rgb, std::string("Exif\0\0", 6) + TiffWithOrientation(6));
  auto stored = DecodeImageBytes(tagged, "jpeg", {.apply_exif_orientation = false});
  auto oriented = DecodeImageBytes(tagged, "jpeg");
  ASSERT_TRUE(stored.ok() && oriented.ok()) << stored.status() << oriented.status();
  EXPECT_EQ(oriented->height, 24);
  EXPECT_EQ(oriented->rgb, ApplyExifOrientation(*stored, 6).rgb);
}

void ExpectError(const absl::StatusOr<Image>& result, absl::string_view fragment) {
  ASSERT_FALSE(result.ok()) << "expected an error containing '" << fragment << "'";
  EXPECT_NE(result.status().message().find(fragment), absl::string_view::npos) << result.status();
}

TEST(ImageDecodeTest, BadInputGivesClearErrors) {
  const std::string png = ReadBytes(InputPath("image/p01_100x100/source.png"));
  const std::string jpg = ReadBytes(InputPath("image/p01_100x100/source.jpg"));
  ASSERT_GT(png.size(), 1000u);
  ASSERT_GT(jpg.size(), 1000u);
  ExpectError(DecodeImageBytes(png.substr(0, png.size() / 2), "half.png"), "half.png");
  ExpectError(DecodeImageBytes(png.substr(0, png.size() / 2), "half.png"), "invalid PNG");
  ExpectError(DecodeImageBytes(png.substr(0, 30), "head.png"), "invalid PNG");
  ExpectError(DecodeImageBytes(jpg.substr(0, jpg.size() * 2 / 3), "cut.jpg"), "truncated JPEG");
  ExpectError(DecodeImageBytes(jpg.substr(0, 200), "head.jpg"), "head.jpg");
  std::string corrupt = png;
  corrupt[png.size() / 2] ^= 0x55;  // inside IDAT: the CRC (or zlib) check fails
  ExpectError(DecodeImageBytes(corrupt, "corrupt.png"), "invalid PNG");
  ExpectError(DecodeImageBytes(std::string("\x89PNG\r\n\x1a\n", 8) + std::string(100, 'x'), "fake.png"),
              "invalid PNG");
  ExpectError(DecodeImageBytes(std::string("\xff\xd8\xff", 3) + std::string(100, 'x'), "fake.jpg"),
              "invalid JPEG");
  ExpectError(DecodeImageBytes("hello world, not an image", "text"), "not a PNG or JPEG");
  ExpectError(DecodeImageBytes("GIF89a......", "anim"), "GIF");
  ExpectError(DecodeImageBytes("", "nothing"), "empty");
  ExpectError(DecodeImageBytes(png, "big.png", {.max_pixels = 5000}), "limit");
  ExpectError(DecodeImageBytes(jpg, "big.jpg", {.max_pixels = 5000}), "limit");
  ExpectError(LoadImage("data:image/png;base64,@@@not base64@@@"), "invalid base64");
  ExpectError(LoadImage("data:image/png," + png.substr(0, 10)), "not base64");
  ExpectError(LoadImage("data:image/png;base64"), "no ','");
  ExpectError(LoadImage("data:image/png;base64," + absl::Base64Escape("junk bytes")), "not a PNG or JPEG");
  auto missing = LoadImage("/nonexistent/dir/missing.png");
  ExpectError(missing, "missing.png");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(LoadImage("https://example.com/a.png").status().code(), absl::StatusCode::kUnimplemented);
  auto via_file_url = LoadImage("file://" + InputPath("image/p01_100x100/source.png"));
  EXPECT_TRUE(via_file_url.ok()) << via_file_url.status();
}

}  // namespace
}  // namespace q3vl::model
