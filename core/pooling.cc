#include "core/pooling.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"

namespace NT_CORE_NS {

namespace {

// `m` with every axis of size 1 repeated to `shape`'s size, except `keep` (left as is; -1: none).
absl::StatusOr<Array> Broadcast(const std::string& layer, const Array& m, const Shape& shape, int keep) {
  if (m.rank() != static_cast<int>(shape.size())) {
    return LayerError(
        layer, "mask",
        absl::StrCat("has rank ", m.rank(), " but the activation has shape ", ShapeToString(shape)));
  }
  Array out = m;
  for (int a = 0; a < m.rank(); ++a) {
    if (a == keep || out.dim(a) == shape[a]) continue;
    if (out.dim(a) != 1) {
      return LayerError(layer, "mask",
                        absl::StrCat("of shape ", ShapeToString(m.shape()),
                                     " does not broadcast to the activation shape ", ShapeToString(shape)));
    }
    AxisMatrix repeat{1, shape[a], std::vector<std::vector<std::pair<int64_t, Real>>>(shape[a], {{0, 1.0}})};
    out = ApplyAlongAxis(out, a, repeat);
  }
  return out;
}

// Pullbacks receive one cotangent shaped like the forward output.
absl::Status ExpectCotangent(const std::string& layer, const ArrayFlow& dy, const Shape& shape) {
  if (dy.is_list || dy.items.size() != 1 || dy.single().shape() != shape) {
    return LayerError(layer, "",
                      absl::StrCat("the pullback expects one cotangent of shape ", ShapeToString(shape)));
  }
  return absl::OkStatus();
}

}  // namespace

// ----------------------------------------------------------------------------------------------------
// AvgPool / SumPool

absl::Status PoolLayer::Validate(PoolKind kind, const PoolOptions& o) {
  const std::string layer = kind == PoolKind::kAvg ? "AvgPool" : "SumPool";
  for (int64_t w : o.window_shape) {
    if (w <= 0) return LayerError(layer, "window_shape", absl::StrCat("entries must be positive, got ", w));
  }
  if (auto s = PerAxis(layer, "strides", o.strides, o.window_shape.size(), 1); !s.ok()) return s.status();
  // Upstream's SumPool has no such argument; accepting it silently would hide a mistake.
  if (kind == PoolKind::kSum && o.normalize_edges) {
    return LayerError(layer, "normalize_edges", "is an AvgPool option; SumPool never normalises");
  }
  return absl::OkStatus();
}

Requirements PoolLayer::requirements() const {
  Requirements r;
  r.diagonal_spatial = Diagonal{Bool::kMaybe, Bool::kNo};
  r.batch_axis = o_.batch_axis;
  r.channel_axis = o_.channel_axis;
  return r;
}

absl::StatusOr<PoolLayer::Axes> PoolLayer::ResolveAxes(int rank) const {
  if (absl::Status st = Validate(kind_, o_); !st.ok()) return st;
  Axes a;
  auto bc = BatchAndChannelAxes(name(), o_.batch_axis, o_.channel_axis, rank);
  if (!bc.ok()) return bc.status();
  a.batch = bc->first;
  a.channel = bc->second;
  a.spatial = SpatialAxes(rank, a.batch, a.channel);
  if (o_.window_shape.size() != a.spatial.size()) {
    return LayerError(name(), "window_shape",
                      absl::StrCat("has ", o_.window_shape.size(), " entries but inputs of rank ", rank,
                                   " have ", a.spatial.size(), " spatial axes"));
  }
  a.window = o_.window_shape;
  a.strides = *PerAxis(name(), "strides", o_.strides, a.window.size(), 1);
  return a;
}

absl::StatusOr<Shape> PoolLayer::PooledShape(const Shape& in) const {
  auto a = ResolveAxes(static_cast<int>(in.size()));
  if (!a.ok()) return a.status();
  Shape out = in;
  for (size_t i = 0; i < a->spatial.size(); ++i) {
    const int ax = a->spatial[i];
    const AxisGeometry g = ForwardGeometry(o_.padding, in[ax], a->window[i], a->strides[i]);
    if (g.out <= 0) {
      return LayerError(name(), "window_shape",
                        absl::StrCat("entry ", i, " (", a->window[i], ") exceeds the input size ", in[ax],
                                     " of axis ", ax, " with VALID padding"));
    }
    out[ax] = g.out;
  }
  return out;
}

absl::StatusOr<ShapeFlow> PoolLayer::OutputShape(const ShapeFlow& in) const {
  if (absl::Status st = ExpectSingle(name(), in.is_list, in.items.size()); !st.ok()) return st;
  auto out = PooledShape(in.single());
  if (!out.ok()) return out.status();
  return ShapeFlow::Single(*std::move(out));
}

AxisMatrix PoolLayer::PoolMatrix(int64_t n, int64_t window, int64_t stride, bool squared) const {
  const AxisTaps taps = ForwardTaps(o_.padding, n, window, stride);
  std::vector<Real> weight(taps.n_out, 1.0);
  if (kind_ == PoolKind::kAvg) {
    const bool per_row = o_.padding == Padding::kSame && o_.normalize_edges;
    for (int64_t j = 0; j < taps.n_out; ++j) {
      Real nu = static_cast<Real>(window);
      if (per_row) {
        int64_t count = 0;
        for (int64_t f = 0; f < window; ++f) count += taps.at(j, f) >= 0;
        nu = static_cast<Real>(std::max<int64_t>(count, 1));
      }
      weight[j] = squared ? 1.0 / (nu * nu) : 1.0 / nu;
    }
  }
  return TapsMatrix(taps, weight);
}

absl::StatusOr<ArrayFlow> PoolLayer::Apply(const Params&, const ArrayFlow& xf) const {
  if (absl::Status st = ExpectSingle(name(), xf.is_list, xf.items.size()); !st.ok()) return st;
  const Array& x = xf.single();
  if (auto out = PooledShape(x.shape()); !out.ok()) return out.status();
  const Axes a = *ResolveAxes(x.rank());
  // Separable: the window (and its normaliser) factorises over the spatial axes.
  Array y = x;
  for (size_t i = 0; i < a.spatial.size(); ++i) {
    y = ApplyAlongAxis(y, a.spatial[i], PoolMatrix(x.dim(a.spatial[i]), a.window[i], a.strides[i], false));
  }
  return ArrayFlow::Single(std::move(y));
}

absl::StatusOr<Layer::Linearized> PoolLayer::Linearize(const Params& params, const ArrayFlow& xf) const {
  auto y = Apply(params, xf);
  if (!y.ok()) return y.status();
  const Array& x = xf.single();
  const Axes a = *ResolveAxes(x.rank());
  // The per-axis maps act on different axes and commute: their transposes apply in any order.
  auto adjoints = std::make_shared<std::vector<std::pair<int, AxisMatrix>>>();
  for (size_t i = 0; i < a.spatial.size(); ++i) {
    adjoints->emplace_back(a.spatial[i],
                           Adjoint(PoolMatrix(x.dim(a.spatial[i]), a.window[i], a.strides[i], false)));
  }
  Pullback pullback = [layer = name(), adjoints,
                       out = y->single().shape()](const ArrayFlow& dy) -> absl::StatusOr<Cotangents> {
    if (absl::Status st = ExpectCotangent(layer, dy, out); !st.ok()) return st;
    Array dx = dy.single();
    for (const auto& [axis, m] : *adjoints) dx = ApplyAlongAxis(dx, axis, m);
    return Cotangents{ArrayFlow::Single(std::move(dx)), Params{}};
  };
  return Linearized{*std::move(y), std::move(pullback)};
}

absl::StatusOr<MaskFlow> PoolLayer::MaskFn(const MaskFlow& masks, const ShapeFlow& shapes) const {
  MaskFlow out = masks;
  for (size_t idx = 0; idx < out.items.size(); ++idx) {
    std::optional<Array>& m = out.items[idx];
    if (!m) continue;
    const Shape& shape = shapes.items[idx];
    auto a = ResolveAxes(static_cast<int>(shape.size()));
    if (!a.ok()) return a.status();
    if (m->rank() == static_cast<int>(shape.size()) && m->dim(a->channel) != 1) {
      return LayerUnimplemented(name(),
                                "masks that differ between channels are not supported as inputs to pooling "
                                "layers (upstream neither): put a Dense/Conv layer first");
    }
    auto full = Broadcast(name(), *m, shape, a->channel);
    if (!full.ok()) return full.status();
    Array r = *std::move(full);
    for (size_t i = 0; i < a->spatial.size(); ++i) {
      const int ax = a->spatial[i];
      const int64_t n = shape[ax], w = a->window[i], s = a->strides[i];
      // Upstream derives the mask geometry from reduce_window, where CIRCULAR is not a valid padding
      // (it fails there); CIRCULAR has SAME's output sizes and pads, so use those.
      const Padding p = o_.padding == Padding::kCircular ? Padding::kSame : o_.padding;
      const AxisGeometry g = ForwardGeometry(p, n, w, s);
      if (g.out == n) continue;  // Upstream leaves such axes untouched (the slice is the identity).
      // Each output position takes the mask of the element at offset (w - 1) / 2 of its window.
      AxisMatrix pick{n, g.out, {}};
      pick.rows.resize(g.out);
      const int64_t start = -g.lo + (w - 1) / 2;
      for (int64_t j = 0; j < g.out; ++j) {
        pick.rows[j].emplace_back(std::clamp<int64_t>(start + j * s, 0, n - 1), 1.0);
      }
      r = ApplyAlongAxis(r, ax, pick);
    }
    m = std::move(r);
  }
  return out;
}

absl::Status PoolLayer::TransformKernel(KernelFlow* kf, const KernelContext&) const {
  if (absl::Status st = ExpectSingle(name(), kf->is_list, kf->items.size()); !st.ok()) return st;
  Kernel& k = kf->single();
  NaturalOrder(&k);
  const int rank = static_cast<int>(k.shape1.size());
  auto a = ResolveAxes(rank);
  if (!a.ok()) return a.status();
  if (auto out = PooledShape(k.shape1); !out.ok()) return out.status();
  const int num_spatial = static_cast<int>(a->spatial.size());
  // Full layout: the forward map M on both members of each axis pair (M T M^T). Diagonal layout (only
  // meaningful when off-diagonals vanish): the window sum with the normaliser squared.
  std::vector<AxisMatrix> maps;
  for (int i = 0; i < num_spatial; ++i) {
    maps.push_back(
        PoolMatrix(k.shape1[a->spatial[i]], a->window[i], a->strides[i], /*squared=*/k.diagonal_spatial));
  }
  absl::Status status;
  ForEachKernelArray(&k, [&](Array* t, int batch_axes) {
    const int per_axis = k.diagonal_spatial ? 1 : 2;
    if (t->rank() != batch_axes + per_axis * num_spatial) {
      status = absl::InternalError(absl::StrCat(name(), ": kernel array of shape ", ShapeToString(t->shape()),
                                                " does not match activations of rank ", rank));
      return;
    }
    for (int i = 0; i < num_spatial; ++i) {
      for (int c = 0; c < per_axis; ++c) {
        const int axis = batch_axes + per_axis * i + c;
        if (t->dim(axis) != maps[i].n_in) {
          status =
              absl::InternalError(absl::StrCat(name(), ": kernel array of shape ", ShapeToString(t->shape()),
                                               " does not match the activation "
                                               "shape ",
                                               ShapeToString(k.shape1)));
          return;
        }
        *t = ApplyAlongAxis(*t, axis, maps[i]);
      }
    }
  });
  return status;
}

// ----------------------------------------------------------------------------------------------------
// GlobalAvgPool / GlobalSumPool

Requirements GlobalPoolLayer::requirements() const {
  Requirements r;
  r.diagonal_spatial = Diagonal{Bool::kMaybe, Bool::kYes};
  r.batch_axis = o_.batch_axis;
  r.channel_axis = o_.channel_axis;
  return r;
}

absl::StatusOr<std::pair<int, int>> GlobalPoolLayer::ResolveAxes(int rank) const {
  return BatchAndChannelAxes(name(), o_.batch_axis, o_.channel_axis, rank);
}

absl::StatusOr<ShapeFlow> GlobalPoolLayer::OutputShape(const ShapeFlow& in) const {
  if (absl::Status st = ExpectSingle(name(), in.is_list, in.items.size()); !st.ok()) return st;
  const Shape& s = in.single();
  auto bc = ResolveAxes(static_cast<int>(s.size()));
  if (!bc.ok()) return bc.status();
  const auto [lo, hi] = std::minmax(bc->first, bc->second);
  return ShapeFlow::Single(Shape{s[lo], s[hi]});
}

absl::StatusOr<Array> GlobalPoolLayer::Pool(const Array& x, const Array* mask, Array* scale) const {
  const int rank = x.rank();
  auto bc = ResolveAxes(rank);
  if (!bc.ok()) return bc.status();
  const auto [b, c] = *bc;
  const auto [lo, hi] = std::minmax(b, c);
  std::optional<Array> full_mask;
  if (mask) {
    auto m = Broadcast(name(), *mask, x.shape(), -1);
    if (!m.ok()) return m.status();
    full_mask = *std::move(m);
  }
  const int64_t d_hi = x.dim(hi);
  Array sum({x.dim(lo), d_hi}, 0.0), masked({x.dim(lo), d_hi}, 0.0);
  std::vector<int64_t> idx(rank, 0);
  for (int64_t e = 0; e < x.size(); ++e) {
    const int64_t o = idx[lo] * d_hi + idx[hi];
    sum[o] += x[e];
    if (full_mask && (*full_mask)[e] != 0) masked[o] += 1;
    for (int a = rank - 1; a >= 0; --a) {
      if (++idx[a] < x.dim(a)) break;
      idx[a] = 0;
    }
  }
  if (kind_ == PoolKind::kAvg) {
    const Real p = static_cast<Real>(x.size()) / static_cast<Real>(std::max<int64_t>(sum.size(), 1));
    // Upstream's masked mean: the sum over all entries (masked ones are zero) over the unmasked count.
    for (int64_t o = 0; o < sum.size(); ++o) sum[o] /= std::max<Real>(p - masked[o], 1);
  }
  if (scale) {
    *scale = Array(sum.shape(), 1.0);
    if (kind_ == PoolKind::kAvg) {
      const Real p = static_cast<Real>(x.size()) / static_cast<Real>(std::max<int64_t>(sum.size(), 1));
      for (int64_t o = 0; o < sum.size(); ++o) (*scale)[o] = Real(1) / std::max<Real>(p - masked[o], 1);
    }
  }
  return sum;
}

absl::StatusOr<Layer::Linearized> GlobalPoolLayer::LinearizePool(const Array& x,
                                                                 const std::optional<Array>& mask) const {
  auto scale = std::make_shared<Array>();
  auto y = Pool(x, mask ? &*mask : nullptr, scale.get());
  if (!y.ok()) return y.status();
  const auto [b, c] = *ResolveAxes(x.rank());
  const auto [lo, hi] = std::minmax(b, c);
  auto in_mask = mask ? std::make_shared<const Array>(*mask) : nullptr;
  Pullback pullback = [layer = name(), scale = std::shared_ptr<const Array>(std::move(scale)), in_mask,
                       shape = x.shape(), out = y->shape(), lo = lo,
                       hi = hi](const ArrayFlow& dyf) -> absl::StatusOr<Cotangents> {
    if (absl::Status st = ExpectCotangent(layer, dyf, out); !st.ok()) return st;
    const Array& dy = dyf.single();
    // Every input entry feeds its (batch, channel) output once, with that output's factor.
    Array dx = Array::Uninitialized(shape);
    const int rank = static_cast<int>(shape.size());
    const int64_t d_hi = shape[hi];
    std::vector<int64_t> idx(rank, 0);
    for (int64_t e = 0; e < dx.size(); ++e) {
      const int64_t o = idx[lo] * d_hi + idx[hi];
      dx[e] = dy[o] * (*scale)[o];
      for (int a = rank - 1; a >= 0; --a) {
        if (++idx[a] < shape[a]) break;
        idx[a] = 0;
      }
    }
    if (in_mask) ZeroWhereMasked(*in_mask, &dx);  // Masked inputs never reach the output.
    return Cotangents{ArrayFlow::Single(std::move(dx)), Params{}};
  };
  return Linearized{ArrayFlow::Single(*std::move(y)), std::move(pullback)};
}

absl::StatusOr<Layer::Linearized> GlobalPoolLayer::Linearize(const Params&, const ArrayFlow& xf) const {
  if (absl::Status st = ExpectSingle(name(), xf.is_list, xf.items.size()); !st.ok()) return st;
  return LinearizePool(xf.single(), std::nullopt);
}

absl::StatusOr<Layer::LinearizedMasked> GlobalPoolLayer::LinearizeMasked(const Params& params,
                                                                         const ArrayFlow& xf,
                                                                         const MaskFlow& masks,
                                                                         const ApplyContext& ctx) const {
  if (absl::Status st = ExpectSingle(name(), xf.is_list, xf.items.size()); !st.ok()) return st;
  const std::optional<Array>* mask = masks.items.empty() ? nullptr : &masks.items.front();
  if (!mask || !*mask) return Layer::LinearizeMasked(params, xf, masks, ctx);
  // As ApplyMasked: the masked mean over the zeroed input.
  Array x = xf.single();
  auto out_masks = MaskFn(masks, ShapeFlow::Single(x.shape()));
  if (!out_masks.ok()) return out_masks.status();
  ZeroWhereMasked(**mask, &x);
  auto lin = LinearizePool(x, *mask);
  if (!lin.ok()) return lin.status();
  return LinearizedMasked{Masked{std::move(lin->y), *std::move(out_masks)}, std::move(lin->pullback)};
}

absl::StatusOr<ArrayFlow> GlobalPoolLayer::Apply(const Params&, const ArrayFlow& xf) const {
  if (absl::Status st = ExpectSingle(name(), xf.is_list, xf.items.size()); !st.ok()) return st;
  auto y = Pool(xf.single(), nullptr);
  if (!y.ok()) return y.status();
  return ArrayFlow::Single(*std::move(y));
}

absl::StatusOr<Layer::Masked> GlobalPoolLayer::ApplyMasked(const Params& params, const ArrayFlow& xf,
                                                           const MaskFlow& masks) const {
  if (absl::Status st = ExpectSingle(name(), xf.is_list, xf.items.size()); !st.ok()) return st;
  const std::optional<Array>* mask = masks.items.empty() ? nullptr : &masks.items.front();
  if (!mask || !*mask) return Layer::ApplyMasked(params, xf, masks);
  Array x = xf.single();
  ShapeFlow shapes = ShapeFlow::Single(x.shape());
  auto out_masks = MaskFn(masks, shapes);
  if (!out_masks.ok()) return out_masks.status();
  ZeroWhereMasked(**mask, &x);
  auto y = Pool(x, &**mask);
  if (!y.ok()) return y.status();
  return Masked{ArrayFlow::Single(*std::move(y)), *std::move(out_masks)};
}

absl::StatusOr<MaskFlow> GlobalPoolLayer::MaskFn(const MaskFlow& masks, const ShapeFlow& /*shapes*/) const {
  MaskFlow out = masks;
  for (size_t idx = 0; idx < out.items.size(); ++idx) {
    std::optional<Array>& m = out.items[idx];
    if (!m) continue;
    auto bc = ResolveAxes(m->rank());
    if (!bc.ok()) return bc.status();
    const auto [b, c] = *bc;
    if (m->dim(c) != 1) {
      return LayerUnimplemented(name(),
                                "masks that differ between channels are not supported as inputs to pooling "
                                "layers (upstream neither): put a Dense/Conv layer first");
    }
    Array r = *m;
    for (int a = 0; a < r.rank(); ++a) {
      if (a != b && a != c) r = AllAlongAxis(r, a);
    }
    const auto [lo, hi] = std::minmax(b, c);
    m = std::move(r).Reshaped({m->dim(lo), m->dim(hi)});
  }
  return out;
}

absl::Status GlobalPoolLayer::TransformKernel(KernelFlow* kf, const KernelContext&) const {
  if (absl::Status st = ExpectSingle(name(), kf->is_list, kf->items.size()); !st.ok()) return st;
  Kernel& k = kf->single();
  const int rank = static_cast<int>(k.shape1.size());
  auto bc = ResolveAxes(rank);
  if (!bc.ok()) return bc.status();
  const auto [b, c] = *bc;
  int64_t p = 1;
  for (int a = 0; a < rank; ++a) {
    if (a != b && a != c) p *= k.shape1[a];
  }
  // Unmasked positions per sample (N, P) for the masked average; the spatial order is irrelevant.
  const bool masked = kind_ == PoolKind::kAvg && (k.mask1 || k.mask2);
  Array pm1, pm2;
  if (masked) {
    auto positions = [&](const std::optional<Array>& m, const Shape& shape) -> absl::StatusOr<Array> {
      Shape s = shape;
      s[k.channel_axis] = 1;
      if (!m) return PositionMask(Array(s, 0.0), k);
      auto full = Broadcast(name(), *m, shape, k.channel_axis);
      if (!full.ok()) return full.status();
      return PositionMask(*full, k);
    };
    auto m1 = positions(k.mask1, k.shape1);
    if (!m1.ok()) return m1.status();
    pm1 = *std::move(m1);
    if (k.mask2) {
      auto m2 = positions(k.mask2, k.shape2);
      if (!m2.ok()) return m2.status();
      pm2 = *std::move(m2);
    } else {
      pm2 = pm1;  // As MaskKernel: a missing second mask means the first one.
    }
  }
  // Number of unmasked (p, p') pairs (full layout) or positions (diagonal layout) of rows i of a, j of b.
  auto unmasked = [&](const Array& a, int64_t i, const Array& bm, int64_t j) {
    int64_t ua = 0, ub = 0, both = 0;
    for (int64_t q = 0; q < p; ++q) {
      const bool fa = a[i * p + q] == 0, fb = bm[j * p + q] == 0;
      ua += fa;
      ub += fb;
      both += fa && fb;
    }
    return k.diagonal_spatial ? static_cast<Real>(both) : static_cast<Real>(ua) * static_cast<Real>(ub);
  };
  const Real pd = static_cast<Real>(p);
  auto pool = [&](Array* t, int batch_axes, const Array* ma, const Array* mb) {
    const Shape lead(t->shape().begin(), t->shape().begin() + batch_axes);
    const int64_t rows = NumElements(lead);
    const int64_t inner = rows > 0 ? t->size() / rows : 0;
    Array out(lead, 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      Real s = 0;
      for (int64_t e = 0; e < inner; ++e) s += (*t)[r * inner + e];
      if (kind_ == PoolKind::kAvg) {
        Real count = k.diagonal_spatial ? pd : pd * pd;
        if (ma) {
          // Row r covers batch entries (i, j), or (i, i) for a diagonal-batch covariance.
          const int64_t cols = batch_axes == 2 ? t->dim(1) : 1;
          const int64_t i = r / cols, j = batch_axes == 2 ? r % cols : i;
          count = std::max<Real>(unmasked(*ma, i, *mb, j), 1);
        }
        // Diagonal layout: the mean of independent terms has the variance divided by P once more.
        s /= count * (k.diagonal_spatial ? pd : 1.0);
      }
      out[r] = s;
    }
    *t = std::move(out);
  };
  pool(&k.nngp, 2, masked ? &pm1 : nullptr, masked ? &pm2 : nullptr);
  if (k.ntk && k.ntk->rank() > 0) pool(&*k.ntk, 2, masked ? &pm1 : nullptr, masked ? &pm2 : nullptr);
  const int cb = CovBatchAxes(k);
  pool(&k.cov1, cb, masked ? &pm1 : nullptr, masked ? &pm1 : nullptr);
  if (k.cov2) pool(&*k.cov2, cb, masked ? &pm2 : nullptr, masked ? &pm2 : nullptr);
  if (k.cov_diagonal_only) {
    // Their off-diagonal entries were never computed (the engine asks for this only as the last layer
    // of a network whose covariances are not requested): make any use of them visible.
    for (Real& v : k.cov1.vec()) v = std::numeric_limits<Real>::quiet_NaN();
    if (k.cov2) {
      for (Real& v : k.cov2->vec()) v = std::numeric_limits<Real>::quiet_NaN();
    }
    k.cov_diagonal_only = false;
  }
  const bool batch_first = b < c;
  k.batch_axis = batch_first ? 0 : 1;
  k.channel_axis = batch_first ? 1 : 0;
  k.is_reversed = false;
  return absl::OkStatus();
}

}  // namespace NT_CORE_NS
