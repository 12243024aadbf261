#include "core/tensor.h"

#include "gtest/gtest.h"

namespace q3vl {
namespace {

TEST(TensorTest, SliceAndSelectAreViews) {
  Tensor t = Tensor::FromVector({0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor col = t.Slice(1, 1, 3);  // [2, 2]
  EXPECT_FALSE(col.is_contiguous());
  EXPECT_EQ(col.shape(), Shape({2, 2}));
  col.Clone().data<float>();
  const Tensor copy = col.Clone();
  EXPECT_EQ(copy.data<float>()[0], 1);
  EXPECT_EQ(copy.data<float>()[3], 5);
  t.Select(1).data<float>()[0] = 42;  // writes through the view
  EXPECT_EQ(t.data<float>()[3], 42);
}

TEST(TensorTest, ReshapeInfersDimension) {
  Tensor t = Tensor::Empty(DType::kF32, {4, 6});
  EXPECT_EQ(t.Reshape({-1, 3}).shape(), Shape({8, 3}));
}

TEST(TensorTest, ToF32WidensBf16) {
  Tensor t = Tensor::Empty(DType::kBF16, {3});
  const float values[] = {1.5f, -2.25f, 3e-3f};
  for (int i = 0; i < 3; ++i) t.data<uint16_t>()[i] = F32ToBF16(values[i]);
  const Tensor f = t.ToF32();
  EXPECT_EQ(f.data<float>()[0], 1.5f);
  EXPECT_EQ(f.data<float>()[1], -2.25f);
  EXPECT_NEAR(f.data<float>()[2], 3e-3f, 1e-5f);
}

TEST(DTypeTest, HalfAndFp8RoundTrip) {
  for (float v : {0.0f, 1.0f, -0.5f, 65504.0f, 6.1e-5f, 3.14159f}) {
    EXPECT_NEAR(F16ToF32(F32ToF16(v)), v, std::fabs(v) * 1e-3f + 1e-7f) << v;
  }
  EXPECT_EQ(F8E4M3ToF32(0x38), 1.0f);   // exponent 7, mantissa 0
  EXPECT_EQ(F8E4M3ToF32(0x7e), 448.0f);  // largest finite e4m3fn
  EXPECT_TRUE(std::isnan(F8E4M3ToF32(0x7f)));
}

}  // namespace
}  // namespace q3vl
