// CPU kernels of the hashed-table ops: parallel over bags in the forward pass
// and over buffer regions in the backward pass (each thread owns whole regions,
// so gradients accumulate without atomics or a [nnz, dim] index tensor).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "../hashed_layout.h"
#include "../check_inputs.h"

namespace torchrec_ext {
namespace {

// Float accumulation for float tables (as FBGEMM), double for double (the tests' reference).
template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// A block-mode chunk starts at flat position f of its region's (slot, column) space and
// runs Z positions: columns col..Z-1 of slot f / Z, then columns 0..col-1 of the next slot
// (wrapping at the region's end). `visit(buffer_row, first_col, out_first, len)` sees the
// two contiguous segments, so the inner loops carry no division and vectorize.
template <typename Visit>
inline void chunk_segments(int64_t f, int64_t Z, int64_t slots, int64_t base, Visit&& visit) {
  const int64_t slot = f / Z, col = f % Z;
  visit(base + slot, col, 0, Z - col);
  if (col) visit(base + (slot + 1 == slots ? 0 : slot + 1), 0, Z - col, col);
}

template <typename scalar_t>
void forward_kernel(const scalar_t* w, int64_t D, const int64_t* idx,
                    const int64_t* off, const float* psw, int64_t num_bags,
                    bool mean, const HashedLayout& L, scalar_t* out) {
  using acc_t = acc_type<scalar_t>;
  const int64_t Z = L.chunk;
  const int64_t LZ = L.slots * Z;
  at::parallel_for(0, num_bags, 16, [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> acc(D);
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const int64_t s = off[b], e = off[b + 1];
      for (int64_t i = s; i < e; ++i) {
        const int64_t gid = idx[i] + L.id_offset;
        const int64_t base = L.local_region(idx[i]) * L.slots;
        const acc_t pw = psw ? psw[i] : acc_t(1);
        const uint64_t h0 = id_hash(gid, L.seed);
        if (L.mode == 0) {
          for (int64_t j = 0; j < D; ++j) {
            const uint64_t h = col_hash(h0, L.col_offset + j);
            const int64_t row = base + hash_slot(h, L.slots);
            acc[j] += pw * hash_sign(h, L.is_signed) * static_cast<acc_t>(w[row * D + j]);
          }
        } else {
          for (int64_t c = 0; c < D / Z; ++c) {
            const uint64_t h = col_hash(h0, L.col_offset / Z + c);
            const acc_t sg = pw * hash_sign(h, L.is_signed);
            acc_t* a = acc.data() + c * Z;
            chunk_segments(hash_slot(h, LZ), Z, L.slots, base,
                           [&](int64_t row, int64_t col, int64_t t0, int64_t len) {
              const scalar_t* src = w + row * D + c * Z + col;
              for (int64_t t = 0; t < len; ++t) a[t0 + t] += sg * static_cast<acc_t>(src[t]);
            });
          }
        }
      }
      const acc_t scale = (mean && e > s) ? acc_t(1) / static_cast<acc_t>(e - s) : acc_t(1);
      for (int64_t j = 0; j < D; ++j) out[b * D + j] = static_cast<scalar_t>(acc[j] * scale);
    }
  });
}

// Units of work are (local row region, column region) pairs; a thread scans all
// ids and applies those that fall in its units.
template <typename scalar_t>
void backward_kernel(const scalar_t* go, int64_t D, const int64_t* idx,
                     const int64_t* off, const float* psw, int64_t num_bags,
                     bool mean, const HashedLayout& L, int64_t num_regions,
                     scalar_t* gw) {
  const int64_t Z = L.chunk;
  const int64_t LZ = L.slots * Z;
  const int64_t C = D / Z;  // column regions in this shard
  at::parallel_for(0, num_regions * C, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t b = 0; b < num_bags; ++b) {
      const int64_t s = off[b], e = off[b + 1];
      if (s == e) continue;
      const double scale = mean ? 1.0 / static_cast<double>(e - s) : 1.0;
      const scalar_t* g = go + b * D;
      for (int64_t i = s; i < e; ++i) {
        const int64_t r = L.local_region(idx[i]);
        const int64_t c_lo = std::max<int64_t>(u0 - r * C, 0);
        const int64_t c_hi = std::min<int64_t>(u1 - r * C, C);
        if (c_lo >= c_hi) continue;
        const int64_t base = r * L.slots;
        const double pw = scale * (psw ? psw[i] : 1.0);
        const uint64_t h0 = id_hash(idx[i] + L.id_offset, L.seed);
        for (int64_t c = c_lo; c < c_hi; ++c) {
          const uint64_t h = col_hash(h0, (L.col_offset / Z) + c);
          const double sg = pw * hash_sign(h, L.is_signed);
          if (L.mode == 0) {
            gw[(base + hash_slot(h, L.slots)) * D + c] += static_cast<scalar_t>(sg * g[c]);
          } else {
            const scalar_t* gc = g + c * Z;
            chunk_segments(hash_slot(h, LZ), Z, L.slots, base,
                           [&](int64_t row, int64_t col, int64_t t0, int64_t len) {
              scalar_t* dst = gw + row * D + c * Z + col;
              const scalar_t sgs = static_cast<scalar_t>(sg);
              for (int64_t t = 0; t < len; ++t) dst[t] += sgs * gc[t0 + t];
            });
          }
        }
      }
    }
  });
}

// d(out[b]) / d(psw[i]) = scale * <grad_out[b], virtual row of id i>.
template <typename scalar_t>
void psw_grad_kernel(const scalar_t* go, const scalar_t* w, int64_t D,
                     const int64_t* idx, const int64_t* off, int64_t num_bags,
                     bool mean, const HashedLayout& L, float* gpsw) {
  const int64_t Z = L.chunk;
  const int64_t LZ = L.slots * Z;
  at::parallel_for(0, num_bags, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t s = off[b], e = off[b + 1];
      const double scale = (mean && e > s) ? 1.0 / static_cast<double>(e - s) : 1.0;
      const scalar_t* g = go + b * D;
      for (int64_t i = s; i < e; ++i) {
        const int64_t base = L.local_region(idx[i]) * L.slots;
        const uint64_t h0 = id_hash(idx[i] + L.id_offset, L.seed);
        double dot = 0.0;
        if (L.mode == 0) {
          for (int64_t j = 0; j < D; ++j) {
            const uint64_t h = col_hash(h0, L.col_offset + j);
            dot += hash_sign(h, L.is_signed) * static_cast<double>(w[(base + hash_slot(h, L.slots)) * D + j]) * g[j];
          }
        } else {
          for (int64_t c = 0; c < D / Z; ++c) {
            const uint64_t h = col_hash(h0, L.col_offset / Z + c);
            double part = 0.0;
            int64_t f = hash_slot(h, LZ);
            for (int64_t t = 0; t < Z; ++t, ++f) {
              if (f == LZ) f = 0;
              part += static_cast<double>(w[(base + f / Z) * D + c * Z + f % Z]) * g[c * Z + t];
            }
            dot += hash_sign(h, L.is_signed) * part;
          }
        }
        gpsw[i] = static_cast<float>(dot * scale);
      }
    }
  });
}

HashedLayout make_layout(int64_t mode, int64_t chunk, int64_t rows_per_region,
                         int64_t slots, int64_t id_offset, int64_t col_offset,
                         int64_t seed, bool is_signed) {
  return HashedLayout{mode, mode == 0 ? 1 : chunk, rows_per_region, slots,
                      id_offset, col_offset, seed, is_signed};
}

at::Tensor hashed_bag_forward_cpu(const at::Tensor& weight, const at::Tensor& indices,
                                  const at::Tensor& offsets,
                                  const std::optional<at::Tensor>& per_sample_weights,
                                  int64_t pooling, int64_t mode, int64_t chunk,
                                  int64_t rows_per_region, int64_t slots, int64_t id_offset,
                                  int64_t col_offset, int64_t seed, bool is_signed) {
  const HashedLayout L = make_layout(mode, chunk, rows_per_region, slots, id_offset,
                                     col_offset, seed, is_signed);
  check_hashed_inputs(weight, indices, offsets, per_sample_weights, L);
  auto w = weight.contiguous();
  auto idx = indices.contiguous();
  auto off = offsets.contiguous();
  std::optional<at::Tensor> psw;
  if (per_sample_weights) psw = per_sample_weights->contiguous().to(at::kFloat);
  const int64_t B = off.numel() - 1, D = w.size(1);
  auto out = at::empty({B, D}, w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "hashed_bag_forward_cpu", [&] {
    forward_kernel<scalar_t>(w.data_ptr<scalar_t>(), D, idx.data_ptr<int64_t>(),
                             off.data_ptr<int64_t>(), psw ? psw->data_ptr<float>() : nullptr,
                             B, pooling == 1, L, out.data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> hashed_bag_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& indices,
    const at::Tensor& offsets, const std::optional<at::Tensor>& per_sample_weights,
    int64_t pooling, int64_t mode, int64_t chunk, int64_t rows_per_region, int64_t slots,
    int64_t id_offset, int64_t col_offset, int64_t seed, bool is_signed, bool psw_grad) {
  const HashedLayout L = make_layout(mode, chunk, rows_per_region, slots, id_offset,
                                     col_offset, seed, is_signed);
  check_hashed_inputs(weight, indices, offsets, per_sample_weights, L);
  const int64_t B = offsets.numel() - 1, D = weight.size(1);
  TORCH_CHECK(grad_output.dim() == 2 && grad_output.size(0) == B && grad_output.size(1) == D,
              "hashed_bag_backward: grad_output must be [", B, ", ", D, "]");
  auto go = grad_output.contiguous().to(weight.scalar_type());
  auto w = weight.contiguous();
  auto idx = indices.contiguous();
  auto off = offsets.contiguous();
  std::optional<at::Tensor> psw;
  if (per_sample_weights) psw = per_sample_weights->contiguous().to(at::kFloat);
  auto gw = at::zeros_like(w);
  auto gpsw = psw_grad ? at::zeros({indices.numel()}, w.options().dtype(at::kFloat))
                       : at::empty({0}, w.options().dtype(at::kFloat));
  const int64_t num_regions = w.size(0) / slots;
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "hashed_bag_backward_cpu", [&] {
    backward_kernel<scalar_t>(go.data_ptr<scalar_t>(), D, idx.data_ptr<int64_t>(),
                              off.data_ptr<int64_t>(), psw ? psw->data_ptr<float>() : nullptr,
                              B, pooling == 1, L, num_regions, gw.data_ptr<scalar_t>());
    if (psw_grad) {
      psw_grad_kernel<scalar_t>(go.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), D,
                                idx.data_ptr<int64_t>(), off.data_ptr<int64_t>(), B,
                                pooling == 1, L, gpsw.data_ptr<float>());
    }
  });
  return {gw, gpsw};
}

at::Tensor coord_uniform_cpu(at::Tensor& weight, int64_t row_offset, int64_t col_offset,
                             int64_t seed, double low, double high) {
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous(),
              "coord_uniform_: weight must be a contiguous 2-D tensor");
  const int64_t R = weight.size(0), D = weight.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(),
                                  "coord_uniform_cpu", [&] {
    scalar_t* w = weight.data_ptr<scalar_t>();
    at::parallel_for(0, R, 256, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t j = 0; j < D; ++j)
          w[r * D + j] = static_cast<scalar_t>(
              low + (high - low) * coord_uniform(r + row_offset, j + col_offset, seed));
    });
  });
  return weight;
}

}  // namespace

TORCH_LIBRARY_IMPL(torchrec_ext, CPU, m) {
  m.impl("hashed_bag_forward", &hashed_bag_forward_cpu);
  m.impl("hashed_bag_backward", &hashed_bag_backward_cpu);
  m.impl("coord_uniform_", &coord_uniform_cpu);
}

}  // namespace torchrec_ext
