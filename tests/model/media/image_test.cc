// Every image golden (golden/inputs/image: 8 cases x PNG/JPEG) through the decoder, smart_resize,
// the uint8 antialiased bicubic resize and the patchifier: decoded pixels, resized pixels and
// pixel_values bit-exact (SHA-256 of each array, plus element-wise comparison with the stored
// arrays), grids and token counts exact; and the EXIF-oriented decode recorded for the PIL path.
#include <set>
#include <string>

#include "absl/strings/escaping.h"
#include "gtest/gtest.h"
#include "model/media/image_decode.h"
#include "model/media/resize.h"
#include "model/media/vision_processor.h"
#include "tests/model/input_test_util.h"

namespace q3vl::model {
namespace {

using ::q3vl::testing::CompareArrays;
using ::q3vl::testing::CropMismatches;
using ::q3vl::testing::Diff;
using ::q3vl::testing::InputPath;
using ::q3vl::testing::JsonInts;
using ::q3vl::testing::ReadCaseJson;
using ::q3vl::testing::ReadInputNpy;
using ::q3vl::testing::Sha256Of;

struct Variant {
  const char* name;
  const char* fmt;
};

class ImageGoldenTest : public ::testing::TestWithParam<Variant> {
 protected:
  void SetUp() override {
    dir_ = std::string("image/") + GetParam().name + "/";
    fmt_ = GetParam().fmt;
    const nlohmann::json c = ReadCaseJson(dir_ + "case.json");
    ASSERT_TRUE(c.contains("variants") && c["variants"].contains(fmt_)) << dir_;
    v_ = c["variants"][fmt_];
    for (const auto& s : v_["stored"]) stored_.insert(s.get<std::string>());
    path_ = InputPath(dir_ + v_["file"].get<std::string>());
  }
  bool Stored(const std::string& name) const { return stored_.count(fmt_ + "/" + name) > 0; }
  std::string Rel(const std::string& name) const { return dir_ + fmt_ + "/" + name; }

  std::string dir_, fmt_, path_;
  nlohmann::json v_;
  std::set<std::string> stored_;
};

TEST_P(ImageGoldenTest, DecodeResizePatchifyBitExact) {
  // Decoded as stored: transformers 5.x's torchvision loader does not apply EXIF orientation.
  auto raw = DecodeImageFile(path_, {.apply_exif_orientation = false});
  ASSERT_TRUE(raw.ok()) << raw.status();
  EXPECT_EQ((std::vector<int64_t>{raw->height, raw->width}), JsonInts(v_["decoded_hw"]));
  EXPECT_EQ(Sha256Of(raw->rgb), v_["decoded_sha256"].get<std::string>()) << "decoded pixels differ";
  if (Stored("decoded.npy")) {
    const Tensor d = ReadInputNpy(Rel("decoded.npy"));
    ASSERT_EQ(d.numel(), static_cast<int64_t>(raw->rgb.size()));
    EXPECT_EQ(CompareArrays(raw->rgb.data(), d.data<uint8_t>(), d.numel()).count, 0);
  }

  const VisionProcessorConfig config = VisionProcessorConfig::ImageDefaults();
  auto size = SmartResize({.height = raw->height, .width = raw->width}, config);
  ASSERT_TRUE(size.ok()) << size.status();
  EXPECT_EQ((std::vector<int64_t>{size->height, size->width}), JsonInts(v_["resized_hw"]));
  const Image resized = ResizeBicubicAntialias(*raw, *size);
  const std::vector<uint8_t> chw = ::q3vl::testing::ToChw(resized);  // [3, H', W']
  EXPECT_EQ(Sha256Of(chw), v_["resized_sha256"].get<std::string>()) << "resized pixels differ";
  if (Stored("resized.npy")) {
    const Tensor r = ReadInputNpy(Rel("resized.npy"));
    ASSERT_EQ(r.numel(), static_cast<int64_t>(chw.size()));
    const Diff d = CompareArrays(chw.data(), r.data<uint8_t>(), r.numel());
    EXPECT_EQ(d.max, 0) << d.count << " resized values differ";
  }
  if (Stored("resized_crops.npy")) {
    const Tensor crops = ReadInputNpy(Rel("resized_crops.npy"));  // [3, 3, 64, 64]
    ASSERT_EQ(crops.numel(), 3 * 3 * 64 * 64);
    const auto& offsets = v_["resized_crops_offsets_yx"];
    for (int k = 0; k < 3; ++k) {
      const int64_t y0 = offsets[k][0].get<int64_t>(), x0 = offsets[k][1].get<int64_t>();
      const int64_t mismatches = CropMismatches(resized, y0, x0, crops.data<uint8_t>() + k * 3 * 64 * 64);
      EXPECT_EQ(mismatches, 0) << "crop " << k;
    }
  }

  auto processed = ProcessImage(*raw, config);
  ASSERT_TRUE(processed.ok()) << processed.status();
  const Tensor& pv = processed->pixel_values;  // [N, 1536]
  EXPECT_EQ((std::vector<int64_t>{pv.dim(0), pv.dim(1)}), JsonInts(v_["pixel_values_shape"]));
  EXPECT_EQ((std::vector<int64_t>(processed->grid.begin(), processed->grid.end())),
            JsonInts(v_["image_grid_thw"]));
  EXPECT_EQ(pv.dim(0), v_["num_patches"].get<int64_t>());
  EXPECT_EQ(processed->num_tokens, v_["num_image_tokens"].get<int64_t>());
  EXPECT_EQ(Sha256Of(pv), v_["pixel_values_sha256"].get<std::string>()) << "pixel_values differ";
  double sum = 0, abs_sum = 0;
  for (int64_t i = 0; i < pv.numel(); ++i) {
    sum += pv.data<float>()[i];
    abs_sum += std::abs(pv.data<float>()[i]);
  }
  // Summation order differs from NumPy's (pairwise); the SHA-256 above is the exact check.
  const double tolerance = 1e-9 * abs_sum + 1e-3;
  EXPECT_NEAR(sum, v_["pixel_values_sum"].get<double>(), tolerance);
  EXPECT_NEAR(abs_sum, v_["pixel_values_abs_sum"].get<double>(), tolerance);
  if (Stored("pixel_values.npy")) {
    const Tensor want = ReadInputNpy(Rel("pixel_values.npy"));
    ASSERT_EQ(want.shape(), pv.shape());
    EXPECT_EQ(CompareArrays(pv.data<float>(), want.data<float>(), pv.numel()).max, 0);
  }
  if (Stored("pixel_values_rows.npy")) {
    const Tensor rows = ReadInputNpy(Rel("pixel_values_rows.npy"));        // [K, 1536]
    const Tensor index = ReadInputNpy(Rel("pixel_values_row_index.npy"));  // [K]
    ASSERT_EQ(rows.dim(0), index.numel());
    for (int64_t k = 0; k < index.numel(); ++k) {
      const int64_t r = index.data<int64_t>()[k];
      ASSERT_LT(r, pv.dim(0));
      const Diff d =
          CompareArrays(pv.data<float>() + r * pv.dim(1), rows.data<float>() + k * rows.dim(1), rows.dim(1));
      EXPECT_EQ(d.max, 0) << "row " << r;
    }
  }
}

// transformers 4.x and the PIL path apply the EXIF orientation; the reference records the
// oriented decode (p07 carries orientation 6), and that is the library default.
TEST_P(ImageGoldenTest, ExifOrientedDecode) {
  auto raw = DecodeImageFile(path_, {.apply_exif_orientation = false});
  auto oriented = DecodeImageFile(path_);
  ASSERT_TRUE(raw.ok() && oriented.ok()) << raw.status() << oriented.status();
  const nlohmann::json& pil = v_["pil_load_image_path"];
  if (pil["equal_to_torchvision_decode"].get<bool>()) {
    EXPECT_EQ(oriented->rgb, raw->rgb);
    return;
  }
  EXPECT_EQ((std::vector<int64_t>{oriented->height, oriented->width}), JsonInts(pil["decoded_hw"]));
  EXPECT_EQ(Sha256Of(oriented->rgb), pil["decoded_sha256"].get<std::string>());
  auto processed = ProcessImage(*oriented, VisionProcessorConfig::ImageDefaults());
  ASSERT_TRUE(processed.ok()) << processed.status();
  EXPECT_EQ((std::vector<int64_t>(processed->grid.begin(), processed->grid.end())),
            JsonInts(pil["image_grid_thw"]));
  EXPECT_EQ((std::vector<int64_t>{processed->resized.height, processed->resized.width}),
            JsonInts(pil["resized_hw"]));
  EXPECT_EQ(processed->num_tokens, pil["num_image_tokens"].get<int64_t>());
}

// The same file through a data: URL and through raw bytes decodes identically.
TEST_P(ImageGoldenTest, DataUrlAndBytesMatchFile) {
  const std::string bytes = ::q3vl::testing::ReadBytes(path_);
  auto from_file = DecodeImageFile(path_);
  auto from_bytes = DecodeImageBytes(bytes, "bytes");
  ASSERT_TRUE(from_file.ok() && from_bytes.ok()) << from_file.status() << from_bytes.status();
  EXPECT_EQ(from_bytes->rgb, from_file->rgb);
  if (bytes.size() > (1 << 20)) return;  // keep the base64 round trip to the small files
  const std::string mime = fmt_ == "png" ? "image/png" : "image/jpeg";
  auto from_url = LoadImage("data:" + mime + ";base64," + absl::Base64Escape(bytes));
  ASSERT_TRUE(from_url.ok()) << from_url.status();
  EXPECT_EQ(from_url->rgb, from_file->rgb);
}

const Variant kVariants[] = {
    {"p01_100x100", "png"},       {"p01_100x100", "jpg"},       {"p02_333x517", "png"},
    {"p02_333x517", "jpg"},       {"p03_400x17", "png"},        {"p03_400x17", "jpg"},
    {"p04_640x480", "png"},       {"p04_640x480", "jpg"},       {"p05_1000x1000", "png"},
    {"p05_1000x1000", "jpg"},     {"p06_1920x1080", "png"},     {"p06_1920x1080", "jpg"},
    {"p07_720x405_exif6", "png"}, {"p07_720x405_exif6", "jpg"}, {"p08_3000x4000", "png"},
    {"p08_3000x4000", "jpg"},
};

INSTANTIATE_TEST_SUITE_P(Goldens, ImageGoldenTest, ::testing::ValuesIn(kVariants),
                         [](const ::testing::TestParamInfo<Variant>& info) {
                           return std::string(info.param.name) + "_" + info.param.fmt;
                         });

}  // namespace
}  // namespace q3vl::model
