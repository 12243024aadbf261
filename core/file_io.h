// Writing a whole buffer to a file descriptor: write(2) until every byte is out, retrying
// interrupted calls. For the files q3vl makes itself (results, configurations), where a short
// write must be an error, never a silently truncated file.
#ifndef Q3VL_CORE_FILE_IO_H_
#define Q3VL_CORE_FILE_IO_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace q3vl {

// Writes all of `bytes` to `fd`. Unavailable naming `path` and errno's reason otherwise.
absl::Status WriteAll(int fd, absl::string_view bytes, const std::string& path);

}  // namespace q3vl

#endif  // Q3VL_CORE_FILE_IO_H_
