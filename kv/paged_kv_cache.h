// Paged KV cache: fixed-size pages of [page_size, num_kv_heads, head_dim] keys and values per
// layer, drawn from one pool; each sequence owns a block table (its list of pages). Keys are
// stored post-k_norm, post-RoPE. Reserve() fails with ResourceExhausted when the pool is
// empty and leaves the sequence unchanged. Not thread-safe: the engine's step loop owns it.
#ifndef Q3VL_KV_PAGED_KV_CACHE_H_
#define Q3VL_KV_PAGED_KV_CACHE_H_

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "core/backend.h"

namespace q3vl::kv {

struct KvCacheConfig {
  int64_t num_layers = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t page_size = 16;  // tokens per page
  int64_t num_pages = 0;

  // Bytes of one page across all layers, keys and values, in f32.
  int64_t page_bytes() const { return 2 * num_layers * page_size * num_kv_heads * head_dim * 4; }
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
  // Returns all pages of `seq` to the pool.
  void Release(int64_t seq);
  // Tokens already written for `seq` (0 when unknown).
  int64_t Length(int64_t seq) const;

  // Writes rows k, v [n, KV, hd] at token positions [Length(seq), Length(seq) + n) of layer
  // `layer`. REQUIRES: reserved. Call Commit(seq, n) after the last layer.
  void Write(int64_t layer, int64_t seq, const Tensor& k, const Tensor& v);
  void Commit(int64_t seq, int64_t num_tokens);

  // Copies the keys and values of `seqs` (each including `pending[i]` tokens written but not
  // yet committed) for `layer` into contiguous k, v [sum len, KV, hd]; fills `starts` (CSR).
  void Gather(int64_t layer, const std::vector<int64_t>& seqs, const std::vector<int64_t>& pending,
              Tensor* k, Tensor* v, std::vector<int64_t>* starts);

  BlockTableCsr BlockTables(const std::vector<int64_t>& seqs) const;

 private:
  struct Sequence {
    std::vector<int32_t> pages;
    int64_t length = 0;
  };
  // Element offset of token `pos` of `seq` inside a layer's pool.
  int64_t RowOffset(const Sequence& s, int64_t pos) const;

  KvCacheConfig config_;
  Backend& backend_;
  std::vector<Tensor> keys_;    // per layer: [num_pages, page_size, KV, hd]
  std::vector<Tensor> values_;  // per layer: [num_pages, page_size, KV, hd]
  std::vector<int32_t> free_;
  std::unordered_map<int64_t, Sequence> seqs_;
};

}  // namespace q3vl::kv

#endif  // Q3VL_KV_PAGED_KV_CACHE_H_
