// CUDA kernels of the hashed-table ops (same schema as cpu/hashed_bag.cpp).
// One warp per bag; the backward pass scatters with atomicAdd into the gradient, or
// (hashed_bag_sgd_) straight into the buffer, scaled by -lr.
// Ids outside the shard are skipped (the Python layer rejects them first, with
// the table's name), so a bad call never touches memory outside the buffer.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../check_inputs.h"

namespace torchrec_ext {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;

// Buffer position and sign of element j (shard-local column) of shard-local id.
struct Located {
  int64_t pos;
  float sign;
};

__device__ __forceinline__ Located locate(const HashedLayout& L, uint64_t h0, int64_t base,
                                          int64_t D, int64_t j) {
  if (L.mode == 0) {
    const uint64_t h = col_hash(h0, L.col_offset + j);
    return {(base + hash_slot(h, L.slots)) * D + j, hash_sign(h, L.is_signed)};
  }
  const int64_t Z = L.chunk, LZ = L.slots * Z;
  const int64_t c = j / Z, t = j % Z;
  const uint64_t h = col_hash(h0, L.col_offset / Z + c);
  int64_t f = hash_slot(h, LZ) + t;
  if (f >= LZ) f -= LZ;
  return {(base + f / Z) * D + c * Z + f % Z, hash_sign(h, L.is_signed)};
}

__device__ __forceinline__ bool valid_id(const HashedLayout& L, int64_t id, int64_t regions) {
  return id >= 0 && id / L.rows_per_region < regions;
}

template <typename scalar_t>
__global__ void forward_kernel(const scalar_t* __restrict__ w, int64_t D,
                               const int64_t* __restrict__ idx, const int64_t* __restrict__ off,
                               const float* __restrict__ psw, int64_t num_bags, bool mean,
                               HashedLayout L, int64_t regions, scalar_t* __restrict__ out) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (b >= num_bags) return;
  const int64_t s = off[b], e = off[b + 1];
  const float scale = (mean && e > s) ? 1.0f / static_cast<float>(e - s) : 1.0f;
  for (int64_t j0 = 0; j0 < D; j0 += kWarp) {
    const int64_t j = j0 + threadIdx.x;
    float acc = 0.f;
    for (int64_t i = s; i < e; ++i) {
      const int64_t id = idx[i];
      if (!valid_id(L, id, regions)) continue;
      if (j < D) {
        const Located p = locate(L, id_hash(id + L.id_offset, L.seed),
                                 L.local_region(id) * L.slots, D, j);
        acc += (psw ? psw[i] : 1.f) * p.sign * static_cast<float>(w[p.pos]);
      }
    }
    if (j < D) out[b * D + j] = static_cast<scalar_t>(acc * scale);
  }
}

template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* __restrict__ go, int64_t D,
                                const int64_t* __restrict__ idx, const int64_t* __restrict__ off,
                                const float* __restrict__ psw, int64_t num_bags, bool mean,
                                HashedLayout L, int64_t regions, float alpha,
                                scalar_t* __restrict__ gw) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (b >= num_bags) return;
  const int64_t s = off[b], e = off[b + 1];
  const float scale = alpha * ((mean && e > s) ? 1.0f / static_cast<float>(e - s) : 1.0f);
  for (int64_t i = s; i < e; ++i) {
    const int64_t id = idx[i];
    if (!valid_id(L, id, regions)) continue;
    const uint64_t h0 = id_hash(id + L.id_offset, L.seed);
    const int64_t base = L.local_region(id) * L.slots;
    const float pw = scale * (psw ? psw[i] : 1.f);
    for (int64_t j = threadIdx.x; j < D; j += kWarp) {
      const Located p = locate(L, h0, base, D, j);
      atomicAdd(&gw[p.pos], static_cast<scalar_t>(pw * p.sign * static_cast<float>(go[b * D + j])));
    }
  }
}

template <typename scalar_t>
__global__ void psw_grad_kernel(const scalar_t* __restrict__ go, const scalar_t* __restrict__ w,
                                int64_t D, const int64_t* __restrict__ idx,
                                const int64_t* __restrict__ off, int64_t num_bags, bool mean,
                                HashedLayout L, int64_t regions, float* __restrict__ gpsw) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (b >= num_bags) return;
  const int64_t s = off[b], e = off[b + 1];
  const float scale = (mean && e > s) ? 1.0f / static_cast<float>(e - s) : 1.0f;
  for (int64_t i = s; i < e; ++i) {
    const int64_t id = idx[i];
    float dot = 0.f;
    if (valid_id(L, id, regions)) {
      const uint64_t h0 = id_hash(id + L.id_offset, L.seed);
      const int64_t base = L.local_region(id) * L.slots;
      for (int64_t j = threadIdx.x; j < D; j += kWarp) {
        const Located p = locate(L, h0, base, D, j);
        dot += p.sign * static_cast<float>(w[p.pos]) * static_cast<float>(go[b * D + j]);
      }
    }
    for (int o = kWarp / 2; o > 0; o /= 2) dot += __shfl_down_sync(0xffffffffu, dot, o);
    if (threadIdx.x == 0) gpsw[i] = dot * scale;
  }
}

__global__ void coord_uniform_kernel(float* w, int64_t R, int64_t D, int64_t row_offset,
                                     int64_t col_offset, int64_t seed, double low, double high) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= R * D) return;
  w[k] = static_cast<float>(low + (high - low) * coord_uniform(k / D + row_offset,
                                                               k % D + col_offset, seed));
}

HashedLayout make_layout(int64_t mode, int64_t chunk, int64_t rows_per_region, int64_t slots,
                         int64_t id_offset, int64_t col_offset, int64_t seed, bool is_signed) {
  return HashedLayout{mode, mode == 0 ? 1 : chunk, rows_per_region, slots,
                      id_offset, col_offset, seed, is_signed};
}

dim3 bag_grid(int64_t num_bags) {
  return dim3(static_cast<unsigned>((num_bags + kWarpsPerBlock - 1) / kWarpsPerBlock));
}

at::Tensor hashed_bag_forward_cuda(const at::Tensor& weight, const at::Tensor& indices,
                                   const at::Tensor& offsets,
                                   const std::optional<at::Tensor>& per_sample_weights,
                                   int64_t pooling, int64_t mode, int64_t chunk,
                                   int64_t rows_per_region, int64_t slots, int64_t id_offset,
                                   int64_t col_offset, int64_t seed, bool is_signed) {
  const HashedLayout L = make_layout(mode, chunk, rows_per_region, slots, id_offset,
                                     col_offset, seed, is_signed);
  check_hashed_meta(weight, indices, offsets, per_sample_weights, L);
  c10::cuda::CUDAGuard guard(weight.device());
  auto w = weight.contiguous();
  auto idx = indices.contiguous();
  auto off = offsets.contiguous();
  std::optional<at::Tensor> psw;
  if (per_sample_weights) psw = per_sample_weights->contiguous().to(at::kFloat);
  const int64_t B = off.numel() - 1, D = w.size(1);
  auto out = at::empty({B, D}, w.options());
  if (B == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "hashed_bag_forward_cuda", [&] {
    forward_kernel<scalar_t><<<bag_grid(B), dim3(kWarp, kWarpsPerBlock), 0,
                               c10::cuda::getCurrentCUDAStream()>>>(
        w.data_ptr<scalar_t>(), D, idx.data_ptr<int64_t>(), off.data_ptr<int64_t>(),
        psw ? psw->data_ptr<float>() : nullptr, B, pooling == 1, L, w.size(0) / slots,
        out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// Shared by the two backward ops: psw gradient first (from the weights as they were in
// forward), then dst += alpha * weight gradient.
at::Tensor backward_into(const at::Tensor& grad_output, const at::Tensor& weight,
                         const at::Tensor& indices, const at::Tensor& offsets,
                         const std::optional<at::Tensor>& per_sample_weights, int64_t pooling,
                         const HashedLayout& L, bool psw_grad, float alpha, at::Tensor& dst,
                         const char* op) {
  check_hashed_meta(weight, indices, offsets, per_sample_weights, L);
  c10::cuda::CUDAGuard guard(weight.device());
  const int64_t B = offsets.numel() - 1, D = weight.size(1);
  TORCH_CHECK(grad_output.dim() == 2 && grad_output.size(0) == B && grad_output.size(1) == D,
              op, ": grad_output must be [", B, ", ", D, "]");
  auto go = grad_output.contiguous().to(weight.scalar_type());
  auto idx = indices.contiguous();
  auto off = offsets.contiguous();
  std::optional<at::Tensor> psw;
  if (per_sample_weights) psw = per_sample_weights->contiguous().to(at::kFloat);
  auto gpsw = psw_grad ? at::zeros({indices.numel()}, weight.options().dtype(at::kFloat))
                       : at::empty({0}, weight.options().dtype(at::kFloat));
  if (B == 0) return gpsw;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t regions = weight.size(0) / L.slots;
  AT_DISPATCH_FLOATING_TYPES(weight.scalar_type(), "hashed_bag_backward_cuda", [&] {
    if (psw_grad) {
      auto w = weight.contiguous();
      psw_grad_kernel<scalar_t><<<bag_grid(B), dim3(kWarp, kWarpsPerBlock), 0, stream>>>(
          go.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), D, idx.data_ptr<int64_t>(),
          off.data_ptr<int64_t>(), B, pooling == 1, L, regions, gpsw.data_ptr<float>());
    }
    backward_kernel<scalar_t><<<bag_grid(B), dim3(kWarp, kWarpsPerBlock), 0, stream>>>(
        go.data_ptr<scalar_t>(), D, idx.data_ptr<int64_t>(), off.data_ptr<int64_t>(),
        psw ? psw->data_ptr<float>() : nullptr, B, pooling == 1, L, regions, alpha,
        dst.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return gpsw;
}

std::tuple<at::Tensor, at::Tensor> hashed_bag_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& indices,
    const at::Tensor& offsets, const std::optional<at::Tensor>& per_sample_weights,
    int64_t pooling, int64_t mode, int64_t chunk, int64_t rows_per_region, int64_t slots,
    int64_t id_offset, int64_t col_offset, int64_t seed, bool is_signed, bool psw_grad) {
  const HashedLayout L = make_layout(mode, chunk, rows_per_region, slots, id_offset,
                                     col_offset, seed, is_signed);
  auto gw = at::zeros(weight.sizes(), weight.options());
  auto gpsw = backward_into(grad_output, weight, indices, offsets, per_sample_weights, pooling,
                            L, psw_grad, 1.0f, gw, "hashed_bag_backward");
  return {gw, gpsw};
}

at::Tensor hashed_bag_sgd_cuda(at::Tensor& weight, const at::Tensor& grad_output,
                               const at::Tensor& indices, const at::Tensor& offsets,
                               const std::optional<at::Tensor>& per_sample_weights,
                               int64_t pooling, int64_t mode, int64_t chunk,
                               int64_t rows_per_region, int64_t slots, int64_t id_offset,
                               int64_t col_offset, int64_t seed, bool is_signed, double lr,
                               bool psw_grad) {
  TORCH_CHECK(weight.is_contiguous(), "hashed_bag_sgd_: weight must be contiguous (updated in place)");
  const HashedLayout L = make_layout(mode, chunk, rows_per_region, slots, id_offset,
                                     col_offset, seed, is_signed);
  return backward_into(grad_output, weight, indices, offsets, per_sample_weights, pooling, L,
                       psw_grad, static_cast<float>(-lr), weight, "hashed_bag_sgd_");
}

at::Tensor coord_uniform_cuda(at::Tensor& weight, int64_t row_offset, int64_t col_offset,
                              int64_t seed, double low, double high) {
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(),
              "coord_uniform_: weight must be a contiguous 2-D tensor");
  c10::cuda::CUDAGuard guard(weight.device());
  const int64_t n = weight.numel();
  if (n == 0) return weight;
  // Draw in fp32 and cast, so low-precision tables get the same values as fp32 ones.
  auto tmp = weight.scalar_type() == at::kFloat ? weight : at::empty_like(weight, weight.options().dtype(at::kFloat));
  coord_uniform_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0,
                         c10::cuda::getCurrentCUDAStream()>>>(
      tmp.data_ptr<float>(), weight.size(0), weight.size(1), row_offset, col_offset, seed, low, high);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!tmp.is_same(weight)) weight.copy_(tmp);
  return weight;
}

}  // namespace

TORCH_LIBRARY_IMPL(torchrec_ext, CUDA, m) {
  m.impl("hashed_bag_forward", &hashed_bag_forward_cuda);
  m.impl("hashed_bag_backward", &hashed_bag_backward_cuda);
  m.impl("hashed_bag_sgd_", &hashed_bag_sgd_cuda);
  m.impl("coord_uniform_", &coord_uniform_cuda);
}

}  // namespace torchrec_ext
