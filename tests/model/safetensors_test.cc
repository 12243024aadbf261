// safetensors parsing, corrupt-file errors, sliced reads, and loading equivalence across
// sharded / single-file and fused / per-expert layouts.
#include "model/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>

#include "core/backend.h"
#include "gtest/gtest.h"
#include "core/cpu/cpu_backend.h"
#include "model/decoder.h"
#include "model/demo_model.h"
#include "model/generator.h"
#include "tests/test_util.h"

namespace q3vl::model {
namespace {

std::string Header(const std::string& json, uint64_t data_bytes, int64_t len_override = -1) {
  std::string out(8, '\0');
  const uint64_t len = len_override >= 0 ? static_cast<uint64_t>(len_override) : json.size();
  std::memcpy(out.data(), &len, 8);
  return out + json + std::string(data_bytes, '\0');
}

std::string ParseError(const std::string& file) {
  auto r = ParseSafetensorsHeader(file, file.size(), "f.safetensors");
  return r.ok() ? "" : std::string(r.status().message());
}

TEST(SafetensorsTest, ValidatesHeaders) {
  const std::string ok = R"({"a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}})";
  EXPECT_EQ(ParseError(Header(ok, 16)), "");
  EXPECT_NE(ParseError("short").find("8-byte"), std::string::npos);
  EXPECT_NE(ParseError(Header(ok, 16, 1 << 20)).find("past the end"), std::string::npos);
  EXPECT_NE(ParseError(Header("{bad", 0)).find("JSON"), std::string::npos);
  EXPECT_NE(ParseError(Header(ok, 8)).find("outside"), std::string::npos);
  const std::string mismatch = R"({"a": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 16]}})";
  EXPECT_NE(ParseError(Header(mismatch, 16)).find("needs 8 bytes"), std::string::npos);
  const std::string overlap = R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                  "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})";
  EXPECT_NE(ParseError(Header(overlap, 12)).find("overlap"), std::string::npos);
  const std::string bad_dtype = R"({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}})";
  EXPECT_NE(ParseError(Header(bad_dtype, 8)).find("dtype"), std::string::npos);
  const std::string negative = R"({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})";
  EXPECT_NE(ParseError(Header(negative, 8)).find("non-integer"), std::string::npos);
}

TEST(SafetensorsTest, ReadsSlicesOnly) {
  const std::string path = ::q3vl::testing::ScratchDir() + "/slice.safetensors";
  Tensor t = testing::RandomTensor({4, 6}, 1);
  ASSERT_TRUE(WriteSafetensors(path, {{"w", t}}).ok());
  auto ckpt = Checkpoint::Open(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto slice = (*ckpt)->ReadF32("w", {{.dim = 0, .start = 1, .end = 3}, {.dim = 1, .start = 2, .end = 5}});
  ASSERT_TRUE(slice.ok()) << slice.status();
  EXPECT_EQ(slice->shape(), Shape({2, 3}));
  EXPECT_EQ(slice->data<float>()[0], t.data<float>()[1 * 6 + 2]);
  EXPECT_EQ((*ckpt)->bytes_read(), 2u * 3u * 4u);
  EXPECT_FALSE((*ckpt)->ReadF32("w", {{.dim = 1, .start = 4, .end = 9}}).ok());
}

TEST(SafetensorsTest, TruncatedFileIsAnErrorNotACrash) {
  const std::string path = ::q3vl::testing::ScratchDir() + "/trunc.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {{"w", testing::RandomTensor({64, 64}, 2)}}).ok());
  std::filesystem::resize_file(path, std::filesystem::file_size(path) - 100);
  auto ckpt = Checkpoint::Open(path);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(std::string(ckpt.status().message()).find("trunc.safetensors"), std::string::npos);
}

std::vector<int64_t> Greedy(const std::string& dir) {
  auto backend = *CreateBackend(BackendKind::kCpu);
  auto model = Qwen3VL::Load(dir, *backend);
  Q3VL_CHECK_OK(model);
  Generator gen(**model, {});
  GenerationRequest r;
  r.input_ids = {1, 5, 9, 200, 33};
  r.sampling.max_new_tokens = 6;
  auto out = gen.Generate({r});
  Q3VL_CHECK_OK(out);
  return (*out)[0].tokens;
}

// Greedy tokens of a small random model written with the given layout.
std::vector<int64_t> RunLayout(const std::string& dir, const MakeModelOptions& options) {
  ModelConfig config = DemoConfig();
  config.text.vocab_size = 512;
  config.text.num_layers = 3;
  config.text.hidden_size = config.vision.out_hidden_size = 64;
  config.text.moe_intermediate_size = 32;  // D == 2I: layout must come from names, not shapes
  MakeModelOptions o = options;
  o.dir = dir;
  Q3VL_CHECK_OK(WriteRandomCheckpoint(config, o));
  return Greedy(dir);
}

// Rewrites the fused experts of `src` as per-expert nn.Linear tensors into `dst`.
void WritePerExpertCopy(const std::string& src, const std::string& dst) {
  auto ckpt = Checkpoint::Open(src);
  Q3VL_CHECK_OK(ckpt);
  std::vector<std::pair<std::string, Tensor>> out;
  for (const std::string& name : (*ckpt)->Names()) {
    Tensor t = *(*ckpt)->ReadF32(name);
    const size_t pos = name.find("experts.");
    if (pos == std::string::npos) {
      out.emplace_back(name, t);
      continue;
    }
    const std::string prefix = name.substr(0, pos + 8);
    const bool gate_up = name.find("gate_up_proj") != std::string::npos;
    const int64_t e_count = t.dim(0), rows = t.dim(1), cols = t.dim(2);
    for (int64_t e = 0; e < e_count; ++e) {
      const float* w = t.data<float>() + e * rows * cols;
      auto transposed = [&](int64_t c0, int64_t c1) {  // [rows, c0:c1]^T
        Tensor r = Tensor::Empty(DType::kF32, {c1 - c0, rows});
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t j = c0; j < c1; ++j) r.data<float>()[(j - c0) * rows + i] = w[i * cols + j];
        return r;
      };
      const std::string b = prefix + std::to_string(e) + ".";
      if (gate_up) {
        out.emplace_back(b + "gate_proj.weight", transposed(0, cols / 2));
        out.emplace_back(b + "up_proj.weight", transposed(cols / 2, cols));
      } else {
        out.emplace_back(b + "down_proj.weight", transposed(0, cols));
      }
    }
  }
  std::filesystem::create_directories(dst);
  std::filesystem::copy_file(src + "/config.json", dst + "/config.json", std::filesystem::copy_options::overwrite_existing);
  Q3VL_CHECK_OK(WriteSafetensors(dst + "/model.safetensors", out));
}

TEST(SafetensorsTest, ShardedAndPerExpertLayoutsLoadTheSameModel) {
  const std::string base = ::q3vl::testing::ScratchDir();
  const auto single = RunLayout(base + "/single", {.seed = 3});
  EXPECT_EQ(RunLayout(base + "/sharded", {.seed = 3, .num_shards = 3}), single);
  WritePerExpertCopy(base + "/single", base + "/per_expert");
  EXPECT_EQ(Greedy(base + "/per_expert"), single);
}

TEST(SafetensorsTest, MissingAndUnexpectedTensorsAreListedTogether) {
  const std::string src = testing::TestDataDir() + "/golden/01_text_only/model";
  auto ckpt = Checkpoint::Open(src);
  ASSERT_TRUE(ckpt.ok());
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const std::string& name : (*ckpt)->Names()) {
    if (name.find("layers.1.self_attn.q_proj") != std::string::npos || name.find("merger.norm.bias") != std::string::npos) continue;
    tensors.emplace_back(name, (*ckpt)->View(*(*ckpt)->Find(name)));
  }
  tensors.emplace_back("model.extra.weight", testing::RandomTensor({2}, 1));
  const std::string dir = ::q3vl::testing::ScratchDir() + "/broken";
  std::filesystem::create_directories(dir);
  std::filesystem::copy_file(src + "/config.json", dir + "/config.json", std::filesystem::copy_options::overwrite_existing);
  ASSERT_TRUE(WriteSafetensors(dir + "/model.safetensors", tensors).ok());
  auto backend = *CreateBackend(BackendKind::kCpu);
  auto model = Qwen3VL::Load(dir, *backend);
  ASSERT_FALSE(model.ok());
  const std::string msg(model.status().message());
  EXPECT_NE(msg.find("2 missing"), std::string::npos) << msg;
  EXPECT_NE(msg.find("layers.1.self_attn.q_proj.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.visual.merger.norm.bias"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.extra.weight"), std::string::npos) << msg;
}

}  // namespace
}  // namespace q3vl::model

namespace q3vl::model {
namespace {

// Resident set size of this process in bytes (Linux).
int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t pages = 0, resident = 0;
  statm >> pages >> resident;
  return resident * 4096;
}

// make-model declares a model without allocating it: the 235B (about 470 GB in bf16) declares
// every tensor while the process grows by far less than one layer's experts (2.4 GB).
TEST(WeightLoaderTest, DeclaringTheLargestModelAllocatesNothing) {
  const ModelConfig config = *PublishedConfig("235b");
  CpuBackend backend;
  auto empty = Checkpoint::Empty();
  const int64_t before = ResidentBytes();
  WeightLoader loader = WeightLoader::DeclareOnly(*empty, backend);
  { TextDecoder decoder(config.text, loader, config.tie_word_embeddings); }
  const int64_t grown = ResidentBytes() - before;
  EXPECT_LT(grown, int64_t{512} << 20) << grown << " bytes";
  int64_t elements = 0;
  for (const auto& [name, shape] : loader.declarations()) elements += NumElements(shape);
  EXPECT_GT(elements * 2, int64_t{400} << 30) << "the decoder declares its 235B weights";
  EXPECT_NE(std::find_if(loader.declarations().begin(), loader.declarations().end(),
                         [](const auto& d) { return d.first == "model.language_model.layers.93.mlp.experts.down_proj"; }),
            loader.declarations().end());
}

}  // namespace
}  // namespace q3vl::model
