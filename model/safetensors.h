// safetensors checkpoints: single files and sharded directories (model.safetensors.index.json).
// Files are memory-mapped; the header is fully validated (length, JSON, dtype, shape against
// the byte range, offsets inside the file, no overlap) before any tensor is handed out.
// Reading a slice touches only the bytes of that slice, so a rank can load its shard of a
// 470 GB checkpoint without reading the rest. Thread-safe after Open.
#ifndef Q3VL_MODEL_SAFETENSORS_H_
#define Q3VL_MODEL_SAFETENSORS_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <functional>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"

namespace q3vl::model {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  uint64_t begin = 0;  // byte offset from the start of the file
  uint64_t end = 0;
  int file = 0;        // index into Checkpoint::files()
};

// Parses and validates a safetensors header. `file_prefix` holds at least the first
// 8 + header_length bytes of a file of `file_size` bytes; `name` appears in errors.
absl::StatusOr<std::vector<TensorInfo>> ParseSafetensorsHeader(absl::string_view file_prefix,
                                                               uint64_t file_size,
                                                               absl::string_view name);

// A half-open range [start, end) along one dimension.
struct SliceRange {
  int dim = 0;
  int64_t start = 0;
  int64_t end = 0;
};

class Checkpoint {
 public:
  // Opens `path`: a directory (with model.safetensors.index.json or one model.safetensors)
  // or a single .safetensors file.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& path);
  // A checkpoint with no tensors (to enumerate a model's declarations).
  static std::unique_ptr<Checkpoint> Empty() { return std::unique_ptr<Checkpoint>(new Checkpoint()); }
  ~Checkpoint();

  const TensorInfo* Find(absl::string_view name) const;
  std::vector<std::string> Names() const;
  const std::vector<std::string>& files() const { return paths_; }

  // A tensor viewing the mapped bytes as stored (no copy).
  Tensor View(const TensorInfo& info) const;
  // A contiguous f32 copy of `name`, restricted to `ranges` (at most one per dimension).
  // Only the bytes inside the slice are read.
  absl::StatusOr<Tensor> ReadF32(absl::string_view name, const std::vector<SliceRange>& ranges = {}) const;
  // Like ReadF32, but a bf16 tensor stays bf16 (a contiguous copy of the slice): GEMM weights,
  // which the backends read as stored and widen per tile.
  absl::StatusOr<Tensor> ReadKeepBf16(absl::string_view name, const std::vector<SliceRange>& ranges = {}) const;

  // Bytes of tensor data copied out of the files so far (for sharded-loading reports).
  uint64_t bytes_read() const { return bytes_read_.load(); }
  // Adds bytes read through a View (a caller copying out of the mapping itself).
  void NoteRead(uint64_t bytes) const { bytes_read_ += bytes; }
  // Drops this process's mapped pages of `info` (after its bytes were copied): they stop
  // counting in the resident set. The mapping stays valid: a later read faults them in again
  // from the file, so a tensor still used in place is only slower, never wrong.
  void ReleasePages(const TensorInfo& info) const;

 private:
  absl::StatusOr<Tensor> Read(absl::string_view name, const std::vector<SliceRange>& ranges, bool keep_bf16) const;

  struct Mapping;
  Checkpoint() = default;
  absl::Status AddFile(const std::string& path);

  std::vector<std::string> paths_;
  std::vector<std::shared_ptr<Mapping>> mappings_;
  std::map<std::string, TensorInfo, std::less<>> tensors_;
  mutable std::atomic<uint64_t> bytes_read_{0};
};

// A tensor to be written: its name, dtype and shape.
struct TensorSpec {
  std::string name;
  DType dtype;
  Shape shape;
};
// Writes the tensors of `specs` in order, each produced by fill(i, t) into a contiguous host
// tensor `t` of spec i's dtype and shape: one tensor in memory at a time.
absl::Status WriteSafetensorsStreaming(const std::string& path, const std::vector<TensorSpec>& specs,
                                       const std::function<void(size_t, Tensor&)>& fill);
// Writes `tensors` (name -> tensor, any dtype) as one safetensors file.
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors);

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_SAFETENSORS_H_
