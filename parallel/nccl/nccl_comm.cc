#include "parallel/nccl/nccl_comm.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"

namespace q3vl::parallel {
namespace {

constexpr absl::Duration kPoll = absl::Microseconds(20);

absl::StatusOr<ncclDataType_t> NcclType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return ncclFloat32;
    case DType::kBF16:
      return ncclBfloat16;
    case DType::kF16:
      return ncclFloat16;
    case DType::kI64:
      return ncclInt64;
    case DType::kI32:
      return ncclInt32;
    case DType::kF8E4M3:
    case DType::kU8:
    case DType::kBool:
      return ncclUint8;
  }
  return absl::InvalidArgumentError("no NCCL type for this dtype");
}

absl::Status CudaStatus(cudaError_t err, absl::string_view what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(err)));
}

int64_t RowBytes(const Tensor& t) {
  int64_t n = static_cast<int64_t>(DTypeSize(t.dtype()));
  for (int d = 1; d < t.rank(); ++d) n *= t.dim(d);
  return n;
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(std::shared_ptr<Communicator> host, const NcclCommOptions& options)
      : Communicator(host->rank(), host->size()), host_(std::move(host)), options_(options) {}

  ~NcclCommunicator() override {
    if (comm_ != nullptr) {
      if (broken_.ok()) {
        ncclCommDestroy(comm_);
      } else {
        ncclCommAbort(comm_);
      }
    }
    if (barrier_ != nullptr) cudaFree(barrier_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // Collective over host_: unique id from rank 0, nonblocking init polled to the deadline.
  absl::Status Init() {
    if (options_.cuda_device < 0) {
      Q3VL_RETURN_IF_ERROR(CudaStatus(cudaGetDevice(&options_.cuda_device), "cudaGetDevice"));
    }
    Q3VL_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(options_.cuda_device), "cudaSetDevice"));
    Q3VL_RETURN_IF_ERROR(
        CudaStatus(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate"));
    ncclUniqueId id;
    std::memset(&id, 0, sizeof(id));
    if (rank() == 0) Q3VL_RETURN_IF_ERROR(Nccl("ncclGetUniqueId", ncclGetUniqueId(&id)));
    Tensor id_bytes = Tensor::Empty(DType::kU8, {static_cast<int64_t>(sizeof(id))});
    std::memcpy(id_bytes.raw_data(), &id, sizeof(id));
    Q3VL_RETURN_IF_ERROR(host_->Broadcast(id_bytes, 0));
    std::memcpy(&id, id_bytes.raw_data(), sizeof(id));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    const absl::Time deadline = absl::Now() + options_.comm.timeout;
    Q3VL_RETURN_IF_ERROR(Nccl("ncclCommInitRankConfig",
                              ncclCommInitRankConfig(&comm_, size(), id, rank(), &config)));
    return AwaitComm("ncclCommInitRankConfig", deadline);
  }

  absl::string_view backend_name() const override { return "nccl"; }
  Device device() const override { return Device::kCuda; }

 protected:
  absl::Status DoAllReduce(const CommBuffers& b) override {
    Q3VL_ASSIGN_OR_RETURN(const ncclDataType_t type, NcclType(b.in.dtype()));
    return Run("AllReduce", [&] {
      return ncclAllReduce(b.in.raw_data(), b.out.raw_data(), b.in.numel(), type, ncclSum, comm_,
                           stream_);
    });
  }

  absl::Status DoAllGather(const CommBuffers& b) override {
    Q3VL_ASSIGN_OR_RETURN(const ncclDataType_t type, NcclType(b.in.dtype()));
    return Run("AllGather", [&] {
      return ncclAllGather(b.in.raw_data(), b.out.raw_data(), b.in.numel(), type, comm_, stream_);
    });
  }

  absl::Status DoReduceScatter(const CommBuffers& b) override {
    Q3VL_ASSIGN_OR_RETURN(const ncclDataType_t type, NcclType(b.in.dtype()));
    return Run("ReduceScatter", [&] {
      return ncclReduceScatter(b.in.raw_data(), b.out.raw_data(), b.out.numel(), type, ncclSum,
                               comm_, stream_);
    });
  }

  absl::Status DoAllToAll(const AllToAllParams& p) override {
    const int64_t row_bytes = RowBytes(p.in);
    const char* in = static_cast<const char*>(p.in.raw_data());
    char* out = static_cast<char*>(p.out.raw_data());
    return Run("AllToAll", [&] {
      ncclResult_t result = ncclGroupStart();
      int64_t send_at = 0, recv_at = 0;
      for (int q = 0; q < size() && (result == ncclSuccess || result == ncclInProgress); ++q) {
        if (p.send_counts[q] > 0) {
          result = ncclSend(in + send_at * row_bytes, p.send_counts[q] * row_bytes, ncclUint8, q,
                            comm_, stream_);
        }
        if (p.recv_counts[q] > 0 && (result == ncclSuccess || result == ncclInProgress)) {
          result = ncclRecv(out + recv_at * row_bytes, p.recv_counts[q] * row_bytes, ncclUint8, q,
                            comm_, stream_);
        }
        send_at += p.send_counts[q];
        recv_at += p.recv_counts[q];
      }
      const ncclResult_t end = ncclGroupEnd();
      return result == ncclSuccess ? end : result;
    });
  }

  absl::Status DoBroadcast(const Tensor& data, int root) override {
    return Run("Broadcast", [&] {
      return ncclBroadcast(data.raw_data(), data.raw_data(), data.size_bytes(), ncclUint8, root,
                           comm_, stream_);
    });
  }

  absl::Status DoSend(const Tensor& data, int peer) override {
    return Run("Send", [&] {
      return ncclSend(data.raw_data(), data.size_bytes(), ncclUint8, peer, comm_, stream_);
    });
  }

  absl::Status DoRecv(const Tensor& data, int peer) override {
    return Run("Recv", [&] {
      return ncclRecv(data.raw_data(), data.size_bytes(), ncclUint8, peer, comm_, stream_);
    });
  }

  absl::Status DoBarrier() override {
    if (barrier_ == nullptr) {
      Q3VL_RETURN_IF_ERROR(CudaStatus(cudaMalloc(&barrier_, sizeof(float)), "cudaMalloc"));
    }
    return Run("Barrier", [&] {
      return ncclAllReduce(barrier_, barrier_, 1, ncclFloat32, ncclSum, comm_, stream_);
    });
  }

  absl::StatusOr<std::unique_ptr<Communicator>> DoSplit(int color, int key) override {
    Q3VL_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> host, host_->Split(color, key));
    if (host == nullptr) return std::unique_ptr<Communicator>();
    return CreateNcclCommunicator(std::move(host), options_);
  }

  absl::StatusOr<std::unique_ptr<Communicator>> DoSubGroup(absl::Span<const int> ranks) override {
    Q3VL_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> host, host_->SubGroup(ranks));
    return CreateNcclCommunicator(std::move(host), options_);
  }

  absl::Status CopyLocal(const Tensor& src, const Tensor& dst) override {
    if (src.size_bytes() == 0 || src.raw_data() == dst.raw_data()) return absl::OkStatus();
    Q3VL_RETURN_IF_ERROR(AfterQueuedWork("CopyLocal"));
    Q3VL_RETURN_IF_ERROR(
        CudaStatus(cudaMemcpyAsync(dst.raw_data(), src.raw_data(), src.size_bytes(),
                                   cudaMemcpyDeviceToDevice, stream_),
                   "cudaMemcpyAsync"));
    return CudaStatus(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  }

 private:
  absl::Status Nccl(absl::string_view what, ncclResult_t result) {
    if (result == ncclSuccess || result == ncclInProgress) return absl::OkStatus();
    return Broken(absl::UnavailableError(
        absl::StrCat(what, " on rank ", rank(), " of ", size(), ": ", ncclGetErrorString(result))));
  }

  absl::Status Broken(absl::Status status) {
    if (broken_.ok()) broken_ = status;
    return status;
  }

  absl::Status Timeout(absl::string_view what) {
    return Broken(absl::DeadlineExceededError(
        absl::StrCat(what, " on rank ", rank(), " of ", size(), ": no completion after ",
                     absl::FormatDuration(options_.comm.timeout), "; a peer is dead or stuck")));
  }

  // The tensors come from the backend's stream (kernels, zero fills), which stream_ is not
  // ordered after: the work queued on the device so far finishes before a call is enqueued.
  // Local work only, so this cannot wait on a peer. (Results are safe to use on return: every
  // call waits for stream_.)
  absl::Status AfterQueuedWork(absl::string_view what) {
    const cudaError_t error = cudaDeviceSynchronize();
    if (error != cudaSuccess) return Broken(CudaStatus(error, what));
    return absl::OkStatus();
  }

  // Polls a nonblocking communicator until its pending call is issued (not ncclInProgress).
  absl::Status AwaitComm(absl::string_view what, absl::Time deadline) {
    for (;;) {
      ncclResult_t state = ncclSuccess;
      Q3VL_RETURN_IF_ERROR(Nccl(what, ncclCommGetAsyncError(comm_, &state)));
      if (state == ncclSuccess) return absl::OkStatus();
      Q3VL_RETURN_IF_ERROR(Nccl(what, state));
      if (absl::Now() > deadline) return Timeout(what);
      absl::SleepFor(kPoll);
    }
  }

  // Enqueues an NCCL call on stream_, then waits for the stream against the deadline while
  // watching the communicator for asynchronous errors (a lost peer).
  absl::Status Run(absl::string_view what, const std::function<ncclResult_t()>& enqueue) {
    if (!broken_.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": communicator is broken by an earlier error: ", broken_.message()));
    }
    Q3VL_RETURN_IF_ERROR(AfterQueuedWork(what));
    const absl::Time deadline = absl::Now() + options_.comm.timeout;
    Q3VL_RETURN_IF_ERROR(Nccl(what, enqueue()));
    Q3VL_RETURN_IF_ERROR(AwaitComm(what, deadline));
    for (;;) {
      const cudaError_t query = cudaStreamQuery(stream_);
      if (query == cudaSuccess) return absl::OkStatus();
      if (query != cudaErrorNotReady) return Broken(CudaStatus(query, what));
      ncclResult_t state = ncclSuccess;
      Q3VL_RETURN_IF_ERROR(Nccl(what, ncclCommGetAsyncError(comm_, &state)));
      if (state != ncclInProgress) Q3VL_RETURN_IF_ERROR(Nccl(what, state));
      if (absl::Now() > deadline) return Timeout(what);
      std::this_thread::yield();
    }
  }

  std::shared_ptr<Communicator> host_;
  NcclCommOptions options_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* barrier_ = nullptr;  // [1] f32 on the device
  absl::Status broken_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(
    std::shared_ptr<Communicator> host, const NcclCommOptions& options) {
  if (host == nullptr) return absl::InvalidArgumentError("NCCL needs a host communicator");
  if (host->device() != Device::kCpu) {
    return absl::InvalidArgumentError("the NCCL bootstrap communicator must be a host one");
  }
  auto comm = std::make_unique<NcclCommunicator>(std::move(host), options);
  Q3VL_RETURN_IF_ERROR(comm->Init());
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace q3vl::parallel
