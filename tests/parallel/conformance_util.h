// Helpers for the communicator conformance tests: filling and reading tensors of any dtype by
// element index, and the size grid every collective is tested over.
#ifndef Q3VL_TESTS_PARALLEL_CONFORMANCE_UTIL_H_
#define Q3VL_TESTS_PARALLEL_CONFORMANCE_UTIL_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "core/dtype.h"
#include "core/tensor.h"
#include "gtest/gtest.h"

// ASSERT that a Status is OK, printing it otherwise (inside a void lambda or function).
#define Q3VL_ASSERT_OK(expr)                                 \
  do {                                                       \
    const absl::Status q3vl_st_ = (expr);                    \
    ASSERT_TRUE(q3vl_st_.ok()) << #expr << ": " << q3vl_st_; \
  } while (0)

namespace q3vl::parallel::testing {

// Element counts: empty, one, odd, large.
inline const std::vector<int64_t>& TestSizes() {
  static const std::vector<int64_t> sizes = {0, 1, 7, 1 << 20};
  return sizes;
}

inline void SetElement(Tensor& t, int64_t i, double v) {
  switch (t.dtype()) {
    case DType::kF32:
      t.data<float>()[i] = static_cast<float>(v);
      break;
    case DType::kBF16:
      t.data<uint16_t>()[i] = F32ToBF16(static_cast<float>(v));
      break;
    case DType::kI64:
      t.data<int64_t>()[i] = static_cast<int64_t>(v);
      break;
    case DType::kI32:
      t.data<int32_t>()[i] = static_cast<int32_t>(v);
      break;
    default:
      t.data<uint8_t>()[i] = static_cast<uint8_t>(v);
      break;
  }
}

inline double GetElement(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::kF32:
      return t.data<float>()[i];
    case DType::kBF16:
      return BF16ToF32(t.data<uint16_t>()[i]);
    case DType::kI64:
      return static_cast<double>(t.data<int64_t>()[i]);
    case DType::kI32:
      return t.data<int32_t>()[i];
    default:
      return t.data<uint8_t>()[i];
  }
}

// A new host tensor with element i = f(i).
inline Tensor Filled(DType dtype, Shape shape, const std::function<double(int64_t)>& f) {
  Tensor t = Tensor::Empty(dtype, std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) SetElement(t, i, f(i));
  return t;
}

// Index of the first element where t differs from f (within tol), or -1.
inline int64_t FirstMismatch(const Tensor& t, const std::function<double(int64_t)>& f,
                             double tol = 0.0) {
  for (int64_t i = 0; i < t.numel(); ++i) {
    const double got = GetElement(t, i), want = f(i);
    if (!(got - want <= tol && want - got <= tol)) return i;
  }
  return -1;
}

}  // namespace q3vl::parallel::testing

#endif  // Q3VL_TESTS_PARALLEL_CONFORMANCE_UTIL_H_
