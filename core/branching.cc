#include "core/branching.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

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

}  // namespace

absl::StatusOr<ShapeFlow> FanOutLayer::OutputShape(const ShapeFlow& in) const {
  if (num_ < 1) return LayerError(name(), "num", absl::StrCat("must be >= 1, got ", num_));
  if (absl::Status st = ExpectSingle(name(), in.is_list, in.items.size()); !st.ok()) return st;
  return ShapeFlow::List(std::vector<Shape>(num_, in.single()));
}

absl::StatusOr<ArrayFlow> FanOutLayer::Apply(const Params&, const ArrayFlow& x) const {
  if (absl::Status st = ExpectSingle(name(), x.is_list, x.items.size()); !st.ok()) return st;
  return ArrayFlow::List(std::vector<Array>(num_, x.single()));
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

}  // namespace NT_CORE_NS
