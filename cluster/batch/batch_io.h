// The files of a batch job: the input (OpenAI's batch format, one request per line) and the
// output (one result line per input line, as `vllm run-batch` writes them), appended and
// flushed as requests finish, so a job killed at any moment resumes where it stopped.
#ifndef Q3VL_CLUSTER_BATCH_BATCH_IO_H_
#define Q3VL_CLUSTER_BATCH_BATCH_IO_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "cluster/api/openai.h"

namespace q3vl::cluster::batch {

// One non-blank input line.
struct InputLine {
  int64_t number = 0;        // 1-based line number in the file
  std::string text;
  std::optional<std::string> custom_id;  // when the line is a JSON object with a string custom_id
  // The key its result line carries: the custom_id, or "line-N" for a line without one.
  std::string Key() const;
};

// Reads every non-blank line. NotFound / PermissionDenied for an unreadable file;
// InvalidArgument naming them when custom_ids repeat (nothing should run then).
absl::StatusOr<std::vector<InputLine>> ReadInput(const std::string& path);

// What an existing output file already holds, by key (custom_id, or "line-N" for input lines
// that had none): true when the request succeeded.
struct ExistingOutput {
  absl::flat_hash_map<std::string, bool> done;
  int64_t torn_bytes = 0;  // a partial last line (the writer was killed mid-line), cut off
  int64_t dropped_failed = 0;  // failed results removed so they run again (retry_failed)
};
// Reads `path` (absent: nothing done). A partial last line is truncated away. With
// `retry_failed` the failed results are removed from the file (rewritten atomically) so that
// their requests run again. InvalidArgument when a complete line is not a result line.
absl::StatusOr<ExistingOutput> RecoverOutput(const std::string& path, bool retry_failed);

// Checks before anything is loaded that `path` can be created or appended to.
absl::Status CheckWritable(const std::string& path);

// Appends whole lines with one write each and syncs them to disk at most every `sync_every`
// (and on Close). It holds an exclusive lock (flock) on the file from Open to Close, so a second
// job on the same output (a rerun started while a killed job's ranks linger) is refused rather
// than interleaving lines. One thread.
class ResultWriter {
 public:
  // Creates the file when absent. FailedPrecondition when another process holds the lock.
  static absl::StatusOr<std::unique_ptr<ResultWriter>> Open(const std::string& path,
                                                            absl::Duration sync_every = absl::Seconds(1));
  ~ResultWriter();
  // Opens and locks the file at the path again (after RecoverOutput replaced it), then lets go
  // of the old one.
  absl::Status Reopen();
  absl::Status Append(const std::string& line);  // `line` without its newline
  absl::Status Close();

 private:
  ResultWriter(int fd, std::string path, absl::Duration sync_every)
      : fd_(fd), path_(std::move(path)), sync_every_(sync_every) {}
  int fd_;
  std::string path_;
  absl::Duration sync_every_;
  absl::Time last_sync_ = absl::Now();
};

// A result line as vLLM's run-batch writes it. `body` for a success (status 200), `error`
// otherwise; `key_line` numbers the input line when it had no custom_id.
std::string SuccessLine(const std::string& custom_id, const std::string& request_id, const api::Json& body);
std::string ErrorLine(const InputLine& line, const std::string& request_id, const api::ApiError& error);

}  // namespace q3vl::cluster::batch

#endif  // Q3VL_CLUSTER_BATCH_BATCH_IO_H_
