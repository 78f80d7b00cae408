// Argument checks of the dynamic-table ops, shared by the CPU and CUDA kernels.
// The Python layer (HashTable, DynamicRows) validates with the table's name
// first; these keep a bad call from touching memory outside the index or blocks.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "check_inputs.h"   // check_table_bags
#include "dynamic_table.h"  // kMaxInitColumn

namespace torchrec_ext {

inline void check_index(const at::Tensor& slot_keys, const at::Tensor& slot_rows, const char* op) {
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
  TORCH_CHECK(keys.device() == like.device(), op, ": keys on ", keys.device(), ", table on ",
              like.device());
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
  TORCH_CHECK(offsets.dim() == 1 && offsets.scalar_type() == at::kLong && offsets.numel() >= 1, op,
              ": offsets must be a non-empty 1-D int64 tensor");
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

// A batched lookup: one index per table, key_ends splitting `keys` among them, and
// either no stamps or one last_seen, counts (1-D int64, one entry per row) and step
// per table.
inline void check_lookup_op(at::TensorList slot_keys, at::TensorList slot_rows,
                            const at::Tensor& keys, at::IntArrayRef key_ends,
                            at::TensorList last_seen, at::TensorList counts,
                            at::IntArrayRef steps) {
  const char* op = "hash_index_lookup_";
  const size_t T = slot_keys.size();
  TORCH_CHECK(slot_rows.size() == T && key_ends.size() == T + 1, op,
              ": one slot_keys and slot_rows per table and T + 1 key_ends");
  TORCH_CHECK(keys.dim() == 1 && keys.scalar_type() == at::kLong, op,
              ": keys must be a 1-D int64 tensor");
  TORCH_CHECK(key_ends[0] == 0 && key_ends[T] == keys.numel(), op,
              ": key_ends must run from 0 to the number of keys");
  for (size_t t = 0; t < T; ++t) {
    check_index(slot_keys[t], slot_rows[t], op);
    check_keys(keys, slot_keys[t], op);
    TORCH_CHECK(key_ends[t] <= key_ends[t + 1], op, ": key_ends must not decrease");
  }
  const bool stamp = !steps.empty();
  TORCH_CHECK(stamp ? (last_seen.size() == T && counts.size() == T && steps.size() == T)
                    : (last_seen.empty() && counts.empty()),
              op, ": last_seen, counts and steps are all per table, or all empty");
  for (size_t t = 0; stamp && t < T; ++t) {
    for (const at::Tensor* m : {&last_seen[t], &counts[t]}) {
      TORCH_CHECK(m->dim() == 1 && m->scalar_type() == at::kLong && m->is_contiguous() &&
                      m->device() == keys.device(),
                  op, ": last_seen and counts must be contiguous 1-D int64 on the keys' device");
    }
  }
}

// One table of a batched pooled call (dynamic_bags_forward / _backward): its blocks
// [block0, block0 + blocks) of the call's list, their shape, its bags [bag0, bag1) of
// the shared offsets, and how it pools. Rows are local to the table.
struct DynTable {
  int64_t block0, blocks, block_size, dim, bag0, bag1;
  bool mean;
  float missing;
  int64_t total_rows() const { return blocks * block_size; }
};

// Shape and type checks of a batched pooled call (no data reads: CPU and CUDA). Every
// table has at least one block; the tables of a call share one dtype and device.
inline std::vector<DynTable> dynamic_batch_tables(
    at::TensorList blocks, at::IntArrayRef table_blocks, const at::Tensor& rows,
    const at::Tensor& offsets, const std::optional<at::Tensor>& psw, at::IntArrayRef table_bags,
    at::IntArrayRef poolings, at::ArrayRef<double> missing, const char* op) {
  const int64_t T = static_cast<int64_t>(poolings.size());
  TORCH_CHECK(static_cast<int64_t>(table_blocks.size()) == T + 1 &&
                  static_cast<int64_t>(table_bags.size()) == T + 1 &&
                  static_cast<int64_t>(missing.size()) == T,
              op, ": table_blocks, table_bags, poolings and missing_values must describe ", T,
              " tables");
  TORCH_CHECK(table_blocks[0] == 0 && table_blocks[T] == static_cast<int64_t>(blocks.size()), op,
              ": table_blocks must split the blocks list");
  check_rows_meta(rows, rows, op);
  check_bag_args(rows, offsets, psw, op);
  check_table_bags(table_bags, offsets, op);
  std::vector<DynTable> out;
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(table_blocks[t + 1] > table_blocks[t], op, ": table ", t, " has no blocks");
    const auto tb = blocks.slice(table_blocks[t], table_blocks[t + 1] - table_blocks[t]);
    const int64_t bs = check_blocks(tb, op);
    TORCH_CHECK(tb[0].scalar_type() == blocks[0].scalar_type() && tb[0].device() == rows.device(),
                op, ": the tables of one call share a dtype and the rows' device");
    out.push_back({table_blocks[t], table_blocks[t + 1] - table_blocks[t], bs, tb[0].size(1),
                   table_bags[t], table_bags[t + 1], poolings[t] == 1,
                   static_cast<float>(missing[t])});
  }
  return out;
}

// The output gradients of a batched backward call: one [bags, dim] per table, as float32.
inline std::vector<at::Tensor> dynamic_batch_grads(at::TensorList grad_outputs,
                                                   const std::vector<DynTable>& tables,
                                                   const char* op) {
  TORCH_CHECK(grad_outputs.size() == tables.size(), op, ": one grad_output per table");
  std::vector<at::Tensor> go;
  for (size_t t = 0; t < tables.size(); ++t) {
    const at::Tensor& g = grad_outputs[t];
    TORCH_CHECK(
        g.dim() == 2 && g.size(0) == tables[t].bag1 - tables[t].bag0 && g.size(1) == tables[t].dim,
        op, ": grad_output ", t, " must be [bags, dim] of its table");
    go.push_back(g.to(at::kFloat).contiguous());
  }
  return go;
}

// The update half of dynamic_bags_sgd_: per table, the rows that may be updated
// (real_rows, at most the table's rows), whether its gradient is a mean over the row's
// positions, and its `updated` stamps (1-D int64, at least real_rows long) and step.
inline void check_sgd_args(const std::vector<DynTable>& tables, at::IntArrayRef real_rows,
                           at::IntArrayRef mean_by_id, at::TensorList updated,
                           at::IntArrayRef steps, const at::Tensor& rows, const char* op) {
  const size_t T = tables.size();
  TORCH_CHECK(
      real_rows.size() == T && mean_by_id.size() == T && updated.size() == T && steps.size() == T,
      op, ": real_rows, mean_by_id, updated and steps need one entry per table");
  for (size_t t = 0; t < T; ++t) {
    TORCH_CHECK(real_rows[t] >= 0 && real_rows[t] <= tables[t].total_rows(), op,
                ": real_rows must lie within the table's rows");
    const at::Tensor& u = updated[t];
    TORCH_CHECK(u.dim() == 1 && u.scalar_type() == at::kLong && u.is_contiguous() &&
                    u.device() == rows.device() && u.numel() >= real_rows[t],
                op, ": updated must be contiguous 1-D int64 covering the table's real rows");
  }
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

inline void check_init_keys(const at::Tensor& keys, const at::Tensor& rows, int64_t col_offset) {
  check_keys(keys, rows, "block_rows_init_");
  TORCH_CHECK(keys.numel() == rows.numel(), "block_rows_init_: one key per row");
  TORCH_CHECK(col_offset >= 0 && col_offset < kMaxInitColumn, "block_rows_init_: col_offset (",
              col_offset, ") must lie in [0, 2^40)");
}

}  // namespace torchrec_ext
