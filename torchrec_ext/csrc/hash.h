// Hash functions shared by the CPU and CUDA kernels (and mirrored in
// torchrec_ext/ops/reference.py for the tests). Every table's meaning depends on
// these bits, so they must never change for an existing table.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define TRX_HD __host__ __device__ __forceinline__
#else
#define TRX_HD inline
#endif

namespace torchrec_ext {

constexpr uint64_t kSeedMul = 0x9E3779B97F4A7C15ULL;
constexpr uint64_t kColMul = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kColAdd = 0x165667B19E3779F9ULL;
constexpr uint64_t kLow63 = 0x7FFFFFFFFFFFFFFFULL;

// MurmurHash3's 64-bit finalizer: a bijection with full avalanche.
TRX_HD uint64_t fmix64(uint64_t k) {
  k ^= k >> 33;
  k *= 0xFF51AFD7ED558CCDULL;
  k ^= k >> 33;
  k *= 0xC4CEB9FE1A85EC53ULL;
  k ^= k >> 33;
  return k;
}

// Per-id part of the hash; computed once per id and reused for every column.
TRX_HD uint64_t id_hash(int64_t id, int64_t seed) {
  return fmix64(static_cast<uint64_t>(id) ^ (static_cast<uint64_t>(seed) * kSeedMul));
}

// Hash of (id, column-or-block index). Bit 63 is the sign, bits 0..62 the slot.
TRX_HD uint64_t col_hash(uint64_t h_id, int64_t col) {
  return fmix64(h_id ^ (static_cast<uint64_t>(col) * kColMul + kColAdd));
}

TRX_HD int64_t hash_slot(uint64_t h, int64_t n) {
  return static_cast<int64_t>((h & kLow63) % static_cast<uint64_t>(n));
}

TRX_HD float hash_sign(uint64_t h, bool is_signed) {
  return (is_signed && (h >> 63)) ? -1.0f : 1.0f;
}

// Uniform in [0, 1) from the global coordinates of an element: used to
// initialise tables so that every shard of every plan holds the same values.
TRX_HD double coord_uniform(int64_t row, int64_t col, int64_t seed) {
  uint64_t h = col_hash(id_hash(row, seed), col);
  return static_cast<double>(h >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace torchrec_ext
