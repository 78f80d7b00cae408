// CUDA kernels of the QR / compositional table ops (same schema as
// cpu/qr_bag.cpp). A batched call is one launch per step over all its tables:
// forward is one warp per bag (the warp finds its table in an array of table
// descriptors), lanes over columns, each id's vector composed in registers. The
// backward pass keys every (position, partition piece) by a row number unique
// across the call's pieces, makes the keys unique in one sort, and one launch
// scatters gradients into the unique rows with atomicAdd. Ids outside the shard are
// skipped (the Python layer rejects them first, with the table's name), so a bad
// call never touches memory outside a table.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../qr_check.h"
#include "table_batch.cuh"

namespace torchrec_ext {
namespace {

// One table of a batched call, as the kernels see it.
template <typename scalar_t>
struct QRDesc {
  QRLayout L;
  int64_t bag0;  // its first bag of the shared offsets
  bool mean;
  const scalar_t* w[kMaxPartitions];
  scalar_t* out;                   // forward: its output rows
  const scalar_t* go;              // backward: its output-gradient rows
  int64_t key0[kMaxPartitions];    // backward: the key of piece p's row 0
  int64_t uniq0[kMaxPartitions];   // backward: piece p's first unique key
  scalar_t* grad[kMaxPartitions];  // backward: piece p's gradient rows
};

// Local rows of id `id` in every partition; false if any is out of range.
__device__ __forceinline__ bool rows_of(const QRLayout& L, int64_t id, int64_t* r) {
  if (id < 0) return false;
  for (int64_t p = 0; p < L.k; ++p) {
    r[p] = L.row(p, id);
    if (!L.in_range(p, r[p])) return false;
  }
  return true;
}

// Element j of the composed vector (mult/add) or of the concatenation.
template <typename scalar_t>
__device__ __forceinline__ float element(const QRDesc<scalar_t>& d, const int64_t* r, int64_t j) {
  const QRLayout& L = d.L;
  if (L.op == kConcat) {
    for (int64_t p = 0; p < L.k; ++p) {
      const int64_t c = j - L.out_col[p];
      if (c >= 0 && c < L.cols[p]) return static_cast<float>(d.w[p][r[p] * L.cols[p] + c]);
    }
    return 0.f;
  }
  float v = static_cast<float>(d.w[0][r[0] * L.out_dim + j]);
  for (int64_t p = 1; p < L.k; ++p) {
    const float x = static_cast<float>(d.w[p][r[p] * L.out_dim + j]);
    v = (L.op == kMult) ? v * x : v + x;
  }
  return v;
}

template <typename scalar_t>
__global__ void forward_kernel(const QRDesc<scalar_t>* __restrict__ desc, int T, int64_t first_bag,
                               int64_t num_bags, const int64_t* __restrict__ idx,
                               const int64_t* __restrict__ off, const float* __restrict__ psw) {
  const auto wb = warp_bag(desc, T, first_bag, num_bags, off);
  if (!wb.ok) return;
  const QRDesc<scalar_t>& d = *wb.d;
  const int64_t b = wb.b, s = wb.s, e = wb.e, D = d.L.out_dim;
  const float scale = wb.scale;
  int64_t r[kMaxPartitions];
  for (int64_t j0 = 0; j0 < D; j0 += kWarp) {
    const int64_t j = j0 + threadIdx.x;
    float acc = 0.f;
    for (int64_t i = s; i < e; ++i) {
      if (j < D && rows_of(d.L, idx[i], r)) acc += (psw ? psw[i] : 1.f) * element(d, r, j);
    }
    if (j < D) d.out[(b - d.bag0) * D + j] = static_cast<scalar_t>(acc * scale);
  }
}

// Per position of a bag: its global bag, pw / len for MEAN (pw alone for SUM), the
// pooling factor alone, and its key in every piece of its table (-1: out of range).
template <typename scalar_t>
__global__ void keys_kernel(const QRDesc<scalar_t>* __restrict__ desc, int T, int64_t first_bag,
                            int64_t num_bags, const int64_t* __restrict__ idx,
                            const int64_t* __restrict__ off, const float* __restrict__ psw,
                            int64_t n, int64_t* __restrict__ bag_of, float* __restrict__ pos_scale,
                            float* __restrict__ bag_scale, int64_t* __restrict__ keys) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= num_bags) return;
  const int64_t b = first_bag + k;
  const QRDesc<scalar_t>& d = desc[table_of(desc, T, b)];
  const int64_t s = off[b], e = off[b + 1];
  const float sc = (d.mean && e > s) ? 1.0f / static_cast<float>(e - s) : 1.0f;
  int64_t r[kMaxPartitions];
  for (int64_t i = s; i < e; ++i) {
    bag_of[i] = b;
    bag_scale[i] = sc;
    pos_scale[i] = sc * (psw ? psw[i] : 1.f);
    const bool ok = rows_of(d.L, idx[i], r);
    for (int64_t p = 0; p < d.L.k; ++p) keys[p * n + i] = ok ? d.key0[p] + r[p] : -1;
  }
}

// One warp per position: grad of piece p, row of key, += pos_scale * grad_out (* others).
template <typename scalar_t>
__global__ void backward_kernel(const QRDesc<scalar_t>* __restrict__ desc, int T,
                                const int64_t* __restrict__ idx, int64_t n,
                                const int64_t* __restrict__ bag_of,
                                const float* __restrict__ pos_scale,
                                const int64_t* __restrict__ keys,
                                const int64_t* __restrict__ inverse) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (i >= n || bag_of[i] < 0 || keys[i] < 0) return;  // not in a bag, or an id out of range
  const QRDesc<scalar_t>& d = desc[table_of(desc, T, bag_of[i])];
  const QRLayout& L = d.L;
  int64_t r[kMaxPartitions];
  rows_of(L, idx[i], r);
  const float sc = pos_scale[i];
  for (int64_t p = 0; p < L.k; ++p) {
    const int64_t C = L.cols[p];
    const scalar_t* g = d.go + (bag_of[i] - d.bag0) * L.out_dim + L.out_col[p];
    scalar_t* dst = d.grad[p] + (inverse[p * n + i] - d.uniq0[p]) * C;
    for (int64_t j = threadIdx.x; j < C; j += kWarp) {
      float v = sc * static_cast<float>(g[j]);
      if (L.op == kMult) {
        for (int64_t q = 0; q < L.k; ++q)
          if (q != p) v *= static_cast<float>(d.w[q][r[q] * C + j]);
      }
      atomicAdd(&dst[j], static_cast<scalar_t>(v));
    }
  }
}

template <typename scalar_t>
__global__ void psw_grad_kernel(const QRDesc<scalar_t>* __restrict__ desc, int T,
                                const int64_t* __restrict__ idx, int64_t n,
                                const int64_t* __restrict__ bag_of,
                                const float* __restrict__ bag_scale, float* __restrict__ gpsw) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (i >= n || bag_of[i] < 0) return;
  const QRDesc<scalar_t>& d = desc[table_of(desc, T, bag_of[i])];
  int64_t r[kMaxPartitions];
  float dot = 0.f;
  if (rows_of(d.L, idx[i], r)) {
    const scalar_t* g = d.go + (bag_of[i] - d.bag0) * d.L.out_dim;
    for (int64_t j = threadIdx.x; j < d.L.out_dim; j += kWarp)
      dot += element(d, r, j) * static_cast<float>(g[j]);
  }
  for (int o = kWarp / 2; o > 0; o /= 2) dot += __shfl_down_sync(0xffffffffu, dot, o);
  if (threadIdx.x == 0) gpsw[i] = dot * bag_scale[i];
}

unsigned grid_of(int64_t n, int64_t per_block) {
  return static_cast<unsigned>((n + per_block - 1) / per_block);
}

template <typename scalar_t>
std::vector<QRDesc<scalar_t>> describe(const std::vector<QRTable>& tables,
                                       const std::vector<at::Tensor>& ws) {
  std::vector<QRDesc<scalar_t>> d(tables.size());
  for (size_t t = 0; t < tables.size(); ++t) {
    d[t] = QRDesc<scalar_t>{};
    d[t].L = tables[t].L;
    d[t].bag0 = tables[t].bag0;
    d[t].mean = tables[t].mean;
    for (int64_t p = 0; p < tables[t].L.k; ++p)
      d[t].w[p] = ws[tables[t].piece0 + p].data_ptr<scalar_t>();
  }
  return d;
}

std::vector<at::Tensor> qr_bags_forward_cuda(at::TensorList weights, const at::Tensor& indices,
                                             const at::Tensor& offsets,
                                             const std::optional<at::Tensor>& per_sample_weights,
                                             at::IntArrayRef table_bags, at::IntArrayRef poolings,
                                             at::IntArrayRef layouts) {
  const auto tables =
      qr_batch_tables(weights, indices, offsets, per_sample_weights, table_bags, poolings, layouts);
  c10::cuda::CUDAGuard guard(indices.device());
  auto ws = contiguous_all(weights);
  auto idx = indices.contiguous();
  auto off = offsets.contiguous();
  std::optional<at::Tensor> psw;
  if (per_sample_weights) psw = per_sample_weights->contiguous().to(at::kFloat);
  std::vector<at::Tensor> outs;
  for (const QRTable& T : tables)
    outs.push_back(at::zeros({T.bag1 - T.bag0, T.L.out_dim}, ws[0].options()));
  const int64_t first_bag = table_bags[0], num_bags = table_bags.back() - table_bags[0];
  if (tables.empty() || num_bags == 0) return outs;
  AT_DISPATCH_FLOATING_TYPES(ws[0].scalar_type(), "qr_bags_forward_cuda", [&] {
    auto d = describe<scalar_t>(tables, ws);
    for (size_t t = 0; t < tables.size(); ++t) d[t].out = outs[t].data_ptr<scalar_t>();
    auto dev = to_device(d, indices.device());
    forward_kernel<scalar_t><<<grid_of(num_bags, kWarpsPerBlock), dim3(kWarp, kWarpsPerBlock), 0,
                               c10::cuda::getCurrentCUDAStream()>>>(
        dev.ptr, static_cast<int>(tables.size()), first_bag, num_bags, idx.data_ptr<int64_t>(),
        off.data_ptr<int64_t>(), psw ? psw->data_ptr<float>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return outs;
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> qr_bags_backward_cuda(
    at::TensorList grad_outputs, at::TensorList weights, const at::Tensor& indices,
    const at::Tensor& offsets, const std::optional<at::Tensor>& per_sample_weights,
    at::IntArrayRef table_bags, at::IntArrayRef poolings, at::IntArrayRef layouts, bool psw_grad) {
  const auto tables =
      qr_batch_tables(weights, indices, offsets, per_sample_weights, table_bags, poolings, layouts);
  c10::cuda::CUDAGuard guard(indices.device());
  auto ws = contiguous_all(weights);
  const auto dtype = ws.empty() ? at::kFloat : ws[0].scalar_type();
  const auto go = qr_batch_grads(grad_outputs, tables, dtype);
  auto idx = indices.contiguous();
  auto off = offsets.contiguous();
  const int64_t n = idx.numel();
  const int64_t first_bag = table_bags[0], num_bags = table_bags.back() - table_bags[0];
  auto stream = c10::cuda::getCurrentCUDAStream();
  std::optional<at::Tensor> psw;
  if (per_sample_weights) psw = per_sample_weights->contiguous().to(at::kFloat);
  auto gpsw = at::zeros({psw_grad ? n : 0}, idx.options().dtype(at::kFloat));
  // Piece p of table t keys its rows from key0 on: keys are unique across the call.
  int64_t kmax = 0, next_key = 0;
  std::vector<int64_t> key0, key_end;
  for (const QRTable& T : tables) {
    kmax = std::max(kmax, T.L.k);
    for (int64_t p = 0; p < T.L.k; ++p) {
      key0.push_back(next_key);
      next_key += T.L.rows[p];
      key_end.push_back(next_key);
    }
  }
  std::vector<at::Tensor> uniq_rows, grads;
  if (tables.empty()) return {uniq_rows, grads, gpsw};
  AT_DISPATCH_FLOATING_TYPES(dtype, "qr_bags_backward_cuda", [&] {
    auto d = describe<scalar_t>(tables, ws);
    for (size_t t = 0, u = 0; t < tables.size(); ++t) {
      d[t].go = go[t].data_ptr<scalar_t>();
      for (int64_t p = 0; p < tables[t].L.k; ++p) d[t].key0[p] = key0[u++];
    }
    const int T = static_cast<int>(tables.size());
    auto bag_of = at::full({n}, -1, idx.options());
    auto pos_scale = at::zeros({n}, idx.options().dtype(at::kFloat));
    auto bag_scale = at::zeros({n}, idx.options().dtype(at::kFloat));
    auto keys = at::full({std::max<int64_t>(kmax, 1) * n}, -1, idx.options());
    {
      auto dev = to_device(d, indices.device());
      if (num_bags > 0) {
        keys_kernel<scalar_t><<<grid_of(num_bags, 256), 256, 0, stream>>>(
            dev.ptr, T, first_bag, num_bags, idx.data_ptr<int64_t>(), off.data_ptr<int64_t>(),
            psw ? psw->data_ptr<float>() : nullptr, n, bag_of.data_ptr<int64_t>(),
            pos_scale.data_ptr<float>(), bag_scale.data_ptr<float>(), keys.data_ptr<int64_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (psw_grad && n > 0) {
        psw_grad_kernel<scalar_t>
            <<<grid_of(n, kWarpsPerBlock), dim3(kWarp, kWarpsPerBlock), 0, stream>>>(
                dev.ptr, T, idx.data_ptr<int64_t>(), n, bag_of.data_ptr<int64_t>(),
                bag_scale.data_ptr<float>(), gpsw.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    }
    auto [uniq, inverse, counts] = at::_unique2(keys, /*sorted=*/true, /*return_inverse=*/true,
                                                /*return_counts=*/false);
    // Each piece's unique keys are one run of the sorted keys (-1, if any, comes first).
    std::vector<int64_t> bounds(key0);
    bounds.insert(bounds.end(), key_end.begin(), key_end.end());
    auto found =
        at::searchsorted(uniq, at::tensor(bounds, idx.options().device(at::kCPU)).to(idx.device()))
            .cpu();  // one sync for every piece's run
    const int64_t* l = found.data_ptr<int64_t>();
    const int64_t* h = l + key0.size();
    int64_t total = 0;
    for (size_t t = 0, u = 0; t < tables.size(); ++t)
      for (int64_t p = 0; p < tables[t].L.k; ++p, ++u) total += (h[u] - l[u]) * tables[t].L.cols[p];
    auto flat = at::zeros({total}, ws[0].options());
    int64_t at_ = 0;
    for (size_t t = 0, u = 0; t < tables.size(); ++t) {
      for (int64_t p = 0; p < tables[t].L.k; ++p, ++u) {
        const int64_t rows = h[u] - l[u], C = tables[t].L.cols[p];
        auto g = flat.narrow(0, at_, rows * C).view({rows, C});
        d[t].uniq0[p] = l[u];
        d[t].grad[p] = g.data_ptr<scalar_t>();
        uniq_rows.push_back(uniq.narrow(0, l[u], rows) - key0[u]);
        grads.push_back(g);
        at_ += rows * C;
      }
    }
    if (n > 0 && total > 0) {
      auto dev = to_device(d, indices.device());
      backward_kernel<scalar_t>
          <<<grid_of(n, kWarpsPerBlock), dim3(kWarp, kWarpsPerBlock), 0, stream>>>(
              dev.ptr, T, idx.data_ptr<int64_t>(), n, bag_of.data_ptr<int64_t>(),
              pos_scale.data_ptr<float>(), keys.data_ptr<int64_t>(), inverse.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {uniq_rows, grads, gpsw};
}

}  // namespace

TORCH_LIBRARY_IMPL(torchrec_ext, CUDA, m) {
  m.impl("qr_bags_forward", &qr_bags_forward_cuda);
  m.impl("qr_bags_backward", &qr_bags_backward_cuda);
}

}  // namespace torchrec_ext
