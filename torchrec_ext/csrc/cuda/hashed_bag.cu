// CUDA kernels of the hashed-table ops (same schema as cpu/hashed_bag.cpp). A batched
// call is one launch over the bags of all its tables: one warp per bag, which finds its
// table in a small array of table descriptors. The backward pass scatters with
// atomicAdd into the gradient or (hashed_bags_sgd_) straight into the buffer, scaled
// by -lr. Ids outside the shard are skipped (the Python layer rejects them first, with
// the table's name), so a bad call never touches memory outside the buffer.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../check_inputs.h"
#include "table_batch.cuh"

namespace torchrec_ext {
namespace {

// One table of a batched call, as the kernels see it.
template <typename scalar_t>
struct TableDesc {
  HashedLayout L;
  int64_t D, bag0, regions;
  bool mean;
  const scalar_t* w;   // the buffer
  scalar_t* out;       // forward: output rows; backward: unused
  const scalar_t* go;  // backward: output-gradient rows
  scalar_t* dst;       // backward: where alpha * gradient lands
};

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
  int64_t f = hash_slot(h, L.starts) * L.align + t;
  if (f >= LZ) f -= LZ;
  return {(base + f / Z) * D + c * Z + f % Z, hash_sign(h, L.is_signed)};
}

__device__ __forceinline__ bool valid_id(const HashedLayout& L, int64_t id, int64_t regions) {
  return id >= 0 && id / L.rows_per_region < regions;
}

template <typename scalar_t>
__global__ void forward_kernel(const TableDesc<scalar_t>* __restrict__ desc, int T,
                               int64_t first_bag, int64_t num_bags, const int64_t* __restrict__ idx,
                               const int64_t* __restrict__ off, const float* __restrict__ psw) {
  const auto wb = warp_bag(desc, T, first_bag, num_bags, off);
  if (!wb.ok) return;
  const TableDesc<scalar_t>& d = *wb.d;
  const HashedLayout& L = d.L;
  const int64_t b = wb.b, s = wb.s, e = wb.e, D = d.D;
  const float scale = wb.scale;
  for (int64_t j0 = 0; j0 < D; j0 += kWarp) {
    const int64_t j = j0 + threadIdx.x;
    float acc = 0.f;
    for (int64_t i = s; i < e; ++i) {
      const int64_t id = idx[i];
      if (!valid_id(L, id, d.regions) || j >= D) continue;
      const Located p =
          locate(L, id_hash(id + L.id_offset, L.seed), L.local_region(id) * L.slots, D, j);
      acc += (psw ? psw[i] : 1.f) * p.sign * static_cast<float>(d.w[p.pos]);
    }
    if (j < D) d.out[(b - d.bag0) * D + j] = static_cast<scalar_t>(acc * scale);
  }
}

template <typename scalar_t>
__global__ void backward_kernel(const TableDesc<scalar_t>* __restrict__ desc, int T,
                                int64_t first_bag, int64_t num_bags,
                                const int64_t* __restrict__ idx, const int64_t* __restrict__ off,
                                const float* __restrict__ psw, float alpha) {
  const auto wb = warp_bag(desc, T, first_bag, num_bags, off);
  if (!wb.ok) return;
  const TableDesc<scalar_t>& d = *wb.d;
  const HashedLayout& L = d.L;
  const int64_t b = wb.b, s = wb.s, e = wb.e, D = d.D;
  const float scale = alpha * wb.scale;
  const scalar_t* g = d.go + (b - d.bag0) * D;
  for (int64_t i = s; i < e; ++i) {
    const int64_t id = idx[i];
    if (!valid_id(L, id, d.regions)) continue;
    const uint64_t h0 = id_hash(id + L.id_offset, L.seed);
    const int64_t base = L.local_region(id) * L.slots;
    const float pw = scale * (psw ? psw[i] : 1.f);
    for (int64_t j = threadIdx.x; j < D; j += kWarp) {
      const Located p = locate(L, h0, base, D, j);
      atomicAdd(&d.dst[p.pos], static_cast<scalar_t>(pw * p.sign * static_cast<float>(g[j])));
    }
  }
}

template <typename scalar_t>
__global__ void psw_grad_kernel(const TableDesc<scalar_t>* __restrict__ desc, int T,
                                int64_t first_bag, int64_t num_bags,
                                const int64_t* __restrict__ idx, const int64_t* __restrict__ off,
                                float* __restrict__ gpsw) {
  const auto wb = warp_bag(desc, T, first_bag, num_bags, off);
  if (!wb.ok) return;
  const TableDesc<scalar_t>& d = *wb.d;
  const HashedLayout& L = d.L;
  const int64_t b = wb.b, s = wb.s, e = wb.e, D = d.D;
  const float scale = wb.scale;
  const scalar_t* g = d.go + (b - d.bag0) * D;
  for (int64_t i = s; i < e; ++i) {
    const int64_t id = idx[i];
    float dot = 0.f;
    if (valid_id(L, id, d.regions)) {
      const uint64_t h0 = id_hash(id + L.id_offset, L.seed);
      const int64_t base = L.local_region(id) * L.slots;
      for (int64_t j = threadIdx.x; j < D; j += kWarp) {
        const Located p = locate(L, h0, base, D, j);
        dot += p.sign * static_cast<float>(d.w[p.pos]) * static_cast<float>(g[j]);
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
  w[k] = static_cast<float>(low + (high - low) *
                                      coord_uniform(k / D + row_offset, k % D + col_offset, seed));
}

dim3 bag_grid(int64_t num_bags) {
  return dim3(static_cast<unsigned>((num_bags + kWarpsPerBlock - 1) / kWarpsPerBlock));
}

// Everything a launch needs: the tables' descriptors on the device, and the inputs.
template <typename scalar_t>
struct Launch {
  at::Tensor desc_bytes;  // keeps the device copy alive until the call returns
  const TableDesc<scalar_t>* desc;
  int T;
  int64_t first_bag, num_bags;
};

template <typename scalar_t>
Launch<scalar_t> describe(const std::vector<HashedLayout>& layouts, const at::TensorList weights,
                          at::IntArrayRef table_bags, at::IntArrayRef poolings,
                          const std::vector<at::Tensor>& outs, const std::vector<at::Tensor>& gos,
                          const std::vector<at::Tensor>& dsts, const at::Device& device) {
  const int T = static_cast<int>(weights.size());
  std::vector<TableDesc<scalar_t>> d;
  for (int t = 0; t < T; ++t) {
    d.push_back(TableDesc<scalar_t>{layouts[t], weights[t].size(1), table_bags[t],
                                    weights[t].size(0) / layouts[t].slots, poolings[t] == 1,
                                    weights[t].data_ptr<scalar_t>(),
                                    outs.empty() ? nullptr : outs[t].data_ptr<scalar_t>(),
                                    gos.empty() ? nullptr : gos[t].data_ptr<scalar_t>(),
                                    dsts.empty() ? nullptr : dsts[t].data_ptr<scalar_t>()});
  }
  auto dev = to_device(d, device);
  return {dev.bytes, dev.ptr, T, table_bags[0], table_bags[T] - table_bags[0]};
}

std::vector<at::Tensor> hashed_bags_forward_cuda(
    const at::TensorList weights, const at::Tensor& indices, const at::Tensor& offsets,
    const std::optional<at::Tensor>& per_sample_weights, at::IntArrayRef table_bags,
    at::IntArrayRef poolings, at::IntArrayRef layouts) {
  const auto layout = hashed_batch_layouts(weights, indices, offsets, per_sample_weights,
                                           table_bags, poolings, layouts);
  c10::cuda::CUDAGuard guard(indices.device());
  auto idx = indices.contiguous();
  auto off = offsets.contiguous();
  std::optional<at::Tensor> psw;
  if (per_sample_weights) psw = per_sample_weights->contiguous().to(at::kFloat);
  std::vector<at::Tensor> w, out;
  for (size_t t = 0; t < weights.size(); ++t) {
    w.push_back(weights[t].contiguous());
    out.push_back(at::empty({table_bags[t + 1] - table_bags[t], w[t].size(1)}, w[t].options()));
  }
  if (w.empty() || table_bags.back() == table_bags[0]) return out;
  AT_DISPATCH_FLOATING_TYPES(w[0].scalar_type(), "hashed_bags_forward_cuda", [&] {
    auto run = describe<scalar_t>(layout, w, table_bags, poolings, out, {}, {}, indices.device());
    forward_kernel<scalar_t><<<bag_grid(run.num_bags), dim3(kWarp, kWarpsPerBlock), 0,
                               c10::cuda::getCurrentCUDAStream()>>>(
        run.desc, run.T, run.first_bag, run.num_bags, idx.data_ptr<int64_t>(),
        off.data_ptr<int64_t>(), psw ? psw->data_ptr<float>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// The CUDA kernels keep no positions cache: they recompute an id's hashes in the
// backward pass (a few integer operations per lane; whether a cache would pay on a GPU
// is unmeasured). Their forward_keep returns an empty cache, and the backward ops
// refuse a full one.
void check_no_positions(const std::optional<at::Tensor>& positions, const char* op) {
  TORCH_CHECK(!positions || positions->numel() == 0, op,
              ": the CUDA kernels keep no positions; pass an empty positions tensor");
}

std::tuple<std::vector<at::Tensor>, at::Tensor> hashed_bags_forward_keep_cuda(
    const at::TensorList weights, const at::Tensor& indices, const at::Tensor& offsets,
    const std::optional<at::Tensor>& per_sample_weights, at::IntArrayRef table_bags,
    at::IntArrayRef poolings, at::IntArrayRef layouts) {
  auto out = hashed_bags_forward_cuda(weights, indices, offsets, per_sample_weights, table_bags,
                                      poolings, layouts);
  return {out, at::empty({0, hashed_position_columns(weights, layouts)},
                         indices.options().dtype(at::kLong))};
}

// Shared by the two backward ops: psw gradient first (from the weights as they were in
// forward), then dst[t] += alpha * weight gradient of table t.
at::Tensor backward_into(const at::TensorList grad_outputs, const at::TensorList weights,
                         const at::Tensor& indices, const at::Tensor& offsets,
                         const std::optional<at::Tensor>& per_sample_weights,
                         at::IntArrayRef table_bags, at::IntArrayRef poolings,
                         at::IntArrayRef layouts, bool psw_grad, float alpha,
                         const std::vector<at::Tensor>& dst, const char* op) {
  const auto layout = hashed_batch_layouts(weights, indices, offsets, per_sample_weights,
                                           table_bags, poolings, layouts);
  const auto go = hashed_batch_grads(grad_outputs, weights, table_bags, op);
  c10::cuda::CUDAGuard guard(indices.device());
  auto idx = indices.contiguous();
  auto off = offsets.contiguous();
  std::optional<at::Tensor> psw;
  if (per_sample_weights) psw = per_sample_weights->contiguous().to(at::kFloat);
  auto gpsw = psw_grad ? at::zeros({indices.numel()}, offsets.options().dtype(at::kFloat))
                       : at::empty({0}, offsets.options().dtype(at::kFloat));
  if (weights.empty() || table_bags.back() == table_bags[0]) return gpsw;
  std::vector<at::Tensor> w;
  for (const auto& x : weights) w.push_back(x.contiguous());
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(w[0].scalar_type(), "hashed_bags_backward_cuda", [&] {
    auto run = describe<scalar_t>(layout, w, table_bags, poolings, {}, go, dst, indices.device());
    const dim3 grid = bag_grid(run.num_bags), block(kWarp, kWarpsPerBlock);
    if (psw_grad) {
      psw_grad_kernel<scalar_t><<<grid, block, 0, stream>>>(
          run.desc, run.T, run.first_bag, run.num_bags, idx.data_ptr<int64_t>(),
          off.data_ptr<int64_t>(), gpsw.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    backward_kernel<scalar_t><<<grid, block, 0, stream>>>(
        run.desc, run.T, run.first_bag, run.num_bags, idx.data_ptr<int64_t>(),
        off.data_ptr<int64_t>(), psw ? psw->data_ptr<float>() : nullptr, alpha);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gpsw;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> hashed_bags_backward_cuda(
    const at::TensorList grad_outputs, const at::TensorList weights, const at::Tensor& indices,
    const at::Tensor& offsets, const std::optional<at::Tensor>& per_sample_weights,
    at::IntArrayRef table_bags, at::IntArrayRef poolings, at::IntArrayRef layouts, bool psw_grad,
    const std::optional<at::Tensor>& positions) {
  check_no_positions(positions, "hashed_bags_backward");
  std::vector<at::Tensor> gw;
  for (const auto& w : weights) gw.push_back(at::zeros(w.sizes(), w.options()));
  auto gpsw = backward_into(grad_outputs, weights, indices, offsets, per_sample_weights, table_bags,
                            poolings, layouts, psw_grad, 1.0f, gw, "hashed_bags_backward");
  return {gw, gpsw};
}

at::Tensor hashed_bags_sgd_cuda(at::TensorList weights, const at::TensorList grad_outputs,
                                const at::Tensor& indices, const at::Tensor& offsets,
                                const std::optional<at::Tensor>& per_sample_weights,
                                at::IntArrayRef table_bags, at::IntArrayRef poolings,
                                at::IntArrayRef layouts, double lr, bool psw_grad,
                                const std::optional<at::Tensor>& positions) {
  check_no_positions(positions, "hashed_bags_sgd_");
  const auto dst = hashed_batch_in_place(weights, "hashed_bags_sgd_");
  return backward_into(grad_outputs, weights, indices, offsets, per_sample_weights, table_bags,
                       poolings, layouts, psw_grad, static_cast<float>(-lr), dst,
                       "hashed_bags_sgd_");
}

at::Tensor coord_uniform_cuda(at::Tensor& weight, int64_t row_offset, int64_t col_offset,
                              int64_t seed, double low, double high) {
  check_coord_init(weight, row_offset, col_offset);
  c10::cuda::CUDAGuard guard(weight.device());
  const int64_t n = weight.numel();
  if (n == 0) return weight;
  // Draw in fp32 and cast, so low-precision tables get the same values as fp32 ones.
  auto tmp = weight.scalar_type() == at::kFloat
                 ? weight
                 : at::empty_like(weight, weight.options().dtype(at::kFloat));
  coord_uniform_kernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0,
                         c10::cuda::getCurrentCUDAStream()>>>(tmp.data_ptr<float>(), weight.size(0),
                                                              weight.size(1), row_offset,
                                                              col_offset, seed, low, high);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!tmp.is_same(weight)) weight.copy_(tmp);
  return weight;
}

}  // namespace

TORCH_LIBRARY_IMPL(torchrec_ext, CUDA, m) {
  m.impl("hashed_bags_forward", &hashed_bags_forward_cuda);
  m.impl("hashed_bags_forward_keep", &hashed_bags_forward_keep_cuda);
  m.impl("hashed_bags_backward", &hashed_bags_backward_cuda);
  m.impl("hashed_bags_sgd_", &hashed_bags_sgd_cuda);
  m.impl("coord_uniform_", &coord_uniform_cuda);
}

}  // namespace torchrec_ext
