// Where element (id, column) of a hashed table lives in its buffer.
//
// The virtual [num_embeddings, dim] table is cut into row regions of
// `rows_per_region` ids and column regions (one column in element mode,
// `chunk` columns in block mode). Region (r, c) owns buffer rows
// [r * slots, (r + 1) * slots) and the columns of c. A shard of the buffer that
// holds whole regions computes its part of the table on its own.
#pragma once
#include <cstdint>
#include "hash.h"

namespace torchrec_ext {

struct HashedLayout {
  int64_t mode;             // 0 = element (HashedNets), 1 = block (ROBE-Z)
  int64_t chunk;            // Z: columns per block (1 in element mode)
  int64_t rows_per_region;  // ids per row region
  int64_t slots;            // buffer rows per row region
  int64_t id_offset;        // global id of this shard's first row (multiple of rows_per_region)
  int64_t col_offset;       // global column of this shard's first column (multiple of chunk)
  int64_t seed;
  bool is_signed;
  int64_t align;  // block mode: block starts are multiples of this (divides Z)
  // Derived, once per call rather than per element in the kernels: the number of places
  // a block can start in its region's slots * Z elements (start = hash mod starts, times
  // align). 0 for a layout the input checks will reject.
  int64_t starts;

  // A batched op passes each table's layout as kFields ints, in this order (starts is
  // not passed).
  static constexpr int64_t kFields = 9;
  static HashedLayout from_ints(const int64_t* v) {
    const bool element = v[0] == 0;
    HashedLayout L{v[0],      element ? 1 : v[1], v[2], v[3], v[4], v[5], v[6],
                   v[7] != 0, element ? 1 : v[8], 0};
    int64_t elements = 0;  // slots * Z, which a bad layout may overflow (then starts stays 0)
    if (L.align > 0 && L.slots > 0 && L.chunk > 0 &&
        !__builtin_mul_overflow(L.slots, L.chunk, &elements))
      L.starts = elements / L.align;
    return L;
  }

  TRX_HD int64_t first_region() const { return id_offset / rows_per_region; }

  // Local region of a shard-local id (TorchRec hands shards ids minus their row offset).
  TRX_HD int64_t local_region(int64_t local_id) const {
    return (local_id + id_offset) / rows_per_region - first_region();
  }
};

}  // namespace torchrec_ext
