#include "core/cpu/small_gemm.h"

namespace q3vl::cpu {
namespace {

using Kernel = void (*)(const SmallGemmArgs&);

struct Choice {
  Kernel kernel;
  const char* isa;
};

Choice Pick() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) {
    return {SmallGemmAvx512, "avx512"};
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return {SmallGemmAvx2, "avx2"};
  return {SmallGemmBaseline, "baseline"};
}

const Choice& Chosen() {
  static const Choice choice = Pick();
  return choice;
}

}  // namespace

void SmallGemm(const SmallGemmArgs& args) { Chosen().kernel(args); }

const char* SmallGemmIsa() { return Chosen().isa; }

}  // namespace q3vl::cpu
