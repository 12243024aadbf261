// Attention on CPU: per (sequence, KV head, block of queries) work items run in parallel; each
// takes the KV head's keys and values (in place when packed, gathered from the pages into a
// per-thread buffer when paged) and, for every query head of the group, computes scores with
// one SGEMM, a masked softmax, and the weighted sum with another.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/cpu/cpu_backend.h"

namespace q3vl {
namespace {

constexpr int64_t kQueryBlock = 128;

struct WorkItem {
  int64_t seq;
  int64_t kv_head;
  int64_t q_begin;  // relative to the sequence
  int64_t q_end;
};

}  // namespace

void CpuBackend::Attention(const AttentionParams& p) {
  Q3VL_CHECK_EQ(p.q.rank(), 3) << p.q.DebugString();
  Q3VL_CHECK_EQ(p.k.rank(), 3) << p.k.DebugString();
  Q3VL_CHECK(p.q.is_contiguous() && p.k.is_contiguous() && p.v.is_contiguous() &&
             p.out.is_contiguous());
  Q3VL_CHECK(p.k.shape() == p.v.shape()) << p.k.DebugString() << " vs " << p.v.DebugString();
  Q3VL_CHECK(p.q.shape() == p.out.shape());
  const int64_t num_heads = p.q.dim(1), head_dim = p.q.dim(2), num_kv_heads = p.k.dim(1);
  Q3VL_CHECK_EQ(p.k.dim(2), head_dim);
  Q3VL_CHECK_EQ(num_heads % num_kv_heads, 0);
  Q3VL_CHECK_EQ(p.q_starts.size(), p.k_starts.size());
  Q3VL_CHECK_EQ(p.q_starts.back(), p.q.dim(0));
  const int64_t group = num_heads / num_kv_heads;
  const int64_t num_seqs = static_cast<int64_t>(p.q_starts.size()) - 1;
  const bool paged = p.page_size > 0;
  int64_t max_pages = 0;
  const int32_t* tables = nullptr;
  if (paged) {
    Q3VL_CHECK(p.block_tables.dtype() == DType::kI32 && p.block_tables.rank() == 2 &&
               p.block_tables.dim(0) == num_seqs && p.block_tables.is_contiguous())
        << "block_tables must be [num_seqs, max_pages] i32: " << p.block_tables.DebugString();
    max_pages = p.block_tables.dim(1);
    tables = p.block_tables.data<int32_t>();
  } else {
    Q3VL_CHECK_EQ(p.k_starts.back(), p.k.dim(0));
  }

  std::vector<WorkItem> items;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t nq = p.q_starts[s + 1] - p.q_starts[s];
    const int64_t nk = p.k_starts[s + 1] - p.k_starts[s];
    Q3VL_CHECK(!p.causal || nk >= nq) << "causal attention with more queries than keys";
    if (paged) {
      Q3VL_CHECK_LE(nk, max_pages * p.page_size) << "sequence " << s << " has more keys than its block table";
      for (int64_t j = 0; j < (nk + p.page_size - 1) / p.page_size; ++j) {
        const int64_t page = tables[s * max_pages + j];
        Q3VL_CHECK(page >= 0 && (page + 1) * p.page_size <= p.k.dim(0))
            << "sequence " << s << " page " << page << " outside the pool of " << p.k.dim(0) / p.page_size;
      }
    }
    for (int64_t kvh = 0; kvh < num_kv_heads; ++kvh) {
      for (int64_t b = 0; b < nq; b += kQueryBlock) items.push_back({s, kvh, b, std::min(nq, b + kQueryBlock)});
    }
  }

  const float* q = p.q.data<float>();
  const float* k = p.k.data<float>();
  const float* v = p.v.data<float>();
  float* out = p.out.data<float>();
  const int64_t q_ld = num_heads * head_dim, k_ld = num_kv_heads * head_dim;

#pragma omp parallel
  {
    std::vector<float> scores, k_rows, v_rows;
#pragma omp for schedule(dynamic)
    for (size_t i = 0; i < items.size(); ++i) {
      const WorkItem& w = items[i];
      const int64_t nq = p.q_starts[w.seq + 1] - p.q_starts[w.seq];
      const int64_t nk = p.k_starts[w.seq + 1] - p.k_starts[w.seq];
      const int64_t rows = w.q_end - w.q_begin;
      // Keys visible to the last query of the block.
      const int64_t cols = p.causal ? nk - nq + w.q_end : nk;
      if (cols == 0) continue;
      // This KV head's first `cols` keys and values: [cols, d] with row stride kv_ld.
      const float* kb;
      const float* vb;
      int64_t kv_ld = k_ld;
      if (!paged) {
        kb = k + p.k_starts[w.seq] * k_ld + w.kv_head * head_dim;
        vb = v + p.k_starts[w.seq] * k_ld + w.kv_head * head_dim;
      } else {
        k_rows.resize(cols * head_dim);
        v_rows.resize(cols * head_dim);
        for (int64_t j = 0; j < cols; ++j) {
          const int64_t row = tables[w.seq * max_pages + j / p.page_size] * p.page_size + j % p.page_size;
          std::memcpy(&k_rows[j * head_dim], k + row * k_ld + w.kv_head * head_dim, head_dim * sizeof(float));
          std::memcpy(&v_rows[j * head_dim], v + row * k_ld + w.kv_head * head_dim, head_dim * sizeof(float));
        }
        kb = k_rows.data();
        vb = v_rows.data();
        kv_ld = head_dim;
      }
      scores.resize(rows * cols);
      for (int64_t h = w.kv_head * group; h < (w.kv_head + 1) * group; ++h) {
        const float* qb = q + (p.q_starts[w.seq] + w.q_begin) * q_ld + h * head_dim;
        float* ob = out + (p.q_starts[w.seq] + w.q_begin) * q_ld + h * head_dim;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, head_dim, p.scale, qb,
                    q_ld, kb, kv_ld, 0.0f, scores.data(), cols);
        for (int64_t r = 0; r < rows; ++r) {
          float* row = scores.data() + r * cols;
          const int64_t visible = p.causal ? nk - nq + w.q_begin + r + 1 : nk;
          float max_score = -INFINITY;
          for (int64_t c = 0; c < visible; ++c) max_score = std::max(max_score, row[c]);
          float sum = 0.0f;
          for (int64_t c = 0; c < visible; ++c) {
            row[c] = std::exp(row[c] - max_score);
            sum += row[c];
          }
          const float inv = 1.0f / sum;
          for (int64_t c = 0; c < visible; ++c) row[c] *= inv;
          for (int64_t c = visible; c < cols; ++c) row[c] = 0.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, head_dim, cols, 1.0f,
                    scores.data(), cols, vb, kv_ld, 0.0f, ob, q_ld);
      }
    }
  }
}

}  // namespace q3vl
