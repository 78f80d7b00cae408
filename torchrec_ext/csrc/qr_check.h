// Builds a QRLayout from an op call and checks it against the weights, for the
// CPU and CUDA kernels alike. The Python layer checks ids with the table's name
// first; these checks keep a bad call from reading or writing outside a table.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "qr_layout.h"

namespace torchrec_ext {

inline QRLayout make_qr_layout(at::TensorList weights, int64_t op, at::IntArrayRef divisors,
                               at::IntArrayRef moduli, at::IntArrayRef row_starts,
                               at::IntArrayRef out_cols, int64_t id_offset, int64_t out_dim) {
  const int64_t k = static_cast<int64_t>(weights.size());
  TORCH_CHECK(k >= 1 && k <= kMaxPartitions, "qr bag: 1 to ", kMaxPartitions,
              " partitions, got ", k);
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
      TORCH_CHECK(out_cols[p] >= 0 && out_cols[p] + w.size(1) <= out_dim,
                  "qr bag: partition ", p, " columns fall outside the output");
    } else {
      TORCH_CHECK(w.size(1) == out_dim && out_cols[p] == 0,
                  "qr bag: mult/add partitions must all have out_dim columns");
    }
  }
  TORCH_CHECK(at::isFloatingType(weights[0].scalar_type()), "qr bag: weights must be floating point");
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

inline void check_qr_grad_output(const at::Tensor& grad_output, const at::Tensor& offsets) {
  TORCH_CHECK(grad_output.dim() == 2 && grad_output.size(0) == offsets.numel() - 1,
              "qr_bag_backward: grad_output must have one row per bag");
}

inline std::vector<at::Tensor> contiguous_all(at::TensorList weights) {
  std::vector<at::Tensor> ws;
  for (const auto& w : weights) ws.push_back(w.contiguous());
  return ws;
}

}  // namespace torchrec_ext
