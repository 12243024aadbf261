// Reading and writing NumPy .npy files (format 1.0-3.0, little endian, C order) as Tensors.
// Supported dtypes: <f4, <i8, <i4, |u1, |b1 (and <f8, narrowed to f32 on read). Malformed
// files give InvalidArgument naming the file and the problem; nothing reads out of bounds.
#ifndef Q3VL_CORE_NPY_H_
#define Q3VL_CORE_NPY_H_

#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/statusor.h"
#include "core/tensor.h"

namespace q3vl {

absl::StatusOr<Tensor> ReadNpy(const std::string& path);
// Parses an in-memory .npy image; `name` is used in error messages.
absl::StatusOr<Tensor> ParseNpy(absl::string_view bytes, absl::string_view name);
// Writes f32, i64, i32, u8 or bool tensors.
absl::Status WriteNpy(const std::string& path, const Tensor& tensor);

}  // namespace q3vl

#endif  // Q3VL_CORE_NPY_H_
