// The hashed kernels' per-id arithmetic on 8 ids at once (AVX-512 F + DQ): the same
// MurmurHash3 finalizer as hash.h and exact 64-bit division by a divisor fixed for the
// call. Every lane's result is bit for bit what the scalar code computes; the tests
// compare both against the Python reference.
#pragma once
#if defined(__AVX512F__) && defined(__AVX512DQ__)
#define TRX_VEC_HASH 1
#include <immintrin.h>

#include <cstdint>

namespace torchrec_ext {

inline __m512i fmix64_x8(__m512i k) {
  const __m512i m1 = _mm512_set1_epi64(static_cast<int64_t>(0xFF51AFD7ED558CCDULL));
  const __m512i m2 = _mm512_set1_epi64(static_cast<int64_t>(0xC4CEB9FE1A85EC53ULL));
  k = _mm512_xor_si512(k, _mm512_srli_epi64(k, 33));
  k = _mm512_mullo_epi64(k, m1);
  k = _mm512_xor_si512(k, _mm512_srli_epi64(k, 33));
  k = _mm512_mullo_epi64(k, m2);
  return _mm512_xor_si512(k, _mm512_srli_epi64(k, 33));
}

// Exact q = x / d and r = x % d for lanes x < 2^63 and one divisor 1 <= d < 2^52.
// A double estimate of x / d is within 2^12 / d + 1 of q; the remainder it leaves is
// then below 2^53, so a second double step is exact to one unit, and a last
// comparison each way makes it exact.
struct DivX8 {
  __m512i d;
  __m512d inv;

  static constexpr uint64_t kMaxDivisor = 1ULL << 52;
  DivX8() = default;
  explicit DivX8(uint64_t divisor)
      : d(_mm512_set1_epi64(static_cast<int64_t>(divisor))),
        inv(_mm512_set1_pd(1.0 / static_cast<double>(divisor))) {}

  void divmod(__m512i x, __m512i& q, __m512i& r) const {
    const __m512i q0 = _mm512_cvttpd_epu64(_mm512_mul_pd(_mm512_cvtepu64_pd(x), inv));
    r = _mm512_sub_epi64(x, _mm512_mullo_epi64(q0, d));  // small, either sign
    const __m512d r_over_d = _mm512_mul_pd(_mm512_cvtepi64_pd(r), inv);
    const __m512i q1 = _mm512_cvttpd_epi64(
        _mm512_roundscale_pd(r_over_d, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC));
    q = _mm512_add_epi64(q0, q1);
    r = _mm512_sub_epi64(r, _mm512_mullo_epi64(q1, d));
    const __m512i one = _mm512_set1_epi64(1);
    const __mmask8 low = _mm512_cmplt_epi64_mask(r, _mm512_setzero_si512());
    r = _mm512_mask_add_epi64(r, low, r, d);
    q = _mm512_mask_sub_epi64(q, low, q, one);
    const __mmask8 high = _mm512_cmpge_epi64_mask(r, d);
    r = _mm512_mask_sub_epi64(r, high, r, d);
    q = _mm512_mask_add_epi64(q, high, q, one);
  }
};

}  // namespace torchrec_ext
#endif
