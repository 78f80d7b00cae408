// Where an id's vector comes from in a QR / compositional table.
//
// A table of k partitions maps global id x to row (x / div[p]) % mod[p] of
// partition table p (mod 0 = no modulo: the quotient). Quotient-remainder,
// generalized QR and Chinese-remainder partitions are all of this form, in 64-bit
// integer math. The per-id vectors are combined before pooling: element-wise
// product (op 0), sum (op 1), or concatenation (op 2: partition p's columns land
// at out_col[p] of the output). A shard holds rows [row_start[p], +rows[p]) of
// each partition and sees shard-local ids (global id = local id + id_offset).
#pragma once
#include <cstdint>

#include "hash.h"  // TRX_HD

namespace torchrec_ext {

constexpr int kMaxPartitions = 8;

enum QROp : int64_t { kMult = 0, kAdd = 1, kConcat = 2 };

// floor(x / d) for x >= 0, exact for every int64. A 64-bit integer division costs tens
// of cycles (far more on GPUs) and ran twice per id; below 2^53 a multiply by the
// reciprocal, corrected by the remainder, gives the same quotient.
TRX_HD int64_t div_floor(int64_t x, int64_t d, double inv) {
  if (d == 1) return x;
  if (x >= (int64_t(1) << 53)) return x / d;
  int64_t q = static_cast<int64_t>(static_cast<double>(x) * inv);
  int64_t r = x - q * d;
  while (r < 0) {
    --q;
    r += d;
  }
  while (r >= d) {
    ++q;
    r -= d;
  }
  return q;
}

struct QRLayout {
  int64_t k;
  int64_t op;
  int64_t id_offset;
  int64_t out_dim;
  int64_t div[kMaxPartitions];
  int64_t mod[kMaxPartitions];
  int64_t row_start[kMaxPartitions];
  int64_t rows[kMaxPartitions];
  int64_t cols[kMaxPartitions];
  int64_t out_col[kMaxPartitions];
  double inv_div[kMaxPartitions];  // 1.0 / div (see div_floor)
  double inv_mod[kMaxPartitions];

  // Shard-local row of partition p for a shard-local id (may be out of range
  // for a bad id; callers check with in_range).
  TRX_HD int64_t row(int64_t p, int64_t local_id) const {
    int64_t q = div_floor(local_id + id_offset, div[p], inv_div[p]);
    if (mod[p] > 0) q -= div_floor(q, mod[p], inv_mod[p]) * mod[p];
    return q - row_start[p];
  }

  TRX_HD bool in_range(int64_t p, int64_t r) const { return r >= 0 && r < rows[p]; }
};

}  // namespace torchrec_ext
