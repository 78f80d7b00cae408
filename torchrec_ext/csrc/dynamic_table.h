// Shared by the CPU and CUDA kernels of the dynamic-table ops: the hash index's
// slot encoding, the key hash, and the initializers that give a new row its
// values from (key, column) alone, so every plan and every rank agrees.
//
// The index is open addressing with linear probing over two arrays of
// power-of-two length: slot_keys (any int64, so no user key is reserved) and
// slot_rows, whose negative values encode the slot's state.
#pragma once
#include <cmath>
#include <cstdint>

#include "hash.h"

namespace torchrec_ext {

constexpr int64_t kSlotEmpty = -1;   // never used: ends a probe sequence
constexpr int64_t kSlotErased = -2;  // tombstone: probing continues past it
constexpr int64_t kSlotBusy = -3;    // claimed by an inserter, row not yet published

constexpr uint64_t kKeySalt = 0xD6E8FEB86659FD93ULL;

// Hash of a key for the index and for routing keys to ranks and checkpoint
// buckets. Must never change: checkpoints and row-wise plans depend on it.
TRX_HD uint64_t key_hash(int64_t key) { return fmix64(static_cast<uint64_t>(key) ^ kKeySalt); }

// Initializer kinds (torchrec_ext/initializers.py).
constexpr int64_t kInitConstant = 0;     // a
constexpr int64_t kInitUniform = 1;      // U(a, b)
constexpr int64_t kInitNormal = 2;       // N(a, b^2)
constexpr int64_t kInitTruncNormal = 3;  // N(a, b^2) redrawn outside a +- 2b
constexpr int kTruncDraws = 32;

// Uniform in (0, 1] from (key, global column, draw). Column and draw combine in uint64
// (wrapping, as coord_uniform hashes them anyway): no signed overflow for any column.
TRX_HD double key_uniform(int64_t key, int64_t col, int64_t draw, int64_t seed) {
  const uint64_t c = static_cast<uint64_t>(col) * 128u + static_cast<uint64_t>(draw);
  return 1.0 - coord_uniform(key, static_cast<int64_t>(c), seed);
}

// Global columns an initializer accepts: far beyond any table, with col + j never overflowing.
constexpr int64_t kMaxInitColumn = int64_t(1) << 40;

TRX_HD double box_muller(int64_t key, int64_t col, int64_t draw, int64_t seed) {
  const double u1 = key_uniform(key, col, 2 * draw, seed);
  const double u2 = key_uniform(key, col, 2 * draw + 1, seed);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

TRX_HD float init_value(int64_t kind, double a, double b, int64_t key, int64_t col, int64_t seed) {
  if (kind == kInitUniform)
    return static_cast<float>(a + (b - a) * (1.0 - key_uniform(key, col, 0, seed)));
  if (kind == kInitNormal) return static_cast<float>(a + b * box_muller(key, col, 0, seed));
  if (kind == kInitTruncNormal) {
    double z = 0.0;
    for (int d = 0; d < kTruncDraws; ++d) {
      z = box_muller(key, col, d, seed);
      if (z >= -2.0 && z <= 2.0) return static_cast<float>(a + b * z);
    }
    return static_cast<float>(a + b * fmin(2.0, fmax(-2.0, z)));  // p < 1e-40
  }
  return static_cast<float>(a);
}

}  // namespace torchrec_ext
