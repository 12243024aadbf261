// The Backend: the fixed op set every device implements (GEMM, grouped GEMM, norms, rotary,
// attention, activations, router top-k, expert grouping, row top-k, row gather/scatter,
// copies). Model code calls only these and never branches on the device. Each op takes one
// Params struct; shapes and dtypes are checked at this boundary (a mismatch is a bug:
// Q3VL_CHECK). The CPU backend is the reference; a backend instance is used by one thread at a
// time (ops may use many threads).
#ifndef Q3VL_CORE_BACKEND_H_
#define Q3VL_CORE_BACKEND_H_

#include <cstdint>
#include <memory>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"
#include "core/tensor.h"

namespace q3vl {

// out = a · op(b) + bias + beta * out.
struct GemmParams {
  Tensor a;                   // [M, K]
  Tensor b;                   // [N, K] if b_transposed (nn.Linear weight), else [K, N]
  Tensor bias;                // optional [N]
  Tensor out;                 // [M, N]
  bool b_transposed = true;
  float beta = 0.0f;
};

// For each group g: out[offsets[g]:offsets[g+1]] = a[offsets[g]:offsets[g+1]] · op(weights[g]),
// op = transpose when weights_transposed. Groups with no rows are skipped (no weight bytes read).
// The offsets come from the host (`offsets`, ending at R) or, so that the host need not wait
// for the routing, from the backend's memory (`device_offsets`, e.g. GroupByExpert's output;
// rows past its last entry are left untouched). Exactly one of the two is given.
struct GroupedGemmParams {
  Tensor a;                      // [R, K], rows ordered by group
  Tensor weights;                // [G, K, N], or [G, N, K] when weights_transposed
  std::vector<int64_t> offsets;  // [G + 1], CSR row offsets
  Tensor out;                    // [R, N]
  bool weights_transposed = false;
  Tensor device_offsets;         // [G + 1] i64 in the backend's memory, non-decreasing, <= R
};

// With a residual, the residual add is fused in: x += residual (written back to x), then
// out = RMSNorm(x); out must not alias x then.
struct RmsNormParams {
  Tensor x;         // [..., D]
  Tensor weight;    // [D]
  Tensor out;       // same shape as x (may alias x without a residual)
  float eps = 1e-6f;
  Tensor residual;  // optional, like x
};

struct LayerNormParams {
  Tensor x;       // [..., D]
  Tensor weight;  // [D]
  Tensor bias;    // [D]
  Tensor out;     // same shape as x (may alias x)
  float eps = 1e-6f;
};

// In place: x = x * cos + rotate_half(x) * sin, rotate_half(v) = [-v[d/2:], v[:d/2]].
struct RopeParams {
  Tensor x;    // [T, H, d]
  Tensor cos;  // [T, d]
  Tensor sin;  // [T, d]
};

enum class ActivationKind : uint8_t {
  kSiluMul,   // x [T, 2I] -> out [T, I] = silu(x[:, :I]) * x[:, I:]
  kGeluTanh,  // elementwise, out may alias x
  kGeluErf,   // elementwise, out may alias x
};

struct ActivationParams {
  ActivationKind kind;
  Tensor x;
  Tensor out;
};

// Scaled dot-product attention over packed sequences. Sequence s owns query rows
// [q_starts[s], q_starts[s+1]) and nk = k_starts[s+1] - k_starts[s] keys. With `causal`, the
// queries are the last rows of the sequence: query i of a sequence with nq queries and nk keys
// sees keys [0, nk - nq + i]. Query head h reads KV head h / (H / KV).
// Keys and values are packed (key j of sequence s is row k_starts[s] + j of k and v) or, with
// page_size > 0, paged: k and v are a KV cache's page pools and key j of sequence s is row
// block_tables[s][j / page_size] * page_size + j % page_size (no gather of the context).
struct AttentionParams {
  Tensor q;                       // [Tq, H, d]
  Tensor k;                       // [Tk, KV, d], or paged: [pages * page_size, KV, d] (paged k and v
                                  // may be bf16, or fp8 with scales, under an f32 q: a KV cache)
  Tensor v;                       // like k
  std::vector<int64_t> q_starts;  // [num_seqs + 1]
  std::vector<int64_t> k_starts;  // [num_seqs + 1]
  bool causal = true;
  float scale = 1.0f;
  Tensor out;                     // [Tq, H, d]
  Tensor block_tables;            // paged: [num_seqs, max_pages] i32 page ids (unused entries any)
  int64_t page_size = 0;          // 0: packed keys
  Tensor k_scale;                 // fp8 e4m3 pages: [pages, KV] f32 per (page, KV head) (KvWriteFp8Params)
  Tensor v_scale;
};

// Router: p = softmax(logits); pick top_k by p (ties: lower index first); weights = p_top,
// renormalised to sum 1 when `renormalize`.
struct RouterParams {
  Tensor logits;      // [T, E]
  int top_k = 1;
  bool renormalize = true;
  Tensor expert_ids;  // [T, top_k] i32, descending probability
  Tensor weights;     // [T, top_k] f32
};

// Groups routing pairs by local expert on the backend, for the grouped GEMM (the host never
// reads the routing). Pair i = (token i / k, slot i % k) goes to local expert
// e = expert_ids[i] - first_expert; its row is offsets[e] + the number of earlier pairs of e,
// so rows are ordered by expert, then token, then slot. Pairs of experts outside the E local
// ones are dropped, and the rows [offsets[E], T * k) they leave are padding (token 0, weight 0).
struct GroupByExpertParams {
  Tensor expert_ids;       // [T, k] i32 global expert ids
  Tensor weights;          // [T, k] f32 routing weights
  int64_t first_expert = 0;
  Tensor offsets;          // out [E + 1] i64: CSR row offsets by local expert
  Tensor source_token;     // out [T * k] i64: the token of each row
  Tensor row_weight;       // out [T * k] f32: the routing weight of each row
};

// The k largest values of each row of x in descending order (ties: the lower column first) and
// their columns: sampling reads these candidates instead of whole vocabulary rows.
struct TopKParams {
  Tensor x;        // [N, V] f32, rows contiguous (a column slice is fine)
  int64_t k = 1;   // 1 <= k <= V; the CUDA backend takes k <= 1024
  Tensor values;   // [N, k] f32
  Tensor ids;      // [N, k] i32: columns of x
};

// out[i] = table[ids[i]] (widened to out's dtype).
struct GatherRowsParams {
  Tensor table;  // [V, D], any float dtype
  Tensor ids;    // [N] i64 or i32
  Tensor out;    // [N, D]
};

// out[ids[i]] += scale[i] * src[i] (scale optional: 1); rows of ids may repeat. With
// accumulate = false the rows are overwritten instead: out[ids[i]] = scale[i] * src[i], and
// the ids must be distinct (a device writes repeated rows in no defined order). An overwrite may
// store into a bf16 `out` (rounded to nearest even): the KV cache's bf16 pages.
struct ScatterAddRowsParams {
  Tensor src;    // [N, D]
  Tensor ids;    // [N] i64 or i32
  Tensor scale;  // optional [N] f32
  Tensor out;    // [M, D], f32 (bf16 allowed when !accumulate)
  bool accumulate = true;
};

// Writes new key (or value) rows into fp8 e4m3 KV pages with one f32 scale per (page, KV head),
// rows in order: row i of src goes to pool row rows[i], of page rows[i] / page_size. A row at
// offset 0 of its page starts the page afresh (its scales reset); a row whose values in a head
// exceed that head's scale x 448 raises the scale to amax / 448 and requantises the rows the
// page already holds in that head. Stored value = round(x / scale); read back as q x scale.
struct KvWriteFp8Params {
  Tensor src;    // [N, KV * d] f32
  Tensor rows;   // [N] i64: pool rows
  Tensor pool;   // [pages * page_size, KV * d] fp8 e4m3
  Tensor scale;  // [pages, KV] f32
  int64_t page_size = 0;
};

// out = a + b, elementwise, same shapes (out may alias a or b).
struct AddParams {
  Tensor a;
  Tensor b;
  Tensor out;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual absl::string_view name() const = 0;
  virtual Device device() const = 0;
  // Bytes of device memory the backend computes in (what a replica divides between weights,
  // workspace and KV); 0 for host memory, which has no such fixed size.
  virtual int64_t device_memory_bytes() const { return 0; }

  // Zero-filled, contiguous tensor in this backend's memory.
  virtual Tensor Allocate(DType dtype, Shape shape) = 0;
  // Like Allocate, but the contents are unspecified: for an output that an op overwrites whole,
  // where the zero fill would be wasted work (a memset launch per tensor on a device). The
  // default zero-fills anyway.
  virtual Tensor AllocateUninitialized(DType dtype, Shape shape) { return Allocate(dtype, std::move(shape)); }
  // Copies between host and device tensors of equal shape (either direction).
  virtual void Copy(const Tensor& src, Tensor& dst) = 0;
  // Waits until all queued work is done.
  virtual void Synchronize() = 0;
  // t = 0 (contiguous, or a rank-2 view whose rows are contiguous).
  virtual void Zero(Tensor& t) = 0;

  virtual void Gemm(const GemmParams& p) = 0;
  virtual void GroupedGemm(const GroupedGemmParams& p) = 0;
  virtual void RmsNorm(const RmsNormParams& p) = 0;
  virtual void LayerNorm(const LayerNormParams& p) = 0;
  virtual void Rope(const RopeParams& p) = 0;
  virtual void Activation(const ActivationParams& p) = 0;
  virtual void Attention(const AttentionParams& p) = 0;
  virtual void Router(const RouterParams& p) = 0;
  virtual void GroupByExpert(const GroupByExpertParams& p) = 0;
  virtual void TopK(const TopKParams& p) = 0;
  virtual void GatherRows(const GatherRowsParams& p) = 0;
  virtual void ScatterAddRows(const ScatterAddRowsParams& p) = 0;
  virtual void Add(const AddParams& p) = 0;
  // fp8 KV pages (the CPU backend; elsewhere it fails naming the backend).
  virtual void WriteKvFp8(const KvWriteFp8Params& p);
};

// `t` in `backend`'s memory: t itself when it already is there, else a new tensor copied from it
// (host inputs such as token ids, positions and rotary tables going to a device).
Tensor Upload(Backend& backend, const Tensor& t);
// `t` in host memory: t itself when it is a host tensor, else a new host copy (the backend
// finishes the work that writes it first). The way model code reads a result on the host.
Tensor Download(Backend& backend, const Tensor& t);

// CHECK an op's dtypes and shapes (shared by the backends). GroupByExpert: returns the number
// of local experts.
int64_t CheckGroupByExpert(const GroupByExpertParams& p);
void CheckTopK(const TopKParams& p);

enum class BackendKind : uint8_t { kCpu, kCuda };

// Returns the backend of `kind`; UnimplementedError for a backend this build does not have.
// `local_rank`: this process's index among the ranks of a job on its machine; a CUDA backend
// takes device local_rank % (visible devices) and makes it the thread's current device.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(BackendKind kind, int local_rank = 0);
absl::StatusOr<BackendKind> ParseBackendKind(absl::string_view name);

}  // namespace q3vl

#endif  // Q3VL_CORE_BACKEND_H_
