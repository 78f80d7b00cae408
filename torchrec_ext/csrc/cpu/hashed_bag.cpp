// CPU kernels of the hashed-table ops: parallel over bags in the forward pass
// and over buffer regions in the backward pass (each thread owns whole regions,
// so gradients accumulate without atomics or a [nnz, dim] index tensor).
//
// Speed: a kernel first works out where a window of ids sits in the buffer (the
// hashes, with the layout's divisions done as multiplications, see fast_div.h)
// and prefetches those lines, then does the arithmetic; the random reads of a
// window overlap instead of waiting one after another. The backward pass takes a
// destination and a factor, so one kernel writes a dense gradient (dst = zeros,
// alpha = 1) or applies SGD to the buffer in place (dst = weight, alpha = -lr),
// which spares a gradient the size of the buffer and a pass over all of it. The fused
// training path keeps block mode's positions from the forward pass (one packed word
// per block, see Addresser::pack) so that the backward pass reads them instead of
// hashing every id again. Element mode (fp32) reads and writes each distinct id of a
// range once, since its row is D cache lines apart (see DistinctIds).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <type_traits>
#include <vector>

#include "../check_inputs.h"
#include "../fast_div.h"
#include "../hashed_layout.h"
#include "prefetch.h"
#include "vec_hash.h"

namespace torchrec_ext {
namespace {

// Float accumulation for float tables (as FBGEMM), double for double (the tests' reference).
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Where one column region of one id sits. Element mode: the element at `a`. Block
// mode: `len1` elements from `a`, then Z - len1 from `b` (a chunk that runs past its
// slot's end continues in the next slot, wrapping to the region's first slot).
struct Segment {
  int64_t a;
  int64_t b;
  int64_t len1;
  double sign;
};

// Segments kept per window: enough ids to overlap many cache misses, few enough that
// what they prefetch is still in L1/L2 when it is read (512 measured 5% faster than 2048
// on the default benchmark's forward pass).
constexpr int64_t kWindowSegments = 512;

// The layout, with its divisions precomputed.
struct Addresser {
  HashedLayout L;
  int64_t D, Z, C, first_region;
  FastDiv per_region, slots, starts, chunk;

  bool z_pow2;  // Z is a power of two: a position's column within its block is a mask
#if TRX_VEC_HASH
  bool vec;           // block mode, with divisors DivX8 takes: locate8 serves 8 ids at once
  bool vec_elements;  // element mode, likewise: elements8 serves 8 columns at once
  DivX8 v_region, v_starts, v_chunk, v_slots;
#endif

  Addresser(const HashedLayout& layout, int64_t dim)
      : L(layout), D(dim), Z(layout.chunk), C(dim / layout.chunk),
        first_region(layout.first_region()), per_region(layout.rows_per_region),
        slots(layout.slots), starts(layout.starts), chunk(layout.chunk),
        z_pow2((layout.chunk & (layout.chunk - 1)) == 0) {
#if TRX_VEC_HASH
    constexpr auto kMax = static_cast<int64_t>(DivX8::kMaxDivisor);
    vec = L.mode == 1 && L.starts > 0 && L.rows_per_region < kMax && L.starts < kMax && Z < kMax;
    if (vec) {
      v_region = DivX8(L.rows_per_region);
      v_starts = DivX8(L.starts);
      v_chunk = DivX8(Z);
    }
    vec_elements = L.mode == 0 && L.slots < kMax;
    if (vec_elements) v_slots = DivX8(L.slots);
#endif
  }

  // Prefetches the cache lines a block-mode segment (a, len1, b) covers in `w`: 2, or 3
  // when the block continues in the next slot. Takes values, not a Segment, so the
  // callers' registers serve (reading them back through a Segment* measured slower).
  template <typename scalar_t>
  void prefetch(const scalar_t* w, int64_t a, int64_t len1, int64_t b) const {
    prefetch_l2(w + a);
    prefetch_l2(w + a + len1 - 1);
    if (len1 < Z) prefetch_l2(w + b);
  }

  int64_t region(int64_t local_id) const {
    return static_cast<int64_t>(per_region.div(static_cast<uint64_t>(local_id + L.id_offset))) -
           first_region;
  }

  // Segments of column regions [c0, c1) of a shard-local id, into seg[0 .. c1 - c0);
  // prefetches what they cover in `w`.
  template <typename scalar_t>
  void locate(int64_t local_id, int64_t c0, int64_t c1, const scalar_t* w, Segment* seg) const {
    const int64_t base = region(local_id) * L.slots;
    const uint64_t h0 = id_hash(local_id + L.id_offset, L.seed);
    const int64_t col0 = L.col_offset / Z;
    int64_t c = c0;
#if TRX_VEC_HASH
    if (vec_elements) {
      for (; c + 8 <= c1; c += 8, seg += 8) elements8(h0, base, col0 + c, c, w, seg);
    }
#endif
    for (; c < c1; ++c, ++seg) {
      const uint64_t h = col_hash(h0, col0 + c);
      seg->sign = hash_sign(h, L.is_signed);
      if (L.mode == 0) {
        seg->a = (base + static_cast<int64_t>(slots.mod(h & kLow63))) * D + c;
        seg->len1 = 1;
        seg->b = seg->a;
        prefetch_l2(w + seg->a);
      } else {
        const int64_t f = static_cast<int64_t>(starts.mod(h & kLow63)) * L.align;
        const int64_t slot = static_cast<int64_t>(chunk.div(f));
        const int64_t col = f - slot * Z;
        const int64_t a = (base + slot) * D + c * Z + col;
        const int64_t b = (base + (slot + 1 == L.slots ? 0 : slot + 1)) * D + c * Z;
        seg->a = a;
        seg->len1 = Z - col;
        seg->b = b;
        prefetch(w, a, Z - col, b);
      }
    }
  }

#if TRX_VEC_HASH
  // Element mode: the segments of columns c .. c + 7 of one id (hash h0, region rows
  // from `base`; gcol is column c's global index), the arithmetic 8 lanes wide.
  __m512i element_addr8(uint64_t h0, int64_t base, int64_t gcol, int64_t c, __mmask8& negative) const {
    auto all = [](int64_t v) { return _mm512_set1_epi64(v); };
    const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i salt = _mm512_add_epi64(
        _mm512_mullo_epi64(_mm512_add_epi64(all(gcol), lane), all(static_cast<int64_t>(kColMul))),
        all(static_cast<int64_t>(kColAdd)));
    const __m512i h = fmix64_x8(_mm512_xor_si512(all(static_cast<int64_t>(h0)), salt));
    negative = L.is_signed ? _mm512_movepi64_mask(h) : 0;
    __m512i slot, unused;
    v_slots.divmod(_mm512_and_si512(h, all(static_cast<int64_t>(kLow63))), unused, slot);
    return _mm512_add_epi64(_mm512_mullo_epi64(_mm512_add_epi64(all(base), slot), all(D)),
                            _mm512_add_epi64(all(c), lane));
  }

  template <typename scalar_t>
  void elements8(uint64_t h0, int64_t base, int64_t gcol, int64_t c, const scalar_t* w,
                 Segment* seg) const {
    __mmask8 negative;
    alignas(64) int64_t a[8];
    _mm512_store_si512(a, element_addr8(h0, base, gcol, c, negative));
    for (int k = 0; k < 8; ++k) {
      seg[k] = Segment{a[k], a[k], 1, (negative >> k) & 1 ? -1.0 : 1.0};
      prefetch_l2(w + a[k]);
    }
  }

  // Element mode, D a multiple of 8: the buffer elements of column groups [g0, g1) of an id
  // (group g: columns 8g .. 8g + 7) into addr[8g ..] and their sign masks into neg[g];
  // prefetches them.
  void element_addresses(int64_t local_id, int64_t g0, int64_t g1, const float* w, int64_t* addr,
                         __mmask8* neg) const {
    const int64_t base = region(local_id) * L.slots;
    const uint64_t h0 = id_hash(local_id + L.id_offset, L.seed);
    const int64_t col0 = L.col_offset;
    for (int64_t g = g0; g < g1; ++g) {
      _mm512_storeu_si512(addr + 8 * g, element_addr8(h0, base, col0 + 8 * g, 8 * g, neg[g]));
      for (int k = 0; k < 8; ++k) prefetch_l2(w + addr[8 * g + k]);
    }
  }

  // Block mode: locate(ids[k], 0, C, w, seg + k * C) for k < 8, the arithmetic 8 lanes wide.
  template <typename scalar_t>
  void locate8(const int64_t* ids, const scalar_t* w, Segment* seg) const {
    auto all = [](int64_t v) { return _mm512_set1_epi64(v); };
    const __m512i gid = _mm512_add_epi64(_mm512_loadu_si512(ids), all(L.id_offset));
    __m512i region, unused;
    v_region.divmod(gid, region, unused);
    const __m512i base = _mm512_mullo_epi64(_mm512_sub_epi64(region, all(first_region)), all(L.slots));
    const auto seed_mix = static_cast<uint64_t>(L.seed) * kSeedMul;
    const __m512i h0 = fmix64_x8(_mm512_xor_si512(gid, all(static_cast<int64_t>(seed_mix))));
    const int64_t col0 = L.col_offset / Z;
    const __m512i zshift = all(__builtin_ctzll(static_cast<uint64_t>(Z)));
    alignas(64) int64_t a[8], b[8], len1[8];
    for (int64_t c = 0; c < C; ++c) {
      const uint64_t salt = static_cast<uint64_t>(col0 + c) * kColMul + kColAdd;
      const __m512i h = fmix64_x8(_mm512_xor_si512(h0, all(static_cast<int64_t>(salt))));
      const __mmask8 negative = L.is_signed ? _mm512_movepi64_mask(h) : 0;
      __m512i q, f;
      v_starts.divmod(_mm512_and_si512(h, all(static_cast<int64_t>(kLow63))), q, f);
      f = _mm512_mullo_epi64(f, all(L.align));
      __m512i slot, col;
      if (z_pow2) {
        slot = _mm512_srlv_epi64(f, zshift);
        col = _mm512_and_si512(f, all(Z - 1));
      } else {
        v_chunk.divmod(f, slot, col);
      }
      const __m512i band = all(c * Z);
      _mm512_store_si512(a, _mm512_add_epi64(_mm512_mullo_epi64(_mm512_add_epi64(base, slot), all(D)),
                                             _mm512_add_epi64(band, col)));
      _mm512_store_si512(len1, _mm512_sub_epi64(all(Z), col));
      __m512i next = _mm512_add_epi64(slot, all(1));
      next = _mm512_mask_mov_epi64(next, _mm512_cmpeq_epi64_mask(next, all(L.slots)),
                                   _mm512_setzero_si512());
      _mm512_store_si512(b, _mm512_add_epi64(_mm512_mullo_epi64(_mm512_add_epi64(base, next), all(D)), band));
      for (int k = 0; k < 8; ++k) {
        Segment& sg = seg[k * C + c];
        sg.a = a[k];
        sg.b = b[k];
        sg.len1 = len1[k];
        sg.sign = (negative >> k) & 1 ? -1.0 : 1.0;
        prefetch(w, a[k], len1[k], b[k]);
      }
    }
  }
#endif

  // A block-mode segment as one word, for the positions cache: bits 0..61 hold `a`,
  // bit 62 says the block's second part wraps to the region's first slot, bit 63 is
  // the sign. (A buffer of 2^62 elements is far beyond any memory.)
  static constexpr uint64_t kSignBit = 1ULL << 63, kWrapBit = 1ULL << 62, kPosMask = kWrapBit - 1;
  static uint64_t pack(const Segment& s) {
    // b < a exactly when the next slot wrapped to the region's first (or when the
    // block has no second part, where b is never read).
    return static_cast<uint64_t>(s.a) | (s.b < s.a ? kWrapBit : 0) | (s.sign < 0 ? kSignBit : 0);
  }

  // pack's inverse; prefetches what the segment covers in `w`, as locate does. False
  // (and a segment of sign 0 at the buffer's start) for a word that is not a block of
  // a buffer of `numel` elements: a cache that is not this call's cannot reach
  // outside the buffer.
  template <typename scalar_t>
  bool unpack(uint64_t p, const scalar_t* w, int64_t numel, Segment* seg) const {
    seg->a = static_cast<int64_t>(p & kPosMask);
    // Z divides D, so a block's column offset is a's remainder modulo Z.
    const int64_t col = z_pow2 ? (seg->a & (Z - 1))
                               : static_cast<int64_t>(chunk.mod(static_cast<uint64_t>(seg->a)));
    seg->len1 = Z - col;
    const int64_t first = seg->a - col;  // the block's first column in its slot's row
    seg->b = (p & kWrapBit) ? first - (L.slots - 1) * D : first + D;
    seg->sign = (p & kSignBit) ? -1.0 : 1.0;
    if (seg->a + seg->len1 > numel || (col && (seg->b < 0 || seg->b + col > numel))) {
      *seg = Segment{0, 0, Z, 0.0};
      return false;
    }
    prefetch(w, seg->a, seg->len1, seg->b);
    return true;
  }
};

// The positions cache of one table in a call: id i's packed segments are
// at[i * stride + c] (c < C). Null `at`: not kept (element mode, or not asked for).
struct Positions {
  uint64_t* at = nullptr;
  int64_t stride = 0;
  int64_t numel = 0;           // elements of the table's buffer (what unpack checks against)
  std::atomic<bool>* bad = nullptr;  // set when a word is not a block of the buffer
};

// Walks ids [i0, i1) in windows: finds (and prefetches) the segments of every id of a
// window into win[(i - w0) * C ..], then calls visit(i, segments of i) for each. The
// segments come from the positions cache when `from` holds it, else from the hashes;
// a `keep` that holds a cache is filled with them.
template <typename scalar_t, typename Visit>
inline void windowed(const Addresser& A, const scalar_t* w, const int64_t* idx, int64_t i0,
                     int64_t i1, std::vector<Segment>& win, Positions from, Positions keep,
                     Visit&& visit) {
  const int64_t C = A.C, per = std::max<int64_t>(1, kWindowSegments / C);
  win.resize(per * C);
  for (int64_t w0 = i0; w0 < i1; w0 += per) {
    const int64_t w1 = std::min(i1, w0 + per);
    int64_t i = w0;
    if (from.at) {
      for (; i < w1; ++i) {
        for (int64_t c = 0; c < C; ++c) {
          if (!A.unpack(from.at[i * from.stride + c], w, from.numel, &win[(i - w0) * C + c])) *from.bad = true;
        }
      }
    }
#if TRX_VEC_HASH
    if (A.vec) {
      for (; i + 8 <= w1; i += 8) A.locate8(idx + i, w, &win[(i - w0) * C]);
    }
#endif
    for (; i < w1; ++i) A.locate(idx[i], 0, C, w, &win[(i - w0) * C]);
    if (keep.at) {
      for (int64_t j = w0; j < w1; ++j) {
        for (int64_t c = 0; c < C; ++c) keep.at[j * keep.stride + c] = Addresser::pack(win[(j - w0) * C + c]);
      }
    }
    for (int64_t i = w0; i < w1; ++i) visit(i, &win[(i - w0) * C]);
  }
}

// A block-mode chunk's two segments as one vector operation per 16 columns (fp32,
// AVX-512): lane t reads from the first segment if t < len1, else from the second.
// Masked loads and stores never touch the lanes they mask out, so nothing outside the
// two segments is read or written. Falls back to two plain loops elsewhere.
#if defined(__AVX512F__)
// Lanes q .. q + 15 of a chunk that lie in its first segment (the first len1 columns).
inline __mmask16 first_segment_lanes(int64_t len1, int64_t q) {
  return static_cast<__mmask16>((1u << std::clamp<int64_t>(len1 - q, 0, 16)) - 1u);
}
#endif

template <typename scalar_t>
inline bool chunk_fma(float* acc, float s, const scalar_t* w, const Segment& sg, int64_t Z) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (Z % 16 == 0) {
      const __m512 vs = _mm512_set1_ps(s);
      for (int64_t q = 0; q < Z; q += 16) {
        const __mmask16 m1 = first_segment_lanes(sg.len1, q);
        const __m512 v = _mm512_mask_loadu_ps(_mm512_maskz_loadu_ps(m1, w + sg.a + q),
                                              static_cast<__mmask16>(~m1), w + sg.b + q - sg.len1);
        _mm512_storeu_ps(acc + q, _mm512_fmadd_ps(vs, v, _mm512_loadu_ps(acc + q)));
      }
      return true;
    }
  }
#endif
  return false;
}

// dst's chunk segments += s * g[0 .. Z), the scatter twin of chunk_fma.
template <typename scalar_t>
inline bool chunk_axpy(scalar_t* dst, float s, const scalar_t* g, const Segment& sg, int64_t Z) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (Z % 16 == 0) {
      const __m512 vs = _mm512_set1_ps(s);
      for (int64_t q = 0; q < Z; q += 16) {
        const __mmask16 m1 = first_segment_lanes(sg.len1, q), m2 = static_cast<__mmask16>(~m1);
        const __m512 vg = _mm512_mul_ps(vs, _mm512_loadu_ps(g + q));
        float* p1 = dst + sg.a + q;
        float* p2 = dst + sg.b + q - sg.len1;
        if (m1) _mm512_mask_storeu_ps(p1, m1, _mm512_add_ps(_mm512_maskz_loadu_ps(m1, p1), vg));
        if (m2) _mm512_mask_storeu_ps(p2, m2, _mm512_add_ps(_mm512_maskz_loadu_ps(m2, p2), vg));
      }
      return true;
    }
  }
#endif
  return false;
}

// The backward pass's walk: fn(b, i, scale, c_lo, c_hi) for each id i (in bag b) of bags
// [b0, b1) whose column regions [c_lo, c_hi) of its row region are units in [u0, u1);
// scale is alpha, over the bag's size for MEAN.
template <typename Fn>
inline void ids_in_units(const Addresser& A, const int64_t* idx, const int64_t* off, int64_t b0, int64_t b1,
                         bool mean, int64_t u0, int64_t u1, double alpha, Fn&& fn) {
  const int64_t C = A.C;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t s = off[b], e = off[b + 1];
    if (s == e) continue;
    const double scale = alpha * (mean ? 1.0 / static_cast<double>(e - s) : 1.0);
    for (int64_t i = s; i < e; ++i) {
      const int64_t r = A.region(idx[i]);
      const int64_t c_lo = std::max<int64_t>(u0 - r * C, 0), c_hi = std::min<int64_t>(u1 - r * C, C);
      if (c_lo < c_hi) fn(b, i, scale, c_lo, c_hi);
    }
  }
}

#if TRX_VEC_HASH
// Element mode, fp32, D a multiple of 8: windowed's twin with buffer elements instead of
// segments; visit(i, addresses of id i's D elements, their sign masks per 8 columns).
template <typename Visit>
inline void elements_windowed(const Addresser& A, const float* w, const int64_t* idx, int64_t i0,
                              int64_t i1, Visit&& visit) {
  const int64_t D = A.D, G = D / 8, per = std::max<int64_t>(1, kWindowSegments / D);
  std::vector<int64_t> addr(per * D);
  std::vector<__mmask8> neg(per * G);
  for (int64_t w0 = i0; w0 < i1; w0 += per) {
    const int64_t w1 = std::min(i1, w0 + per);
    for (int64_t i = w0; i < w1; ++i) A.element_addresses(idx[i], 0, G, w, &addr[(i - w0) * D], &neg[(i - w0) * G]);
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
inline void forward_elements(const float* w, const Addresser& A, const int64_t* idx, const int64_t* off,
                             const float* psw, int64_t b0, int64_t b1, bool mean, float* out) {
  const int64_t D = A.D, G = D / 8, i0 = off[b0], n = off[b1] - i0;
  thread_local DistinctIds distinct;
  thread_local std::vector<float> rows;
  distinct.index(idx + i0, n);
  std::fill(out + b0 * D, out + b1 * D, 0.0f);
  auto gather = [&](const int64_t* addr, const __mmask8* neg, int64_t g) {
    const __m256 v = _mm512_i64gather_ps(_mm512_loadu_si512(addr + 8 * g), w, 4);
    return _mm256_mask_sub_ps(v, neg[g], _mm256_setzero_ps(), v);
  };
  if (distinct.size() > kMostDistinct * n) {
    int64_t b = b0;
    elements_windowed(A, w, idx, i0, off[b1], [&](int64_t i, const int64_t* addr, const __mmask8* neg) {
      while (i >= off[b + 1]) ++b;
      const __m256 pw = _mm256_set1_ps(psw ? psw[i] : 1.0f);
      float* o = out + b * D;
      for (int64_t g = 0; g < G; ++g) {
        _mm256_storeu_ps(o + 8 * g, _mm256_fmadd_ps(pw, gather(addr, neg, g), _mm256_loadu_ps(o + 8 * g)));
      }
    });
  } else {
    rows.resize(distinct.size() * D);
    elements_windowed(A, w, distinct.ids(), 0, distinct.size(), [&](int64_t u, const int64_t* addr, const __mmask8* neg) {
      for (int64_t g = 0; g < G; ++g) _mm256_storeu_ps(&rows[u * D + 8 * g], gather(addr, neg, g));
    });
    for (int64_t b = b0; b < b1; ++b) {
      float* o = out + b * D;
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
    for (int64_t j = 0; j < D; ++j) out[b * D + j] *= scale;
  }
}

// dst's elements at addr[8g .. 8g + 7] (columns 8g ..) += v, negated in the lanes of
// `neg`, in the columns [c_lo, c_hi) only: a gather, an add and a masked scatter (the 8
// lanes are 8 different columns, so never the same element).
inline void add_columns8(float* dst, const int64_t* addr, __mmask8 neg, __m256 v, int64_t g, int64_t c_lo,
                         int64_t c_hi) {
  const __m256i col = _mm256_add_epi32(_mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0),
                                       _mm256_set1_epi32(static_cast<int>(8 * g)));
  const __mmask8 mask = _mm256_cmpge_epi32_mask(col, _mm256_set1_epi32(static_cast<int>(c_lo))) &
                        _mm256_cmplt_epi32_mask(col, _mm256_set1_epi32(static_cast<int>(c_hi)));
  const __m512i at = _mm512_loadu_si512(addr + 8 * g);
  v = _mm256_mask_sub_ps(v, neg, _mm256_setzero_ps(), v);
  const __m256 cur = _mm512_mask_i64gather_ps(_mm256_setzero_ps(), mask, at, dst, 4);
  _mm512_mask_i64scatter_ps(dst, mask, at, _mm256_add_ps(cur, v), 4);
}

// backward_range for element mode, fp32, D a multiple of 8. With few distinct ids, each
// distinct id's gradient (its columns in units [u0, u1)) is summed densely first, then
// its elements are read, added to and written back once; else each position's gradient
// is added to its elements in windows.
inline void backward_elements(const float* go, const Addresser& A, const int64_t* idx, const int64_t* off,
                              const float* psw, int64_t b0, int64_t b1, bool mean, int64_t u0, int64_t u1,
                              double alpha, float* dst) {
  const int64_t D = A.D, G = D / 8, per = std::max<int64_t>(1, kWindowSegments / D), n = off[b1] - off[b0];
  thread_local DistinctIds distinct;
  distinct.index(idx + off[b0], n);
  std::vector<int64_t> addr(per * D);
  std::vector<__mmask8> neg(per * G);
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
        const __m256 coef = _mm256_set1_ps(it.coef);
        for (int64_t g = it.c_lo / 8; g * 8 < it.c_hi; ++g) {
          add_columns8(dst, &addr[k * D], neg[k * G + g], _mm256_mul_ps(coef, _mm256_loadu_ps(it.g + 8 * g)), g,
                       it.c_lo, it.c_hi);
        }
      }
      items.clear();
    };
    ids_in_units(A, idx, off, b0, b1, mean, u0, u1, alpha,
                 [&](int64_t b, int64_t i, double scale, int64_t c_lo, int64_t c_hi) {
      const int64_t k = static_cast<int64_t>(items.size());
      A.element_addresses(idx[i], c_lo / 8, (c_hi + 7) / 8, dst, &addr[k * D], &neg[k * G]);
      items.push_back({go + b * D, static_cast<float>(scale * (psw ? psw[i] : 1.0)), c_lo, c_hi});
      if (static_cast<int64_t>(items.size()) == per) flush();
    });
    flush();
    return;
  }
  thread_local std::vector<float> sums;                         // D per distinct id
  thread_local std::vector<std::pair<int64_t, int64_t>> cols;  // its columns in these units
  sums.assign(distinct.size() * D, 0.0f);
  cols.assign(distinct.size(), {0, 0});  // (0, 0): not in these units
  ids_in_units(A, idx, off, b0, b1, mean, u0, u1, alpha,
               [&](int64_t b, int64_t i, double scale, int64_t c_lo, int64_t c_hi) {
    const int64_t u = distinct.which(i - off[b0]);
    cols[u] = {c_lo, c_hi};  // an id's region, so its columns here, is the same at every position
    const float coef = static_cast<float>(scale * (psw ? psw[i] : 1.0));
    float* sum = &sums[u * D];
    const float* g = go + b * D;
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
        add_columns8(dst, &addr[(u - w0) * D], neg[(u - w0) * G + g], _mm256_loadu_ps(&sums[u * D + 8 * g]), g,
                     c_lo, c_hi);
      }
    }
  }
}
#endif

// Bags [b0, b1) of one table (ids off[b0] .. off[b1]); bag b's row is out[b * D].
template <typename scalar_t>
void forward_range(const scalar_t* w, const Addresser& A, const int64_t* idx,
                   const int64_t* off, const float* psw, int64_t b0, int64_t b1, bool mean,
                   Positions keep, scalar_t* out) {
  using acc_t = acc_type<scalar_t>;
  const int64_t D = A.D, Z = A.Z, C = A.C;
#if TRX_VEC_HASH
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (A.vec_elements && D % 8 == 0) {
      forward_elements(w, A, idx, off, psw, b0, b1, mean, out);
      return;
    }
  }
#endif
  std::vector<acc_t> acc(D);
  std::vector<Segment> win;
  int64_t b = b0 - 1, bag_end = off[b0];
  auto finish = [&](int64_t bag) {
    const int64_t n = off[bag + 1] - off[bag];
    const acc_t scale = (mean && n > 0) ? acc_t(1) / static_cast<acc_t>(n) : acc_t(1);
    for (int64_t j = 0; j < D; ++j) out[bag * D + j] = static_cast<scalar_t>(acc[j] * scale);
    std::fill(acc.begin(), acc.end(), acc_t(0));
  };
  auto enter = [&](int64_t i) {  // id i's weight, after writing the bags the walk passed
    while (i >= bag_end) {  // bags in order; empty ones are written as the walk passes them
      if (b >= b0) finish(b);
      ++b;
      bag_end = off[b + 1];
    }
    return psw ? static_cast<acc_t>(psw[i]) : acc_t(1);
  };
  auto add_segments = [&](int64_t i, const Segment* seg) {
    const acc_t pw = enter(i);
    if (A.L.mode == 0) {
      for (int64_t j = 0; j < D; ++j) acc[j] += pw * static_cast<acc_t>(seg[j].sign) * static_cast<acc_t>(w[seg[j].a]);
    } else {
      for (int64_t c = 0; c < C; ++c) {
        const acc_t s = pw * static_cast<acc_t>(seg[c].sign);
        acc_t* a = acc.data() + c * Z;
        if constexpr (std::is_same_v<acc_t, float>) {
          if (chunk_fma(a, s, w, seg[c], Z)) continue;
        }
        const scalar_t* src = w + seg[c].a;
        const int64_t n1 = seg[c].len1;
        for (int64_t t = 0; t < n1; ++t) a[t] += s * static_cast<acc_t>(src[t]);
        src = w + seg[c].b;
        for (int64_t t = n1; t < Z; ++t) a[t] += s * static_cast<acc_t>(src[t - n1]);
      }
    }
  };
  windowed(A, w, idx, off[b0], off[b1], win, Positions{}, keep, add_segments);
  for (; b < b1; ++b) {  // the last non-empty bag and any empty ones after it
    if (b >= b0) finish(b);
  }
}

// dst += alpha * d(out)/d(weight) . grad_output over units [u0, u1) of one table (a
// unit is a (local row region, column region) pair): scans the table's bags
// [b0, b1) and applies the ids that fall in those units. Bag b's gradient row is
// go[b * D]. The segments come from the positions cache `from` when it holds one.
template <typename scalar_t>
void backward_range(const scalar_t* go, const Addresser& A, const int64_t* idx,
                    const int64_t* off, const float* psw, int64_t b0, int64_t b1, bool mean,
                    int64_t u0, int64_t u1, double alpha, Positions from, scalar_t* dst) {
  using acc_t = acc_type<scalar_t>;
  const int64_t D = A.D, Z = A.Z, C = A.C;
#if TRX_VEC_HASH
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (A.vec_elements && D % 8 == 0) {
      backward_elements(go, A, idx, off, psw, b0, b1, mean, u0, u1, alpha, dst);
      return;
    }
  }
#endif
  struct Job {
    Segment seg;
    const scalar_t* g;
    acc_t coef;
  };
  std::vector<Job> jobs;
  jobs.reserve(kWindowSegments + C);
  auto flush = [&] {
    for (const Job& j : jobs) {
      if (A.L.mode == 0) {
        dst[j.seg.a] += static_cast<scalar_t>(j.coef * static_cast<acc_t>(*j.g));
        continue;
      }
      if constexpr (std::is_same_v<acc_t, float>) {
        if (chunk_axpy(dst, j.coef, j.g, j.seg, Z)) continue;
      }
      const scalar_t s = static_cast<scalar_t>(j.coef);
      const int64_t n1 = j.seg.len1;
      scalar_t* d1 = dst + j.seg.a;
      for (int64_t t = 0; t < n1; ++t) d1[t] += s * j.g[t];
      scalar_t* d2 = dst + j.seg.b;
      for (int64_t t = n1; t < Z; ++t) d2[t - n1] += s * j.g[t];
    }
    jobs.clear();
  };
  std::vector<Segment> seg(C);
  ids_in_units(A, idx, off, b0, b1, mean, u0, u1, alpha,
               [&](int64_t b, int64_t i, double scale, int64_t c_lo, int64_t c_hi) {
    const double pw = scale * (psw ? psw[i] : 1.0);
    if (from.at) {
      for (int64_t c = c_lo; c < c_hi; ++c) {
        if (!A.unpack(from.at[i * from.stride + c], dst, from.numel, &seg[c - c_lo])) *from.bad = true;
      }
    } else {
      A.locate(idx[i], c_lo, c_hi, dst, seg.data());
    }
    for (int64_t c = c_lo; c < c_hi; ++c) {
      const Segment& sc = seg[c - c_lo];
      if (sc.sign == 0.0) continue;  // a word unpack refused: nothing is written
      jobs.push_back({sc, go + b * D + c * Z, static_cast<acc_t>(pw * sc.sign)});
    }
    if (static_cast<int64_t>(jobs.size()) >= kWindowSegments) flush();
  });
  flush();
}

// d(out[b]) / d(psw[i]) = scale * <grad_out[b], virtual row of id i>, bags [b0, b1).
template <typename scalar_t>
void psw_grad_range(const scalar_t* go, const scalar_t* w, const Addresser& A,
                    const int64_t* idx, const int64_t* off, int64_t b0, int64_t b1, bool mean,
                    Positions from, float* gpsw) {
  const int64_t D = A.D, Z = A.Z, C = A.C;
  std::vector<Segment> win;
  int64_t b = b0;
  windowed(A, w, idx, off[b0], off[b1], win, from, Positions{}, [&](int64_t i, const Segment* seg) {
    while (i >= off[b + 1]) ++b;
    const int64_t n = off[b + 1] - off[b];
    const double scale = mean ? 1.0 / static_cast<double>(n) : 1.0;
    const scalar_t* g = go + b * D;
    double dot = 0.0;
    if (A.L.mode == 0) {
      for (int64_t j = 0; j < D; ++j) dot += seg[j].sign * static_cast<double>(w[seg[j].a]) * g[j];
    } else {
      for (int64_t c = 0; c < C; ++c) {
        double part = 0.0;
        const int64_t n1 = seg[c].len1;
        for (int64_t t = 0; t < n1; ++t) part += static_cast<double>(w[seg[c].a + t]) * g[c * Z + t];
        for (int64_t t = n1; t < Z; ++t) part += static_cast<double>(w[seg[c].b + t - n1]) * g[c * Z + t];
        dot += seg[c].sign * part;
      }
    }
    gpsw[i] = static_cast<float>(dot * scale);
  });
}

std::optional<at::Tensor> float_weights(const std::optional<at::Tensor>& psw) {
  if (!psw) return std::nullopt;
  return psw->contiguous().to(at::kFloat);
}

// One table of a batched call: bags [bag0, bag1) of the shared indices and offsets.
struct Table {
  Addresser A;
  int64_t bag0, bag1;
  bool mean;
  int64_t units;  // (row region, column region) pairs of its buffer
  int64_t numel;  // elements of its buffer
};

// Table t's view of a call's positions cache (checked by hashed_positions_kept):
// block-mode tables only.
Positions positions_of(const Table& T, const std::optional<at::Tensor>& positions, bool kept,
                       std::atomic<bool>* bad) {
  if (!kept || T.A.L.mode != 1) return {};
  return {reinterpret_cast<uint64_t*>(positions->data_ptr<int64_t>()), positions->size(1), T.numel,
          bad};
}

std::vector<Table> tables_of(const at::TensorList weights, const at::Tensor& indices,
                             const at::Tensor& offsets, const std::optional<at::Tensor>& psw,
                             at::IntArrayRef table_bags, at::IntArrayRef poolings,
                             at::IntArrayRef layouts) {
  const auto layout = hashed_batch_layouts(weights, indices, offsets, psw, table_bags, poolings,
                                           layouts);
  check_offsets_data(offsets, indices.numel(), "hashed bag");
  const int64_t* off = offsets.data_ptr<int64_t>();
  std::vector<Table> tables;
  for (size_t t = 0; t < weights.size(); ++t) {
    const HashedLayout& L = layout[t];
    check_hashed_ids(indices.slice(0, off[table_bags[t]], off[table_bags[t + 1]]), weights[t], L);
    const Addresser A(L, weights[t].size(1));
    tables.push_back({A, table_bags[t], table_bags[t + 1], poolings[t] == 1,
                      (weights[t].size(0) / L.slots) * A.C, weights[t].numel()});
  }
  return tables;
}

// Runs fn(t, lo, hi) over [0, count(t)) of every table, split across the threads
// table by table: all threads work on one table's buffer before moving to the next,
// so the buffers take turns in the cache instead of competing for it (measured: the
// threads on different tables at once ran 20% slower than a loop over tables).
template <typename Count, typename Fn>
void table_by_table(size_t num_tables, Count&& count, int64_t grain, Fn&& fn) {
  const int64_t threads = at::get_num_threads();
  at::parallel_for(0, threads, 1, [&](int64_t k0, int64_t k1) {
    for (size_t t = 0; t < num_tables; ++t) {
      const int64_t n = count(t);
      const int64_t parts = std::max<int64_t>(1, std::min(threads, n / std::max<int64_t>(grain, 1)));
      for (int64_t k = k0; k < k1 && k < parts; ++k) {
        const int64_t lo = n * k / parts, hi = n * (k + 1) / parts;
        if (lo < hi) fn(t, lo, hi);
      }
    }
  });
}

// The forward pass; with `keep`, also the positions cache of the call (block-mode
// tables' rows; rows no block table writes are zero, so the result is deterministic).
std::tuple<std::vector<at::Tensor>, at::Tensor> forward_into(
    const at::TensorList weights, const at::Tensor& indices, const at::Tensor& offsets,
    const std::optional<at::Tensor>& per_sample_weights, at::IntArrayRef table_bags,
    at::IntArrayRef poolings, at::IntArrayRef layouts, bool keep) {
  auto idx = indices.contiguous();
  auto off = offsets.contiguous();
  auto psw = float_weights(per_sample_weights);
  const auto tables = tables_of(weights, idx, off, psw, table_bags, poolings, layouts);
  const int64_t* ip = idx.data_ptr<int64_t>();
  const int64_t* op = off.data_ptr<int64_t>();
  std::optional<at::Tensor> positions;
  if (keep) {
    const int64_t cols = hashed_position_columns(weights, layouts);
    // Every row filled: each id belongs to a block table of `cols` blocks per id.
    bool full = tables.empty() ? idx.numel() == 0
                               : op[tables.front().bag0] == 0 && op[tables.back().bag1] == idx.numel();
    for (const Table& T : tables) full = full && T.A.L.mode == 1 && T.A.C == cols;
    const auto opts = idx.options().dtype(at::kLong);
    positions = full ? at::empty({idx.numel(), cols}, opts) : at::zeros({idx.numel(), cols}, opts);
  }
  const bool kept = positions && positions->numel() > 0;
  std::vector<at::Tensor> w, out;
  for (size_t t = 0; t < tables.size(); ++t) {
    w.push_back(weights[t].contiguous());
    out.push_back(at::empty({tables[t].bag1 - tables[t].bag0, tables[t].A.D}, w[t].options()));
  }
  const float* pp = psw ? psw->data_ptr<float>() : nullptr;
  if (!tables.empty()) {
    AT_DISPATCH_FLOATING_TYPES(w[0].scalar_type(), "hashed_bags_forward_cpu", [&] {
      // One parallel region for the bags of every table.
      table_by_table(tables.size(), [&](size_t t) { return tables[t].bag1 - tables[t].bag0; }, 64,
                     [&](size_t t, int64_t lo, int64_t hi) {
        const Table& T = tables[t];
        forward_range<scalar_t>(w[t].data_ptr<scalar_t>(), T.A, ip, op, pp, T.bag0 + lo, T.bag0 + hi,
                                T.mean, positions_of(T, positions, kept, nullptr),
                                out[t].data_ptr<scalar_t>() - T.bag0 * T.A.D);
      });
    });
  }
  return {out, positions ? *positions : at::Tensor()};
}

std::vector<at::Tensor> hashed_bags_forward_cpu(
    const at::TensorList weights, const at::Tensor& indices, const at::Tensor& offsets,
    const std::optional<at::Tensor>& per_sample_weights, at::IntArrayRef table_bags,
    at::IntArrayRef poolings, at::IntArrayRef layouts) {
  return std::get<0>(forward_into(weights, indices, offsets, per_sample_weights, table_bags,
                                  poolings, layouts, false));
}

std::tuple<std::vector<at::Tensor>, at::Tensor> hashed_bags_forward_keep_cpu(
    const at::TensorList weights, const at::Tensor& indices, const at::Tensor& offsets,
    const std::optional<at::Tensor>& per_sample_weights, at::IntArrayRef table_bags,
    at::IntArrayRef poolings, at::IntArrayRef layouts) {
  return forward_into(weights, indices, offsets, per_sample_weights, table_bags, poolings, layouts,
                      true);
}

// Shared by the two backward ops: psw gradient first (it reads the weights as they
// were in forward), then dst[t] += alpha * weight gradient of table t.
at::Tensor backward_into(const at::TensorList grad_outputs, const at::TensorList weights,
                         const at::Tensor& indices, const at::Tensor& offsets,
                         const std::optional<at::Tensor>& per_sample_weights,
                         at::IntArrayRef table_bags, at::IntArrayRef poolings,
                         at::IntArrayRef layouts, const std::optional<at::Tensor>& positions,
                         bool psw_grad, double alpha, std::vector<at::Tensor>& dst, const char* op) {
  auto idx = indices.contiguous();
  auto off = offsets.contiguous();
  auto psw = float_weights(per_sample_weights);
  const auto tables = tables_of(weights, idx, off, psw, table_bags, poolings, layouts);
  const bool kept = hashed_positions_kept(positions, weights, idx, layouts, op);
  std::atomic<bool> bad{false};
  const auto go = hashed_batch_grads(grad_outputs, weights, table_bags, op);
  auto gpsw = psw_grad ? at::zeros({indices.numel()}, offsets.options().dtype(at::kFloat))
                       : at::empty({0}, offsets.options().dtype(at::kFloat));
  if (tables.empty()) return gpsw;
  const int64_t* ip = idx.data_ptr<int64_t>();
  const int64_t* offp = off.data_ptr<int64_t>();
  const float* pp = psw ? psw->data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(weights[0].scalar_type(), "hashed_bags_backward_cpu", [&] {
    auto grad_of = [&](size_t t) { return go[t].data_ptr<scalar_t>() - tables[t].bag0 * tables[t].A.D; };
    if (psw_grad) {
      std::vector<at::Tensor> w;
      for (const auto& x : weights) w.push_back(x.contiguous());
      table_by_table(tables.size(), [&](size_t t) { return tables[t].bag1 - tables[t].bag0; }, 64,
                     [&](size_t t, int64_t lo, int64_t hi) {
        const Table& T = tables[t];
        psw_grad_range<scalar_t>(grad_of(t), w[t].data_ptr<scalar_t>(), T.A, ip, offp, T.bag0 + lo,
                                 T.bag0 + hi, T.mean, positions_of(T, positions, kept, &bad),
                                 gpsw.data_ptr<float>());
      });
    }
    // One parallel region for the units of every table; a thread owns its units.
    table_by_table(tables.size(), [&](size_t t) { return tables[t].units; }, 1,
                   [&](size_t t, int64_t lo, int64_t hi) {
      const Table& T = tables[t];
      backward_range<scalar_t>(grad_of(t), T.A, ip, offp, pp, T.bag0, T.bag1, T.mean, lo, hi, alpha,
                               positions_of(T, positions, kept, &bad), dst[t].data_ptr<scalar_t>());
    });
  });
  TORCH_CHECK(!bad, op, ": positions hold blocks outside the buffers; they must come from "
              "hashed_bags_forward_keep of the same ids and tables (the blocks inside were applied)");
  return gpsw;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> hashed_bags_backward_cpu(
    const at::TensorList grad_outputs, const at::TensorList weights, const at::Tensor& indices,
    const at::Tensor& offsets, const std::optional<at::Tensor>& per_sample_weights,
    at::IntArrayRef table_bags, at::IntArrayRef poolings, at::IntArrayRef layouts,
    bool psw_grad, const std::optional<at::Tensor>& positions) {
  std::vector<at::Tensor> gw;
  for (const auto& w : weights) gw.push_back(at::zeros(w.sizes(), w.options()));
  auto gpsw = backward_into(grad_outputs, weights, indices, offsets, per_sample_weights,
                            table_bags, poolings, layouts, positions, psw_grad, 1.0, gw,
                            "hashed_bags_backward");
  return {gw, gpsw};
}

at::Tensor hashed_bags_sgd_cpu(at::TensorList weights, const at::TensorList grad_outputs,
                               const at::Tensor& indices, const at::Tensor& offsets,
                               const std::optional<at::Tensor>& per_sample_weights,
                               at::IntArrayRef table_bags, at::IntArrayRef poolings,
                               at::IntArrayRef layouts, double lr, bool psw_grad,
                               const std::optional<at::Tensor>& positions) {
  std::vector<at::Tensor> dst = hashed_batch_in_place(weights, "hashed_bags_sgd_");
  return backward_into(grad_outputs, weights, indices, offsets, per_sample_weights, table_bags,
                       poolings, layouts, positions, psw_grad, -lr, dst, "hashed_bags_sgd_");
}

at::Tensor coord_uniform_cpu(at::Tensor& weight, int64_t row_offset, int64_t col_offset,
                             int64_t seed, double low, double high) {
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(),
              "coord_uniform_: weight must be a contiguous 2-D tensor");
  const int64_t R = weight.size(0), D = weight.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(),
                                  "coord_uniform_cpu", [&] {
    scalar_t* w = weight.data_ptr<scalar_t>();
    at::parallel_for(0, R, 256, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t j = 0; j < D; ++j)
          w[r * D + j] = static_cast<scalar_t>(
              low + (high - low) * coord_uniform(r + row_offset, j + col_offset, seed));
    });
  });
  return weight;
}

}  // namespace

TORCH_LIBRARY_IMPL(torchrec_ext, CPU, m) {
  m.impl("hashed_bags_forward", &hashed_bags_forward_cpu);
  m.impl("hashed_bags_forward_keep", &hashed_bags_forward_keep_cpu);
  m.impl("hashed_bags_backward", &hashed_bags_backward_cpu);
  m.impl("hashed_bags_sgd_", &hashed_bags_sgd_cpu);
  m.impl("coord_uniform_", &coord_uniform_cpu);
}

}  // namespace torchrec_ext
