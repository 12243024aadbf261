#include "core/npy.h"

#include <filesystem>

#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace q3vl {
namespace {

TEST(NpyTest, RoundTrip) {
  const std::string path = ::q3vl::testing::ScratchDir() + "/rt.npy";
  const Tensor t = Tensor::FromVectorI64({1, -2, 3, 4, 5, 6}, {2, 3});
  ASSERT_TRUE(WriteNpy(path, t).ok());
  auto back = ReadNpy(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->shape(), t.shape());
  EXPECT_EQ(back->data<int64_t>()[1], -2);
}

TEST(NpyTest, RejectsMalformedFiles) {
  EXPECT_FALSE(ParseNpy("hello", "x").ok());
  const std::string header("\x93NUMPY\x01\x00", 8);
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }";
  std::string file = header + std::string(1, static_cast<char>(dict.size())) + std::string(1, '\0') + dict;
  auto truncated = ParseNpy(file + std::string(8, '\0'), "trunc.npy");  // needs 16 bytes
  ASSERT_FALSE(truncated.ok());
  EXPECT_NE(std::string(truncated.status().message()).find("trunc.npy"), std::string::npos);
  EXPECT_TRUE(ParseNpy(file + std::string(16, '\0'), "ok.npy").ok());
  std::string bad = "{'descr': '<c8', 'fortran_order': False, 'shape': (4,), }";
  EXPECT_FALSE(ParseNpy(header + std::string(1, static_cast<char>(bad.size())) + '\0' + bad, "c.npy").ok());
  std::string huge = header + std::string(1, '\xff') + '\xff' + "{";
  EXPECT_FALSE(ParseNpy(huge, "huge.npy").ok());
  EXPECT_FALSE(ReadNpy("/nonexistent/file.npy").ok());
}

}  // namespace
}  // namespace q3vl
