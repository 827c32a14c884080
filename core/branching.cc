#include "core/branching.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/spatial.h"

namespace NT_CORE_NS {

namespace {

absl::Status ExpectList(const std::string& layer, bool is_list, size_t n) {
  if (!is_list || n == 0) {
    return LayerError(layer, "", "expects a list of inputs (use FanOut and parallel before it)");
  }
  return absl::OkStatus();
}

// a += b, broadcasting a rank-0 operand.
void AddInto(Array* a, const Array& b) {
  if (b.rank() == 0) {
    for (Real& v : a->vec()) v += b[0];
    return;
  }
  if (a->rank() == 0) {
    const Real s = (*a)[0];
    *a = b;
    for (Real& v : a->vec()) v += s;
    return;
  }
  for (int64_t i = 0; i < a->size(); ++i) (*a)[i] += b[i];
}

// The shapes of a flow's items.
std::vector<Shape> ShapesOf(const ArrayFlow& f) {
  std::vector<Shape> s;
  for (const Array& a : f.items) s.push_back(a.shape());
  return s;
}

// Pullbacks receive cotangents with the structure and shapes of the forward outputs.
absl::Status ExpectCotangents(const std::string& layer, const ArrayFlow& dy, bool is_list,
                              const std::vector<Shape>& shapes) {
  if (dy.is_list != is_list || ShapesOf(dy) != shapes) {
    std::string want;
    for (const Shape& s : shapes) absl::StrAppend(&want, want.empty() ? "" : ", ", ShapeToString(s));
    return LayerError(
        layer, "",
        absl::StrCat("the pullback expects ",
                     is_list ? "a list of cotangents of shapes " : "one cotangent of shape ", want));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Layer::Linearized> IdentityLayer::Linearize(const Params& params, const ArrayFlow& x) const {
  auto y = Apply(params, x);
  if (!y.ok()) return y.status();
  Pullback pullback = [layer = name(), is_list = x.is_list,
                       shapes = ShapesOf(x)](const ArrayFlow& dy) -> absl::StatusOr<Cotangents> {
    if (absl::Status st = ExpectCotangents(layer, dy, is_list, shapes); !st.ok()) return st;
    return Cotangents{dy, Params{}};
  };
  return Linearized{*std::move(y), std::move(pullback)};
}

absl::StatusOr<ShapeFlow> FanOutLayer::OutputShape(const ShapeFlow& in) const {
  if (num_ < 1) return LayerError(name(), "num", absl::StrCat("must be >= 1, got ", num_));
  if (absl::Status st = ExpectSingle(name(), in.is_list, in.items.size()); !st.ok()) return st;
  return ShapeFlow::List(std::vector<Shape>(num_, in.single()));
}

absl::StatusOr<ArrayFlow> FanOutLayer::Apply(const Params&, const ArrayFlow& x) const {
  if (absl::Status st = ExpectSingle(name(), x.is_list, x.items.size()); !st.ok()) return st;
  return ArrayFlow::List(std::vector<Array>(num_, x.single()));
}

absl::StatusOr<Layer::Linearized> FanOutLayer::Linearize(const Params& params, const ArrayFlow& x) const {
  auto y = Apply(params, x);
  if (!y.ok()) return y.status();
  Pullback pullback = [layer = name(),
                       shapes = ShapesOf(*y)](const ArrayFlow& dy) -> absl::StatusOr<Cotangents> {
    if (absl::Status st = ExpectCotangents(layer, dy, true, shapes); !st.ok()) return st;
    Array dx = dy.items[0];
    for (size_t i = 1; i < dy.items.size(); ++i) AddInto(&dx, dy.items[i]);
    return Cotangents{ArrayFlow::Single(std::move(dx)), Params{}};
  };
  return Linearized{*std::move(y), std::move(pullback)};
}

absl::StatusOr<MaskFlow> FanOutLayer::MaskFn(const MaskFlow& masks, const ShapeFlow&) const {
  return MaskFlow::List(std::vector<std::optional<Array>>(num_, masks.single()));
}

absl::Status FanOutLayer::TransformKernel(KernelFlow* k, const KernelContext&) const {
  *k = KernelFlow::List(std::vector<Kernel>(num_, k->single()));
  return absl::OkStatus();
}

absl::StatusOr<ShapeFlow> FanInSumLayer::OutputShape(const ShapeFlow& in) const {
  if (absl::Status st = ExpectList(name(), in.is_list, in.items.size()); !st.ok()) return st;
  for (size_t i = 1; i < in.items.size(); ++i) {
    if (in.items[i] != in.items[0]) {
      return LayerError(
          name(), "",
          absl::StrCat("all inputs must have the same shape, but input 0 is ", ShapeToString(in.items[0]),
                       " and input ", i, " is ", ShapeToString(in.items[i])));
    }
  }
  return ShapeFlow::Single(in.items[0]);
}

absl::Status FanInSumLayer::CheckInputs(const ArrayFlow& x) const {
  ShapeFlow shapes;
  shapes.is_list = x.is_list;
  for (const Array& a : x.items) shapes.items.push_back(a.shape());
  return OutputShape(shapes).status();
}

absl::StatusOr<ArrayFlow> FanInSumLayer::Apply(const Params&, const ArrayFlow& x) const {
  if (absl::Status st = CheckInputs(x); !st.ok()) return st;
  Array y = x.items[0];
  for (size_t i = 1; i < x.items.size(); ++i) AddInto(&y, x.items[i]);
  return ArrayFlow::Single(std::move(y));
}

absl::StatusOr<Layer::Linearized> FanInSumLayer::Linearize(const Params& params, const ArrayFlow& x) const {
  auto y = Apply(params, x);
  if (!y.ok()) return y.status();
  Pullback pullback = [layer = name(), n = x.items.size(),
                       shapes = ShapesOf(*y)](const ArrayFlow& dy) -> absl::StatusOr<Cotangents> {
    if (absl::Status st = ExpectCotangents(layer, dy, false, shapes); !st.ok()) return st;
    return Cotangents{ArrayFlow::List(std::vector<Array>(n, dy.single())), Params{}};
  };
  return Linearized{*std::move(y), std::move(pullback)};
}

absl::StatusOr<MaskFlow> FanInSumLayer::MaskFn(const MaskFlow& masks, const ShapeFlow&) const {
  std::optional<Array> out;
  for (const std::optional<Array>& m : masks.items) {
    if (!m) continue;  // Upstream ignores absent masks here.
    if (!out) {
      out = *m;
    } else {
      for (int64_t i = 0; i < out->size(); ++i) (*out)[i] = ((*out)[i] != 0 && (*m)[i] != 0) ? 1.0 : 0.0;
    }
  }
  return MaskFlow::Single(std::move(out));
}

absl::Status PrepareFanIn(const std::string& layer, std::vector<Kernel>* kernels) {
  std::vector<Kernel>& ks = *kernels;
  for (size_t i = 1; i < ks.size(); ++i) {
    if (ks[i].diagonal_batch != ks[0].diagonal_batch || ks[i].diagonal_spatial != ks[0].diagonal_spatial ||
        ks[i].batch_axis != ks[0].batch_axis || ks[i].channel_axis != ks[0].channel_axis) {
      return LayerUnimplemented(layer, "inputs have different layouts or axes");
    }
  }
  size_t reversed = 0;
  for (const Kernel& k : ks) reversed += k.is_reversed;
  const bool want_reversed = 2 * reversed > ks.size();
  for (Kernel& k : ks) {
    if (k.is_reversed != want_reversed) k.Reverse();
  }
  return absl::OkStatus();
}

absl::Status FanInSumLayer::TransformKernel(KernelFlow* kf, const KernelContext&) const {
  std::vector<Kernel>& ks = kf->items;
  if (ks.size() > 1) {
    for (size_t i = 0; i < ks.size(); ++i) {
      if (!ks[i].is_gaussian) {
        return LayerUnimplemented(
            name(), absl::StrCat("input ", i,
                                 " is not Gaussian; summing non-Gaussian branches would "
                                 "need their means, which are not tracked (put a Dense/Conv in it)"));
      }
    }
  }
  if (absl::Status st = PrepareFanIn(name(), &ks); !st.ok()) return st;
  Kernel out = std::move(ks[0]);
  for (size_t i = 1; i < ks.size(); ++i) {
    AddInto(&out.nngp, ks[i].nngp);
    AddInto(&out.cov1, ks[i].cov1);
    if (out.cov2) AddInto(&*out.cov2, ks[i].cov2_or_cov1());
    if (out.ntk) {
      if (ks[i].ntk) {
        AddInto(&*out.ntk, *ks[i].ntk);
      } else {
        out.ntk.reset();
      }
    }
    out.is_gaussian = out.is_gaussian && ks[i].is_gaussian;
  }
  *kf = KernelFlow::Single(std::move(out));
  return absl::OkStatus();
}

absl::StatusOr<ArrayFlow> FanInProdLayer::Apply(const Params&, const ArrayFlow& x) const {
  if (absl::Status st = CheckInputs(x); !st.ok()) return st;
  Array y = x.items[0];
  for (size_t i = 1; i < x.items.size(); ++i) {
    for (int64_t e = 0; e < y.size(); ++e) y[e] *= x.items[i][e];
  }
  return ArrayFlow::Single(std::move(y));
}

absl::StatusOr<Layer::Linearized> FanInProdLayer::Linearize(const Params& params, const ArrayFlow& x) const {
  auto y = Apply(params, x);
  if (!y.ok()) return y.status();
  // others[i] = prod_{j != i} x_j, from prefix and suffix products (no division: inputs may be zero).
  const size_t n = x.items.size();
  auto others = std::make_shared<std::vector<Array>>();
  Array prefix(x.items[0].shape(), 1.0);
  for (size_t i = 0; i < n; ++i) {
    others->push_back(prefix);
    for (int64_t e = 0; e < prefix.size(); ++e) prefix[e] *= x.items[i][e];
  }
  Array suffix(x.items[0].shape(), 1.0);
  for (size_t i = n; i-- > 0;) {
    for (int64_t e = 0; e < suffix.size(); ++e) (*others)[i][e] *= suffix[e];
    for (int64_t e = 0; e < suffix.size(); ++e) suffix[e] *= x.items[i][e];
  }
  Pullback pullback = [layer = name(), others = std::shared_ptr<const std::vector<Array>>(std::move(others)),
                       shapes = ShapesOf(*y)](const ArrayFlow& dy) -> absl::StatusOr<Cotangents> {
    if (absl::Status st = ExpectCotangents(layer, dy, false, shapes); !st.ok()) return st;
    std::vector<Array> dx = *others;
    for (Array& d : dx) {
      for (int64_t e = 0; e < d.size(); ++e) d[e] *= dy.single()[e];
    }
    return Cotangents{ArrayFlow::List(std::move(dx)), Params{}};
  };
  return Linearized{*std::move(y), std::move(pullback)};
}

absl::Status FanInProdLayer::TransformKernel(KernelFlow* kf, const KernelContext&) const {
  std::vector<Kernel>& ks = kf->items;
  for (size_t i = 1; i < ks.size(); ++i) {
    if (ks[i].shape1 != ks[0].shape1 || ks[i].shape2 != ks[0].shape2) {
      return LayerError(name(), "",
                        absl::StrCat("all inputs must have the same shape; input ", i, " differs"));
    }
  }
  if (absl::Status st = PrepareFanIn(name(), &ks); !st.ok()) return st;
  auto multiply = [](Array* acc, const Array& b) {
    for (int64_t e = 0; e < acc->size(); ++e) (*acc)[e] *= b[e];
  };
  const bool ntk = std::all_of(ks.begin(), ks.end(), [](const Kernel& k) { return k.ntk.has_value(); });
  Kernel out = ks[0];
  // Product rule, accumulated: ntk <- ntk * nngp_i + nngp_acc * ntk_i, then nngp_acc <- nngp_acc * nngp_i.
  if (ntk) {
    Array acc = out.ntk->rank() == 0 ? Array(out.nngp.shape(), (*out.ntk)[0]) : *out.ntk;
    for (size_t i = 1; i < ks.size(); ++i) {
      const Array ntk_i = ks[i].ntk->rank() == 0 ? Array(out.nngp.shape(), (*ks[i].ntk)[0]) : *ks[i].ntk;
      for (int64_t e = 0; e < acc.size(); ++e) acc[e] = acc[e] * ks[i].nngp[e] + out.nngp[e] * ntk_i[e];
      multiply(&out.nngp, ks[i].nngp);
    }
    out.ntk = std::move(acc);
  } else {
    out.ntk.reset();
    for (size_t i = 1; i < ks.size(); ++i) multiply(&out.nngp, ks[i].nngp);
  }
  for (size_t i = 1; i < ks.size(); ++i) {
    multiply(&out.cov1, ks[i].cov1);
    if (out.cov2) multiply(&*out.cov2, ks[i].cov2_or_cov1());
  }
  out.is_gaussian = ks.size() == 1 && ks[0].is_gaussian;
  *kf = KernelFlow::Single(std::move(out));
  return absl::OkStatus();
}

namespace {

// Concatenation of `parts` along `axis` (other dimensions equal).
Array Concatenate(const std::vector<const Array*>& parts, int axis) {
  Shape shape = parts[0]->shape();
  shape[axis] = 0;
  for (const Array* p : parts) shape[axis] += p->dim(axis);
  const int64_t outer = NumElements(absl::MakeConstSpan(shape).subspan(0, axis));
  const int64_t inner = NumElements(absl::MakeConstSpan(shape).subspan(axis + 1));
  Array out = Array::Uninitialized(shape);
  Real* dst = out.data();
  for (int64_t o = 0; o < outer; ++o) {
    for (const Array* p : parts) {
      const int64_t n = p->dim(axis) * inner;
      std::copy(p->data() + o * n, p->data() + (o + 1) * n, dst);
      dst += n;
    }
  }
  return out;
}

// Block-diagonal assembly along the adjacent axis pair (axis, axis + 1): part i occupies rows and columns
// [offset_i, offset_i + size_i) of the pair, zeros elsewhere (independent branches).
Array BlockDiagonal(const std::vector<const Array*>& parts, int axis) {
  Shape shape = parts[0]->shape();
  int64_t total = 0;
  for (const Array* p : parts) total += p->dim(axis);
  shape[axis] = shape[axis + 1] = total;
  const int64_t outer = NumElements(absl::MakeConstSpan(shape).subspan(0, axis));
  const int64_t inner = NumElements(absl::MakeConstSpan(shape).subspan(axis + 2));
  Array out(shape, 0.0);
  int64_t offset = 0;
  for (const Array* p : parts) {
    const int64_t s = p->dim(axis);
    for (int64_t o = 0; o < outer; ++o) {
      for (int64_t a = 0; a < s; ++a) {
        for (int64_t b = 0; b < s; ++b) {
          const Real* src = p->data() + ((o * s + a) * s + b) * inner;
          Real* dst = out.data() + ((o * total + offset + a) * total + offset + b) * inner;
          std::copy(src, src + inner, dst);
        }
      }
    }
    offset += s;
  }
  return out;
}

}  // namespace

absl::StatusOr<ShapeFlow> FanInConcatLayer::OutputShape(const ShapeFlow& in) const {
  if (absl::Status st = ExpectList(name(), in.is_list, in.items.size()); !st.ok()) return st;
  const int rank = static_cast<int>(in.items[0].size());
  auto ax = CanonicalAxis(name(), "axis", axis_, rank);
  if (!ax.ok()) return ax.status();
  Shape out = in.items[0];
  for (size_t i = 1; i < in.items.size(); ++i) {
    const Shape& s = in.items[i];
    bool same = static_cast<int>(s.size()) == rank;
    for (int d = 0; same && d < rank; ++d) same = d == *ax || s[d] == out[d];
    if (!same) {
      return LayerError(name(), "",
                        absl::StrCat("inputs must agree in every axis but ", *ax, "; input 0 is ",
                                     ShapeToString(in.items[0]), ", input ", i, " is ", ShapeToString(s)));
    }
    out[*ax] += s[*ax];
  }
  return ShapeFlow::Single(out);
}

absl::StatusOr<ArrayFlow> FanInConcatLayer::Apply(const Params&, const ArrayFlow& x) const {
  ShapeFlow shapes;
  shapes.is_list = x.is_list;
  for (const Array& a : x.items) shapes.items.push_back(a.shape());
  if (auto s = OutputShape(shapes); !s.ok()) return s.status();
  std::vector<const Array*> parts;
  for (const Array& a : x.items) parts.push_back(&a);
  return ArrayFlow::Single(Concatenate(parts, *CanonicalAxis(name(), "axis", axis_, x.items[0].rank())));
}

absl::StatusOr<Layer::Linearized> FanInConcatLayer::Linearize(const Params& params,
                                                              const ArrayFlow& x) const {
  auto y = Apply(params, x);
  if (!y.ok()) return y.status();
  const int ax = *CanonicalAxis(name(), "axis", axis_, x.items[0].rank());
  std::vector<int64_t> sizes;
  for (const Array& a : x.items) sizes.push_back(a.dim(ax));
  Pullback pullback = [layer = name(), ax, sizes,
                       shapes = ShapesOf(*y)](const ArrayFlow& dy) -> absl::StatusOr<Cotangents> {
    if (absl::Status st = ExpectCotangents(layer, dy, false, shapes); !st.ok()) return st;
    std::vector<Array> dx;
    int64_t begin = 0;
    for (int64_t s : sizes) {
      dx.push_back(SliceAxis(dy.single(), ax, begin, begin + s));
      begin += s;
    }
    return Cotangents{ArrayFlow::List(std::move(dx)), Params{}};
  };
  return Linearized{*std::move(y), std::move(pullback)};
}

absl::StatusOr<MaskFlow> FanInConcatLayer::MaskFn(const MaskFlow& masks, const ShapeFlow&) const {
  for (const std::optional<Array>& m : masks.items) {
    if (m) return LayerUnimplemented(name(), "masked inputs are not supported yet");
  }
  return MaskFlow::Single(std::nullopt);
}

absl::Status FanInConcatLayer::TransformKernel(KernelFlow* kf, const KernelContext&) const {
  std::vector<Kernel>& ks = kf->items;
  if (absl::Status st = PrepareFanIn(name(), &ks); !st.ok()) return st;
  const int rank = static_cast<int>(ks[0].shape1.size());
  auto ax_or = CanonicalAxis(name(), "axis", axis_, rank);
  if (!ax_or.ok()) return ax_or.status();
  const int ax = *ax_or;
  Kernel out = ks[0];
  const bool ntk = std::all_of(ks.begin(), ks.end(), [](const Kernel& k) { return k.ntk.has_value(); });
  if (ax == out.channel_axis) {
    // Channels of the branches mix: the kernel is their width-weighted average.
    double total = 0;
    for (const Kernel& k : ks) total += double(k.shape1[ax]);
    auto average = [&](auto get) {
      Array acc(get(ks[0]).shape(), 0.0);
      for (const Kernel& k : ks) {
        const Array& a = get(k);
        const double w = double(k.shape1[ax]) / total;
        for (int64_t e = 0; e < acc.size(); ++e) acc[e] += static_cast<Real>(w * a[e]);
      }
      return acc;
    };
    out.nngp = average([](const Kernel& k) -> const Array& { return k.nngp; });
    out.cov1 = average([](const Kernel& k) -> const Array& { return k.cov1; });
    if (out.cov2) out.cov2 = average([](const Kernel& k) -> const Array& { return k.cov2_or_cov1(); });
    if (ntk) {
      Array acc(out.nngp.shape(), 0.0);
      for (const Kernel& k : ks) {
        const double w = double(k.shape1[ax]) / total;
        for (int64_t e = 0; e < acc.size(); ++e) {
          acc[e] += static_cast<Real>(w * (k.ntk->rank() == 0 ? (*k.ntk)[0] : (*k.ntk)[e]));
        }
      }
      out.ntk = std::move(acc);
    } else {
      out.ntk.reset();
    }
    out.is_gaussian = false;
    *kf = KernelFlow::Single(std::move(out));
    return absl::OkStatus();
  }
  if (ax == out.batch_axis) {
    return LayerUnimplemented(name(),
                              "concatenating along the batch axis mixes samples, which tiled evaluation "
                              "does not support");
  }
  for (size_t i = 0; i < ks.size(); ++i) {
    if (!ks[i].is_gaussian) {
      return LayerUnimplemented(name(), absl::StrCat("input ", i,
                                                     " is not Gaussian; concatenating non-Gaussian "
                                                     "branches along a spatial axis is not supported"));
    }
  }
  for (Kernel& k : ks) NaturalOrder(&k);
  const std::vector<int> spatial = SpatialAxes(rank, out.batch_axis, out.channel_axis);
  const int d = static_cast<int>(std::find(spatial.begin(), spatial.end(), ax) - spatial.begin());
  auto assemble = [&](auto get, int lead) {
    std::vector<const Array*> parts;
    for (const Kernel& k : ks) parts.push_back(&get(k));
    return ks[0].diagonal_spatial ? Concatenate(parts, lead + d) : BlockDiagonal(parts, lead + 2 * d);
  };
  out.nngp = assemble([](const Kernel& k) -> const Array& { return k.nngp; }, 2);
  const int cb = CovBatchAxes(out);
  out.cov1 = assemble([](const Kernel& k) -> const Array& { return k.cov1; }, cb);
  if (out.cov2) out.cov2 = assemble([](const Kernel& k) -> const Array& { return k.cov2_or_cov1(); }, cb);
  if (ntk) {
    std::vector<Array> full;
    for (const Kernel& k : ks)
      full.push_back(k.ntk->rank() == 0 ? Array(k.nngp.shape(), (*k.ntk)[0]) : *k.ntk);
    std::vector<const Array*> parts;
    for (const Array& a : full) parts.push_back(&a);
    out.ntk = ks[0].diagonal_spatial ? Concatenate(parts, 2 + d) : BlockDiagonal(parts, 2 + 2 * d);
  } else {
    out.ntk.reset();
  }
  out.is_gaussian = true;
  *kf = KernelFlow::Single(std::move(out));
  return absl::OkStatus();
}

}  // namespace NT_CORE_NS
