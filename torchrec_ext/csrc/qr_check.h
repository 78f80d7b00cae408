// Builds a QRLayout from an op call and checks it against the weights, for the
// CPU and CUDA kernels alike. The Python layer checks ids with the table's name
// first; these checks keep a bad call from reading or writing outside a table.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "check_inputs.h"  // check_table_bags
#include "qr_layout.h"

namespace torchrec_ext {

inline QRLayout make_qr_layout(at::TensorList weights, int64_t op, at::IntArrayRef divisors,
                               at::IntArrayRef moduli, at::IntArrayRef row_starts,
                               at::IntArrayRef out_cols, int64_t id_offset, int64_t out_dim) {
  const int64_t k = static_cast<int64_t>(weights.size());
  TORCH_CHECK(k >= 1 && k <= kMaxPartitions, "qr bag: 1 to ", kMaxPartitions, " partitions, got ",
              k);
  TORCH_CHECK(static_cast<int64_t>(divisors.size()) == k &&
                  static_cast<int64_t>(moduli.size()) == k &&
                  static_cast<int64_t>(row_starts.size()) == k &&
                  static_cast<int64_t>(out_cols.size()) == k,
              "qr bag: divisors, moduli, row_starts and out_cols need one entry per weight");
  TORCH_CHECK(op == kMult || op == kAdd || op == kConcat, "qr bag: op must be 0, 1 or 2");
  TORCH_CHECK(id_offset >= 0 && out_dim >= 0, "qr bag: bad id_offset or out_dim");
  QRLayout L{};
  L.k = k;
  L.op = op;
  L.id_offset = id_offset;
  L.out_dim = out_dim;
  for (int64_t p = 0; p < k; ++p) {
    const at::Tensor& w = weights[p];
    TORCH_CHECK(w.dim() == 2, "qr bag: weight ", p, " must be 2-D");
    TORCH_CHECK(w.scalar_type() == weights[0].scalar_type() && w.device() == weights[0].device(),
                "qr bag: all weights must share dtype and device");
    TORCH_CHECK(divisors[p] >= 1 && moduli[p] >= 0 && row_starts[p] >= 0,
                "qr bag: divisors must be >= 1, moduli and row_starts >= 0");
    L.div[p] = divisors[p];
    L.mod[p] = moduli[p];
    L.row_start[p] = row_starts[p];
    L.rows[p] = w.size(0);
    L.cols[p] = w.size(1);
    L.out_col[p] = out_cols[p];
    L.inv_div[p] = 1.0 / static_cast<double>(divisors[p]);
    L.inv_mod[p] = moduli[p] > 0 ? 1.0 / static_cast<double>(moduli[p]) : 0.0;
    if (op == kConcat) {
      TORCH_CHECK(out_cols[p] >= 0 && out_cols[p] + w.size(1) <= out_dim, "qr bag: partition ", p,
                  " columns fall outside the output");
    } else {
      TORCH_CHECK(w.size(1) == out_dim && out_cols[p] == 0,
                  "qr bag: mult/add partitions must all have out_dim columns");
    }
  }
  TORCH_CHECK(at::isFloatingType(weights[0].scalar_type()),
              "qr bag: weights must be floating point");
  return L;
}

inline void check_qr_bags(const at::Tensor& indices, const at::Tensor& offsets,
                          const std::optional<at::Tensor>& psw) {
  TORCH_CHECK(indices.dim() == 1 && indices.scalar_type() == at::kLong,
              "qr bag: indices must be a 1-D int64 tensor");
  TORCH_CHECK(offsets.dim() == 1 && offsets.scalar_type() == at::kLong && offsets.numel() >= 1,
              "qr bag: offsets must be a non-empty 1-D int64 tensor");
  if (psw) {
    TORCH_CHECK(psw->dim() == 1 && psw->numel() == indices.numel(),
                "qr bag: per_sample_weights must match indices");
  }
}

inline std::vector<at::Tensor> contiguous_all(at::TensorList weights) {
  std::vector<at::Tensor> ws;
  for (const auto& w : weights) ws.push_back(w.contiguous());
  return ws;
}

// One table of a batched QR call.
struct QRTable {
  QRLayout L;
  int64_t piece0;      // its partition pieces are weights[piece0, piece0 + L.k)
  int64_t bag0, bag1;  // its bags of the shared offsets
  bool mean;
};

// Number of ints one table's layout takes in a batched call: (k, op, id_offset,
// out_dim), then k divisors, k moduli, k row_starts and k out_cols.
constexpr int64_t qr_layout_ints(int64_t k) { return 4 + 4 * k; }

// Shape and type checks of a batched QR call (no data reads: CPU and CUDA).
inline std::vector<QRTable> qr_batch_tables(at::TensorList weights, const at::Tensor& indices,
                                            const at::Tensor& offsets,
                                            const std::optional<at::Tensor>& psw,
                                            at::IntArrayRef table_bags, at::IntArrayRef poolings,
                                            at::IntArrayRef layouts) {
  check_qr_bags(indices, offsets, psw);
  const int64_t T = static_cast<int64_t>(poolings.size());
  const int64_t n_ints = static_cast<int64_t>(layouts.size());
  const int64_t n_weights = static_cast<int64_t>(weights.size());
  TORCH_CHECK(static_cast<int64_t>(table_bags.size()) == T + 1,
              "qr bag: table_bags and poolings must describe the same tables");
  check_table_bags(table_bags, offsets, "qr bag");
  std::vector<QRTable> out;
  int64_t at = 0, piece = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t k = at < n_ints ? layouts[at] : 0;
    TORCH_CHECK(
        k >= 1 && k <= kMaxPartitions && at + qr_layout_ints(k) <= n_ints && piece + k <= n_weights,
        "qr bag: the layouts and weights do not describe ", T, " tables");
    TORCH_CHECK(poolings[t] == 0 || poolings[t] == 1,
                "qr bag: pooling must be 0 (sum) or 1 (mean)");
    const int64_t* v = layouts.data() + at + 4;
    auto part = [&](int64_t i) { return at::IntArrayRef(v + i * k, static_cast<size_t>(k)); };
    const QRLayout L = make_qr_layout(weights.slice(piece, k), layouts[at + 1], part(0), part(1),
                                      part(2), part(3), layouts[at + 2], layouts[at + 3]);
    TORCH_CHECK(weights[piece].scalar_type() == weights[0].scalar_type() &&
                    weights[piece].device() == indices.device(),
                "qr bag: the tables of one call share a dtype and the indices' device");
    out.push_back({L, piece, table_bags[t], table_bags[t + 1], poolings[t] == 1});
    at += qr_layout_ints(k);
    piece += k;
  }
  TORCH_CHECK(at == n_ints && piece == n_weights,
              "qr bag: the layouts and weights do not describe ", T, " tables");
  return out;
}

// Per-table output gradients, checked against the tables' bags and made contiguous.
inline std::vector<at::Tensor> qr_batch_grads(at::TensorList grads,
                                              const std::vector<QRTable>& tables,
                                              at::ScalarType dtype) {
  TORCH_CHECK(grads.size() == tables.size(), "qr_bags_backward: one grad_output per table");
  std::vector<at::Tensor> out;
  for (size_t t = 0; t < tables.size(); ++t) {
    const int64_t B = tables[t].bag1 - tables[t].bag0, D = tables[t].L.out_dim;
    TORCH_CHECK(grads[t].dim() == 2 && grads[t].size(0) == B && grads[t].size(1) == D,
                "qr_bags_backward: grad_output of table ", t, " must be [", B, ", ", D, "]");
    out.push_back(grads[t].contiguous().to(dtype));
  }
  return out;
}

}  // namespace torchrec_ext
