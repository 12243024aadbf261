// Attention on CPU: per (sequence, KV head, block of queries) work items run in parallel; each
// takes the KV head's keys and values (in place when packed, gathered from the pages into a
// per-thread buffer when paged, widened from bf16 pages) a tile of keys at a time and computes
// the tile's scores for the queries of every head of the GQA group at once (one SGEMM with
// group x rows rows), an online softmax (running max and sum per row, the output rescaled when
// the max grows), and the weighted sum with another SGEMM. With fewer blocks than threads
// (decode of a few long sequences) short blocks are split over their keys (split-K) and the
// pieces' partial states combined. Buffers are one tile, so memory does not grow with the
// context. The softmax loops are vectorised, exp through glibc's vector math library.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/cpu/cpu_backend.h"
#include "core/cpu/vector_math.h"

namespace q3vl {
namespace {

constexpr int64_t kQueryBlock = 128;
constexpr int64_t kKeyTile = 1024;  // scores of a tile: 128 x 1024 floats, 512 KiB

// Row r of a key tile: scores[0, n) visible (n may be 0), [n, width) masked. Updates the row's
// running max and sum, rescales its output accumulated so far (zeroes it on the first tile), and
// leaves exp(score - max) in the row (0 where masked) for the weighted sum.
Q3VL_ISA_CLONES
void OnlineSoftmaxRow(float* row, int64_t n, int64_t width, bool first_tile, float& max_score, float& sum,
                      float* out, int64_t head_dim) {
  float tile_max = -INFINITY;
#pragma omp simd reduction(max : tile_max)
  for (int64_t c = 0; c < n; ++c) tile_max = row[c] > tile_max ? row[c] : tile_max;
  const float new_max = tile_max > max_score ? tile_max : max_score;
  if (first_tile) {
    std::fill(out, out + head_dim, 0.0f);
  } else if (new_max > max_score) {
    const float alpha = expf(max_score - new_max);
    sum *= alpha;
#pragma omp simd
    for (int64_t j = 0; j < head_dim; ++j) out[j] *= alpha;
  }
  max_score = new_max;
  float tile_sum = 0.0f;
#pragma omp simd reduction(+ : tile_sum)
  for (int64_t c = 0; c < n; ++c) {
    row[c] = expf(row[c] - new_max);
    tile_sum += row[c];
  }
  sum += tile_sum;
  std::fill(row + n, row + width, 0.0f);
}

// bf16 to f32 is a 16-bit shift: exact, and vectorised.
Q3VL_ISA_CLONES
void WidenBf16(const uint16_t* src, float* dst, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(src[i]) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    dst[i] = f;
  }
}

struct WorkItem {
  int64_t seq;
  int64_t kv_head;
  int64_t q_begin;  // relative to the sequence
  int64_t q_end;
  int64_t k_begin;  // keys [k_begin, k_end) of the sequence: all it sees, or a split-K piece
  int64_t k_end;
  int64_t part;     // -1: writes the output; else a piece whose partial state is combined after
};

constexpr int64_t kScoreFloats = 128 * 1024;  // one tile's scores: 512 KiB
constexpr int64_t kMinSplitKeys = 2048;       // a split-K piece has at least this many keys
constexpr int64_t kMaxSplitRows = 16;         // blocks of at most this many queries get split

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
      for (int64_t b = 0; b < nq; b += kQueryBlock) {
        const int64_t q_end = std::min(nq, b + kQueryBlock);
        // Keys visible to the block's last query.
        const int64_t cols = p.causal ? nk - nq + q_end : nk;
        items.push_back({s, kvh, b, q_end, 0, cols, -1});
      }
    }
  }
  // Split-K: with fewer blocks than threads (decode of a few long sequences) each short block's
  // keys are cut into chunks that run in parallel; their partial results (running max, sum,
  // unnormalised output per row) are combined after.
  const int64_t threads = omp_get_max_threads();
  std::vector<WorkItem> split;
  std::vector<std::pair<size_t, size_t>> split_of;  // per original item: [first, last) in `split`
  if (threads > 1 && static_cast<int64_t>(items.size()) < 2 * threads) {
    const int64_t pieces = (4 * threads + static_cast<int64_t>(items.size()) - 1) / static_cast<int64_t>(items.size());
    for (const WorkItem& w : items) {
      const size_t first = split.size();
      const int64_t chunk = std::max<int64_t>(kMinSplitKeys, (w.k_end + pieces - 1) / pieces);
      if (w.q_end - w.q_begin <= kMaxSplitRows && w.k_end > chunk) {
        for (int64_t c = 0; c < w.k_end; c += chunk) {
          WorkItem part = w;
          part.k_begin = c;
          part.k_end = std::min(w.k_end, c + chunk);
          part.part = static_cast<int64_t>(split.size());
          split.push_back(part);
        }
      } else {
        split.push_back(w);
      }
      split_of.emplace_back(first, split.size());
    }
    items.swap(split);
  }
  // Partials of split pieces: per piece, [max | sum] (2 * group * rows) and output (group * rows * d).
  std::vector<std::vector<float>> partials(items.size());

  Q3VL_CHECK(p.q.dtype() == DType::kF32 && p.out.dtype() == DType::kF32) << "q and out must be f32";
  Q3VL_CHECK(p.k.dtype() == p.v.dtype() &&
             (p.k.dtype() == DType::kF32 || (paged && (p.k.dtype() == DType::kBF16 || p.k.dtype() == DType::kF8E4M3))))
      << "k and v must be f32, or bf16 or fp8 pages: " << p.k.DebugString() << ", " << p.v.DebugString();
  const bool bf16_kv = p.k.dtype() == DType::kBF16;
  const bool fp8_kv = p.k.dtype() == DType::kF8E4M3;
  const uint8_t* k8 = fp8_kv ? p.k.data<uint8_t>() : nullptr;
  const uint8_t* v8 = fp8_kv ? p.v.data<uint8_t>() : nullptr;
  const float* k_scale = nullptr;
  const float* v_scale = nullptr;
  // Every e4m3 code as f32, built once.
  static const std::array<float, 256> fp8_values = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c) t[c] = F8E4M3ToF32(static_cast<uint8_t>(c));
    return t;
  }();
  if (fp8_kv) {
    Q3VL_CHECK(p.k_scale.defined() && p.v_scale.defined() && p.k_scale.dtype() == DType::kF32 &&
               p.k_scale.numel() * p.page_size == p.k.dim(0) * num_kv_heads && p.v_scale.shape() == p.k_scale.shape())
        << "fp8 pages need k_scale and v_scale [pages, KV] f32";
    k_scale = p.k_scale.data<float>();
    v_scale = p.v_scale.data<float>();
  }
  const float* k = bf16_kv || fp8_kv ? nullptr : p.k.data<float>();
  const float* v = bf16_kv || fp8_kv ? nullptr : p.v.data<float>();
  const uint16_t* k16 = bf16_kv ? p.k.data<uint16_t>() : nullptr;
  const uint16_t* v16 = bf16_kv ? p.v.data<uint16_t>() : nullptr;
  const float* q = p.q.data<float>();
  float* out = p.out.data<float>();
  const int64_t q_ld = num_heads * head_dim, k_ld = num_kv_heads * head_dim;

#pragma omp parallel
  {
    // Per thread, kept across calls (OpenMP's threads persist): no page faults per step.
    static thread_local std::vector<float> scores, stats, k_rows, v_rows, q_rows, o_rows;
#pragma omp for schedule(dynamic)
    for (size_t i = 0; i < items.size(); ++i) {
      const WorkItem& w = items[i];
      const int64_t nq = p.q_starts[w.seq + 1] - p.q_starts[w.seq];
      const int64_t nk = p.k_starts[w.seq + 1] - p.k_starts[w.seq];
      const int64_t rows = w.q_end - w.q_begin, m = group * rows;  // row i = g * rows + r
      const int64_t q_row0 = p.q_starts[w.seq] + w.q_begin;
      // The group's query rows side by side: one GEMM for every head of the KV head.
      q_rows.resize(m * head_dim);
      for (int64_t g = 0; g < group; ++g) {
        for (int64_t r = 0; r < rows; ++r) {
          std::memcpy(&q_rows[(g * rows + r) * head_dim], q + (q_row0 + r) * q_ld + (w.kv_head * group + g) * head_dim,
                      head_dim * sizeof(float));
        }
      }
      o_rows.assign(m * head_dim, 0.0f);
      stats.assign(2 * m, 0.0f);  // per row: running max, sum
      float* const row_max = stats.data();
      float* const row_sum = stats.data() + m;
      std::fill(row_max, row_max + m, -INFINITY);
      // Scores of a tile stay within kScoreFloats (L2-sized) however many rows the block has.
      const int64_t tile = std::clamp<int64_t>(kScoreFloats / m, 64, kKeyTile);
      scores.resize(m * tile);
      for (int64_t c0 = w.k_begin; c0 < w.k_end; c0 += tile) {
        const int64_t width = std::min(tile, w.k_end - c0);
        // This KV head's keys and values [c0, c0 + width): [width, d] with row stride kv_ld, in
        // place when packed f32, copied (and widened from bf16) out of their pages when paged.
        const float* kb;
        const float* vb;
        int64_t kv_ld = k_ld;
        if (!paged) {
          kb = k + (p.k_starts[w.seq] + c0) * k_ld + w.kv_head * head_dim;
          vb = v + (p.k_starts[w.seq] + c0) * k_ld + w.kv_head * head_dim;
        } else {
          k_rows.resize(width * head_dim);
          v_rows.resize(width * head_dim);
          for (int64_t j = 0; j < width; ++j) {
            const int64_t key = c0 + j;
            const int64_t row = tables[w.seq * max_pages + key / p.page_size] * p.page_size + key % p.page_size;
            const int64_t at = row * k_ld + w.kv_head * head_dim;
            if (bf16_kv) {
              WidenBf16(k16 + at, &k_rows[j * head_dim], head_dim);
              WidenBf16(v16 + at, &v_rows[j * head_dim], head_dim);
            } else if (fp8_kv) {
              const int64_t page_head = (row / p.page_size) * num_kv_heads + w.kv_head;
              const float ks = k_scale[page_head], vs = v_scale[page_head];
              for (int64_t e = 0; e < head_dim; ++e) {
                k_rows[j * head_dim + e] = fp8_values[k8[at + e]] * ks;
                v_rows[j * head_dim + e] = fp8_values[v8[at + e]] * vs;
              }
            } else {
              std::memcpy(&k_rows[j * head_dim], k + at, head_dim * sizeof(float));
              std::memcpy(&v_rows[j * head_dim], v + at, head_dim * sizeof(float));
            }
          }
          kb = k_rows.data();
          vb = v_rows.data();
          kv_ld = head_dim;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, width, head_dim, p.scale, q_rows.data(), head_dim,
                    kb, kv_ld, 0.0f, scores.data(), width);
        for (int64_t row = 0; row < m; ++row) {
          const int64_t r = row % rows;
          const int64_t visible = p.causal ? nk - nq + w.q_begin + r + 1 : nk;
          OnlineSoftmaxRow(scores.data() + row * width, std::clamp<int64_t>(visible - c0, 0, width), width,
                           c0 == w.k_begin, row_max[row], row_sum[row], &o_rows[row * head_dim], head_dim);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, head_dim, width, 1.0f, scores.data(), width, vb,
                    kv_ld, 1.0f, o_rows.data(), head_dim);
      }
      if (w.part >= 0) {  // a piece: keep its state for the combine
        std::vector<float>& part = partials[i];
        part.assign(stats.begin(), stats.end());
        part.insert(part.end(), o_rows.begin(), o_rows.end());
        continue;
      }
      // A row with no visible key (non-causal, no keys) is zero, as on the device; causally
      // every row sees nk - nq + r + 1 >= 1 keys.
      for (int64_t row = 0; row < m; ++row) {
        const int64_t g = row / rows, r = row % rows;
        const float inv = row_sum[row] > 0.0f ? 1.0f / row_sum[row] : 0.0f;
        float* o = out + (q_row0 + r) * q_ld + (w.kv_head * group + g) * head_dim;
        for (int64_t j = 0; j < head_dim; ++j) o[j] = o_rows[row * head_dim + j] * inv;
      }
    }
  }
  if (split_of.empty()) return;
  // Combine each split item's pieces: out = sum_p e^(m_p - M) o_p / sum_p e^(m_p - M) l_p.
#pragma omp parallel for schedule(dynamic)
  for (size_t it = 0; it < split_of.size(); ++it) {
    const auto [first, last] = split_of[it];
    if (items[first].part < 0) continue;  // not split: written directly
    const WorkItem& w = items[first];
    const int64_t rows = w.q_end - w.q_begin, m = group * rows;
    const int64_t q_row0 = p.q_starts[w.seq] + w.q_begin;
    for (int64_t row = 0; row < m; ++row) {
      float top = -INFINITY;
      for (size_t pc = first; pc < last; ++pc) top = std::max(top, partials[pc][row]);
      const int64_t g = row / rows, r = row % rows;
      float* o = out + (q_row0 + r) * q_ld + (w.kv_head * group + g) * head_dim;
      std::fill(o, o + head_dim, 0.0f);
      float sum = 0.0f;
      for (size_t pc = first; pc < last; ++pc) {
        const std::vector<float>& part = partials[pc];
        if (part[row] == -INFINITY) continue;  // saw no key
        const float f = expf(part[row] - top);
        sum += f * part[m + row];
        const float* po = part.data() + 2 * m + row * head_dim;
        for (int64_t j = 0; j < head_dim; ++j) o[j] += f * po[j];
      }
      const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
      for (int64_t j = 0; j < head_dim; ++j) o[j] *= inv;
    }
  }
}

}  // namespace q3vl
