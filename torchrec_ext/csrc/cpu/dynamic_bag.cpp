// CPU kernels of the dynamic-table row ops. A table's rows live in equal blocks
// (row r is row r % block_size of block r / block_size), so the table grows by
// adding a block and no row ever moves. Row -1 stands for an id the table does
// not hold (eval mode): it contributes `missing_value` in every column.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../check_inputs.h"
#include "../dynamic_check.h"
#include "../dynamic_table.h"

namespace torchrec_ext {
namespace {

template <typename scalar_t>
std::vector<scalar_t*> block_ptrs(at::TensorList blocks) {
  std::vector<scalar_t*> p;
  p.reserve(blocks.size());
  for (const auto& b : blocks) p.push_back(b.data_ptr<scalar_t>());
  return p;
}

at::Tensor dynamic_bag_forward_cpu(at::TensorList blocks, const at::Tensor& rows_in,
                                   const at::Tensor& offsets_in,
                                   const std::optional<at::Tensor>& psw_in, int64_t pooling,
                                   double missing_value) {
  check_bag_op(blocks, rows_in, offsets_in, psw_in, "dynamic_bag_forward");
  check_offsets_data(offsets_in.contiguous(), rows_in.numel(), "dynamic_bag_forward");
  const at::Tensor rows = rows_in.contiguous(), off_t = offsets_in.contiguous();
  const std::optional<at::Tensor> psw_t =
      psw_in ? std::optional<at::Tensor>(psw_in->contiguous()) : std::nullopt;
  const int64_t bs = blocks[0].size(0), D = blocks[0].size(1), B = off_t.numel() - 1;
  at::Tensor out = at::empty({B, D}, blocks[0].options().dtype(at::kFloat));
  const int64_t* r = rows.data_ptr<int64_t>();
  const int64_t* off = off_t.data_ptr<int64_t>();
  const float* psw = psw_t ? psw_t->data_ptr<float>() : nullptr;
  float* o = out.data_ptr<float>();
  const float miss = static_cast<float>(missing_value);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, blocks[0].scalar_type(),
                                  "dynamic_bag_forward", [&] {
    const auto W = block_ptrs<scalar_t>(blocks);
    at::parallel_for(0, B, 16, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        float* acc = o + b * D;
        std::fill(acc, acc + D, 0.f);
        const int64_t s = off[b], e = off[b + 1];
        for (int64_t i = s; i < e; ++i) {
          const float w = psw ? psw[i] : 1.f;
          if (r[i] < 0) {
            for (int64_t j = 0; j < D; ++j) acc[j] += w * miss;
            continue;
          }
          const scalar_t* row = W[r[i] / bs] + (r[i] % bs) * D;
          for (int64_t j = 0; j < D; ++j) acc[j] += w * static_cast<float>(row[j]);
        }
        if (pooling == 1 && e > s) {
          const float sc = 1.f / static_cast<float>(e - s);
          for (int64_t j = 0; j < D; ++j) acc[j] *= sc;
        }
      }
    });
  });
  return out;
}

// Returns the unique rows the batch touched (sorted, -1 excluded), their
// gradients [U, D] (float32) and the per-sample-weight gradient (or empty).
std::tuple<at::Tensor, at::Tensor, at::Tensor> dynamic_bag_backward_cpu(
    const at::Tensor& grad_in, at::TensorList blocks, const at::Tensor& rows_in,
    const at::Tensor& offsets_in, const std::optional<at::Tensor>& psw_in, int64_t pooling,
    double missing_value, bool psw_grad) {
  check_bag_op(blocks, rows_in, offsets_in, psw_in, "dynamic_bag_backward");
  check_offsets_data(offsets_in.contiguous(), rows_in.numel(), "dynamic_bag_backward");
  const at::Tensor rows = rows_in.contiguous(), off_t = offsets_in.contiguous();
  const at::Tensor go = grad_in.to(at::kFloat).contiguous();
  const int64_t bs = blocks[0].size(0), D = blocks[0].size(1), B = off_t.numel() - 1;
  const int64_t n = rows.numel();
  TORCH_CHECK(go.dim() == 2 && go.size(0) == B && go.size(1) == D,
              "dynamic_bag_backward: grad_output must be [bags, dim]");
  const std::optional<at::Tensor> psw_t =
      psw_in ? std::optional<at::Tensor>(psw_in->contiguous()) : std::nullopt;
  const float* psw = psw_t ? psw_t->data_ptr<float>() : nullptr;
  const int64_t* off = off_t.data_ptr<int64_t>();
  const int64_t* r = rows.data_ptr<int64_t>();
  // Bag and scale of every position.
  std::vector<int64_t> bag_of(n);
  std::vector<float> scale(n);
  for (int64_t b = 0; b < B; ++b) {
    const float sc = (pooling == 1 && off[b + 1] > off[b]) ? 1.f / (off[b + 1] - off[b]) : 1.f;
    for (int64_t i = off[b]; i < off[b + 1]; ++i) {
      bag_of[i] = b;
      scale[i] = sc;
    }
  }
  // Positions grouped by row: a stable sort, then one thread per run of a row.
  auto sorted = at::sort(rows, /*stable=*/true, 0, false);
  const at::Tensor srows = std::get<0>(sorted), order = std::get<1>(sorted);
  const int64_t* sr = srows.data_ptr<int64_t>();
  const int64_t* ord = order.data_ptr<int64_t>();
  std::vector<int64_t> starts;
  for (int64_t i = 0; i < n; ++i) {
    if (sr[i] >= 0 && (i == 0 || sr[i] != sr[i - 1])) starts.push_back(i);
  }
  const int64_t U = static_cast<int64_t>(starts.size());
  starts.push_back(n);
  at::Tensor urows = at::empty({U}, rows.options());
  at::Tensor grads = at::zeros({U, D}, go.options());
  const float* g = go.data_ptr<float>();
  int64_t* ur = urows.data_ptr<int64_t>();
  float* gr = grads.data_ptr<float>();
  at::parallel_for(0, U, 64, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      ur[u] = sr[starts[u]];
      float* acc = gr + u * D;
      for (int64_t i = starts[u]; i < starts[u + 1]; ++i) {
        const int64_t p = ord[i];
        const float c = scale[p] * (psw ? psw[p] : 1.f);
        const float* gb = g + bag_of[p] * D;
        for (int64_t j = 0; j < D; ++j) acc[j] += c * gb[j];
      }
    }
  });
  at::Tensor gpsw = at::empty({psw_grad ? n : 0}, go.options());
  if (psw_grad) {
    float* gp = gpsw.data_ptr<float>();
    const float miss = static_cast<float>(missing_value);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, blocks[0].scalar_type(),
                                    "dynamic_bag_backward_psw", [&] {
      const auto W = block_ptrs<scalar_t>(blocks);
      at::parallel_for(0, n, 256, [&](int64_t a, int64_t b) {
        for (int64_t i = a; i < b; ++i) {
          const float* gb = g + bag_of[i] * D;
          float dot = 0.f;
          if (r[i] < 0) {
            for (int64_t j = 0; j < D; ++j) dot += gb[j] * miss;
          } else {
            const scalar_t* row = W[r[i] / bs] + (r[i] % bs) * D;
            for (int64_t j = 0; j < D; ++j) dot += gb[j] * static_cast<float>(row[j]);
          }
          gp[i] = dot * scale[i];
        }
      });
    });
  }
  return {urows, grads, gpsw};
}

at::Tensor block_rows_gather_cpu(at::TensorList blocks, const at::Tensor& rows_in) {
  const int64_t bs = check_row_op(blocks, rows_in, "block_rows_gather");
  const at::Tensor rows = rows_in.contiguous();
  const int64_t D = blocks[0].size(1), n = rows.numel();
  at::Tensor out = at::empty({n, D}, blocks[0].options().dtype(at::kFloat));
  const int64_t* r = rows.data_ptr<int64_t>();
  float* o = out.data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, blocks[0].scalar_type(),
                                  "block_rows_gather", [&] {
    const auto W = block_ptrs<scalar_t>(blocks);
    at::parallel_for(0, n, 256, [&](int64_t a, int64_t b) {
      for (int64_t i = a; i < b; ++i) {
        const scalar_t* row = W[r[i] / bs] + (r[i] % bs) * D;
        for (int64_t j = 0; j < D; ++j) o[i * D + j] = static_cast<float>(row[j]);
      }
    });
  });
  return out;
}

// rows[i] := values[i] (accumulate: rows[i] += alpha * values[i]). Rows must be
// distinct when accumulating in parallel; the Python layer passes unique rows.
void block_rows_scatter_cpu(at::TensorList blocks, const at::Tensor& rows_in,
                            const at::Tensor& values_in, double alpha, bool accumulate) {
  const int64_t bs = check_row_op(blocks, rows_in, "block_rows_scatter_");
  const int64_t D = blocks[0].size(1), n = rows_in.numel();
  check_scatter_values(values_in, rows_in, D);
  const at::Tensor rows = rows_in.contiguous();
  const at::Tensor values = values_in.to(at::kFloat).contiguous();
  const int64_t* r = rows.data_ptr<int64_t>();
  const float* v = values.data_ptr<float>();
  const float a = static_cast<float>(alpha);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, blocks[0].scalar_type(),
                                  "block_rows_scatter_", [&] {
    const auto W = block_ptrs<scalar_t>(blocks);
    at::parallel_for(0, n, 256, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) {
        scalar_t* row = W[r[i] / bs] + (r[i] % bs) * D;
        for (int64_t j = 0; j < D; ++j) {
          const float x = v[i * D + j];
          row[j] = static_cast<scalar_t>(accumulate ? static_cast<float>(row[j]) + a * x : x);
        }
      }
    });
  });
}

// Initial values of new rows: a function of (key, global column) only.
void block_rows_init_cpu(at::TensorList blocks, const at::Tensor& rows_in,
                         const at::Tensor& keys_in, int64_t kind, double a, double b,
                         int64_t seed, int64_t col_offset) {
  const int64_t bs = check_row_op(blocks, rows_in, "block_rows_init_");
  check_init_keys(keys_in, rows_in);
  const at::Tensor rows = rows_in.contiguous(), keys = keys_in.contiguous();
  const int64_t D = blocks[0].size(1), n = rows.numel();
  const int64_t* r = rows.data_ptr<int64_t>();
  const int64_t* k = keys.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, blocks[0].scalar_type(),
                                  "block_rows_init_", [&] {
    const auto W = block_ptrs<scalar_t>(blocks);
    at::parallel_for(0, n, 64, [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) {
        scalar_t* row = W[r[i] / bs] + (r[i] % bs) * D;
        for (int64_t j = 0; j < D; ++j) {
          row[j] = static_cast<scalar_t>(init_value(kind, a, b, k[i], col_offset + j, seed));
        }
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(torchrec_ext, CPU, m) {
  m.impl("dynamic_bag_forward", &dynamic_bag_forward_cpu);
  m.impl("dynamic_bag_backward", &dynamic_bag_backward_cpu);
  m.impl("block_rows_gather", &block_rows_gather_cpu);
  m.impl("block_rows_scatter_", &block_rows_scatter_cpu);
  m.impl("block_rows_init_", &block_rows_init_cpu);
}

}  // namespace torchrec_ext
