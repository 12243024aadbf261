#include "core/npy.h"

#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/status_macros.h"

namespace q3vl {
namespace {

constexpr char kMagic[] = "\x93NUMPY";

absl::Status Bad(absl::string_view name, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(name, ": not a valid .npy file: ", what));
}

// Extracts the value text of `'key':` in the header dict (up to the next top-level comma).
bool FindValue(absl::string_view header, absl::string_view key, absl::string_view* value) {
  const std::string quoted = absl::StrCat("'", key, "'");
  size_t pos = header.find(quoted);
  if (pos == absl::string_view::npos) return false;
  pos = header.find(':', pos + quoted.size());
  if (pos == absl::string_view::npos) return false;
  absl::string_view rest = absl::StripLeadingAsciiWhitespace(header.substr(pos + 1));
  size_t end = 0;
  if (!rest.empty() && rest[0] == '(') {
    end = rest.find(')');
    if (end == absl::string_view::npos) return false;
    ++end;
  } else if (!rest.empty() && rest[0] == '\'') {
    end = rest.find('\'', 1);
    if (end == absl::string_view::npos) return false;
    ++end;
  } else {
    end = rest.find_first_of(",}");
    if (end == absl::string_view::npos) return false;
  }
  *value = absl::StripAsciiWhitespace(rest.substr(0, end));
  return true;
}

struct NpyType {
  absl::string_view descr;
  DType dtype;
};
constexpr NpyType kTypes[] = {{"<f4", DType::kF32}, {"<i8", DType::kI64}, {"<i4", DType::kI32},
                              {"|u1", DType::kU8},  {"|b1", DType::kBool}};

}  // namespace

absl::StatusOr<Tensor> ParseNpy(absl::string_view bytes, absl::string_view name) {
  if (bytes.size() < 10 || bytes.substr(0, 6) != absl::string_view(kMagic, 6)) {
    return Bad(name, "missing \\x93NUMPY magic");
  }
  const uint8_t major = static_cast<uint8_t>(bytes[6]);
  size_t header_len = 0, header_start = 0;
  if (major == 1) {
    header_len = static_cast<uint8_t>(bytes[8]) | (static_cast<uint8_t>(bytes[9]) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return Bad(name, "truncated header");
    uint32_t len;
    std::memcpy(&len, bytes.data() + 8, 4);
    header_len = len;
    header_start = 12;
  } else {
    return Bad(name, absl::StrCat("unsupported format version ", major));
  }
  if (header_start + header_len > bytes.size()) return Bad(name, "header runs past end of file");
  const absl::string_view header = bytes.substr(header_start, header_len);

  absl::string_view descr, fortran, shape_text;
  if (!FindValue(header, "descr", &descr) || !FindValue(header, "fortran_order", &fortran) ||
      !FindValue(header, "shape", &shape_text)) {
    return Bad(name, "header lacks descr, fortran_order or shape");
  }
  if (fortran != "False") return Bad(name, "Fortran-order arrays are not supported");
  descr = absl::StripPrefix(absl::StripSuffix(descr, "'"), "'");
  bool is_f64 = descr == "<f8";
  DType dtype = DType::kF32;
  bool known = is_f64;
  for (const auto& t : kTypes) {
    if (t.descr == descr) {
      dtype = t.dtype;
      known = true;
    }
  }
  if (!known) return Bad(name, absl::StrCat("unsupported dtype '", descr, "'"));
  if (shape_text.size() < 2 || shape_text.front() != '(' || shape_text.back() != ')') {
    return Bad(name, "shape is not a tuple");
  }
  Shape shape;
  int64_t count = 1;
  for (absl::string_view part : absl::StrSplit(shape_text.substr(1, shape_text.size() - 2), ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (part.empty()) continue;
    int64_t d;
    if (!absl::SimpleAtoi(part, &d) || d < 0 || d > (int64_t{1} << 40)) {
      return Bad(name, absl::StrCat("bad dimension '", part, "'"));
    }
    shape.push_back(d);
    if (d != 0 && count > (int64_t{1} << 40) / d) return Bad(name, "shape too large");
    count *= d;
  }
  const size_t elem = is_f64 ? 8 : DTypeSize(dtype);
  const size_t data_start = header_start + header_len;
  const size_t need = static_cast<size_t>(count) * elem;
  if (bytes.size() - data_start != need) {
    return Bad(name, absl::StrCat("data has ", bytes.size() - data_start, " bytes, shape ",
                                  ShapeString(shape), " needs ", need));
  }
  Tensor out = Tensor::Empty(dtype, shape);
  if (is_f64) {
    float* dst = out.data<float>();
    for (int64_t i = 0; i < count; ++i) {
      double v;
      std::memcpy(&v, bytes.data() + data_start + i * 8, 8);
      dst[i] = static_cast<float>(v);
    }
  } else {
    std::memcpy(out.raw_data(), bytes.data() + data_start, need);
  }
  return out;
}

absl::StatusOr<Tensor> ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return ParseNpy(buffer.str(), path);
}

absl::Status WriteNpy(const std::string& path, const Tensor& tensor) {
  absl::string_view descr;
  for (const auto& t : kTypes) {
    if (t.dtype == tensor.dtype()) descr = t.descr;
  }
  if (descr.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("WriteNpy: unsupported ", tensor.DebugString()));
  }
  std::string shape = "(";
  for (int64_t d : tensor.shape()) absl::StrAppend(&shape, d, ", ");
  if (tensor.rank() > 1) shape.resize(shape.size() - 2);
  if (tensor.rank() == 1) shape.resize(shape.size() - 1);
  shape += ")";
  std::string header =
      absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': ", shape, ", }");
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot write"));
  out.write(kMagic, 6);
  const char version[2] = {1, 0};
  out.write(version, 2);
  const uint16_t len = static_cast<uint16_t>(header.size());
  out.write(reinterpret_cast<const char*>(&len), 2);
  out.write(header.data(), header.size());
  const Tensor c = tensor.is_contiguous() ? tensor : tensor.Clone();
  out.write(static_cast<const char*>(c.raw_data()), c.size_bytes());
  if (!out) return absl::DataLossError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace q3vl
