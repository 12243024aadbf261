// q3vl eval-case CASE_DIR --out OUT_DIR: the golden-case contract of ../shared/golden/README.md.
#include <iostream>

#include "core/backend.h"
#include "launcher/eval_case.h"
#include "launcher/options.h"

namespace q3vl::launcher {

int EvalCaseCommand(const Args& args) {
  constexpr char kName[] = "eval-case";
  po::options_description options("options");
  options.add_options()
      ("case", po::value<std::string>()->required(), "golden case directory (model/, inputs/, case.json)")
      ("out", po::value<std::string>()->required(), "output directory (created)")
      ("backend", po::value<std::string>()->default_value("cpu"), "compute backend: cpu or cuda")
      ("mesh", po::value<std::string>(), "parallel mesh (vision=V,pp=P,tp=T,ep=E); single rank only in this build")
      ("from-raw", po::bool_switch(), "compute pixel values with q3vl's own preprocessing from the raw images/frames in inputs/");
  po::positional_options_description positional;
  positional.add("case", 1);
  auto parsed = ParseArgs(kName, "CASE_DIR --out OUT_DIR [options]", options, positional, args);
  if (std::holds_alternative<int>(parsed)) return std::get<int>(parsed);
  const po::variables_map& vm = std::get<po::variables_map>(parsed);
  if (vm.count("mesh") && vm["mesh"].as<std::string>() != "tp=1" && !vm["mesh"].as<std::string>().empty()) {
    return Fail(kName, absl::UnimplementedError("multi-rank meshes are not available in this build; "
                                                "run without --mesh"));
  }
  auto kind = ParseBackendKind(vm["backend"].as<std::string>());
  if (!kind.ok()) return Fail(kName, kind.status());
  auto backend = CreateBackend(*kind);
  if (!backend.ok()) return Fail(kName, backend.status());
  auto golden = ReadGoldenCase(vm["case"].as<std::string>());
  if (!golden.ok()) return Fail(kName, golden.status());
  if (vm["from-raw"].as<bool>()) {
    if (absl::Status s = ReplaceWithRawPixels(*golden); !s.ok()) return Fail(kName, s);
  }
  auto model = model::Qwen3VL::Load(golden->dir + "/model", **backend);
  if (!model.ok()) return Fail(kName, model.status());
  auto output = RunGoldenCase(**model, *golden);
  if (!output.ok()) return Fail(kName, output.status());
  const int64_t seq_len = static_cast<int64_t>(golden->request.input_ids.size());
  if (absl::Status s = WriteEvalCaseOutputs(vm["out"].as<std::string>(), *output, seq_len); !s.ok()) {
    return Fail(kName, s);
  }
  std::cerr << "eval-case: seq_len " << seq_len << ", rope_delta " << output->result.rope.rope_delta
            << ", " << output->result.tokens.size() << " greedy tokens in " << output->seconds << " s -> "
            << vm["out"].as<std::string>() << std::endl;
  return 0;
}

}  // namespace q3vl::launcher
