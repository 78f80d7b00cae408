// DivX8 (torchrec_ext/csrc/cpu/vec_hash.h) against the hardware's own 64-bit divide:
// random numerators, exact multiples of the divisor and their neighbours, for divisors
// from 1 to 2^51. Prints "ok <count>" or the first disagreement; test_vec_hash.py runs it.
#include <cstdint>
#include <cstdio>
#include <random>

#include "cpu/vec_hash.h"

int main() {
  using torchrec_ext::DivX8;
  std::mt19937_64 rng(7);
  const uint64_t divisors[] = {1, 2, 3, 7, 12, 16, 100, 200000, 1000003, 3125000,
                               (1ULL << 32) + 1, (1ULL << 40) + 7, (1ULL << 51) + 3};
  long checked = 0;
  for (uint64_t d : divisors) {
    const DivX8 div(d);
    for (int it = 0; it < 30000; ++it) {
      alignas(64) uint64_t x[8], q[8], r[8];
      for (int k = 0; k < 8; ++k) {
        const uint64_t any = rng() >> 1;  // below 2^63, as the kernels' numerators are
        const uint64_t near = (it % 2 ? any : any / d * d) + (k % 3) - 1;  // multiples, +-1
        x[k] = near & 0x7FFFFFFFFFFFFFFFULL;
      }
      __m512i vq, vr;
      div.divmod(_mm512_load_si512(x), vq, vr);
      _mm512_store_si512(q, vq);
      _mm512_store_si512(r, vr);
      for (int k = 0; k < 8; ++k, ++checked) {
        if (q[k] != x[k] / d || r[k] != x[k] % d) {
          std::printf("mismatch: %llu / %llu\n", static_cast<unsigned long long>(x[k]),
                      static_cast<unsigned long long>(d));
          return 1;
        }
      }
    }
  }
  std::printf("ok %ld\n", checked);
  return 0;
}
