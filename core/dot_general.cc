#include "core/dot_general.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/spatial.h"

namespace NT_CORE_NS {
namespace {

constexpr char kName[] = "DotGeneral";

std::vector<int64_t> Strides(const Shape& s) {
  std::vector<int64_t> st(s.size(), 1);
  for (int i = static_cast<int>(s.size()) - 2; i >= 0; --i) st[i] = st[i + 1] * s[i + 1];
  return st;
}

bool Contains(const std::vector<int>& v, int a) { return std::find(v.begin(), v.end(), a) != v.end(); }

// `a` (each axis equal to `shape`'s or 1) broadcast to `shape`.
Array BroadcastTo(const Array& a, const Shape& shape) {
  if (a.shape() == shape) return a;
  Array out(shape);
  const std::vector<int64_t> out_strides = Strides(shape);
  const std::vector<int64_t> in_strides = Strides(a.shape());
  for (int64_t i = 0; i < out.size(); ++i) {
    int64_t src = 0, rest = i;
    for (size_t d = 0; d < shape.size(); ++d) {
      const int64_t c = rest / out_strides[d];
      rest %= out_strides[d];
      if (a.dim(static_cast<int>(d)) != 1) src += c * in_strides[d];
    }
    out[i] = a[src];
  }
  return out;
}

}  // namespace

absl::Status DotGeneralLayer::Validate(const DotGeneralOptions& o) {
  if (o.lhs && o.rhs) {
    return LayerError(kName, "lhs", "exactly one of lhs and rhs is the constant; both were given");
  }
  if (o.lhs_contracting.size() != o.rhs_contracting.size()) {
    return LayerError(kName, "dimension_numbers",
                      absl::StrCat("lhs and rhs contracting dimensions differ in number (",
                                   o.lhs_contracting.size(), " and ", o.rhs_contracting.size(), ")"));
  }
  if (o.lhs_batch.size() != o.rhs_batch.size()) {
    return LayerError(kName, "dimension_numbers",
                      absl::StrCat("lhs and rhs batch dimensions differ in number (", o.lhs_batch.size(),
                                   " and ", o.rhs_batch.size(), ")"));
  }
  for (const std::optional<Array>* c : {&o.lhs, &o.rhs}) {
    if (!*c) continue;
    for (int64_t i = 0; i < (*c)->size(); ++i) {
      if (!std::isfinite((**c)[i])) {
        return LayerError(kName, c == &o.lhs ? "lhs" : "rhs", absl::StrCat("entry ", i, " is not finite"));
      }
    }
  }
  const bool any_dims = !o.lhs_contracting.empty() || !o.lhs_batch.empty();
  if (!o.lhs && !o.rhs && any_dims) {
    return LayerError(kName, "dimension_numbers", "given without a constant lhs or rhs");
  }
  for (int side = 0; side < 2; ++side) {
    const std::vector<int>& c = side == 0 ? o.lhs_contracting : o.rhs_contracting;
    const std::vector<int>& b = side == 0 ? o.lhs_batch : o.rhs_batch;
    std::set<int> seen;
    for (int a : c) seen.insert(a);
    for (int a : b) seen.insert(a);
    const char* which = side == 0 ? "lhs" : "rhs";
    if (seen.size() != c.size() + b.size()) {
      return LayerError(kName, "dimension_numbers",
                        absl::StrCat(which, " contracting and batch dimensions must be distinct"));
    }
    if (!seen.empty() && *seen.begin() < 0) {
      return LayerError(kName, "dimension_numbers",
                        absl::StrCat(which, " dimensions must be non-negative, got ", *seen.begin()));
    }
    const std::optional<Array>& constant = side == 0 ? o.lhs : o.rhs;
    if (constant && !seen.empty() && *seen.rbegin() >= constant->rank()) {
      return LayerError(
          kName, "dimension_numbers",
          absl::StrCat(which, " dimension ", *seen.rbegin(), " is out of range for the constant ", which,
                       " of rank ", constant->rank()));
    }
  }
  return absl::OkStatus();
}

Requirements DotGeneralLayer::requirements() const {
  Requirements r;
  r.batch_axis = o_.batch_axis;
  r.channel_axis = o_.channel_axis;
  const std::vector<int>& xc = o_.rhs ? o_.lhs_contracting : o_.rhs_contracting;
  const bool only_batch = xc.empty() || (xc.size() == 1 && xc[0] == o_.batch_axis);
  r.diagonal_spatial = Diagonal{only_batch ? Bool::kYes : Bool::kNo, Bool::kNo};
  if (Contains(xc, o_.batch_axis)) r.diagonal_batch = false;
  return r;
}

absl::StatusOr<DotGeneralLayer::Geometry> DotGeneralLayer::Plan(const Shape& shape) const {
  Geometry g;
  const int rank = static_cast<int>(shape.size());
  const Array* c = constant();
  if (!c) {
    for (int i = 0; i < rank; ++i) g.out_axes.push_back({Geometry::kX, i});
    g.out_shape = shape;
    return g;
  }
  const bool x_is_lhs = o_.rhs.has_value();
  g.x_contracting = x_is_lhs ? o_.lhs_contracting : o_.rhs_contracting;
  g.c_contracting = x_is_lhs ? o_.rhs_contracting : o_.lhs_contracting;
  g.x_batch = x_is_lhs ? o_.lhs_batch : o_.rhs_batch;
  g.c_batch = x_is_lhs ? o_.rhs_batch : o_.lhs_batch;
  const char* x_side = x_is_lhs ? "lhs" : "rhs";
  for (int pass = 0; pass < 2; ++pass) {
    const std::vector<int>& xs = pass == 0 ? g.x_contracting : g.x_batch;
    const std::vector<int>& cs = pass == 0 ? g.c_contracting : g.c_batch;
    for (size_t i = 0; i < xs.size(); ++i) {
      if (xs[i] >= rank) {
        return LayerError(
            kName, "dimension_numbers",
            absl::StrCat(x_side, " dimension ", xs[i], " is out of range for inputs of rank ", rank));
      }
      if (shape[xs[i]] != c->dim(cs[i])) {
        return LayerError(kName, "dimension_numbers",
                          absl::StrCat(pass == 0 ? "contracting" : "batch", " dimension ", xs[i],
                                       " of the input has size ", shape[xs[i]], " but dimension ", cs[i],
                                       " of the constant has size ", c->dim(cs[i])));
      }
    }
  }
  for (size_t k = 0; k < g.x_batch.size(); ++k) {
    g.out_axes.push_back({Geometry::kBatch, static_cast<int>(k)});
    g.out_shape.push_back(shape[g.x_batch[k]]);
  }
  auto free_axes = [&](bool of_x) {
    const int r = of_x ? rank : c->rank();
    const std::vector<int>& cn = of_x ? g.x_contracting : g.c_contracting;
    const std::vector<int>& bt = of_x ? g.x_batch : g.c_batch;
    for (int a = 0; a < r; ++a) {
      if (Contains(cn, a) || Contains(bt, a)) continue;
      g.out_axes.push_back({of_x ? Geometry::kX : Geometry::kConstant, a});
      g.out_shape.push_back(of_x ? shape[a] : c->dim(a));
    }
  };
  free_axes(x_is_lhs);
  free_axes(!x_is_lhs);
  return g;
}

namespace {

// Where the terms of one contraction lie: output entry i is the sum over `contracted` (dx, dc) of
// x[xo + dx] * c[co + dc], with (xo, co) = Base(i).
struct ContractionOffsets {
  Shape out_shape;
  std::vector<int64_t> out_strides, x_step, c_step;
  std::vector<std::pair<int64_t, int64_t>> contracted;

  std::pair<int64_t, int64_t> Base(int64_t i) const {
    int64_t xo = 0, co = 0, rest = i;
    for (size_t d = 0; d < out_shape.size(); ++d) {
      const int64_t k = rest / out_strides[d];
      rest %= out_strides[d];
      xo += k * x_step[d];
      co += k * c_step[d];
    }
    return {xo, co};
  }
};

ContractionOffsets Offsets(const DotGeneralLayer::Geometry& g, const Shape& x_shape, const Array& c) {
  using Geometry = DotGeneralLayer::Geometry;
  ContractionOffsets o;
  for (const auto& [src, a] : g.out_axes) {
    o.out_shape.push_back(src == Geometry::kBatch ? x_shape[g.x_batch[a]]
                          : src == Geometry::kX   ? x_shape[a]
                                                  : c.dim(a));
  }
  const std::vector<int64_t> xs = Strides(x_shape), cs = Strides(c.shape());
  // Offsets into x and c of each output axis' coordinate and of every contracted index.
  for (const auto& [src, a] : g.out_axes) {
    o.x_step.push_back(src == Geometry::kBatch ? xs[g.x_batch[a]] : src == Geometry::kX ? xs[a] : 0);
    o.c_step.push_back(src == Geometry::kBatch ? cs[g.c_batch[a]] : src == Geometry::kConstant ? cs[a] : 0);
  }
  o.contracted = {{0, 0}};
  for (size_t i = 0; i < g.x_contracting.size(); ++i) {
    std::vector<std::pair<int64_t, int64_t>> next;
    for (int64_t j = 0; j < x_shape[g.x_contracting[i]]; ++j) {
      for (const auto& [xo, co] : o.contracted) {
        next.push_back({xo + j * xs[g.x_contracting[i]], co + j * cs[g.c_contracting[i]]});
      }
    }
    o.contracted = std::move(next);
  }
  o.out_strides = Strides(o.out_shape);
  return o;
}

}  // namespace

// The product is commutative: which side x is on only matters for the output axis order (g.out_axes).
Array DotGeneralLayer::Contract(const Geometry& g, const Array& x, const Array& c) {
  const ContractionOffsets o = Offsets(g, x.shape(), c);
  Array y(o.out_shape);
  for (int64_t i = 0; i < y.size(); ++i) {
    const auto [xo, co] = o.Base(i);
    Real sum = 0;
    for (const auto& [dx, dc] : o.contracted) sum += x[xo + dx] * c[co + dc];
    y[i] = sum;
  }
  return y;
}

Array DotGeneralLayer::ContractTransposed(const Geometry& g, const Array& dy, const Array& c,
                                          const Shape& x_shape) {
  const ContractionOffsets o = Offsets(g, x_shape, c);
  Array dx(x_shape);
  for (int64_t i = 0; i < dy.size(); ++i) {
    const auto [xo, co] = o.Base(i);
    const Real d = dy[i];
    for (const auto& [ox, oc] : o.contracted) dx[xo + ox] += d * c[co + oc];
  }
  return dx;
}

absl::StatusOr<ShapeFlow> DotGeneralLayer::OutputShape(const ShapeFlow& in) const {
  if (absl::Status st = ExpectSingle(kName, in.is_list, in.items.size()); !st.ok()) return st;
  auto g = Plan(in.single());
  if (!g.ok()) return g.status();
  return ShapeFlow::Single(g->out_shape);
}

absl::StatusOr<ArrayFlow> DotGeneralLayer::Apply(const Params&, const ArrayFlow& x) const {
  if (absl::Status st = ExpectSingle(kName, x.is_list, x.items.size()); !st.ok()) return st;
  auto g = Plan(x.single().shape());
  if (!g.ok()) return g.status();
  if (!constant()) return x;
  return ArrayFlow::Single(Contract(*g, x.single(), *constant()));
}

absl::StatusOr<Layer::Linearized> DotGeneralLayer::Linearize(const Params&, const ArrayFlow& x) const {
  if (absl::Status st = ExpectSingle(kName, x.is_list, x.items.size()); !st.ok()) return st;
  auto g = Plan(x.single().shape());
  if (!g.ok()) return g.status();
  const Shape x_shape = x.single().shape();
  // The constant is copied once, shared by every call of the pullback.
  std::shared_ptr<const Array> c = constant() ? std::make_shared<const Array>(*constant()) : nullptr;
  ArrayFlow y = c ? ArrayFlow::Single(Contract(*g, x.single(), *c)) : x;
  Pullback pullback = [g = *std::move(g), c, x_shape](const ArrayFlow& dy) -> absl::StatusOr<Cotangents> {
    if (absl::Status st = ExpectSingle(kName, dy.is_list, dy.items.size()); !st.ok()) return st;
    if (dy.single().shape() != g.out_shape) {
      return LayerError(kName, "",
                        absl::StrCat("output cotangent of shape ", ShapeToString(dy.single().shape()),
                                     " for outputs of shape ", ShapeToString(g.out_shape)));
    }
    if (!c) return Cotangents{dy, Params{}};  // The identity.
    return Cotangents{ArrayFlow::Single(ContractTransposed(g, dy.single(), *c, x_shape)), Params{}};
  };
  return Linearized{std::move(y), std::move(pullback)};
}

absl::StatusOr<MaskFlow> DotGeneralLayer::MaskFn(const MaskFlow& masks, const ShapeFlow& shapes) const {
  MaskFlow out = masks;
  if (!constant()) return out;
  Array reach(constant()->shape());  // Entries of the constant that connect an input to an output.
  for (int64_t i = 0; i < reach.size(); ++i) reach[i] = (*constant())[i] != 0 ? 1.0 : 0.0;
  for (size_t i = 0; i < masks.items.size(); ++i) {
    if (!masks.items[i]) continue;
    const Shape& shape = shapes.items[i];
    auto g = Plan(shape);
    if (!g.ok()) return g.status();
    // Broadcast to the input shape, keeping a channel size of 1 when the channel axis is free.
    Shape target = shape;
    const int rank = static_cast<int>(shape.size());
    const int ch = (o_.channel_axis % rank + rank) % rank;
    const Array& m = *masks.items[i];
    if (m.rank() == rank && m.dim(ch) == 1 && !Contains(g->x_contracting, ch) && !Contains(g->x_batch, ch)) {
      target[ch] = 1;
    }
    Array open = BroadcastTo(m, target);
    for (int64_t e = 0; e < open.size(); ++e) open[e] = open[e] != 0 ? 0.0 : 1.0;
    Array y = Contract(*g, open, reach);
    // Masked iff no unmasked input reaches the output through a non-zero entry of the constant.
    for (int64_t e = 0; e < y.size(); ++e) y[e] = y[e] > 0 ? 0.0 : 1.0;
    out.items[i] = std::move(y);
  }
  return out;
}

absl::Status DotGeneralLayer::TransformKernel(KernelFlow* kf, const KernelContext&) const {
  Kernel& k = kf->single();
  if (!constant()) return absl::OkStatus();
  NaturalOrder(&k);
  auto g = Plan(k.shape1);
  if (!g.ok()) return g.status();
  const int b = k.batch_axis, c = k.channel_axis;
  if (Contains(g->x_contracting, c) || Contains(g->x_batch, c)) {
    return LayerError(
        kName, "dimension_numbers",
        absl::StrCat("the channel axis ", c,
                     " cannot be contracted or a batch dimension: the kernel sums over channels"));
  }
  if (Contains(g->x_contracting, b)) {
    return LayerUnimplemented(kName, absl::StrCat("contracting the batch axis ", b,
                                                  " mixes samples (needs diagonal_batch=False), which the "
                                                  "tiled engine does not support"));
  }
  if (Contains(g->x_batch, b)) {
    return LayerUnimplemented(kName,
                              absl::StrCat("the batch axis ", b,
                                           " as a dot batch dimension pairs samples with slices of the "
                                           "constant, which the tiled engine does not support"));
  }
  int out_b = -1, out_c = -1;
  for (size_t i = 0; i < g->out_axes.size(); ++i) {
    if (g->out_axes[i] == std::make_pair(Geometry::kX, b)) out_b = static_cast<int>(i);
    if (g->out_axes[i] == std::make_pair(Geometry::kX, c)) out_c = static_cast<int>(i);
  }
  Shape in_sizes, out_sizes;
  for (int a : SpatialAxes(static_cast<int>(k.shape1.size()), b, c)) in_sizes.push_back(k.shape1[a]);
  const int out_rank = static_cast<int>(g->out_shape.size());
  for (int a : SpatialAxes(out_rank, out_b, out_c)) out_sizes.push_back(g->out_shape[a]);

  // The map on positions: contract a basis of the input positions laid along the batch axis (one sample
  // per position, one channel); output sample p holds column p of the map.
  int64_t p_in = 1;
  for (int64_t d : in_sizes) p_in *= d;
  Shape canonical{p_in};  // (sample, spatial..., channel), then in the activation's axis order.
  canonical.insert(canonical.end(), in_sizes.begin(), in_sizes.end());
  canonical.push_back(1);
  Array basis(canonical);
  for (int64_t p = 0; p < p_in; ++p) basis[p * p_in + p] = 1.0;
  const std::vector<int> spatial = SpatialAxes(static_cast<int>(k.shape1.size()), b, c);
  std::vector<int> to_layout(k.shape1.size());
  to_layout[b] = 0;
  to_layout[c] = static_cast<int>(in_sizes.size()) + 1;
  for (size_t j = 0; j < spatial.size(); ++j) to_layout[spatial[j]] = static_cast<int>(j) + 1;
  const Array cols = Contract(*g, Transpose(basis, to_layout), *constant());
  std::vector<int> perm{out_b};
  for (int a = 0; a < out_rank; ++a) {
    if (a != out_b) perm.push_back(a);
  }
  const Array by_sample = Transpose(cols, perm);
  const int64_t q_out = by_sample.size() / p_in;
  PositionMatrix m = Eigen::Map<const PositionMatrix>(by_sample.data(), p_in, q_out).transpose();
  const PositionMatrixFn same = [&m](int64_t) -> const PositionMatrix& { return m; };

  std::vector<int> all_axes;
  for (int d = 0; d < static_cast<int>(in_sizes.size()); ++d) all_axes.push_back(d);
  const bool diagonal = k.diagonal_spatial;
  ForEachKernelArray(&k, [&](Array* a, int lead) {
    *a = diagonal ? MapPositionsDiagonal(*a, lead, in_sizes, out_sizes, m)
                  : MapPositionPairs(*a, lead, in_sizes, all_axes, out_sizes, same, same);
  });
  k.batch_axis = out_b;
  k.channel_axis = out_c;
  return absl::OkStatus();
}

}  // namespace NT_CORE_NS
