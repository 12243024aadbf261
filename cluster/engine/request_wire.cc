#include "cluster/engine/request_wire.h"

namespace q3vl::cluster {
namespace {

using Json = nlohmann::json;

Json VisionMeta(const model::VisionInput& in) {
  Json grids = Json::array();
  for (const model::GridThw& g : in.grids) grids.push_back({g[0], g[1], g[2]});
  return {{"grids", grids},
          {"rows", in.grids.empty() ? 0 : in.pixel_values.dim(0)},
          {"cols", in.grids.empty() ? 0 : in.pixel_values.dim(1)}};
}

model::VisionInput VisionFromMeta(const Json& m) {
  model::VisionInput in;
  for (const Json& g : m["grids"]) in.grids.push_back({g[0].get<int64_t>(), g[1].get<int64_t>(), g[2].get<int64_t>()});
  if (!in.grids.empty()) {
    in.pixel_values = Tensor::Empty(DType::kF32, {m["rows"].get<int64_t>(), m["cols"].get<int64_t>()});
  }
  return in;
}

}  // namespace

nlohmann::json RunnerRequestToJson(const model::RunnerRequest& r) {
  const model::SamplingParams& s = r.sampling;
  return {{"ids", r.input_ids},
          {"sampling", {{"temperature", s.temperature}, {"top_k", s.top_k}, {"top_p", s.top_p}, {"seed", s.seed},
                        {"max_new_tokens", s.max_new_tokens}, {"stop", s.stop_tokens}}},
          {"min_tokens", r.min_tokens}, {"top_logprobs", r.top_logprobs},
          {"prompt_logprobs", r.prompt_logprobs}, {"prompt_logprobs_start", r.prompt_logprobs_start},
          {"keep_prompt_logits", r.keep_prompt_logits},
          {"images", VisionMeta(r.images)}, {"videos", VisionMeta(r.videos)}};
}

model::RunnerRequest RunnerRequestFromJson(const nlohmann::json& m) {
  model::RunnerRequest r;
  r.input_ids = m["ids"].get<std::vector<int64_t>>();
  const Json& s = m["sampling"];
  r.sampling = {.temperature = s["temperature"].get<float>(), .top_k = s["top_k"].get<int64_t>(),
                .top_p = s["top_p"].get<float>(), .seed = s["seed"].get<uint64_t>(),
                .max_new_tokens = s["max_new_tokens"].get<int64_t>(),
                .stop_tokens = s["stop"].get<std::vector<int64_t>>()};
  r.min_tokens = m["min_tokens"].get<int64_t>();
  r.top_logprobs = m["top_logprobs"].get<int>();
  r.prompt_logprobs = m["prompt_logprobs"].get<bool>();
  r.prompt_logprobs_start = m["prompt_logprobs_start"].get<int64_t>();
  r.keep_prompt_logits = m["keep_prompt_logits"].get<bool>();
  r.images = VisionFromMeta(m["images"]);
  r.videos = VisionFromMeta(m["videos"]);
  return r;
}

std::vector<Tensor> PixelTensors(const model::RunnerRequest& request) {
  std::vector<Tensor> out;
  for (const model::VisionInput* in : {&request.images, &request.videos}) {
    if (!in->grids.empty()) out.push_back(in->pixel_values);
  }
  return out;
}

}  // namespace q3vl::cluster
