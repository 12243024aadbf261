// Paged KV cache: fixed-size pages of [page_size, num_kv_heads, head_dim] keys and values per
// layer, stored in f32, bf16 or fp8 (KvCacheConfig::dtype), drawn from one pool in the backend's memory; each sequence owns a block table (its
// list of pages). Keys are stored post-k_norm, post-RoPE. Reserve() fails with
// ResourceExhausted when the pool is empty and leaves the sequence unchanged.
// The block tables live on the host. A forward step turns them into what every layer uses,
// uploaded once (Plan): the cache row of every new token (vLLM's "slot mapping") and the
// batch's block tables. Write scatters the new keys and values into their rows (a backend op);
// the attention op reads the context through the block tables from the pools (keys(), values()).
// So the cache works on any device and the context is never copied.
// Not thread-safe: the engine's step loop owns it.
#ifndef Q3VL_KV_PAGED_KV_CACHE_H_
#define Q3VL_KV_PAGED_KV_CACHE_H_

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/backend.h"

namespace q3vl::kv {

struct KvCacheConfig {
  int64_t num_layers = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t page_size = 16;  // tokens per page
  int64_t num_pages = 0;
  // Storage of the pages: kBF16 (the default: half of f32, what attention reads on every
  // backend), kF32 (the exact fp32 path of the golden cases), or kF8E4M3 (half of bf16, with an
  // f32 scale per page and KV head for keys and for values; CPU backend only). Writes round to it.
  DType dtype = DType::kBF16;

  // Bytes of one page across all layers, keys and values (fp8: with its scales).
  int64_t page_bytes() const {
    const int64_t scales = dtype == DType::kF8E4M3 ? 2 * num_layers * num_kv_heads * 4 : 0;
    return 2 * num_layers * page_size * num_kv_heads * head_dim * static_cast<int64_t>(DTypeSize(dtype)) + scales;
  }
};

// The KV dtypes a cache stores: "f32", "bf16" or "fp8" (InvalidArgument naming the choices).
absl::StatusOr<DType> ParseKvDtype(absl::string_view name);

// The rows one forward step touches, the same for every layer (see the file comment).
struct KvStepPlan {
  Tensor write_rows;              // [T] i64: cache row of each new token, in batch order
  Tensor block_tables;            // [num_seqs, max_pages] i32: each sequence's pages (padded with 0)
  std::vector<int64_t> k_starts;  // [num_seqs + 1] CSR of the context lengths, new tokens included
};

// Block tables of a batch in CSR form: sequence i owns pages[offsets[i] .. offsets[i+1]).
struct BlockTableCsr {
  std::vector<int64_t> offsets;
  std::vector<int32_t> pages;
  std::vector<int64_t> lengths;  // tokens held per sequence
};

class PagedKvCache {
 public:
  PagedKvCache(const KvCacheConfig& config, Backend& backend);

  const KvCacheConfig& config() const { return config_; }
  int64_t free_pages() const { return static_cast<int64_t>(free_.size()); }

  // Makes room for `num_tokens` more tokens of `seq` (creating it if new).
  absl::Status Reserve(int64_t seq, int64_t num_tokens);
  // Appends `pages` to `seq`'s block table; a new `seq` starts holding `cached_tokens` tokens
  // (a prefix-cache hit: its first pages were written by an earlier sequence). For a caller
  // that allocates the pages itself (the scheduler's BlockPool): such pages are never taken
  // from or returned to this cache's own free list. Do not mix with Reserve on one sequence.
  void Assign(int64_t seq, const std::vector<int32_t>& pages, int64_t cached_tokens = 0);
  // Forgets `seq`; pages it took with Reserve return to the pool.
  void Release(int64_t seq);
  // Tokens already written for `seq` (0 when unknown).
  int64_t Length(int64_t seq) const;
  // Tokens its pages hold (0 when unknown).
  int64_t Capacity(int64_t seq) const;

  // The rows of a step that appends tokens [q_starts[i], q_starts[i+1]) of the batch to
  // sequence seqs[i] at positions [Length, Length + n). REQUIRES: each reserved for its tokens.
  KvStepPlan Plan(const std::vector<int64_t>& seqs, const std::vector<int64_t>& q_starts) const;
  // Writes the step's new keys and values k, v [T, KV, hd] of `layer` into their rows.
  void Write(int64_t layer, const KvStepPlan& plan, const Tensor& k, const Tensor& v);
  // The pools of `layer` as [num_pages * page_size, KV, hd]: the k and v of a paged Attention
  // (AttentionParams::block_tables = plan.block_tables, page_size = config().page_size).
  Tensor keys(int64_t layer) const;
  Tensor values(int64_t layer) const;
  // fp8 pages: the scales of `layer` [num_pages, KV] f32 (AttentionParams::k_scale, v_scale);
  // undefined for other dtypes.
  Tensor key_scales(int64_t layer) const { return key_scales_.empty() ? Tensor() : key_scales_[layer]; }
  Tensor value_scales(int64_t layer) const { return value_scales_.empty() ? Tensor() : value_scales_[layer]; }
  // After the last layer: the step's tokens count as held.
  void Commit(int64_t seq, int64_t num_tokens);

  BlockTableCsr BlockTables(const std::vector<int64_t>& seqs) const;

 private:
  struct Sequence {
    std::vector<int32_t> pages;
    int64_t length = 0;
    bool assigned = false;  // pages from Assign (not this cache's to free)
  };
  // Row of token `pos` of `s` inside a layer's pool [num_pages * page_size, KV * hd].
  int64_t Row(const Sequence& s, int64_t pos) const;
  // A layer's pool viewed as rows.
  Tensor Rows(const Tensor& pool) const;

  KvCacheConfig config_;
  Backend& backend_;
  std::vector<Tensor> keys_;    // per layer: [num_pages, page_size, KV, hd]
  std::vector<Tensor> values_;  // per layer: [num_pages, page_size, KV, hd]
  std::vector<Tensor> key_scales_, value_scales_;  // fp8: per layer [num_pages, KV] f32
  std::vector<int32_t> free_;
  std::unordered_map<int64_t, Sequence> seqs_;
};

}  // namespace q3vl::kv

#endif  // Q3VL_KV_PAGED_KV_CACHE_H_
