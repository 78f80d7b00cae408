// The one place where torchrec_ext's operator schemas are declared. Kernels for
// each device register against these names in cpu/ and cuda/; fake (meta)
// kernels live in torchrec_ext/ops/*.py.
#include <torch/library.h>

TORCH_LIBRARY(torchrec_ext, m) {
  // Hashed tables, batched: one call pools the bags of many tables. Table t owns bags
  // [table_bags[t], table_bags[t + 1]) of offsets, pools them with poolings[t]
  // (0 = SUM, 1 = MEAN) and has layout layouts[8t .. 8t + 8) = (mode: 0 element,
  // 1 block; chunk; rows_per_region; slots; id_offset; col_offset; seed; signed).
  // Indices are shard-local ids (global id = index + id_offset). Returns one
  // [bags of t, dim of t] output per table.
  m.def(
      "hashed_bags_forward(Tensor[] weights, Tensor indices, Tensor offsets, "
      "Tensor? per_sample_weights, int[] table_bags, int[] poolings, int[] layouts) "
      "-> Tensor[]");
  // Returns (grad_weight per table, dense like its weight; grad_per_sample_weights or empty).
  m.def(
      "hashed_bags_backward(Tensor[] grad_outputs, Tensor[] weights, Tensor indices, "
      "Tensor offsets, Tensor? per_sample_weights, int[] table_bags, int[] poolings, "
      "int[] layouts, bool psw_grad) -> (Tensor[], Tensor)");
  // The backward pass fused with SGD: weight -= lr * grad_weight, in place, without
  // a dense gradient. Returns grad_per_sample_weights (taken before the update) or empty.
  m.def(
      "hashed_bags_sgd_(Tensor(a!)[] weights, Tensor[] grad_outputs, Tensor indices, "
      "Tensor offsets, Tensor? per_sample_weights, int[] table_bags, int[] poolings, "
      "int[] layouts, float lr, bool psw_grad) -> Tensor");
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
  // Finds or inserts every key (duplicates allowed); a new key takes the next
  // row of `row_pool` (pool_used counts them). Returns (rows, inserted), where
  // inserted marks the one position per new key that created it.
  m.def(
      "hash_index_insert_(Tensor(a!) slot_keys, Tensor(b!) slot_rows, Tensor keys, "
      "Tensor row_pool, Tensor(c!) pool_used) -> (Tensor, Tensor)");
  // Erases keys; returns each erased key's row (-1 if absent or repeated).
  m.def("hash_index_erase_(Tensor(a!) slot_keys, Tensor(b!) slot_rows, Tensor keys) -> Tensor");
  m.def(
      "hash_index_rehash(Tensor slot_keys, Tensor slot_rows, int capacity) -> (Tensor, Tensor)");
  // 63-bit hash of each key: routes keys to ranks and checkpoint buckets.
  m.def("dynamic_key_hash(Tensor keys) -> Tensor");

  // Dynamic tables, row half: rows live in equal blocks; row -1 (a key the
  // table does not hold) reads as `missing_value`. Outputs are float32.
  m.def(
      "dynamic_bag_forward(Tensor[] blocks, Tensor rows, Tensor offsets, "
      "Tensor? per_sample_weights, int pooling, float missing_value) -> Tensor");
  // Returns (unique touched rows, their gradients, per-sample-weight gradient or empty).
  m.def(
      "dynamic_bag_backward(Tensor grad_output, Tensor[] blocks, Tensor rows, Tensor offsets, "
      "Tensor? per_sample_weights, int pooling, float missing_value, bool psw_grad) "
      "-> (Tensor, Tensor, Tensor)");
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
