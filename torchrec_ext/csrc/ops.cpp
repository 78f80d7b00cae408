// The one place where torchrec_ext's operator schemas are declared. Kernels for
// each device register against these names in cpu/ and cuda/; fake (meta)
// kernels live in torchrec_ext/ops/*.py.
#include <torch/library.h>

TORCH_LIBRARY(torchrec_ext, m) {
  // Hashed tables, batched: one call pools the bags of many tables. Table t owns bags
  // [table_bags[t], table_bags[t + 1]) of offsets, pools them with poolings[t]
  // (0 = SUM, 1 = MEAN) and has layout layouts[9t .. 9t + 9) = (mode: 0 element,
  // 1 block; chunk; rows_per_region; slots; id_offset; col_offset; seed; signed;
  // align: block starts are multiples of it).
  // Indices are shard-local ids (global id = index + id_offset). Returns one
  // [bags of t, dim of t] output per table.
  m.def(
      "hashed_bags_forward(Tensor[] weights, Tensor indices, Tensor offsets, "
      "Tensor? per_sample_weights, int[] table_bags, int[] poolings, int[] layouts) "
      "-> Tensor[]");
  // hashed_bags_forward that also returns where each id's blocks lie, for the backward
  // pass of the same call (its `positions`): int64 [indices, P], P the most blocks per
  // id (dim / chunk) of the call's block-mode tables, row i holding id i's packed
  // blocks (element-mode tables keep nothing). The CUDA kernels keep nothing and
  // return [0, P].
  m.def(
      "hashed_bags_forward_keep(Tensor[] weights, Tensor indices, Tensor offsets, "
      "Tensor? per_sample_weights, int[] table_bags, int[] poolings, int[] layouts) "
      "-> (Tensor[], Tensor)");
  // Returns (grad_weight per table, dense like its weight; grad_per_sample_weights or empty).
  m.def(
      "hashed_bags_backward(Tensor[] grad_outputs, Tensor[] weights, Tensor indices, "
      "Tensor offsets, Tensor? per_sample_weights, int[] table_bags, int[] poolings, "
      "int[] layouts, bool psw_grad, Tensor? positions=None) -> (Tensor[], Tensor)");
  // The backward pass fused with SGD: weight -= lr * grad_weight, in place, without
  // a dense gradient. Returns grad_per_sample_weights (taken before the update) or empty.
  m.def(
      "hashed_bags_sgd_(Tensor(a!)[] weights, Tensor[] grad_outputs, Tensor indices, "
      "Tensor offsets, Tensor? per_sample_weights, int[] table_bags, int[] poolings, "
      "int[] layouts, float lr, bool psw_grad, Tensor? positions=None) -> Tensor");
  // Fills `weight` with U(low, high) drawn from the global coordinates
  // (row + row_offset, col + col_offset): identical values under every plan.
  m.def(
      "coord_uniform_(Tensor(a!) weight, int row_offset, int col_offset, int seed, "
      "float low, float high) -> Tensor(a!)");

  // QR / compositional tables (see qr_layout.h), batched like the hashed ops: table
  // t owns bags [table_bags[t], table_bags[t + 1]) of offsets, pools them with
  // poolings[t], and its layout is the next 4 + 4k ints of `layouts`: (k, op,
  // id_offset, out_dim), k divisors, k moduli, k row_starts, k out_cols. It holds
  // the next k `weights`, one per partition piece. `op`: 0 = mult, 1 = add,
  // 2 = concat. Partition p maps global id x (= index + id_offset) to row
  // (x / divisors[p]) % moduli[p] (moduli 0: no modulo) minus row_starts[p];
  // out_cols[p] is where its columns land in the output (concat). Returns one
  // [bags of t, out_dim of t] output per table.
  m.def(
      "qr_bags_forward(Tensor[] weights, Tensor indices, Tensor offsets, "
      "Tensor? per_sample_weights, int[] table_bags, int[] poolings, int[] layouts) -> Tensor[]");
  // Returns, per partition piece (in weights order), the (sorted, unique) local rows
  // the batch touched and their gradient rows, then the per-sample-weight gradient
  // (or empty).
  m.def(
      "qr_bags_backward(Tensor[] grad_outputs, Tensor[] weights, Tensor indices, Tensor offsets, "
      "Tensor? per_sample_weights, int[] table_bags, int[] poolings, int[] layouts, bool psw_grad) "
      "-> (Tensor[], Tensor[], Tensor)");

  // Dynamic tables, index half (see dynamic_table.h): an open-addressing map
  // int64 key -> row over slot_keys/slot_rows (power-of-two length, at most half
  // full; the caller grows it with hash_index_rehash). Missing keys find -1.
  m.def("hash_index_find(Tensor slot_keys, Tensor slot_rows, Tensor keys) -> Tensor");
  // find over many tables in one call: table t's keys are keys[key_ends[t] ..
  // key_ends[t + 1]). With `steps` (one per table; empty: read only) every key found
  // stamps its row: last_seen[t][row] = steps[t], counts[t][row] += 1.
  m.def(
      "hash_index_lookup_(Tensor[] slot_keys, Tensor[] slot_rows, Tensor keys, int[] key_ends, "
      "Tensor(a!)[] last_seen, Tensor(b!)[] counts, int[] steps) -> Tensor");
  // Finds or inserts every key (duplicates allowed); a new key takes the next
  // row of `row_pool` (pool_used counts them). Returns (rows, inserted), where
  // inserted marks the one position per new key that created it.
  m.def(
      "hash_index_insert_(Tensor(a!) slot_keys, Tensor(b!) slot_rows, Tensor keys, "
      "Tensor row_pool, Tensor(c!) pool_used) -> (Tensor, Tensor)");
  // Erases keys; returns each erased key's row (-1 if absent or repeated).
  m.def("hash_index_erase_(Tensor(a!) slot_keys, Tensor(b!) slot_rows, Tensor keys) -> Tensor");
  m.def("hash_index_rehash(Tensor slot_keys, Tensor slot_rows, int capacity) -> (Tensor, Tensor)");
  // 63-bit hash of each key: routes keys to ranks and checkpoint buckets.
  m.def("dynamic_key_hash(Tensor keys) -> Tensor");

  // Dynamic tables, row half: a table's rows live in equal blocks; row -1 (a key the
  // table does not hold) reads as its `missing_value`. Batched like the hashed ops:
  // table t owns blocks [table_blocks[t], table_blocks[t + 1]) of `blocks` and bags
  // [table_bags[t], table_bags[t + 1]) of offsets; `rows` are table-local. The tables
  // of a call share a dtype. Outputs are float32, one [bags of t, dim of t] per table.
  m.def(
      "dynamic_bags_forward(Tensor[] blocks, int[] table_blocks, Tensor rows, Tensor offsets, "
      "Tensor? per_sample_weights, int[] table_bags, int[] poolings, float[] missing_values) "
      "-> Tensor[]");
  // Returns, per table, the unique rows its bags touched (sorted), their gradients and
  // how many positions touched each; then the per-sample-weight gradient (or empty).
  m.def(
      "dynamic_bags_backward(Tensor[] grad_outputs, Tensor[] blocks, int[] table_blocks, "
      "Tensor rows, Tensor offsets, Tensor? per_sample_weights, int[] table_bags, int[] poolings, "
      "float[] missing_values, bool psw_grad) -> (Tensor[], Tensor[], Tensor[], Tensor)");
  // The backward pass fused with SGD, in place: each touched row r < real_rows[t]
  // (rows past it are scratch rows of ids not admitted) gets r -= lr * grad (a mean
  // over r's positions where mean_by_id[t]) and updated[t][r] = steps[t]. Returns the
  // per-sample-weight gradient, taken before the update (or empty).
  m.def(
      "dynamic_bags_sgd_(Tensor(a!)[] blocks, int[] table_blocks, Tensor[] grad_outputs, Tensor "
      "rows, "
      "Tensor offsets, Tensor? per_sample_weights, int[] table_bags, int[] poolings, "
      "float[] missing_values, int[] real_rows, int[] mean_by_id, float lr, Tensor(b!)[] updated, "
      "int[] steps, bool psw_grad) -> Tensor");
  m.def("block_rows_gather(Tensor[] blocks, Tensor rows) -> Tensor");
  // rows := values, or rows += alpha * values (accumulate; rows must be distinct).
  m.def(
      "block_rows_scatter_(Tensor(a!)[] blocks, Tensor rows, Tensor values, float alpha, "
      "bool accumulate) -> ()");
  // Initial values from (key, global column): kind 0 constant a, 1 U(a, b),
  // 2 N(a, b^2), 3 N(a, b^2) truncated at two standard deviations.
  m.def(
      "block_rows_init_(Tensor(a!)[] blocks, Tensor rows, Tensor keys, int kind, float a, "
      "float b, int seed, int col_offset) -> ()");
}
