#include "core/layer_norm.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/spatial.h"

namespace NT_CORE_NS {

absl::Status LayerNormLayer::Validate(const LayerNormOptions& o) {
  if (o.axis.empty()) return LayerError("LayerNorm", "axis", "must name at least the channel axis");
  if (!(o.eps >= 0) || !std::isfinite(o.eps)) {
    return LayerError("LayerNorm", "eps", absl::StrCat("must be finite and >= 0, got ", o.eps));
  }
  return absl::OkStatus();
}

Requirements LayerNormLayer::requirements() const {
  Requirements r;
  r.batch_axis = o_.batch_axis;
  r.channel_axis = o_.channel_axis;
  return r;
}

absl::StatusOr<std::vector<int>> LayerNormLayer::Axes(int rank) const {
  std::vector<int> axes;
  for (int a : o_.axis) {
    auto c = CanonicalAxis(name(), "axis", a, rank);
    if (!c.ok()) return c.status();
    if (std::find(axes.begin(), axes.end(), *c) == axes.end()) axes.push_back(*c);
  }
  std::sort(axes.begin(), axes.end());
  return axes;
}

absl::StatusOr<ShapeFlow> LayerNormLayer::OutputShape(const ShapeFlow& in) const {
  if (absl::Status st = ExpectSingle(name(), in.is_list, in.items.size()); !st.ok()) return st;
  if (auto a = Axes(static_cast<int>(in.single().size())); !a.ok()) return a.status();
  return in;
}

absl::StatusOr<LayerNormLayer::Normalized> LayerNormLayer::Normalize(const Array& x) const {
  auto axes = Axes(x.rank());
  if (!axes.ok()) return axes.status();
  Normalized n;
  // Move the normalised axes last: each row is then one group.
  n.inv.resize(x.rank());
  for (int i = 0; i < x.rank(); ++i) {
    if (std::find(axes->begin(), axes->end(), i) == axes->end()) n.perm.push_back(i);
  }
  for (int a : *axes) n.perm.push_back(a);
  for (int i = 0; i < x.rank(); ++i) n.inv[n.perm[i]] = i;
  n.t = Transpose(x, n.perm);
  for (int a : *axes) n.group *= x.dim(a);
  const int64_t group = n.group;
  const int64_t rows = n.t.size() / std::max<int64_t>(group, 1);
  n.scale.resize(rows);
  for (int64_t r = 0; r < rows; ++r) {
    Real* g = n.t.data() + r * group;
    double mean = 0, var = 0;
    for (int64_t e = 0; e < group; ++e) mean += g[e];
    mean /= double(group);
    for (int64_t e = 0; e < group; ++e) var += (g[e] - mean) * (g[e] - mean);
    var /= double(group);
    const double scale = 1.0 / std::sqrt(o_.eps + var);
    for (int64_t e = 0; e < group; ++e) g[e] = static_cast<Real>((g[e] - mean) * scale);
    n.scale[r] = static_cast<Real>(scale);
  }
  return n;
}

absl::StatusOr<ArrayFlow> LayerNormLayer::Apply(const Params&, const ArrayFlow& xf) const {
  if (absl::Status st = ExpectSingle(name(), xf.is_list, xf.items.size()); !st.ok()) return st;
  auto n = Normalize(xf.single());
  if (!n.ok()) return n.status();
  return ArrayFlow::Single(Transpose(n->t, n->inv));
}

absl::StatusOr<Layer::Linearized> LayerNormLayer::Linearize(const Params&, const ArrayFlow& xf) const {
  if (absl::Status st = ExpectSingle(name(), xf.is_list, xf.items.size()); !st.ok()) return st;
  auto n = Normalize(xf.single());
  if (!n.ok()) return n.status();
  Array y = Transpose(n->t, n->inv);
  auto fwd = std::make_shared<const Normalized>(*std::move(n));
  Pullback pullback = [layer = name(), fwd,
                       shape = y.shape()](const ArrayFlow& dyf) -> absl::StatusOr<Cotangents> {
    if (dyf.is_list || dyf.items.size() != 1 || dyf.single().shape() != shape) {
      return LayerError(layer, "",
                        absl::StrCat("the pullback expects one cotangent of shape ", ShapeToString(shape)));
    }
    // d y_i / d x_j = s (delta_ij - 1 / G - xhat_i xhat_j / G) within a group of G entries.
    Array g = Transpose(dyf.single(), fwd->perm);
    const int64_t group = fwd->group;
    for (size_t r = 0; r < fwd->scale.size(); ++r) {
      Real* d = g.data() + r * group;
      const Real* xhat = fwd->t.data() + r * group;
      double mean_d = 0, mean_dx = 0;
      for (int64_t e = 0; e < group; ++e) {
        mean_d += d[e];
        mean_dx += double(d[e]) * double(xhat[e]);
      }
      mean_d /= double(group);
      mean_dx /= double(group);
      const double s = fwd->scale[r];
      for (int64_t e = 0; e < group; ++e) d[e] = static_cast<Real>(s * (d[e] - mean_d - xhat[e] * mean_dx));
    }
    return Cotangents{ArrayFlow::Single(Transpose(g, fwd->inv)), Params{}};
  };
  return Linearized{ArrayFlow::Single(std::move(y)), std::move(pullback)};
}

absl::Status LayerNormLayer::TransformKernel(KernelFlow* kf, const KernelContext&) const {
  if (absl::Status st = ExpectSingle(name(), kf->is_list, kf->items.size()); !st.ok()) return st;
  Kernel& k = kf->single();
  if (!k.is_gaussian) {
    return LayerUnimplemented(name(), "needs Gaussian inputs (a Dense/Conv before it), as upstream");
  }
  NaturalOrder(&k);
  const int rank = static_cast<int>(k.shape1.size());
  auto axes = Axes(rank);
  if (!axes.ok()) return axes.status();
  if (std::find(axes->begin(), axes->end(), k.channel_axis) == axes->end()) {
    return LayerError(name(), "axis", absl::StrCat("must contain the channel axis ", k.channel_axis));
  }
  if (std::find(axes->begin(), axes->end(), k.batch_axis) != axes->end()) {
    return LayerUnimplemented(name(),
                              "normalising over the batch axis averages over samples, which tiled "
                              "evaluation of independent samples does not support");
  }
  if ((k.mask1 || k.mask2) && axes->size() > 1) {
    return LayerUnimplemented(name(),
                              "masked inputs with normalisation over spatial axes are not supported yet");
  }
  const std::vector<int> spatial = SpatialAxes(rank, k.batch_axis, k.channel_axis);
  const int s = static_cast<int>(spatial.size());
  std::vector<bool> averaged(s, false);
  for (int d = 0; d < s; ++d) averaged[d] = std::find(axes->begin(), axes->end(), spatial[d]) != axes->end();
  const int cb = CovBatchAxes(k);
  // u[n, p]: eps plus the variance at position p, averaged over the normalised spatial axes.
  auto scale_of = [&](const Array& cov) {
    Array v = GetDiagonal(cov, cb, CovDiagonalSpatial(k), s);
    for (auto& e : v.vec()) e = static_cast<Real>(o_.eps + e);
    for (int d = 0; d < s; ++d) {
      if (!averaged[d]) continue;
      const int64_t n = v.dim(1 + d);
      // Every output position gets the mean over the axis.
      const std::vector<Real> dense(static_cast<size_t>(n * n), static_cast<Real>(1.0 / double(n)));
      v = ApplyAlongAxis(v, 1 + d, DenseAxisMatrix(n, n, dense));
    }
    return v;
  };
  const Array u1 = scale_of(k.cov1);
  const Array u2 = k.cov2 ? scale_of(*k.cov2) : u1;
  const Shape sizes(u1.shape().begin() + 1, u1.shape().end());
  const int64_t p = NumElements(sizes);
  // Divides entry (i, j; left, right) of an array by sqrt(ua[i, left] ub[j, right]).
  auto divide = [&](Array* a, int lead, bool diagonal, const Array& ua, const Array& ub) {
    if (a->rank() == 0) return;
    const auto offsets = PairOffsetsFor(sizes, diagonal);
    const int64_t inner = static_cast<int64_t>(offsets->left.size());
    const int64_t rows = a->dim(0), cols = lead == 2 ? a->dim(1) : 1;
    for (int64_t i = 0; i < rows; ++i) {
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t jj = lead == 2 ? j : i;
        Real* block = a->data() + (i * cols + j) * inner;
        for (int64_t e = 0; e < inner; ++e) {
          block[e] = static_cast<Real>(block[e] / std::sqrt(double(ua[i * p + offsets->left[e]]) *
                                                            double(ub[jj * p + offsets->right[e]])));
        }
      }
    }
  };
  divide(&k.nngp, 2, k.diagonal_spatial, u1, u2);
  if (k.ntk) divide(&*k.ntk, 2, k.diagonal_spatial, u1, u2);
  if (cb == 1) {
    divide(&k.cov1, 1, CovDiagonalSpatial(k), u1, u1);
    if (k.cov2) divide(&*k.cov2, 1, CovDiagonalSpatial(k), u2, u2);
  } else {
    divide(&k.cov1, 2, k.diagonal_spatial, u1, u1);
    if (k.cov2) divide(&*k.cov2, 2, k.diagonal_spatial, u2, u2);
  }
  return absl::OkStatus();
}

}  // namespace NT_CORE_NS
