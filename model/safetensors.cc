#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "nlohmann/json.hpp"

namespace q3vl::model {
namespace {

using Json = nlohmann::json;
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // as the reference implementation

absl::Status Corrupt(absl::string_view name, absl::string_view what) {
  return absl::DataLossError(absl::StrCat(name, ": corrupt safetensors file: ", what));
}

}  // namespace

absl::StatusOr<std::vector<TensorInfo>> ParseSafetensorsHeader(absl::string_view prefix,
                                                               uint64_t file_size,
                                                               absl::string_view name) {
  if (file_size < 8 || prefix.size() < 8) return Corrupt(name, "shorter than the 8-byte header length");
  uint64_t header_len;
  std::memcpy(&header_len, prefix.data(), 8);
  if (header_len > kMaxHeaderBytes) {
    return Corrupt(name, absl::StrCat("header length ", header_len, " exceeds 100 MiB"));
  }
  if (header_len > file_size - 8) {
    return Corrupt(name, absl::StrCat("header length ", header_len, " runs past the end of the ",
                                      file_size, "-byte file"));
  }
  if (prefix.size() < 8 + header_len) return Corrupt(name, "truncated header");
  const absl::string_view header = prefix.substr(8, header_len);
  const Json json = Json::parse(header.begin(), header.end(), nullptr, false);
  if (json.is_discarded() || !json.is_object()) return Corrupt(name, "header is not a JSON object");

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = file_size - data_start;
  std::vector<TensorInfo> infos;
  for (auto it = json.begin(); it != json.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const Json& entry = it.value();
    const std::string& tname = it.key();
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
        !entry.contains("data_offsets") || !entry["dtype"].is_string() ||
        !entry["shape"].is_array() || !entry["data_offsets"].is_array() ||
        entry["data_offsets"].size() != 2) {
      return Corrupt(name, absl::StrCat("tensor \"", tname, "\" needs dtype, shape and two data_offsets"));
    }
    TensorInfo info;
    info.name = tname;
    auto dtype = DTypeFromSafetensors(entry["dtype"].get<std::string>());
    if (!dtype.ok()) return Corrupt(name, absl::StrCat("tensor \"", tname, "\": ", dtype.status().message()));
    info.dtype = *dtype;
    uint64_t count = 1;
    for (const Json& d : entry["shape"]) {
      if (!d.is_number_unsigned()) {
        return Corrupt(name, absl::StrCat("tensor \"", tname, "\" has a non-integer dimension"));
      }
      const uint64_t v = d.get<uint64_t>();
      if (v != 0 && count > (uint64_t{1} << 50) / v) {
        return Corrupt(name, absl::StrCat("tensor \"", tname, "\" shape is too large"));
      }
      count *= v;
      info.shape.push_back(static_cast<int64_t>(v));
    }
    const Json& offsets = entry["data_offsets"];
    if (!offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned()) {
      return Corrupt(name, absl::StrCat("tensor \"", tname, "\" has non-integer data_offsets"));
    }
    const uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
    if (begin > end || end > data_size) {
      return Corrupt(name, absl::StrCat("tensor \"", tname, "\" data_offsets [", begin, ", ", end,
                                        ") outside the ", data_size, "-byte data section"));
    }
    if (end - begin != count * DTypeSize(info.dtype)) {
      return Corrupt(name, absl::StrCat("tensor \"", tname, "\" ", DTypeToSafetensors(info.dtype),
                                        ShapeString(info.shape), " needs ", count * DTypeSize(info.dtype),
                                        " bytes, data_offsets give ", end - begin));
    }
    info.begin = data_start + begin;
    info.end = data_start + end;
    infos.push_back(std::move(info));
  }
  std::vector<const TensorInfo*> by_offset;
  for (const auto& info : infos) by_offset.push_back(&info);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end) {
      return Corrupt(name, absl::StrCat("tensors \"", by_offset[i - 1]->name, "\" and \"",
                                        by_offset[i]->name, "\" overlap"));
    }
  }
  return infos;
}

struct Checkpoint::Mapping {
  void* data = nullptr;
  size_t size = 0;
  ~Mapping() {
    if (data != nullptr && size > 0) munmap(data, size);
  }
};

Checkpoint::~Checkpoint() = default;

absl::Status Checkpoint::AddFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return absl::NotFoundError(absl::StrCat(path, ": cannot open: ", std::strerror(errno)));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::InternalError(absl::StrCat(path, ": stat failed"));
  }
  auto mapping = std::make_shared<Mapping>();
  mapping->size = static_cast<size_t>(st.st_size);
  if (mapping->size > 0) {
    mapping->data = mmap(nullptr, mapping->size, PROT_READ, MAP_PRIVATE, fd, 0);
  }
  ::close(fd);
  if (mapping->size > 0 && mapping->data == MAP_FAILED) {
    mapping->data = nullptr;
    return absl::InternalError(absl::StrCat(path, ": mmap failed"));
  }
  const absl::string_view bytes(static_cast<const char*>(mapping->data), mapping->size);
  Q3VL_ASSIGN_OR_RETURN(std::vector<TensorInfo> infos,
                        ParseSafetensorsHeader(bytes, mapping->size, path));
  const int file_index = static_cast<int>(paths_.size());
  for (TensorInfo& info : infos) {
    info.file = file_index;
    if (tensors_.count(info.name)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor \"", info.name,
                                                     "\" also appears in ", paths_[tensors_[info.name].file]));
    }
    std::string key = info.name;
    tensors_.emplace(std::move(key), std::move(info));
  }
  paths_.push_back(path);
  mappings_.push_back(std::move(mapping));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& path) {
  namespace fs = std::filesystem;
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());
  std::error_code ec;
  if (!fs::is_directory(path, ec)) {
    if (!fs::exists(path, ec)) return absl::NotFoundError(absl::StrCat(path, ": no such file or directory"));
    Q3VL_RETURN_IF_ERROR(ckpt->AddFile(path));
    return ckpt;
  }
  const fs::path index = fs::path(path) / "model.safetensors.index.json";
  if (!fs::exists(index, ec)) {
    const fs::path single = fs::path(path) / "model.safetensors";
    if (!fs::exists(single, ec)) {
      return absl::NotFoundError(absl::StrCat(path, ": neither model.safetensors.index.json nor ",
                                              "model.safetensors is present"));
    }
    Q3VL_RETURN_IF_ERROR(ckpt->AddFile(single.string()));
    return ckpt;
  }
  std::ifstream in(index);
  std::stringstream text;
  text << in.rdbuf();
  const std::string s = text.str();
  const Json json = Json::parse(s, nullptr, false);
  if (json.is_discarded() || !json.is_object() || !json.contains("weight_map") ||
      !json["weight_map"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index.string(), ": not a JSON object with a \"weight_map\" object"));
  }
  std::vector<std::string> files;
  std::map<std::string, std::string> expected;
  for (auto it = json["weight_map"].begin(); it != json["weight_map"].end(); ++it) {
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(index.string(), ": weight_map[\"", it.key(), "\"] is not a file name"));
    }
    const std::string file = it.value().get<std::string>();
    if (file.find('/') != std::string::npos || file == ".." ) {
      return absl::InvalidArgumentError(absl::StrCat(index.string(), ": file name \"", file, "\" must not contain a path"));
    }
    if (std::find(files.begin(), files.end(), file) == files.end()) files.push_back(file);
    expected[it.key()] = file;
  }
  std::sort(files.begin(), files.end());
  for (const std::string& file : files) {
    Q3VL_RETURN_IF_ERROR(ckpt->AddFile((fs::path(path) / file).string()));
  }
  for (const auto& [name, file] : expected) {
    const TensorInfo* info = ckpt->Find(name);
    if (info == nullptr) {
      return absl::DataLossError(absl::StrCat(index.string(), ": tensor \"", name, "\" is mapped to ",
                                              file, " but that file does not contain it"));
    }
  }
  return ckpt;
}

const TensorInfo* Checkpoint::Find(absl::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> Checkpoint::Names() const {
  std::vector<std::string> names;
  for (const auto& [name, info] : tensors_) names.push_back(name);
  return names;
}

Tensor Checkpoint::View(const TensorInfo& info) const {
  const auto& mapping = mappings_[info.file];
  auto buffer = std::make_shared<BorrowedBuffer>(static_cast<char*>(mapping->data) + info.begin,
                                                 info.end - info.begin, mapping);
  return Tensor(std::move(buffer), info.dtype, info.shape);
}

void Checkpoint::ReleasePages(const TensorInfo& info) const {
  const Mapping& m = *mappings_.at(info.file);
  if (m.data == nullptr) return;
  // The whole pages inside [begin, end): a page shared with a neighbouring tensor stays.
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t base = reinterpret_cast<uintptr_t>(m.data);
  const uintptr_t first = (base + info.begin + page - 1) / page * page, last = (base + info.end) / page * page;
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
}

absl::StatusOr<Tensor> Checkpoint::ReadF32(absl::string_view name, const std::vector<SliceRange>& ranges) const {
  return Read(name, ranges, /*keep_bf16=*/false);
}

absl::StatusOr<Tensor> Checkpoint::ReadKeepBf16(absl::string_view name, const std::vector<SliceRange>& ranges) const {
  return Read(name, ranges, /*keep_bf16=*/true);
}

absl::StatusOr<Tensor> Checkpoint::Read(absl::string_view name, const std::vector<SliceRange>& ranges,
                                        bool keep_bf16) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) return absl::NotFoundError(absl::StrCat("tensor \"", name, "\" not in checkpoint"));
  Tensor view = View(*info);
  for (const SliceRange& r : ranges) {
    if (r.dim < 0 || r.dim >= view.rank() || r.start < 0 || r.start > r.end || r.end > view.dim(r.dim)) {
      return absl::InvalidArgumentError(absl::StrCat("slice [", r.start, ", ", r.end, ") of dim ", r.dim,
                                                     " is outside ", name, ShapeString(info->shape)));
    }
    view = view.Slice(r.dim, r.start, r.end);
  }
  switch (info->dtype) {
    case DType::kF32: case DType::kBF16: case DType::kF16: case DType::kF8E4M3: break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("tensor \"", name, "\" has non-float dtype ",
                                                     DTypeName(info->dtype)));
  }
  Tensor out = keep_bf16 && info->dtype == DType::kBF16 ? view.Clone() : view.ToF32();
  if (out.buffer() == view.buffer()) out = out.Clone();
  bytes_read_ += view.size_bytes();
  return out;
}

absl::Status WriteSafetensorsStreaming(const std::string& path, const std::vector<TensorSpec>& specs,
                                       const std::function<void(size_t, Tensor&)>& fill) {
  Json header = Json::object();
  uint64_t offset = 0;
  for (const TensorSpec& t : specs) {
    const uint64_t bytes = NumElements(t.shape) * DTypeSize(t.dtype);
    header[t.name] = {{"dtype", std::string(DTypeToSafetensors(t.dtype))},
                      {"shape", std::vector<int64_t>(t.shape.begin(), t.shape.end())},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  header["__metadata__"] = {{"format", "pt"}};
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  std::ofstream out(path, std::ios::binary);
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot write"));
  const uint64_t len = text.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out.write(text.data(), text.size());
  for (size_t i = 0; i < specs.size() && out; ++i) {
    Tensor t = Tensor::Empty(specs[i].dtype, specs[i].shape);
    fill(i, t);
    out.write(static_cast<const char*>(t.raw_data()), t.size_bytes());
  }
  if (!out) return absl::DataLossError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, Tensor>>& tensors) {
  std::vector<TensorSpec> specs;
  for (const auto& [name, t] : tensors) specs.push_back({name, t.dtype(), t.shape()});
  return WriteSafetensorsStreaming(path, specs, [&](size_t i, Tensor& t) { t.CopyFrom(tensors[i].second); });
}

}  // namespace q3vl::model
