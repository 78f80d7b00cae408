// The one place where torchrec_ext's operator schemas are declared. Kernels for
// each device register against these names in cpu/ and cuda/; fake (meta)
// kernels live in torchrec_ext/ops/*.py.
#include <torch/library.h>

TORCH_LIBRARY(torchrec_ext, m) {
  // Hashed tables. `pooling`: 0 = SUM, 1 = MEAN. `mode`: 0 = element, 1 = block.
  // Indices are shard-local ids (global id = index + id_offset).
  m.def(
      "hashed_bag_forward(Tensor weight, Tensor indices, Tensor offsets, "
      "Tensor? per_sample_weights, int pooling, int mode, int chunk, "
      "int rows_per_region, int slots, int id_offset, int col_offset, int seed, "
      "bool signed) -> Tensor");
  // Returns (grad_weight dense like weight, grad_per_sample_weights or empty).
  m.def(
      "hashed_bag_backward(Tensor grad_output, Tensor weight, Tensor indices, "
      "Tensor offsets, Tensor? per_sample_weights, int pooling, int mode, int chunk, "
      "int rows_per_region, int slots, int id_offset, int col_offset, int seed, "
      "bool signed, bool psw_grad) -> (Tensor, Tensor)");
  // Fills `weight` with U(low, high) drawn from the global coordinates
  // (row + row_offset, col + col_offset): identical values under every plan.
  m.def(
      "coord_uniform_(Tensor(a!) weight, int row_offset, int col_offset, int seed, "
      "float low, float high) -> Tensor(a!)");

  // QR / compositional tables (see qr_layout.h). `op`: 0 = mult, 1 = add,
  // 2 = concat. One weight per partition piece this shard holds; partition p maps
  // global id x (= index + id_offset) to row (x / divisors[p]) % moduli[p]
  // (moduli 0: no modulo) minus row_starts[p]; out_cols[p] is where its columns
  // land in the output (concat).
  m.def(
      "qr_bag_forward(Tensor[] weights, Tensor indices, Tensor offsets, "
      "Tensor? per_sample_weights, int pooling, int op, int[] divisors, int[] moduli, "
      "int[] row_starts, int[] out_cols, int id_offset, int out_dim) -> Tensor");
  // Returns, per partition, the (sorted, unique) local rows the batch touched and
  // their gradient rows, then the per-sample-weight gradient (or empty).
  m.def(
      "qr_bag_backward(Tensor grad_output, Tensor[] weights, Tensor indices, Tensor offsets, "
      "Tensor? per_sample_weights, int pooling, int op, int[] divisors, int[] moduli, "
      "int[] row_starts, int[] out_cols, int id_offset, bool psw_grad) "
      "-> (Tensor[], Tensor[], Tensor)");
}
