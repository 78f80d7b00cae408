// Where a hashed table's ids sit in its buffer, for the CPU kernels: an id's column
// regions as segments of the buffer (Addresser, with the layout's divisions done as
// multiplications), the positions cache that keeps them between the forward and the
// backward pass, the prefetching window walk over ids, and the backward pass's walk
// over the ids that touch a range of buffer units.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../fast_div.h"
#include "../hashed_layout.h"
#include "prefetch.h"
#include "vec_hash.h"

namespace torchrec_ext {
namespace hashed_cpu {

// Float accumulation for float tables (as FBGEMM), double for double (the tests' reference).
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// The output (or output-gradient) rows of one table of a batched call: bag b (numbered in
// the call's shared offsets, from the table's first bag `first`) is row b - first. Indexing
// through this, rather than rebasing the pointer to bag 0, keeps every pointer inside its
// tensor (a rebased pointer is undefined behaviour, and null for a table with no bags).
template <typename T>
struct BagRows {
  T* base;
  int64_t first;
  int64_t D;
  T* operator[](int64_t b) const { return base + (b - first) * D; }
};

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
      : L(layout),
        D(dim),
        Z(layout.chunk),
        C(dim / layout.chunk),
        first_region(layout.first_region()),
        per_region(layout.rows_per_region),
        slots(layout.slots),
        starts(layout.starts),
        chunk(layout.chunk),
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
        seg->a = element_at(h, base, c);
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

  // Element mode: the buffer element of column c of an id (column hash h, region rows from base).
  int64_t element_at(uint64_t h, int64_t base, int64_t c) const {
    return (base + static_cast<int64_t>(slots.mod(h & kLow63))) * D + c;
  }

  // Element mode, D a multiple of 8: the buffer elements of column groups [g0, g1) of an id
  // (group g: columns 8g .. 8g + 7) into addr[8g ..] and their sign bits (bit k: column
  // 8g + k is negated) into neg[g]; prefetches them. 8 lanes at once where the ISA has
  // them, else the same arithmetic one column at a time.
  void element_addresses(int64_t local_id, int64_t g0, int64_t g1, const float* w, int64_t* addr,
                         uint8_t* neg) const {
    const int64_t base = region(local_id) * L.slots;
    const uint64_t h0 = id_hash(local_id + L.id_offset, L.seed);
    const int64_t col0 = L.col_offset;
#if TRX_VEC_HASH
    if (vec_elements) {
      for (int64_t g = g0; g < g1; ++g) {
        __mmask8 m;
        _mm512_storeu_si512(addr + 8 * g, element_addr8(h0, base, col0 + 8 * g, 8 * g, m));
        neg[g] = m;
        for (int k = 0; k < 8; ++k) prefetch_l2(w + addr[8 * g + k]);
      }
      return;
    }
#endif
    for (int64_t g = g0; g < g1; ++g) {
      uint8_t m = 0;
      for (int k = 0; k < 8; ++k) {
        const int64_t c = 8 * g + k;
        const uint64_t h = col_hash(h0, col0 + c);
        if (hash_sign(h, L.is_signed) < 0) m |= static_cast<uint8_t>(1u << k);
        const int64_t a = element_at(h, base, c);
        addr[c] = a;
        prefetch_l2(w + a);
      }
      neg[g] = m;
    }
  }

#if TRX_VEC_HASH
  // Element mode: the segments of columns c .. c + 7 of one id (hash h0, region rows
  // from `base`; gcol is column c's global index), the arithmetic 8 lanes wide.
  __m512i element_addr8(uint64_t h0, int64_t base, int64_t gcol, int64_t c,
                        __mmask8& negative) const {
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

  // Block mode: locate(ids[k], 0, C, w, seg + k * C) for k < 8, the arithmetic 8 lanes wide.
  template <typename scalar_t>
  void locate8(const int64_t* ids, const scalar_t* w, Segment* seg) const {
    auto all = [](int64_t v) { return _mm512_set1_epi64(v); };
    const __m512i gid = _mm512_add_epi64(_mm512_loadu_si512(ids), all(L.id_offset));
    __m512i region, unused;
    v_region.divmod(gid, region, unused);
    const __m512i base =
        _mm512_mullo_epi64(_mm512_sub_epi64(region, all(first_region)), all(L.slots));
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
      _mm512_store_si512(a,
                         _mm512_add_epi64(_mm512_mullo_epi64(_mm512_add_epi64(base, slot), all(D)),
                                          _mm512_add_epi64(band, col)));
      _mm512_store_si512(len1, _mm512_sub_epi64(all(Z), col));
      __m512i next = _mm512_add_epi64(slot, all(1));
      next = _mm512_mask_mov_epi64(next, _mm512_cmpeq_epi64_mask(next, all(L.slots)),
                                   _mm512_setzero_si512());
      _mm512_store_si512(
          b, _mm512_add_epi64(_mm512_mullo_epi64(_mm512_add_epi64(base, next), all(D)), band));
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
  int64_t numel = 0;                 // elements of the table's buffer (what unpack checks against)
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
          if (!A.unpack(from.at[i * from.stride + c], w, from.numel, &win[(i - w0) * C + c]))
            *from.bad = true;
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
        for (int64_t c = 0; c < C; ++c)
          keep.at[j * keep.stride + c] = Addresser::pack(win[(j - w0) * C + c]);
      }
    }
    for (int64_t i = w0; i < w1; ++i) visit(i, &win[(i - w0) * C]);
  }
}

// The backward pass's walk: fn(b, i, scale, c_lo, c_hi) for each id i (in bag b) of bags
// [b0, b1) whose column regions [c_lo, c_hi) of its row region are units in [u0, u1);
// scale is alpha, over the bag's size for MEAN.
template <typename Fn>
inline void ids_in_units(const Addresser& A, const int64_t* idx, const int64_t* off, int64_t b0,
                         int64_t b1, bool mean, int64_t u0, int64_t u1, double alpha, Fn&& fn) {
  const int64_t C = A.C;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t s = off[b], e = off[b + 1];
    if (s == e) continue;
    const double scale = alpha * (mean ? 1.0 / static_cast<double>(e - s) : 1.0);
    for (int64_t i = s; i < e; ++i) {
      const int64_t r = A.region(idx[i]);
      const int64_t c_lo = std::max<int64_t>(u0 - r * C, 0),
                    c_hi = std::min<int64_t>(u1 - r * C, C);
      if (c_lo < c_hi) fn(b, i, scale, c_lo, c_hi);
    }
  }
}

}  // namespace hashed_cpu
}  // namespace torchrec_ext
