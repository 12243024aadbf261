// Invariant checks for conditions that are bugs, not bad input (bad input gets a Status).
// A failed check prints file:line, the condition, both operands for the _OP forms and the
// streamed message to stderr, then aborts. Thread-safe.
#ifndef Q3VL_CORE_CHECK_H_
#define Q3VL_CORE_CHECK_H_

#include <memory>
#include <sstream>
#include <string>

namespace q3vl::internal {

class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* condition);
  [[noreturn]] ~CheckFailure();
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

template <typename A, typename B>
std::unique_ptr<std::string> CheckOpMessage(const A& a, const B& b, const char* expr) {
  std::ostringstream os;
  os << expr << " (" << a << " vs. " << b << ")";
  return std::make_unique<std::string>(os.str());
}

#define Q3VL_INTERNAL_DEFINE_CHECK_OP(name, op)                                           \
  template <typename A, typename B>                                                       \
  inline std::unique_ptr<std::string> Check##name##Impl(const A& a, const B& b,           \
                                                        const char* expr) {               \
    if (a op b) return nullptr;                                                           \
    return CheckOpMessage(a, b, expr);                                                    \
  }
Q3VL_INTERNAL_DEFINE_CHECK_OP(EQ, ==)
Q3VL_INTERNAL_DEFINE_CHECK_OP(NE, !=)
Q3VL_INTERNAL_DEFINE_CHECK_OP(LT, <)
Q3VL_INTERNAL_DEFINE_CHECK_OP(LE, <=)
Q3VL_INTERNAL_DEFINE_CHECK_OP(GT, >)
Q3VL_INTERNAL_DEFINE_CHECK_OP(GE, >=)
#undef Q3VL_INTERNAL_DEFINE_CHECK_OP

}  // namespace q3vl::internal

#define Q3VL_CHECK(cond) \
  while (!(cond)) ::q3vl::internal::CheckFailure(__FILE__, __LINE__, #cond).stream()

#define Q3VL_INTERNAL_CHECK_OP(name, op, a, b)                                      \
  while (std::unique_ptr<std::string> q3vl_check_msg_ =                              \
             ::q3vl::internal::Check##name##Impl((a), (b), #a " " #op " " #b))      \
  ::q3vl::internal::CheckFailure(__FILE__, __LINE__, q3vl_check_msg_->c_str()).stream()

#define Q3VL_CHECK_EQ(a, b) Q3VL_INTERNAL_CHECK_OP(EQ, ==, a, b)
#define Q3VL_CHECK_NE(a, b) Q3VL_INTERNAL_CHECK_OP(NE, !=, a, b)
#define Q3VL_CHECK_LT(a, b) Q3VL_INTERNAL_CHECK_OP(LT, <, a, b)
#define Q3VL_CHECK_LE(a, b) Q3VL_INTERNAL_CHECK_OP(LE, <=, a, b)
#define Q3VL_CHECK_GT(a, b) Q3VL_INTERNAL_CHECK_OP(GT, >, a, b)
#define Q3VL_CHECK_GE(a, b) Q3VL_INTERNAL_CHECK_OP(GE, >=, a, b)

// Checks that an absl::Status (or StatusOr) is OK; for calls that cannot fail unless a bug.
#define Q3VL_CHECK_OK(expr)                                                          \
  for (const ::absl::Status q3vl_check_st_ = ::q3vl::internal::ToStatus(expr);       \
       !q3vl_check_st_.ok();)                                                        \
  ::q3vl::internal::CheckFailure(__FILE__, __LINE__, #expr).stream() << q3vl_check_st_ << " "

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace q3vl::internal {
inline const absl::Status& ToStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& ToStatus(const absl::StatusOr<T>& s) {
  return s.status();
}
}  // namespace q3vl::internal

#endif  // Q3VL_CORE_CHECK_H_
