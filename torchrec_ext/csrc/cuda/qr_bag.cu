// CUDA kernels of the QR / compositional table ops (same schema as
// cpu/qr_bag.cpp). Forward: one warp per bag, lanes over columns, each id's
// vector composed in registers. Backward: per partition, the batch's rows are
// made unique (sorted) and gradients scatter into the unique rows with atomicAdd.
// Ids outside the shard are skipped (the Python layer rejects them first, with
// the table's name), so a bad call never touches memory outside a table.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../qr_check.h"

namespace torchrec_ext {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;

template <typename scalar_t>
struct Tables {
  const scalar_t* w[kMaxPartitions];
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
__device__ __forceinline__ float element(const QRLayout& L, const Tables<scalar_t>& T,
                                         const int64_t* r, int64_t j) {
  if (L.op == kConcat) {
    for (int64_t p = 0; p < L.k; ++p) {
      const int64_t c = j - L.out_col[p];
      if (c >= 0 && c < L.cols[p]) return static_cast<float>(T.w[p][r[p] * L.cols[p] + c]);
    }
    return 0.f;
  }
  float v = static_cast<float>(T.w[0][r[0] * L.out_dim + j]);
  for (int64_t p = 1; p < L.k; ++p) {
    const float x = static_cast<float>(T.w[p][r[p] * L.out_dim + j]);
    v = (L.op == kMult) ? v * x : v + x;
  }
  return v;
}

template <typename scalar_t>
__global__ void forward_kernel(QRLayout L, Tables<scalar_t> T, const int64_t* __restrict__ idx,
                               const int64_t* __restrict__ off, const float* __restrict__ psw,
                               int64_t num_bags, bool mean, scalar_t* __restrict__ out) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (b >= num_bags) return;
  const int64_t s = off[b], e = off[b + 1], D = L.out_dim;
  const float scale = (mean && e > s) ? 1.0f / static_cast<float>(e - s) : 1.0f;
  int64_t r[kMaxPartitions];
  for (int64_t j0 = 0; j0 < D; j0 += kWarp) {
    const int64_t j = j0 + threadIdx.x;
    float acc = 0.f;
    for (int64_t i = s; i < e; ++i) {
      if (j < D && rows_of(L, idx[i], r)) acc += (psw ? psw[i] : 1.f) * element(L, T, r, j);
    }
    if (j < D) out[b * D + j] = static_cast<scalar_t>(acc * scale);
  }
}

__global__ void bag_of_kernel(const int64_t* __restrict__ off, int64_t num_bags,
                              const float* __restrict__ psw, bool mean,
                              int64_t* __restrict__ bag_of, float* __restrict__ pos_scale,
                              float* __restrict__ bag_scale) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= num_bags) return;
  const int64_t s = off[b], e = off[b + 1];
  const float sc = (mean && e > s) ? 1.0f / static_cast<float>(e - s) : 1.0f;
  for (int64_t i = s; i < e; ++i) {
    bag_of[i] = b;
    bag_scale[i] = sc;
    pos_scale[i] = sc * (psw ? psw[i] : 1.f);
  }
}

__global__ void partition_rows_kernel(QRLayout L, int64_t p, const int64_t* __restrict__ idx,
                                      int64_t n, int64_t* __restrict__ rows) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  int64_t r[kMaxPartitions];
  // Out-of-range ids get row -1: the sorted unique rows then start with -1, which
  // the backward kernel skips (and the host drops).
  rows[i] = rows_of(L, idx[i], r) ? r[p] : -1;
}

// One warp per position: grad[inv[i], :] += pos_scale * grad_out[bag] (* others).
template <typename scalar_t>
__global__ void backward_kernel(QRLayout L, Tables<scalar_t> T, int64_t p,
                                const int64_t* __restrict__ idx, int64_t n,
                                const scalar_t* __restrict__ go, const int64_t* __restrict__ bag_of,
                                const float* __restrict__ pos_scale,
                                const int64_t* __restrict__ inverse, scalar_t* __restrict__ grad) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (i >= n) return;
  int64_t r[kMaxPartitions];
  if (!rows_of(L, idx[i], r)) return;
  const int64_t C = L.cols[p];
  const scalar_t* g = go + bag_of[i] * L.out_dim + L.out_col[p];
  const float sc = pos_scale[i];
  for (int64_t j = threadIdx.x; j < C; j += kWarp) {
    float v = sc * static_cast<float>(g[j]);
    if (L.op == kMult) {
      for (int64_t q = 0; q < L.k; ++q)
        if (q != p) v *= static_cast<float>(T.w[q][r[q] * C + j]);
    }
    atomicAdd(&grad[inverse[i] * C + j], static_cast<scalar_t>(v));
  }
}

template <typename scalar_t>
__global__ void psw_grad_kernel(QRLayout L, Tables<scalar_t> T, const int64_t* __restrict__ idx,
                                int64_t n, const scalar_t* __restrict__ go,
                                const int64_t* __restrict__ bag_of,
                                const float* __restrict__ bag_scale, float* __restrict__ gpsw) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (i >= n) return;
  int64_t r[kMaxPartitions];
  float dot = 0.f;
  if (rows_of(L, idx[i], r)) {
    const scalar_t* g = go + bag_of[i] * L.out_dim;
    for (int64_t j = threadIdx.x; j < L.out_dim; j += kWarp)
      dot += element(L, T, r, j) * static_cast<float>(g[j]);
  }
  for (int o = kWarp / 2; o > 0; o /= 2) dot += __shfl_down_sync(0xffffffffu, dot, o);
  if (threadIdx.x == 0) gpsw[i] = dot * bag_scale[i];
}

template <typename scalar_t>
Tables<scalar_t> tables(const std::vector<at::Tensor>& ws) {
  Tables<scalar_t> T{};
  for (size_t p = 0; p < ws.size(); ++p) T.w[p] = ws[p].data_ptr<scalar_t>();
  return T;
}

unsigned grid_of(int64_t n, int64_t per_block) {
  return static_cast<unsigned>((n + per_block - 1) / per_block);
}

at::Tensor qr_bag_forward_cuda(at::TensorList weights, const at::Tensor& indices,
                               const at::Tensor& offsets,
                               const std::optional<at::Tensor>& per_sample_weights,
                               int64_t pooling, int64_t op, at::IntArrayRef divisors,
                               at::IntArrayRef moduli, at::IntArrayRef row_starts,
                               at::IntArrayRef out_cols, int64_t id_offset, int64_t out_dim) {
  const QRLayout L = make_qr_layout(weights, op, divisors, moduli, row_starts, out_cols,
                                    id_offset, out_dim);
  check_qr_bags(indices, offsets, per_sample_weights);
  c10::cuda::CUDAGuard guard(weights[0].device());
  auto ws = contiguous_all(weights);
  auto idx = indices.contiguous();
  auto off = offsets.contiguous();
  std::optional<at::Tensor> psw;
  if (per_sample_weights) psw = per_sample_weights->contiguous().to(at::kFloat);
  const int64_t B = off.numel() - 1;
  auto out = at::empty({B, out_dim}, ws[0].options());
  if (B == 0 || out_dim == 0) return out.zero_();
  AT_DISPATCH_FLOATING_TYPES(ws[0].scalar_type(), "qr_bag_forward_cuda", [&] {
    forward_kernel<scalar_t><<<grid_of(B, kWarpsPerBlock), dim3(kWarp, kWarpsPerBlock), 0,
                               c10::cuda::getCurrentCUDAStream()>>>(
        L, tables<scalar_t>(ws), idx.data_ptr<int64_t>(), off.data_ptr<int64_t>(),
        psw ? psw->data_ptr<float>() : nullptr, B, pooling == 1, out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> qr_bag_backward_cuda(
    const at::Tensor& grad_output, at::TensorList weights, const at::Tensor& indices,
    const at::Tensor& offsets, const std::optional<at::Tensor>& per_sample_weights,
    int64_t pooling, int64_t op, at::IntArrayRef divisors, at::IntArrayRef moduli,
    at::IntArrayRef row_starts, at::IntArrayRef out_cols, int64_t id_offset, bool psw_grad) {
  const int64_t out_dim = grad_output.dim() == 2 ? grad_output.size(1) : -1;
  const QRLayout L = make_qr_layout(weights, op, divisors, moduli, row_starts, out_cols,
                                    id_offset, out_dim);
  check_qr_bags(indices, offsets, per_sample_weights);
  check_qr_grad_output(grad_output, offsets);
  c10::cuda::CUDAGuard guard(weights[0].device());
  const int64_t B = offsets.numel() - 1, n = indices.numel();
  auto ws = contiguous_all(weights);
  auto idx = indices.contiguous();
  auto off = offsets.contiguous();
  auto go = grad_output.contiguous().to(ws[0].scalar_type());
  auto stream = c10::cuda::getCurrentCUDAStream();
  auto bag_of = at::empty({n}, idx.options());
  auto pos_scale = at::empty({n}, idx.options().dtype(at::kFloat));
  auto bag_scale = at::empty({n}, idx.options().dtype(at::kFloat));
  std::optional<at::Tensor> psw;
  if (per_sample_weights) psw = per_sample_weights->contiguous().to(at::kFloat);
  if (B > 0) {
    bag_of_kernel<<<grid_of(B, 256), 256, 0, stream>>>(
        off.data_ptr<int64_t>(), B, psw ? psw->data_ptr<float>() : nullptr, pooling == 1,
        bag_of.data_ptr<int64_t>(), pos_scale.data_ptr<float>(), bag_scale.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  std::vector<at::Tensor> uniq_rows, grads;
  AT_DISPATCH_FLOATING_TYPES(ws[0].scalar_type(), "qr_bag_backward_cuda", [&] {
    const auto T = tables<scalar_t>(ws);
    for (int64_t p = 0; p < L.k; ++p) {
      auto rows = at::empty({n}, idx.options());
      if (n > 0) {
        partition_rows_kernel<<<grid_of(n, 256), 256, 0, stream>>>(L, p, idx.data_ptr<int64_t>(),
                                                                   n, rows.data_ptr<int64_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      auto [uniq, inverse, counts] = at::_unique2(rows, /*sorted=*/true, /*return_inverse=*/true,
                                                  /*return_counts=*/false);
      auto grad = at::zeros({uniq.numel(), L.cols[p]}, ws[0].options());
      if (n > 0 && L.cols[p] > 0) {
        backward_kernel<scalar_t><<<grid_of(n, kWarpsPerBlock), dim3(kWarp, kWarpsPerBlock), 0, stream>>>(
            L, T, p, idx.data_ptr<int64_t>(), n, go.data_ptr<scalar_t>(), bag_of.data_ptr<int64_t>(),
            pos_scale.data_ptr<float>(), inverse.data_ptr<int64_t>(), grad.data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      // Drop the -1 row of skipped (out-of-range) ids, if any.
      auto keep = uniq.ge(0);
      uniq_rows.push_back(uniq.index({keep}));
      grads.push_back(grad.index({keep}));
    }
  });
  auto gpsw = at::zeros({psw_grad ? n : 0}, ws[0].options().dtype(at::kFloat));
  if (psw_grad && n > 0) {
    AT_DISPATCH_FLOATING_TYPES(ws[0].scalar_type(), "qr_psw_grad_cuda", [&] {
      psw_grad_kernel<scalar_t><<<grid_of(n, kWarpsPerBlock), dim3(kWarp, kWarpsPerBlock), 0, stream>>>(
          L, tables<scalar_t>(ws), idx.data_ptr<int64_t>(), n, go.data_ptr<scalar_t>(),
          bag_of.data_ptr<int64_t>(), bag_scale.data_ptr<float>(), gpsw.data_ptr<float>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {uniq_rows, grads, gpsw};
}

}  // namespace

TORCH_LIBRARY_IMPL(torchrec_ext, CUDA, m) {
  m.impl("qr_bag_forward", &qr_bag_forward_cuda);
  m.impl("qr_bag_backward", &qr_bag_backward_cuda);
}

}  // namespace torchrec_ext
