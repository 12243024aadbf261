#include "kv/paged_kv_cache.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace q3vl::kv {

PagedKvCache::PagedKvCache(const KvCacheConfig& config, Backend& backend)
    : config_(config), backend_(backend) {
  Q3VL_CHECK_GT(config.page_size, 0);
  const Shape shape = {config.num_pages, config.page_size, config.num_kv_heads, config.head_dim};
  for (int64_t l = 0; l < config.num_layers; ++l) {
    keys_.push_back(backend.Allocate(DType::kF32, shape));
    values_.push_back(backend.Allocate(DType::kF32, shape));
  }
  for (int64_t p = config.num_pages - 1; p >= 0; --p) free_.push_back(static_cast<int32_t>(p));
}

absl::Status PagedKvCache::Reserve(int64_t seq, int64_t num_tokens) {
  Sequence& s = seqs_[seq];
  const int64_t need_tokens = s.length + num_tokens;
  const int64_t need_pages = (need_tokens + config_.page_size - 1) / config_.page_size;
  const int64_t more = need_pages - static_cast<int64_t>(s.pages.size());
  if (more > free_pages()) {
    if (s.pages.empty()) seqs_.erase(seq);
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache full: sequence ", seq, " needs ", more, " more pages of ", config_.page_size,
        " tokens, ", free_pages(), " free of ", config_.num_pages));
  }
  for (int64_t i = 0; i < more; ++i) {
    s.pages.push_back(free_.back());
    free_.pop_back();
  }
  return absl::OkStatus();
}

void PagedKvCache::Release(int64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  for (int32_t p : it->second.pages) free_.push_back(p);
  seqs_.erase(it);
}

int64_t PagedKvCache::Length(int64_t seq) const {
  auto it = seqs_.find(seq);
  return it == seqs_.end() ? 0 : it->second.length;
}

int64_t PagedKvCache::RowOffset(const Sequence& s, int64_t pos) const {
  const int64_t page = s.pages[pos / config_.page_size];
  const int64_t row = page * config_.page_size + pos % config_.page_size;
  return row * config_.num_kv_heads * config_.head_dim;
}

void PagedKvCache::Write(int64_t layer, int64_t seq, const Tensor& k, const Tensor& v) {
  auto it = seqs_.find(seq);
  Q3VL_CHECK(it != seqs_.end()) << "sequence " << seq << " not reserved";
  const Sequence& s = it->second;
  const int64_t n = k.dim(0);
  const int64_t row = config_.num_kv_heads * config_.head_dim;
  Q3VL_CHECK_EQ(k.numel(), n * row);
  Q3VL_CHECK_LE(s.length + n, static_cast<int64_t>(s.pages.size()) * config_.page_size);
  const float* ks = k.data<float>();
  const float* vs = v.data<float>();
  float* kd = keys_[layer].data<float>();
  float* vd = values_[layer].data<float>();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t off = RowOffset(s, s.length + i);
    std::memcpy(kd + off, ks + i * row, row * 4);
    std::memcpy(vd + off, vs + i * row, row * 4);
  }
}

void PagedKvCache::Commit(int64_t seq, int64_t num_tokens) { seqs_[seq].length += num_tokens; }

void PagedKvCache::Gather(int64_t layer, const std::vector<int64_t>& seqs,
                          const std::vector<int64_t>& pending, Tensor* k, Tensor* v,
                          std::vector<int64_t>* starts) {
  starts->assign(1, 0);
  for (size_t i = 0; i < seqs.size(); ++i) starts->push_back(starts->back() + Length(seqs[i]) + pending[i]);
  const int64_t row = config_.num_kv_heads * config_.head_dim;
  *k = backend_.Allocate(DType::kF32, {starts->back(), config_.num_kv_heads, config_.head_dim});
  *v = backend_.Allocate(DType::kF32, {starts->back(), config_.num_kv_heads, config_.head_dim});
  const float* ks = keys_[layer].data<float>();
  const float* vs = values_[layer].data<float>();
  float* kd = k->data<float>();
  float* vd = v->data<float>();
  for (size_t i = 0; i < seqs.size(); ++i) {
    const Sequence& s = seqs_.at(seqs[i]);
    const int64_t len = (*starts)[i + 1] - (*starts)[i];
    // Copy page-sized runs: tokens of one page are contiguous.
    for (int64_t pos = 0; pos < len; pos += config_.page_size) {
      const int64_t run = std::min(config_.page_size, len - pos);
      const int64_t dst = ((*starts)[i] + pos) * row;
      std::memcpy(kd + dst, ks + RowOffset(s, pos), run * row * 4);
      std::memcpy(vd + dst, vs + RowOffset(s, pos), run * row * 4);
    }
  }
}

BlockTableCsr PagedKvCache::BlockTables(const std::vector<int64_t>& seqs) const {
  BlockTableCsr csr;
  csr.offsets.push_back(0);
  for (int64_t seq : seqs) {
    const Sequence& s = seqs_.at(seq);
    csr.pages.insert(csr.pages.end(), s.pages.begin(), s.pages.end());
    csr.offsets.push_back(static_cast<int64_t>(csr.pages.size()));
    csr.lengths.push_back(s.length);
  }
  return csr;
}

}  // namespace q3vl::kv
