// CPU kernel of coord_uniform_, the hashed tables' initializer: every element is a
// function of its global (row, column) coordinates and the seed, so a buffer fills
// with the same values whichever shard of it a rank holds.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../check_inputs.h"
#include "../hash.h"

namespace torchrec_ext {
namespace {

at::Tensor coord_uniform_cpu(at::Tensor& weight, int64_t row_offset, int64_t col_offset,
                             int64_t seed, double low, double high) {
  check_coord_init(weight, row_offset, col_offset);
  const int64_t R = weight.size(0), D = weight.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, weight.scalar_type(), "coord_uniform_cpu", [&] {
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

TORCH_LIBRARY_IMPL(torchrec_ext, CPU, m) { m.impl("coord_uniform_", &coord_uniform_cpu); }

}  // namespace torchrec_ext
