#include "core/cpu/bf16_gemm.h"

#include <cstring>
#include <vector>

#include "core/check.h"
#include "oneapi/dnnl/dnnl.hpp"

namespace q3vl::cpu {
namespace {

const char* IsaName(dnnl::cpu_isa isa) {
  switch (isa) {
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::sse41: return "sse41";
    default: return "other";
  }
}

dnnl::engine& Engine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

}  // namespace

const Bf16Support& CpuBf16Support() {
  static const Bf16Support support = [] {
    const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
    return Bf16Support{.isa = IsaName(isa),
                       .native = isa == dnnl::cpu_isa::avx512_core_bf16 || isa == dnnl::cpu_isa::avx512_core_amx};
  }();
  return support;
}

void RoundToBf16(const float* src, int64_t ld, int64_t rows, int64_t cols, uint16_t* dst) {
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 16))
  for (int64_t r = 0; r < rows; ++r) {
    const uint32_t* in = reinterpret_cast<const uint32_t*>(src + r * ld);
    uint16_t* o = dst + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      const uint32_t u = in[c];
      const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
      o[c] = nan ? static_cast<uint16_t>((u >> 16) | 0x40u) : static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
  }
}

void Bf16Gemm(const Bf16GemmParams& p) {
  Q3VL_CHECK(CpuBf16Support().native) << "bf16 GEMM on a processor without bf16 instructions ("
                                      << CpuBf16Support().isa << ")";
  using dt = dnnl::memory::data_type;
  // The activations in bf16, contiguous; the buffer is kept across calls (no page faults).
  thread_local std::vector<uint16_t> a16;
  if (a16.size() < static_cast<size_t>(p.m * p.k)) a16.resize(static_cast<size_t>(p.m * p.k));
  RoundToBf16(p.a, p.lda, p.m, p.k, a16.data());

  const dnnl::memory::desc a_md({p.m, p.k}, dt::bf16, dnnl::memory::dims{p.k, 1});
  const dnnl::memory::desc b_md({p.k, p.n}, dt::bf16, dnnl::memory::dims{1, p.k});  // [n, k] rows: b transposed
  const dnnl::memory::desc c_md({p.m, p.n}, dt::f32, dnnl::memory::dims{p.ldo, 1});
  dnnl::primitive_attr attr;
  if (p.beta != 0.0f) {
    dnnl::post_ops ops;
    ops.append_sum(p.beta);
    attr.set_post_ops(ops);
  }
  // oneDNN's primitive cache makes a repeated shape cheap to create again.
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), attr, Engine());
  const dnnl::matmul matmul(pd);
  dnnl::memory a_mem(a_md, Engine(), a16.data());
  dnnl::memory b_mem(b_md, Engine(), const_cast<uint16_t*>(p.b));
  dnnl::memory c_mem(c_md, Engine(), p.out);
  thread_local dnnl::stream stream(Engine());
  matmul.execute(stream, {{DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem}, {DNNL_ARG_DST, c_mem}});
  stream.wait();
}

}  // namespace q3vl::cpu
