// Early-return helpers for absl::Status / absl::StatusOr (Debian's Abseil 20220623 has none).
//   Q3VL_RETURN_IF_ERROR(DoThing());
//   Q3VL_ASSIGN_OR_RETURN(auto file, OpenFile(path));
#ifndef Q3VL_CORE_STATUS_MACROS_H_
#define Q3VL_CORE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define Q3VL_RETURN_IF_ERROR(expr)                     \
  do {                                                 \
    const ::absl::Status q3vl_status_ = (expr);        \
    if (!q3vl_status_.ok()) return q3vl_status_;       \
  } while (0)

#define Q3VL_INTERNAL_CONCAT_(a, b) a##b
#define Q3VL_INTERNAL_CONCAT(a, b) Q3VL_INTERNAL_CONCAT_(a, b)

#define Q3VL_INTERNAL_ASSIGN_OR_RETURN(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                                   \
  if (!tmp.ok()) return std::move(tmp).status();        \
  lhs = std::move(tmp).value()

#define Q3VL_ASSIGN_OR_RETURN(lhs, rexpr) \
  Q3VL_INTERNAL_ASSIGN_OR_RETURN(Q3VL_INTERNAL_CONCAT(q3vl_statusor_, __LINE__), lhs, rexpr)

namespace q3vl {

// Returns `status` with `context: ` prepended to its message, keeping the code.
inline absl::Status Annotate(const absl::Status& status, absl::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

}  // namespace q3vl

#endif  // Q3VL_CORE_STATUS_MACROS_H_
