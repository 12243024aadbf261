// Fuzz target: config.json parsing and validation on arbitrary text. An accepted config must
// validate again and describe a model whose derived sizes are positive.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "absl/strings/string_view.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const absl::string_view json(reinterpret_cast<const char*>(data), size);
  auto config = q3vl::model::ModelConfig::FromJson(json, "fuzz/config.json");
  if (!config.ok()) {
    if (config.status().message().empty()) std::abort();
    return 0;
  }
  if (!config->Validate().ok()) std::abort();
  const auto& text = config->text;
  if (text.hidden_size <= 0 || text.num_layers <= 0 || text.vocab_size <= 0) std::abort();
  return 0;
}
