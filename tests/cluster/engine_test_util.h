// Helpers for engine tests on real models: a runner with an engine over it, running requests
// alone or arriving at given steps, and a mixed workload (image + video, text, greedy and
// seeded sampling) built around a golden case's request.
#ifndef Q3VL_TESTS_CLUSTER_ENGINE_TEST_UTIL_H_
#define Q3VL_TESTS_CLUSTER_ENGINE_TEST_UTIL_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cluster/engine/engine.h"
#include "core/check.h"
#include "model/generator.h"
#include "model/model_runner.h"

namespace q3vl::cluster {

// A model runner and an engine over it (f32 KV pages unless told: the fp32 contract).
struct Replica {
  Replica(const model::Qwen3VL& model, int64_t budget, int64_t pages, int64_t max_seqs = 16,
          int64_t encoder_cache_tokens = 0, DType kv_dtype = DType::kF32)
      : runner(model, {.page_size = 16, .num_pages = pages, .kv_dtype = kv_dtype,
                       .encoder_cache_tokens = encoder_cache_tokens}),
        engine(runner, {.scheduler = {.max_num_batched_tokens = budget, .max_num_seqs = max_seqs, .page_size = 16,
                                      .num_pages = pages,
                                      .max_model_len = model.config().text.max_position_embeddings}}) {}
  model::ModelRunner runner;
  Engine engine;
};

inline RequestOutput RunAlone(Engine& engine, EngineRequest request) {
  auto stream = engine.Submit(std::move(request));
  Q3VL_CHECK(stream.ok()) << stream.status();
  for (int i = 0; i < 100000 && engine.Step();) ++i;
  return Collect(**stream);
}

// Host tensors [n_i, V] stacked into one [sum n_i, V].
inline Tensor ConcatHostRows(const std::vector<Tensor>& parts) {
  int64_t rows = 0;
  for (const Tensor& t : parts) rows += t.dim(0);
  Tensor out = Tensor::Empty(DType::kF32, {rows, parts.at(0).dim(1)});
  int64_t at = 0;
  for (const Tensor& t : parts) {
    out.Slice(0, at, at + t.dim(0)).CopyFrom(t);
    at += t.dim(0);
  }
  return out;
}

// Request i is submitted before step arrival[i]; steps until all are done.
inline std::map<std::string, RequestOutput> Staggered(Engine& engine, const std::vector<EngineRequest>& requests,
                                                      const std::vector<int>& arrival) {
  std::map<std::string, std::shared_ptr<RequestStream>> streams;
  for (int step = 0; step < 10000; ++step) {
    for (size_t i = 0; i < requests.size(); ++i) {
      if (arrival[i] == step) {
        auto s = engine.Submit(requests[i]);
        Q3VL_CHECK(s.ok()) << s.status();
        streams[requests[i].id] = *s;
      }
    }
    if (!engine.Step() && streams.size() == requests.size()) break;
  }
  std::map<std::string, RequestOutput> out;
  for (auto& [id, s] : streams) out[id] = Collect(*s);
  return out;
}

// The media request `g` greedy and sampled; text requests of several lengths, greedy and
// sampled with seeds (ids below 290: valid in every golden vocabulary).
inline std::vector<EngineRequest> MixedRequests(const model::GenerationRequest& g) {
  auto media = [&](const std::string& id, model::SamplingParams sampling) {
    EngineRequest r{.id = id, .ignore_eos = true};
    r.input = {.input_ids = g.input_ids, .images = g.images, .videos = g.videos, .sampling = sampling};
    return r;
  };
  auto text = [&](const std::string& id, int64_t length, model::SamplingParams sampling) {
    EngineRequest r{.id = id, .ignore_eos = true};
    for (int64_t i = 0; i < length; ++i) r.input.input_ids.push_back(10 + (i * 37 + length) % 280);
    r.input.sampling = sampling;
    return r;
  };
  return {
      media("media_greedy", {.max_new_tokens = 12}),
      text("text_long", 45, {.max_new_tokens = 9}),
      text("text_sampled", 13, {.temperature = 0.9f, .top_k = 40, .top_p = 0.9f, .seed = 11, .max_new_tokens = 14}),
      media("media_sampled", {.temperature = 1.2f, .top_p = 0.8f, .seed = 3, .max_new_tokens = 10}),
      text("text_short", 3, {.temperature = 0.7f, .seed = 5, .max_new_tokens = 20}),
  };
}

}  // namespace q3vl::cluster

#endif  // Q3VL_TESTS_CLUSTER_ENGINE_TEST_UTIL_H_
