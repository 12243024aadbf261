// Helpers for the image/video input-pipeline tests: locating golden input files (the repo copy
// under tests/data/inputs, else ../shared/golden/inputs; a missing file fails the test),
// reading case.json, and hashing / comparing uint8 and f32 arrays.
#ifndef Q3VL_TESTS_MODEL_INPUT_TEST_UTIL_H_
#define Q3VL_TESTS_MODEL_INPUT_TEST_UTIL_H_

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/npy.h"
#include "gtest/gtest.h"
#include "model/media/image.h"
#include "nlohmann/json.hpp"
#include "tests/model/sha256.h"
#include "tests/test_util.h"

namespace q3vl::testing {

// `rel` under golden/inputs: the copy in tests/data/inputs when present, else the shared tree.
inline std::string InputPath(const std::string& rel) {
  const std::string repo = TestDataDir() + "/inputs/" + rel;
  if (std::filesystem::exists(repo)) return repo;
  return std::string(Q3VL_SHARED_DIR) + "/golden/inputs/" + rel;
}

inline std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing test input " << path;
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline nlohmann::json ReadCaseJson(const std::string& rel) {
  const std::string text = ReadBytes(InputPath(rel));
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  EXPECT_TRUE(j.is_object()) << "cannot parse " << rel;
  return j.is_object() ? j : nlohmann::json::object();
}

// Reads a stored golden array; a missing or unreadable file fails the test.
inline Tensor ReadInputNpy(const std::string& rel) {
  auto t = ReadNpy(InputPath(rel));
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : Tensor();
}

// [3, H, W] planar bytes of an interleaved image (the layout of resized.npy and its sha256).
inline std::vector<uint8_t> ToChw(const model::Image& image) {
  const int64_t n = image.num_pixels();
  std::vector<uint8_t> chw(n * 3);
  for (int64_t i = 0; i < n; ++i) {
    for (int c = 0; c < 3; ++c) chw[c * n + i] = image.rgb[i * 3 + c];
  }
  return chw;
}

template <typename T>
std::string Sha256Of(const std::vector<T>& v) {
  return Sha256Hex(v.data(), v.size() * sizeof(T));
}
inline std::string Sha256Of(const Tensor& t) { return Sha256Hex(t.raw_data(), t.size_bytes()); }

struct Diff {
  double max = 0;
  int64_t count = 0;  // elements that differ
  double mean = 0;
};

template <typename A, typename B>
Diff CompareArrays(const A* a, const B* b, int64_t n) {
  Diff d;
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double e = std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    if (e > 0) ++d.count;
    d.max = std::max(d.max, e);
    sum += e;
  }
  d.mean = n > 0 ? sum / n : 0;
  return d;
}

// Values of the 64x64 window of `image` at (y0, x0) that differ from `crop` ([3, 64, 64] planar).
inline int64_t CropMismatches(const model::Image& image, int64_t y0, int64_t x0, const uint8_t* crop) {
  int64_t mismatches = 0;
  for (int c = 0; c < 3; ++c) {
    for (int64_t y = 0; y < 64; ++y) {
      for (int64_t x = 0; x < 64; ++x)
        mismatches += image.row(y0 + y)[(x0 + x) * 3 + c] != crop[(c * 64 + y) * 64 + x];
    }
  }
  return mismatches;
}

inline std::vector<int64_t> JsonInts(const nlohmann::json& j) {
  std::vector<int64_t> v;
  if (j.is_array()) {
    for (const auto& e : j) v.push_back(e.get<int64_t>());
  }
  return v;
}

}  // namespace q3vl::testing

#endif  // Q3VL_TESTS_MODEL_INPUT_TEST_UTIL_H_
