// Fuzz target: the safetensors header parser on arbitrary file bytes. Beyond "no crash, no
// out-of-bounds read", every accepted header must satisfy the invariants the loader relies on.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "absl/strings/string_view.h"
#include "model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view file(reinterpret_cast<const char*>(data), size);
  auto infos = q3vl::model::ParseSafetensorsHeader(file, size, "fuzz.safetensors");
  if (!infos.ok()) {
    if (infos.status().message().empty()) std::abort();  // errors must say what is wrong
    return 0;
  }
  uint64_t header_end = 0;
  if (size >= 8) std::memcpy(&header_end, data, 8);
  header_end += 8;
  for (const auto& info : *infos) {
    uint64_t count = 1;
    for (int64_t d : info.shape) {
      if (d < 0) std::abort();
      count *= static_cast<uint64_t>(d);
    }
    if (info.begin < header_end || info.begin > info.end || info.end > size) std::abort();
    if (info.end - info.begin != count * q3vl::DTypeSize(info.dtype)) std::abort();
  }
  return 0;
}
