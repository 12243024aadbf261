// Tensor: a shared buffer + dtype + shape + strides (in elements) + byte offset. Copies of a
// Tensor share the buffer (shared ownership); Slice/Reshape/Select return views that never
// copy. A Buffer may own its memory (HostBuffer) or borrow it from an owner kept alive by the
// buffer (e.g. a memory-mapped checkpoint). Tensors are not synchronised: one writer at a time.
#ifndef Q3VL_CORE_TENSOR_H_
#define Q3VL_CORE_TENSOR_H_

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "core/check.h"
#include "core/dtype.h"

namespace q3vl {

enum class Device : uint8_t { kCpu, kCuda };

using Shape = absl::InlinedVector<int64_t, 6>;
std::string ShapeString(const Shape& shape);
int64_t NumElements(const Shape& shape);

// A block of memory on one device.
class Buffer {
 public:
  virtual ~Buffer() = default;
  virtual void* data() = 0;
  virtual size_t size_bytes() const = 0;
  virtual Device device() const = 0;
};

// Host memory, 64-byte aligned, owned. Zero-initialised.
class HostBuffer final : public Buffer {
 public:
  explicit HostBuffer(size_t size_bytes);
  ~HostBuffer() override;
  HostBuffer(const HostBuffer&) = delete;
  HostBuffer& operator=(const HostBuffer&) = delete;
  void* data() override { return data_; }
  size_t size_bytes() const override { return size_bytes_; }
  Device device() const override { return Device::kCpu; }

 private:
  void* data_;
  size_t size_bytes_;
};

// Host memory owned by someone else; `keep_alive` holds the owner (e.g. an mmap).
class BorrowedBuffer final : public Buffer {
 public:
  BorrowedBuffer(void* data, size_t size_bytes, std::shared_ptr<const void> keep_alive)
      : data_(data), size_bytes_(size_bytes), keep_alive_(std::move(keep_alive)) {}
  void* data() override { return data_; }
  size_t size_bytes() const override { return size_bytes_; }
  Device device() const override { return Device::kCpu; }

 private:
  void* data_;
  size_t size_bytes_;
  std::shared_ptr<const void> keep_alive_;
};

class Tensor {
 public:
  Tensor() = default;
  Tensor(std::shared_ptr<Buffer> buffer, DType dtype, Shape shape, size_t offset_bytes = 0);

  // New zero-filled contiguous host tensor.
  static Tensor Empty(DType dtype, Shape shape);
  // Zeros that take no memory until written (anonymous mapping): placeholders that are
  // probably only read, such as the stand-ins for missing weights.
  static Tensor LazyZeros(DType dtype, Shape shape);
  // New contiguous f32 host tensor holding `values` with `shape`.
  static Tensor FromVector(const std::vector<float>& values, Shape shape);
  static Tensor FromVectorI64(const std::vector<int64_t>& values, Shape shape);

  bool defined() const { return buffer_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const { return buffer_ ? buffer_->device() : Device::kCpu; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  // Size of dimension `d`; negative counts from the end.
  int64_t dim(int d) const;
  int64_t numel() const { return NumElements(shape_); }
  size_t size_bytes() const { return numel() * DTypeSize(dtype_); }
  bool is_contiguous() const;
  // The view as `rows` runs of `width` contiguous elements, `row_stride` elements apart, when it
  // is one (size-1 dimensions dropped, dimensions that follow on in memory merged): how a device
  // copies a strided view with one 2-D memcpy. A contiguous tensor is one row.
  struct RowRuns {
    int64_t rows = 0, width = 0, row_stride = 0;
  };
  std::optional<RowRuns> AsRowRuns() const;
  const std::shared_ptr<Buffer>& buffer() const { return buffer_; }

  // The first element's address on the tensor's device: for a backend handing memory to its
  // kernels. Host code reads and writes through data<T>(), which refuses device memory.
  void* raw_data() const;
  template <typename T>
  T* device_data() const {
    Q3VL_CHECK_EQ(sizeof(T), DTypeSize(dtype_)) << "tensor of " << DTypeName(dtype_);
    return static_cast<T*>(raw_data());
  }
  // Host access. A device tensor is a bug here (CHECK): copy it with Backend::Copy (or
  // Download, core/backend.h) first.
  template <typename T>
  T* data() const {
    CheckHost("data()");
    return device_data<T>();
  }

  // Views (no copy). Slice keeps [start, end) of dimension `d`.
  Tensor Slice(int d, int64_t start, int64_t end) const;
  // Removes dimension 0 by picking index `i`.
  Tensor Select(int64_t i) const;
  // Same elements, new shape; REQUIRES: contiguous. One dimension may be -1.
  Tensor Reshape(Shape shape) const;

  // The same view (shape, strides, offset) over `buffer`, which must be at least as large as
  // this tensor's: for a backend that mirrors memory under another device tag.
  Tensor Rebind(std::shared_ptr<Buffer> buffer) const;

  // Host tensors only (CHECK), like data<T>().
  // Deep copy into a new contiguous host tensor.
  Tensor Clone() const;
  // Contiguous f32 copy (widening bf16/f16/fp8); returns *this if already contiguous f32.
  Tensor ToF32() const;
  // Copies `src` (same shape, any strides, same dtype) into this tensor.
  void CopyFrom(const Tensor& src);
  void Fill(float value);

  std::string DebugString() const;

 private:
  void CheckHost(const char* what) const;

  std::shared_ptr<Buffer> buffer_;
  DType dtype_ = DType::kF32;
  Shape shape_;
  Shape strides_;
  size_t offset_bytes_ = 0;
};

// A copy of `src` into `dst` (same shape) as one 2-D copy: `rows` rows of `width` elements,
// `src_pitch` and `dst_pitch` elements apart; nullopt when the views do not allow it (see
// Tensor::AsRowRuns; a contiguous side takes the other side's rows).
struct RowCopy {
  int64_t rows = 0, width = 0, src_pitch = 0, dst_pitch = 0;
};
std::optional<RowCopy> PlanRowCopy(const Tensor& src, const Tensor& dst);

}  // namespace q3vl

#endif  // Q3VL_CORE_TENSOR_H_
