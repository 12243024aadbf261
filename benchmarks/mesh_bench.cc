// mesh_bench: the distributed decoder on this machine, as one JSON object from the leader.
// Under mpirun with --mesh: writes a random-weight checkpoint (rank 0), loads it sharded, and
// times prefill and decode steps at batch 1 and 16, with every collective metered (calls,
// bytes, seconds per group kind and op). See README.md in this directory.
//   mpirun --allow-run-as-root --oversubscribe -np 2 mesh_bench --mesh tp=2 [--config cfg.json]
#include <chrono>
#include <filesystem>
#include <iostream>
#include <map>
#include <string>

#include "launcher/mesh.h"
#include "model/demo_model.h"
#include "model/generator.h"
#include "nlohmann/json.hpp"

namespace q3vl {
namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

struct OpStats {
  int64_t calls = 0;
  int64_t bytes = 0;  // bytes this rank passed in (per call: the input tensor)
  double seconds = 0;
};
using Meter = std::map<std::string, OpStats>;  // "op" -> stats (all groups of this rank)

// A data-plane communicator that times and counts every call of the one it wraps.
class MeteredComm final : public parallel::Communicator {
 public:
  MeteredComm(std::shared_ptr<parallel::Communicator> inner, Meter* meter)
      : Communicator(inner->rank(), inner->size()), inner_(std::move(inner)), meter_(meter) {}
  absl::string_view backend_name() const override { return inner_->backend_name(); }
  Device device() const override { return inner_->device(); }

 protected:
  absl::Status DoAllReduce(const parallel::CommBuffers& b) override {
    return Timed("all_reduce", b.in.size_bytes(), [&] { return inner_->AllReduce(b); });
  }
  absl::Status DoAllGather(const parallel::CommBuffers& b) override {
    return Timed("all_gather", b.in.size_bytes(), [&] { return inner_->AllGather(b); });
  }
  absl::Status DoReduceScatter(const parallel::CommBuffers& b) override {
    return Timed("reduce_scatter", b.in.size_bytes(), [&] { return inner_->ReduceScatter(b); });
  }
  absl::Status DoAllToAll(const parallel::AllToAllParams& p) override {
    return Timed("all_to_all", p.in.size_bytes(), [&] { return inner_->AllToAll(p); });
  }
  absl::Status DoBroadcast(const Tensor& data, int root) override {
    return Timed("broadcast", data.size_bytes(), [&] { return inner_->Broadcast(data, root); });
  }
  absl::Status DoSend(const Tensor& data, int peer) override {
    return Timed("send", data.size_bytes(), [&] { return inner_->Send(data, peer); });
  }
  absl::Status DoRecv(const Tensor& data, int peer) override {
    return Timed("recv", data.size_bytes(), [&] { return inner_->Recv(data, peer); });
  }
  absl::Status DoBarrier() override { return Timed("barrier", 0, [&] { return inner_->Barrier(); }); }
  absl::StatusOr<std::unique_ptr<parallel::Communicator>> DoSplit(int color, int key) override {
    return inner_->Split(color, key);
  }
  absl::StatusOr<std::unique_ptr<parallel::Communicator>> DoSubGroup(absl::Span<const int> ranks) override {
    return inner_->SubGroup(ranks);
  }

 private:
  template <typename F>
  absl::Status Timed(const char* op, int64_t bytes, F&& call) {
    const Clock::time_point start = Clock::now();
    absl::Status s = call();
    OpStats& st = (*meter_)[op];
    ++st.calls;
    st.bytes += bytes;
    st.seconds += std::chrono::duration<double>(Clock::now() - start).count();
    return s;
  }
  std::shared_ptr<parallel::Communicator> inner_;
  Meter* meter_;
};

Json MeterJson(const Meter& meter, double steps) {
  Json out = Json::object();
  for (const auto& [op, st] : meter) {
    out[op] = {{"calls_per_step", st.calls / steps}, {"bytes_per_step", st.bytes / steps},
               {"seconds_per_step", st.seconds / steps}};
  }
  return out;
}

int Main(int argc, char** argv) {
  std::string mesh = "tp=1", config_path, dir = "/tmp/q3vl_mesh_bench_model";
  int64_t prompt = 128, steps = 16;
  int micro_batches = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i], value = argv[i + 1];
    if (key == "--mesh") mesh = value;
    else if (key == "--config") config_path = value;
    else if (key == "--model-dir") dir = value;
    else if (key == "--prompt") prompt = std::stoll(value);
    else if (key == "--steps") steps = std::stoll(value);
    else if (key == "--micro-batches") micro_batches = std::stoi(value);
    else {
      std::cerr << "usage: mesh_bench [--mesh M] [--config config.json] [--model-dir D] [--prompt N] [--steps N]"
                   " [--micro-batches N]\n";
      return 2;
    }
  }
  Meter meter;
  auto run = launcher::MeshRun::Start(
      mesh, BackendKind::kCpu, [&](std::shared_ptr<parallel::Communicator> host) -> absl::StatusOr<std::shared_ptr<parallel::Communicator>> {
        return std::shared_ptr<parallel::Communicator>(std::make_shared<MeteredComm>(host, &meter));
      });
  if (!run.ok()) {
    std::cerr << "mesh_bench: " << run.status().message() << "\n";
    return 1;
  }
  model::ModelConfig config = model::DemoConfig();
  if (!config_path.empty()) {
    auto loaded = model::ModelConfig::FromFile(config_path);
    if (!loaded.ok()) return std::cerr << "mesh_bench: " << loaded.status().message() << "\n", 1;
    config = *loaded;
  }
  if ((*run)->world().rank() == 0 && !std::filesystem::exists(dir + "/config.json")) {
    Q3VL_CHECK_OK(model::WriteRandomCheckpoint(config, {.dir = dir, .seed = 1}));
  }
  Q3VL_CHECK_OK((*run)->world().Barrier());
  auto model = model::Qwen3VL::Load(dir, (*run)->backend(), (*run)->parallel());
  if (absl::Status s = (*run)->Agree(model.status()); !s.ok()) return 1;
  Json out = {{"mesh", (*run)->topology().config().ToString()}, {"world_size", (*run)->world().size()},
              {"prompt_tokens", prompt}, {"decode_steps", steps}, {"micro_batches", micro_batches},
              {"checkpoint_bytes_read_by_leader", (*model)->bytes_read()}, {"cases", Json::array()}};
  for (int batch : {1, 16}) {
    model::GenerationRequest request;
    for (int64_t t = 0; t < prompt; ++t) request.input_ids.push_back(1000 + t);
    request.sampling.max_new_tokens = steps + 1;
    const std::vector<model::GenerationRequest> requests(batch, request);
    Meter prefill_meter;
    Clock::time_point start = Clock::now(), first;
    model::Generator generator(**model, {.micro_batches = micro_batches, .on_prefill = [&] {  // switch meters
                                           first = Clock::now();
                                           prefill_meter = meter;
                                           meter.clear();
                                         }});
    meter.clear();
    auto results = generator.Generate(requests);
    Q3VL_CHECK_OK(results.status());
    const double prefill_s = std::chrono::duration<double>(first - start).count();
    const double decode_s = std::chrono::duration<double>(Clock::now() - first).count();
    out["cases"].push_back({{"batch", batch},
                            {"leader_sequences", generator.stats().sequences},  // its attention group's
                            {"prefill_s", prefill_s},
                            {"prefill_tokens_per_s", batch * prompt / prefill_s},
                            {"decode_step_s", decode_s / steps},
                            {"decode_tokens_per_s", batch * steps / decode_s},
                            {"prefill_collectives", MeterJson(prefill_meter, 1)},
                            {"decode_collectives_per_step", MeterJson(meter, static_cast<double>(steps))}});
    meter.clear();
  }
  if ((*run)->leader()) std::cout << out.dump(2) << std::endl;
  return 0;
}

}  // namespace
}  // namespace q3vl

int main(int argc, char** argv) { return q3vl::Main(argc, argv); }
