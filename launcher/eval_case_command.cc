// q3vl eval-case CASE_DIR --out OUT_DIR: the golden-case contract of ../shared/golden/README.md.
#include <iostream>

#include "core/backend.h"
#include "launcher/eval_case.h"
#include "launcher/mesh.h"
#include "launcher/options.h"
#include "launcher/replica.h"

namespace q3vl::launcher {

int EvalCaseCommand(const Args& args) {
  constexpr char kName[] = "eval-case";
  po::options_description options("options");
  options.add_options()
      ("case", po::value<std::string>()->required(), "golden case directory (model/, inputs/, case.json)")
      ("out", po::value<std::string>()->required(), "output directory (created)")
      ("backend", po::value<std::string>()->default_value("cpu"), "compute backend: cpu or cuda (with --mesh: each rank on GPU local rank % visible GPUs, activations over NCCL, control over MPI)")
      ("mesh", po::value<std::string>(), "parallel mesh vision=V,pp=P,tp=T,ep=E,dp=D (run under mpirun -np D*(V+P*max(T,E))); every replica runs the case, replica 0 writes")
      ("from-raw", po::bool_switch(), "compute pixel values with q3vl's own preprocessing from the raw images/frames in inputs/");
  EngineOptions::AddTo(options, /*kv_dtype=*/DType::kF32);  // the fp32 contract
  po::positional_options_description positional;
  positional.add("case", 1);
  auto parsed = ParseArgs(kName, "CASE_DIR --out OUT_DIR [options]", options, positional, args);
  if (std::holds_alternative<int>(parsed)) return std::get<int>(parsed);
  const po::variables_map& vm = std::get<po::variables_map>(parsed);
  auto engine_options = EngineOptions::From(vm);
  if (!engine_options.ok()) return UsageError(kName, std::string(engine_options.status().message()));
  engine_options->ApplyToProcess();
  auto kind = ParseBackendKind(vm["backend"].as<std::string>());
  if (!kind.ok()) return Fail(kName, kind.status());
  if (engine_options->kv_dtype == DType::kF8E4M3 && *kind == BackendKind::kCuda) {
    return UsageError(kName, "--kv-dtype fp8 runs on the CPU backend only for now; use bf16 with --backend cuda");
  }
  std::unique_ptr<MeshRun> mesh;
  if (vm.count("mesh")) {
    auto started = MeshRun::Start(vm["mesh"].as<std::string>(), *kind);
    if (!started.ok()) return FirstRankOfJob() ? Fail(kName, started.status()) : 1;  // said once, not per rank
    mesh = *std::move(started);
  }
  // Under a mesh every step ends with an agreement, so a failure on one rank stops all of them
  // at once; only the leader reports.
  auto step = [&](const absl::Status& status) -> absl::Status {
    return mesh ? mesh->Agree(status) : status;
  };
  const auto fail = [&](const absl::Status& status) {
    return (!mesh || mesh->leader()) ? Fail(kName, status) : 1;
  };
  absl::StatusOr<std::unique_ptr<Backend>> own_backend;  // without a mesh
  if (!mesh) {
    own_backend = CreateBackend(*kind);
    if (!own_backend.ok()) return Fail(kName, own_backend.status());
  }
  Backend& backend = mesh ? mesh->backend() : **own_backend;
  auto golden = ReadGoldenCase(vm["case"].as<std::string>());
  if (golden.ok() && vm["from-raw"].as<bool>()) {
    if (absl::Status s = ReplaceWithRawPixels(*golden); !s.ok()) golden = s;
  }
  if (absl::Status s = step(golden.status()); !s.ok()) return fail(s);
  auto model = model::Qwen3VL::Load(golden->dir + "/model", backend,
                                    mesh ? mesh->parallel() : model::ModelParallel{});
  if (absl::Status s = step(model.status()); !s.ok()) return fail(s);
  // The case through the replica's engine (the leader steps it; the other ranks follow).
  const int64_t seq_len = static_cast<int64_t>(golden->request.input_ids.size());
  const int64_t pages = engine_options->KvPages(seq_len + golden->num_generated);
  ReplicaHost host(**model, mesh.get(), *engine_options, pages, /*tokenizer=*/nullptr);
  absl::StatusOr<EvalCaseOutput> output = absl::UnknownError("not run on this rank");
  absl::Status ran;
  if (host.leader()) {
    output = RunGoldenCaseOnEngine(host.engine(), (*model)->config(), *golden);
    ran = output.status();
    if (absl::Status s = host.Finish(); ran.ok()) ran = s;
  } else {
    ran = host.Follow();
  }
  if (absl::Status s = step(ran); !s.ok()) return fail(s);
  if (mesh && !mesh->leader()) return 0;
  if (absl::Status s = WriteEvalCaseOutputs(vm["out"].as<std::string>(), *output, seq_len); !s.ok()) {
    return Fail(kName, s);
  }
  std::cerr << "eval-case: seq_len " << seq_len << ", rope_delta " << output->result.rope.rope_delta
            << ", " << output->result.tokens.size() << " greedy tokens in " << output->seconds << " s -> "
            << vm["out"].as<std::string>() << (mesh ? " (mesh " + vm["mesh"].as<std::string>() + ")" : "")
            << ", checkpoint bytes read here: " << (*model)->bytes_read() << std::endl;
  return 0;
}

}  // namespace q3vl::launcher
