#include "core/dropout.h"

#include <cmath>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/spatial.h"

namespace NT_CORE_NS {

namespace {

// Multiplies by `f` the entries of `a` (lead batch axes, then the spatial layout) that pair a sample with
// itself at the same position: the batch diagonal when lead == 2 (if square), every row when lead == 1;
// the spatial diagonal in the full layout, every position in the diagonal layout.
void ScaleSameSamplePosition(Array* a, int lead, bool diagonal_spatial, int num_spatial, double f) {
  if (a->rank() == 0) return;
  const int64_t rows = a->dim(0), cols = lead == 2 ? a->dim(1) : 1;
  if (lead == 2 && rows != cols) return;  // Different batches: no sample meets itself.
  const int64_t inner = a->size() / std::max<int64_t>(rows * cols, 1);
  std::vector<int64_t> sizes;
  for (int d = 0; d < num_spatial; ++d) sizes.push_back(a->dim(lead + (diagonal_spatial ? d : 2 * d)));
  const std::vector<int64_t> positions = DiagonalOffsets(sizes, diagonal_spatial);  // (p, p) in a block.
  for (int64_t n = 0; n < rows; ++n) {
    Real* block = a->data() + (lead == 2 ? n * cols + n : n) * inner;
    for (int64_t off : positions) block[off] *= static_cast<Real>(f);
  }
}

}  // namespace

absl::Status DropoutLayer::Validate(const DropoutOptions& o) {
  if (!(o.rate > 0 && o.rate <= 1)) {
    return LayerError("Dropout", "rate",
                      absl::StrCat("is the keep probability and must be in (0, 1], got ", o.rate));
  }
  return absl::OkStatus();
}

Requirements DropoutLayer::requirements() const {
  Requirements r;
  if (o_.train) r.use_dropout = true;
  return r;
}

absl::StatusOr<ShapeFlow> DropoutLayer::OutputShape(const ShapeFlow& in) const {
  if (absl::Status st = ExpectSingle(name(), in.is_list, in.items.size()); !st.ok()) return st;
  return in;
}

absl::StatusOr<ArrayFlow> DropoutLayer::Apply(const Params&, const ArrayFlow& x) const {
  if (absl::Status st = ExpectSingle(name(), x.is_list, x.items.size()); !st.ok()) return st;
  if (!o_.train) return x;
  return LayerError(name(), "rng", "apply_fn in mode 'train' needs a random key (rng)");
}

absl::StatusOr<Layer::Masked> DropoutLayer::ApplyMasked(const Params& params, const ArrayFlow& x,
                                                        const MaskFlow& masks,
                                                        const ApplyContext& ctx) const {
  if (!o_.train || !ctx.rng) return Layer::ApplyMasked(params, x, masks);
  if (absl::Status st = ExpectSingle(name(), x.is_list, x.items.size()); !st.ok()) return st;
  Array y = x.single();
  if (!masks.items.empty() && masks.items[0]) ZeroWhereMasked(*masks.items[0], &y);
  const Array u = ctx.rng->Uniform(y.shape());
  const Real scale = static_cast<Real>(1.0 / o_.rate);
  for (int64_t i = 0; i < y.size(); ++i) y[i] = u[i] < o_.rate ? y[i] * scale : Real(0);
  return Masked{ArrayFlow::Single(std::move(y)), masks};
}

absl::StatusOr<Layer::Linearized> DropoutLayer::Linearize(const Params& params, const ArrayFlow& x) const {
  auto y = Apply(params, x);
  if (!y.ok()) return y.status();
  Pullback pullback = [layer = name(),
                       shape = x.single().shape()](const ArrayFlow& dy) -> absl::StatusOr<Cotangents> {
    if (dy.is_list || dy.items.size() != 1 || dy.single().shape() != shape) {
      return LayerError(layer, "",
                        absl::StrCat("the pullback expects one cotangent of shape ", ShapeToString(shape)));
    }
    return Cotangents{dy, Params{}};
  };
  return Linearized{*std::move(y), std::move(pullback)};
}

absl::StatusOr<Layer::LinearizedMasked> DropoutLayer::LinearizeMasked(const Params& params,
                                                                      const ArrayFlow& x,
                                                                      const MaskFlow& masks,
                                                                      const ApplyContext& ctx) const {
  if (!o_.train || !ctx.rng) return Layer::LinearizeMasked(params, x, masks, ctx);
  auto out = ApplyMasked(params, x, masks, ctx);
  if (!out.ok()) return out.status();
  // The forward pass's factor per entry (the same draw from the same key): 1 / rate where kept, else 0,
  // and 0 at masked inputs, whose values never reach the output.
  auto factor = std::make_shared<Array>(ctx.rng->Uniform(x.single().shape()));
  const Real scale = static_cast<Real>(1.0 / o_.rate);
  for (Real& v : factor->vec()) v = v < o_.rate ? scale : Real(0);
  if (!masks.items.empty() && masks.items[0]) ZeroWhereMasked(*masks.items[0], factor.get());
  Pullback pullback = [layer = name(), factor = std::shared_ptr<const Array>(std::move(factor))](
                          const ArrayFlow& dy) -> absl::StatusOr<Cotangents> {
    if (dy.is_list || dy.items.size() != 1 || dy.single().shape() != factor->shape()) {
      return LayerError(
          layer, "",
          absl::StrCat("the pullback expects one cotangent of shape ", ShapeToString(factor->shape())));
    }
    Array dx = dy.single();
    for (int64_t i = 0; i < dx.size(); ++i) dx[i] *= (*factor)[i];
    return Cotangents{ArrayFlow::Single(std::move(dx)), Params{}};
  };
  return LinearizedMasked{*std::move(out), std::move(pullback)};
}

absl::Status DropoutLayer::TransformKernel(KernelFlow* kf, const KernelContext&) const {
  if (absl::Status st = ExpectSingle(name(), kf->is_list, kf->items.size()); !st.ok()) return st;
  if (!o_.train) return absl::OkStatus();
  Kernel& k = kf->single();
  const double f = 1.0 / o_.rate;
  const int s = k.num_spatial();
  // Only a sample against itself at the same position sees the same dropout mask.
  const int cb = CovBatchAxes(k);
  ScaleSameSamplePosition(&k.cov1, cb, CovDiagonalSpatial(k), s, f);
  if (k.cov2) ScaleSameSamplePosition(&*k.cov2, cb, CovDiagonalSpatial(k), s, f);
  if (k.x1_is_x2) {
    ScaleSameSamplePosition(&k.nngp, 2, k.diagonal_spatial, s, f);
    if (k.ntk) ScaleSameSamplePosition(&*k.ntk, 2, k.diagonal_spatial, s, f);
  }
  k.is_gaussian = false;
  return absl::OkStatus();
}

}  // namespace NT_CORE_NS
