// CPU kernels of the hash-index ops. Batch operations run in parallel over keys;
// slots are claimed with a compare-and-swap on slot_rows (empty -> busy), the
// key is written, then the row is published with a release store, so parallel
// inserts of one key (within a batch, or from threads the caller lets in) give
// exactly one row. Readers that meet a busy slot wait for its row.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "../dynamic_check.h"
#include "../dynamic_table.h"
#include "prefetch.h"

namespace torchrec_ext {
namespace {

using Ref = std::atomic_ref<int64_t>;

inline int64_t wait_published(int64_t* slot_row) {
  int64_t r = Ref(*slot_row).load(std::memory_order_acquire);
  while (r == kSlotBusy) {
    std::this_thread::yield();
    r = Ref(*slot_row).load(std::memory_order_acquire);
  }
  return r;
}

// Keys ahead of the one being probed whose home slots are prefetched: a probe's two
// random lines (key and row) then overlap with the probes before it.
constexpr int64_t kPrefetchAhead = 16;

inline void prefetch_slot(const int64_t* sk, const int64_t* sr, int64_t mask, int64_t key) {
  const int64_t i = static_cast<int64_t>(key_hash(key)) & mask;
  prefetch_l2(sk + i);
  prefetch_l2(sr + i);
}

// Slot holding `key`, or -1.
inline int64_t find_slot(const int64_t* sk, int64_t* sr, int64_t mask, int64_t key) {
  int64_t i = static_cast<int64_t>(key_hash(key)) & mask;
  for (int64_t probes = 0; probes <= mask; ++probes, i = (i + 1) & mask) {
    const int64_t r = wait_published(sr + i);
    if (r == kSlotEmpty) return -1;
    if (r >= 0 && sk[i] == key) return i;
  }
  return -1;
}

// Row of `key`, inserting it with a row from the pool when absent. Returns -1
// only if the index is full (the caller keeps it at most half full).
inline int64_t insert_key(int64_t* sk, int64_t* sr, int64_t mask, int64_t key, const int64_t* pool,
                          int64_t pool_size, int64_t* pool_used, bool* inserted) {
  int64_t i = static_cast<int64_t>(key_hash(key)) & mask;
  for (int64_t probes = 0; probes <= mask;) {
    int64_t r = Ref(sr[i]).load(std::memory_order_acquire);
    if (r == kSlotEmpty) {
      int64_t expected = kSlotEmpty;
      if (Ref(sr[i]).compare_exchange_strong(expected, kSlotBusy, std::memory_order_acq_rel)) {
        sk[i] = key;
        const int64_t p = Ref(*pool_used).fetch_add(1, std::memory_order_relaxed);
        // a pool too small (or a counter already outside it): drop the slot
        const int64_t row = p >= 0 && p < pool_size ? pool[p] : kSlotErased;
        Ref(sr[i]).store(row, std::memory_order_release);
        *inserted = row >= 0;
        return row;
      }
      continue;  // lost the race for this slot: look at it again
    }
    r = wait_published(sr + i);
    if (r >= 0 && sk[i] == key) return r;
    i = (i + 1) & mask;
    ++probes;
  }
  return -1;
}

// One value per key from its slot (-1 when the key is absent): fn(slot row cell) -> value.
// The shared walk of find and erase.
template <typename Fn>
at::Tensor per_key_slot(const at::Tensor& slot_keys, const at::Tensor& slot_rows,
                        const at::Tensor& keys_in, const char* op, Fn&& fn) {
  check_index_op(slot_keys, slot_rows, keys_in, op);
  const at::Tensor keys = keys_in.contiguous();
  at::Tensor out = at::empty_like(keys);
  const int64_t* sk = slot_keys.data_ptr<int64_t>();
  int64_t* sr = slot_rows.data_ptr<int64_t>();
  const int64_t mask = slot_keys.numel() - 1;
  const int64_t* k = keys.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  at::parallel_for(0, keys.numel(), 1024, [&](int64_t a, int64_t b) {
    for (int64_t n = a; n < b; ++n) {
      if (n + kPrefetchAhead < b) prefetch_slot(sk, sr, mask, k[n + kPrefetchAhead]);
      const int64_t s = find_slot(sk, sr, mask, k[n]);
      o[n] = s < 0 ? -1 : fn(sr[s]);
    }
  });
  return out;
}

at::Tensor hash_index_find_cpu(const at::Tensor& slot_keys, const at::Tensor& slot_rows,
                               const at::Tensor& keys) {
  return per_key_slot(slot_keys, slot_rows, keys, "hash_index_find",
                      [](int64_t& cell) { return Ref(cell).load(std::memory_order_acquire); });
}

// find over many tables; every key found may stamp its row (see ops.cpp).
at::Tensor hash_index_lookup_cpu(at::TensorList slot_keys, at::TensorList slot_rows,
                                 const at::Tensor& keys_in, at::IntArrayRef key_ends,
                                 at::TensorList last_seen, at::TensorList counts,
                                 at::IntArrayRef steps) {
  check_lookup_op(slot_keys, slot_rows, keys_in, key_ends, last_seen, counts, steps);
  const at::Tensor keys = keys_in.contiguous();
  at::Tensor out = at::empty_like(keys);
  const size_t T = slot_keys.size();
  if (T == 0) return out;
  const int64_t* k = keys.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  const bool stamp = !steps.empty();
  // Per table: index arrays, probe mask, stamp arrays and their length.
  std::vector<const int64_t*> sk(T);
  std::vector<int64_t*> sr(T), seen(T), cnt(T);
  std::vector<int64_t> mask(T), meta_rows(T, 0);
  for (size_t t = 0; t < T; ++t) {
    sk[t] = slot_keys[t].data_ptr<int64_t>();
    sr[t] = slot_rows[t].data_ptr<int64_t>();
    mask[t] = slot_keys[t].numel() - 1;
    if (stamp) {
      seen[t] = last_seen[t].data_ptr<int64_t>();
      cnt[t] = counts[t].data_ptr<int64_t>();
      meta_rows[t] = std::min(last_seen[t].numel(), counts[t].numel());
    }
  }
  std::atomic<bool> bad{false};
  at::parallel_for(0, keys.numel(), 1024, [&](int64_t a, int64_t b) {
    size_t t = std::upper_bound(key_ends.begin(), key_ends.end(), a) - key_ends.begin() - 1;
    size_t tp = t;  // the table of key n + kPrefetchAhead
    for (int64_t n = a; n < b; ++n) {
      while (key_ends[t + 1] <= n) ++t;
      if (n + kPrefetchAhead < b) {
        while (key_ends[tp + 1] <= n + kPrefetchAhead) ++tp;
        prefetch_slot(sk[tp], sr[tp], mask[tp], k[n + kPrefetchAhead]);
      }
      const int64_t s = find_slot(sk[t], sr[t], mask[t], k[n]);
      const int64_t row = s < 0 ? -1 : Ref(sr[t][s]).load(std::memory_order_acquire);
      o[n] = row;
      if (!stamp || row < 0) continue;
      if (row >= meta_rows[t]) {
        bad.store(true, std::memory_order_relaxed);  // metadata shorter than the rows
        continue;
      }
      Ref(seen[t][row]).store(steps[t], std::memory_order_relaxed);
      Ref(cnt[t][row]).fetch_add(1, std::memory_order_relaxed);
    }
  });
  TORCH_CHECK(!bad.load(), "hash_index_lookup_: a row lies beyond its table's last_seen/counts");
  return out;
}

std::tuple<at::Tensor, at::Tensor> hash_index_insert_cpu(const at::Tensor& slot_keys,
                                                         const at::Tensor& slot_rows,
                                                         const at::Tensor& keys_in,
                                                         const at::Tensor& pool_in,
                                                         const at::Tensor& pool_used) {
  check_insert_op(slot_keys, slot_rows, keys_in, pool_in, pool_used);
  const at::Tensor keys = keys_in.contiguous();
  const at::Tensor pool = pool_in.contiguous();
  at::Tensor rows = at::empty_like(keys);
  at::Tensor inserted = at::zeros(keys.sizes(), keys.options().dtype(at::kBool));
  int64_t* sk = slot_keys.data_ptr<int64_t>();
  int64_t* sr = slot_rows.data_ptr<int64_t>();
  const int64_t mask = slot_keys.numel() - 1;
  const int64_t* k = keys.data_ptr<int64_t>();
  const int64_t* pl = pool.data_ptr<int64_t>();
  int64_t* used = pool_used.data_ptr<int64_t>();
  int64_t* r = rows.data_ptr<int64_t>();
  bool* ins = inserted.data_ptr<bool>();
  std::atomic<bool> full{false};
  at::parallel_for(0, keys.numel(), 256, [&](int64_t a, int64_t b) {
    for (int64_t n = a; n < b; ++n) {
      if (n + kPrefetchAhead < b) prefetch_slot(sk, sr, mask, k[n + kPrefetchAhead]);
      r[n] = insert_key(sk, sr, mask, k[n], pl, pool.numel(), used, ins + n);
      if (r[n] < 0) full.store(true);
    }
  });
  TORCH_CHECK(!full.load(),
              "hash_index_insert_: index or row pool exhausted (caller must grow it)");
  return {rows, inserted};
}

// Erases keys; returns each key's freed row, or -1 (absent, or a repeat).
at::Tensor hash_index_erase_cpu(const at::Tensor& slot_keys, const at::Tensor& slot_rows,
                                const at::Tensor& keys) {
  return per_key_slot(slot_keys, slot_rows, keys, "hash_index_erase_", [](int64_t& cell) {
    int64_t row = Ref(cell).load(std::memory_order_acquire);
    while (row >= 0 &&
           !Ref(cell).compare_exchange_weak(row, kSlotErased, std::memory_order_acq_rel)) {
    }
    return row >= 0 ? row : int64_t(-1);
  });
}

// A fresh index of `capacity` slots holding the live (key, row) pairs; the
// tombstones are dropped. Rows (and so the embedding values) do not move.
std::tuple<at::Tensor, at::Tensor> hash_index_rehash_cpu(const at::Tensor& slot_keys,
                                                         const at::Tensor& slot_rows,
                                                         int64_t capacity) {
  check_index(slot_keys, slot_rows, "hash_index_rehash");
  TORCH_CHECK(capacity > 0 && (capacity & (capacity - 1)) == 0,
              "hash_index_rehash: capacity must be a power of two");
  const at::Tensor live = slot_rows.ge(0);
  const at::Tensor keys = slot_keys.masked_select(live);
  const at::Tensor rows = slot_rows.masked_select(live);
  TORCH_CHECK(keys.numel() <= capacity / 2, "hash_index_rehash: capacity too small");
  at::Tensor nk = at::zeros({capacity}, slot_keys.options());
  at::Tensor nr = at::full({capacity}, kSlotEmpty, slot_rows.options());
  at::Tensor used = at::zeros({1}, slot_rows.options());
  // Each live key is distinct, so inserting key n with a one-row pool {rows[n]} places it.
  int64_t* sk = nk.data_ptr<int64_t>();
  int64_t* sr = nr.data_ptr<int64_t>();
  const int64_t* k = keys.data_ptr<int64_t>();
  const int64_t* r = rows.data_ptr<int64_t>();
  const int64_t mask = capacity - 1;
  at::parallel_for(0, keys.numel(), 1024, [&](int64_t a, int64_t b) {
    for (int64_t n = a; n < b; ++n) {
      int64_t zero = 0;
      bool ins = false;
      insert_key(sk, sr, mask, k[n], r + n, 1, &zero, &ins);
    }
  });
  return {nk, nr};
}

at::Tensor dynamic_key_hash_cpu(const at::Tensor& keys_in) {
  TORCH_CHECK(keys_in.dim() == 1 && keys_in.scalar_type() == at::kLong,
              "dynamic_key_hash: keys must be a 1-D int64 tensor");
  const at::Tensor keys = keys_in.contiguous();
  at::Tensor out = at::empty_like(keys);
  const int64_t* k = keys.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  at::parallel_for(0, keys.numel(), 4096, [&](int64_t a, int64_t b) {
    for (int64_t n = a; n < b; ++n) o[n] = static_cast<int64_t>(key_hash(k[n]) >> 1);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(torchrec_ext, CPU, m) {
  m.impl("hash_index_find", &hash_index_find_cpu);
  m.impl("hash_index_lookup_", &hash_index_lookup_cpu);
  m.impl("hash_index_insert_", &hash_index_insert_cpu);
  m.impl("hash_index_erase_", &hash_index_erase_cpu);
  m.impl("hash_index_rehash", &hash_index_rehash_cpu);
  m.impl("dynamic_key_hash", &dynamic_key_hash_cpu);
}

}  // namespace torchrec_ext
