// CPU kernels of the dynamic-table row ops. A table's rows live in equal blocks
// (row r is row r % block_size of block r / block_size), so the table grows by
// adding a block and no row ever moves. Row -1 stands for an id the table does
// not hold (eval mode): it contributes `missing_value` in every column. The pooled
// ops are batched: one call serves every table of a lookup kernel.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <tuple>
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

// The first table whose bags end after global bag b (tables are in bag order).
size_t table_after(const std::vector<DynTable>& tables, int64_t b) {
  size_t lo = 0, hi = tables.size() - 1;
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    if (tables[mid].bag1 > b)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

// Runs fn(table, bag) over every bag of every table, in parallel over bags.
template <typename Fn>
void for_each_bag(const std::vector<DynTable>& tables, int64_t grain, Fn&& fn) {
  if (tables.empty()) return;
  at::parallel_for(tables.front().bag0, tables.back().bag1, grain, [&](int64_t b0, int64_t b1) {
    size_t t = table_after(tables, b0);
    for (int64_t b = b0; b < b1; ++b) {
      while (tables[t].bag1 <= b) ++t;
      fn(t, b);
    }
  });
}

// Pointer to row r of a table whose blocks start at W + d.block0.
template <typename scalar_t>
inline scalar_t* table_row(const std::vector<scalar_t*>& W, const DynTable& d, int64_t r) {
  return W[d.block0 + r / d.block_size] + (r % d.block_size) * d.dim;
}

// Pools every table's bags in one parallel pass; one float32 [bags, dim] per table.
std::vector<at::Tensor> dynamic_bags_forward_cpu(
    at::TensorList blocks, at::IntArrayRef table_blocks, const at::Tensor& rows_in,
    const at::Tensor& offsets_in, const std::optional<at::Tensor>& psw_in,
    at::IntArrayRef table_bags, at::IntArrayRef poolings, at::ArrayRef<double> missing_values) {
  constexpr const char* op = "dynamic_bags_forward";
  const auto tables = dynamic_batch_tables(blocks, table_blocks, rows_in, offsets_in, psw_in,
                                           table_bags, poolings, missing_values, op);
  const at::Tensor rows = rows_in.contiguous(), off_t = offsets_in.contiguous();
  check_offsets_data(off_t, rows.numel(), op);
  const std::optional<at::Tensor> psw_t =
      psw_in ? std::optional<at::Tensor>(psw_in->contiguous()) : std::nullopt;
  std::vector<at::Tensor> outs;
  std::vector<float*> O;
  for (const DynTable& d : tables) {
    outs.push_back(at::empty({d.bag1 - d.bag0, d.dim}, rows.options().dtype(at::kFloat)));
    O.push_back(outs.back().data_ptr<float>());
  }
  if (tables.empty()) return outs;
  const int64_t* r = rows.data_ptr<int64_t>();
  const int64_t* off = off_t.data_ptr<int64_t>();
  const float* psw = psw_t ? psw_t->data_ptr<float>() : nullptr;
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, blocks[0].scalar_type(), op, [&] {
    const auto W = block_ptrs<scalar_t>(blocks);
    for_each_bag(tables, 16, [&](size_t t, int64_t b) {
      const DynTable& d = tables[t];
      const int64_t D = d.dim, s = off[b], e = off[b + 1];
      float* acc = O[t] + (b - d.bag0) * D;
      std::fill(acc, acc + D, 0.f);
      for (int64_t i = s; i < e; ++i) {
        const float w = psw ? psw[i] : 1.f;
        if (r[i] < 0 || r[i] >= d.total_rows()) {
          if (r[i] != -1) bad.store(true, std::memory_order_relaxed);
          for (int64_t j = 0; j < D; ++j) acc[j] += w * d.missing;
          continue;
        }
        const scalar_t* row = table_row(W, d, r[i]);
        for (int64_t j = 0; j < D; ++j) acc[j] += w * static_cast<float>(row[j]);
      }
      if (d.mean && e > s) {
        const float sc = 1.f / static_cast<float>(e - s);
        for (int64_t j = 0; j < D; ++j) acc[j] *= sc;
      }
    });
  });
  TORCH_CHECK(!bad.load(), op, ": rows must lie in [-1, rows of their table)");
  return outs;
}

// The positions of a batched call grouped by (table, row): every (table, row) gets a
// key unique across the call, so one sort groups the positions of all tables, and
// each run of equal keys is one touched row.
struct Grouping {
  std::vector<int64_t> key0;      // table t's row x has key key0[t] + x
  std::vector<int32_t> table_of;  // per position (-1: in no table's bags)
  std::vector<int64_t> bag_of;
  std::vector<float> scale;        // the pooling factor of its bag
  at::Tensor skeys, order;         // keys sorted (-1: no row) and their positions
  std::vector<int64_t> starts;     // first sorted position of every run, then n
  std::vector<int64_t> first_run;  // table t's runs are [first_run[t], first_run[t + 1])
  int64_t runs() const { return static_cast<int64_t>(starts.size()) - 1; }
  int64_t row(size_t t, int64_t u) const { return skeys.data_ptr<int64_t>()[starts[u]] - key0[t]; }
  int64_t count(int64_t u) const { return starts[u + 1] - starts[u]; }
};

Grouping group_positions(const std::vector<DynTable>& tables, const at::Tensor& rows,
                         const int64_t* off, const char* op) {
  const int64_t* r = rows.data_ptr<int64_t>();
  const int64_t n = rows.numel();
  const size_t T = tables.size();
  Grouping G;
  G.key0.assign(T + 1, 0);
  for (size_t t = 0; t < T; ++t) G.key0[t + 1] = G.key0[t] + tables[t].total_rows();
  G.table_of.assign(n, -1);
  G.bag_of.assign(n, -1);
  G.scale.assign(n, 0.f);
  at::Tensor keys = at::full({n}, -1, rows.options());
  int64_t* k = keys.data_ptr<int64_t>();
  std::atomic<bool> bad{false};
  for_each_bag(tables, 64, [&](size_t t, int64_t b) {
    const DynTable& d = tables[t];
    const float sc = (d.mean && off[b + 1] > off[b]) ? 1.f / (off[b + 1] - off[b]) : 1.f;
    for (int64_t i = off[b]; i < off[b + 1]; ++i) {
      G.table_of[i] = static_cast<int32_t>(t);
      G.bag_of[i] = b;
      G.scale[i] = sc;
      if (r[i] >= 0 && r[i] < d.total_rows())
        k[i] = G.key0[t] + r[i];
      else if (r[i] != -1)
        bad.store(true, std::memory_order_relaxed);
    }
  });
  TORCH_CHECK(!bad.load(), op, ": rows must lie in [-1, rows of their table)");
  std::tie(G.skeys, G.order) = at::sort(keys, /*stable=*/true, 0, false);
  const int64_t* sk = G.skeys.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (sk[i] >= 0 && (i == 0 || sk[i] != sk[i - 1])) G.starts.push_back(i);
  }
  const int64_t U = static_cast<int64_t>(G.starts.size());
  G.starts.push_back(n);
  G.first_run.resize(T + 1);
  for (size_t t = 0; t <= T; ++t) {
    G.first_run[t] = std::partition_point(G.starts.begin(), G.starts.begin() + U,
                                          [&](int64_t s) { return sk[s] < G.key0[t]; }) -
                     G.starts.begin();
  }
  return G;
}

// fn(t, u, buf) for every run u (of table t), in parallel; buf is `scratch` floats of
// the calling worker's own.
template <typename Fn>
void for_each_run(const Grouping& G, int64_t scratch, Fn&& fn) {
  at::parallel_for(0, G.runs(), 64, [&](int64_t u0, int64_t u1) {
    std::vector<float> buf(scratch);
    size_t t =
        std::upper_bound(G.first_run.begin(), G.first_run.end(), u0) - G.first_run.begin() - 1;
    for (int64_t u = u0; u < u1; ++u) {
      while (G.first_run[t + 1] <= u) ++t;
      fn(t, u, buf.data());
    }
  });
}

// acc[0, dim) := the gradient of run u's row: its positions' output gradients, each
// times its pooling factor and sample weight, summed in position order.
inline void run_grad(const Grouping& G, const DynTable& d, const float* go, const float* psw,
                     int64_t u, float* acc) {
  const int64_t* ord = G.order.data_ptr<int64_t>();
  const int64_t D = d.dim;
  std::fill(acc, acc + D, 0.f);
  for (int64_t i = G.starts[u]; i < G.starts[u + 1]; ++i) {
    const int64_t p = ord[i];
    const float c = G.scale[p] * (psw ? psw[p] : 1.f);
    const float* gb = go + (G.bag_of[p] - d.bag0) * D;
    for (int64_t j = 0; j < D; ++j) acc[j] += c * gb[j];
  }
}

// d(loss)/d(per-sample weight) of every position: its output gradient . its row, times
// the pooling factor (0 for positions in no table's bags).
at::Tensor psw_grads(const Grouping& G, const std::vector<DynTable>& tables, at::TensorList blocks,
                     const std::vector<at::Tensor>& go, const at::Tensor& rows, const char* op) {
  const int64_t n = rows.numel();
  at::Tensor gpsw = at::zeros({n}, rows.options().dtype(at::kFloat));
  float* gp = gpsw.data_ptr<float>();
  const int64_t* r = rows.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, blocks[0].scalar_type(), "psw_grads", [&] {
        const auto W = block_ptrs<scalar_t>(blocks);
        at::parallel_for(0, n, 256, [&](int64_t a, int64_t b) {
          for (int64_t i = a; i < b; ++i) {
            const int32_t t = G.table_of[i];
            if (t < 0) continue;
            const DynTable& d = tables[t];
            const float* gb = go[t].data_ptr<float>() + (G.bag_of[i] - d.bag0) * d.dim;
            float dot = 0.f;
            if (r[i] < 0) {
              for (int64_t j = 0; j < d.dim; ++j) dot += gb[j] * d.missing;
            } else {
              const scalar_t* row = table_row(W, d, r[i]);
              for (int64_t j = 0; j < d.dim; ++j) dot += gb[j] * static_cast<float>(row[j]);
            }
            gp[i] = dot * G.scale[i];
          }
        });
      });
  return gpsw;
}

// The arguments every batched backward kernel reads, checked.
struct BackwardArgs {
  std::vector<DynTable> tables;
  std::vector<at::Tensor> go;
  at::Tensor rows, offsets;
  std::optional<at::Tensor> psw;
  const float* psw_ptr() const { return psw ? psw->data_ptr<float>() : nullptr; }
};

BackwardArgs backward_args(at::TensorList grad_outputs, at::TensorList blocks,
                           at::IntArrayRef table_blocks, const at::Tensor& rows,
                           const at::Tensor& offsets, const std::optional<at::Tensor>& psw,
                           at::IntArrayRef table_bags, at::IntArrayRef poolings,
                           at::ArrayRef<double> missing_values, const char* op) {
  BackwardArgs A;
  A.tables = dynamic_batch_tables(blocks, table_blocks, rows, offsets, psw, table_bags, poolings,
                                  missing_values, op);
  A.go = dynamic_batch_grads(grad_outputs, A.tables, op);
  A.rows = rows.contiguous();
  A.offsets = offsets.contiguous();
  check_offsets_data(A.offsets, A.rows.numel(), op);
  if (psw) A.psw = psw->contiguous();
  return A;
}

// Per table: the unique rows its bags touched (sorted, -1 excluded), their gradients
// [U, dim] (float32) and how many positions touched each; then the per-sample-weight
// gradient (or empty).
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor>
dynamic_bags_backward_cpu(at::TensorList grad_outputs, at::TensorList blocks,
                          at::IntArrayRef table_blocks, const at::Tensor& rows_in,
                          const at::Tensor& offsets_in, const std::optional<at::Tensor>& psw_in,
                          at::IntArrayRef table_bags, at::IntArrayRef poolings,
                          at::ArrayRef<double> missing_values, bool psw_grad) {
  constexpr const char* op = "dynamic_bags_backward";
  const auto A = backward_args(grad_outputs, blocks, table_blocks, rows_in, offsets_in, psw_in,
                               table_bags, poolings, missing_values, op);
  const auto& tables = A.tables;
  const Grouping G = group_positions(tables, A.rows, A.offsets.data_ptr<int64_t>(), op);
  std::vector<at::Tensor> urows, grads, counts;
  for (size_t t = 0; t < tables.size(); ++t) {
    const int64_t u = G.first_run[t + 1] - G.first_run[t];
    urows.push_back(at::empty({u}, A.rows.options()));
    counts.push_back(at::empty({u}, A.rows.options()));
    grads.push_back(at::empty({u, tables[t].dim}, A.rows.options().dtype(at::kFloat)));
  }
  for_each_run(G, 0, [&](size_t t, int64_t u, float*) {
    const int64_t at_ = u - G.first_run[t];
    urows[t].data_ptr<int64_t>()[at_] = G.row(t, u);
    counts[t].data_ptr<int64_t>()[at_] = G.count(u);
    run_grad(G, tables[t], A.go[t].data_ptr<float>(), A.psw_ptr(), u,
             grads[t].data_ptr<float>() + at_ * tables[t].dim);
  });
  at::Tensor gpsw = psw_grad ? psw_grads(G, tables, blocks, A.go, A.rows, op)
                             : at::empty({0}, A.rows.options().dtype(at::kFloat));
  return {urows, grads, counts, gpsw};
}

// The backward pass fused with SGD: every touched row below its table's real_rows
// gets row -= lr * grad (grad divided by the row's positions where mean_by_id[t]),
// in place, and updated[t][row] = steps[t]; no gradient tensor exists. Returns the
// per-sample-weight gradient, taken before the update (or empty).
at::Tensor dynamic_bags_sgd_cpu(at::TensorList blocks, at::IntArrayRef table_blocks,
                                at::TensorList grad_outputs, const at::Tensor& rows_in,
                                const at::Tensor& offsets_in,
                                const std::optional<at::Tensor>& psw_in, at::IntArrayRef table_bags,
                                at::IntArrayRef poolings, at::ArrayRef<double> missing_values,
                                at::IntArrayRef real_rows, at::IntArrayRef mean_by_id, double lr,
                                at::TensorList updated, at::IntArrayRef steps, bool psw_grad) {
  constexpr const char* op = "dynamic_bags_sgd_";
  const auto A = backward_args(grad_outputs, blocks, table_blocks, rows_in, offsets_in, psw_in,
                               table_bags, poolings, missing_values, op);
  const auto& tables = A.tables;
  check_sgd_args(tables, real_rows, mean_by_id, updated, steps, A.rows, op);
  const Grouping G = group_positions(tables, A.rows, A.offsets.data_ptr<int64_t>(), op);
  at::Tensor gpsw = psw_grad ? psw_grads(G, tables, blocks, A.go, A.rows, op)
                             : at::empty({0}, A.rows.options().dtype(at::kFloat));
  int64_t max_dim = 0;
  for (const DynTable& d : tables) max_dim = std::max(max_dim, d.dim);
  const float rate = static_cast<float>(lr);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, blocks[0].scalar_type(), op, [&] {
    const auto W = block_ptrs<scalar_t>(blocks);
    for_each_run(G, max_dim, [&](size_t t, int64_t u, float* acc) {
      const DynTable& d = tables[t];
      const int64_t row = G.row(t, u);
      if (row >= real_rows[t]) return;  // a scratch row (an id not admitted): no update
      run_grad(G, d, A.go[t].data_ptr<float>(), A.psw_ptr(), u, acc);
      const float step = mean_by_id[t] ? rate / static_cast<float>(G.count(u)) : rate;
      scalar_t* w = table_row(W, d, row);
      for (int64_t j = 0; j < d.dim; ++j)
        w[j] = static_cast<scalar_t>(static_cast<float>(w[j]) - step * acc[j]);
      updated[t].data_ptr<int64_t>()[row] = steps[t];
    });
  });
  return gpsw;
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
                                        for (int64_t j = 0; j < D; ++j)
                                          o[i * D + j] = static_cast<float>(row[j]);
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
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, blocks[0].scalar_type(), "block_rows_scatter_", [&] {
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
                         const at::Tensor& keys_in, int64_t kind, double a, double b, int64_t seed,
                         int64_t col_offset) {
  const int64_t bs = check_row_op(blocks, rows_in, "block_rows_init_");
  check_init_keys(keys_in, rows_in, col_offset);
  const at::Tensor rows = rows_in.contiguous(), keys = keys_in.contiguous();
  const int64_t D = blocks[0].size(1), n = rows.numel();
  const int64_t* r = rows.data_ptr<int64_t>();
  const int64_t* k = keys.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, blocks[0].scalar_type(), "block_rows_init_", [&] {
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
  m.impl("dynamic_bags_forward", &dynamic_bags_forward_cpu);
  m.impl("dynamic_bags_backward", &dynamic_bags_backward_cpu);
  m.impl("dynamic_bags_sgd_", &dynamic_bags_sgd_cpu);
  m.impl("block_rows_gather", &block_rows_gather_cpu);
  m.impl("block_rows_scatter_", &block_rows_scatter_cpu);
  m.impl("block_rows_init_", &block_rows_init_cpu);
}

}  // namespace torchrec_ext
