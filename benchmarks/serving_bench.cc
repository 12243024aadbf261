// serving_bench: the engine (continuous batching, chunked prefill) against static batching
// (batches of B run to completion, the previous behaviour) on the same generated workload,
// side by side in one run, as one JSON object on stdout.
// Workload: N requests with prompt lengths uniform in [prompt-min, prompt-max], output lengths
// uniform in [output-min, output-max] (greedy, EOS ignored, so both runs generate the same
// tokens), a share of image prompts (one image of 8x8 to 16x16 merged tokens) and of video
// prompts (2 frame groups of 8x8), random pixels. Phases: saturation (every request at t = 0),
// then Poisson arrivals at given fractions of the engine's saturated request rate. Reports
// output tokens/s, requests/s, TTFT and inter-token latency p50/p99 per system and phase.
// --busy-neighbour runs a spinning process beside the benchmark (a shared CPU, as a server has).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <random>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "cluster/engine/engine.h"
#include "core/backend.h"
#include "model/model_runner.h"
#include "nlohmann/json.hpp"

namespace q3vl {
namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

struct Options {
  std::string model;
  int requests = 48;
  int64_t prompt_min = 32, prompt_max = 512, output_min = 16, output_max = 96;
  double image_share = 0.25, video_share = 0.1;
  int static_batch = 8;
  int64_t max_num_batched_tokens = 512;
  std::vector<double> load_fractions = {0.7};
  uint64_t seed = 1;
  bool busy_neighbour = false;
  bool run_engine = true, run_static = true;  // --only engine|static (profiling one side)
  // --kv-pool-fraction F: also run the saturation workload on the engine with a KV pool of F
  // of what every request at once needs (preemption); 0: skip.
  double kv_pool_fraction = 0.25;
  bool prefix_phase = true;  // --no-prefix skips the cold/warm long-image TTFT phase
};

// One request of the workload and when it arrives (seconds after the phase starts).
struct Item {
  model::RunnerRequest request;
  double arrival = 0.0;
};

std::vector<Item> MakeWorkload(const Options& o, const model::ModelConfig& cfg) {
  std::mt19937_64 rng(o.seed);
  auto uniform = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  const int64_t m = cfg.vision.spatial_merge_size, patch = cfg.vision.patch_size, tp = cfg.vision.temporal_patch_size;
  const int64_t cols = cfg.vision.in_channels * tp * patch * patch;
  std::vector<Item> items(o.requests);
  for (Item& item : items) {
    model::RunnerRequest& r = item.request;
    const double kind = std::uniform_real_distribution<double>(0.0, 1.0)(rng);
    const int64_t prompt = uniform(o.prompt_min, o.prompt_max);
    model::VisionInput* media = nullptr;
    model::GridThw grid{};
    int64_t pad = 0;
    if (kind < o.image_share) {
      const int64_t side = uniform(8, 16);
      grid = {1, side * m, side * m};
      media = &r.images;
      pad = cfg.image_token_id;
    } else if (kind < o.image_share + o.video_share) {
      grid = {2, 8 * m, 8 * m};
      media = &r.videos;
      pad = cfg.video_token_id;
    }
    for (int64_t i = 0; i < prompt; ++i) r.input_ids.push_back(uniform(0, 150000));
    if (media != nullptr) {
      const int64_t patches = grid[0] * grid[1] * grid[2];
      const int64_t at = uniform(0, prompt - 1);
      std::vector<int64_t> span = {cfg.vision_start_token_id};
      span.insert(span.end(), patches / (m * m), pad);
      span.push_back(cfg.vision_end_token_id);
      r.input_ids.insert(r.input_ids.begin() + at, span.begin(), span.end());
      std::vector<float> pixels(patches * cols);
      std::normal_distribution<float> normal(0.0f, 1.0f);
      for (float& p : pixels) p = normal(rng);
      media->pixel_values = Tensor::FromVector(pixels, {patches, cols});
      media->grids = {grid};
    }
    r.sampling.max_new_tokens = uniform(o.output_min, o.output_max);
  }
  return items;
}

// Per request: arrival, the time of each generated token (seconds since the phase start).
struct Trace {
  double arrival = 0.0;
  std::vector<double> tokens;
};

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5))];
}

Json Summarise(const std::vector<Trace>& traces) {
  std::vector<double> ttft, itl;
  double end = 0.0, first_arrival = 1e30;
  int64_t tokens = 0;
  for (const Trace& t : traces) {
    if (t.tokens.empty()) continue;
    first_arrival = std::min(first_arrival, t.arrival);
    ttft.push_back(t.tokens.front() - t.arrival);
    for (size_t i = 1; i < t.tokens.size(); ++i) itl.push_back(t.tokens[i] - t.tokens[i - 1]);
    end = std::max(end, t.tokens.back());
    tokens += static_cast<int64_t>(t.tokens.size());
  }
  const double wall = end - std::min(first_arrival, end);
  return {{"wall_s", wall}, {"output_tokens", tokens},
          {"output_tokens_per_s", tokens / std::max(wall, 1e-9)},
          {"requests_per_s", traces.size() / std::max(wall, 1e-9)},
          {"ttft_p50_s", Percentile(ttft, 0.5)}, {"ttft_p99_s", Percentile(ttft, 0.99)},
          {"itl_p50_s", Percentile(itl, 0.5)}, {"itl_p99_s", Percentile(itl, 0.99)}};
}

double Since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void SleepUntil(Clock::time_point t0, double seconds) {
  std::this_thread::sleep_until(t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds)));
}

// A started engine over its own runner, with KV room for every request of the phase at once.
struct BenchEngine {
  // `pages` > 0: a pool of that many pages instead.
  BenchEngine(const model::Qwen3VL& model, const std::vector<Item>& items, int64_t budget, int64_t max_seqs,
              int64_t pages = 0)
      : runner(model, {.page_size = kPageSize, .num_pages = pages > 0 ? pages : Pages(items),
                       .encoder_cache_tokens = kEncoderCacheTokens}),
        engine(runner, {.scheduler = {.max_num_batched_tokens = budget, .max_num_seqs = max_seqs,
                                      .page_size = kPageSize, .num_pages = pages > 0 ? pages : Pages(items),
                                      .max_model_len = model.config().text.max_position_embeddings}}) {
    engine.Start();
  }
  ~BenchEngine() { engine.Shutdown(); }
  static int64_t Pages(const std::vector<Item>& items) {
    int64_t pages = 0;
    for (const Item& item : items) {
      const model::RunnerRequest& r = item.request;
      pages += (static_cast<int64_t>(r.input_ids.size()) + r.sampling.max_new_tokens + kPageSize - 1) / kPageSize;
    }
    return pages;
  }
  // Submits item `i` (id = its index).
  std::shared_ptr<cluster::RequestStream> Submit(const std::vector<Item>& items, size_t i) {
    cluster::EngineRequest r{.id = std::to_string(i), .input = items[i].request, .ignore_eos = true};
    auto stream = engine.Submit(std::move(r));
    Q3VL_CHECK(stream.ok()) << stream.status();
    return *std::move(stream);
  }
  // Records when each token of `stream` arrives.
  static void Read(cluster::RequestStream& stream, Clock::time_point t0, Trace& trace) {
    while (auto out = stream.Next()) {
      const double now = Since(t0);
      for (size_t k = 0; k < out->token_ids.size(); ++k) trace.tokens.push_back(now);
    }
  }
  static constexpr int64_t kPageSize = 16;
  static constexpr int64_t kEncoderCacheTokens = 16384;  // the engine options' default
  model::ModelRunner runner;
  cluster::Engine engine;
};

// The engine: one client thread per request submits at its arrival and reads its stream.
std::vector<Trace> RunEngine(const model::Qwen3VL& model, const Options& o, const std::vector<Item>& items,
                             int64_t pages = 0, int64_t* preemptions = nullptr) {
  BenchEngine bench(model, items, o.max_num_batched_tokens, /*max_seqs=*/256, pages);
  std::vector<Trace> traces(items.size());
  std::vector<std::thread> clients;
  const Clock::time_point t0 = Clock::now();
  for (size_t i = 0; i < items.size(); ++i) {
    clients.emplace_back([&, i] {
      SleepUntil(t0, items[i].arrival);
      traces[i].arrival = Since(t0);
      BenchEngine::Read(*bench.Submit(items, i), t0, traces[i]);
    });
  }
  for (std::thread& t : clients) t.join();
  if (preemptions != nullptr) *preemptions = bench.engine.metrics().Snapshot().num_preemptions_total;
  return traces;
}

// The prefix cache: a long image prompt (system text, a 32x32-token image, a question) on a
// fresh engine (cold), then a prompt sharing its system text and image with another question
// (warm: at least 75% of it cached). Three rounds with different images; medians.
Json PrefixPhase(const model::Qwen3VL& model, const Options& o) {
  const model::ModelConfig& cfg = model.config();
  const int64_t m = cfg.vision.spatial_merge_size, cols = cfg.vision.patch_dim(), side = 32;
  std::mt19937_64 rng(o.seed + 11);
  auto text = [&](int64_t n) {
    std::vector<int64_t> t(n);
    for (int64_t& x : t) x = std::uniform_int_distribution<int64_t>(0, 150000)(rng);
    return t;
  };
  std::vector<double> cold, warm;
  int64_t prompt = 0, shared = 0;
  for (int round = 0; round < 3; ++round) {
    model::RunnerRequest base;
    base.input_ids = text(96);
    base.input_ids.push_back(cfg.vision_start_token_id);
    base.input_ids.insert(base.input_ids.end(), side * side, cfg.image_token_id);
    base.input_ids.push_back(cfg.vision_end_token_id);
    const int64_t patches = side * m * side * m;
    std::vector<float> pixels(patches * cols);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& p : pixels) p = normal(rng);
    base.images = {.pixel_values = Tensor::FromVector(pixels, {patches, cols}), .grids = {{1, side * m, side * m}}};
    base.sampling.max_new_tokens = 4;
    shared = static_cast<int64_t>(base.input_ids.size());
    std::vector<Item> items(2, Item{.request = base});
    for (Item& item : items) {
      const std::vector<int64_t> question = text(64);
      item.request.input_ids.insert(item.request.input_ids.end(), question.begin(), question.end());
    }
    prompt = static_cast<int64_t>(items[0].request.input_ids.size());
    BenchEngine bench(model, items, o.max_num_batched_tokens, /*max_seqs=*/4);
    for (size_t i = 0; i < items.size(); ++i) {
      Trace trace;
      const Clock::time_point t0 = Clock::now();
      BenchEngine::Read(*bench.Submit(items, i), t0, trace);
      (i == 0 ? cold : warm).push_back(trace.tokens.at(0));
    }
  }
  const double c = Percentile(cold, 0.5), w = Percentile(warm, 0.5);
  return {{"phase", "prefix_cache"}, {"prompt_tokens", prompt}, {"shared_prefix_tokens", shared},
          {"shared_fraction", static_cast<double>(shared) / prompt}, {"cold_ttft_s", c}, {"warm_ttft_s", w},
          {"warm_over_cold", w / std::max(c, 1e-9)}, {"rounds", 3}};
}

// Static batching (the whole-batch behaviour the engine replaced): whenever idle, the next (up
// to) B arrived requests run to completion together, prefilled in one step (the budget covers
// every prompt), before any other request is admitted. Run on the same engine and model
// runner, so the comparison measures the scheduling and nothing else.
std::vector<Trace> RunStatic(const model::Qwen3VL& model, const Options& o, const std::vector<Item>& items) {
  int64_t all_prompts = 0;
  for (const Item& item : items) all_prompts += static_cast<int64_t>(item.request.input_ids.size());
  BenchEngine bench(model, items, all_prompts, /*max_seqs=*/o.static_batch);
  std::vector<Trace> traces(items.size());
  const Clock::time_point t0 = Clock::now();
  for (size_t next = 0; next < items.size();) {
    SleepUntil(t0, items[next].arrival);
    const double now = Since(t0);
    // The whole batch is submitted before any of it is read, so it starts in one step.
    std::vector<std::pair<size_t, std::shared_ptr<cluster::RequestStream>>> batch;
    while (next < items.size() && static_cast<int>(batch.size()) < o.static_batch && items[next].arrival <= now) {
      traces[next].arrival = items[next].arrival;
      batch.emplace_back(next, bench.Submit(items, next));
      ++next;
    }
    std::vector<std::thread> readers;
    for (auto& [i, stream] : batch) {
      readers.emplace_back([&, i = i, stream = stream] { BenchEngine::Read(*stream, t0, traces[i]); });
    }
    for (std::thread& t : readers) t.join();
  }
  return traces;
}

std::vector<Item> WithPoissonArrivals(std::vector<Item> items, double rate, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(rate);
  double t = 0.0;
  for (Item& item : items) item.arrival = (t += gap(rng));
  return items;
}

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

int Main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "serving_bench: " << a << " needs a value" << std::endl;
        std::exit(2);
      }
      return argv[++i];
    };
    auto number = [&](int64_t& out) {
      if (!absl::SimpleAtoi(value(), &out)) std::exit(2);
    };
    if (a == "--model") o.model = value();
    else if (a == "--requests") o.requests = std::stoi(value());
    else if (a == "--prompt-min") number(o.prompt_min);
    else if (a == "--prompt-max") number(o.prompt_max);
    else if (a == "--output-min") number(o.output_min);
    else if (a == "--output-max") number(o.output_max);
    else if (a == "--image-share") o.image_share = std::stod(value());
    else if (a == "--video-share") o.video_share = std::stod(value());
    else if (a == "--static-batch") o.static_batch = std::stoi(value());
    else if (a == "--max-num-batched-tokens") number(o.max_num_batched_tokens);
    else if (a == "--seed") o.seed = std::stoull(value());
    else if (a == "--busy-neighbour") o.busy_neighbour = true;
    else if (a == "--kv-pool-fraction") o.kv_pool_fraction = std::stod(value());
    else if (a == "--no-prefix") o.prefix_phase = false;
    else if (a == "--only") {
      const std::string which = value();
      if (which != "engine" && which != "static") {
        std::cerr << "serving_bench: --only takes engine or static, not " << which << std::endl;
        return 2;
      }
      o.run_engine = which == "engine";
      o.run_static = which == "static";
    }
    else if (a == "--loads") {
      o.load_fractions.clear();
      for (absl::string_view f : absl::StrSplit(value(), ',', absl::SkipEmpty())) o.load_fractions.push_back(std::stod(std::string(f)));
    } else {
      std::cerr << "usage: serving_bench --model DIR [--requests N] [--prompt-min/--prompt-max N] "
                   "[--output-min/--output-max N] [--image-share F] [--video-share F] [--static-batch B] "
                   "[--max-num-batched-tokens N] [--loads F,F] [--seed S] [--busy-neighbour] [--only engine|static] "
                   "[--kv-pool-fraction F (0: no preemption phase)] [--no-prefix]" << std::endl;
      return a == "--help" ? 0 : 2;
    }
  }
  if (o.model.empty()) {
    std::cerr << "serving_bench: --model DIR is required (e.g. the demo checkpoint from q3vl make-model)" << std::endl;
    return 2;
  }
  std::unique_ptr<Backend> backend = *CreateBackend(BackendKind::kCpu);
  auto model = model::Qwen3VL::Load(o.model, *backend);
  if (!model.ok()) {
    std::cerr << "serving_bench: " << model.status().message() << std::endl;
    return 1;
  }
  pid_t neighbour = 0;
  if (o.busy_neighbour) {
    neighbour = fork();
    if (neighbour == 0) {
      volatile uint64_t x = 0;
      const auto end = Clock::now() + std::chrono::minutes(30);  // bounded even if orphaned
      while (Clock::now() < end) x = x + 1;
      _exit(0);
    }
  }
  const std::vector<Item> workload = MakeWorkload(o, (*model)->config());
  int64_t prompt_tokens = 0, output_tokens = 0, images = 0, videos = 0;
  for (const Item& item : workload) {
    prompt_tokens += static_cast<int64_t>(item.request.input_ids.size());
    output_tokens += item.request.sampling.max_new_tokens;
    images += item.request.images.grids.size();
    videos += item.request.videos.grids.size();
  }
  std::cerr << "serving_bench: " << o.requests << " requests, saturation phase" << std::endl;
  Json phases = Json::array();
  // A side left out by --only reports null and no ratio.
  auto engine_run = [&](const std::vector<Item>& items) {
    return o.run_engine ? Summarise(RunEngine(**model, o, items)) : Json();
  };
  auto static_run = [&](const std::vector<Item>& items) {
    return o.run_static ? Summarise(RunStatic(**model, o, items)) : Json();
  };
  const Json engine_sat = engine_run(workload);
  const Json static_sat = static_run(workload);
  Json saturation = {{"phase", "saturation"}, {"engine", engine_sat}, {"static", static_sat}};
  if (o.run_engine && o.run_static) {
    saturation["throughput_ratio"] =
        engine_sat["output_tokens_per_s"].get<double>() / static_sat["output_tokens_per_s"].get<double>();
  }
  phases.push_back(saturation);
  // Poisson rates are fractions of the saturated request rate (the engine's, else static's).
  const double saturated_rate = (o.run_engine ? engine_sat : static_sat)["requests_per_s"].get<double>();
  for (double f : o.load_fractions) {
    std::cerr << "serving_bench: Poisson arrivals at " << f << " of saturation" << std::endl;
    const std::vector<Item> timed = WithPoissonArrivals(workload, f * saturated_rate, o.seed + 7);
    const Json e = engine_run(timed);
    const Json s = static_run(timed);
    Json phase = {{"phase", "poisson"}, {"load_fraction", f}, {"rate_requests_per_s", f * saturated_rate},
                  {"engine", e}, {"static", s}};
    if (o.run_engine && o.run_static) {
      phase["ttft_p99_ratio"] = e["ttft_p99_s"].get<double>() / std::max(s["ttft_p99_s"].get<double>(), 1e-9);
    }
    phases.push_back(phase);
  }
  if (o.run_engine && o.kv_pool_fraction > 0) {
    // The saturation workload on a pool of a fraction of what it needs at once (at least the
    // largest request): requests wait for pages and running ones get preempted.
    int64_t largest = 0;
    for (const Item& item : workload) largest = std::max(largest, BenchEngine::Pages({item}));
    const int64_t pages = std::max(largest, static_cast<int64_t>(BenchEngine::Pages(workload) * o.kv_pool_fraction));
    std::cerr << "serving_bench: saturation on a KV pool of " << pages << " pages (preemption)" << std::endl;
    int64_t preemptions = 0;
    Json small = Summarise(RunEngine(**model, o, workload, pages, &preemptions));
    phases.push_back({{"phase", "preemption"}, {"kv_pool_pages", pages}, {"kv_pool_fraction", o.kv_pool_fraction},
                      {"engine", small}, {"preemptions", preemptions},
                      {"throughput_vs_full_pool", small["output_tokens_per_s"].get<double>() /
                                                      engine_sat["output_tokens_per_s"].get<double>()}});
  }
  if (o.run_engine && o.prefix_phase) {
    std::cerr << "serving_bench: prefix cache, cold vs warm long image prompt" << std::endl;
    phases.push_back(PrefixPhase(**model, o));
  }
  if (neighbour > 0) {
    kill(neighbour, SIGKILL);
    waitpid(neighbour, nullptr, 0);
  }
  const Json out = {
      {"machine", {{"cpu", CpuModel()}, {"cores", std::thread::hardware_concurrency()}}},
      {"model", o.model},
      {"busy_neighbour", o.busy_neighbour},
      {"workload", {{"requests", o.requests}, {"prompt_tokens_uniform", {o.prompt_min, o.prompt_max}},
                    {"output_tokens_uniform", {o.output_min, o.output_max}}, {"image_share", o.image_share},
                    {"video_share", o.video_share}, {"images", images}, {"videos", videos},
                    {"total_prompt_tokens", prompt_tokens}, {"total_output_tokens", output_tokens}}},
      {"engine_options", {{"max_num_batched_tokens", o.max_num_batched_tokens}}},
      {"static_batch", o.static_batch},
      {"phases", phases}};
  std::cout << out.dump(2) << std::endl;
  return 0;
}

}  // namespace
}  // namespace q3vl

int main(int argc, char** argv) { return q3vl::Main(argc, argv); }
