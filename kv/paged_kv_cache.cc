#include "kv/paged_kv_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace q3vl::kv {

absl::StatusOr<DType> ParseKvDtype(absl::string_view name) {
  if (name == "bf16") return DType::kBF16;
  if (name == "f32") return DType::kF32;
  if (name == "fp8") return DType::kF8E4M3;
  return absl::InvalidArgumentError(absl::StrCat("KV cache dtype '", name, "' is not one of bf16, f32, fp8"));
}

PagedKvCache::PagedKvCache(const KvCacheConfig& config, Backend& backend)
    : config_(config), backend_(backend) {
  Q3VL_CHECK_GT(config.page_size, 0);
  Q3VL_CHECK(config.dtype == DType::kF32 || config.dtype == DType::kBF16 || config.dtype == DType::kF8E4M3)
      << "KV pages are f32, bf16 or fp8, not " << DTypeName(config.dtype);
  const Shape shape = {config.num_pages, config.page_size, config.num_kv_heads, config.head_dim};
  for (int64_t l = 0; l < config.num_layers; ++l) {
    // Uninitialised: a row is written before any attention reads it, and the pool's memory is
    // committed only as pages are first used (a 4 GiB CPU pool costs nothing until it fills).
    keys_.push_back(backend.AllocateUninitialized(config.dtype, shape));
    values_.push_back(backend.AllocateUninitialized(config.dtype, shape));
    if (config.dtype == DType::kF8E4M3) {
      key_scales_.push_back(backend.Allocate(DType::kF32, {config.num_pages, config.num_kv_heads}));
      value_scales_.push_back(backend.Allocate(DType::kF32, {config.num_pages, config.num_kv_heads}));
    }
  }
  for (int64_t p = config.num_pages - 1; p >= 0; --p) free_.push_back(static_cast<int32_t>(p));
}

absl::Status PagedKvCache::Reserve(int64_t seq, int64_t num_tokens) {
  Sequence& s = seqs_[seq];
  Q3VL_CHECK(!s.assigned) << "sequence " << seq << " holds assigned pages";
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

void PagedKvCache::Assign(int64_t seq, const std::vector<int32_t>& pages, int64_t cached_tokens) {
  auto [it, added] = seqs_.try_emplace(seq);
  Sequence& s = it->second;
  Q3VL_CHECK(added || s.assigned) << "sequence " << seq << " holds pages of Reserve";
  if (added) {
    s.assigned = true;
    s.length = cached_tokens;
  }
  for (int32_t p : pages) {
    Q3VL_CHECK(p >= 0 && p < config_.num_pages) << "page " << p << " outside the pool of " << config_.num_pages;
    s.pages.push_back(p);
  }
  Q3VL_CHECK_LE(s.length, static_cast<int64_t>(s.pages.size()) * config_.page_size)
      << "sequence " << seq << " holds " << s.length << " tokens in " << s.pages.size() << " pages";
}

void PagedKvCache::Release(int64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  if (!it->second.assigned) {
    for (int32_t p : it->second.pages) free_.push_back(p);
  }
  seqs_.erase(it);
}

int64_t PagedKvCache::Length(int64_t seq) const {
  auto it = seqs_.find(seq);
  return it == seqs_.end() ? 0 : it->second.length;
}

int64_t PagedKvCache::Capacity(int64_t seq) const {
  auto it = seqs_.find(seq);
  return it == seqs_.end() ? 0 : static_cast<int64_t>(it->second.pages.size()) * config_.page_size;
}

int64_t PagedKvCache::Row(const Sequence& s, int64_t pos) const {
  return s.pages[pos / config_.page_size] * config_.page_size + pos % config_.page_size;
}

Tensor PagedKvCache::Rows(const Tensor& pool) const {
  return pool.Reshape({config_.num_pages * config_.page_size, config_.num_kv_heads * config_.head_dim});
}

KvStepPlan PagedKvCache::Plan(const std::vector<int64_t>& seqs, const std::vector<int64_t>& q_starts) const {
  Q3VL_CHECK_EQ(q_starts.size(), seqs.size() + 1);
  std::vector<int64_t> write(q_starts.back());
  size_t max_pages = 1;
  for (int64_t seq : seqs) {
    auto it = seqs_.find(seq);
    if (it != seqs_.end()) max_pages = std::max(max_pages, it->second.pages.size());
  }
  const int64_t num_seqs = static_cast<int64_t>(seqs.size());
  Tensor tables = Tensor::Empty(DType::kI32, {num_seqs, static_cast<int64_t>(max_pages)});
  KvStepPlan plan;
  plan.k_starts.assign(1, 0);
  for (size_t i = 0; i < seqs.size(); ++i) {
    auto it = seqs_.find(seqs[i]);
    Q3VL_CHECK(it != seqs_.end()) << "sequence " << seqs[i] << " not reserved";
    const Sequence& s = it->second;
    const int64_t n = q_starts[i + 1] - q_starts[i], total = s.length + n;
    Q3VL_CHECK_LE(total, static_cast<int64_t>(s.pages.size()) * config_.page_size)
        << "sequence " << seqs[i] << " not reserved for " << n << " more tokens";
    for (int64_t j = 0; j < n; ++j) write[q_starts[i] + j] = Row(s, s.length + j);
    std::copy(s.pages.begin(), s.pages.end(), tables.data<int32_t>() + i * max_pages);
    plan.k_starts.push_back(plan.k_starts.back() + total);
  }
  plan.write_rows = Upload(backend_, Tensor::FromVectorI64(write, {static_cast<int64_t>(write.size())}));
  plan.block_tables = Upload(backend_, tables);
  return plan;
}

void PagedKvCache::Write(int64_t layer, const KvStepPlan& plan, const Tensor& k, const Tensor& v) {
  const int64_t n = plan.write_rows.numel(), row = config_.num_kv_heads * config_.head_dim;
  Q3VL_CHECK_EQ(k.numel(), n * row) << k.DebugString();
  Q3VL_CHECK_EQ(v.numel(), n * row) << v.DebugString();
  if (n == 0) return;
  if (config_.dtype == DType::kF8E4M3) {
    backend_.WriteKvFp8({.src = k.Reshape({n, row}), .rows = plan.write_rows, .pool = Rows(keys_[layer]),
                         .scale = key_scales_[layer], .page_size = config_.page_size});
    backend_.WriteKvFp8({.src = v.Reshape({n, row}), .rows = plan.write_rows, .pool = Rows(values_[layer]),
                         .scale = value_scales_[layer], .page_size = config_.page_size});
    return;
  }
  backend_.ScatterAddRows({.src = k.Reshape({n, row}), .ids = plan.write_rows, .out = Rows(keys_[layer]),
                           .accumulate = false});
  backend_.ScatterAddRows({.src = v.Reshape({n, row}), .ids = plan.write_rows, .out = Rows(values_[layer]),
                           .accumulate = false});
}

void PagedKvCache::Commit(int64_t seq, int64_t num_tokens) { seqs_[seq].length += num_tokens; }

Tensor PagedKvCache::keys(int64_t layer) const {
  return keys_[layer].Reshape({config_.num_pages * config_.page_size, config_.num_kv_heads, config_.head_dim});
}

Tensor PagedKvCache::values(int64_t layer) const {
  return values_[layer].Reshape({config_.num_pages * config_.page_size, config_.num_kv_heads, config_.head_dim});
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
