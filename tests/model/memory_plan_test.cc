// The memory plan: KV bytes per token against hand arithmetic for the 235B (sharded and
// replicated KV heads, pipeline stages, fp8 scales), a single rank's weights against the
// tensors of a real checkpoint, the pool and concurrency figures, the 256K video verdict, the
// JSON keys `q3vl plan --json` promises, and the errors.
#include "model/memory_plan.h"

#include <cctype>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "core/cpu/cpu_backend.h"
#include "gtest/gtest.h"
#include "model/config.h"
#include "model/demo_model.h"
#include "model/qwen3_vl.h"
#include "model/safetensors.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace q3vl::model {
namespace {

constexpr int64_t kGiB = int64_t{1} << 30;

ModelConfig Config235B() {
  auto config = ModelConfig::FromFile(testing::SourcePath("benchmarks/configs/qwen3-vl-235b-a22b.json"));
  Q3VL_CHECK(config.ok()) << config.status();
  return *config;
}

MemoryPlan Plan(const ModelConfig& config, const std::string& mesh, MemoryPlanOptions o) {
  o.mesh = *parallel::ParallelConfig::FromString(mesh);
  auto plan = PlanMemory(config, o);
  Q3VL_CHECK(plan.ok()) << plan.status();
  return *plan;
}

TEST(MemoryPlanTest, KvBytesPerTokenMatchHandArithmeticFor235B) {
  const ModelConfig c = Config235B();
  ASSERT_EQ(c.text.num_layers, 94);
  const MemoryPlanOptions o{.kv_pool_bytes = 64 * kGiB};  // a CPU budget: any mesh fits
  // bf16: 94 layers x (k, v) x 4 KV heads x 128 x 2 bytes = 188 KiB per token on one rank.
  EXPECT_EQ(Plan(c, "", o).kv_bytes_per_token_per_rank, 94 * 2 * 4 * 128 * 2);
  EXPECT_EQ(94 * 2 * 4 * 128 * 2, 188 * 1024);
  // tp=4 splits the 4 KV heads; tp=8 replicates them (each rank still holds one head).
  EXPECT_EQ(Plan(c, "tp=4", o).kv_bytes_per_token_per_rank, 94 * 2 * 1 * 128 * 2);
  EXPECT_EQ(Plan(c, "tp=8", o).kv_bytes_per_token_per_rank, 94 * 2 * 1 * 128 * 2);
  // Data-parallel attention (ep > tp): each group keeps whole heads for its own sequences.
  EXPECT_EQ(Plan(c, "tp=2,ep=8", o).kv_bytes_per_token_per_rank, 94 * 2 * 2 * 128 * 2);
  EXPECT_EQ(Plan(c, "tp=2,ep=8", o).attention_groups, 4);
  // pp=2: 47 layers a stage.
  EXPECT_EQ(Plan(c, "pp=2,tp=4", o).kv_bytes_per_token_per_rank, 47 * 2 * 1 * 128 * 2);
  // f32 doubles bf16; fp8 halves it and adds an f32 scale per (page, layer, head) for k and v.
  MemoryPlanOptions f32 = o, fp8 = o;
  f32.kv_dtype = DType::kF32;
  fp8.kv_dtype = DType::kF8E4M3;
  EXPECT_EQ(Plan(c, "tp=4", f32).kv_bytes_per_token_per_rank, 94 * 2 * 128 * 4);
  EXPECT_EQ(Plan(c, "tp=4", fp8).kv_bytes_per_token_per_rank, 94 * 2 * 128 + (2 * 94 * 4 + 15) / 16);
}

// One rank holds every tensor of the checkpoint: GEMM weights as stored (bf16), norms, biases,
// the router and the whole vision tower widened to f32 (as the loader does).
TEST(MemoryPlanTest, OneRanksWeightsAreTheCheckpointsTensors) {
  const std::string dir = testing::ScratchDir() + "/memory_plan_model";
  std::filesystem::remove_all(dir);
  const ModelConfig config = DemoConfig();
  ASSERT_TRUE(WriteRandomCheckpoint(config, {.dir = dir}).ok());
  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  int64_t expected = 0;
  for (const std::string& name : (*checkpoint)->Names()) {
    const TensorInfo* info = (*checkpoint)->Find(name);
    int64_t elems = 1;
    for (int64_t d : info->shape) elems *= d;
    // The vision tower's GEMM matrices stay bf16 like the decoder's; its other tensors are f32.
    const bool vision_matrix = absl::StartsWith(name, "model.visual.") &&
                               (absl::EndsWith(name, "attn.qkv.weight") || absl::EndsWith(name, "attn.proj.weight") ||
                                absl::EndsWith(name, "linear_fc1.weight") || absl::EndsWith(name, "linear_fc2.weight"));
    const bool f32 = (absl::StartsWith(name, "model.visual.") && !vision_matrix) ||
                     absl::EndsWith(name, "norm.weight") || absl::EndsWith(name, "mlp.gate.weight");
    expected += elems * (f32 ? 4 : 2);
  }
  const MemoryPlan plan = Plan(config, "", {.kv_pool_bytes = kGiB});
  ASSERT_EQ(plan.ranks.size(), 1u);
  EXPECT_EQ(plan.weights_bytes_per_rank, expected);
  // Two tp ranks each hold half of the attention and expert weights, plus what is replicated.
  const MemoryPlan tp2 = Plan(config, "tp=2", {.kv_pool_bytes = kGiB});
  EXPECT_LT(tp2.weights_bytes_per_rank, expected);
  EXPECT_GT(2 * tp2.weights_bytes_per_rank, expected);
}

// Resident kilobytes of this process's mappings of `path` (/proc/self/smaps).
int64_t MappedRssKb(const std::string& path) {
  std::ifstream smaps("/proc/self/smaps");
  int64_t kb = 0;
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    const bool header = !line.empty() && std::isxdigit(static_cast<unsigned char>(line[0])) &&
                        line.find(' ') != std::string::npos && line.find('-') < line.find(' ');
    if (header) inside = absl::EndsWith(line, path);
    if (inside && absl::StartsWith(line, "Rss:")) kb += std::stoll(line.substr(4));
  }
  return kb;
}

// Loading copies the weights out of the mapped file and releases its pages: the file does not
// stay resident beside the copies (a rank's memory is its weights, not twice them).
TEST(MemoryPlanTest, LoadingReleasesTheMappedFile) {
  const std::string dir = testing::ScratchDir() + "/release_model";
  std::filesystem::remove_all(dir);
  ASSERT_TRUE(WriteRandomCheckpoint(DemoConfig(), {.dir = dir}).ok());
  const std::string file = dir + "/model.safetensors";
  const int64_t file_kb = static_cast<int64_t>(std::filesystem::file_size(file)) / 1024;
  CpuBackend backend;
  auto model = Qwen3VL::Load(dir, backend);
  ASSERT_TRUE(model.ok()) << model.status();
  const int64_t rss_kb = MappedRssKb(file);
  EXPECT_LT(rss_kb, file_kb / 10) << rss_kb << " KiB of the " << file_kb << " KiB file resident after loading";
}

TEST(MemoryPlanTest, PoolConcurrencyAndTheVideoVerdict) {
  const ModelConfig c = Config235B();
  // H100 (80 GiB), bf16 weights over tp=8: about 58 GiB of weights a rank; a 256K video's KV
  // (and its 16 GiB of f32 features) do not fit beside them, on an H200 (140 GiB) they do.
  const MemoryPlan h100 = Plan(c, "tp=8", {.device_memory_bytes = 80 * kGiB});
  EXPECT_GT(h100.weights_bytes_per_rank, 55 * kGiB);
  EXPECT_LT(h100.weights_bytes_per_rank, 62 * kGiB);
  EXPECT_EQ(h100.video_feature_bytes, int64_t{262144} * 4096 * 4 * 4);
  EXPECT_FALSE(h100.fits_256k_video);
  EXPECT_TRUE(absl::StrContains(h100.video_shortfall, "exceeds")) << h100.video_shortfall;
  const MemoryPlan h200 = Plan(c, "tp=8", {.device_memory_bytes = 140 * kGiB});
  EXPECT_TRUE(h200.fits_256k_video) << h200.video_shortfall;
  // The pool: what is left over the bytes of a token, in whole pages; concurrency follows it.
  const RankMemory& r = h200.ranks.at(0);
  EXPECT_EQ(r.kv_pool_bytes, static_cast<int64_t>(140 * kGiB * 0.9) - r.weights_bytes - r.workspace_bytes -
                                 r.vision_feature_bytes);
  EXPECT_EQ(h200.kv_pool_tokens, r.kv_pool_bytes / r.kv_bytes_per_token / 16 * 16);
  EXPECT_EQ(h200.max_concurrent_sequences.at(32768), std::min<int64_t>(256, h200.kv_pool_tokens / 32768));
  EXPECT_EQ(h200.max_concurrent_sequences.at(262144), h200.kv_pool_tokens / 262144);
  // fp8 weights free about half of the weights for KV.
  const MemoryPlan fp8 = Plan(c, "tp=8", {.weight_dtype = DType::kF8E4M3, .device_memory_bytes = 80 * kGiB});
  EXPECT_LT(fp8.weights_bytes_per_rank, h100.weights_bytes_per_rank * 6 / 10);
  EXPECT_TRUE(fp8.fits_256k_video) << fp8.video_shortfall;
  // CPU: a fixed pool per rank.
  const MemoryPlan cpu = Plan(c, "tp=8", {.kv_pool_bytes = 4 * kGiB});
  EXPECT_EQ(cpu.kv_pool_tokens, 4 * kGiB / (94 * 2 * 128 * 2) / 16 * 16);
}

TEST(MemoryPlanTest, JsonHasTheKeysPlanPromises) {
  const MemoryPlan plan = Plan(Config235B(), "tp=4,ep=8", {.device_memory_bytes = 140 * kGiB});
  const nlohmann::json j = nlohmann::json::parse(plan.ToJson());
  for (const char* key : {"weights_bytes_per_rank", "workspace_bytes_per_rank", "kv_bytes_per_token_per_rank",
                          "kv_pool_tokens", "max_concurrent_sequences", "fits_256k_video"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  for (const char* length : {"32768", "131072", "262144"}) {
    EXPECT_TRUE(j["max_concurrent_sequences"].contains(length)) << length;
  }
  EXPECT_EQ(j["kv_pool_tokens"].get<int64_t>(), plan.kv_pool_tokens);
  EXPECT_TRUE(absl::StrContains(plan.ToTable(), "concurrent sequences of  262144 tokens"));
}

TEST(MemoryPlanTest, ErrorsNameTheNumbers) {
  const ModelConfig c = Config235B();
  MemoryPlanOptions o{.mesh = *parallel::ParallelConfig::FromString("tp=2"), .device_memory_bytes = 80 * kGiB};
  const absl::Status small = PlanMemory(c, o).status();  // 235B in bf16 over two GPUs
  EXPECT_EQ(small.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(small.message(), "needs")) << small;
  EXPECT_TRUE(absl::StrContains(small.message(), "72.0 GiB")) << small;
  o.mesh = *parallel::ParallelConfig::FromString("tp=3");
  EXPECT_EQ(PlanMemory(c, o).status().code(), absl::StatusCode::kInvalidArgument);  // 64 heads over 3
  o.mesh = {};
  o.device_memory_bytes = 0;
  EXPECT_EQ(PlanMemory(c, o).status().code(), absl::StatusCode::kInvalidArgument);  // no memory given
}

TEST(MemoryPlanTest, ParsesAndFormatsSizes) {
  EXPECT_EQ(*ParseBytes("80GiB"), 80 * kGiB);
  EXPECT_EQ(*ParseBytes("141GB"), int64_t{141000000000});
  EXPECT_EQ(*ParseBytes("512MiB"), int64_t{512} << 20);
  EXPECT_EQ(*ParseBytes("4096"), 4096);
  EXPECT_EQ(*ParseBytes("1.5Gi"), 3 * (kGiB / 2));
  for (const char* bad : {"", "GiB", "80XB", "-1GiB", "1e30"}) EXPECT_FALSE(ParseBytes(bad).ok()) << bad;
  EXPECT_EQ(FormatBytes(12), "12 B");
  EXPECT_EQ(FormatBytes(188 * 1024), "188.0 KiB");
  EXPECT_EQ(FormatBytes(3 * (kGiB / 2)), "1.5 GiB");
}

}  // namespace
}  // namespace q3vl::model
