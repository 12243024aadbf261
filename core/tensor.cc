#include "core/tensor.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include <sys/mman.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace q3vl {

std::string ShapeString(const Shape& shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

HostBuffer::HostBuffer(size_t size_bytes) : size_bytes_(size_bytes) {
  // Large buffers (weights, long activations) ask for transparent huge pages: one fault per
  // 2 MB instead of per 4 KB, which is most of the cost of a fresh buffer on a VM.
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t align = size_bytes >= 4 * kHuge ? kHuge : 64;
  const size_t rounded = std::max<size_t>((size_bytes + align - 1) / align * align, 64);
  data_ = std::aligned_alloc(align, rounded);
  Q3VL_CHECK(data_ != nullptr) << "out of host memory allocating " << size_bytes << " bytes";
  if (align == kHuge) madvise(data_, rounded, MADV_HUGEPAGE);  // advice only: failure is harmless
  std::memset(data_, 0, rounded);
}

HostBuffer::~HostBuffer() { std::free(data_); }

namespace {
Shape ContiguousStrides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}
}  // namespace

Tensor::Tensor(std::shared_ptr<Buffer> buffer, DType dtype, Shape shape, size_t offset_bytes)
    : buffer_(std::move(buffer)),
      dtype_(dtype),
      shape_(std::move(shape)),
      strides_(ContiguousStrides(shape_)),
      offset_bytes_(offset_bytes) {
  Q3VL_CHECK_LE(offset_bytes_ + size_bytes(), buffer_->size_bytes()) << ShapeString(shape_);
}

Tensor Tensor::Empty(DType dtype, Shape shape) {
  for (int64_t d : shape) Q3VL_CHECK_GE(d, 0) << ShapeString(shape);
  auto buffer = std::make_shared<HostBuffer>(NumElements(shape) * DTypeSize(dtype));
  return Tensor(std::move(buffer), dtype, std::move(shape));
}

Tensor Tensor::LazyZeros(DType dtype, Shape shape) {
  for (int64_t d : shape) Q3VL_CHECK_GE(d, 0) << ShapeString(shape);
  const size_t bytes = std::max<size_t>(NumElements(shape) * DTypeSize(dtype), 1);
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  Q3VL_CHECK(p != MAP_FAILED) << "cannot map " << bytes << " bytes of zeros";
  std::shared_ptr<const void> owner(p, [bytes](const void* q) { munmap(const_cast<void*>(q), bytes); });
  return Tensor(std::make_shared<BorrowedBuffer>(p, bytes, std::move(owner)), dtype, std::move(shape));
}

Tensor Tensor::FromVector(const std::vector<float>& values, Shape shape) {
  Tensor t = Empty(DType::kF32, std::move(shape));
  Q3VL_CHECK_EQ(static_cast<int64_t>(values.size()), t.numel());
  std::memcpy(t.raw_data(), values.data(), values.size() * 4);
  return t;
}

Tensor Tensor::FromVectorI64(const std::vector<int64_t>& values, Shape shape) {
  Tensor t = Empty(DType::kI64, std::move(shape));
  Q3VL_CHECK_EQ(static_cast<int64_t>(values.size()), t.numel());
  std::memcpy(t.raw_data(), values.data(), values.size() * 8);
  return t;
}

int64_t Tensor::dim(int d) const {
  if (d < 0) d += rank();
  Q3VL_CHECK(d >= 0 && d < rank()) << "dim " << d << " of " << ShapeString(shape_);
  return shape_[d];
}

bool Tensor::is_contiguous() const { return strides_ == ContiguousStrides(shape_); }

std::optional<RowCopy> PlanRowCopy(const Tensor& src, const Tensor& dst) {
  if (src.shape() != dst.shape()) return std::nullopt;
  std::optional<Tensor::RowRuns> s = src.AsRowRuns(), d = dst.AsRowRuns();
  if (!s || !d) return std::nullopt;
  // A contiguous side is any split of its elements into rows: take the other side's.
  if (src.is_contiguous()) s = Tensor::RowRuns{.rows = d->rows, .width = d->width, .row_stride = d->width};
  if (dst.is_contiguous()) d = Tensor::RowRuns{.rows = s->rows, .width = s->width, .row_stride = s->width};
  if (s->rows != d->rows || s->width != d->width) return std::nullopt;
  return RowCopy{.rows = s->rows, .width = s->width, .src_pitch = s->row_stride, .dst_pitch = d->row_stride};
}

std::optional<Tensor::RowRuns> Tensor::AsRowRuns() const {
  if (numel() == 0) return RowRuns{.rows = 0, .width = 0, .row_stride = 0};
  // Dimensions of more than one element, outermost first, merging each into the one before it
  // when it follows on in memory (stride[i] == stride[i + 1] * dim[i + 1]).
  std::vector<std::pair<int64_t, int64_t>> dims;  // (size, stride)
  for (int i = 0; i < rank(); ++i) {
    if (shape_[i] == 1) continue;
    if (!dims.empty() && dims.back().second == strides_[i] * shape_[i]) {
      dims.back() = {dims.back().first * shape_[i], strides_[i]};
    } else {
      dims.push_back({shape_[i], strides_[i]});
    }
  }
  if (dims.empty() || dims.back().second != 1) dims.push_back({1, 1});  // rows of one element
  if (dims.size() > 2) return std::nullopt;
  if (dims.size() == 1) return RowRuns{.rows = 1, .width = dims[0].first, .row_stride = dims[0].first};
  return RowRuns{.rows = dims[0].first, .width = dims[1].first, .row_stride = dims[0].second};
}

void* Tensor::raw_data() const {
  Q3VL_CHECK(buffer_ != nullptr) << "undefined tensor";
  return static_cast<char*>(buffer_->data()) + offset_bytes_;
}

void Tensor::CheckHost(const char* what) const {
  Q3VL_CHECK(device() == Device::kCpu) << what << " on device memory: " << DebugString()
                                        << " (copy it to the host with the backend first)";
}

Tensor Tensor::Rebind(std::shared_ptr<Buffer> buffer) const {
  Q3VL_CHECK(buffer != nullptr && buffer_ != nullptr);
  Q3VL_CHECK_GE(buffer->size_bytes(), buffer_->size_bytes()) << DebugString();
  Tensor out = *this;
  out.buffer_ = std::move(buffer);
  return out;
}

Tensor Tensor::Slice(int d, int64_t start, int64_t end) const {
  if (d < 0) d += rank();
  Q3VL_CHECK(d >= 0 && d < rank());
  Q3VL_CHECK(0 <= start && start <= end && end <= shape_[d])
      << "slice [" << start << ", " << end << ") of dim " << d << " of " << ShapeString(shape_);
  Tensor out = *this;
  out.shape_[d] = end - start;
  out.offset_bytes_ += start * strides_[d] * DTypeSize(dtype_);
  return out;
}

Tensor Tensor::Select(int64_t i) const {
  Q3VL_CHECK_GE(rank(), 1);
  Tensor out = Slice(0, i, i + 1);
  out.shape_.erase(out.shape_.begin());
  out.strides_.erase(out.strides_.begin());
  return out;
}

Tensor Tensor::Reshape(Shape shape) const {
  Q3VL_CHECK(is_contiguous()) << "Reshape of a non-contiguous view " << ShapeString(shape_);
  int64_t known = 1;
  int infer = -1;
  for (int i = 0; i < static_cast<int>(shape.size()); ++i) {
    if (shape[i] == -1) {
      Q3VL_CHECK_EQ(infer, -1) << "two -1 dimensions";
      infer = i;
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) shape[infer] = known == 0 ? 0 : numel() / known;
  Q3VL_CHECK_EQ(NumElements(shape), numel()) << ShapeString(shape_) << " -> " << ShapeString(shape);
  Tensor out = *this;
  out.shape_ = std::move(shape);
  out.strides_ = ContiguousStrides(out.shape_);
  return out;
}

namespace {
// Calls fn(dst_offset_elems, src_offset_elems, run) for each contiguous innermost run.
template <typename Fn>
void ForEachRun(const Shape& shape, const Shape& strides, Fn&& fn) {
  const int r = static_cast<int>(shape.size());
  if (r == 0) {
    fn(0, 0, 1);
    return;
  }
  const int64_t total = NumElements(shape);
  if (total == 0) return;
  const int64_t inner = shape[r - 1];
  const bool inner_contiguous = strides[r - 1] == 1;
  Shape index(r, 0);
  for (int64_t done = 0; done < total; done += inner) {
    int64_t src = 0;
    for (int i = 0; i < r - 1; ++i) src += index[i] * strides[i];
    if (inner_contiguous) {
      fn(done, src, inner);
    } else {
      for (int64_t j = 0; j < inner; ++j) fn(done + j, src + j * strides[r - 1], 1);
    }
    for (int i = r - 2; i >= 0; --i) {
      if (++index[i] < shape[i]) break;
      index[i] = 0;
    }
  }
}
}  // namespace

Tensor Tensor::Clone() const {
  Tensor out = Empty(dtype_, shape_);
  out.CopyFrom(*this);
  return out;
}

void Tensor::CopyFrom(const Tensor& src) {
  Q3VL_CHECK(shape_ == src.shape_) << ShapeString(shape_) << " vs " << ShapeString(src.shape_);
  Q3VL_CHECK(dtype_ == src.dtype_);
  Q3VL_CHECK(is_contiguous()) << "CopyFrom into a non-contiguous view";
  CheckHost("CopyFrom");
  src.CheckHost("CopyFrom");
  const size_t es = DTypeSize(dtype_);
  char* dst = static_cast<char*>(raw_data());
  const char* s = static_cast<const char*>(src.raw_data());
  if (src.is_contiguous()) {
    std::memmove(dst, s, size_bytes());
    return;
  }
  ForEachRun(src.shape_, src.strides_, [&](int64_t d, int64_t so, int64_t n) {
    std::memcpy(dst + d * es, s + so * es, n * es);
  });
}

Tensor Tensor::ToF32() const {
  CheckHost("ToF32");
  if (dtype_ == DType::kF32 && is_contiguous()) return *this;
  Tensor out = Empty(DType::kF32, shape_);
  float* dst = out.data<float>();
  const char* s = static_cast<const char*>(raw_data());
  const size_t es = DTypeSize(dtype_);
  if (is_contiguous()) {  // the common case (whole tensors, row and expert ranges): all threads
    const int64_t n = numel();
    constexpr int64_t kChunk = int64_t{1} << 16;
#pragma omp parallel for schedule(static) if (n > 4 * kChunk)
    for (int64_t c = 0; c < (n + kChunk - 1) / kChunk; ++c) {
      ConvertToF32(dtype_, s + c * kChunk * es, dst + c * kChunk, std::min(kChunk, n - c * kChunk));
    }
    return out;
  }
  ForEachRun(shape_, strides_, [&](int64_t d, int64_t so, int64_t n) {
    ConvertToF32(dtype_, s + so * es, dst + d, n);
  });
  return out;
}

void Tensor::Fill(float value) {
  Q3VL_CHECK(dtype_ == DType::kF32 && is_contiguous());
  float* p = data<float>();
  for (int64_t i = 0; i < numel(); ++i) p[i] = value;
}

std::string Tensor::DebugString() const {
  return absl::StrCat("Tensor(", std::string(DTypeName(dtype_)), ShapeString(shape_), ")");
}

}  // namespace q3vl
