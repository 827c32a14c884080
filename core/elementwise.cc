#include "core/elementwise.h"

#include <algorithm>
#include <memory>
#include <type_traits>
#include <vector>

#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"
#include "tbb/partitioner.h"

namespace NT_CORE_NS {

namespace {

constexpr int64_t kChunk = 256;

// The diagonal layout pairs position e with position e: in double, the map reads the diagonals and the
// array in place, chunk by chunk within one (row, column) block, with no gathers or copies in. Returns
// false (nothing done) for other precisions, whose values must be converted anyway.
template <typename R>
bool MapInPlace(const ElementwiseLayer&, const R*, const R*, int64_t, int64_t, bool, int64_t, R*, R*) {
  return false;
}

template <>
[[maybe_unused]] bool MapInPlace<double>(const ElementwiseLayer& layer, const double* d_left,
                                         const double* d_right, int64_t rows, int64_t cols,
                                         bool two_batch_axes, int64_t p, double* a, double* ntk) {
  double t[kChunk], tdot[kChunk];
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      const double* dl = d_left + i * p;
      const double* dr = d_right + (two_batch_axes ? j : i) * p;
      double* blk = a + (i * cols + j) * p;
      double* nblk = ntk ? ntk + (i * cols + j) * p : nullptr;
      for (int64_t e = 0; e < p; e += kChunk) {
        const int64_t n = std::min(kChunk, p - e);
        layer.PairMap(dl + e, blk + e, dr + e, n, t, nblk ? tdot : nullptr);
        std::copy(t, t + n, blk + e);
        if (nblk) {
          for (int64_t k = 0; k < n; ++k) nblk[e + k] *= tdot[k];
        }
      }
    }
  }
  return true;
}

// MapArray over runs of the offsets (PairOffsetTable::run): the diagonals are read as a constant or a
// contiguous stretch per run instead of through two offset arrays (a gather per entry dominated the
// map for full-layout kernels such as CNN+GlobalAvgPool's). Runs are mapped in parallel: a tile of one
// entry can be a whole kernel's last tile, which would otherwise leave the other cores idle. The
// simple partitioner splits the same way on every run, so the chunks (and the results) do not depend
// on the thread count or timing.
void MapArrayRuns(const ElementwiseLayer& layer, int batch_axes, const Array& d_left, const Array& d_right,
                  const PairOffsetTable& table, int64_t p, Array* a, Array* ntk) {
  const int64_t cols = batch_axes == 2 ? a->dim(1) : 1;
  const int64_t run = table.run, step = table.left_step;
  const int64_t runs_per_block = static_cast<int64_t>(table.left.size()) / run;
  const int64_t total_runs = a->dim(0) * cols * runs_per_block;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / run);  // About 64K entries per task.
  tbb::parallel_for(
      tbb::blocked_range<int64_t>(0, total_runs, grain),
      [&](const tbb::blocked_range<int64_t>& range) {
        Real q11[kChunk], q12[kChunk], q22[kChunk], t[kChunk], tdot[kChunk];
        // Blocks (i, j) are contiguous, so run R's entries start at R * run in both arrays.
        Real* out = a->data();
        Real* nout = ntk ? ntk->data() : nullptr;
        int64_t start = range.begin() * run, fill = 0;  // Position of the buffer's first entry; entries.
        auto flush = [&] {
          std::copy(out + start, out + start + fill, q12);
          layer.PairMapReal(q11, q12, q22, fill, t, nout ? tdot : nullptr);
          std::copy(t, t + fill, out + start);
          if (nout) {
            for (int64_t k = 0; k < fill; ++k) nout[start + k] *= tdot[k];
          }
          start += fill;
          fill = 0;
        };
        for (int64_t run_index = range.begin(); run_index < range.end(); ++run_index) {
          const int64_t block = run_index / runs_per_block, r = run_index % runs_per_block;
          const int64_t i = block / cols, j = block % cols;
          // The compact run tables: the full ones are 8 bytes per entry, a cache miss per run.
          const Real* l = d_left.data() + i * p + table.run_left[r];
          const Real* rr = d_right.data() + (batch_axes == 2 ? j : i) * p + table.run_right[r];
          for (int64_t t0 = 0; t0 < run;) {
            const int64_t m = std::min(run - t0, kChunk - fill);
            for (int64_t k = 0; k < m; ++k) {
              q11[fill + k] = l[step * (t0 + k)];
              q22[fill + k] = rr[t0 + k];
            }
            fill += m;
            t0 += m;
            if (fill == kChunk) flush();
          }
        }
        if (fill > 0) flush();
      },
      tbb::simple_partitioner());
}

// PairMap on any Real: directly in double, through double copies chunk by chunk otherwise.
template <typename R>
void PairMapThroughDouble(const ElementwiseLayer& layer, const R* q11, const R* q12, const R* q22, int64_t n,
                          R* t, R* tdot) {
  if constexpr (std::is_same_v<R, double>) {
    layer.PairMap(q11, q12, q22, n, t, tdot);
  } else {
    double a[kChunk], b[kChunk], c[kChunk], u[kChunk], v[kChunk];
    for (int64_t start = 0; start < n; start += kChunk) {
      const int64_t m = std::min(kChunk, n - start);
      std::copy(q11 + start, q11 + start + m, a);
      std::copy(q12 + start, q12 + start + m, b);
      std::copy(q22 + start, q22 + start + m, c);
      layer.PairMap(a, b, c, m, u, tdot ? v : nullptr);
      std::copy(u, u + m, t + start);
      if (tdot) std::copy(v, v + m, tdot + start);
    }
  }
}

// Applies the pair map to an array with `batch_axes` leading axes whose entries pair d_left[row] with
// d_right[col] (rows x cols batch grid; for one batch axis, row == col). `ntk` (same shape as `a`, may be
// null) is multiplied by tdot in place. `diagonal_layout`: the offsets are the identity (e pairs with e).
// In order of preference: in place (diagonal layout, double), by runs of the offsets, by gathers.
void MapArray(const ElementwiseLayer& layer, int batch_axes, const Array& d_left, const Array& d_right,
              const PairOffsetTable& table, int64_t p, bool diagonal_layout, Array* a, Array* ntk) {
  const std::vector<int64_t>& off_l = table.left;
  const std::vector<int64_t>& off_r = table.right;
  const int64_t rows = a->dim(0);
  const int64_t cols = batch_axes == 2 ? a->dim(1) : 1;
  const int64_t inner = static_cast<int64_t>(off_l.size());
  const int64_t row_len = cols * inner;
  // The maps work in double whatever the engine's Real is: chunks are gathered into these buffers.
  double q11[kChunk], q12[kChunk], q22[kChunk], t[kChunk], tdot[kChunk];
  if (diagonal_layout && inner >= kChunk / 4 &&
      MapInPlace(layer, d_left.data(), d_right.data(), rows, cols, batch_axes == 2, inner, a->data(),
                 ntk ? ntk->data() : nullptr)) {
    return;
  }
  if (table.run >= 8) {
    MapArrayRuns(layer, batch_axes, d_left, d_right, table, p, a, ntk);
    return;
  }
  for (int64_t i = 0; i < rows; ++i) {
    Real* row = a->data() + i * row_len;
    Real* nrow = ntk ? ntk->data() + i * row_len : nullptr;
    const Real* dl = d_left.data() + i * p;
    int64_t j = 0, e = 0;  // Column and inner index of the chunk's first entry.
    for (int64_t start = 0; start < row_len; start += kChunk) {
      const int64_t n = std::min(kChunk, row_len - start);
      for (int64_t k = 0; k < n; ++k) {
        const int64_t col = batch_axes == 2 ? j : i;
        q11[k] = dl[off_l[e]];
        q22[k] = d_right[col * p + off_r[e]];
        if (++e == inner) {
          e = 0;
          ++j;
        }
      }
      std::copy(row + start, row + start + n, q12);
      layer.PairMap(q11, q12, q22, n, t, nrow ? tdot : nullptr);
      std::copy(t, t + n, row + start);
      if (nrow) {
        for (int64_t k = 0; k < n; ++k) nrow[start + k] *= tdot[k];
      }
    }
  }
}

}  // namespace

Requirements ElementwiseLayer::requirements() const {
  Requirements r;
  r.diagonal_spatial = Diagonal{};
  return r;
}

absl::StatusOr<ShapeFlow> ElementwiseLayer::OutputShape(const ShapeFlow& in) const {
  if (absl::Status st = ExpectSingle(name(), in.is_list, in.items.size()); !st.ok()) return st;
  return in;
}

absl::StatusOr<ArrayFlow> ElementwiseLayer::Apply(const Params&, const ArrayFlow& x) const {
  if (absl::Status st = ExpectSingle(name(), x.is_list, x.items.size()); !st.ok()) return st;
  ArrayFlow y = x;
  for (Real& v : y.single().vec()) v = static_cast<Real>(Phi(v));
  return y;
}

void ElementwiseLayer::PairMapReal(const Real* q11, const Real* q12, const Real* q22, int64_t n, Real* t,
                                   Real* tdot) const {
  PairMapThroughDouble(*this, q11, q12, q22, n, t, tdot);
}

void ElementwiseLayer::DiagMap(const double* q, int64_t n, double* t) const {
  PairMap(q, q, q, n, t, nullptr);
}

absl::Status ElementwiseLayer::TransformKernel(KernelFlow* kf, const KernelContext&) const {
  if (absl::Status st = ExpectSingle(name(), kf->is_list, kf->items.size()); !st.ok()) return st;
  Kernel& k = kf->single();
  if (!k.is_gaussian) {
    return LayerError(name(), "",
                      "the input to an activation must be Gaussian: apply a random affine layer "
                      "(Dense, Conv, attention) before it");
  }
  const int s = k.num_spatial();
  const int cb = CovBatchAxes(k);
  const bool cov_diagonal = CovDiagonalSpatial(k);
  if (k.cov_diagonal_only && cb != 1) {
    return absl::InternalError(absl::StrCat(name(), ": diagonal-only covariances need diagonal_batch"));
  }
  const Array d1 = GetDiagonal(k.cov1, cb, cov_diagonal, s);
  const Array d2 = k.cov2 ? GetDiagonal(*k.cov2, cb, cov_diagonal, s) : d1;
  const Shape sizes(d1.shape().begin() + 1, d1.shape().end());
  const int64_t p = NumElements(sizes);
  const auto offsets = PairOffsetsFor(sizes, k.diagonal_spatial);

  Array* ntk = (k.ntk && k.ntk->rank() > 0) ? &*k.ntk : nullptr;  // A rank-0 NTK is 0 and stays 0.
  MapArray(*this, 2, d1, d2, *offsets, p, k.diagonal_spatial, &k.nngp, ntk);
  auto map_cov = [&](Array* cov, const Array& d) {
    if (cb == 1 && cov_diagonal) {
      double q[kChunk], t[kChunk];
      Real* c = cov->data();
      for (int64_t start = 0; start < cov->size(); start += kChunk) {
        const int64_t n = std::min(kChunk, cov->size() - start);
        std::copy(c + start, c + start + n, q);
        DiagMap(q, n, t);
        std::copy(t, t + n, c + start);
      }
    } else {
      MapArray(*this, cb, d, d, *offsets, p, k.diagonal_spatial, cov, nullptr);
    }
  };
  map_cov(&k.cov1, d1);
  if (k.cov2) map_cov(&*k.cov2, d2);
  k.is_gaussian = false;
  return absl::OkStatus();
}

absl::StatusOr<Layer::Linearized> ElementwiseLayer::Linearize(const Params& params,
                                                              const ArrayFlow& x) const {
  auto y = Apply(params, x);  // Also refuses layers without a finite network.
  if (!y.ok()) return y.status();
  auto d = std::make_shared<Array>(x.single().shape());
  const Array& xs = x.single();
  for (int64_t i = 0; i < xs.size(); ++i) (*d)[i] = static_cast<Real>(DPhi(xs[i]));
  std::shared_ptr<const Array> dphi = std::move(d);
  Pullback pullback = [dphi](const ArrayFlow& dy) -> absl::StatusOr<Cotangents> {
    Array dx = dy.single();
    for (int64_t i = 0; i < dx.size(); ++i) dx[i] *= (*dphi)[i];
    return Cotangents{ArrayFlow::Single(std::move(dx)), Params{}};
  };
  return Linearized{*std::move(y), std::move(pullback)};
}

}  // namespace NT_CORE_NS
