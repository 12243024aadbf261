// Launchers of the CUDA backend's kernels: one op per .cu file in this directory, each with its
// own Args struct of raw device pointers and sizes. This header is the boundary between host
// C++ (core/cuda/cuda_backend.cc, which checks shapes and dtypes) and nvcc: it includes only the
// CUDA runtime. Every launcher enqueues on `stream` and returns at once; launch errors surface
// at the backend's next error check. Element types are f32, bf16 and f16; arithmetic is f32.
#ifndef Q3VL_CORE_CUDA_KERNELS_KERNELS_H_
#define Q3VL_CORE_CUDA_KERNELS_KERNELS_H_

#include <cuda_runtime.h>

#include <cstdint>

namespace q3vl::cuda {

enum class ElemType : uint8_t { kF32, kBF16, kF16 };

// Device-side error codes, OR-ed into the backend's error word by kernels that meet bad data
// (host checks cannot see device ids) and reported at the next Synchronize.
enum DeviceError : int {
  kErrorGatherId = 1,   // GatherRows: an id outside the table
  kErrorScatterId = 2,  // ScatterAddRows: an id outside the output
};

// out[i] = in[i] converted (f32 <-> bf16 <-> f16).
struct ConvertArgs {
  const void* in;
  ElemType in_type;
  void* out;
  ElemType out_type;
  int64_t n;
};
void Convert(const ConvertArgs& a, cudaStream_t stream);

// out = x / sqrt(mean(x^2) + eps) * weight, per row of `width`. out may alias x.
// With a residual (of x_type), x += residual first and is written back.
struct RmsNormArgs {
  void* x;
  ElemType x_type;
  const void* weight;
  ElemType weight_type;
  void* out;
  ElemType out_type;
  int64_t rows;
  int64_t width;
  float eps;
  const void* residual = nullptr;
};
void RmsNorm(const RmsNormArgs& a, cudaStream_t stream);

// out = (x - mean) / sqrt(var + eps) * weight + bias, per row. out may alias x.
struct LayerNormArgs {
  const void* x;
  ElemType x_type;
  const void* weight;
  const void* bias;
  ElemType param_type;  // weight and bias
  void* out;
  ElemType out_type;
  int64_t rows;
  int64_t width;
  float eps;
};
void LayerNorm(const LayerNormArgs& a, cudaStream_t stream);

// In place on x [tokens, heads, dim]: x = x * cos + rotate_half(x) * sin, cos/sin [tokens, dim].
struct RopeArgs {
  void* x;
  ElemType x_type;
  const void* cos;
  const void* sin;
  ElemType table_type;
  int64_t tokens;
  int64_t heads;
  int64_t dim;
};
void Rope(const RopeArgs& a, cudaStream_t stream);

enum class ActivationOp : uint8_t { kSiluMul, kGeluTanh, kGeluErf };

// kSiluMul: x [rows, 2 * width] -> out [rows, width]; the GELUs: x and out [rows, width].
struct ActivationArgs {
  ActivationOp op;
  const void* x;
  ElemType x_type;
  void* out;
  ElemType out_type;
  int64_t rows;
  int64_t width;  // of out
};
void Activation(const ActivationArgs& a, cudaStream_t stream);

// Softmax over `experts` logits per token, top_k by probability (ties: lower index), weights
// renormalised to sum 1 when `renormalize`.
struct RouterArgs {
  const void* logits;
  ElemType logits_type;
  int64_t tokens;
  int64_t experts;
  int top_k;
  bool renormalize;
  int32_t* expert_ids;  // [tokens, top_k]
  float* weights;       // [tokens, top_k]
};
void Router(const RouterArgs& a, cudaStream_t stream);

// Groups routing pairs by local expert (Backend::GroupByExpert), in one block: rows ordered
// by expert, then pair index, so the result equals the CPU's counting sort exactly.
constexpr int kGroupByExpertMaxExperts = 1024;
struct GroupByExpertArgs {
  const int32_t* expert_ids;  // [pairs] global ids
  const float* weights;       // [pairs]
  int64_t pairs;
  int top_k;                  // pairs per token
  int64_t first_expert;
  int experts;                // local experts, <= kGroupByExpertMaxExperts
  int64_t* offsets;           // [experts + 1]
  int64_t* source_token;      // [pairs]
  float* row_weight;          // [pairs]
};
void GroupByExpert(const GroupByExpertArgs& a, cudaStream_t stream);

// Grouped GEMM for few rows per group, the group offsets read on the device (decode's expert
// GEMMs, with no host sync): out[r] = a[r] · weights[g]ᵀ for the rows r in
// [offsets[g], offsets[g + 1]) (clamped to `rows`). A warp streams 4 weight rows at a time
// against up to 4 activation rows in f32 FMAs; groups without rows read no weight bytes.
// REQUIRES k % 8 == 0, lda % 8 == 0 and 16-byte aligned a and weights (CudaBackend checks).
struct GroupedGemvArgs {
  const void* a;          // [rows, k], row stride lda
  ElemType a_type;
  int64_t lda;
  const void* weights;    // [groups, n, k]
  ElemType weight_type;
  const int64_t* offsets; // device [groups + 1]
  int64_t groups;
  int64_t n;
  int64_t k;
  int64_t rows;
  void* out;              // [rows, n], row stride ldo
  ElemType out_type;
  int64_t ldo;
};
void GroupedGemv(const GroupedGemvArgs& a, cudaStream_t stream);

// Per row of x, the k largest values in descending order (ties: the lower column first) and
// their columns; one block per row. k == 1 is an argmax reduction; otherwise a radix select
// finds the k-th largest value, the values above it and the first of those equal to it are
// collected, and a bitonic sort orders them.
constexpr int kTopKMax = 1024;
struct TopKArgs {
  const float* x;  // [rows, ld], the first `width` columns used
  int64_t ld;
  int64_t rows;
  int64_t width;
  int k;           // 1 <= k <= min(width, kTopKMax)
  float* values;   // [rows, k]
  int32_t* ids;    // [rows, k]
};
void TopK(const TopKArgs& a, cudaStream_t stream);

// out[i] = table[ids[i]]; table rows `row_stride` elements apart.
struct GatherRowsArgs {
  const void* table;
  ElemType table_type;
  int64_t row_stride;
  int64_t table_rows;
  int64_t width;
  const void* ids;
  bool ids_are_i64;
  int64_t n;
  void* out;
  ElemType out_type;
  int* error;  // device word: kErrorGatherId is OR-ed in on a bad id (the row is zeroed)
};
void GatherRows(const GatherRowsArgs& a, cudaStream_t stream);

// out[ids[i]] += scale[i] * src[i] (accumulate; repeated ids add up atomically), or
// out[ids[i]] = scale[i] * src[i] (ids must then be distinct).
struct ScatterAddRowsArgs {
  const void* src;
  ElemType src_type;
  const void* ids;
  bool ids_are_i64;
  const float* scale;  // optional
  void* out;
  ElemType out_type;   // f32 or bf16 when accumulating
  int64_t n;
  int64_t out_rows;
  int64_t width;
  bool accumulate;
  int* error;          // kErrorScatterId on a bad id (the row is skipped)
};
void ScatterAddRows(const ScatterAddRowsArgs& a, cudaStream_t stream);

// out = a + b, elementwise over n elements of one type (out may alias a or b).
struct AddArgs {
  const void* a;
  const void* b;
  void* out;
  ElemType type;
  int64_t n;
};
void Add(const AddArgs& a, cudaStream_t stream);

// Scaled dot-product attention over packed sequences, as Backend::Attention: query rows
// [q_starts[s], q_starts[s+1]) of sequence s attend to its keys [k_starts[s], k_starts[s+1]);
// causal: query i of nq sees keys [0, nk - nq + i]. Query head h reads KV head h / (H / KV).
// One block per (query row, head), keys in tiles with an online softmax.
struct AttentionArgs {
  const void* q;  // [Tq, H, d]
  const void* k;  // [Tk, KV, d]
  const void* v;  // [Tk, KV, d]
  void* out;      // [Tq, H, d]
  ElemType type;     // of q and out
  ElemType kv_type;  // of k and v: `type`, or bf16 (a bf16 KV cache under f32 activations)
  const int64_t* q_starts;  // device [num_seqs + 1]
  const int64_t* k_starts;  // device [num_seqs + 1]; paged: only the lengths count
  int num_seqs;
  int64_t total_q;
  int heads;
  int kv_heads;
  int head_dim;  // <= 512
  bool causal;
  float scale;
  // Paged keys (page_size > 0): k, v are page pools and key j of sequence s is row
  // block_tables[s * max_pages + j / page_size] * page_size + j % page_size.
  const int32_t* block_tables = nullptr;  // device [num_seqs, max_pages]
  int64_t max_pages = 0;
  int64_t page_size = 0;
};
void Attention(const AttentionArgs& a, cudaStream_t stream);

// Decode attention, one query per sequence (query row s belongs to sequence s), split-K over
// the keys (attention_decode.cu). Keys packed or paged as in AttentionArgs. The caller sizes
// the partial buffers [num_seqs, heads, splits] (x head_dim for partial_out).
struct DecodeAttentionArgs {
  AttentionArgs attn;      // one query per sequence (q_starts and causal unused)
  int splits = 1;
  int64_t split_keys = 0;  // keys per split
  float* partial_max = nullptr;
  float* partial_sum = nullptr;
  float* partial_out = nullptr;
};
// The shapes DecodeAttention handles (head_dim 64 or 128, 1-16 query heads per KV head).
bool DecodeAttentionSupported(int head_dim, int heads, int kv_heads);
void DecodeAttention(const DecodeAttentionArgs& a, cudaStream_t stream);

}  // namespace q3vl::cuda

#endif  // Q3VL_CORE_CUDA_KERNELS_KERNELS_H_
