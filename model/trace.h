// Named trace points inside forward passes. A test installs a TraceFn to look at
// intermediates ("vision_block", "layer_hidden", "router_topk", ...); with no hook installed a
// trace point is a null-pointer test. The hook runs synchronously on the calling thread and
// always sees a host tensor (a device value is copied for it).
#ifndef Q3VL_MODEL_TRACE_H_
#define Q3VL_MODEL_TRACE_H_

#include <cstdint>
#include <functional>
#include "absl/strings/string_view.h"

#include "core/backend.h"

namespace q3vl::model {

using TraceFn = std::function<void(absl::string_view point, int64_t index, const Tensor& value)>;

inline void Trace(Backend& backend, const TraceFn* fn, absl::string_view point, int64_t index,
                  const Tensor& value) {
  if (fn != nullptr && *fn) (*fn)(point, index, Download(backend, value));
}

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_TRACE_H_
