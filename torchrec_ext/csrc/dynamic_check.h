// Argument checks of the dynamic-table ops, shared by the CPU and CUDA kernels.
// The Python layer (HashTable, DynamicRows) validates with the table's name
// first; these keep a bad call from touching memory outside the index or blocks.
#pragma once
#include <ATen/ATen.h>

#include <optional>

namespace torchrec_ext {

inline void check_index(const at::Tensor& slot_keys, const at::Tensor& slot_rows,
                        const char* op) {
  TORCH_CHECK(slot_keys.dim() == 1 && slot_rows.dim() == 1 &&
                  slot_keys.scalar_type() == at::kLong && slot_rows.scalar_type() == at::kLong,
              op, ": slot_keys and slot_rows must be 1-D int64");
  const int64_t cap = slot_keys.numel();
  TORCH_CHECK(cap == slot_rows.numel() && cap > 0 && (cap & (cap - 1)) == 0, op,
              ": the index needs two arrays of one power-of-two length");
  TORCH_CHECK(slot_keys.is_contiguous() && slot_rows.is_contiguous(), op,
              ": index arrays must be contiguous");
  TORCH_CHECK(slot_keys.device() == slot_rows.device(), op, ": index arrays on two devices");
}

inline void check_keys(const at::Tensor& keys, const at::Tensor& like, const char* op) {
  TORCH_CHECK(keys.dim() == 1 && keys.scalar_type() == at::kLong, op,
              ": keys must be a 1-D int64 tensor");
  TORCH_CHECK(keys.device() == like.device(), op, ": keys on ", keys.device(),
              ", table on ", like.device());
}

// Blocks of one table: 2-D, same shape, dtype and device. Returns rows per block.
inline int64_t check_blocks(at::TensorList blocks, const char* op) {
  TORCH_CHECK(!blocks.empty(), op, ": the table has no blocks");
  const at::Tensor& b0 = blocks[0];
  TORCH_CHECK(b0.dim() == 2 && b0.size(0) > 0, op, ": blocks must be 2-D with rows");
  TORCH_CHECK(at::isFloatingType(b0.scalar_type()), op, ": blocks must be floating point");
  for (const auto& b : blocks) {
    TORCH_CHECK(b.sizes() == b0.sizes() && b.scalar_type() == b0.scalar_type() &&
                    b.device() == b0.device() && b.is_contiguous(),
                op, ": blocks must be contiguous with one shape, dtype and device");
  }
  return b0.size(0);
}

inline void check_rows_meta(const at::Tensor& rows, const at::Tensor& block0, const char* op) {
  TORCH_CHECK(rows.dim() == 1 && rows.scalar_type() == at::kLong, op,
              ": rows must be a 1-D int64 tensor");
  TORCH_CHECK(rows.device() == block0.device(), op, ": rows and blocks on different devices");
}

// Rows must be < blocks * block_size; `allow_missing` admits -1 (no row).
inline void check_rows_data(const at::Tensor& rows, int64_t total_rows, bool allow_missing,
                            const char* op) {
  if (rows.numel() == 0) return;
  auto mm = at::aminmax(rows);
  const int64_t lo = std::get<0>(mm).item<int64_t>();
  const int64_t hi = std::get<1>(mm).item<int64_t>();
  TORCH_CHECK(lo >= (allow_missing ? -1 : 0) && hi < total_rows, op, ": rows must lie in [",
              allow_missing ? -1 : 0, ", ", total_rows, "), got [", lo, ", ", hi, "]");
}

inline void check_bag_args(const at::Tensor& rows, const at::Tensor& offsets,
                           const std::optional<at::Tensor>& psw, const char* op) {
  TORCH_CHECK(offsets.dim() == 1 && offsets.scalar_type() == at::kLong && offsets.numel() >= 1,
              op, ": offsets must be a non-empty 1-D int64 tensor");
  TORCH_CHECK(offsets.device() == rows.device(), op, ": offsets on another device");
  if (psw) {
    TORCH_CHECK(psw->dim() == 1 && psw->numel() == rows.numel() &&
                    psw->scalar_type() == at::kFloat && psw->device() == rows.device(),
                op, ": per_sample_weights must be float32 and match rows");
  }
}

// The checks of each op, shared by its CPU and CUDA kernels.
inline void check_index_op(const at::Tensor& slot_keys, const at::Tensor& slot_rows,
                           const at::Tensor& keys, const char* op) {
  check_index(slot_keys, slot_rows, op);
  check_keys(keys, slot_keys, op);
}

inline void check_insert_op(const at::Tensor& slot_keys, const at::Tensor& slot_rows,
                            const at::Tensor& keys, const at::Tensor& pool,
                            const at::Tensor& pool_used) {
  check_index_op(slot_keys, slot_rows, keys, "hash_index_insert_");
  check_keys(pool, slot_keys, "hash_index_insert_ (row pool)");
  TORCH_CHECK(pool_used.numel() == 1 && pool_used.scalar_type() == at::kLong &&
                  pool_used.device() == slot_keys.device(),
              "hash_index_insert_: pool_used must be one int64 counter");
}

// A pooled lookup over the blocks (row -1 allowed); returns rows per block. Offsets
// data is checked by the CPU kernels only (reading it would sync a GPU).
inline int64_t check_bag_op(at::TensorList blocks, const at::Tensor& rows,
                            const at::Tensor& offsets, const std::optional<at::Tensor>& psw,
                            const char* op) {
  const int64_t bs = check_blocks(blocks, op);
  check_rows_meta(rows, blocks[0], op);
  check_bag_args(rows, offsets, psw, op);
  check_rows_data(rows, bs * static_cast<int64_t>(blocks.size()), true, op);
  return bs;
}

// An op addressing existing rows of the blocks (gather, scatter, init); returns rows per block.
inline int64_t check_row_op(at::TensorList blocks, const at::Tensor& rows, const char* op) {
  const int64_t bs = check_blocks(blocks, op);
  check_rows_meta(rows, blocks[0], op);
  check_rows_data(rows, bs * static_cast<int64_t>(blocks.size()), false, op);
  return bs;
}

inline void check_scatter_values(const at::Tensor& values, const at::Tensor& rows, int64_t dim) {
  TORCH_CHECK(values.dim() == 2 && values.size(0) == rows.numel() && values.size(1) == dim,
              "block_rows_scatter_: values must be [rows, dim]");
}

inline void check_init_keys(const at::Tensor& keys, const at::Tensor& rows) {
  check_keys(keys, rows, "block_rows_init_");
  TORCH_CHECK(keys.numel() == rows.numel(), "block_rows_init_: one key per row");
}

}  // namespace torchrec_ext
