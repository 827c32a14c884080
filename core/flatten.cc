#include "core/flatten.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/spatial.h"

namespace NT_CORE_NS {

absl::Status FlattenLayer::Validate(const FlattenOptions& o) {
  const int b = o.batch_axis_out;
  if (b != 0 && b != 1 && b != -1 && b != -2) {
    return LayerError("Flatten", "batch_axis_out", absl::StrCat("must be 0 or 1 (or -2, -1), got ", b));
  }
  return absl::OkStatus();
}

Requirements FlattenLayer::requirements() const {
  Requirements r;
  r.diagonal_spatial = Diagonal{Bool::kYes, Bool::kYes};
  r.batch_axis = o_.batch_axis;
  // Upstream's channel_axis=None: no channel check, and inputs are flattened when Flatten comes first.
  r.flatten_input = true;
  return r;
}

absl::StatusOr<ShapeFlow> FlattenLayer::OutputShape(const ShapeFlow& in) const {
  if (absl::Status st = ExpectSingle(name(), in.is_list, in.items.size()); !st.ok()) return st;
  if (absl::Status st = Validate(o_); !st.ok()) return st;
  const Shape& s = in.single();
  auto b = CanonicalAxis(name(), "batch_axis", o_.batch_axis, static_cast<int>(s.size()));
  if (!b.ok()) return b.status();
  int64_t rest = 1;
  for (int a = 0; a < static_cast<int>(s.size()); ++a) {
    if (a != *b) rest *= s[a];
  }
  return ShapeFlow::Single(batch_out() == 0 ? Shape{s[*b], rest} : Shape{rest, s[*b]});
}

absl::StatusOr<Array> FlattenLayer::FlattenArray(const Array& x) const {
  auto out = OutputShape(ShapeFlow::Single(x.shape()));
  if (!out.ok()) return out.status();
  return Transpose(x, Permutation(x.rank())).Reshaped(out->single());
}

std::vector<int> FlattenLayer::Permutation(int rank) const {
  const int b = *CanonicalAxis(name(), "batch_axis", o_.batch_axis, rank);
  std::vector<int> perm;
  for (int a = 0; a < rank; ++a) {
    if (a != b) perm.push_back(a);
  }
  perm.insert(batch_out() == 0 ? perm.begin() : perm.end(), b);
  return perm;
}

absl::StatusOr<ArrayFlow> FlattenLayer::Apply(const Params&, const ArrayFlow& xf) const {
  if (absl::Status st = ExpectSingle(name(), xf.is_list, xf.items.size()); !st.ok()) return st;
  auto y = FlattenArray(xf.single());
  if (!y.ok()) return y.status();
  return ArrayFlow::Single(*std::move(y));
}

absl::StatusOr<Layer::Linearized> FlattenLayer::Linearize(const Params& params, const ArrayFlow& xf) const {
  auto y = Apply(params, xf);
  if (!y.ok()) return y.status();
  const Shape& in = xf.single().shape();
  const std::vector<int> perm = Permutation(static_cast<int>(in.size()));
  Shape permuted;
  std::vector<int> inv(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) {
    permuted.push_back(in[perm[i]]);
    inv[perm[i]] = static_cast<int>(i);
  }
  Pullback pullback = [layer = name(), permuted, inv,
                       out = y->single().shape()](const ArrayFlow& dy) -> absl::StatusOr<Cotangents> {
    if (dy.is_list || dy.items.size() != 1 || dy.single().shape() != out) {
      return LayerError(layer, "",
                        absl::StrCat("the pullback expects one cotangent of shape ", ShapeToString(out)));
    }
    return Cotangents{ArrayFlow::Single(Transpose(dy.single().Reshaped(permuted), inv)), Params{}};
  };
  return Linearized{*std::move(y), std::move(pullback)};
}

absl::StatusOr<MaskFlow> FlattenLayer::MaskFn(const MaskFlow& masks, const ShapeFlow& shapes) const {
  MaskFlow out = masks;
  for (size_t idx = 0; idx < out.items.size(); ++idx) {
    std::optional<Array>& m = out.items[idx];
    if (!m) continue;
    const Shape& shape = shapes.items[idx];
    if (m->rank() != static_cast<int>(shape.size())) {
      return LayerError(
          name(), "mask",
          absl::StrCat("has rank ", m->rank(), " but the activation has shape ", ShapeToString(shape)));
    }
    // Broadcast to the activation, then rearrange like the values. (Upstream moves the mask's batch
    // axis to position 1 rather than last when batch_axis_out=1, which scrambles it for rank > 2.)
    Array full = *m;
    for (int a = 0; a < full.rank(); ++a) {
      if (full.dim(a) == shape[a]) continue;
      if (full.dim(a) != 1) {
        return LayerError(name(), "mask",
                          absl::StrCat("of shape ", ShapeToString(m->shape()),
                                       " does not broadcast to the activation shape ", ShapeToString(shape)));
      }
      Shape s = full.shape();
      s[a] = shape[a];
      const int64_t outer = NumElements(absl::MakeConstSpan(s).subspan(0, a));
      const int64_t inner = NumElements(absl::MakeConstSpan(s).subspan(a + 1));
      Array rep(s, 0.0);
      for (int64_t o = 0; o < outer; ++o) {
        for (int64_t j = 0; j < shape[a]; ++j) {
          for (int64_t e = 0; e < inner; ++e) rep[(o * shape[a] + j) * inner + e] = full[o * inner + e];
        }
      }
      full = std::move(rep);
    }
    auto flat = FlattenArray(full);
    if (!flat.ok()) return flat.status();
    m = *std::move(flat);
  }
  return out;
}

absl::Status FlattenLayer::TransformKernel(KernelFlow* kf, const KernelContext&) const {
  if (absl::Status st = ExpectSingle(name(), kf->is_list, kf->items.size()); !st.ok()) return st;
  Kernel& k = kf->single();
  const int num_spatial = k.num_spatial();
  // The mean over positions of T[p, p] (full) or T[p] (diagonal) does not depend on the spatial order,
  // so a reversed kernel needs no transposition.
  auto reduce = [&](Array* t, int batch_axes) {
    const Shape lead(t->shape().begin(), t->shape().begin() + batch_axes);
    const Shape trailing(t->shape().begin() + batch_axes, t->shape().end());
    const int64_t rows = NumElements(lead);
    const int64_t inner = NumElements(trailing);
    // Offsets of the spatial diagonal inside one row's trailing block (every entry in the diagonal
    // layout, also with cov_diagonal_only).
    const bool diagonal = static_cast<int>(trailing.size()) == num_spatial;
    std::vector<int64_t> sizes;
    for (int d = 0; d < num_spatial; ++d) sizes.push_back(trailing[diagonal ? d : 2 * d]);
    const std::vector<int64_t> diag = DiagonalOffsets(sizes, diagonal);
    const Real norm = 1.0 / static_cast<Real>(diag.size());
    Array out(lead, 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      Real s = 0;
      for (int64_t off : diag) s += (*t)[r * inner + off];
      out[r] = s * norm;
    }
    *t = std::move(out);
  };
  ForEachKernelArray(&k, reduce);
  k.cov_diagonal_only = false;
  const int b = batch_out();
  k.is_gaussian = false;  // Flattened features at different positions are not identically distributed.
  k.is_reversed = false;
  k.batch_axis = b;
  k.channel_axis = 1 - b;
  k.diagonal_spatial = false;
  return absl::OkStatus();
}

}  // namespace NT_CORE_NS
