#include "core/tensor.h"

#include "core/cpu/cpu_backend.h"
#include "gtest/gtest.h"
#include "tests/device_sim_backend.h"

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

// Device memory is reachable only through a backend: host accessors CHECK-fail on it, and
// Upload/Download move tensors (and leave tensors already in place alone).
TEST(TensorDeathTest, HostAccessToDeviceMemoryFails) {
  testing::DeviceSimBackend device;
  Tensor t = device.Allocate(DType::kF32, {2, 3});
  EXPECT_DEATH(t.data<float>(), "data\\(\\) on device memory");
  EXPECT_DEATH(t.Clone(), "CopyFrom on device memory");
  EXPECT_DEATH(t.ToF32(), "ToF32 on device memory");
  EXPECT_DEATH(t.Fill(1.0f), "on device memory");
  EXPECT_NE(t.device_data<float>(), nullptr);  // what a backend hands its kernels
}

TEST(TensorTest, UploadAndDownload) {
  CpuBackend cpu;
  testing::DeviceSimBackend device;
  const Tensor host = Tensor::FromVector({1, 2, 3, 4, 5, 6}, {2, 3});
  EXPECT_EQ(Upload(cpu, host).buffer(), host.buffer());  // already there
  EXPECT_EQ(Download(cpu, host).buffer(), host.buffer());
  const Tensor up = Upload(device, host);
  EXPECT_EQ(up.device(), Device::kCuda);
  EXPECT_EQ(Upload(device, up).buffer(), up.buffer());
  const Tensor back = Download(device, up.Slice(0, 1, 2));
  EXPECT_EQ(back.device(), Device::kCpu);
  EXPECT_EQ(std::vector<float>(back.data<float>(), back.data<float>() + 3), (std::vector<float>{4, 5, 6}));
  EXPECT_EQ(device.downloads(), 1);
}

TEST(TensorTest, ZeroContiguousAndRowStrided) {
  for (bool on_device : {false, true}) {
    CpuBackend cpu;
    testing::DeviceSimBackend sim;
    Backend& b = on_device ? static_cast<Backend&>(sim) : cpu;
    Tensor t = Upload(b, Tensor::FromVector({1, 2, 3, 4, 5, 6}, {2, 3}));
    Tensor cols = t.Slice(1, 1, 3);  // rows of 2 inside rows of 3
    b.Zero(cols);
    Tensor h = Download(b, t);
    EXPECT_EQ(std::vector<float>(h.data<float>(), h.data<float>() + 6), (std::vector<float>{1, 0, 0, 4, 0, 0}));
    b.Zero(t);
    h = Download(b, t);
    EXPECT_EQ(std::vector<float>(h.data<float>(), h.data<float>() + 6), std::vector<float>(6, 0.0f));
  }
}

// F32ToF8E4M3 inverts F8E4M3ToF32 on every finite code, rounds to the nearest code (ties to
// the even code), saturates at 448 and keeps the sign.
TEST(DTypeTest, Fp8EncodeRoundsToNearestAndSaturates) {
  for (int c = 0; c < 256; ++c) {
    const float v = F8E4M3ToF32(static_cast<uint8_t>(c));
    if (std::isnan(v)) continue;
    if (c == 0x80) continue;  // -0 encodes as -0: checked below
    EXPECT_EQ(F32ToF8E4M3(v), c) << c << " = " << v;
  }
  EXPECT_EQ(F32ToF8E4M3(-0.0f), 0x80);
  EXPECT_EQ(F32ToF8E4M3(1000.0f), 0x7e);
  EXPECT_EQ(F32ToF8E4M3(-1000.0f), 0xfe);
  EXPECT_EQ(F32ToF8E4M3(1.0625f), 0x38);  // halfway between 1 and 1.125: to even (1)
  EXPECT_EQ(F32ToF8E4M3(1.1875f), 0x3a);  // halfway between 1.125 and 1.25: to even (1.25)
  for (float x = -440.0f; x < 440.0f; x += 0.37f) {
    const float back = F8E4M3ToF32(F32ToF8E4M3(x));
    EXPECT_LE(std::fabs(back - x), std::max(std::fabs(x) / 16.0f, std::ldexp(1.0f, -10))) << x;
  }
}

TEST(DTypeTest, HalfAndFp8RoundTrip) {
  for (float v : {0.0f, 1.0f, -0.5f, 65504.0f, 6.1e-5f, 3.14159f}) {
    EXPECT_NEAR(F16ToF32(F32ToF16(v)), v, std::fabs(v) * 1e-3f + 1e-7f) << v;
  }
  EXPECT_EQ(F8E4M3ToF32(0x38), 1.0f);   // exponent 7, mantissa 0
  EXPECT_EQ(F8E4M3ToF32(0x7e), 448.0f);  // largest finite e4m3fn
  EXPECT_TRUE(std::isnan(F8E4M3ToF32(0x7f)));
}

// How a device backend copies a view with one 2-D memcpy: rows of contiguous elements.
TEST(TensorTest, AsRowRunsCollapsesViewsIntoRows) {
  const Tensor t = Tensor::Empty(DType::kF32, {6, 10});
  auto runs = t.AsRowRuns();  // contiguous: one row
  ASSERT_TRUE(runs.has_value());
  EXPECT_EQ(runs->rows, 1);
  EXPECT_EQ(runs->width, 60);
  runs = t.Slice(1, 2, 7).AsRowRuns();  // a column slice
  ASSERT_TRUE(runs.has_value());
  EXPECT_EQ(runs->rows, 6);
  EXPECT_EQ(runs->width, 5);
  EXPECT_EQ(runs->row_stride, 10);
  // One of q, k, v out of a fused [n, 3, heads, hv] projection: [n, 1, heads, hv].
  const Tensor qkv = Tensor::Empty(DType::kF32, {5, 3, 4, 8});
  runs = qkv.Slice(1, 1, 2).AsRowRuns();
  ASSERT_TRUE(runs.has_value());
  EXPECT_EQ(runs->rows, 5);
  EXPECT_EQ(runs->width, 32);
  EXPECT_EQ(runs->row_stride, 96);
  // Leading dimensions that follow on merge into the rows: [4, 6, 8] keeping 4 of 8 inner.
  const Tensor cube = Tensor::Empty(DType::kF32, {4, 6, 8});
  runs = cube.Slice(2, 0, 4).AsRowRuns();
  ASSERT_TRUE(runs.has_value());
  EXPECT_EQ(runs->rows, 24);
  EXPECT_EQ(runs->width, 4);
  EXPECT_EQ(runs->row_stride, 8);
  // Gaps at two levels are not rows of one stride.
  EXPECT_FALSE(cube.Slice(1, 0, 3).Slice(2, 0, 4).AsRowRuns().has_value());
  const Tensor column = Tensor::Empty(DType::kF32, {6, 8}).Slice(1, 3, 4);  // [6, 1], stride 8
  runs = column.AsRowRuns();
  ASSERT_TRUE(runs.has_value());  // six rows of one element
  EXPECT_EQ(runs->rows, 6);
  EXPECT_EQ(runs->width, 1);
  EXPECT_EQ(runs->row_stride, 8);
  EXPECT_EQ(Tensor::Empty(DType::kF32, {0, 8}).AsRowRuns()->rows, 0);
}

}  // namespace
}  // namespace q3vl
