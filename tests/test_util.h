// Shared helpers for q3vl tests: locating test data and comparing tensors.
#ifndef Q3VL_TESTS_TEST_UTIL_H_
#define Q3VL_TESTS_TEST_UTIL_H_

#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/tensor.h"

namespace q3vl::testing {

// What a shell command printed on stdout and how it exited (-1: killed by a signal).
struct CommandResult {
  int code;
  std::string output;
};

// Runs `command` with /bin/sh; add " 2>&1" to capture stderr too.
inline CommandResult RunCommand(const std::string& command) {
  FILE* pipe = popen(command.c_str(), "r");
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, pipe)) out.append(buf, n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// A directory private to this test process, removed when it exits. ctest runs the cases of
// one binary as separate processes side by side, so fixed names under /tmp would race.
inline const std::string& ScratchDir() {
  static const std::string dir = [] {
    static const pid_t owner = getpid();
    const std::filesystem::path d =
        std::filesystem::path(::testing::TempDir()) / ("q3vl_test_" + std::to_string(owner));
    std::filesystem::create_directories(d);
    // Forked children (death tests) exit too; only the owner removes the directory.
    std::atexit([] {
      if (getpid() != owner) return;
      std::error_code ec;
      std::filesystem::remove_all(std::filesystem::path(::testing::TempDir()) /
                                      ("q3vl_test_" + std::to_string(owner)),
                                  ec);
    });
    return d.string();
  }();
  return dir;
}

// tests/data in the source tree.
inline std::string TestDataDir() { return Q3VL_TEST_DATA_DIR; }

// A path in the source tree, e.g. SourcePath("model/assets/qwen3/tokenizer.json").
inline std::string SourcePath(const std::string& relative) {
  return (std::filesystem::path(TestDataDir()).parent_path().parent_path() / relative).string();
}

// ../shared/golden/inputs/e2e: chat requests with their reference ids and tokens.
inline std::string E2eDir() { return std::string(Q3VL_SHARED_DIR) + "/golden/inputs/e2e"; }

// The e2e reference model folder, assembled from links in this process's scratch directory:
// the shipped folder's tokenizer.json is a relative link flattened into a text file, and the
// repo ships the same file (same SHA-256).
inline const std::string& E2eModelDir() {
  static const std::string dir = [] {
    namespace fs = std::filesystem;
    const fs::path d = fs::path(ScratchDir()) / "e2e_model";
    fs::create_directories(d);
    for (const auto& entry : fs::directory_iterator(E2eDir() + "/model")) {
      if (entry.path().filename() != "tokenizer.json") fs::create_symlink(entry.path(), d / entry.path().filename());
    }
    fs::create_symlink(SourcePath("model/assets/qwen3/tokenizer.json"), d / "tokenizer.json");
    return d.string();
  }();
  return dir;
}

// Every model case of ../shared/golden/cases (public set), in order, but 09_yarn_long_rope:
// its reference ran a mis-loaded model (tests/model/golden_test.cc checks it on that model).
inline const std::vector<std::string>& GoldenCaseNames() {
  static const std::vector<std::string> names = {
      "01_text_only", "02_image_single", "03_two_images", "04_video", "05_video_all_frames_ties",
      "06_image_and_video", "07_realvocab_image", "08_optional_dense_layer"};
  return names;
}

// Directory of golden case `name`: the repo copy, else ../shared/golden/cases (large cases).
// Empty when neither exists.
inline std::string GoldenCaseDir(const std::string& name) {
  const std::string repo = TestDataDir() + "/golden/" + name;
  if (std::filesystem::exists(repo)) return repo;
  const std::string shared = std::string(Q3VL_SHARED_DIR) + "/golden/cases/" + name;
  if (std::filesystem::exists(shared)) return shared;
  return "";
}

// max |a - b| over all elements (both widened to f32); infinity on a shape mismatch, and where
// one side is NaN and the other is not (NaN on both sides, or equal infinities, count as equal).
inline float MaxAbsDiff(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return INFINITY;
  if (a.dtype() == DType::kI64 || b.dtype() == DType::kI64) {
    if (a.dtype() != b.dtype()) return INFINITY;
    const Tensor x = a.Clone(), y = b.Clone();
    float m = 0.0f;
    for (int64_t i = 0; i < x.numel(); ++i) {
      m = std::max(m, static_cast<float>(std::llabs(x.data<int64_t>()[i] - y.data<int64_t>()[i])));
    }
    return m;
  }
  const Tensor x = a.ToF32(), y = b.ToF32();
  float m = 0.0f;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const float u = x.data<float>()[i], v = y.data<float>()[i];
    if (u == v || (std::isnan(u) && std::isnan(v))) continue;
    const float d = std::fabs(u - v);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

inline Tensor RandomTensor(Shape shape, uint32_t seed, float scale = 1.0f) {
  Tensor t = Tensor::Empty(DType::kF32, std::move(shape));
  uint32_t state = seed * 2654435761u + 12345u;
  for (int64_t i = 0; i < t.numel(); ++i) {
    state = state * 1664525u + 1013904223u;
    t.data<float>()[i] = scale * (static_cast<float>(state >> 8) / 8388608.0f - 1.0f);
  }
  return t;
}

}  // namespace q3vl::testing

#endif  // Q3VL_TESTS_TEST_UTIL_H_
