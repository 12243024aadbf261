// SHA-256 (OpenSSL's libcrypto) for content identities: caches that reuse work across requests
// key their entries by the digest of what they were computed from, so that only equal content
// can hit (a weaker hash would let a crafted input read another request's entry).
#ifndef Q3VL_CORE_SHA256_H_
#define Q3VL_CORE_SHA256_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace q3vl {

struct Digest256 {
  std::array<uint8_t, 32> bytes{};

  bool operator==(const Digest256& other) const { return bytes == other.bytes; }
  std::string Hex() const;
  template <typename H>
  friend H AbslHashValue(H h, const Digest256& d) {
    return H::combine_contiguous(std::move(h), d.bytes.data(), d.bytes.size());
  }
};

// Incremental: Update any number of times, then Final once. Not thread-safe.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  Sha256& Update(const void* data, size_t size);
  Digest256 Final();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

}  // namespace q3vl

#endif  // Q3VL_CORE_SHA256_H_
