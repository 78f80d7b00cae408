// CPU kernels of the QR / compositional table ops. The ops are batched (one call
// serves many tables, each with its bags of the shared offsets); a table's forward
// pass is parallel over its bags and composes each id's vector in a per-thread
// buffer (never a [nnz, dim] tensor). The backward pass produces, per partition
// piece, the rows the batch touched and their gradients: positions are grouped by
// row (a CSR over the unique rows), so each thread owns whole rows and sums
// without atomics.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <limits>
#include <vector>

#include "../check_inputs.h"
#include "../qr_check.h"

namespace torchrec_ext {
namespace {

// rows[p * nnz + i]: shard-local row of partition p for id i. Throws on ids that
// fall outside the shard, before any kernel touches memory.
at::Tensor partition_rows(const QRLayout& L, const at::Tensor& idx) {
  const int64_t n = idx.numel();
  auto rows = at::empty({L.k, n}, idx.options());
  const int64_t* id = idx.data_ptr<int64_t>();
  int64_t* r = rows.data_ptr<int64_t>();
  // The position of a bad id, not the id: every int64 (INT64_MIN too) can be a bad id.
  std::atomic<int64_t> bad{-1};
  at::parallel_for(0, n, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      bool ok = id[i] >= 0 && id[i] <= std::numeric_limits<int64_t>::max() - L.id_offset;
      for (int64_t p = 0; p < L.k; ++p) {
        const int64_t row = ok ? L.row(p, id[i]) : -1;
        ok = ok && L.in_range(p, row);
        r[p * n + i] = row;
      }
      if (!ok) bad.store(i);
    }
  });
  TORCH_CHECK(bad.load() < 0, "qr bag: id ", bad.load() < 0 ? 0 : id[bad.load()],
              " (shard-local) falls outside this shard's partition tables");
  return rows;
}

// Positions grouped by row: (sorted unique rows, positions in row order, CSR starts).
// A counting sort when the table is not much larger than the batch (QR tables are
// small), a comparison sort otherwise.
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_by_row(const at::Tensor& rows,
                                                            int64_t num_rows) {
  const int64_t n = rows.numel();
  auto opts = rows.options();
  if (num_rows > 8 * n + 1024) {
    auto [uniq, inverse, counts] = at::_unique2(rows, /*sorted=*/true, /*return_inverse=*/true,
                                                /*return_counts=*/true);
    auto starts = at::zeros({uniq.numel() + 1}, opts);
    if (uniq.numel()) starts.narrow(0, 1, uniq.numel()).copy_(counts.cumsum(0));
    return {uniq, at::argsort(inverse, /*stable=*/true), starts};
  }
  const int64_t* r = rows.data_ptr<int64_t>();
  std::vector<int64_t> cursor(num_rows + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++cursor[r[i] + 1];
  int64_t touched = 0;
  for (int64_t row = 0; row < num_rows; ++row) touched += cursor[row + 1] > 0;
  auto uniq = at::empty({touched}, opts);
  auto starts = at::empty({touched + 1}, opts);
  int64_t* u = uniq.data_ptr<int64_t>();
  int64_t* st = starts.data_ptr<int64_t>();
  int64_t k = 0;
  st[0] = 0;
  for (int64_t row = 0; row < num_rows; ++row) {
    const int64_t c = cursor[row + 1];
    cursor[row + 1] = cursor[row] + c;  // prefix sum: cursor[row] = first slot of row
    if (c > 0) {
      u[k] = row;
      st[k + 1] = st[k] + c;
      ++k;
    }
  }
  auto order = at::empty({n}, opts);
  int64_t* o = order.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i) o[cursor[r[i]]++] = i;  // stable
  return {uniq, order, starts};
}

// Cheap check that every id maps inside the shard's pieces, from the id range alone:
// quotient rows grow with the id; a modulo row is at most min(id, mod - 1). Falls back
// to the exact per-id check (for its message) when the bound does not prove it.
void check_ids_in_shard(const QRLayout& L, const at::Tensor& idx) {
  if (idx.numel() == 0) return;
  auto mm = at::aminmax(idx);
  const int64_t lo = std::get<0>(mm).item<int64_t>(), hi = std::get<1>(mm).item<int64_t>();
  bool ok = lo >= 0 && hi <= std::numeric_limits<int64_t>::max() - L.id_offset;
  for (int64_t p = 0; ok && p < L.k; ++p) {
    if (L.mod[p] == 0) {
      ok = L.in_range(p, L.row(p, lo)) && L.in_range(p, L.row(p, hi));
    } else {
      const int64_t top = std::min((hi + L.id_offset) / L.div[p], L.mod[p] - 1);
      ok = L.row_start[p] == 0 && top < L.rows[p];
    }
  }
  if (!ok) partition_rows(L, idx);  // throws with the offending id
}

// The composed vector (mult/add) of the partition rows wr[0..k) into tmp[0, D).
template <typename scalar_t, typename acc_t>
inline void compose(const QRLayout& L, const scalar_t* const* wr, int64_t D, acc_t* tmp) {
  for (int64_t j = 0; j < D; ++j) tmp[j] = static_cast<acc_t>(wr[0][j]);
  for (int64_t p = 1; p < L.k; ++p) {
    if (L.op == kMult) {
      for (int64_t j = 0; j < D; ++j) tmp[j] *= static_cast<acc_t>(wr[p][j]);
    } else {
      for (int64_t j = 0; j < D; ++j) tmp[j] += static_cast<acc_t>(wr[p][j]);
    }
  }
}

// Rows are computed per id here (ids were checked against the shard before).
template <typename scalar_t>
void forward_kernel(const QRLayout& L, const scalar_t* const* W, const int64_t* idx,
                    const int64_t* off, const float* psw, int64_t num_bags, bool mean,
                    scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = L.out_dim;
  at::parallel_for(0, num_bags, 16, [&](int64_t b0, int64_t b1) {
    std::vector<acc_t> acc(D), tmp(D);
    const scalar_t* wr[kMaxPartitions];
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const int64_t s = off[b], e = off[b + 1];
      for (int64_t i = s; i < e; ++i) {
        const acc_t pw = psw ? static_cast<acc_t>(psw[i]) : acc_t(1);
        for (int64_t p = 0; p < L.k; ++p) wr[p] = W[p] + L.row(p, idx[i]) * L.cols[p];
        if (L.op == kConcat) {
          for (int64_t p = 0; p < L.k; ++p) {
            acc_t* a = acc.data() + L.out_col[p];
            for (int64_t j = 0; j < L.cols[p]; ++j) a[j] += pw * static_cast<acc_t>(wr[p][j]);
          }
        } else if (L.k == 2) {  // the common case, in one pass
          const scalar_t *w0 = wr[0], *w1 = wr[1];
          if (L.op == kMult) {
            for (int64_t j = 0; j < D; ++j)
              acc[j] += pw * static_cast<acc_t>(w0[j]) * static_cast<acc_t>(w1[j]);
          } else {
            for (int64_t j = 0; j < D; ++j)
              acc[j] += pw * (static_cast<acc_t>(w0[j]) + static_cast<acc_t>(w1[j]));
          }
        } else {
          compose(L, wr, D, tmp.data());
          for (int64_t j = 0; j < D; ++j) acc[j] += pw * tmp[j];
        }
      }
      const acc_t scale = (mean && e > s) ? acc_t(1) / static_cast<acc_t>(e - s) : acc_t(1);
      for (int64_t j = 0; j < D; ++j) out[b * D + j] = static_cast<scalar_t>(acc[j] * scale);
    }
  });
}

// a[0, C) += sc * g[0, C), times the other partitions' rows of id i for mult: what
// position i adds to partition p's gradient row (g: its bag's output-gradient columns
// of p). Both backward paths sum these.
template <typename scalar_t, typename acc_t>
inline void add_contribution(const QRLayout& L, int64_t p, const scalar_t* const* W,
                             const int64_t* rows, int64_t n, int64_t i, acc_t sc,
                             const scalar_t* __restrict g, acc_t* __restrict a) {
  const int64_t C = L.cols[p];
  if (L.op == kMult && L.k == 2) {
    const scalar_t* wq = W[1 - p] + rows[(1 - p) * n + i] * C;
    for (int64_t j = 0; j < C; ++j)
      a[j] += sc * static_cast<acc_t>(g[j]) * static_cast<acc_t>(wq[j]);
  } else if (L.op == kMult && L.k > 1) {
    for (int64_t j = 0; j < C; ++j) {
      acc_t v = sc * static_cast<acc_t>(g[j]);
      for (int64_t q = 0; q < L.k; ++q)
        if (q != p) v *= static_cast<acc_t>(W[q][rows[q * n + i] * C + j]);
      a[j] += v;
    }
  } else {
    for (int64_t j = 0; j < C; ++j) a[j] += sc * static_cast<acc_t>(g[j]);
  }
}

// Gradient rows of partition p: uniq rows u get the contributions of their positions.
template <typename scalar_t>
void backward_partition(const QRLayout& L, int64_t p, const scalar_t* const* W, const int64_t* rows,
                        int64_t n, const scalar_t* go, const int64_t* bag_of,
                        const float* pos_scale, const int64_t* order, const int64_t* starts,
                        int64_t num_unique, scalar_t* grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = L.out_dim, C = L.cols[p];
  at::parallel_for(0, num_unique, 8, [&](int64_t u0, int64_t u1) {
    std::vector<acc_t> acc(C);
    for (int64_t u = u0; u < u1; ++u) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t t = starts[u]; t < starts[u + 1]; ++t) {
        const int64_t i = order[t];
        add_contribution(L, p, W, rows, n, i, static_cast<acc_t>(pos_scale[i]),
                         go + bag_of[i] * D + L.out_col[p], acc.data());
      }
      for (int64_t j = 0; j < C; ++j) grad[u * C + j] = static_cast<scalar_t>(acc[j]);
    }
  });
}

// The same gradients for small partition tables: each thread walks its share of the
// positions in order (the output-gradient rows stream instead of being gathered row
// by row) and sums into its own dense copy of the pieces' gradients; the copies are
// added up after. Returns, per piece, the touched rows and their gradient rows.
template <typename scalar_t>
void backward_dense(const QRLayout& L, const scalar_t* const* W, const int64_t* rows, int64_t n,
                    const scalar_t* go, const int64_t* bag_of, const float* pos_scale,
                    std::vector<at::Tensor>& uniq_out, std::vector<at::Tensor>& grad_out,
                    const at::TensorOptions& opts) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = L.out_dim;
  std::vector<int64_t> base(L.k + 1, 0);  // piece p's rows start at base[p] of a thread's copy
  for (int64_t p = 0; p < L.k; ++p) base[p + 1] = base[p] + L.rows[p] * L.cols[p];
  const int64_t threads = at::get_num_threads();
  std::vector<std::vector<acc_t>> part(threads);
  at::parallel_for(0, n, 2048, [&](int64_t i0, int64_t i1) {
    std::vector<acc_t>& acc = part[at::get_thread_num()];
    if (acc.empty()) acc.assign(base[L.k], acc_t(0));
    for (int64_t i = i0; i < i1; ++i) {
      const acc_t sc = static_cast<acc_t>(pos_scale[i]);
      const scalar_t* g = go + bag_of[i] * D;
      for (int64_t p = 0; p < L.k; ++p) {
        add_contribution(L, p, W, rows, n, i, sc, g + L.out_col[p],
                         acc.data() + base[p] + rows[p * n + i] * L.cols[p]);
      }
    }
  });
  for (int64_t p = 0; p < L.k; ++p) {
    std::vector<char> touched(L.rows[p], 0);
    for (int64_t i = 0; i < n; ++i) touched[rows[p * n + i]] = 1;
    std::vector<int64_t> u;
    for (int64_t r = 0; r < L.rows[p]; ++r)
      if (touched[r]) u.push_back(r);
    const int64_t C = L.cols[p];
    auto grad = at::empty({static_cast<int64_t>(u.size()), C}, opts);
    scalar_t* gr = grad.data_ptr<scalar_t>();
    at::parallel_for(0, static_cast<int64_t>(u.size()), 64, [&](int64_t k0, int64_t k1) {
      std::vector<acc_t> sum(C);
      for (int64_t k = k0; k < k1; ++k) {
        std::fill(sum.begin(), sum.end(), acc_t(0));
        for (const auto& acc : part) {
          if (acc.empty()) continue;  // a thread that got no positions
          const acc_t* src = acc.data() + base[p] + u[k] * C;
          for (int64_t j = 0; j < C; ++j) sum[j] += src[j];
        }
        for (int64_t j = 0; j < C; ++j) gr[k * C + j] = static_cast<scalar_t>(sum[j]);
      }
    });
    uniq_out.push_back(at::tensor(u, opts.dtype(at::kLong)));
    grad_out.push_back(grad);
  }
}

// d(out[bag]) / d(psw[i]) = scale * <grad_out[bag], composed vector of id i>.
template <typename scalar_t>
void psw_grad_kernel(const QRLayout& L, const scalar_t* const* W, const int64_t* rows, int64_t n,
                     const scalar_t* go, const int64_t* bag_of, const float* bag_scale,
                     float* gpsw) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t D = L.out_dim;
  at::parallel_for(0, n, 256, [&](int64_t i0, int64_t i1) {
    std::vector<acc_t> tmp(D);
    for (int64_t i = i0; i < i1; ++i) {
      const scalar_t* g = go + bag_of[i] * D;
      acc_t dot = 0;
      if (L.op == kConcat) {
        for (int64_t p = 0; p < L.k; ++p) {
          const scalar_t* wp = W[p] + rows[p * n + i] * L.cols[p];
          for (int64_t j = 0; j < L.cols[p]; ++j)
            dot += static_cast<acc_t>(wp[j]) * static_cast<acc_t>(g[L.out_col[p] + j]);
        }
      } else {
        const scalar_t* wr[kMaxPartitions];
        for (int64_t p = 0; p < L.k; ++p) wr[p] = W[p] + rows[p * n + i] * D;
        compose(L, wr, D, tmp.data());
        for (int64_t j = 0; j < D; ++j) dot += tmp[j] * static_cast<acc_t>(g[j]);
      }
      gpsw[i] = static_cast<float>(dot) * bag_scale[i];
    }
  });
}

template <typename scalar_t>
std::vector<const scalar_t*> weight_ptrs(const std::vector<at::Tensor>& ws) {
  std::vector<const scalar_t*> out;
  for (const auto& w : ws) out.push_back(w.data_ptr<scalar_t>());
  return out;
}

std::vector<at::Tensor> qr_bags_forward_cpu(at::TensorList weights, const at::Tensor& indices,
                                            const at::Tensor& offsets,
                                            const std::optional<at::Tensor>& per_sample_weights,
                                            at::IntArrayRef table_bags, at::IntArrayRef poolings,
                                            at::IntArrayRef layouts) {
  auto idx = indices.contiguous();
  auto off = offsets.contiguous();
  const auto tables =
      qr_batch_tables(weights, idx, off, per_sample_weights, table_bags, poolings, layouts);
  check_offsets_data(off, idx.numel(), "qr bag");
  const int64_t* o = off.data_ptr<int64_t>();
  for (const QRTable& T : tables) check_ids_in_shard(T.L, idx.slice(0, o[T.bag0], o[T.bag1]));
  auto ws = contiguous_all(weights);
  std::optional<at::Tensor> psw;
  if (per_sample_weights) psw = per_sample_weights->contiguous().to(at::kFloat);
  std::vector<at::Tensor> outs;
  for (const QRTable& T : tables)
    outs.push_back(at::empty({T.bag1 - T.bag0, T.L.out_dim}, ws[0].options()));
  if (ws.empty()) return outs;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, ws[0].scalar_type(), "qr_bags_forward_cpu", [&] {
        auto W = weight_ptrs<scalar_t>(ws);
        // Table by table, each split across the threads (the tables are small; one call
        // spares a dispatch and a Python round trip per table).
        for (size_t t = 0; t < tables.size(); ++t) {
          const QRTable& T = tables[t];
          forward_kernel<scalar_t>(T.L, W.data() + T.piece0, idx.data_ptr<int64_t>(), o + T.bag0,
                                   psw ? psw->data_ptr<float>() : nullptr, T.bag1 - T.bag0, T.mean,
                                   outs[t].data_ptr<scalar_t>());
        }
      });
  return outs;
}

// One partition piece of one table in the backward pass: its rows grouped by row.
struct PieceRows {
  size_t t;
  int64_t p;
  at::Tensor uniq, order, starts;
};

// Whether a table's backward pass sums into per-thread dense gradients (backward_dense):
// when its pieces are no larger than its ids and the copies stay small. The default
// choice can be forced with TORCHREC_EXT_QR_BACKWARD=grouped|dense (tests run both).
bool dense_backward(const QRLayout& L, int64_t n) {
  const char* forced = std::getenv("TORCHREC_EXT_QR_BACKWARD");
  if (forced && std::string(forced) == "grouped") return false;
  int64_t rows = 0, elems = 0;
  for (int64_t p = 0; p < L.k; ++p) {
    rows += L.rows[p];
    elems += L.rows[p] * L.cols[p];
  }
  if (forced && std::string(forced) == "dense") return true;
  return rows <= n && elems * at::get_num_threads() <= (int64_t(1) << 24);
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> qr_bags_backward_cpu(
    at::TensorList grad_outputs, at::TensorList weights, const at::Tensor& indices,
    const at::Tensor& offsets, const std::optional<at::Tensor>& per_sample_weights,
    at::IntArrayRef table_bags, at::IntArrayRef poolings, at::IntArrayRef layouts, bool psw_grad) {
  auto idx = indices.contiguous();
  auto off = offsets.contiguous();
  const auto tables =
      qr_batch_tables(weights, idx, off, per_sample_weights, table_bags, poolings, layouts);
  const int64_t n = idx.numel();
  check_offsets_data(off, n, "qr bag");
  auto ws = contiguous_all(weights);
  const auto dtype = ws.empty() ? at::kFloat : ws[0].scalar_type();
  const auto go = qr_batch_grads(grad_outputs, tables, dtype);
  const int64_t* o = off.data_ptr<int64_t>();
  // Per position of a table's bags: its bag within the table, pw / len for MEAN (pw
  // alone for SUM), and the pooling factor alone.
  auto bag_of = at::empty({n}, idx.options());
  auto pos_scale = at::empty({n}, idx.options().dtype(at::kFloat));
  auto bag_scale = at::empty({n}, idx.options().dtype(at::kFloat));
  {
    int64_t* bo = bag_of.data_ptr<int64_t>();
    float* ps = pos_scale.data_ptr<float>();
    float* bs = bag_scale.data_ptr<float>();
    auto psw = per_sample_weights ? per_sample_weights->contiguous().to(at::kFloat) : at::Tensor();
    const float* pw = psw.defined() ? psw.data_ptr<float>() : nullptr;
    for (const QRTable& T : tables) {
      for (int64_t b = T.bag0; b < T.bag1; ++b) {
        const float sc =
            (T.mean && o[b + 1] > o[b]) ? 1.f / static_cast<float>(o[b + 1] - o[b]) : 1.f;
        for (int64_t i = o[b]; i < o[b + 1]; ++i) {
          bo[i] = b - T.bag0;
          bs[i] = sc;
          ps[i] = sc * (pw ? pw[i] : 1.f);
        }
      }
    }
  }
  // Rows of every table's ids (this checks them), then every piece's rows grouped by
  // row: the pieces are independent, so the threads take whole pieces.
  std::vector<at::Tensor> rows;
  std::vector<PieceRows> pieces;
  std::vector<bool> dense;
  for (size_t t = 0; t < tables.size(); ++t) {
    rows.push_back(partition_rows(tables[t].L, idx.slice(0, o[tables[t].bag0], o[tables[t].bag1])));
    dense.push_back(dense_backward(tables[t].L, rows[t].size(1)));
    for (int64_t p = 0; p < tables[t].L.k && !dense[t]; ++p) pieces.push_back({t, p, {}, {}, {}});
  }
  at::parallel_for(0, static_cast<int64_t>(pieces.size()), 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      PieceRows& pr = pieces[u];
      std::tie(pr.uniq, pr.order, pr.starts) =
          group_by_row(rows[pr.t].select(0, pr.p), tables[pr.t].L.rows[pr.p]);
    }
  });
  std::vector<at::Tensor> uniq_rows(ws.size()), grads(ws.size());  // in weights order
  auto gpsw = at::zeros({psw_grad ? n : 0}, idx.options().dtype(at::kFloat));
  if (ws.empty()) return {uniq_rows, grads, gpsw};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "qr_bags_backward_cpu", [&] {
    auto W = weight_ptrs<scalar_t>(ws);
    for (size_t t = 0; t < tables.size(); ++t) {
      if (!dense[t]) continue;
      const QRTable& T = tables[t];
      const int64_t p0 = o[T.bag0];
      std::vector<at::Tensor> u, g;
      backward_dense<scalar_t>(T.L, W.data() + T.piece0, rows[t].data_ptr<int64_t>(),
                               rows[t].size(1), go[t].data_ptr<scalar_t>(),
                               bag_of.data_ptr<int64_t>() + p0, pos_scale.data_ptr<float>() + p0, u,
                               g, ws[0].options());
      for (int64_t p = 0; p < T.L.k; ++p) {
        uniq_rows[T.piece0 + p] = u[p];
        grads[T.piece0 + p] = g[p];
      }
    }
    for (const PieceRows& pr : pieces) {
      const QRTable& T = tables[pr.t];
      const int64_t p0 = o[T.bag0];
      auto grad = at::empty({pr.uniq.numel(), T.L.cols[pr.p]}, ws[0].options());
      backward_partition<scalar_t>(
          T.L, pr.p, W.data() + T.piece0, rows[pr.t].data_ptr<int64_t>(), rows[pr.t].size(1),
          go[pr.t].data_ptr<scalar_t>(), bag_of.data_ptr<int64_t>() + p0,
          pos_scale.data_ptr<float>() + p0, pr.order.data_ptr<int64_t>(),
          pr.starts.data_ptr<int64_t>(), pr.uniq.numel(), grad.data_ptr<scalar_t>());
      uniq_rows[T.piece0 + pr.p] = pr.uniq;
      grads[T.piece0 + pr.p] = grad;
    }
    if (!psw_grad) return;
    for (size_t t = 0; t < tables.size(); ++t) {
      const int64_t p0 = o[tables[t].bag0];
      psw_grad_kernel<scalar_t>(tables[t].L, W.data() + tables[t].piece0,
                                rows[t].data_ptr<int64_t>(), rows[t].size(1),
                                go[t].data_ptr<scalar_t>(), bag_of.data_ptr<int64_t>() + p0,
                                bag_scale.data_ptr<float>() + p0, gpsw.data_ptr<float>() + p0);
    }
  });
  return {uniq_rows, grads, gpsw};
}

}  // namespace

TORCH_LIBRARY_IMPL(torchrec_ext, CPU, m) {
  m.impl("qr_bags_forward", &qr_bags_forward_cpu);
  m.impl("qr_bags_backward", &qr_bags_backward_cpu);
}

}  // namespace torchrec_ext
