// Declarative weight loading: each module declares every parameter once (checkpoint name,
// logical shape, optional slice for its shard); the loader maps the name to the local f32
// tensor (GEMM weights: bf16 as stored, see GetMatrix). Once a tensor is copied its mapped
// pages are released, so a rank's resident memory is its weights, not weights plus the file
// (the token embedding, used in place, is touched a row at a time). Problems are collected, not returned
// one at a time: Finish() reports every missing tensor, every shape mismatch and every
// checkpoint tensor nobody declared in one error.
// Not thread-safe; one loader per model load.
#ifndef Q3VL_MODEL_WEIGHT_LOADER_H_
#define Q3VL_MODEL_WEIGHT_LOADER_H_

#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/backend.h"
#include "model/safetensors.h"

namespace q3vl::model {

class WeightLoader {
 public:
  // Tensors are widened to f32 (GetMatrix: kept bf16) and placed on `backend`. A missing
  // tensor is recorded and replaced by a zero tensor, f32 or, from GetMatrix,
  // `missing_matrix_dtype` (a benchmark building a model without a checkpoint picks bf16).
  WeightLoader(const Checkpoint& checkpoint, Backend& backend, DType missing_matrix_dtype = DType::kF32)
      : checkpoint_(checkpoint), backend_(backend), missing_matrix_dtype_(missing_matrix_dtype) {}

  // A loader that only collects the declarations (names and shapes) of a model built against
  // it: every tensor is a zero placeholder that takes no memory, and modules skip the work
  // they would do on real weights (declare_only()). For writing checkpoints of any size.
  static WeightLoader DeclareOnly(const Checkpoint& empty, Backend& backend) {
    WeightLoader loader(empty, backend);
    loader.declare_only_ = true;
    return loader;
  }
  bool declare_only() const { return declare_only_; }
  Backend& backend() const { return backend_; }

  bool Has(const std::string& name) const { return checkpoint_.Find(name) != nullptr; }
  // The checkpoint's entry for `name` (dtype, shape), or nullptr.
  const TensorInfo* Find(const std::string& name) const { return checkpoint_.Find(name); }

  // Declares `name` with full logical `shape`; returns the slice `ranges` of it (the whole
  // tensor when empty). On a problem, records it and returns a zero tensor of the sliced shape
  // so that construction can continue and every problem is reported by Finish().
  Tensor Get(const std::string& name, const Shape& shape, const std::vector<SliceRange>& ranges = {});
  // Like Get, but a bf16 tensor stays bf16 (half the memory): for GEMM weights, which every
  // backend reads as stored (the CPU widens per tile, exactly).
  Tensor GetMatrix(const std::string& name, const Shape& shape, const std::vector<SliceRange>& ranges = {});
  // Like Get and GetMatrix, but always a host tensor, whatever the backend: for weights the
  // host works on (a table interpolated per input) or rearranges before Place().
  Tensor GetOnHost(const std::string& name, const Shape& shape, const std::vector<SliceRange>& ranges = {});
  Tensor GetMatrixOnHost(const std::string& name, const Shape& shape, const std::vector<SliceRange>& ranges = {});
  // The slice `ranges` of `name` as a strided host view of the mapped bytes (no copy), counted
  // as read; for a caller that rearranges the weight into its own layout in one pass and then
  // Place()s it. For f32/bf16 tensors: otherwise, and on a problem (recorded), it returns
  // GetMatrixOnHost's result (a contiguous copy or zeros).
  Tensor GetView(const std::string& name, const Shape& shape, const std::vector<SliceRange>& ranges);
  // Like GetMatrix, but on a host backend the stored bytes themselves, mapped (no copy). For
  // tables read a few rows at a time (the token embedding).
  Tensor GetStored(const std::string& name, const Shape& shape);
  // A weight built on the host, in the backend's memory (itself on a host backend). The mapped
  // pages of the views handed out before it are released (the caller has copied them now).
  Tensor Place(const Tensor& host);
  // Marks `name` as known without loading it (a tensor another rank or stage owns).
  void Skip(const std::string& name) { declared_.insert(name); }
  // Skip for every checkpoint tensor whose name starts with `prefix` (another stage's layer).
  void SkipPrefix(const std::string& prefix) {
    for (const std::string& name : checkpoint_.Names()) {
      if (name.compare(0, prefix.size(), prefix) == 0) declared_.insert(name);
    }
  }

  // OK, or InvalidArgument/NotFound listing all missing, mismatched and unexpected tensors.
  absl::Status Finish() const;

  uint64_t bytes_read() const { return checkpoint_.bytes_read(); }
  // Every declared (name, full shape), in declaration order; used to write checkpoints.
  const std::vector<std::pair<std::string, Shape>>& declarations() const { return declarations_; }

 private:
  Tensor Load(const std::string& name, const Shape& shape, const std::vector<SliceRange>& ranges, bool keep_bf16,
              bool on_host);
  // A zero stand-in for a tensor that could not be read (the load fails in Finish()).
  Tensor Placeholder(DType dtype, const Shape& shape, bool on_host);

  const Checkpoint& checkpoint_;
  Backend& backend_;
  const DType missing_matrix_dtype_;
  bool declare_only_ = false;
  std::set<std::string> declared_;
  std::vector<std::pair<std::string, Shape>> declarations_;
  std::vector<std::string> missing_;
  std::vector<std::string> mismatched_;
  std::vector<const TensorInfo*> viewed_;  // GetView's tensors whose pages Place releases
};

}  // namespace q3vl::model

#endif  // Q3VL_MODEL_WEIGHT_LOADER_H_
