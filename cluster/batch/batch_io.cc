#include "cluster/batch/batch_io.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "core/file_io.h"
#include "core/status_macros.h"

namespace q3vl::cluster::batch {

std::string InputLine::Key() const { return custom_id ? *custom_id : absl::StrCat("line-", number); }

absl::StatusOr<std::vector<InputLine>> ReadInput(const std::string& path) {
  Q3VL_ASSIGN_OR_RETURN(const std::string text, ReadFile(path));
  std::vector<InputLine> lines;
  absl::flat_hash_map<std::string, int64_t> first_seen;
  std::vector<std::string> duplicates;
  int64_t number = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    InputLine l{.number = number, .text = line};
    const auto json = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (json.is_object() && json.contains("custom_id") && json["custom_id"].is_string()) {
      l.custom_id = json["custom_id"].get<std::string>();
      auto [it, inserted] = first_seen.emplace(*l.custom_id, number);
      if (!inserted) duplicates.push_back(absl::StrCat("\"", *l.custom_id, "\" (lines ", it->second, " and ", number, ")"));
    }
    lines.push_back(std::move(l));
  }
  if (!duplicates.empty()) {
    const size_t shown = std::min<size_t>(duplicates.size(), 10);
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": ", duplicates.size(), " duplicate custom_id", duplicates.size() > 1 ? "s" : "", ": ",
        absl::StrJoin(duplicates.begin(), duplicates.begin() + shown, ", "),
        duplicates.size() > shown ? ", ..." : "", "; each request needs its own custom_id"));
  }
  return lines;
}

absl::StatusOr<ExistingOutput> RecoverOutput(const std::string& path, bool retry_failed) {
  ExistingOutput out;
  if (!std::filesystem::exists(path)) return out;
  Q3VL_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  const size_t end = text.empty() ? 0 : text.rfind('\n') + 1;  // npos + 1 == 0: no whole line
  if (end < text.size()) {
    out.torn_bytes = static_cast<int64_t>(text.size() - end);
    std::error_code ec;
    std::filesystem::resize_file(path, end, ec);
    if (ec) return absl::InternalError(absl::StrCat(path, ": cannot cut the partial last line: ", ec.message()));
    text.resize(end);
  }
  std::string kept;
  int64_t number = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    ++number;
    if (line.empty()) continue;
    const auto json = nlohmann::json::parse(line, nullptr, false);
    std::string key;
    if (json.is_object() && json.contains("custom_id") && json["custom_id"].is_string()) {
      key = json["custom_id"].get<std::string>();
    } else if (json.is_object() && json.contains("id") && json["id"].is_string() &&
               absl::StartsWith(json["id"].get<std::string>(), "line-")) {
      key = json["id"].get<std::string>();
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ":", number, ": not a result line of a batch job; is this the right output file?"));
    }
    const bool ok = json.contains("response") && json["response"].is_object() &&
                    json["response"].value("status_code", 0) == 200 && json.value("error", nlohmann::json()).is_null();
    if (retry_failed && !ok) {
      ++out.dropped_failed;
      continue;
    }
    kept += line + "\n";
    out.done[key] = ok;
  }
  if (out.dropped_failed > 0) {  // rewrite without them: a temporary file renamed over the old
    const std::string tmp = path + ".tmp";
    const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return ErrnoStatus("cannot create", tmp);
    absl::Status s = WriteAll(fd, kept, tmp);
    if (s.ok() && fsync(fd) != 0) s = ErrnoStatus("fsync failed", tmp);
    close(fd);
    if (s.ok() && std::rename(tmp.c_str(), path.c_str()) != 0) s = ErrnoStatus("cannot replace", path);
    Q3VL_RETURN_IF_ERROR(s);
  }
  return out;
}

absl::Status CheckWritable(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("the output path is empty");
  const std::filesystem::path p(path);
  if (std::filesystem::is_directory(p)) return absl::InvalidArgumentError(absl::StrCat(path, ": is a directory"));
  const std::filesystem::path dir = p.has_parent_path() ? p.parent_path() : std::filesystem::path(".");
  if (!std::filesystem::is_directory(dir)) {
    return absl::NotFoundError(absl::StrCat(path, ": the directory ", dir.string(), " does not exist"));
  }
  if (std::filesystem::exists(p)) {
    if (access(path.c_str(), W_OK) != 0) return ErrnoStatus("cannot write", path);
  } else if (access(dir.c_str(), W_OK) != 0) {
    return ErrnoStatus("cannot create files in its directory", path);
  }
  return absl::OkStatus();
}

namespace {

absl::StatusOr<int> OpenLocked(const std::string& path) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("cannot open for appending", path);
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int e = errno;
    close(fd);
    if (e == EWOULDBLOCK) {
      return absl::FailedPreconditionError(absl::StrCat(
          path, ": another q3vl run is writing this output (stop it, or wait for it to end, before rerunning)"));
    }
    errno = e;
    return ErrnoStatus("cannot lock", path);
  }
  return fd;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ResultWriter>> ResultWriter::Open(const std::string& path, absl::Duration sync_every) {
  Q3VL_ASSIGN_OR_RETURN(const int fd, OpenLocked(path));
  return std::unique_ptr<ResultWriter>(new ResultWriter(fd, path, sync_every));
}

absl::Status ResultWriter::Reopen() {
  Q3VL_ASSIGN_OR_RETURN(const int fd, OpenLocked(path_));
  if (fd_ >= 0) close(fd_);
  fd_ = fd;
  return absl::OkStatus();
}

ResultWriter::~ResultWriter() { (void)Close(); }

absl::Status ResultWriter::Append(const std::string& line) {
  if (fd_ < 0) return absl::FailedPreconditionError(absl::StrCat(path_, ": closed"));
  Q3VL_RETURN_IF_ERROR(WriteAll(fd_, line + "\n", path_));  // one write: a kill leaves whole lines
  if (absl::Now() - last_sync_ >= sync_every_) {
    if (fdatasync(fd_) != 0) return ErrnoStatus("fdatasync failed", path_);
    last_sync_ = absl::Now();
  }
  return absl::OkStatus();
}

absl::Status ResultWriter::Close() {
  if (fd_ < 0) return absl::OkStatus();
  absl::Status s;
  if (fdatasync(fd_) != 0) s = ErrnoStatus("fdatasync failed", path_);
  if (close(fd_) != 0 && s.ok()) s = ErrnoStatus("close failed", path_);
  fd_ = -1;
  return s;
}

std::string SuccessLine(const std::string& custom_id, const std::string& request_id, const api::Json& body) {
  api::Json line = {{"id", absl::StrCat("batch-", request_id)}, {"custom_id", custom_id},
                    {"response", {{"status_code", 200}, {"request_id", request_id}, {"body", body}}},
                    {"error", nullptr}};
  return api::Dump(line);
}

std::string ErrorLine(const InputLine& line, const std::string& request_id, const api::ApiError& error) {
  api::Json out = {{"id", line.custom_id ? absl::StrCat("batch-", request_id) : line.Key()},
                   {"custom_id", line.custom_id ? api::Json(*line.custom_id) : api::Json(nullptr)},
                   {"response", {{"status_code", error.status}, {"request_id", request_id}, {"body", nullptr}}},
                   {"error", error.Body()["error"]}};
  return api::Dump(out);
}

}  // namespace q3vl::cluster::batch
