// Element mode's fp32 kernels (D a multiple of 8): every element of an id's row is its
// own hashed buffer element, D cache lines apart, so the kernels work on each distinct id
// of a range once when ids repeat (DistinctIds) and gather / scatter 8 columns at a time:
// with AVX-512 gathers, scatters and the vectorised hashes of vec_hash.h, else with the
// same steps one lane at a time (the AVX2 and default builds).
#pragma once
#include <cstdint>
#include <vector>

#include "hashed_addressing.h"

namespace torchrec_ext {
namespace hashed_cpu {

// 8 columns of fp32: the element kernels' unit.
#if TRX_VEC_HASH
using F8 = __m256;
inline F8 f8_load(const float* p) { return _mm256_loadu_ps(p); }
inline void f8_store(float* p, F8 v) { _mm256_storeu_ps(p, v); }
inline F8 f8_set1(float x) { return _mm256_set1_ps(x); }
inline F8 f8_mul(F8 a, F8 b) { return _mm256_mul_ps(a, b); }
inline F8 f8_fma(F8 a, F8 b, F8 c) { return _mm256_fmadd_ps(a, b, c); }
// w's elements at addr[0 .. 7], negated in the lanes set in `neg`.
inline F8 f8_gather(const float* w, const int64_t* addr, uint8_t neg) {
  const __m256 v = _mm512_i64gather_ps(_mm512_loadu_si512(addr), w, 4);
  return _mm256_mask_sub_ps(v, neg, _mm256_setzero_ps(), v);
}
#else
struct F8 {
  float v[8];
};
inline F8 f8_load(const float* p) {
  F8 r;
  for (int k = 0; k < 8; ++k) r.v[k] = p[k];
  return r;
}
inline void f8_store(float* p, F8 a) {
  for (int k = 0; k < 8; ++k) p[k] = a.v[k];
}
inline F8 f8_set1(float x) {
  F8 r;
  for (int k = 0; k < 8; ++k) r.v[k] = x;
  return r;
}
inline F8 f8_mul(F8 a, F8 b) {
  for (int k = 0; k < 8; ++k) a.v[k] *= b.v[k];
  return a;
}
inline F8 f8_fma(F8 a, F8 b, F8 c) {
  for (int k = 0; k < 8; ++k) c.v[k] += a.v[k] * b.v[k];
  return c;
}
inline F8 f8_gather(const float* w, const int64_t* addr, uint8_t neg) {
  F8 r;
  for (int k = 0; k < 8; ++k) r.v[k] = (neg >> k) & 1 ? -w[addr[k]] : w[addr[k]];
  return r;
}
#endif

// dst's elements at addr[8g .. 8g + 7] (columns 8g ..) += v, negated in the lanes of
// `neg`, in the columns [c_lo, c_hi) only. The 8 lanes are 8 different columns, so never
// the same element: a gather, an add and a masked scatter with AVX-512.
inline void add_columns8(float* dst, const int64_t* addr, uint8_t neg, F8 v, int64_t g,
                         int64_t c_lo, int64_t c_hi) {
#if TRX_VEC_HASH
  const __m256i col = _mm256_add_epi32(_mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0),
                                       _mm256_set1_epi32(static_cast<int>(8 * g)));
  const __mmask8 mask = _mm256_cmpge_epi32_mask(col, _mm256_set1_epi32(static_cast<int>(c_lo))) &
                        _mm256_cmplt_epi32_mask(col, _mm256_set1_epi32(static_cast<int>(c_hi)));
  const __m512i at = _mm512_loadu_si512(addr + 8 * g);
  v = _mm256_mask_sub_ps(v, neg, _mm256_setzero_ps(), v);
  const __m256 cur = _mm512_mask_i64gather_ps(_mm256_setzero_ps(), mask, at, dst, 4);
  _mm512_mask_i64scatter_ps(dst, mask, at, _mm256_add_ps(cur, v), 4);
#else
  const int64_t k0 = std::max<int64_t>(c_lo - 8 * g, 0), k1 = std::min<int64_t>(c_hi - 8 * g, 8);
  for (int64_t k = k0; k < k1; ++k) dst[addr[8 * g + k]] += (neg >> k) & 1 ? -v.v[k] : v.v[k];
#endif
}

// Element mode, fp32, D a multiple of 8: windowed's twin with buffer elements instead of
// segments; visit(i, addresses of id i's D elements, their sign masks per 8 columns).
template <typename Visit>
inline void elements_windowed(const Addresser& A, const float* w, const int64_t* idx, int64_t i0,
                              int64_t i1, Visit&& visit) {
  const int64_t D = A.D, G = D / 8, per = std::max<int64_t>(1, kWindowSegments / D);
  std::vector<int64_t> addr(per * D);
  std::vector<uint8_t> neg(per * G);
  for (int64_t w0 = i0; w0 < i1; w0 += per) {
    const int64_t w1 = std::min(i1, w0 + per);
    for (int64_t i = w0; i < w1; ++i)
      A.element_addresses(idx[i], 0, G, w, &addr[(i - w0) * D], &neg[(i - w0) * G]);
    for (int64_t i = w0; i < w1; ++i) visit(i, &addr[(i - w0) * D], &neg[(i - w0) * G]);
  }
}

// The distinct ids of a range, in first-seen order, and each position's index among
// them. Element mode reads and writes an id's row as D separate cache lines, so the
// element kernels work on each distinct id once when ids repeat (see kMostDistinct).
// Open addressing with linear probing over at least twice as many slots as ids; ids are
// non-negative (checked), so -1 marks a free slot. The storage is per thread and kept
// between calls, so a call allocates nothing once warm.
class DistinctIds {
 public:
  // Indexes positions ids[0 .. n).
  void index(const int64_t* ids, int64_t n) {
    int64_t cap = 16;
    while (cap < 2 * n) cap <<= 1;
    shift_ = 64 - __builtin_ctzll(static_cast<uint64_t>(cap));
    mask_ = cap - 1;
    slots_.assign(cap, Slot{-1, 0});
    ids_.clear();
    which_.resize(n);
    for (int64_t k = 0; k < n; ++k) which_[k] = add(ids[k]);
  }
  const int64_t* ids() const { return ids_.data(); }
  int64_t size() const { return static_cast<int64_t>(ids_.size()); }
  // Position k's index among the distinct ids.
  int64_t which(int64_t k) const { return which_[k]; }

 private:
  struct Slot {
    int64_t id;
    int64_t index;
  };
  int64_t add(int64_t id) {
    int64_t s = static_cast<int64_t>((static_cast<uint64_t>(id) * 0x9E3779B97F4A7C15ULL) >> shift_);
    while (true) {
      Slot& slot = slots_[s];
      if (slot.id == id) return slot.index;
      if (slot.id < 0) {
        slot = Slot{id, size()};
        ids_.push_back(id);
        return slot.index;
      }
      s = (s + 1) & mask_;
    }
  }
  std::vector<Slot> slots_;
  std::vector<int64_t> ids_;
  std::vector<int64_t> which_;
  int shift_ = 60;
  int64_t mask_ = 15;
};

// The element kernels work on distinct ids when at most this share of a range's ids is
// distinct. With most ids distinct, the dedup and its scratch only add work: uniform ids
// (97% distinct) made the update 25% slower; the benchmark's power law has 37-42%.
constexpr double kMostDistinct = 0.5;

// forward_range for element mode, fp32, D a multiple of 8. With few distinct ids, their
// rows are gathered once, with their signs, into a dense scratch (D floats per id) and
// each bag sums its ids' scratch rows; else every position is gathered into its bag.
inline void forward_elements(const float* w, const Addresser& A, const int64_t* idx,
                             const int64_t* off, const float* psw, int64_t b0, int64_t b1,
                             bool mean, BagRows<float> out) {
  const int64_t D = A.D, G = D / 8, i0 = off[b0], n = off[b1] - i0;
  thread_local DistinctIds distinct;
  thread_local std::vector<float> rows;
  distinct.index(idx + i0, n);
  std::fill(out[b0], out[b1], 0.0f);
  auto gather = [&](const int64_t* addr, const uint8_t* neg, int64_t g) {
    return f8_gather(w, addr + 8 * g, neg[g]);
  };
  if (distinct.size() > kMostDistinct * n) {
    int64_t b = b0;
    elements_windowed(A, w, idx, i0, off[b1],
                      [&](int64_t i, const int64_t* addr, const uint8_t* neg) {
                        while (i >= off[b + 1]) ++b;
                        const F8 pw = f8_set1(psw ? psw[i] : 1.0f);
                        float* o = out[b];
                        for (int64_t g = 0; g < G; ++g)
                          f8_store(o + 8 * g, f8_fma(pw, gather(addr, neg, g), f8_load(o + 8 * g)));
                      });
  } else {
    rows.resize(distinct.size() * D);
    elements_windowed(A, w, distinct.ids(), 0, distinct.size(),
                      [&](int64_t u, const int64_t* addr, const uint8_t* neg) {
                        for (int64_t g = 0; g < G; ++g)
                          f8_store(&rows[u * D + 8 * g], gather(addr, neg, g));
                      });
    for (int64_t b = b0; b < b1; ++b) {
      float* o = out[b];
      for (int64_t i = off[b]; i < off[b + 1]; ++i) {
        const float pw = psw ? psw[i] : 1.0f;
        const float* r = &rows[distinct.which(i - i0) * D];
        for (int64_t j = 0; j < D; ++j) o[j] += pw * r[j];
      }
    }
  }
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t len = off[b + 1] - off[b];
    if (!mean || len == 0) continue;
    const float scale = 1.0f / static_cast<float>(len);
    for (int64_t j = 0; j < D; ++j) out[b][j] *= scale;
  }
}

// backward_range for element mode, fp32, D a multiple of 8. With few distinct ids, each
// distinct id's gradient (its columns in units [u0, u1)) is summed densely first, then
// its elements are read, added to and written back once; else each position's gradient
// is added to its elements in windows.
inline void backward_elements(BagRows<const float> go, const Addresser& A, const int64_t* idx,
                              const int64_t* off, const float* psw, int64_t b0, int64_t b1,
                              bool mean, int64_t u0, int64_t u1, double alpha, float* dst) {
  const int64_t D = A.D, G = D / 8, per = std::max<int64_t>(1, kWindowSegments / D),
                n = off[b1] - off[b0];
  thread_local DistinctIds distinct;
  distinct.index(idx + off[b0], n);
  std::vector<int64_t> addr(per * D);
  std::vector<uint8_t> neg(per * G);
  if (distinct.size() > kMostDistinct * n) {
    struct Item {
      const float* g;  // the bag's gradient row
      float coef;
      int64_t c_lo, c_hi;  // the id's columns in this thread's units
    };
    std::vector<Item> items;
    items.reserve(per);
    auto flush = [&] {
      for (size_t k = 0; k < items.size(); ++k) {
        const Item& it = items[k];
        const F8 coef = f8_set1(it.coef);
        for (int64_t g = it.c_lo / 8; g * 8 < it.c_hi; ++g) {
          add_columns8(dst, &addr[k * D], neg[k * G + g], f8_mul(coef, f8_load(it.g + 8 * g)), g,
                       it.c_lo, it.c_hi);
        }
      }
      items.clear();
    };
    ids_in_units(
        A, idx, off, b0, b1, mean, u0, u1, alpha,
        [&](int64_t b, int64_t i, double scale, int64_t c_lo, int64_t c_hi) {
          const int64_t k = static_cast<int64_t>(items.size());
          A.element_addresses(idx[i], c_lo / 8, (c_hi + 7) / 8, dst, &addr[k * D], &neg[k * G]);
          items.push_back({go[b], static_cast<float>(scale * (psw ? psw[i] : 1.0)), c_lo, c_hi});
          if (static_cast<int64_t>(items.size()) == per) flush();
        });
    flush();
    return;
  }
  thread_local std::vector<float> sums;                        // D per distinct id
  thread_local std::vector<std::pair<int64_t, int64_t>> cols;  // its columns in these units
  sums.assign(distinct.size() * D, 0.0f);
  cols.assign(distinct.size(), {0, 0});  // (0, 0): not in these units
  ids_in_units(A, idx, off, b0, b1, mean, u0, u1, alpha,
               [&](int64_t b, int64_t i, double scale, int64_t c_lo, int64_t c_hi) {
                 const int64_t u = distinct.which(i - off[b0]);
                 cols[u] = {
                     c_lo,
                     c_hi};  // an id's region, so its columns here, is the same at every position
                 const float coef = static_cast<float>(scale * (psw ? psw[i] : 1.0));
                 float* sum = &sums[u * D];
                 const float* g = go[b];
                 for (int64_t j = c_lo; j < c_hi; ++j) sum[j] += coef * g[j];
               });
  for (int64_t w0 = 0; w0 < distinct.size(); w0 += per) {
    const int64_t w1 = std::min(distinct.size(), w0 + per);
    for (int64_t u = w0; u < w1; ++u) {
      A.element_addresses(distinct.ids()[u], cols[u].first / 8, (cols[u].second + 7) / 8, dst,
                          &addr[(u - w0) * D], &neg[(u - w0) * G]);
    }
    for (int64_t u = w0; u < w1; ++u) {
      const auto [c_lo, c_hi] = cols[u];
      for (int64_t g = c_lo / 8; g * 8 < c_hi; ++g) {
        add_columns8(dst, &addr[(u - w0) * D], neg[(u - w0) * G + g], f8_load(&sums[u * D + 8 * g]),
                     g, c_lo, c_hi);
      }
    }
  }
}

}  // namespace hashed_cpu
}  // namespace torchrec_ext
