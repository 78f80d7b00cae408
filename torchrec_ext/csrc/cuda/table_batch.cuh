// Pieces every batched CUDA op shares: the tables' descriptors copied to the device
// once per call, and the search for the table that owns a bag (one launch serves
// all the tables of a call, as FBGEMM's table-batched kernels do).
#pragma once
#include <ATen/ATen.h>

#include <cstring>
#include <vector>

namespace torchrec_ext {

// The index of the table that owns x: descriptors hold their first element in
// `Member` (a bag, a key), sorted ascending, and x >= desc[0].*Member. Empty tables
// share their start with the next table, and the search picks the last of equals.
template <auto Member, typename Desc>
__device__ __forceinline__ int owner_of(const Desc* desc, int T, int64_t x) {
  int lo = 0, hi = T - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (desc[mid].*Member <= x)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// The table that owns global bag b (descriptors hold their first bag in `bag0`).
template <typename Desc>
__device__ __forceinline__ int table_of(const Desc* desc, int T, int64_t b) {
  return owner_of<&Desc::bag0>(desc, T, b);
}

// Batched bag kernels run one warp per bag, kWarpsPerBlock warps per block.
constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;

// The bag this warp pools in a launch over bags [first_bag, first_bag + num_bags),
// with its table's descriptor, ids [s, e) and pooling factor (descriptors hold a
// `mean` flag); ok is false past the last bag.
template <typename Desc>
struct WarpBag {
  bool ok;
  int64_t b, s, e;
  const Desc* d;
  float scale;
};

template <typename Desc>
__device__ __forceinline__ WarpBag<Desc> warp_bag(const Desc* desc, int T, int64_t first_bag,
                                                  int64_t num_bags, const int64_t* off) {
  const int64_t b = first_bag + static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (b >= first_bag + num_bags) return {false, b, 0, 0, nullptr, 0.f};
  const Desc* d = &desc[table_of(desc, T, b)];
  const int64_t s = off[b], e = off[b + 1];
  return {true, b, s, e, d, (d->mean && e > s) ? 1.0f / static_cast<float>(e - s) : 1.0f};
}

// Descriptors on the device; `bytes` keeps them alive until the call returns.
template <typename Desc>
struct DeviceDescs {
  at::Tensor bytes;
  const Desc* ptr;
};

template <typename Desc>
DeviceDescs<Desc> to_device(const std::vector<Desc>& host, const at::Device& device) {
  const int64_t n = static_cast<int64_t>(host.size() * sizeof(Desc));
  auto staged = at::empty({n}, at::kByte);
  if (n) std::memcpy(staged.data_ptr<uint8_t>(), host.data(), n);
  auto dev = staged.to(device, /*non_blocking=*/false);
  return {dev, reinterpret_cast<const Desc*>(dev.data_ptr<uint8_t>())};
}

}  // namespace torchrec_ext
