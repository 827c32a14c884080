#include "core/index.h"

#include <algorithm>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/spatial.h"

namespace NT_CORE_NS {

IndexItem IndexItem::Slice(std::optional<int64_t> start, std::optional<int64_t> stop,
                           std::optional<int64_t> step) {
  IndexItem it;
  it.kind = kSlice;
  it.start = start;
  it.stop = stop;
  it.step = step;
  return it;
}

IndexItem IndexItem::Int(int64_t i) {
  IndexItem it;
  it.kind = kInt;
  it.index = i;
  return it;
}

IndexItem IndexItem::Ellipsis() {
  IndexItem it;
  it.kind = kEllipsis;
  return it;
}

std::string IndexItem::ToString() const {
  if (kind == kInt) return absl::StrCat(index);
  if (kind == kEllipsis) return "...";
  auto part = [](const std::optional<int64_t>& v) { return v ? absl::StrCat(*v) : std::string(); };
  std::string s = absl::StrCat(part(start), ":", part(stop));
  if (step) absl::StrAppend(&s, ":", *step);
  return s;
}

absl::StatusOr<AxisSelection> SelectAxis(const std::string& layer, const IndexItem& item, int64_t n,
                                         int axis) {
  AxisSelection sel;
  if (item.kind == IndexItem::kInt) {
    const int64_t i = item.index < 0 ? item.index + n : item.index;
    if (i < 0 || i >= n) {
      return LayerError(
          layer, "idx",
          absl::StrCat("index ", item.index, " is out of bounds for axis ", axis, " with size ", n));
    }
    sel.take = {i};
    sel.drop = true;
    return sel;
  }
  if (item.kind == IndexItem::kEllipsis) {
    return absl::InternalError(absl::StrCat(layer, ": Ellipsis left in a canonical index"));
  }
  const int64_t step = item.step.value_or(1);
  if (step == 0) return LayerError(layer, "idx", "slice step cannot be zero");
  // CPython's PySlice_AdjustIndices.
  auto adjust = [&](std::optional<int64_t> v, int64_t dflt) {
    if (!v) return dflt;
    int64_t x = *v;
    if (x < 0) {
      x += n;
      if (x < 0) x = step < 0 ? -1 : 0;
    } else if (x >= n) {
      x = step < 0 ? n - 1 : n;
    }
    return x;
  };
  const int64_t start = adjust(item.start, step < 0 ? n - 1 : 0);
  const int64_t stop = adjust(item.stop, step < 0 ? -1 : n);
  if (step > 0) {
    for (int64_t i = start; i < stop; i += step) sel.take.push_back(i);
  } else {
    for (int64_t i = start; i > stop; i += step) sel.take.push_back(i);
  }
  sel.identity = static_cast<int64_t>(sel.take.size()) == n && (n == 0 || (sel.take[0] == 0 && step == 1));
  return sel;
}

absl::StatusOr<std::vector<IndexItem>> CanonicalIndex(const std::string& layer,
                                                      const std::vector<IndexItem>& idx, int rank) {
  int ellipses = 0, items = 0;
  for (const IndexItem& it : idx) {
    if (it.kind == IndexItem::kEllipsis) {
      ++ellipses;
    } else {
      ++items;
    }
  }
  if (ellipses > 1) return LayerError(layer, "idx", "an index can only have a single Ellipsis ('...')");
  if (items > rank) {
    return LayerError(layer, "idx",
                      absl::StrCat("too many indices: ", items, " items for activations of rank ", rank));
  }
  std::vector<IndexItem> out;
  for (const IndexItem& it : idx) {
    if (it.kind == IndexItem::kEllipsis) {
      out.insert(out.end(), rank - items, IndexItem::Slice());
    } else {
      out.push_back(it);
    }
  }
  out.resize(rank, IndexItem::Slice());
  return out;
}

Array GatherAxes(const Array& a, const std::vector<AxisSelection>& sel) {
  const int r = a.rank();
  bool identity = true;
  for (const AxisSelection& s : sel) identity = identity && s.identity && !s.drop;
  if (identity) return a;
  std::vector<int64_t> stride(r, 1);
  for (int i = r - 2; i >= 0; --i) stride[i] = stride[i + 1] * a.dim(i + 1);
  Shape out_shape;
  std::vector<std::vector<int64_t>> off(r);
  for (int i = 0; i < r; ++i) {
    if (!sel[i].drop) out_shape.push_back(static_cast<int64_t>(sel[i].take.size()));
    for (int64_t t : sel[i].take) off[i].push_back(t * stride[i]);
  }
  Array out = Array::Uninitialized(out_shape);
  if (out.size() == 0) return out;
  Real* dst = out.data();
  const Real* src = a.data();
  // Depth-first over the axes: the output is written in row-major order.
  auto rec = [&](auto&& self, int axis, int64_t base) -> void {
    if (axis == r - 1) {
      for (int64_t v : off[axis]) *dst++ = src[base + v];
      return;
    }
    for (int64_t v : off[axis]) self(self, axis + 1, base + v);
  };
  rec(rec, 0, 0);
  return out;
}

Array ScatterAxes(const Array& g, const std::vector<AxisSelection>& sel, const Shape& shape) {
  const int r = static_cast<int>(shape.size());
  bool identity = true;
  for (const AxisSelection& s : sel) identity = identity && s.identity && !s.drop;
  if (identity) return g;
  std::vector<int64_t> stride(r, 1);
  for (int i = r - 2; i >= 0; --i) stride[i] = stride[i + 1] * shape[i + 1];
  std::vector<std::vector<int64_t>> off(r);
  for (int i = 0; i < r; ++i) {
    for (int64_t t : sel[i].take) off[i].push_back(t * stride[i]);
  }
  Array out(shape, 0.0);
  if (g.size() == 0 || out.size() == 0) return out;
  const Real* src = g.data();
  Real* dst = out.data();
  // The traversal of GatherAxes: g is read in row-major order. Adds, so that repeated positions would
  // accumulate (slices and ints never repeat one).
  auto rec = [&](auto&& self, int axis, int64_t base) -> void {
    if (axis == r - 1) {
      for (int64_t v : off[axis]) dst[base + v] += *src++;
      return;
    }
    for (int64_t v : off[axis]) self(self, axis + 1, base + v);
  };
  rec(rec, 0, 0);
  return out;
}

absl::Status IndexLayer::Validate(const IndexOptions& o) {
  int ellipses = 0;
  for (const IndexItem& it : o.idx) {
    if (it.kind == IndexItem::kEllipsis) ++ellipses;
    if (it.kind == IndexItem::kSlice && it.step && *it.step == 0) {
      return LayerError("Index", "idx", absl::StrCat("slice step cannot be zero (item ", it.ToString(), ")"));
    }
  }
  if (ellipses > 1) return LayerError("Index", "idx", "an index can only have a single Ellipsis ('...')");
  return absl::OkStatus();
}

bool IndexLayer::SelectsBatch() const {
  // Without the rank, try every rank the batch item can depend on: activations have rank >= 2 and at least
  // one axis per item; past `hi` the item at the batch axis no longer changes.
  int items = 0;
  for (const IndexItem& it : o_.idx) items += it.kind == IndexItem::kEllipsis ? 0 : 1;
  const int b = o_.batch_axis;
  const int lo = std::max({2, items, b >= 0 ? b + 1 : -b});
  const int hi = lo + static_cast<int>(o_.idx.size()) + std::abs(b) + 1;
  for (int rank = lo; rank <= hi; ++rank) {
    auto idx = CanonicalIndex(name(), o_.idx, rank);
    if (!idx.ok() || !(*idx)[(b % rank + rank) % rank].takes_all()) return true;
  }
  return false;
}

Requirements IndexLayer::requirements() const {
  Requirements r;
  r.batch_axis = o_.batch_axis;
  r.channel_axis = o_.channel_axis;
  // Tiles of samples cannot be sliced independently: the engine then evaluates the batch in one piece.
  r.selects_batch = SelectsBatch();
  return r;
}

absl::StatusOr<std::vector<AxisSelection>> IndexLayer::Select(const Shape& s) const {
  auto idx = CanonicalIndex(name(), o_.idx, static_cast<int>(s.size()));
  if (!idx.ok()) return idx.status();
  std::vector<AxisSelection> sel;
  for (size_t a = 0; a < s.size(); ++a) {
    auto one = SelectAxis(name(), (*idx)[a], s[a], static_cast<int>(a));
    if (!one.ok()) return one.status();
    sel.push_back(*std::move(one));
  }
  return sel;
}

absl::StatusOr<ShapeFlow> IndexLayer::OutputShape(const ShapeFlow& in) const {
  if (absl::Status st = ExpectSingle(name(), in.is_list, in.items.size()); !st.ok()) return st;
  auto sel = Select(in.single());
  if (!sel.ok()) return sel.status();
  Shape out;
  for (const AxisSelection& s : *sel) {
    if (!s.drop) out.push_back(static_cast<int64_t>(s.take.size()));
  }
  return ShapeFlow::Single(out);
}

absl::StatusOr<ArrayFlow> IndexLayer::Apply(const Params&, const ArrayFlow& xf) const {
  if (absl::Status st = ExpectSingle(name(), xf.is_list, xf.items.size()); !st.ok()) return st;
  auto sel = Select(xf.single().shape());
  if (!sel.ok()) return sel.status();
  return ArrayFlow::Single(GatherAxes(xf.single(), *sel));
}

absl::StatusOr<Layer::Linearized> IndexLayer::Linearize(const Params&, const ArrayFlow& xf) const {
  if (absl::Status st = ExpectSingle(name(), xf.is_list, xf.items.size()); !st.ok()) return st;
  const Shape& in = xf.single().shape();
  auto sel = Select(in);
  if (!sel.ok()) return sel.status();
  Array y = GatherAxes(xf.single(), *sel);
  Pullback pullback = [layer = name(), sel = *std::move(sel), in,
                       out = y.shape()](const ArrayFlow& dy) -> absl::StatusOr<Cotangents> {
    if (dy.is_list || dy.items.size() != 1 || dy.single().shape() != out) {
      return LayerError(layer, "",
                        absl::StrCat("the pullback expects one cotangent of shape ", ShapeToString(out)));
    }
    return Cotangents{ArrayFlow::Single(ScatterAxes(dy.single(), sel, in)), Params{}};
  };
  return Linearized{ArrayFlow::Single(std::move(y)), std::move(pullback)};
}

absl::StatusOr<MaskFlow> IndexLayer::MaskFn(const MaskFlow& masks, const ShapeFlow& shapes) const {
  MaskFlow out = masks;
  for (size_t i = 0; i < out.items.size(); ++i) {
    std::optional<Array>& m = out.items[i];
    if (!m) continue;
    const Shape full = i < shapes.items.size() ? shapes.items[i] : m->shape();
    if (full.size() != static_cast<size_t>(m->rank())) {
      return absl::InternalError(
          absl::StrCat(name(), ": mask of rank ", m->rank(), " for activations of rank ", full.size()));
    }
    auto sel = Select(full);
    if (!sel.ok()) return sel.status();
    // A broadcast (size-1) mask axis stays broadcast: take its single entry.
    for (int a = 0; a < m->rank(); ++a) {
      if (m->dim(a) == 1 && full[a] != 1) {
        (*sel)[a].take = {0};
        (*sel)[a].identity = !(*sel)[a].drop;
      }
    }
    m = GatherAxes(*m, *sel);
  }
  return out;
}

absl::Status IndexLayer::TransformKernel(KernelFlow* kf, const KernelContext&) const {
  Kernel& k = kf->single();
  const int rank = static_cast<int>(k.shape1.size());
  auto idx_or = CanonicalIndex(name(), o_.idx, rank);
  if (!idx_or.ok()) return idx_or.status();
  const std::vector<IndexItem>& idx = *idx_or;
  const IndexItem& channel_item = idx[k.channel_axis];
  if (!channel_item.is_full_slice()) {
    return LayerUnimplemented(name(),
                              absl::StrCat("indexing the (infinite) channel axis ", k.channel_axis, " with '",
                                           channel_item.ToString(), "' is not supported; only ':' is"));
  }
  const IndexItem& batch_item = idx[k.batch_axis];
  if (batch_item.kind == IndexItem::kInt) {
    return LayerUnimplemented(
        name(), absl::StrCat("indexing the batch axis ", k.batch_axis, " with the integer ", batch_item.index,
                             " would remove it, but kernels always keep a batch axis; use a slice such as ",
                             batch_item.index, ":", batch_item.index + 1, " instead"));
  }
  NaturalOrder(&k);
  const std::vector<int> spatial = SpatialAxes(rank, k.batch_axis, k.channel_axis);
  // Selections for the axes of one kernel array: `batch_axes` batch axes, then the spatial axes (each
  // twice in the full layout), resolved against the array's own sizes.
  auto gather = [&](Array* t, int batch_axes) -> absl::Status {
    std::vector<AxisSelection> sel;
    auto add = [&](const IndexItem& item, int array_axis, int activation_axis) -> absl::Status {
      auto s = SelectAxis(name(), item, t->dim(array_axis), activation_axis);
      if (!s.ok()) return s.status();
      sel.push_back(*std::move(s));
      return absl::OkStatus();
    };
    for (int i = 0; i < batch_axes; ++i) {
      if (absl::Status st = add(batch_item, i, k.batch_axis); !st.ok()) return st;
    }
    int axis = batch_axes;
    for (int a : spatial) {
      for (int copy = 0; copy < (k.diagonal_spatial ? 1 : 2); ++copy) {
        if (absl::Status st = add(idx[a], axis++, a); !st.ok()) return st;
      }
    }
    if (axis != t->rank()) {
      return absl::InternalError(absl::StrCat(name(), ": kernel array of rank ", t->rank(), " for ",
                                              spatial.size(), " spatial axes"));
    }
    *t = GatherAxes(*t, sel);
    return absl::OkStatus();
  };
  if (absl::Status st = gather(&k.nngp, 2); !st.ok()) return st;
  if (k.ntk && k.ntk->rank() > 0) {
    if (absl::Status st = gather(&*k.ntk, 2); !st.ok()) return st;
  }
  const int cb = CovBatchAxes(k);
  if (absl::Status st = gather(&k.cov1, cb); !st.ok()) return st;
  if (k.cov2) {
    if (absl::Status st = gather(&*k.cov2, cb); !st.ok()) return st;
  }
  // Integer items remove axes: those before the batch/channel axes shift them.
  int batch_axis = k.batch_axis, channel_axis = k.channel_axis;
  for (int a = 0; a < rank; ++a) {
    if (idx[a].kind != IndexItem::kInt) continue;
    if (a < k.batch_axis) --batch_axis;
    if (a < k.channel_axis) --channel_axis;
  }
  k.batch_axis = batch_axis;
  k.channel_axis = channel_axis;
  return absl::OkStatus();
}

}  // namespace NT_CORE_NS
