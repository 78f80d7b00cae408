// Block mode's inner loops: one chunk of an id's row is up to two buffer segments
// (a chunk that runs past its slot continues in the next), read or written as one
// masked AVX-512 operation per 16 columns where the CPU has it.
#pragma once
#include <cstdint>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "hashed_addressing.h"

namespace torchrec_ext {
namespace hashed_cpu {

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

}  // namespace hashed_cpu
}  // namespace torchrec_ext
