// CUDA kernels of the dynamic-table row ops (same schema as cpu/dynamic_bag.cpp).
// Block pointers travel to the device as one small array per call. Forward: one
// warp per bag, lanes over columns. Backward: the batch's rows are made unique
// (sorted) and gradients scatter into the unique rows with atomicAdd. Row -1 is
// a key the table does not hold and reads as `missing_value`.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <vector>

#include "../dynamic_check.h"
#include "../dynamic_table.h"

namespace torchrec_ext {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
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

template <typename scalar_t>
__global__ void forward_kernel(const int64_t* ptrs, int64_t bs, int64_t D, const int64_t* rows,
                               const int64_t* off, const float* psw, int64_t num_bags,
                               bool mean, float miss, float* out) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (b >= num_bags) return;
  const int64_t s = off[b], e = off[b + 1];
  const float scale = (mean && e > s) ? 1.f / static_cast<float>(e - s) : 1.f;
  for (int64_t j = threadIdx.x; j < D; j += kWarp) {
    float acc = 0.f;
    for (int64_t i = s; i < e; ++i) {
      const float w = psw ? psw[i] : 1.f;
      const int64_t r = rows[i];
      acc += w * (r < 0 ? miss : static_cast<float>(row_ptr<scalar_t>(ptrs, bs, D, r)[j]));
    }
    out[b * D + j] = acc * scale;
  }
}

__global__ void bag_of_kernel(const int64_t* off, int64_t num_bags, bool mean, int64_t* bag_of,
                              float* scale) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= num_bags) return;
  const int64_t s = off[b], e = off[b + 1];
  const float sc = (mean && e > s) ? 1.f / static_cast<float>(e - s) : 1.f;
  for (int64_t i = s; i < e; ++i) {
    bag_of[i] = b;
    scale[i] = sc;
  }
}

__global__ void scatter_grad_kernel(const float* go, int64_t D, const int64_t* rows,
                                    const int64_t* inverse, const int64_t* bag_of,
                                    const float* scale, const float* psw, int64_t n,
                                    float* grads) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n * D) return;
  const int64_t i = t / D, j = t % D;
  if (rows[i] < 0) return;
  const float c = scale[i] * (psw ? psw[i] : 1.f);
  atomicAdd(grads + inverse[i] * D + j, c * go[bag_of[i] * D + j]);
}

template <typename scalar_t>
__global__ void psw_grad_kernel(const float* go, const int64_t* ptrs, int64_t bs, int64_t D,
                                const int64_t* rows, const int64_t* bag_of, const float* scale,
                                int64_t n, float miss, float* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (i >= n) return;
  const int64_t r = rows[i];
  float dot = 0.f;
  for (int64_t j = threadIdx.x; j < D; j += kWarp) {
    const float v = r < 0 ? miss : static_cast<float>(row_ptr<scalar_t>(ptrs, bs, D, r)[j]);
    dot += go[bag_of[i] * D + j] * v;
  }
  for (int o = kWarp / 2; o > 0; o /= 2) dot += __shfl_down_sync(0xffffffff, dot, o);
  if (threadIdx.x == 0) out[i] = dot * scale[i];
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

at::Tensor dynamic_bag_forward_cuda(at::TensorList blocks, const at::Tensor& rows_in,
                                    const at::Tensor& offsets_in,
                                    const std::optional<at::Tensor>& psw_in, int64_t pooling,
                                    double missing_value) {
  check_bag_op(blocks, rows_in, offsets_in, psw_in, "dynamic_bag_forward");
  c10::cuda::CUDAGuard guard(blocks[0].device());
  const at::Tensor rows = rows_in.contiguous(), off = offsets_in.contiguous();
  const std::optional<at::Tensor> psw =
      psw_in ? std::optional<at::Tensor>(psw_in->contiguous()) : std::nullopt;
  const int64_t bs = blocks[0].size(0), D = blocks[0].size(1), B = off.numel() - 1;
  at::Tensor out = at::empty({B, D}, blocks[0].options().dtype(at::kFloat));
  if (B == 0) return out;
  const at::Tensor ptrs = block_ptrs(blocks);
  const dim3 threads(kWarp, kWarpsPerBlock);
  const unsigned nb = static_cast<unsigned>((B + kWarpsPerBlock - 1) / kWarpsPerBlock);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, blocks[0].scalar_type(),
                                  "dynamic_bag_forward_cuda", [&] {
    forward_kernel<scalar_t><<<nb, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        ptrs.data_ptr<int64_t>(), bs, D, rows.data_ptr<int64_t>(), off.data_ptr<int64_t>(),
        psw ? psw->data_ptr<float>() : nullptr, B, pooling == 1,
        static_cast<float>(missing_value), out.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dynamic_bag_backward_cuda(
    const at::Tensor& grad_in, at::TensorList blocks, const at::Tensor& rows_in,
    const at::Tensor& offsets_in, const std::optional<at::Tensor>& psw_in, int64_t pooling,
    double missing_value, bool psw_grad) {
  check_bag_op(blocks, rows_in, offsets_in, psw_in, "dynamic_bag_backward");
  c10::cuda::CUDAGuard guard(blocks[0].device());
  const at::Tensor rows = rows_in.contiguous(), off = offsets_in.contiguous();
  const at::Tensor go = grad_in.to(at::kFloat).contiguous();
  const int64_t bs = blocks[0].size(0), D = blocks[0].size(1), B = off.numel() - 1;
  const int64_t n = rows.numel();
  TORCH_CHECK(go.dim() == 2 && go.size(0) == B && go.size(1) == D,
              "dynamic_bag_backward: grad_output must be [bags, dim]");
  const std::optional<at::Tensor> psw =
      psw_in ? std::optional<at::Tensor>(psw_in->contiguous()) : std::nullopt;
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor bag_of = at::empty({n}, rows.options());
  at::Tensor scale = at::empty({n}, go.options());
  if (B > 0) {
    bag_of_kernel<<<grid(B), kThreads, 0, stream>>>(off.data_ptr<int64_t>(), B, pooling == 1,
                                                   bag_of.data_ptr<int64_t>(),
                                                   scale.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  // Unique rows over the whole batch (-1, if present, sorts first and is dropped).
  auto uniq = at::_unique2(rows, /*sorted=*/true, /*return_inverse=*/true, false);
  at::Tensor urows = std::get<0>(uniq), inverse = std::get<1>(uniq);
  at::Tensor grads = at::zeros({urows.numel(), D}, go.options());
  if (n > 0 && D > 0) {
    scatter_grad_kernel<<<grid(n * D), kThreads, 0, stream>>>(
        go.data_ptr<float>(), D, rows.data_ptr<int64_t>(), inverse.data_ptr<int64_t>(),
        bag_of.data_ptr<int64_t>(), scale.data_ptr<float>(),
        psw ? psw->data_ptr<float>() : nullptr, n, grads.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const at::Tensor keep = urows.ge(0);
  at::Tensor gpsw = at::empty({psw_grad ? n : 0}, go.options());
  if (psw_grad && n > 0) {
    const at::Tensor ptrs = block_ptrs(blocks);
    const dim3 threads(kWarp, kWarpsPerBlock);
    const unsigned nb = static_cast<unsigned>((n + kWarpsPerBlock - 1) / kWarpsPerBlock);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, blocks[0].scalar_type(),
                                    "dynamic_bag_psw_cuda", [&] {
      psw_grad_kernel<scalar_t><<<nb, threads, 0, stream>>>(
          go.data_ptr<float>(), ptrs.data_ptr<int64_t>(), bs, D, rows.data_ptr<int64_t>(),
          bag_of.data_ptr<int64_t>(), scale.data_ptr<float>(), n,
          static_cast<float>(missing_value), gpsw.data_ptr<float>());
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {urows.masked_select(keep), grads.index({keep}), gpsw};
}

at::Tensor block_rows_gather_cuda(at::TensorList blocks, const at::Tensor& rows_in) {
  const int64_t bs = check_row_op(blocks, rows_in, "block_rows_gather");
  c10::cuda::CUDAGuard guard(blocks[0].device());
  const at::Tensor rows = rows_in.contiguous();
  const int64_t D = blocks[0].size(1), n = rows.numel();
  at::Tensor out = at::empty({n, D}, blocks[0].options().dtype(at::kFloat));
  if (n * D == 0) return out;
  const at::Tensor ptrs = block_ptrs(blocks);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, blocks[0].scalar_type(),
                                  "block_rows_gather_cuda", [&] {
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, blocks[0].scalar_type(),
                                  "block_rows_scatter_cuda", [&] {
    scatter_kernel<scalar_t><<<grid(n * D), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        ptrs.data_ptr<int64_t>(), bs, D, rows.data_ptr<int64_t>(), n, values.data_ptr<float>(),
        static_cast<float>(alpha), accumulate);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void block_rows_init_cuda(at::TensorList blocks, const at::Tensor& rows_in,
                          const at::Tensor& keys_in, int64_t kind, double a, double b,
                          int64_t seed, int64_t col_offset) {
  const int64_t bs = check_row_op(blocks, rows_in, "block_rows_init_");
  check_init_keys(keys_in, rows_in);
  c10::cuda::CUDAGuard guard(blocks[0].device());
  const at::Tensor rows = rows_in.contiguous(), keys = keys_in.contiguous();
  const int64_t D = blocks[0].size(1), n = rows.numel();
  if (n * D == 0) return;
  const at::Tensor ptrs = block_ptrs(blocks);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, blocks[0].scalar_type(),
                                  "block_rows_init_cuda", [&] {
    init_kernel<scalar_t><<<grid(n * D), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        ptrs.data_ptr<int64_t>(), bs, D, rows.data_ptr<int64_t>(), keys.data_ptr<int64_t>(), n,
        kind, a, b, seed, col_offset);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(torchrec_ext, CUDA, m) {
  m.impl("dynamic_bag_forward", &dynamic_bag_forward_cuda);
  m.impl("dynamic_bag_backward", &dynamic_bag_backward_cuda);
  m.impl("block_rows_gather", &block_rows_gather_cuda);
  m.impl("block_rows_scatter_", &block_rows_scatter_cuda);
  m.impl("block_rows_init_", &block_rows_init_cuda);
}

}  // namespace torchrec_ext
