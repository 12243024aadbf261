// A data-plane communicator for DeviceSimBackend meshes, standing in for NCCL in tests on
// machines without a GPU: it takes only the simulated device's tensors (as NCCL takes only
// device pointers), so model code that sends a host tensor over a data plane, or a device
// tensor over a control plane (the in-process host communicators refuse those), fails here
// as it would on a GPU mesh. It runs on its own in-process group split from the host one, so
// the two planes are separate channels, as MPI and NCCL are.
#ifndef Q3VL_TESTS_DEVICE_SIM_COMM_H_
#define Q3VL_TESTS_DEVICE_SIM_COMM_H_

#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "core/status_macros.h"
#include "parallel/comm_groups.h"
#include "parallel/communicator.h"
#include "tests/device_sim_backend.h"

namespace q3vl::testing {

class DeviceSimComm final : public parallel::Communicator {
 public:
  explicit DeviceSimComm(std::unique_ptr<parallel::Communicator> inner)
      : Communicator(inner->rank(), inner->size()), inner_(std::move(inner)) {}

  absl::string_view backend_name() const override { return "device_sim"; }
  Device device() const override { return Device::kCuda; }

  // The data-plane factory for CommGroups::Create: a fresh group over the host group's ranks.
  static parallel::DataPlaneFactory Factory() {
    return [](std::shared_ptr<parallel::Communicator> host)
               -> absl::StatusOr<std::shared_ptr<parallel::Communicator>> {
      Q3VL_ASSIGN_OR_RETURN(std::unique_ptr<parallel::Communicator> own, host->Split(0, host->rank()));
      return std::shared_ptr<parallel::Communicator>(std::make_shared<DeviceSimComm>(std::move(own)));
    };
  }

 protected:
  absl::Status DoAllReduce(const parallel::CommBuffers& b) override { return inner_->AllReduce(Views(b)); }
  absl::Status DoAllGather(const parallel::CommBuffers& b) override { return inner_->AllGather(Views(b)); }
  absl::Status DoReduceScatter(const parallel::CommBuffers& b) override {
    return inner_->ReduceScatter(Views(b));
  }
  absl::Status DoAllToAll(const parallel::AllToAllParams& p) override {
    return inner_->AllToAll({.in = View(p.in), .send_counts = p.send_counts, .out = View(p.out),
                             .recv_counts = p.recv_counts});
  }
  absl::Status DoBroadcast(const Tensor& data, int root) override { return inner_->Broadcast(View(data), root); }
  absl::Status DoSend(const Tensor& data, int peer) override { return inner_->Send(View(data), peer); }
  absl::Status DoRecv(const Tensor& data, int peer) override { return inner_->Recv(View(data), peer); }
  absl::Status DoBarrier() override { return inner_->Barrier(); }
  absl::StatusOr<std::unique_ptr<parallel::Communicator>> DoSplit(int color, int key) override {
    Q3VL_ASSIGN_OR_RETURN(std::unique_ptr<parallel::Communicator> split, inner_->Split(color, key));
    return Wrap(std::move(split));
  }
  absl::StatusOr<std::unique_ptr<parallel::Communicator>> DoSubGroup(absl::Span<const int> ranks) override {
    Q3VL_ASSIGN_OR_RETURN(std::unique_ptr<parallel::Communicator> sub, inner_->SubGroup(ranks));
    return Wrap(std::move(sub));
  }
  absl::Status CopyLocal(const Tensor& src, const Tensor& dst) override {
    Tensor out = View(dst);
    out.CopyFrom(View(src));
    return absl::OkStatus();
  }

 private:
  static Tensor View(const Tensor& t) { return t.defined() ? DeviceSimBackend::HostView(t) : t; }
  static parallel::CommBuffers Views(const parallel::CommBuffers& b) { return {.in = View(b.in), .out = View(b.out)}; }
  static std::unique_ptr<parallel::Communicator> Wrap(std::unique_ptr<parallel::Communicator> c) {
    if (c == nullptr) return nullptr;
    return std::make_unique<DeviceSimComm>(std::move(c));
  }

  std::unique_ptr<parallel::Communicator> inner_;
};

}  // namespace q3vl::testing

#endif  // Q3VL_TESTS_DEVICE_SIM_COMM_H_
