// The NCCL communicator on device tensors, one rank on one GPU (NCCL refuses two ranks of one
// communicator on the same device, so the multi-rank conformance suite needs a multi-GPU
// machine). Every collective runs through the real NCCL calls, in f32 and bf16, from empty to
// 64 MiB, and all-to-all with a zero count. Label gpu: without a
// device each test skips with the reason.
#include <cstring>
#include <vector>

#include "core/cuda/cuda_backend.h"
#include "gtest/gtest.h"
#include "parallel/inprocess_comm.h"
#include "parallel/nccl/nccl_comm.h"

namespace q3vl::parallel {
namespace {

class NcclSingleGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda::DeviceCount() == 0) GTEST_SKIP() << "no CUDA device visible: NCCL tests skipped";
    auto gpu = cuda::CudaBackend::Create();
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    gpu_ = *std::move(gpu);
    std::shared_ptr<Communicator> host = std::move(CreateInProcessWorld(1)[0]);
    auto nccl = CreateNcclCommunicator(host, {.cuda_device = 0, .comm = {.timeout = absl::Seconds(60)}});
    ASSERT_TRUE(nccl.ok()) << nccl.status();
    comm_ = *std::move(nccl);
  }
  // A device tensor of `dtype` holding 0, 1, 2, ... (mod 251, exact in bf16).
  Tensor Ramp(DType dtype, int64_t n) {
    Tensor host = Tensor::Empty(dtype, {n});
    for (int64_t i = 0; i < n; ++i) {
      const float v = static_cast<float>(i % 251);
      if (dtype == DType::kF32) host.data<float>()[i] = v;
      else host.data<uint16_t>()[i] = F32ToBF16(v);
    }
    return gpu_->ToDevice(host);
  }
  void ExpectRamp(const Tensor& device, int64_t n) {
    const Tensor host = gpu_->ToHost(device).ToF32();
    ASSERT_EQ(host.numel(), n);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(host.data<float>()[i], static_cast<float>(i % 251)) << "element " << i;
    }
  }

  std::unique_ptr<cuda::CudaBackend> gpu_;
  std::unique_ptr<Communicator> comm_;
};

// The communicator's stream is not the backend's: a collective must still see what the
// backend queued before it (here a large GEMM and an output's zero fill), not run ahead of it.
TEST_F(NcclSingleGpuTest, CollectivesFollowTheBackendsQueuedWork) {
  const int64_t m = 2048, k = 4096;
  Tensor host_a = Tensor::Empty(DType::kF32, {m, k}), host_b = Tensor::Empty(DType::kF32, {k, k});
  for (int64_t i = 0; i < host_a.numel(); ++i) host_a.data<float>()[i] = (i % 3) * 0.5f;
  for (int64_t i = 0; i < host_b.numel(); ++i) host_b.data<float>()[i] = (i % 5 == 0) ? 1.0f : 0.0f;
  const Tensor a = gpu_->ToDevice(host_a), b = gpu_->ToDevice(host_b);
  for (int round = 0; round < 3; ++round) {
    Tensor product = gpu_->AllocateUninitialized(DType::kF32, {m, k});
    gpu_->Gemm({.a = a, .b = b, .out = product});       // queued, not finished
    Tensor out = gpu_->Allocate(DType::kF32, {m, k});  // its zero fill is queued too
    ASSERT_TRUE(comm_->AllReduce({.in = product, .out = out}).ok());
    const Tensor want = gpu_->ToHost(product), got = gpu_->ToHost(out);
    ASSERT_EQ(std::memcmp(want.raw_data(), got.raw_data(), want.size_bytes()), 0) << "round " << round;
  }
}

TEST_F(NcclSingleGpuTest, CollectivesOfOneRankAreIdentities) {
  EXPECT_EQ(comm_->backend_name(), "nccl");
  for (const DType dtype : {DType::kF32, DType::kBF16}) {
    for (const int64_t n : {int64_t{0}, int64_t{1}, int64_t{1000}, int64_t{1} << 24}) {
      SCOPED_TRACE(testing::Message() << DTypeName(dtype) << " n=" << n);
      const Tensor in = Ramp(dtype, n);
      Tensor out = gpu_->Allocate(dtype, {n});
      ASSERT_TRUE(comm_->AllReduce({.in = in, .out = out}).ok());
      ExpectRamp(out, n);
      out = gpu_->Allocate(dtype, {n});
      ASSERT_TRUE(comm_->AllGather({.in = in, .out = out}).ok());
      ExpectRamp(out, n);
      out = gpu_->Allocate(dtype, {n});
      ASSERT_TRUE(comm_->ReduceScatter({.in = in, .out = out}).ok());
      ExpectRamp(out, n);
      Tensor same = Ramp(dtype, n);
      ASSERT_TRUE(comm_->Broadcast(same, 0).ok());
      ExpectRamp(same, n);
    }
  }
  EXPECT_TRUE(comm_->Barrier().ok());
}

TEST_F(NcclSingleGpuTest, AllToAllOfOneRank) {
  const Tensor in = Ramp(DType::kF32, 6 * 4).Reshape({6, 4});
  Tensor out = gpu_->Allocate(DType::kF32, {6, 4});
  ASSERT_TRUE(comm_->AllToAll({.in = in, .send_counts = {6}, .out = out, .recv_counts = {6}}).ok());
  ExpectRamp(out.Reshape({24}), 24);
  Tensor none = gpu_->Allocate(DType::kF32, {0, 4});
  ASSERT_TRUE(comm_->AllToAll({.in = none, .send_counts = {0}, .out = none, .recv_counts = {0}}).ok());
  // A count mismatch is refused before NCCL sees it.
  EXPECT_FALSE(comm_->AllToAll({.in = in, .send_counts = {5}, .out = out, .recv_counts = {6}}).ok());
}

}  // namespace
}  // namespace q3vl::parallel
