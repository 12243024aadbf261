#include "launcher/eval_case.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/npy.h"
#include "core/status_macros.h"
#include "model/model_runner.h"
#include "nlohmann/json.hpp"

namespace q3vl::launcher {
namespace {

namespace fs = std::filesystem;

absl::StatusOr<std::vector<model::GridThw>> ReadGrids(const std::string& path) {
  Q3VL_ASSIGN_OR_RETURN(Tensor t, ReadNpy(path));
  if (t.dtype() != DType::kI64 || t.rank() != 2 || t.dim(1) != 3) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected int64 [n, 3] grids, got ", t.DebugString()));
  }
  std::vector<model::GridThw> grids;
  for (int64_t i = 0; i < t.dim(0); ++i) {
    const int64_t* g = t.data<int64_t>() + 3 * i;
    grids.push_back({g[0], g[1], g[2]});
  }
  return grids;
}

absl::StatusOr<model::VisionInput> ReadVision(const fs::path& inputs, const char* pixels, const char* grids) {
  model::VisionInput in;
  if (!fs::exists(inputs / pixels)) return in;
  Q3VL_ASSIGN_OR_RETURN(in.pixel_values, ReadNpy((inputs / pixels).string()));
  if (in.pixel_values.dtype() != DType::kF32) {
    return absl::InvalidArgumentError(absl::StrCat((inputs / pixels).string(), ": expected float32"));
  }
  Q3VL_ASSIGN_OR_RETURN(in.grids, ReadGrids((inputs / grids).string()));
  return in;
}

}  // namespace

absl::StatusOr<GoldenCase> ReadGoldenCase(const std::string& case_dir) {
  GoldenCase c;
  c.dir = case_dir;
  const fs::path dir(case_dir);
  std::ifstream in(dir / "case.json");
  if (!in) return absl::NotFoundError(absl::StrCat((dir / "case.json").string(), ": cannot open"));
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json json = nlohmann::json::parse(text.str(), nullptr, false);
  if (json.is_discarded() || !json.is_object() || !json.contains("num_generated") ||
      !json["num_generated"].is_number_integer() || json["num_generated"].get<int64_t>() < 0) {
    return absl::InvalidArgumentError(absl::StrCat((dir / "case.json").string(),
                                                   ": needs a non-negative integer \"num_generated\""));
  }
  c.num_generated = json["num_generated"].get<int64_t>();
  const fs::path inputs = dir / "inputs";
  Q3VL_ASSIGN_OR_RETURN(Tensor ids, ReadNpy((inputs / "input_ids.npy").string()));
  if (ids.dtype() != DType::kI64 || ids.rank() != 1) {
    return absl::InvalidArgumentError(absl::StrCat((inputs / "input_ids.npy").string(),
                                                   ": expected int64 [S], got ", ids.DebugString()));
  }
  c.request.input_ids.assign(ids.data<int64_t>(), ids.data<int64_t>() + ids.numel());
  Q3VL_ASSIGN_OR_RETURN(c.request.images, ReadVision(inputs, "pixel_values.npy", "image_grid_thw.npy"));
  Q3VL_ASSIGN_OR_RETURN(c.request.videos, ReadVision(inputs, "pixel_values_videos.npy", "video_grid_thw.npy"));
  c.request.sampling.max_new_tokens = c.num_generated;
  return c;
}

absl::StatusOr<EvalCaseOutput> RunGoldenCaseOnEngine(cluster::Engine& engine, const model::ModelConfig& config,
                                                     const GoldenCase& golden) {
  const model::GenerationRequest& g = golden.request;
  EvalCaseOutput out;
  Q3VL_ASSIGN_OR_RETURN(out.result.rope, model::GetRopeIndex({.input_ids = &g.input_ids,
      .image_grids = &g.images.grids, .video_grids = &g.videos.grids, .image_token_id = config.image_token_id,
      .video_token_id = config.video_token_id, .spatial_merge_size = config.vision.spatial_merge_size}));
  cluster::EngineRequest r{.id = "case", .ignore_eos = true};  // a case runs num_generated tokens
  r.input = {.input_ids = g.input_ids, .images = g.images, .videos = g.videos, .sampling = g.sampling,
             .keep_prompt_logits = true};
  const auto start = std::chrono::steady_clock::now();
  Q3VL_ASSIGN_OR_RETURN(std::shared_ptr<cluster::RequestStream> stream, engine.Submit(std::move(r)));
  while (engine.Step()) {
  }
  const cluster::RequestOutput result = cluster::Collect(*stream);
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (result.finish == cluster::FinishReason::kError) return result.error;
  const int64_t seq_len = static_cast<int64_t>(g.input_ids.size());
  out.result.prefill_logits = Tensor::Empty(DType::kF32, {seq_len, config.text.vocab_size});
  int64_t row = 0;
  for (const Tensor& part : result.prompt_logits) {
    out.result.prefill_logits.Slice(0, row, row + part.dim(0)).CopyFrom(part);
    row += part.dim(0);
  }
  if (row != seq_len) return absl::InternalError(absl::StrCat("the engine returned ", row, " prompt logit rows of ", seq_len));
  out.result.tokens = result.token_ids;
  out.result.finish_reason = result.finish ? cluster::FinishReasonName(*result.finish) : "";
  return out;
}

absl::StatusOr<EvalCaseOutput> RunGoldenCase(const model::Qwen3VL& model, const GoldenCase& golden,
                                             const model::TraceFn* trace) {
  const int64_t prompt = static_cast<int64_t>(golden.request.input_ids.size());
  const int64_t pages = (prompt + golden.num_generated + 15) / 16 + 1;
  model::ModelRunner runner(model, {.page_size = 16, .num_pages = pages, .kv_dtype = DType::kF32, .trace = trace});
  cluster::Engine engine(runner, {.scheduler = {.max_num_batched_tokens = std::max<int64_t>(prompt, 1),
                                                .max_num_seqs = 1, .page_size = 16, .num_pages = pages,
                                                .max_model_len = model.config().text.max_position_embeddings}});
  return RunGoldenCaseOnEngine(engine, model.config(), golden);
}

absl::StatusOr<EvalCaseOutput> RunGoldenCaseWithGenerator(const model::Qwen3VL& model, const GoldenCase& golden) {
  model::Generator generator(model, {.keep_prefill_logits = true});
  const auto start = std::chrono::steady_clock::now();
  Q3VL_ASSIGN_OR_RETURN(std::vector<model::GenerationResult> results, generator.Generate({golden.request}));
  EvalCaseOutput out;
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  out.result = std::move(results[0]);
  return out;
}

absl::Status WriteEvalCaseOutputs(const std::string& out_dir, const EvalCaseOutput& output, int64_t seq_len) {
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) return absl::PermissionDeniedError(absl::StrCat(out_dir, ": ", ec.message()));
  const fs::path dir(out_dir);
  const model::GenerationResult& r = output.result;
  Q3VL_RETURN_IF_ERROR(WriteNpy((dir / "logits.npy").string(), r.prefill_logits));
  Q3VL_RETURN_IF_ERROR(WriteNpy((dir / "position_ids.npy").string(), Tensor::FromVectorI64(r.rope.positions, {3, seq_len})));
  Q3VL_RETURN_IF_ERROR(WriteNpy((dir / "greedy_tokens.npy").string(),
                                Tensor::FromVectorI64(r.tokens, {static_cast<int64_t>(r.tokens.size())})));
  const nlohmann::json result = {{"rope_delta", r.rope.rope_delta}, {"seq_len", seq_len},
                                 {"num_generated", r.tokens.size()}, {"backend", "cpu"},
                                 {"seconds", output.seconds}};
  std::ofstream out(dir / "result.json");
  out << result.dump(2) << "\n";
  if (!out) return absl::DataLossError(absl::StrCat((dir / "result.json").string(), ": write failed"));
  return absl::OkStatus();
}

}  // namespace q3vl::launcher
