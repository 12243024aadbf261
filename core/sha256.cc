#include "core/sha256.h"

#include <openssl/evp.h>

#include "core/check.h"

namespace q3vl {

struct Sha256::Ctx {
  EVP_MD_CTX* md = nullptr;
  ~Ctx() { EVP_MD_CTX_free(md); }
};

std::string Digest256::Hex() const {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (uint8_t b : bytes) {
    out.push_back(kHex[b >> 4]);
    out.push_back(kHex[b & 15]);
  }
  return out;
}

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) {
  ctx_->md = EVP_MD_CTX_new();
  Q3VL_CHECK(ctx_->md != nullptr && EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr) == 1) << "SHA-256 init failed";
}

Sha256::~Sha256() = default;

Sha256& Sha256::Update(const void* data, size_t size) {
  Q3VL_CHECK(EVP_DigestUpdate(ctx_->md, data, size) == 1) << "SHA-256 update failed";
  return *this;
}

Digest256 Sha256::Final() {
  Digest256 d;
  unsigned int size = 0;
  Q3VL_CHECK(EVP_DigestFinal_ex(ctx_->md, d.bytes.data(), &size) == 1 && size == d.bytes.size()) << "SHA-256 final failed";
  return d;
}

}  // namespace q3vl
