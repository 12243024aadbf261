// Whole-file I/O for the files q3vl reads and makes itself (results, configurations, keys):
// a short write is an error, never a silently truncated file, and a failure names the path and
// the reason, as a Status whose code says whose fault it is.
#ifndef Q3VL_CORE_FILE_IO_H_
#define Q3VL_CORE_FILE_IO_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace q3vl {

// Writes all of `bytes` to `fd`. Unavailable naming `path` and errno's reason otherwise.
absl::Status WriteAll(int fd, absl::string_view bytes, const std::string& path);

// errno (as the failed call left it) as a Status naming `path` and what failed:
// "PATH: WHAT: <reason>"; NotFound, PermissionDenied (also a read-only file system) or Internal.
absl::Status ErrnoStatus(absl::string_view what, const std::string& path);

// The bytes of the file at `path`. NotFound (missing), PermissionDenied (not readable) or
// Internal, with "PATH: cannot open: <reason>".
absl::StatusOr<std::string> ReadFile(const std::string& path);

}  // namespace q3vl

#endif  // Q3VL_CORE_FILE_IO_H_
