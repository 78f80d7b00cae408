// CPU kernels of the hashed-table ops: parallel over bags in the forward pass
// and over buffer regions in the backward pass (each thread owns whole regions,
// so gradients accumulate without atomics or a [nnz, dim] index tensor).
//
// Speed: a kernel first works out where a window of ids sits in the buffer (the
// hashes, with the layout's divisions done as multiplications, see fast_div.h)
// and prefetches those lines, then does the arithmetic; the random reads of a
// window overlap instead of waiting one after another. The backward pass takes a
// destination and a factor, so one kernel writes a dense gradient (dst = zeros,
// alpha = 1) or applies SGD to the buffer in place (dst = weight, alpha = -lr),
// which spares a gradient the size of the buffer and a pass over all of it. The fused
// training path keeps block mode's positions from the forward pass (one packed word
// per block, see Addresser::pack) so that the backward pass reads them instead of
// hashing every id again. Element mode (fp32) reads and writes each distinct id of a
// range once, since its row is D cache lines apart (see DistinctIds).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <type_traits>
#include <vector>

#include "../check_inputs.h"
#include "../fast_div.h"
#include "../hashed_layout.h"
#include "hashed_addressing.h"
#include "hashed_block.h"
#include "hashed_element.h"

namespace torchrec_ext {
namespace {

using namespace hashed_cpu;

// Bags [b0, b1) of one table (ids off[b0] .. off[b1]); bag b's row is out[b].
template <typename scalar_t>
void forward_range(const scalar_t* w, const Addresser& A, const int64_t* idx, const int64_t* off,
                   const float* psw, int64_t b0, int64_t b1, bool mean, Positions keep,
                   BagRows<scalar_t> out) {
  using acc_t = acc_type<scalar_t>;
  const int64_t D = A.D, Z = A.Z, C = A.C;
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (A.L.mode == 0 && D % 8 == 0) {
      forward_elements(w, A, idx, off, psw, b0, b1, mean, out);
      return;
    }
  }
  std::vector<acc_t> acc(D);
  std::vector<Segment> win;
  int64_t b = b0 - 1, bag_end = off[b0];
  auto finish = [&](int64_t bag) {
    const int64_t n = off[bag + 1] - off[bag];
    const acc_t scale = (mean && n > 0) ? acc_t(1) / static_cast<acc_t>(n) : acc_t(1);
    for (int64_t j = 0; j < D; ++j) out[bag][j] = static_cast<scalar_t>(acc[j] * scale);
    std::fill(acc.begin(), acc.end(), acc_t(0));
  };
  auto enter = [&](int64_t i) {  // id i's weight, after writing the bags the walk passed
    while (i >= bag_end) {       // bags in order; empty ones are written as the walk passes them
      if (b >= b0) finish(b);
      ++b;
      bag_end = off[b + 1];
    }
    return psw ? static_cast<acc_t>(psw[i]) : acc_t(1);
  };
  auto add_segments = [&](int64_t i, const Segment* seg) {
    const acc_t pw = enter(i);
    if (A.L.mode == 0) {
      for (int64_t j = 0; j < D; ++j)
        acc[j] += pw * static_cast<acc_t>(seg[j].sign) * static_cast<acc_t>(w[seg[j].a]);
    } else {
      for (int64_t c = 0; c < C; ++c) {
        const acc_t s = pw * static_cast<acc_t>(seg[c].sign);
        acc_t* a = acc.data() + c * Z;
        if constexpr (std::is_same_v<acc_t, float>) {
          if (chunk_fma(a, s, w, seg[c], Z)) continue;
        }
        const scalar_t* src = w + seg[c].a;
        const int64_t n1 = seg[c].len1;
        for (int64_t t = 0; t < n1; ++t) a[t] += s * static_cast<acc_t>(src[t]);
        src = w + seg[c].b;
        for (int64_t t = n1; t < Z; ++t) a[t] += s * static_cast<acc_t>(src[t - n1]);
      }
    }
  };
  windowed(A, w, idx, off[b0], off[b1], win, Positions{}, keep, add_segments);
  for (; b < b1; ++b) {  // the last non-empty bag and any empty ones after it
    if (b >= b0) finish(b);
  }
}

// dst += alpha * d(out)/d(weight) . grad_output over units [u0, u1) of one table (a
// unit is a (local row region, column region) pair): scans the table's bags
// [b0, b1) and applies the ids that fall in those units. Bag b's gradient row is
// go[b]. The segments come from the positions cache `from` when it holds one.
template <typename scalar_t>
void backward_range(BagRows<const scalar_t> go, const Addresser& A, const int64_t* idx,
                    const int64_t* off, const float* psw, int64_t b0, int64_t b1, bool mean,
                    int64_t u0, int64_t u1, double alpha, Positions from, scalar_t* dst) {
  using acc_t = acc_type<scalar_t>;
  const int64_t D = A.D, Z = A.Z, C = A.C;
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (A.L.mode == 0 && D % 8 == 0) {
      backward_elements(go, A, idx, off, psw, b0, b1, mean, u0, u1, alpha, dst);
      return;
    }
  }
  struct Job {
    Segment seg;
    const scalar_t* g;
    acc_t coef;
  };
  std::vector<Job> jobs;
  jobs.reserve(kWindowSegments + C);
  auto flush = [&] {
    for (const Job& j : jobs) {
      if (A.L.mode == 0) {
        dst[j.seg.a] += static_cast<scalar_t>(j.coef * static_cast<acc_t>(*j.g));
        continue;
      }
      if constexpr (std::is_same_v<acc_t, float>) {
        if (chunk_axpy(dst, j.coef, j.g, j.seg, Z)) continue;
      }
      const scalar_t s = static_cast<scalar_t>(j.coef);
      const int64_t n1 = j.seg.len1;
      scalar_t* d1 = dst + j.seg.a;
      for (int64_t t = 0; t < n1; ++t) d1[t] += s * j.g[t];
      scalar_t* d2 = dst + j.seg.b;
      for (int64_t t = n1; t < Z; ++t) d2[t - n1] += s * j.g[t];
    }
    jobs.clear();
  };
  std::vector<Segment> seg(C);
  ids_in_units(A, idx, off, b0, b1, mean, u0, u1, alpha,
               [&](int64_t b, int64_t i, double scale, int64_t c_lo, int64_t c_hi) {
                 const double pw = scale * (psw ? psw[i] : 1.0);
                 if (from.at) {
                   for (int64_t c = c_lo; c < c_hi; ++c) {
                     if (!A.unpack(from.at[i * from.stride + c], dst, from.numel, &seg[c - c_lo]))
                       *from.bad = true;
                   }
                 } else {
                   A.locate(idx[i], c_lo, c_hi, dst, seg.data());
                 }
                 for (int64_t c = c_lo; c < c_hi; ++c) {
                   const Segment& sc = seg[c - c_lo];
                   if (sc.sign == 0.0) continue;  // a word unpack refused: nothing is written
                   jobs.push_back({sc, go[b] + c * Z, static_cast<acc_t>(pw * sc.sign)});
                 }
                 if (static_cast<int64_t>(jobs.size()) >= kWindowSegments) flush();
               });
  flush();
}

// d(out[b]) / d(psw[i]) = scale * <grad_out[b], virtual row of id i>, bags [b0, b1).
template <typename scalar_t>
void psw_grad_range(BagRows<const scalar_t> go, const scalar_t* w, const Addresser& A,
                    const int64_t* idx, const int64_t* off, int64_t b0, int64_t b1, bool mean,
                    Positions from, float* gpsw) {
  const int64_t D = A.D, Z = A.Z, C = A.C;
  std::vector<Segment> win;
  int64_t b = b0;
  windowed(A, w, idx, off[b0], off[b1], win, from, Positions{}, [&](int64_t i, const Segment* seg) {
    while (i >= off[b + 1]) ++b;
    const int64_t n = off[b + 1] - off[b];
    const double scale = mean ? 1.0 / static_cast<double>(n) : 1.0;
    const scalar_t* g = go[b];
    double dot = 0.0;
    if (A.L.mode == 0) {
      for (int64_t j = 0; j < D; ++j) dot += seg[j].sign * static_cast<double>(w[seg[j].a]) * g[j];
    } else {
      for (int64_t c = 0; c < C; ++c) {
        double part = 0.0;
        const int64_t n1 = seg[c].len1;
        for (int64_t t = 0; t < n1; ++t)
          part += static_cast<double>(w[seg[c].a + t]) * g[c * Z + t];
        for (int64_t t = n1; t < Z; ++t)
          part += static_cast<double>(w[seg[c].b + t - n1]) * g[c * Z + t];
        dot += seg[c].sign * part;
      }
    }
    gpsw[i] = static_cast<float>(dot * scale);
  });
}

std::optional<at::Tensor> float_weights(const std::optional<at::Tensor>& psw) {
  if (!psw) return std::nullopt;
  return psw->contiguous().to(at::kFloat);
}

// One table of a batched call: bags [bag0, bag1) of the shared indices and offsets.
struct Table {
  Addresser A;
  int64_t bag0, bag1;
  bool mean;
  int64_t units;  // (row region, column region) pairs of its buffer
  int64_t numel;  // elements of its buffer
};

// Table t's view of a call's positions cache (checked by hashed_positions_kept):
// block-mode tables only.
Positions positions_of(const Table& T, const std::optional<at::Tensor>& positions, bool kept,
                       std::atomic<bool>* bad) {
  if (!kept || T.A.L.mode != 1) return {};
  return {reinterpret_cast<uint64_t*>(positions->data_ptr<int64_t>()), positions->size(1), T.numel,
          bad};
}

std::vector<Table> tables_of(const at::TensorList weights, const at::Tensor& indices,
                             const at::Tensor& offsets, const std::optional<at::Tensor>& psw,
                             at::IntArrayRef table_bags, at::IntArrayRef poolings,
                             at::IntArrayRef layouts) {
  const auto layout =
      hashed_batch_layouts(weights, indices, offsets, psw, table_bags, poolings, layouts);
  check_offsets_data(offsets, indices.numel(), "hashed bag");
  const int64_t* off = offsets.data_ptr<int64_t>();
  std::vector<Table> tables;
  for (size_t t = 0; t < weights.size(); ++t) {
    const HashedLayout& L = layout[t];
    check_hashed_ids(indices.slice(0, off[table_bags[t]], off[table_bags[t + 1]]), weights[t], L);
    const Addresser A(L, weights[t].size(1));
    tables.push_back({A, table_bags[t], table_bags[t + 1], poolings[t] == 1,
                      (weights[t].size(0) / L.slots) * A.C, weights[t].numel()});
  }
  return tables;
}

// Runs fn(t, lo, hi) over [0, count(t)) of every table, split across the threads
// table by table: all threads work on one table's buffer before moving to the next,
// so the buffers take turns in the cache instead of competing for it (measured: the
// threads on different tables at once ran 20% slower than a loop over tables).
template <typename Count, typename Fn>
void table_by_table(size_t num_tables, Count&& count, int64_t grain, Fn&& fn) {
  const int64_t threads = at::get_num_threads();
  at::parallel_for(0, threads, 1, [&](int64_t k0, int64_t k1) {
    for (size_t t = 0; t < num_tables; ++t) {
      const int64_t n = count(t);
      const int64_t parts =
          std::max<int64_t>(1, std::min(threads, n / std::max<int64_t>(grain, 1)));
      for (int64_t k = k0; k < k1 && k < parts; ++k) {
        const int64_t lo = n * k / parts, hi = n * (k + 1) / parts;
        if (lo < hi) fn(t, lo, hi);
      }
    }
  });
}

// The forward pass; with `keep`, also the positions cache of the call (block-mode
// tables' rows; rows no block table writes are zero, so the result is deterministic).
std::tuple<std::vector<at::Tensor>, at::Tensor> forward_into(
    const at::TensorList weights, const at::Tensor& indices, const at::Tensor& offsets,
    const std::optional<at::Tensor>& per_sample_weights, at::IntArrayRef table_bags,
    at::IntArrayRef poolings, at::IntArrayRef layouts, bool keep) {
  auto idx = indices.contiguous();
  auto off = offsets.contiguous();
  auto psw = float_weights(per_sample_weights);
  const auto tables = tables_of(weights, idx, off, psw, table_bags, poolings, layouts);
  const int64_t* ip = idx.data_ptr<int64_t>();
  const int64_t* op = off.data_ptr<int64_t>();
  std::optional<at::Tensor> positions;
  if (keep) {
    const int64_t cols = hashed_position_columns(weights, layouts);
    // Every row filled: each id belongs to a block table of `cols` blocks per id.
    bool full = tables.empty()
                    ? idx.numel() == 0
                    : op[tables.front().bag0] == 0 && op[tables.back().bag1] == idx.numel();
    for (const Table& T : tables) full = full && T.A.L.mode == 1 && T.A.C == cols;
    const auto opts = idx.options().dtype(at::kLong);
    positions = full ? at::empty({idx.numel(), cols}, opts) : at::zeros({idx.numel(), cols}, opts);
  }
  const bool kept = positions && positions->numel() > 0;
  std::vector<at::Tensor> w, out;
  for (size_t t = 0; t < tables.size(); ++t) {
    w.push_back(weights[t].contiguous());
    out.push_back(at::empty({tables[t].bag1 - tables[t].bag0, tables[t].A.D}, w[t].options()));
  }
  const float* pp = psw ? psw->data_ptr<float>() : nullptr;
  if (!tables.empty()) {
    AT_DISPATCH_FLOATING_TYPES(w[0].scalar_type(), "hashed_bags_forward_cpu", [&] {
      // One parallel region for the bags of every table.
      table_by_table(
          tables.size(), [&](size_t t) { return tables[t].bag1 - tables[t].bag0; }, 64,
          [&](size_t t, int64_t lo, int64_t hi) {
            const Table& T = tables[t];
            forward_range<scalar_t>(w[t].data_ptr<scalar_t>(), T.A, ip, op, pp, T.bag0 + lo,
                                    T.bag0 + hi, T.mean, positions_of(T, positions, kept, nullptr),
                                    BagRows<scalar_t>{out[t].data_ptr<scalar_t>(), T.bag0, T.A.D});
          });
    });
  }
  return {out, positions ? *positions : at::Tensor()};
}

std::vector<at::Tensor> hashed_bags_forward_cpu(const at::TensorList weights,
                                                const at::Tensor& indices,
                                                const at::Tensor& offsets,
                                                const std::optional<at::Tensor>& per_sample_weights,
                                                at::IntArrayRef table_bags,
                                                at::IntArrayRef poolings, at::IntArrayRef layouts) {
  return std::get<0>(forward_into(weights, indices, offsets, per_sample_weights, table_bags,
                                  poolings, layouts, false));
}

std::tuple<std::vector<at::Tensor>, at::Tensor> hashed_bags_forward_keep_cpu(
    const at::TensorList weights, const at::Tensor& indices, const at::Tensor& offsets,
    const std::optional<at::Tensor>& per_sample_weights, at::IntArrayRef table_bags,
    at::IntArrayRef poolings, at::IntArrayRef layouts) {
  return forward_into(weights, indices, offsets, per_sample_weights, table_bags, poolings, layouts,
                      true);
}

// Shared by the two backward ops: psw gradient first (it reads the weights as they
// were in forward), then dst[t] += alpha * weight gradient of table t.
at::Tensor backward_into(const at::TensorList grad_outputs, const at::TensorList weights,
                         const at::Tensor& indices, const at::Tensor& offsets,
                         const std::optional<at::Tensor>& per_sample_weights,
                         at::IntArrayRef table_bags, at::IntArrayRef poolings,
                         at::IntArrayRef layouts, const std::optional<at::Tensor>& positions,
                         bool psw_grad, double alpha, std::vector<at::Tensor>& dst,
                         const char* op) {
  auto idx = indices.contiguous();
  auto off = offsets.contiguous();
  auto psw = float_weights(per_sample_weights);
  const auto tables = tables_of(weights, idx, off, psw, table_bags, poolings, layouts);
  const bool kept = hashed_positions_kept(positions, weights, idx, layouts, op);
  std::atomic<bool> bad{false};
  const auto go = hashed_batch_grads(grad_outputs, weights, table_bags, op);
  auto gpsw = psw_grad ? at::zeros({indices.numel()}, offsets.options().dtype(at::kFloat))
                       : at::empty({0}, offsets.options().dtype(at::kFloat));
  if (tables.empty()) return gpsw;
  const int64_t* ip = idx.data_ptr<int64_t>();
  const int64_t* offp = off.data_ptr<int64_t>();
  const float* pp = psw ? psw->data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(weights[0].scalar_type(), "hashed_bags_backward_cpu", [&] {
    auto grad_of = [&](size_t t) {
      return BagRows<const scalar_t>{go[t].data_ptr<scalar_t>(), tables[t].bag0, tables[t].A.D};
    };
    if (psw_grad) {
      std::vector<at::Tensor> w;
      for (const auto& x : weights) w.push_back(x.contiguous());
      table_by_table(
          tables.size(), [&](size_t t) { return tables[t].bag1 - tables[t].bag0; }, 64,
          [&](size_t t, int64_t lo, int64_t hi) {
            const Table& T = tables[t];
            psw_grad_range<scalar_t>(
                grad_of(t), w[t].data_ptr<scalar_t>(), T.A, ip, offp, T.bag0 + lo, T.bag0 + hi,
                T.mean, positions_of(T, positions, kept, &bad), gpsw.data_ptr<float>());
          });
    }
    // One parallel region for the units of every table; a thread owns its units.
    table_by_table(
        tables.size(), [&](size_t t) { return tables[t].units; }, 1,
        [&](size_t t, int64_t lo, int64_t hi) {
          const Table& T = tables[t];
          backward_range<scalar_t>(grad_of(t), T.A, ip, offp, pp, T.bag0, T.bag1, T.mean, lo, hi,
                                   alpha, positions_of(T, positions, kept, &bad),
                                   dst[t].data_ptr<scalar_t>());
        });
  });
  TORCH_CHECK(
      !bad, op,
      ": positions hold blocks outside the buffers; they must come from "
      "hashed_bags_forward_keep of the same ids and tables (the blocks inside were applied)");
  return gpsw;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> hashed_bags_backward_cpu(
    const at::TensorList grad_outputs, const at::TensorList weights, const at::Tensor& indices,
    const at::Tensor& offsets, const std::optional<at::Tensor>& per_sample_weights,
    at::IntArrayRef table_bags, at::IntArrayRef poolings, at::IntArrayRef layouts, bool psw_grad,
    const std::optional<at::Tensor>& positions) {
  std::vector<at::Tensor> gw;
  for (const auto& w : weights) gw.push_back(at::zeros(w.sizes(), w.options()));
  auto gpsw =
      backward_into(grad_outputs, weights, indices, offsets, per_sample_weights, table_bags,
                    poolings, layouts, positions, psw_grad, 1.0, gw, "hashed_bags_backward");
  return {gw, gpsw};
}

at::Tensor hashed_bags_sgd_cpu(at::TensorList weights, const at::TensorList grad_outputs,
                               const at::Tensor& indices, const at::Tensor& offsets,
                               const std::optional<at::Tensor>& per_sample_weights,
                               at::IntArrayRef table_bags, at::IntArrayRef poolings,
                               at::IntArrayRef layouts, double lr, bool psw_grad,
                               const std::optional<at::Tensor>& positions) {
  std::vector<at::Tensor> dst = hashed_batch_in_place(weights, "hashed_bags_sgd_");
  return backward_into(grad_outputs, weights, indices, offsets, per_sample_weights, table_bags,
                       poolings, layouts, positions, psw_grad, -lr, dst, "hashed_bags_sgd_");
}

}  // namespace

TORCH_LIBRARY_IMPL(torchrec_ext, CPU, m) {
  m.impl("hashed_bags_forward", &hashed_bags_forward_cpu);
  m.impl("hashed_bags_forward_keep", &hashed_bags_forward_keep_cpu);
  m.impl("hashed_bags_backward", &hashed_bags_backward_cpu);
  m.impl("hashed_bags_sgd_", &hashed_bags_sgd_cpu);
}

}  // namespace torchrec_ext
