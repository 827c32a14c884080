#include "core/aggregate.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/spatial.h"

namespace NT_CORE_NS {
namespace {

constexpr char kName[] = "Aggregate";

}  // namespace

Requirements AggregateLayer::requirements() const {
  Requirements r;
  r.batch_axis = o_.batch_axis;
  r.channel_axis = o_.channel_axis;
  r.diagonal_spatial = Diagonal{Bool::kNo, Bool::kNo};
  return r;
}

absl::StatusOr<std::vector<int>> AggregateLayer::Axes(const Shape& shape) const {
  const int rank = static_cast<int>(shape.size());
  auto bc = BatchAndChannelAxes(kName, o_.batch_axis, o_.channel_axis, rank);
  if (!bc.ok()) return bc.status();
  if (!o_.aggregate_axis) return SpatialAxes(rank, bc->first, bc->second);
  std::vector<int> axes;
  for (int a : *o_.aggregate_axis) {
    const int c = ((a % rank) + rank) % rank;  // Upstream takes the axes modulo the rank.
    if (c == bc->first || c == bc->second) {
      return LayerError(kName, "aggregate_axis",
                        absl::StrCat("axis ", a, " is the ", c == bc->first ? "batch" : "channel",
                                     " axis; only spatial axes can be aggregated"));
    }
    axes.push_back(c);
  }
  std::sort(axes.begin(), axes.end());
  axes.erase(std::unique(axes.begin(), axes.end()), axes.end());
  return axes;
}

absl::StatusOr<ShapeFlow> AggregateLayer::OutputShape(const ShapeFlow& in) const {
  if (absl::Status st = ExpectSingle(kName, in.is_list, in.items.size()); !st.ok()) return st;
  if (auto axes = Axes(in.single()); !axes.ok()) return axes.status();
  return in;
}

absl::StatusOr<std::vector<PositionMatrix>> AggregateLayer::Adjacency(const Array& pattern,
                                                                      const Shape& shape,
                                                                      const std::string& field) const {
  auto axes_or = Axes(shape);
  if (!axes_or.ok()) return axes_or.status();
  const std::vector<int>& axes = *axes_or;
  const int rank = static_cast<int>(shape.size());
  const int b = ((o_.batch_axis % rank) + rank) % rank;
  const int64_t n = shape[b];
  Shape agg;
  int64_t v = 1;
  for (int a : axes) {
    agg.push_back(shape[a]);
    v *= shape[a];
  }
  const int k = static_cast<int>(axes.size());
  std::vector<PositionMatrix> mats(n, PositionMatrix::Zero(v, v));
  if (pattern.rank() == 0 || pattern.dim(0) != n) {
    return LayerError(kName, field,
                      absl::StrCat("leading axis of the pattern (shape ", ShapeToString(pattern.shape()),
                                   ") must be the batch size ", n));
  }
  if (o_.implementation == AggregateImplementation::kDense) {
    Shape want{n};
    want.insert(want.end(), agg.begin(), agg.end());
    want.insert(want.end(), agg.begin(), agg.end());
    if (pattern.shape() != want) {
      // Without the batch size: this may be a tile's share of the samples.
      auto tail = [](const Shape& s) {
        return absl::StrCat("(batch", s.size() > 1 ? ", " : "",
                            ShapeToString(Shape(s.begin() + 1, s.end())).substr(1));
      };
      return LayerError(kName, field,
                        absl::StrCat("a DENSE pattern must have shape (batch, *aggregated, *aggregated) = ",
                                     tail(want), ", got ", tail(pattern.shape())));
    }
    for (int64_t e = 0; e < pattern.size(); ++e) {
      if (!std::isfinite(pattern[e])) {
        return LayerError(kName, field, absl::StrCat("entry ", e, " is not finite"));
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      mats[i] = Eigen::Map<const PositionMatrix>(pattern.data() + i * v * v, v, v);
    }
    return mats;
  }
  // SPARSE: (batch, n_edges, K, 2), or (batch, n_edges, 2) when K = 1.
  const bool squeezed = k == 1 && pattern.rank() == 3;
  if (pattern.dim(pattern.rank() - 1) != 2 || (!squeezed && (pattern.rank() != 4 || pattern.dim(2) != k))) {
    return LayerError(kName, field,
                      absl::StrCat("a SPARSE pattern must have shape (batch, n_edges, ", k,
                                   ", 2) of (tail, head) coordinates, got ", ShapeToString(pattern.shape())));
  }
  const int64_t edges = pattern.dim(1);
  // Ravel of the coordinates (wrapped modulo the axis sizes); -1 when any is negative.
  auto vertex = [&](const Real* coords, int stride) -> int64_t {
    int64_t id = 0;
    for (int d = 0; d < k; ++d) {
      const Real c = coords[d * stride];
      if (c < 0) return -1;
      id = id * agg[d] + static_cast<int64_t>(c) % agg[d];
    }
    return id;
  };
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t e = 0; e < edges; ++e) {
      const Real* edge = pattern.data() + (i * edges + e) * k * 2;
      for (int d = 0; d < 2 * k; ++d) {
        if (edge[d] != std::floor(edge[d]) || !std::isfinite(edge[d])) {
          return LayerError(kName, field, "a SPARSE pattern must hold integer vertex coordinates");
        }
      }
      const int64_t tail = vertex(edge, 2), head = vertex(edge + 1, 2);
      // Edges with a masked (negative) endpoint are dropped.
      if (tail >= 0 && head >= 0) mats[i](tail, head) += 1;
    }
  }
  return mats;
}

absl::StatusOr<Array> AggregateLayer::Aggregate(const Array& x, const Array& pattern) const {
  auto mats = Adjacency(pattern, x.shape(), "pattern");
  if (!mats.ok()) return mats.status();
  auto axes = Axes(x.shape());
  if (!axes.ok()) return axes.status();
  return AggregateWith(x, *mats, *axes, o_.batch_axis, false);
}

Array AggregateLayer::AggregateWith(const Array& x, const std::vector<PositionMatrix>& mats,
                                    const std::vector<int>& axes, int batch_axis, bool transposed) {
  const int rank = x.rank();
  const int b = ((batch_axis % rank) + rank) % rank;
  // (batch, other axes, aggregated axes): y_n = x_n A_n on the trailing block.
  std::vector<int> perm{b};
  for (int a = 0; a < rank; ++a) {
    if (a != b && !std::count(axes.begin(), axes.end(), a)) perm.push_back(a);
  }
  perm.insert(perm.end(), axes.begin(), axes.end());
  const Array xt = Transpose(x, perm);
  const int64_t n = x.dim(b);
  const int64_t v = mats[0].rows();
  const int64_t rows = x.size() / std::max<int64_t>(n * v, 1);
  Array yt = Array::Uninitialized(xt.shape());
  for (int64_t i = 0; i < n; ++i) {
    Eigen::Map<const PositionMatrix> xi(xt.data() + i * rows * v, rows, v);
    Eigen::Map<PositionMatrix> yi(yt.data() + i * rows * v, rows, v);
    if (transposed) {
      yi.noalias() = xi * mats[i].transpose();
    } else {
      yi.noalias() = xi * mats[i];
    }
  }
  std::vector<int> back(rank);
  for (int i = 0; i < rank; ++i) back[perm[i]] = i;
  return Transpose(yt, back);
}

absl::StatusOr<ArrayFlow> AggregateLayer::Apply(const Params&, const ArrayFlow& x) const {
  if (absl::Status st = ExpectSingle(kName, x.is_list, x.items.size()); !st.ok()) return st;
  if (auto axes = Axes(x.single().shape()); !axes.ok()) return axes.status();
  return x;
}

absl::StatusOr<Layer::Masked> AggregateLayer::ApplyMasked(const Params& params, const ArrayFlow& x,
                                                          const MaskFlow& masks,
                                                          const ApplyContext& ctx) const {
  if (!ctx.pattern) return Layer::ApplyMasked(params, x, masks, ctx);
  if (absl::Status st = ExpectSingle(kName, x.is_list, x.items.size()); !st.ok()) return st;
  Array zeroed = x.single();
  if (!masks.items.empty() && masks.items[0]) ZeroWhereMasked(*masks.items[0], &zeroed);
  auto y = Aggregate(zeroed, *ctx.pattern);
  if (!y.ok()) return y.status();
  return Masked{ArrayFlow::Single(*std::move(y)), masks};
}

absl::StatusOr<Layer::Linearized> AggregateLayer::Linearize(const Params&, const ArrayFlow& x) const {
  // Without a pattern: the identity.
  if (absl::Status st = ExpectSingle(kName, x.is_list, x.items.size()); !st.ok()) return st;
  if (auto axes = Axes(x.single().shape()); !axes.ok()) return axes.status();
  const Shape shape = x.single().shape();
  Pullback pullback = [shape](const ArrayFlow& dy) -> absl::StatusOr<Cotangents> {
    if (absl::Status st = ExpectSingle(kName, dy.is_list, dy.items.size()); !st.ok()) return st;
    if (dy.single().shape() != shape) {
      return LayerError(kName, "",
                        absl::StrCat("output cotangent of shape ", ShapeToString(dy.single().shape()),
                                     " for outputs of shape ", ShapeToString(shape)));
    }
    return Cotangents{dy, Params{}};
  };
  return Linearized{x, std::move(pullback)};
}

absl::StatusOr<Layer::LinearizedMasked> AggregateLayer::LinearizeMasked(const Params& params,
                                                                        const ArrayFlow& x,
                                                                        const MaskFlow& masks,
                                                                        const ApplyContext& ctx) const {
  if (!ctx.pattern) return Layer::LinearizeMasked(params, x, masks, ctx);
  // As ApplyMasked with a pattern.
  if (absl::Status st = ExpectSingle(kName, x.is_list, x.items.size()); !st.ok()) return st;
  Array zeroed = x.single();
  std::optional<Array> mask;
  if (!masks.items.empty() && masks.items[0]) {
    mask = *masks.items[0];
    ZeroWhereMasked(*mask, &zeroed);
  }
  auto mats = Adjacency(*ctx.pattern, zeroed.shape(), "pattern");
  if (!mats.ok()) return mats.status();
  auto axes = Axes(zeroed.shape());
  if (!axes.ok()) return axes.status();
  Array y = AggregateWith(zeroed, *mats, *axes, o_.batch_axis, false);
  const Shape shape = zeroed.shape();
  const int batch_axis = o_.batch_axis;
  // y = x A per sample, so dx = dy A^T; masked inputs were zeroed before use.
  Pullback pullback = [mats = std::make_shared<const std::vector<PositionMatrix>>(*std::move(mats)),
                       axes = *std::move(axes), shape, mask,
                       batch_axis](const ArrayFlow& dy) -> absl::StatusOr<Cotangents> {
    if (absl::Status st = ExpectSingle(kName, dy.is_list, dy.items.size()); !st.ok()) return st;
    if (dy.single().shape() != shape) {
      return LayerError(kName, "",
                        absl::StrCat("output cotangent of shape ", ShapeToString(dy.single().shape()),
                                     " for outputs of shape ", ShapeToString(shape)));
    }
    Array dx = AggregateWith(dy.single(), *mats, axes, batch_axis, true);
    if (mask) ZeroWhereMasked(*mask, &dx);
    return Cotangents{ArrayFlow::Single(std::move(dx)), Params{}};
  };
  return LinearizedMasked{Masked{ArrayFlow::Single(std::move(y)), masks}, std::move(pullback)};
}

absl::Status AggregateLayer::TransformKernel(KernelFlow* kf, const KernelContext& ctx) const {
  Kernel& k = kf->single();
  if (!ctx.pattern1 && !ctx.pattern2) return absl::OkStatus();  // Upstream's (None, None): the identity.
  if (!ctx.pattern1 || !ctx.pattern2) {
    return LayerUnimplemented(kName, "pattern1 and pattern2 must be both given or both absent");
  }
  NaturalOrder(&k);
  auto a1 = Adjacency(*ctx.pattern1, k.shape1, "pattern1");
  if (!a1.ok()) return a1.status();
  auto a2 = Adjacency(*ctx.pattern2, k.shape2, "pattern2");
  if (!a2.ok()) return a2.status();
  // y = A^T x on positions: the left and right maps are the transposed adjacencies.
  std::vector<PositionMatrix> t1, t2;
  for (const PositionMatrix& m : *a1) t1.push_back(m.transpose());
  for (const PositionMatrix& m : *a2) t2.push_back(m.transpose());
  const PositionMatrixFn left = [&t1](int64_t i) -> const PositionMatrix& { return t1[i]; };
  const PositionMatrixFn right = [&t2](int64_t i) -> const PositionMatrix& { return t2[i]; };
  auto axes = Axes(k.shape1);
  const std::vector<int> spatial =
      SpatialAxes(static_cast<int>(k.shape1.size()), k.batch_axis, k.channel_axis);
  Shape sizes, out_sizes;
  std::vector<int> mapped;
  for (size_t d = 0; d < spatial.size(); ++d) {
    sizes.push_back(k.shape1[spatial[d]]);
    if (std::count(axes->begin(), axes->end(), spatial[d])) {
      mapped.push_back(static_cast<int>(d));
      out_sizes.push_back(k.shape1[spatial[d]]);
    }
  }
  auto map = [&](Array* a, int lead, const PositionMatrixFn& l, const PositionMatrixFn& r) {
    *a = MapPositionPairs(*a, lead, sizes, mapped, out_sizes, l, r);
  };
  map(&k.nngp, 2, left, right);
  if (k.ntk && k.ntk->rank() > 0) map(&*k.ntk, 2, left, right);
  const int lead = CovBatchAxes(k);
  map(&k.cov1, lead, left, left);
  if (k.cov2) map(&*k.cov2, lead, right, right);
  return absl::OkStatus();
}

}  // namespace NT_CORE_NS
