#include "model/weight_loader.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace q3vl::model {

Tensor WeightLoader::Get(const std::string& name, const Shape& shape,
                         const std::vector<SliceRange>& ranges) {
  return Load(name, shape, ranges, /*keep_bf16=*/false, /*on_host=*/false);
}

Tensor WeightLoader::GetMatrix(const std::string& name, const Shape& shape,
                               const std::vector<SliceRange>& ranges) {
  return Load(name, shape, ranges, /*keep_bf16=*/true, /*on_host=*/false);
}

Tensor WeightLoader::GetOnHost(const std::string& name, const Shape& shape, const std::vector<SliceRange>& ranges) {
  return Load(name, shape, ranges, /*keep_bf16=*/false, /*on_host=*/true);
}

Tensor WeightLoader::GetMatrixOnHost(const std::string& name, const Shape& shape,
                                     const std::vector<SliceRange>& ranges) {
  return Load(name, shape, ranges, /*keep_bf16=*/true, /*on_host=*/true);
}

Tensor WeightLoader::Load(const std::string& name, const Shape& shape, const std::vector<SliceRange>& ranges,
                          bool keep_bf16, bool on_host) {
  if (declared_.insert(name).second) declarations_.emplace_back(name, shape);
  Shape local = shape;
  for (const SliceRange& r : ranges) local[r.dim] = r.end - r.start;
  const TensorInfo* info = checkpoint_.Find(name);
  if (info == nullptr) {
    missing_.push_back(name);
    return Placeholder(keep_bf16 ? missing_matrix_dtype_ : DType::kF32, local, on_host);
  }
  if (info->shape != shape) {
    mismatched_.push_back(absl::StrCat(name, " is ", ShapeString(info->shape), ", expected ",
                                       ShapeString(shape)));
    return Placeholder(DType::kF32, local, on_host);
  }
  absl::StatusOr<Tensor> host = keep_bf16 ? checkpoint_.ReadKeepBf16(name, ranges) : checkpoint_.ReadF32(name, ranges);
  if (!host.ok()) {
    mismatched_.push_back(absl::StrCat(name, ": ", host.status().message()));
    return Placeholder(DType::kF32, local, on_host);
  }
  checkpoint_.ReleasePages(*info);  // copied: the file's pages need not stay resident
  return on_host ? *host : Upload(backend_, *host);
}

Tensor WeightLoader::Placeholder(DType dtype, const Shape& shape, bool on_host) {
  // Declaring a model of any size must not allocate it: zeros that cost nothing until written.
  if (declare_only_ && (on_host || backend_.device() == Device::kCpu)) return Tensor::LazyZeros(dtype, shape);
  if (on_host && backend_.device() != Device::kCpu) return Tensor::Empty(dtype, shape);
  return backend_.Allocate(dtype, shape);  // (a benchmark's backend fills these with random weights)
}

Tensor WeightLoader::GetView(const std::string& name, const Shape& shape, const std::vector<SliceRange>& ranges) {
  const TensorInfo* info = checkpoint_.Find(name);
  if (info == nullptr || info->shape != shape || (info->dtype != DType::kBF16 && info->dtype != DType::kF32)) {
    return GetMatrixOnHost(name, shape, ranges);  // records the problem, or converts
  }
  Tensor view = checkpoint_.View(*info);
  for (const SliceRange& r : ranges) {
    if (r.dim < 0 || r.dim >= view.rank() || r.start < 0 || r.start > r.end || r.end > view.dim(r.dim)) {
      return GetMatrixOnHost(name, shape, ranges);  // records the bad slice
    }
    view = view.Slice(r.dim, r.start, r.end);
  }
  if (declared_.insert(name).second) declarations_.emplace_back(name, shape);
  checkpoint_.NoteRead(view.size_bytes());
  viewed_.push_back(info);
  return view;
}

Tensor WeightLoader::Place(const Tensor& host) {
  Tensor placed = Upload(backend_, host);
  for (const TensorInfo* info : viewed_) checkpoint_.ReleasePages(*info);
  viewed_.clear();
  return placed;
}

Tensor WeightLoader::GetStored(const std::string& name, const Shape& shape) {
  const TensorInfo* info = checkpoint_.Find(name);
  if (info == nullptr || info->shape != shape || backend_.device() != Device::kCpu) {
    return GetMatrix(name, shape);  // records the problem (or copies to the device, bf16 kept)
  }
  declared_.insert(name);
  return checkpoint_.View(*info);
}

absl::Status WeightLoader::Finish() const {
  std::vector<std::string> unexpected;
  for (const std::string& name : checkpoint_.Names()) {
    if (!declared_.count(name)) unexpected.push_back(name);
  }
  if (missing_.empty() && mismatched_.empty() && unexpected.empty()) return absl::OkStatus();
  std::string message = "checkpoint does not match the model config:";
  auto list = [&](const char* what, const std::vector<std::string>& names) {
    if (names.empty()) return;
    constexpr size_t kShown = 20;
    std::vector<std::string> shown(names.begin(), names.begin() + std::min(names.size(), kShown));
    absl::StrAppend(&message, "\n  ", names.size(), " ", what, ": ", absl::StrJoin(shown, ", "),
                    names.size() > kShown ? ", ..." : "");
  };
  list("missing", missing_);
  list("with the wrong shape", mismatched_);
  list("unexpected", unexpected);
  if (!missing_.empty()) return absl::NotFoundError(message);
  return absl::InvalidArgumentError(message);
}

}  // namespace q3vl::model
