// CUDA kernels of the hash-index ops (same schema as cpu/hash_index.cpp): a
// lock-free open-addressing table in the style of cuCollections' static_map.
// One thread per key probes linearly; an empty slot is claimed with atomicCAS on
// its row word (empty -> busy), the key is written, and the row (from the pool,
// by an atomic counter) is published after a fence. Every int64 is a valid key,
// because slot states live in the row word. Readers that meet a busy slot spin
// until its row appears (independent thread scheduling, sm_70+).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../dynamic_check.h"
#include "../dynamic_table.h"
#include "table_batch.cuh"

namespace torchrec_ext {
namespace {

using ull = unsigned long long;
constexpr int kThreads = 256;

__device__ __forceinline__ int64_t load_row(int64_t* p) {
  return static_cast<int64_t>(atomicAdd(reinterpret_cast<ull*>(p), 0ULL));
}

__device__ __forceinline__ int64_t wait_published(int64_t* p) {
  int64_t r = load_row(p);
  while (r == kSlotBusy) {
    __nanosleep(32);
    r = load_row(p);
  }
  return r;
}

__device__ int64_t find_row(const int64_t* sk, int64_t* sr, int64_t mask, int64_t key) {
  int64_t i = static_cast<int64_t>(key_hash(key)) & mask;
  for (int64_t probes = 0; probes <= mask; ++probes, i = (i + 1) & mask) {
    const int64_t r = wait_published(sr + i);
    if (r == kSlotEmpty) return -1;
    if (r >= 0 && reinterpret_cast<const volatile int64_t*>(sk)[i] == key) return r;
  }
  return -1;
}

__device__ int64_t insert_key(int64_t* sk, int64_t* sr, int64_t mask, int64_t key,
                              const int64_t* pool, int64_t pool_size, int64_t* pool_used,
                              bool* inserted) {
  int64_t i = static_cast<int64_t>(key_hash(key)) & mask;
  for (int64_t probes = 0; probes <= mask;) {
    int64_t r = load_row(sr + i);
    if (r == kSlotEmpty) {
      const ull old = atomicCAS(reinterpret_cast<ull*>(sr + i), static_cast<ull>(kSlotEmpty),
                                static_cast<ull>(kSlotBusy));
      if (static_cast<int64_t>(old) == kSlotEmpty) {
        reinterpret_cast<volatile int64_t*>(sk)[i] = key;
        const int64_t p = static_cast<int64_t>(atomicAdd(reinterpret_cast<ull*>(pool_used), 1ULL));
        const int64_t row = p >= 0 && p < pool_size ? pool[p] : kSlotErased;
        __threadfence();
        atomicExch(reinterpret_cast<ull*>(sr + i), static_cast<ull>(row));
        *inserted = row >= 0;
        return row;
      }
      continue;  // lost the race for this slot: look at it again
    }
    r = wait_published(sr + i);
    if (r >= 0 && reinterpret_cast<volatile int64_t*>(sk)[i] == key) return r;
    i = (i + 1) & mask;
    ++probes;
  }
  return -1;
}

__global__ void find_kernel(const int64_t* sk, int64_t* sr, int64_t mask, const int64_t* keys,
                            int64_t n, int64_t* out) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < n) out[t] = find_row(sk, sr, mask, keys[t]);
}

// One table of a batched lookup.
struct LookupDesc {
  const int64_t* sk;
  int64_t* sr;
  int64_t mask;
  int64_t key0;   // its first key in the call's keys
  int64_t* seen;  // stamps (null: read only)
  int64_t* count;
  int64_t meta_rows;  // length of seen / count
  int64_t step;
};

__global__ void lookup_kernel(const LookupDesc* __restrict__ desc, int T, const int64_t* keys,
                              int64_t n, int64_t* out, int* bad) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= n) return;
  const LookupDesc& d = desc[owner_of<&LookupDesc::key0>(desc, T, k)];
  const int64_t row = find_row(d.sk, d.sr, d.mask, keys[k]);
  out[k] = row;
  if (d.seen == nullptr || row < 0) return;
  if (row >= d.meta_rows) {
    atomicExch(bad, 1);
    return;
  }
  d.seen[row] = d.step;  // every writer stores the same step
  atomicAdd(reinterpret_cast<ull*>(d.count + row), 1ULL);
}

__global__ void insert_kernel(int64_t* sk, int64_t* sr, int64_t mask, const int64_t* keys,
                              int64_t n, const int64_t* pool, int64_t pool_size, int64_t* pool_used,
                              int64_t* rows, bool* inserted, int* full) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n) return;
  rows[t] = insert_key(sk, sr, mask, keys[t], pool, pool_size, pool_used, inserted + t);
  if (rows[t] < 0) atomicExch(full, 1);
}

__global__ void erase_kernel(const int64_t* sk, int64_t* sr, int64_t mask, const int64_t* keys,
                             int64_t n, int64_t* out) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n) return;
  out[t] = -1;
  const int64_t key = keys[t];
  int64_t i = static_cast<int64_t>(key_hash(key)) & mask;
  for (int64_t probes = 0; probes <= mask; ++probes, i = (i + 1) & mask) {
    const int64_t r = wait_published(sr + i);
    if (r == kSlotEmpty) return;
    if (r >= 0 && reinterpret_cast<const volatile int64_t*>(sk)[i] == key) {
      const ull old = atomicCAS(reinterpret_cast<ull*>(sr + i), static_cast<ull>(r),
                                static_cast<ull>(kSlotErased));
      if (static_cast<int64_t>(old) == r) out[t] = r;  // else a repeat of this key won
      return;
    }
  }
}

__global__ void rehash_kernel(const int64_t* keys, const int64_t* rows, int64_t n, int64_t* sk,
                              int64_t* sr, int64_t mask) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= n) return;
  int64_t used = 0;
  bool ins = false;
  insert_key(sk, sr, mask, keys[t], rows + t, 1, &used, &ins);
}

__global__ void key_hash_kernel(const int64_t* keys, int64_t n, int64_t* out) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t < n) out[t] = static_cast<int64_t>(key_hash(keys[t]) >> 1);
}

inline unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>((n + kThreads - 1) / kThreads);
}

at::Tensor hash_index_find_cuda(const at::Tensor& slot_keys, const at::Tensor& slot_rows,
                                const at::Tensor& keys_in) {
  check_index_op(slot_keys, slot_rows, keys_in, "hash_index_find");
  c10::cuda::CUDAGuard guard(slot_keys.device());
  const at::Tensor keys = keys_in.contiguous();
  at::Tensor out = at::empty_like(keys);
  if (keys.numel() == 0) return out;
  find_kernel<<<blocks_for(keys.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      slot_keys.data_ptr<int64_t>(), slot_rows.data_ptr<int64_t>(), slot_keys.numel() - 1,
      keys.data_ptr<int64_t>(), keys.numel(), out.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor hash_index_lookup_cuda(at::TensorList slot_keys, at::TensorList slot_rows,
                                  const at::Tensor& keys_in, at::IntArrayRef key_ends,
                                  at::TensorList last_seen, at::TensorList counts,
                                  at::IntArrayRef steps) {
  check_lookup_op(slot_keys, slot_rows, keys_in, key_ends, last_seen, counts, steps);
  c10::cuda::CUDAGuard guard(keys_in.device());
  const at::Tensor keys = keys_in.contiguous();
  at::Tensor out = at::empty_like(keys);
  const size_t T = slot_keys.size();
  if (T == 0 || keys.numel() == 0) return out;
  const bool stamp = !steps.empty();
  std::vector<LookupDesc> d(T);
  for (size_t t = 0; t < T; ++t) {
    d[t] = LookupDesc{slot_keys[t].data_ptr<int64_t>(),
                      slot_rows[t].data_ptr<int64_t>(),
                      slot_keys[t].numel() - 1,
                      key_ends[t],
                      stamp ? last_seen[t].data_ptr<int64_t>() : nullptr,
                      stamp ? counts[t].data_ptr<int64_t>() : nullptr,
                      stamp ? std::min(last_seen[t].numel(), counts[t].numel()) : 0,
                      stamp ? steps[t] : 0};
  }
  auto dev = to_device(d, keys.device());
  at::Tensor bad = at::zeros({1}, keys.options().dtype(at::kInt));
  lookup_kernel<<<blocks_for(keys.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      dev.ptr, static_cast<int>(T), keys.data_ptr<int64_t>(), keys.numel(), out.data_ptr<int64_t>(),
      bad.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (stamp) {  // a sync only when stamping, where the caller syncs on the rows anyway
    TORCH_CHECK(bad.item<int>() == 0,
                "hash_index_lookup_: a row lies beyond its table's last_seen/counts");
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> hash_index_insert_cuda(const at::Tensor& slot_keys,
                                                          const at::Tensor& slot_rows,
                                                          const at::Tensor& keys_in,
                                                          const at::Tensor& pool_in,
                                                          const at::Tensor& pool_used) {
  check_insert_op(slot_keys, slot_rows, keys_in, pool_in, pool_used);
  c10::cuda::CUDAGuard guard(slot_keys.device());
  const at::Tensor keys = keys_in.contiguous();
  const at::Tensor pool = pool_in.contiguous();
  at::Tensor rows = at::empty_like(keys);
  at::Tensor inserted = at::zeros(keys.sizes(), keys.options().dtype(at::kBool));
  if (keys.numel() == 0) return {rows, inserted};
  at::Tensor full = at::zeros({1}, keys.options().dtype(at::kInt));
  insert_kernel<<<blocks_for(keys.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      slot_keys.data_ptr<int64_t>(), slot_rows.data_ptr<int64_t>(), slot_keys.numel() - 1,
      keys.data_ptr<int64_t>(), keys.numel(), pool.data_ptr<int64_t>(), pool.numel(),
      pool_used.data_ptr<int64_t>(), rows.data_ptr<int64_t>(), inserted.data_ptr<bool>(),
      full.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  TORCH_CHECK(full.item<int>() == 0,
              "hash_index_insert_: index or row pool exhausted (caller must grow it)");
  return {rows, inserted};
}

at::Tensor hash_index_erase_cuda(const at::Tensor& slot_keys, const at::Tensor& slot_rows,
                                 const at::Tensor& keys_in) {
  check_index_op(slot_keys, slot_rows, keys_in, "hash_index_erase_");
  c10::cuda::CUDAGuard guard(slot_keys.device());
  const at::Tensor keys = keys_in.contiguous();
  at::Tensor out = at::empty_like(keys);
  if (keys.numel() == 0) return out;
  erase_kernel<<<blocks_for(keys.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      slot_keys.data_ptr<int64_t>(), slot_rows.data_ptr<int64_t>(), slot_keys.numel() - 1,
      keys.data_ptr<int64_t>(), keys.numel(), out.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

std::tuple<at::Tensor, at::Tensor> hash_index_rehash_cuda(const at::Tensor& slot_keys,
                                                          const at::Tensor& slot_rows,
                                                          int64_t capacity) {
  check_index(slot_keys, slot_rows, "hash_index_rehash");
  TORCH_CHECK(capacity > 0 && (capacity & (capacity - 1)) == 0,
              "hash_index_rehash: capacity must be a power of two");
  c10::cuda::CUDAGuard guard(slot_keys.device());
  const at::Tensor live = slot_rows.ge(0);
  const at::Tensor keys = slot_keys.masked_select(live);
  const at::Tensor rows = slot_rows.masked_select(live);
  TORCH_CHECK(keys.numel() <= capacity / 2, "hash_index_rehash: capacity too small");
  at::Tensor nk = at::zeros({capacity}, slot_keys.options());
  at::Tensor nr = at::full({capacity}, kSlotEmpty, slot_rows.options());
  if (keys.numel() > 0) {
    rehash_kernel<<<blocks_for(keys.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        keys.data_ptr<int64_t>(), rows.data_ptr<int64_t>(), keys.numel(), nk.data_ptr<int64_t>(),
        nr.data_ptr<int64_t>(), capacity - 1);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return {nk, nr};
}

at::Tensor dynamic_key_hash_cuda(const at::Tensor& keys_in) {
  TORCH_CHECK(keys_in.dim() == 1 && keys_in.scalar_type() == at::kLong,
              "dynamic_key_hash: keys must be a 1-D int64 tensor");
  c10::cuda::CUDAGuard guard(keys_in.device());
  const at::Tensor keys = keys_in.contiguous();
  at::Tensor out = at::empty_like(keys);
  if (keys.numel() == 0) return out;
  key_hash_kernel<<<blocks_for(keys.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      keys.data_ptr<int64_t>(), keys.numel(), out.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(torchrec_ext, CUDA, m) {
  m.impl("hash_index_find", &hash_index_find_cuda);
  m.impl("hash_index_lookup_", &hash_index_lookup_cuda);
  m.impl("hash_index_insert_", &hash_index_insert_cuda);
  m.impl("hash_index_erase_", &hash_index_erase_cuda);
  m.impl("hash_index_rehash", &hash_index_rehash_cuda);
  m.impl("dynamic_key_hash", &dynamic_key_hash_cuda);
}

}  // namespace torchrec_ext
