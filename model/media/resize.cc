#include "model/media/resize.h"

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "core/check.h"

namespace q3vl::model {
namespace {

constexpr int kChannels = 3;
constexpr double kCubicA = -0.5;  // Keys' cubic, as PIL and PyTorch's antialias path use
constexpr double kCubicSupport = 2.0;

// Keys' cubic convolution kernel; the operation order is kept as written so the double
// weights round exactly like the reference.
double KeysCubic(double x) {
  x = std::abs(x);
  if (x < 1.0) return ((kCubicA + 2.0) * x - (kCubicA + 3.0)) * x * x + 1.0;
  if (x < 2.0) return ((kCubicA * x - 5.0 * kCubicA) * x + 8.0 * kCubicA) * x - 4.0 * kCubicA;
  return 0.0;
}

inline uint8_t ShiftClamp(int32_t sum, int precision) {
  return static_cast<uint8_t>(std::clamp(sum >> precision, 0, 255));
}

// Images at least this large (output values) are resized by all OpenMP threads, row by row (rows
// are independent, so the result does not depend on the thread count).
constexpr int64_t kParallelMinValues = int64_t{1} << 16;

// out[y][x] = sum_j src[y][first[x] + j] * w[x][j], per channel.
#if defined(__SSE2__)
// SSE2 (every x86-64): taps are taken in pairs, pixels p and p + 1 laid out as
// (r_p, r_p+1, g_p, g_p+1, b_p, b_p+1, 0, 0) so that one pmaddwd gives the three channels' partial
// sums for two taps. Taps past count[x] have weight 0 and pixels past the row are 0, so the int32
// sums are exactly those of the plain loop.
Image ResizeHorizontal(const Image& src, int64_t width) {
  const ResizeAxisWeights aw = ComputeResizeAxisWeights(src.width, width);
  Image out = Image::Blank(src.height, width);
  const int32_t bias = 1 << (aw.precision - 1);
  const int64_t pairs = (aw.max_taps + 1) / 2;
  struct Lanes {  // a named type: vector<__m128i> would drop the type's attributes (-Wignored-attributes)
    __m128i v;
  };
  std::vector<Lanes> weight_pairs(width * pairs);  // [width, pairs]: (w_2k, w_2k+1) x 4
  for (int64_t x = 0; x < width; ++x) {
    const int16_t* w = aw.weights.data() + x * aw.max_taps;
    for (int64_t k = 0; k < pairs; ++k) {
      const int16_t w0 = w[2 * k], w1 = 2 * k + 1 < aw.max_taps ? w[2 * k + 1] : int16_t{0};
      weight_pairs[x * pairs + k].v = _mm_set_epi16(w1, w0, w1, w0, w1, w0, w1, w0);
    }
  }
#pragma omp parallel if (src.height * width * kChannels >= kParallelMinValues)
  {
    std::vector<Lanes> pixel_pairs(src.width + 2 * pairs, Lanes{_mm_setzero_si128()});  // [src.width + pad]
#pragma omp for schedule(static)
    for (int64_t y = 0; y < src.height; ++y) {
      const uint8_t* in = src.row(y);
      for (int64_t p = 0; p < src.width; ++p) {
        const uint8_t* a = in + kChannels * p;
        const uint8_t* b = p + 1 < src.width ? a + kChannels : nullptr;
        pixel_pairs[p].v = _mm_set_epi16(0, 0, b ? b[2] : 0, a[2], b ? b[1] : 0, a[1], b ? b[0] : 0, a[0]);
      }
      uint8_t* o = out.row(y);
      for (int64_t x = 0; x < width; ++x) {
        const Lanes* px = pixel_pairs.data() + aw.first[x];
        const Lanes* wp = weight_pairs.data() + x * pairs;
        __m128i acc = _mm_set1_epi32(bias);
        for (int64_t k = 0; k < pairs; ++k) acc = _mm_add_epi32(acc, _mm_madd_epi16(px[2 * k].v, wp[k].v));
        o[3 * x] = ShiftClamp(_mm_cvtsi128_si32(acc), aw.precision);
        o[3 * x + 1] = ShiftClamp(_mm_cvtsi128_si32(_mm_srli_si128(acc, 4)), aw.precision);
        o[3 * x + 2] = ShiftClamp(_mm_cvtsi128_si32(_mm_srli_si128(acc, 8)), aw.precision);
      }
    }
  }
  return out;
}
#else
Image ResizeHorizontal(const Image& src, int64_t width) {
  const ResizeAxisWeights aw = ComputeResizeAxisWeights(src.width, width);
  Image out = Image::Blank(src.height, width);
  const int32_t bias = 1 << (aw.precision - 1);
#pragma omp parallel for schedule(static) if (src.height * width * kChannels >= kParallelMinValues)
  for (int64_t y = 0; y < src.height; ++y) {
    const uint8_t* in = src.row(y);
    uint8_t* o = out.row(y);
    for (int64_t x = 0; x < width; ++x) {
      const int16_t* w = aw.weights.data() + x * aw.max_taps;
      const uint8_t* p = in + aw.first[x] * kChannels;
      int32_t r = bias, g = bias, b = bias;
      for (int64_t j = 0; j < aw.count[x]; ++j) {
        r += p[3 * j] * w[j];
        g += p[3 * j + 1] * w[j];
        b += p[3 * j + 2] * w[j];
      }
      o[3 * x] = ShiftClamp(r, aw.precision);
      o[3 * x + 1] = ShiftClamp(g, aw.precision);
      o[3 * x + 2] = ShiftClamp(b, aw.precision);
    }
  }
  return out;
}
#endif

// out[y][x] = sum_j src[first[y] + j][x] * w[y][j], per channel.
Image ResizeVertical(const Image& src, int64_t height) {
  const ResizeAxisWeights aw = ComputeResizeAxisWeights(src.height, height);
  Image out = Image::Blank(height, src.width);
  const int64_t row_len = src.width * kChannels;
  const int32_t bias = 1 << (aw.precision - 1);
#pragma omp parallel if (height * row_len >= kParallelMinValues)
  {
    std::vector<int32_t> acc(row_len);
#pragma omp for schedule(static)
    for (int64_t y = 0; y < height; ++y) {
      std::fill(acc.begin(), acc.end(), bias);
      const int16_t* w = aw.weights.data() + y * aw.max_taps;
      for (int64_t j = 0; j < aw.count[y]; ++j) {
        const uint8_t* in = src.row(aw.first[y] + j);
        const int32_t wj = w[j];
        int32_t* a = acc.data();
#pragma omp simd
        for (int64_t i = 0; i < row_len; ++i) a[i] += in[i] * wj;
      }
      uint8_t* o = out.row(y);
      for (int64_t i = 0; i < row_len; ++i) o[i] = ShiftClamp(acc[i], aw.precision);
    }
  }
  return out;
}

}  // namespace

ResizeAxisWeights ComputeResizeAxisWeights(int64_t in_size, int64_t out_size) {
  Q3VL_CHECK_GE(in_size, 1);
  Q3VL_CHECK_GE(out_size, 1);
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double support = scale >= 1.0 ? kCubicSupport * scale : kCubicSupport;
  const double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
  ResizeAxisWeights aw;
  aw.max_taps = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  aw.first.resize(out_size);
  aw.count.resize(out_size);
  std::vector<double> wd(out_size * aw.max_taps, 0.0);
  double wt_max = 0.0;
  for (int64_t i = 0; i < out_size; ++i) {
    const double center = scale * (static_cast<double>(i) + 0.5);
    const int64_t xmin = std::max(static_cast<int64_t>(center - support + 0.5), int64_t{0});
    int64_t xsize = std::min(static_cast<int64_t>(center + support + 0.5), in_size) - xmin;
    xsize = std::clamp(xsize, int64_t{0}, aw.max_taps);
    double* w = wd.data() + i * aw.max_taps;
    double total = 0.0;
    for (int64_t j = 0; j < xsize; ++j) {
      w[j] = KeysCubic((static_cast<double>(j + xmin) - center + 0.5) * invscale);
      total += w[j];
    }
    if (total != 0.0) {
      for (int64_t j = 0; j < xsize; ++j) {
        w[j] /= total;
        wt_max = std::max(wt_max, w[j]);
      }
    }
    aw.first[i] = xmin;
    aw.count[i] = xsize;
  }
  // The largest precision whose biggest weight still fits int16 (at most 22 bits).
  int precision = 0;
  for (; precision < 22; ++precision) {
    const int next = static_cast<int>(0.5 + wt_max * (1 << (precision + 1)));
    if (next >= (1 << 15)) break;
  }
  aw.precision = precision;
  aw.weights.resize(wd.size());
  for (size_t k = 0; k < wd.size(); ++k) {
    const double v = wd[k] * (1 << precision);
    aw.weights[k] = static_cast<int16_t>(v < 0 ? static_cast<int>(-0.5 + v) : static_cast<int>(0.5 + v));
  }
  return aw;
}

Image ResizeBicubicAntialias(const Image& src, ImageSize size) {
  const int64_t height = size.height, width = size.width;
  Q3VL_CHECK(src.height >= 1 && src.width >= 1) << "empty image";
  Q3VL_CHECK(height >= 1 && width >= 1) << "bad target " << height << "x" << width;
  if (width == src.width && height == src.height) return src;
  if (width == src.width) return ResizeVertical(src, height);
  Image horizontal = ResizeHorizontal(src, width);
  if (height == src.height) return horizontal;
  return ResizeVertical(horizontal, height);
}

}  // namespace q3vl::model
