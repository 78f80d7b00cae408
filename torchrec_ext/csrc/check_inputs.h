// Argument checks shared by the CPU and CUDA kernels of the hashed ops (and the
// offsets check every CPU bag op uses). The
// Python layer validates ids with the table's name first; these checks keep a
// bad call from ever reading or writing outside the buffer.
#pragma once
#include <ATen/ATen.h>

#include <optional>

#include "hashed_layout.h"

namespace torchrec_ext {

// Offsets of a CPU bag op describe nnz ids: start at 0, end at nnz, never decrease.
inline void check_offsets_data(const at::Tensor& off, int64_t nnz, const char* op) {
  const int64_t* o = off.data_ptr<int64_t>();
  const int64_t nb = off.numel() - 1;
  TORCH_CHECK(o[0] == 0 && o[nb] == nnz, op,
              ": offsets must start at 0 and end at the number of indices");
  for (int64_t b = 0; b < nb; ++b) {
    TORCH_CHECK(o[b] <= o[b + 1], op, ": offsets must be non-decreasing");
  }
}

inline void check_hashed_meta(const at::Tensor& weight, const at::Tensor& indices,
                              const at::Tensor& offsets,
                              const std::optional<at::Tensor>& psw, const HashedLayout& L) {
  TORCH_CHECK(weight.dim() == 2, "hashed bag: weight must be 2-D");
  TORCH_CHECK(at::isFloatingType(weight.scalar_type()), "hashed bag: weight must be floating point");
  TORCH_CHECK(indices.dim() == 1 && indices.scalar_type() == at::kLong,
              "hashed bag: indices must be a 1-D int64 tensor");
  TORCH_CHECK(offsets.dim() == 1 && offsets.scalar_type() == at::kLong && offsets.numel() >= 1,
              "hashed bag: offsets must be a non-empty 1-D int64 tensor");
  TORCH_CHECK(L.mode == 0 || L.mode == 1, "hashed bag: mode must be 0 (element) or 1 (block)");
  TORCH_CHECK(L.slots > 0 && L.rows_per_region > 0 && L.chunk > 0, "hashed bag: bad layout");
  TORCH_CHECK(weight.size(0) % L.slots == 0, "hashed bag: weight rows (", weight.size(0),
              ") must be a multiple of slots (", L.slots, ")");
  TORCH_CHECK(weight.size(1) % L.chunk == 0, "hashed bag: weight columns (", weight.size(1),
              ") must be a multiple of chunk (", L.chunk, ")");
  TORCH_CHECK(L.id_offset % L.rows_per_region == 0 && L.col_offset % L.chunk == 0,
              "hashed bag: shard offsets must fall on region boundaries");
  if (psw) {
    TORCH_CHECK(psw->dim() == 1 && psw->numel() == indices.numel(),
                "hashed bag: per_sample_weights must match indices");
  }
}

// Full check including the data; reads the tensors, so CPU only.
inline void check_hashed_inputs(const at::Tensor& weight, const at::Tensor& indices,
                                const at::Tensor& offsets,
                                const std::optional<at::Tensor>& psw, const HashedLayout& L) {
  check_hashed_meta(weight, indices, offsets, psw, L);
  check_offsets_data(offsets.contiguous(), indices.numel(), "hashed bag");
  if (indices.numel() > 0) {
    auto mm = at::aminmax(indices);
    const int64_t lo = std::get<0>(mm).item<int64_t>();
    const int64_t hi = std::get<1>(mm).item<int64_t>();
    const int64_t local_rows = (weight.size(0) / L.slots) * L.rows_per_region;
    TORCH_CHECK(lo >= 0 && hi < local_rows, "hashed bag: ids must lie in [0, ", local_rows,
                "), got [", lo, ", ", hi, "]");
  }
}

}  // namespace torchrec_ext
