#include "core/layer.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace NT_CORE_NS {

absl::Status LayerError(const std::string& layer, const std::string& field, const std::string& msg) {
  if (field.empty()) return absl::InvalidArgumentError(absl::StrCat(layer, ": ", msg));
  return absl::InvalidArgumentError(absl::StrCat(layer, ".", field, ": ", msg));
}

absl::Status LayerUnimplemented(const std::string& layer, const std::string& msg) {
  return absl::UnimplementedError(absl::StrCat(layer, ": ", msg));
}

absl::Status AtChild(const absl::Status& status, const std::string& where) {
  if (status.ok()) return status;
  const absl::string_view m = status.message();
  const bool nested =
      absl::StartsWith(m, "layers[") || absl::StartsWith(m, "layer:") || absl::StartsWith(m, "layer.");
  return absl::Status(status.code(), absl::StrCat(where, nested ? "." : ": ", m));
}

absl::Status ExpectSingle(const std::string& layer, bool is_list, size_t n) {
  if (is_list || n != 1) {
    return LayerError(layer, "",
                      absl::StrCat("expects a single input but got a list of ", n,
                                   " (use a FanIn layer or parallel first)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int> CanonicalAxis(const std::string& layer, const std::string& field, int axis, int rank) {
  if (axis < -rank || axis >= rank) {
    return LayerError(layer, field,
                      absl::StrCat("axis ", axis, " is out of range for inputs of rank ", rank));
  }
  return axis < 0 ? axis + rank : axis;
}

absl::StatusOr<MaskFlow> AllOverChannels(const std::string& layer, int channel_axis, const MaskFlow& masks) {
  MaskFlow out = masks;
  for (std::optional<Array>& m : out.items) {
    if (!m) continue;
    auto ch = CanonicalAxis(layer, "channel_axis", channel_axis, m->rank());
    if (!ch.ok()) return ch.status();
    m = AllAlongAxis(*m, *ch);
  }
  return out;
}

absl::StatusOr<Params> Layer::Init(const RngKey& /*key*/, const ShapeFlow& in) const {
  auto out = OutputShape(in);
  if (!out.ok()) return out.status();
  return Params{};
}

absl::StatusOr<double> Layer::NumParams(const ShapeFlow& in) const {
  auto out = OutputShape(in);
  if (!out.ok()) return out.status();
  return 0.0;
}

namespace {

double Entries(const ShapeFlow& s) {
  double n = 0;
  for (const Shape& shape : s.items) n += double(NumElements(shape));
  return n;
}

}  // namespace

absl::StatusOr<double> Layer::PeakActivations(const ShapeFlow& in) const {
  auto out = OutputShape(in);
  if (!out.ok()) return out.status();
  return Entries(in) + Entries(*out);
}

absl::StatusOr<MaskFlow> Layer::MaskFn(const MaskFlow& masks, const ShapeFlow&) const { return masks; }

absl::StatusOr<Layer::Masked> Layer::ApplyMasked(const Params& params, const ArrayFlow& x,
                                                 const MaskFlow& masks) const {
  ArrayFlow zeroed = x;
  ShapeFlow shapes;
  shapes.is_list = x.is_list;
  for (size_t i = 0; i < zeroed.items.size(); ++i) {
    if (i < masks.items.size() && masks.items[i]) ZeroWhereMasked(*masks.items[i], &zeroed.items[i]);
    shapes.items.push_back(zeroed.items[i].shape());
  }
  auto y = Apply(params, zeroed);
  if (!y.ok()) return y.status();
  auto m = MaskFn(masks, shapes);
  if (!m.ok()) return m.status();
  return Masked{*std::move(y), *std::move(m)};
}

absl::StatusOr<Layer::Linearized> Layer::Linearize(const Params&, const ArrayFlow&) const {
  return LayerUnimplemented(name(), "has no reverse mode (empirical NTK) yet");
}

absl::StatusOr<Layer::LinearizedMasked> Layer::LinearizeMasked(const Params& params, const ArrayFlow& x,
                                                               const MaskFlow& masks,
                                                               const ApplyContext&) const {
  ArrayFlow zeroed = x;
  ShapeFlow shapes;
  shapes.is_list = x.is_list;
  std::vector<std::optional<Array>> in_masks(x.items.size());
  for (size_t i = 0; i < zeroed.items.size(); ++i) {
    if (i < masks.items.size() && masks.items[i]) {
      ZeroWhereMasked(*masks.items[i], &zeroed.items[i]);
      in_masks[i] = masks.items[i];
    }
    shapes.items.push_back(zeroed.items[i].shape());
  }
  auto lin = Linearize(params, zeroed);
  if (!lin.ok()) return lin.status();
  auto m = MaskFn(masks, shapes);
  if (!m.ok()) return m.status();
  Pullback inner = std::move(lin->pullback);
  const bool any_mask =
      std::any_of(in_masks.begin(), in_masks.end(), [](const auto& a) { return a.has_value(); });
  Pullback pullback =
      !any_mask ? inner : Pullback([inner, in_masks](const ArrayFlow& dy) -> absl::StatusOr<Cotangents> {
        auto c = inner(dy);
        if (!c.ok()) return c.status();
        for (size_t i = 0; i < in_masks.size() && i < c->dx.items.size(); ++i) {
          if (in_masks[i]) ZeroWhereMasked(*in_masks[i], &c->dx.items[i]);
        }
        return c;
      });
  return LinearizedMasked{Masked{std::move(lin->y), *std::move(m)}, std::move(pullback)};
}

absl::Status Layer::ApplyKernel(KernelFlow* k, const KernelContext& ctx) const {
  if (is_combinator()) return TransformKernel(k, ctx);
  for (const Kernel& in : k->items) {
    if (in.cov_diagonal_only && cov_use() == CovUse::kFull) {
      return absl::InternalError(absl::StrCat(name(), ": received covariances reduced to their diagonal"));
    }
  }
  const Requirements req = requirements();
  if (!k->is_list && k->items.size() == 1) {
    const Kernel& in = k->single();
    if (req.diagonal_batch.has_value() && !*req.diagonal_batch && in.diagonal_batch) {
      return LayerError(name(), "diagonal_batch",
                        "the input kernel has diagonal_batch=True but this layer needs the full batch "
                        "covariance; recompute with diagonal_batch=False");
    }
    if (req.diagonal_spatial.has_value() && req.diagonal_spatial->input == Bool::kNo && in.diagonal_spatial) {
      return LayerError(name(), "diagonal_spatial",
                        "the input kernel has diagonal_spatial=True but this layer needs the full "
                        "spatial covariance; recompute with diagonal_spatial=False");
    }
    const int rank = static_cast<int>(in.shape1.size());
    if (req.batch_axis && (*req.batch_axis % rank + rank) % rank != in.batch_axis) {
      return LayerError(
          name(), "batch_axis",
          absl::StrCat("declares batch_axis ", *req.batch_axis, " but the kernel's batch axis is ",
                       in.batch_axis, ", which makes the infinite limit ill-defined"));
    }
    if (req.channel_axis && (*req.channel_axis % rank + rank) % rank != in.channel_axis) {
      return LayerError(
          name(), "channel_axis",
          absl::StrCat("declares channel_axis ", *req.channel_axis, " but the kernel's channel axis is ",
                       in.channel_axis, ", which makes the infinite limit ill-defined"));
    }
  }
  ShapeFlow s1, s2;
  MaskFlow m1, m2;
  s1.is_list = s2.is_list = m1.is_list = m2.is_list = k->is_list;
  bool masked = false;
  for (const Kernel& kk : k->items) {
    s1.items.push_back(kk.shape1);
    s2.items.push_back(kk.shape2);
    m1.items.push_back(kk.mask1);
    m2.items.push_back(kk.mask2);
    masked = masked || kk.mask1 || kk.mask2;
  }
  auto out1 = OutputShape(s1);
  if (!out1.ok()) return out1.status();
  auto out2 = OutputShape(s2);
  if (!out2.ok()) return out2.status();
  // Output masks come from the incoming kernels (upstream's supports_masking).
  absl::StatusOr<MaskFlow> om1 = m1, om2 = m2;
  if (masked) {
    om1 = MaskFn(m1, s1);
    if (!om1.ok()) return om1.status();
    om2 = MaskFn(m2, s2);
    if (!om2.ok()) return om2.status();
  }
  if (absl::Status st = TransformKernel(k, ctx); !st.ok()) return st;
  if (k->items.size() != out1->items.size() || (masked && k->items.size() != om1->items.size())) {
    return absl::InternalError(absl::StrCat(name(), ": kernel, shape and mask propagation disagree"));
  }
  for (size_t i = 0; i < k->items.size(); ++i) {
    Kernel& out = k->items[i];
    out.shape1 = out1->items[i];
    out.shape2 = out2->items[i];
    if (!masked) continue;
    if (remask_kernel()) {
      if (absl::Status st = MaskKernel(om1->items[i], om2->items[i], &out); !st.ok()) {
        return absl::Status(st.code(), absl::StrCat(name(), ": ", st.message()));
      }
    } else {
      out.mask1 = om1->items[i];
      out.mask2 = om2->items[i];
    }
  }
  return absl::OkStatus();
}

}  // namespace NT_CORE_NS
