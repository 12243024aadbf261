#include "core/sha256.h"

#include <string>

#include "gtest/gtest.h"

namespace q3vl {
namespace {

// FIPS 180-2 test vectors.
TEST(Sha256, KnownVectors) {
  EXPECT_EQ(Sha256().Final().Hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256().Update("abc", 3).Final().Hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  Sha256 split;
  split.Update(two_blocks.data(), 10).Update(two_blocks.data() + 10, two_blocks.size() - 10);
  EXPECT_EQ(split.Final().Hex(), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

}  // namespace
}  // namespace q3vl
