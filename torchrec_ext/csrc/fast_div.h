// Exact unsigned 64-bit division and remainder by a divisor fixed for a whole
// call, with multiplications instead of a hardware divide (Lemire, Kaser and
// Kurz, "Faster remainder by direct computation", 2019: a 128-bit magic number
// makes both exact for every 64-bit numerator). The hashed kernels divide by the
// same few layout sizes millions of times per batch.
#pragma once
#include <cstdint>

#include "hash.h"

namespace torchrec_ext {

TRX_HD uint64_t mul_hi64(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) >> 64);
#endif
}

struct FastDiv {
  uint64_t d = 1;
  uint64_t m_hi = 0, m_lo = 0;  // M = floor((2^128 - 1) / d) + 1, as two 64-bit halves

  FastDiv() = default;
  explicit FastDiv(uint64_t divisor) : d(divisor) {
    const unsigned __int128 m = (~static_cast<unsigned __int128>(0)) / divisor + 1;
    m_hi = static_cast<uint64_t>(m >> 64);
    m_lo = static_cast<uint64_t>(m);
  }

  // floor(a / d): the high 64 bits of M * a.
  TRX_HD uint64_t div(uint64_t a) const {
    if (d == 1) return a;  // M wraps to 0 for d = 1
    const uint64_t lo_hi = mul_hi64(m_lo, a);
    const uint64_t hi_lo = m_hi * a;
    const uint64_t hi_hi = mul_hi64(m_hi, a);
    // (hi_hi:hi_lo) + lo_hi, keep the upper word
    return hi_hi + (hi_lo + lo_hi < hi_lo ? 1 : 0);
  }

  // a mod d: the fraction M * a (mod 2^128) times d, high 64 bits.
  TRX_HD uint64_t mod(uint64_t a) const {
    const uint64_t f_lo = m_lo * a;
    const uint64_t f_hi = m_hi * a + mul_hi64(m_lo, a);
    // high 64 bits of (f_hi:f_lo) * d, a 192-bit product
    const uint64_t lo_part = mul_hi64(f_lo, d);
    const uint64_t mid_lo = f_hi * d;
    const uint64_t mid_hi = mul_hi64(f_hi, d);
    return mid_hi + (mid_lo + lo_part < mid_lo ? 1 : 0);
  }
};

}  // namespace torchrec_ext
