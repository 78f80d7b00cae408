// Argument checks shared by the CPU and CUDA kernels of the hashed ops (and the
// offsets check every CPU bag op uses). The
// Python layer validates ids with the table's name first; these checks keep a
// bad call from ever reading or writing outside the buffer.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "hashed_layout.h"

namespace torchrec_ext {

// Offsets of a CPU bag op describe nnz ids: start at 0, end at nnz, never decrease.
inline void check_offsets_data(const at::Tensor& off, int64_t nnz, const char* op) {
  const int64_t* o = off.data_ptr<int64_t>();
  const int64_t nb = off.numel() - 1;
  TORCH_CHECK(o[0] == 0 && o[nb] == nnz, op,
              ": offsets must start at 0 and end at the number of indices");
  for (int64_t b = 0; b < nb; ++b) {
    TORCH_CHECK(o[b] <= o[b + 1], op, ": offsets must be non-decreasing");
  }
}

// Table t of a batched call owns bags [table_bags[t], table_bags[t + 1]) of the
// shared offsets: the bounds must not decrease and must lie within the offsets.
inline void check_table_bags(at::IntArrayRef table_bags, const at::Tensor& offsets,
                             const char* op) {
  const int64_t T = static_cast<int64_t>(table_bags.size()) - 1;
  TORCH_CHECK(T >= 0 && table_bags[0] >= 0 && table_bags[T] <= offsets.numel() - 1, op,
              ": table_bags must lie within the bags of offsets");
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(table_bags[t] <= table_bags[t + 1], op, ": table_bags must not decrease");
  }
}

// Shape and type checks of a batched hashed call (no data reads: CPU and CUDA).
// Table t owns bags [table_bags[t], table_bags[t + 1]) of the shared offsets.
inline std::vector<HashedLayout> hashed_batch_layouts(
    const at::TensorList weights, const at::Tensor& indices, const at::Tensor& offsets,
    const std::optional<at::Tensor>& psw, at::IntArrayRef table_bags, at::IntArrayRef poolings,
    at::IntArrayRef layouts) {
  const int64_t T = static_cast<int64_t>(weights.size());
  TORCH_CHECK(indices.dim() == 1 && indices.scalar_type() == at::kLong,
              "hashed bag: indices must be a 1-D int64 tensor");
  TORCH_CHECK(offsets.dim() == 1 && offsets.scalar_type() == at::kLong && offsets.numel() >= 1,
              "hashed bag: offsets must be a non-empty 1-D int64 tensor");
  TORCH_CHECK(static_cast<int64_t>(table_bags.size()) == T + 1 &&
                  static_cast<int64_t>(poolings.size()) == T &&
                  static_cast<int64_t>(layouts.size()) == T * HashedLayout::kFields,
              "hashed bag: table_bags, poolings and layouts must describe ", T, " tables");
  check_table_bags(table_bags, offsets, "hashed bag");
  if (psw) {
    TORCH_CHECK(psw->dim() == 1 && psw->numel() == indices.numel(),
                "hashed bag: per_sample_weights must match indices");
  }
  std::vector<HashedLayout> out;
  for (int64_t t = 0; t < T; ++t) {
    const at::Tensor& w = weights[t];
    const HashedLayout L = HashedLayout::from_ints(layouts.data() + t * HashedLayout::kFields);
    TORCH_CHECK(w.dim() == 2, "hashed bag: weight must be 2-D");
    TORCH_CHECK(at::isFloatingType(w.scalar_type()), "hashed bag: weight must be floating point");
    TORCH_CHECK(w.scalar_type() == weights[0].scalar_type() && w.device() == indices.device(),
                "hashed bag: the tables of one call share a dtype and the indices' device");
    TORCH_CHECK(L.mode == 0 || L.mode == 1, "hashed bag: mode must be 0 (element) or 1 (block)");
    TORCH_CHECK(L.slots > 0 && L.rows_per_region > 0 && L.chunk > 0, "hashed bag: bad layout");
    TORCH_CHECK(L.align > 0 && L.chunk % L.align == 0, "hashed bag: block alignment (", L.align,
                ") must divide the chunk (", L.chunk, ")");
    TORCH_CHECK(w.size(0) % L.slots == 0, "hashed bag: weight rows (", w.size(0),
                ") must be a multiple of slots (", L.slots, ")");
    TORCH_CHECK(w.size(1) % L.chunk == 0, "hashed bag: weight columns (", w.size(1),
                ") must be a multiple of chunk (", L.chunk, ")");
    TORCH_CHECK(L.id_offset % L.rows_per_region == 0 && L.col_offset % L.chunk == 0,
                "hashed bag: shard offsets must fall on region boundaries");
    TORCH_CHECK(L.starts > 0, "hashed bag: slots (", L.slots, ") x chunk (", L.chunk,
                ") overflows int64");
    // The kernels compute global ids and columns as int64: they must not overflow.
    int64_t local_rows = 0, end_id = 0, end_col = 0;
    TORCH_CHECK(L.id_offset >= 0 && L.col_offset >= 0 &&
                    !__builtin_mul_overflow(w.size(0) / L.slots, L.rows_per_region, &local_rows) &&
                    !__builtin_add_overflow(L.id_offset, local_rows, &end_id) &&
                    !__builtin_add_overflow(L.col_offset, w.size(1), &end_col),
                "hashed bag: the shard's id space (offset ", L.id_offset, ", ", w.size(0) / L.slots,
                " regions of ", L.rows_per_region, " ids) or columns (offset ", L.col_offset,
                ") overflow int64");
    out.push_back(L);
  }
  return out;
}

// The positions cache of a batched hashed call: absent or empty (not kept), or a
// contiguous int64 [indices, P] tensor on the indices' device whose row i holds id i's
// packed blocks, P at least the blocks per id (dim / chunk) of every block-mode table.
// Returns whether the call has one.
inline bool hashed_positions_kept(const std::optional<at::Tensor>& positions,
                                  const at::TensorList weights, const at::Tensor& indices,
                                  at::IntArrayRef layouts, const char* op) {
  if (!positions || positions->numel() == 0) return false;
  const at::Tensor& p = *positions;
  TORCH_CHECK(p.scalar_type() == at::kLong && p.dim() == 2 && p.size(0) == indices.numel() &&
                  p.is_contiguous() && p.device() == indices.device(),
              op, ": positions must be empty or a contiguous int64 [", indices.numel(),
              ", P] tensor on the indices' device");
  for (size_t t = 0; t < weights.size(); ++t) {
    const HashedLayout L = HashedLayout::from_ints(layouts.data() + t * HashedLayout::kFields);
    if (L.mode != 1) continue;
    const int64_t blocks = weights[t].size(1) / L.chunk;
    TORCH_CHECK(p.size(1) >= blocks, op, ": positions has ", p.size(1), " columns, table ", t,
                " has ", blocks, " blocks per id");
  }
  return true;
}

// Columns of a call's positions cache: the most blocks per id of its block-mode tables.
inline int64_t hashed_position_columns(const at::TensorList weights, at::IntArrayRef layouts) {
  int64_t cols = 0;
  for (size_t t = 0; t < weights.size(); ++t) {
    const HashedLayout L = HashedLayout::from_ints(layouts.data() + t * HashedLayout::kFields);
    if (L.mode == 1 && L.chunk > 0) cols = std::max<int64_t>(cols, weights[t].size(1) / L.chunk);
  }
  return cols;
}

// Ids of one table: reads the data, so CPU only (CUDA kernels skip bad ids instead).
inline void check_hashed_ids(const at::Tensor& ids, const at::Tensor& weight,
                             const HashedLayout& L) {
  if (ids.numel() == 0) return;
  auto mm = at::aminmax(ids);
  const int64_t lo = std::get<0>(mm).item<int64_t>();
  const int64_t hi = std::get<1>(mm).item<int64_t>();
  const int64_t local_rows = (weight.size(0) / L.slots) * L.rows_per_region;
  TORCH_CHECK(lo >= 0 && hi < local_rows, "hashed bag: ids must lie in [0, ", local_rows,
              "), got [", lo, ", ", hi, "]");
}

// coord_uniform_ fills element (r, j) from global (r + row_offset, j + col_offset): the
// offsets must be coordinates, and the last one must not overflow int64.
inline void check_coord_init(const at::Tensor& weight, int64_t row_offset, int64_t col_offset) {
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(),
              "coord_uniform_: weight must be a contiguous 2-D tensor");
  int64_t end = 0;
  TORCH_CHECK(row_offset >= 0 && col_offset >= 0 &&
                  !__builtin_add_overflow(row_offset, weight.size(0), &end) &&
                  !__builtin_add_overflow(col_offset, weight.size(1), &end),
              "coord_uniform_: row_offset (", row_offset, ") and col_offset (", col_offset,
              ") must be >= 0 and leave the weight's coordinates within int64");
}

// Per-table output gradients, checked against the tables' bags and made contiguous.
inline std::vector<at::Tensor> hashed_batch_grads(const at::TensorList grads,
                                                  const at::TensorList weights,
                                                  at::IntArrayRef table_bags, const char* op) {
  TORCH_CHECK(grads.size() == weights.size(), op, ": one grad_output per table");
  std::vector<at::Tensor> out;
  for (size_t t = 0; t < weights.size(); ++t) {
    const int64_t B = table_bags[t + 1] - table_bags[t], D = weights[t].size(1);
    TORCH_CHECK(grads[t].dim() == 2 && grads[t].size(0) == B && grads[t].size(1) == D, op,
                ": grad_output of table ", t, " must be [", B, ", ", D, "]");
    out.push_back(grads[t].contiguous().to(weights[t].scalar_type()));
  }
  return out;
}

// The weights a fused update writes in place: they must be contiguous already.
inline std::vector<at::Tensor> hashed_batch_in_place(const at::TensorList weights, const char* op) {
  for (const auto& w : weights) {
    TORCH_CHECK(w.is_contiguous(), op, ": weights must be contiguous (updated in place)");
  }
  return std::vector<at::Tensor>(weights.begin(), weights.end());
}

}  // namespace torchrec_ext
