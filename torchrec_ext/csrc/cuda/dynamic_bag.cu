// CUDA kernels of the dynamic-table row ops (same schema as cpu/dynamic_bag.cpp).
// Block pointers travel to the device as one small array per call, and the tables
// of a batched call as an array of descriptors. Forward: one launch, one warp per
// bag (it finds its table), lanes over columns. Backward: every (table, row) gets a
// key unique across the call, the keys are made unique (sorted) and gradients
// scatter into the unique rows with atomicAdd, one launch for all tables. Row -1 is
// a key the table does not hold and reads as its `missing_value`.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../dynamic_check.h"
#include "../dynamic_table.h"
#include "table_batch.cuh"

namespace torchrec_ext {
namespace {

constexpr int kThreads = 256;

// Device array of the blocks' data pointers.
at::Tensor block_ptrs(at::TensorList blocks) {
  std::vector<int64_t> p;
  p.reserve(blocks.size());
  for (const auto& b : blocks) p.push_back(reinterpret_cast<int64_t>(b.data_ptr()));
  return at::tensor(p, at::kLong).to(blocks[0].device(), /*non_blocking=*/false);
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t* row_ptr(const int64_t* ptrs, int64_t bs, int64_t D,
                                             int64_t r) {
  return reinterpret_cast<scalar_t*>(ptrs[r / bs]) + (r % bs) * D;
}

// One table of a batched pooled call, as the kernels see it (see DynTable).
struct DynDesc {
  int64_t block0, block_size, dim, total_rows, bag0;
  bool mean;
  float missing;
  float* out;         // forward: its output rows
  const float* go;    // backward: its output-gradient rows
  int64_t key0;       // backward: the key of its row 0
  int64_t uniq0;      // backward: its first unique key
  float* grad;        // backward: its gradient rows
  int64_t real_rows;  // sgd: rows past this are scratch rows (no update)
  int64_t* updated;   // sgd: stamps of the rows updated, and the step
  int64_t step;
  bool by_id;  // sgd: the gradient is a mean over the row's positions
};

// Element j of position i's row (the table's missing value for row -1; 0 for a row
// outside the table, which the kernels flag as an error).
template <typename scalar_t>
__device__ __forceinline__ float row_value(const DynDesc& d, const int64_t* ptrs, int64_t r,
                                           int64_t j) {
  if (r == -1) return d.missing;
  if (r < 0 || r >= d.total_rows) return 0.f;
  return static_cast<float>(row_ptr<scalar_t>(ptrs + d.block0, d.block_size, d.dim, r)[j]);
}

template <typename scalar_t>
__global__ void forward_kernel(const DynDesc* __restrict__ desc, int T,
                               const int64_t* __restrict__ ptrs, int64_t first_bag,
                               int64_t num_bags, const int64_t* __restrict__ rows,
                               const int64_t* __restrict__ off, const float* __restrict__ psw,
                               int* __restrict__ bad) {
  const auto wb = warp_bag(desc, T, first_bag, num_bags, off);
  if (!wb.ok) return;
  const DynDesc& d = *wb.d;
  for (int64_t i = wb.s + threadIdx.x; i < wb.e; i += kWarp) {
    if (rows[i] < -1 || rows[i] >= d.total_rows) atomicExch(bad, 1);
  }
  for (int64_t j = threadIdx.x; j < d.dim; j += kWarp) {
    float acc = 0.f;
    for (int64_t i = wb.s; i < wb.e; ++i)
      acc += (psw ? psw[i] : 1.f) * row_value<scalar_t>(d, ptrs, rows[i], j);
    d.out[(wb.b - d.bag0) * d.dim + j] = acc * wb.scale;
  }
}

// Per position of a bag: its bag, pooling factor and key (-1: no row).
__global__ void keys_kernel(const DynDesc* __restrict__ desc, int T, int64_t first_bag,
                            int64_t num_bags, const int64_t* __restrict__ rows,
                            const int64_t* __restrict__ off, int64_t* __restrict__ bag_of,
                            float* __restrict__ scale, int64_t* __restrict__ keys,
                            int* __restrict__ bad) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= num_bags) return;
  const int64_t b = first_bag + k;
  const DynDesc& d = desc[table_of(desc, T, b)];
  const int64_t s = off[b], e = off[b + 1];
  const float sc = (d.mean && e > s) ? 1.f / static_cast<float>(e - s) : 1.f;
  for (int64_t i = s; i < e; ++i) {
    bag_of[i] = b;
    scale[i] = sc;
    keys[i] = (rows[i] >= 0 && rows[i] < d.total_rows) ? d.key0 + rows[i] : -1;
    if (rows[i] < -1 || rows[i] >= d.total_rows) atomicExch(bad, 1);
  }
}

// One warp per position: its row's gradient += scale * psw * grad_out of its bag.
__global__ void scatter_grad_kernel(const DynDesc* __restrict__ desc, int T, int64_t n,
                                    const int64_t* __restrict__ keys,
                                    const int64_t* __restrict__ inverse,
                                    const int64_t* __restrict__ bag_of,
                                    const float* __restrict__ scale,
                                    const float* __restrict__ psw) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (i >= n || keys[i] < 0) return;
  const DynDesc& d = desc[table_of(desc, T, bag_of[i])];
  const float c = scale[i] * (psw ? psw[i] : 1.f);
  const float* g = d.go + (bag_of[i] - d.bag0) * d.dim;
  float* dst = d.grad + (inverse[i] - d.uniq0) * d.dim;
  for (int64_t j = threadIdx.x; j < d.dim; j += kWarp) atomicAdd(dst + j, c * g[j]);
}

template <typename scalar_t>
__global__ void psw_grad_kernel(const DynDesc* __restrict__ desc, int T,
                                const int64_t* __restrict__ ptrs, int64_t n,
                                const int64_t* __restrict__ rows,
                                const int64_t* __restrict__ bag_of, const float* __restrict__ scale,
                                float* __restrict__ out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (i >= n || bag_of[i] < 0) return;
  const DynDesc& d = desc[table_of(desc, T, bag_of[i])];
  const float* g = d.go + (bag_of[i] - d.bag0) * d.dim;
  float dot = 0.f;
  for (int64_t j = threadIdx.x; j < d.dim; j += kWarp)
    dot += g[j] * row_value<scalar_t>(d, ptrs, rows[i], j);
  for (int o = kWarp / 2; o > 0; o /= 2) dot += __shfl_down_sync(0xffffffffu, dot, o);
  if (threadIdx.x == 0) out[i] = dot * scale[i];
}

// One warp per unique key of the call: its row -= lr * gradient (a mean over its
// positions where the table asks), unless it is a scratch row.
template <typename scalar_t>
__global__ void sgd_kernel(const DynDesc* __restrict__ desc, int T,
                           const int64_t* __restrict__ ptrs, const int64_t* __restrict__ uniq,
                           const int64_t* __restrict__ count, int64_t first, int64_t num,
                           float lr) {
  const int64_t u = first + static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (u >= first + num) return;
  const DynDesc& d = desc[owner_of<&DynDesc::uniq0>(desc, T, u)];
  const int64_t row = uniq[u] - d.key0;
  if (row >= d.real_rows) return;
  const float step = d.by_id ? lr / static_cast<float>(count[u]) : lr;
  scalar_t* w = row_ptr<scalar_t>(ptrs + d.block0, d.block_size, d.dim, row);
  const float* g = d.grad + (u - d.uniq0) * d.dim;
  for (int64_t j = threadIdx.x; j < d.dim; j += kWarp) {
    w[j] = static_cast<scalar_t>(static_cast<float>(w[j]) - step * g[j]);
  }
  if (threadIdx.x == 0) d.updated[row] = d.step;
}

template <typename scalar_t>
__global__ void gather_kernel(const int64_t* ptrs, int64_t bs, int64_t D, const int64_t* rows,
                              int64_t n, float* out) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n * D) return;
  const int64_t i = t / D, j = t % D;
  out[t] = static_cast<float>(row_ptr<scalar_t>(ptrs, bs, D, rows[i])[j]);
}

template <typename scalar_t>
__global__ void scatter_kernel(const int64_t* ptrs, int64_t bs, int64_t D, const int64_t* rows,
                               int64_t n, const float* values, float alpha, bool accumulate) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n * D) return;
  const int64_t i = t / D, j = t % D;
  scalar_t* row = row_ptr<scalar_t>(ptrs, bs, D, rows[i]);
  const float x = values[t];
  row[j] = static_cast<scalar_t>(accumulate ? static_cast<float>(row[j]) + alpha * x : x);
}

template <typename scalar_t>
__global__ void init_kernel(const int64_t* ptrs, int64_t bs, int64_t D, const int64_t* rows,
                            const int64_t* keys, int64_t n, int64_t kind, double a, double b,
                            int64_t seed, int64_t col_offset) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n * D) return;
  const int64_t i = t / D, j = t % D;
  row_ptr<scalar_t>(ptrs, bs, D, rows[i])[j] =
      static_cast<scalar_t>(init_value(kind, a, b, keys[i], col_offset + j, seed));
}

inline unsigned grid(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

std::vector<DynDesc> describe(const std::vector<DynTable>& tables) {
  std::vector<DynDesc> d(tables.size());
  for (size_t t = 0; t < tables.size(); ++t) {
    const DynTable& x = tables[t];
    d[t] = DynDesc{x.block0, x.block_size, x.dim,   x.total_rows(), x.bag0,
                   x.mean,   x.missing,    nullptr, nullptr,        0,
                   0,        nullptr,      0,       nullptr,        0,
                   false};
  }
  return d;
}

std::vector<at::Tensor> dynamic_bags_forward_cuda(
    at::TensorList blocks, at::IntArrayRef table_blocks, const at::Tensor& rows_in,
    const at::Tensor& offsets_in, const std::optional<at::Tensor>& psw_in,
    at::IntArrayRef table_bags, at::IntArrayRef poolings, at::ArrayRef<double> missing_values) {
  const auto tables =
      dynamic_batch_tables(blocks, table_blocks, rows_in, offsets_in, psw_in, table_bags, poolings,
                           missing_values, "dynamic_bags_forward");
  c10::cuda::CUDAGuard guard(rows_in.device());
  const at::Tensor rows = rows_in.contiguous(), off = offsets_in.contiguous();
  const std::optional<at::Tensor> psw =
      psw_in ? std::optional<at::Tensor>(psw_in->contiguous()) : std::nullopt;
  auto d = describe(tables);
  std::vector<at::Tensor> outs;
  for (size_t t = 0; t < tables.size(); ++t) {
    outs.push_back(at::empty({tables[t].bag1 - tables[t].bag0, tables[t].dim},
                             rows.options().dtype(at::kFloat)));
    d[t].out = outs.back().data_ptr<float>();
  }
  const int64_t first_bag = table_bags[0], num_bags = table_bags.back() - table_bags[0];
  if (tables.empty() || num_bags == 0) return outs;
  const at::Tensor ptrs = block_ptrs(blocks);
  auto dev = to_device(d, rows.device());
  at::Tensor bad = at::zeros({1}, rows.options().dtype(at::kInt));
  const unsigned nb = static_cast<unsigned>((num_bags + kWarpsPerBlock - 1) / kWarpsPerBlock);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, blocks[0].scalar_type(), "dynamic_bags_forward_cuda", [&] {
        forward_kernel<scalar_t>
            <<<nb, dim3(kWarp, kWarpsPerBlock), 0, c10::cuda::getCurrentCUDAStream()>>>(
                dev.ptr, static_cast<int>(tables.size()), ptrs.data_ptr<int64_t>(), first_bag,
                num_bags, rows.data_ptr<int64_t>(), off.data_ptr<int64_t>(),
                psw ? psw->data_ptr<float>() : nullptr, bad.data_ptr<int>());
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // One sync per call, as the lookup that made the rows has had: a bad row is an error.
  TORCH_CHECK(bad.item<int>() == 0,
              "dynamic_bags_forward: rows must lie in [-1, rows of their table)");
  return outs;
}

// The batch's backward pass: every (table, row) is keyed uniquely across the call, one
// sort makes the keys unique, one searchsorted (one sync) finds each table's run, one
// launch scatters. `uniq`, `count`, `found` and the descriptors (holding each table's
// gradient rows) stay for the SGD update.
struct Backward {
  std::vector<DynDesc> d;
  std::vector<at::Tensor> urows, grads, counts;
  at::Tensor gpsw, uniq, count, found;
};

// `tables`: the call's tables as dynamic_batch_tables checked them.
Backward backward_impl(const std::vector<DynTable>& tables, at::TensorList grad_outputs,
                       at::TensorList blocks, const at::Tensor& rows_in,
                       const at::Tensor& offsets_in, const std::optional<at::Tensor>& psw_in,
                       at::IntArrayRef table_bags, bool psw_grad, const char* op) {
  Backward R;
  const auto go = dynamic_batch_grads(grad_outputs, tables, op);
  c10::cuda::CUDAGuard guard(rows_in.device());
  const at::Tensor rows = rows_in.contiguous(), off = offsets_in.contiguous();
  const std::optional<at::Tensor> psw =
      psw_in ? std::optional<at::Tensor>(psw_in->contiguous()) : std::nullopt;
  const int64_t n = rows.numel(), T = static_cast<int64_t>(tables.size());
  const int64_t first_bag = table_bags[0], num_bags = table_bags.back() - table_bags[0];
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto d = describe(tables);
  std::vector<int64_t> bounds(T + 1, 0);  // table t's keys lie in [bounds[t], bounds[t + 1])
  for (int64_t t = 0; t < T; ++t) {
    d[t].key0 = bounds[t];
    d[t].go = go[t].data_ptr<float>();
    bounds[t + 1] = bounds[t] + tables[t].total_rows();
  }
  R.gpsw = at::zeros({psw_grad ? n : 0}, rows.options().dtype(at::kFloat));
  at::Tensor& gpsw = R.gpsw;
  std::vector<at::Tensor>& urows = R.urows;
  std::vector<at::Tensor>& grads = R.grads;
  std::vector<at::Tensor>& counts = R.counts;
  if (T == 0) return R;
  auto bag_of = at::full({n}, -1, rows.options());
  auto scale = at::zeros({n}, rows.options().dtype(at::kFloat));
  auto keys = at::full({n}, -1, rows.options());
  auto bad = at::zeros({1}, rows.options().dtype(at::kInt));
  const at::Tensor ptrs = block_ptrs(blocks);
  {
    auto dev = to_device(d, rows.device());
    if (num_bags > 0) {
      keys_kernel<<<grid(num_bags), kThreads, 0, stream>>>(
          dev.ptr, T, first_bag, num_bags, rows.data_ptr<int64_t>(), off.data_ptr<int64_t>(),
          bag_of.data_ptr<int64_t>(), scale.data_ptr<float>(), keys.data_ptr<int64_t>(),
          bad.data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (psw_grad && n > 0) {
      AT_DISPATCH_FLOATING_TYPES_AND2(
          at::kHalf, at::kBFloat16, blocks[0].scalar_type(), "dynamic_bags_psw_cuda", [&] {
            psw_grad_kernel<scalar_t>
                <<<static_cast<unsigned>((n + kWarpsPerBlock - 1) / kWarpsPerBlock),
                   dim3(kWarp, kWarpsPerBlock), 0, stream>>>(
                    dev.ptr, T, ptrs.data_ptr<int64_t>(), n, rows.data_ptr<int64_t>(),
                    bag_of.data_ptr<int64_t>(), scale.data_ptr<float>(), gpsw.data_ptr<float>());
          });
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  TORCH_CHECK(bad.item<int>() == 0, op, ": rows must lie in [-1, rows of their table)");
  auto [uniq, inverse, count] = at::_unique2(keys, /*sorted=*/true, /*return_inverse=*/true,
                                             /*return_counts=*/true);
  const at::Tensor found =
      at::searchsorted(uniq, at::tensor(bounds, rows.options().device(at::kCPU)).to(rows.device()))
          .cpu();
  const int64_t* l = found.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t t = 0; t < T; ++t) total += (l[t + 1] - l[t]) * tables[t].dim;
  auto flat = at::zeros({total}, rows.options().dtype(at::kFloat));
  for (int64_t t = 0, at_ = 0; t < T; ++t) {
    const int64_t u = l[t + 1] - l[t];
    auto g = flat.narrow(0, at_, u * tables[t].dim).view({u, tables[t].dim});
    d[t].uniq0 = l[t];
    d[t].grad = g.data_ptr<float>();
    urows.push_back(uniq.narrow(0, l[t], u) - bounds[t]);
    counts.push_back(count.narrow(0, l[t], u));
    grads.push_back(g);
    at_ += u * tables[t].dim;
  }
  if (n > 0 && total > 0) {
    auto dev = to_device(d, rows.device());
    scatter_grad_kernel<<<static_cast<unsigned>((n + kWarpsPerBlock - 1) / kWarpsPerBlock),
                          dim3(kWarp, kWarpsPerBlock), 0, stream>>>(
        dev.ptr, T, n, keys.data_ptr<int64_t>(), inverse.data_ptr<int64_t>(),
        bag_of.data_ptr<int64_t>(), scale.data_ptr<float>(),
        psw ? psw->data_ptr<float>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  R.d = d;
  R.uniq = uniq;
  R.count = count;
  R.found = found;
  return R;
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor>
dynamic_bags_backward_cuda(at::TensorList grad_outputs, at::TensorList blocks,
                           at::IntArrayRef table_blocks, const at::Tensor& rows,
                           const at::Tensor& offsets, const std::optional<at::Tensor>& psw,
                           at::IntArrayRef table_bags, at::IntArrayRef poolings,
                           at::ArrayRef<double> missing_values, bool psw_grad) {
  const char* op = "dynamic_bags_backward";
  const auto tables = dynamic_batch_tables(blocks, table_blocks, rows, offsets, psw, table_bags,
                                           poolings, missing_values, op);
  auto R =
      backward_impl(tables, grad_outputs, blocks, rows, offsets, psw, table_bags, psw_grad, op);
  return {R.urows, R.grads, R.counts, R.gpsw};
}

// The backward pass, then one launch updates every table's touched rows (see ops.cpp).
at::Tensor dynamic_bags_sgd_cuda(at::TensorList blocks, at::IntArrayRef table_blocks,
                                 at::TensorList grad_outputs, const at::Tensor& rows,
                                 const at::Tensor& offsets, const std::optional<at::Tensor>& psw,
                                 at::IntArrayRef table_bags, at::IntArrayRef poolings,
                                 at::ArrayRef<double> missing_values, at::IntArrayRef real_rows,
                                 at::IntArrayRef mean_by_id, double lr, at::TensorList updated,
                                 at::IntArrayRef steps, bool psw_grad) {
  const char* op = "dynamic_bags_sgd_";
  const auto tables = dynamic_batch_tables(blocks, table_blocks, rows, offsets, psw, table_bags,
                                           poolings, missing_values, op);
  check_sgd_args(tables, real_rows, mean_by_id, updated, steps, rows, op);
  auto R =
      backward_impl(tables, grad_outputs, blocks, rows, offsets, psw, table_bags, psw_grad, op);
  const int64_t T = static_cast<int64_t>(tables.size());
  if (T == 0) return R.gpsw;
  const int64_t* l = R.found.data_ptr<int64_t>();
  const int64_t first = l[0], num = l[T] - l[0];
  if (num == 0) return R.gpsw;
  for (int64_t t = 0; t < T; ++t) {
    R.d[t].real_rows = real_rows[t];
    R.d[t].updated = updated[t].data_ptr<int64_t>();
    R.d[t].step = steps[t];
    R.d[t].by_id = mean_by_id[t] != 0;
  }
  c10::cuda::CUDAGuard guard(rows.device());
  const at::Tensor ptrs = block_ptrs(blocks);
  auto dev = to_device(R.d, rows.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, blocks[0].scalar_type(), "dynamic_bags_sgd_cuda", [&] {
        sgd_kernel<scalar_t><<<static_cast<unsigned>((num + kWarpsPerBlock - 1) / kWarpsPerBlock),
                               dim3(kWarp, kWarpsPerBlock), 0, c10::cuda::getCurrentCUDAStream()>>>(
            dev.ptr, static_cast<int>(T), ptrs.data_ptr<int64_t>(), R.uniq.data_ptr<int64_t>(),
            R.count.data_ptr<int64_t>(), first, num, static_cast<float>(lr));
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return R.gpsw;
}

at::Tensor block_rows_gather_cuda(at::TensorList blocks, const at::Tensor& rows_in) {
  const int64_t bs = check_row_op(blocks, rows_in, "block_rows_gather");
  c10::cuda::CUDAGuard guard(blocks[0].device());
  const at::Tensor rows = rows_in.contiguous();
  const int64_t D = blocks[0].size(1), n = rows.numel();
  at::Tensor out = at::empty({n, D}, blocks[0].options().dtype(at::kFloat));
  if (n * D == 0) return out;
  const at::Tensor ptrs = block_ptrs(blocks);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, blocks[0].scalar_type(), "block_rows_gather_cuda", [&] {
        gather_kernel<scalar_t><<<grid(n * D), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            ptrs.data_ptr<int64_t>(), bs, D, rows.data_ptr<int64_t>(), n, out.data_ptr<float>());
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

void block_rows_scatter_cuda(at::TensorList blocks, const at::Tensor& rows_in,
                             const at::Tensor& values_in, double alpha, bool accumulate) {
  const int64_t bs = check_row_op(blocks, rows_in, "block_rows_scatter_");
  const int64_t D = blocks[0].size(1), n = rows_in.numel();
  check_scatter_values(values_in, rows_in, D);
  c10::cuda::CUDAGuard guard(blocks[0].device());
  const at::Tensor rows = rows_in.contiguous();
  const at::Tensor values = values_in.to(at::kFloat).contiguous();
  if (n * D == 0) return;
  const at::Tensor ptrs = block_ptrs(blocks);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, blocks[0].scalar_type(), "block_rows_scatter_cuda", [&] {
        scatter_kernel<scalar_t><<<grid(n * D), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            ptrs.data_ptr<int64_t>(), bs, D, rows.data_ptr<int64_t>(), n, values.data_ptr<float>(),
            static_cast<float>(alpha), accumulate);
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void block_rows_init_cuda(at::TensorList blocks, const at::Tensor& rows_in,
                          const at::Tensor& keys_in, int64_t kind, double a, double b, int64_t seed,
                          int64_t col_offset) {
  const int64_t bs = check_row_op(blocks, rows_in, "block_rows_init_");
  check_init_keys(keys_in, rows_in, col_offset);
  c10::cuda::CUDAGuard guard(blocks[0].device());
  const at::Tensor rows = rows_in.contiguous(), keys = keys_in.contiguous();
  const int64_t D = blocks[0].size(1), n = rows.numel();
  if (n * D == 0) return;
  const at::Tensor ptrs = block_ptrs(blocks);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, blocks[0].scalar_type(), "block_rows_init_cuda", [&] {
        init_kernel<scalar_t><<<grid(n * D), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            ptrs.data_ptr<int64_t>(), bs, D, rows.data_ptr<int64_t>(), keys.data_ptr<int64_t>(), n,
            kind, a, b, seed, col_offset);
      });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(torchrec_ext, CUDA, m) {
  m.impl("dynamic_bags_forward", &dynamic_bags_forward_cuda);
  m.impl("dynamic_bags_backward", &dynamic_bags_backward_cuda);
  m.impl("dynamic_bags_sgd_", &dynamic_bags_sgd_cuda);
  m.impl("block_rows_gather", &block_rows_gather_cuda);
  m.impl("block_rows_scatter_", &block_rows_scatter_cuda);
  m.impl("block_rows_init_", &block_rows_init_cuda);
}

}  // namespace torchrec_ext
