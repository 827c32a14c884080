#include "core/combinators.h"

#include <algorithm>
#include <functional>

#include "absl/strings/str_cat.h"

namespace NT_CORE_NS {

namespace {

// Upstream's serial key schedule: (key, layer_key) = split(key) before each layer.
std::vector<RngKey> SerialKeys(const RngKey& key, size_t n) {
  std::vector<RngKey> keys;
  RngKey k = key;
  for (size_t i = 0; i < n; ++i) {
    std::vector<RngKey> two = k.Split(2);
    k = two[0];
    keys.push_back(two[1]);
  }
  return keys;
}

// One absent mask per flowing item.
MaskFlow NoMasks(const ArrayFlow& x) {
  MaskFlow m;
  m.is_list = x.is_list;
  m.items.resize(x.items.size());
  return m;
}

// Upstream's combinators split apply_fn's rng into one key per sub-layer.
std::vector<RngKey> SplitRng(const ApplyContext& ctx, size_t n) {
  return ctx.rng ? ctx.rng->Split(static_cast<int>(n)) : std::vector<RngKey>{};
}

ApplyContext ChildContext(const ApplyContext& ctx, const std::vector<RngKey>& keys, size_t i) {
  ApplyContext child = ctx;
  if (ctx.rng) child.rng = keys[i];
  return child;
}

// Reverse mode of a chain of layers: pullbacks run in reverse order, each child's parameter cotangents
// land in its slot.
Pullback ChainPullback(std::vector<Pullback> pullbacks) {
  return [pullbacks = std::move(pullbacks)](const ArrayFlow& dy) -> absl::StatusOr<Cotangents> {
    Cotangents out;
    out.dparams.children.resize(pullbacks.size());
    ArrayFlow g = dy;
    for (size_t i = pullbacks.size(); i-- > 0;) {
      auto c = pullbacks[i](g);
      if (!c.ok()) return c.status();
      out.dparams.children[i] = std::move(c->dparams);
      g = std::move(c->dx);
    }
    out.dx = std::move(g);
    return out;
  };
}

// serial and repeat: runs `layer(i)` with params.children[i] for i < n, keeping each pullback.
absl::StatusOr<Layer::LinearizedMasked> LinearizeChain(const std::function<const Layer&(size_t)>& layer,
                                                       size_t n,
                                                       const std::function<std::string(size_t)>& where,
                                                       const Params& params, const ArrayFlow& x,
                                                       const MaskFlow& masks, const ApplyContext& ctx) {
  const std::vector<RngKey> keys = SplitRng(ctx, n);
  Layer::Masked y{x, masks};
  std::vector<Pullback> pullbacks;
  for (size_t i = 0; i < n; ++i) {
    auto next = layer(i).LinearizeMasked(params.children[i], y.values, y.masks, ChildContext(ctx, keys, i));
    if (!next.ok()) return AtChild(next.status(), where(i));
    y = std::move(next->out);
    pullbacks.push_back(std::move(next->pullback));
  }
  return Layer::LinearizedMasked{std::move(y), ChainPullback(std::move(pullbacks))};
}

// Linearize of a combinator: its LinearizeMasked without masks or keyword arguments.
absl::StatusOr<Layer::Linearized> Unmasked(const Layer& layer, const Params& params, const ArrayFlow& x) {
  auto lin = layer.LinearizeMasked(params, x, NoMasks(x), ApplyContext{});
  if (!lin.ok()) return lin.status();
  return Layer::Linearized{std::move(lin->out.values), std::move(lin->pullback)};
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
SerialLayer::SerialLayer(std::vector<LayerPtr> layers) : layers_(std::move(layers)) {
  for (const LayerPtr& l : layers_) req_ = FoldSerial(req_, l->requirements());
}

Layer::CovUse SerialLayer::cov_use() const {
  for (size_t i = 0; i < layers_.size(); ++i) {
    const CovUse u = layers_[i]->cov_use();
    if (u == CovUse::kFull || (u == CovUse::kReadout && i + 1 != layers_.size())) return CovUse::kFull;
  }
  return layers_.empty() ? CovUse::kDiagonal : layers_.back()->cov_use();
}

int64_t SerialLayer::NumLayers() const {
  int64_t n = 0;
  for (const LayerPtr& l : layers_) n += l->NumLayers();
  return n;
}

absl::StatusOr<ShapeFlow> SerialLayer::OutputShape(const ShapeFlow& in) const {
  ShapeFlow s = in;
  for (const LayerPtr& l : layers_) {
    auto next = l->OutputShape(s);
    if (!next.ok()) return next.status();
    s = *std::move(next);
  }
  return s;
}

absl::Status SerialLayer::ForEachLayerInput(
    const ShapeFlow& in, const std::function<absl::Status(const Layer&, const ShapeFlow&)>& fn) const {
  ShapeFlow s = in;
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (absl::Status st = fn(*layers_[i], s); !st.ok()) return AtChild(st, absl::StrCat("layers[", i, "]"));
    auto next = layers_[i]->OutputShape(s);
    if (!next.ok()) return AtChild(next.status(), absl::StrCat("layers[", i, "]"));
    s = *std::move(next);
  }
  return absl::OkStatus();
}

absl::StatusOr<double> SerialLayer::NumParams(const ShapeFlow& in) const {
  double n = 0;
  absl::Status st = ForEachLayerInput(in, [&n](const Layer& l, const ShapeFlow& s) {
    auto child = l.NumParams(s);
    if (child.ok()) n += *child;
    return child.status();
  });
  if (!st.ok()) return st;
  return n;
}

absl::StatusOr<double> SerialLayer::PeakActivations(const ShapeFlow& in) const {
  double peak = 0;
  absl::Status st = ForEachLayerInput(in, [&peak](const Layer& l, const ShapeFlow& s) {
    auto child = l.PeakActivations(s);
    if (child.ok()) peak = std::max(peak, *child);
    return child.status();
  });
  if (!st.ok()) return st;
  return peak;
}

absl::StatusOr<Params> SerialLayer::Init(const RngKey& key, const ShapeFlow& in) const {
  Params p;
  ShapeFlow s = in;
  std::vector<RngKey> keys = SerialKeys(key, layers_.size());
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto child = layers_[i]->Init(keys[i], s);
    if (!child.ok()) return child.status();
    p.children.push_back(*std::move(child));
    auto next = layers_[i]->OutputShape(s);
    if (!next.ok()) return next.status();
    s = *std::move(next);
  }
  return p;
}

absl::StatusOr<ArrayFlow> SerialLayer::Apply(const Params& params, const ArrayFlow& x) const {
  auto y = ApplyMasked(params, x, NoMasks(x), ApplyContext{});
  if (!y.ok()) return y.status();
  return std::move(y->values);
}

absl::StatusOr<Layer::Masked> SerialLayer::ApplyMasked(const Params& params, const ArrayFlow& x,
                                                       const MaskFlow& masks, const ApplyContext& ctx) const {
  if (params.children.size() != layers_.size()) {
    return LayerError(name(), "params",
                      absl::StrCat("expected ", layers_.size(), " entries, got ", params.children.size()));
  }
  const std::vector<RngKey> keys = SplitRng(ctx, layers_.size());
  Masked y{x, masks};
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto next = layers_[i]->ApplyMasked(params.children[i], y.values, y.masks, ChildContext(ctx, keys, i));
    if (!next.ok()) return AtChild(next.status(), absl::StrCat("layers[", i, "]"));
    y = *std::move(next);
  }
  return y;
}

absl::StatusOr<Layer::Linearized> SerialLayer::Linearize(const Params& params, const ArrayFlow& x) const {
  return Unmasked(*this, params, x);
}

absl::StatusOr<Layer::LinearizedMasked> SerialLayer::LinearizeMasked(const Params& params, const ArrayFlow& x,
                                                                     const MaskFlow& masks,
                                                                     const ApplyContext& ctx) const {
  if (params.children.size() != layers_.size()) {
    return LayerError(name(), "params",
                      absl::StrCat("expected ", layers_.size(), " entries, got ", params.children.size()));
  }
  return LinearizeChain([this](size_t i) -> const Layer& { return *layers_[i]; }, layers_.size(),
                        [](size_t i) { return absl::StrCat("layers[", i, "]"); }, params, x, masks, ctx);
}

absl::Status SerialLayer::TransformKernel(KernelFlow* k, const KernelContext& ctx) const {
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (absl::Status st = layers_[i]->ApplyKernel(k, ctx); !st.ok()) {
      return AtChild(st, absl::StrCat("layers[", i, "]"));
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------
ParallelLayer::ParallelLayer(std::vector<LayerPtr> layers) : layers_(std::move(layers)) {
  for (size_t i = 0; i < layers_.size(); ++i) {
    req_ = i == 0 ? layers_[i]->requirements() : FoldParallel(req_, layers_[i]->requirements());
  }
}

absl::Status ParallelLayer::CheckCall(const Params& params, const ArrayFlow& x) const {
  if (absl::Status st = CheckArity(x.items.size(), x.is_list); !st.ok()) return st;
  if (params.children.size() != layers_.size()) {
    return LayerError(name(), "params", "wrong number of entries");
  }
  return absl::OkStatus();
}

absl::Status ParallelLayer::CheckArity(size_t n, bool is_list) const {
  if (!is_list || n != layers_.size()) {
    return LayerError(name(), "",
                      absl::StrCat("has ", layers_.size(), " branches but received ",
                                   is_list ? absl::StrCat("a list of ", n) : "a single input",
                                   " (use FanOut before parallel)"));
  }
  return absl::OkStatus();
}

int64_t ParallelLayer::NumLayers() const {
  int64_t n = 0;
  for (const LayerPtr& l : layers_) n += l->NumLayers();
  return n;
}

absl::StatusOr<ShapeFlow> ParallelLayer::OutputShape(const ShapeFlow& in) const {
  if (absl::Status st = CheckArity(in.items.size(), in.is_list); !st.ok()) return st;
  std::vector<Shape> out;
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto s = layers_[i]->OutputShape(ShapeFlow::Single(in.items[i]));
    if (!s.ok()) return s.status();
    if (s->is_list) {
      return LayerUnimplemented(
          name(), absl::StrCat("branch ", i, " returns a list; nested lists are not supported"));
    }
    out.push_back(s->single());
  }
  return ShapeFlow::List(std::move(out));
}

absl::StatusOr<double> ParallelLayer::NumParams(const ShapeFlow& in) const {
  if (absl::Status st = CheckArity(in.items.size(), in.is_list); !st.ok()) return st;
  double n = 0;
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto child = layers_[i]->NumParams(ShapeFlow::Single(in.items[i]));
    if (!child.ok()) return AtChild(child.status(), absl::StrCat("layers[", i, "]"));
    n += *child;
  }
  return n;
}

absl::StatusOr<double> ParallelLayer::PeakActivations(const ShapeFlow& in) const {
  if (absl::Status st = CheckArity(in.items.size(), in.is_list); !st.ok()) return st;
  double peak = 0;  // Branch outputs stay alive while the next branch runs: the sum bounds it.
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto child = layers_[i]->PeakActivations(ShapeFlow::Single(in.items[i]));
    if (!child.ok()) return AtChild(child.status(), absl::StrCat("layers[", i, "]"));
    peak += *child;
  }
  return peak;
}

absl::StatusOr<Params> ParallelLayer::Init(const RngKey& key, const ShapeFlow& in) const {
  if (absl::Status st = CheckArity(in.items.size(), in.is_list); !st.ok()) return st;
  std::vector<RngKey> keys = key.Split(static_cast<int>(layers_.size()));
  Params p;
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto child = layers_[i]->Init(keys[i], ShapeFlow::Single(in.items[i]));
    if (!child.ok()) return child.status();
    p.children.push_back(*std::move(child));
  }
  return p;
}

absl::StatusOr<ArrayFlow> ParallelLayer::Apply(const Params& params, const ArrayFlow& x) const {
  auto y = ApplyMasked(params, x, NoMasks(x), ApplyContext{});
  if (!y.ok()) return y.status();
  return std::move(y->values);
}

absl::StatusOr<Layer::Masked> ParallelLayer::ApplyMasked(const Params& params, const ArrayFlow& x,
                                                         const MaskFlow& masks,
                                                         const ApplyContext& ctx) const {
  if (absl::Status st = CheckCall(params, x); !st.ok()) return st;
  const std::vector<RngKey> keys = SplitRng(ctx, layers_.size());
  std::vector<Array> out;
  std::vector<std::optional<Array>> out_masks;
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto y = layers_[i]->ApplyMasked(params.children[i], ArrayFlow::Single(x.items[i]),
                                     MaskFlow::Single(masks.items[i]), ChildContext(ctx, keys, i));
    if (!y.ok()) return AtChild(y.status(), absl::StrCat("layers[", i, "]"));
    if (y->values.is_list) {
      return LayerUnimplemented(
          name(), absl::StrCat("branch ", i, " returns a list; nested lists are not supported"));
    }
    out.push_back(std::move(y->values.single()));
    out_masks.push_back(std::move(y->masks.single()));
  }
  return Masked{ArrayFlow::List(std::move(out)), MaskFlow::List(std::move(out_masks))};
}

absl::StatusOr<Layer::Linearized> ParallelLayer::Linearize(const Params& params, const ArrayFlow& x) const {
  return Unmasked(*this, params, x);
}

absl::StatusOr<Layer::LinearizedMasked> ParallelLayer::LinearizeMasked(const Params& params,
                                                                       const ArrayFlow& x,
                                                                       const MaskFlow& masks,
                                                                       const ApplyContext& ctx) const {
  if (absl::Status st = CheckCall(params, x); !st.ok()) return st;
  const std::vector<RngKey> keys = SplitRng(ctx, layers_.size());
  std::vector<Array> out;
  std::vector<std::optional<Array>> out_masks;
  std::vector<Pullback> pullbacks;
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto y = layers_[i]->LinearizeMasked(params.children[i], ArrayFlow::Single(x.items[i]),
                                         MaskFlow::Single(masks.items[i]), ChildContext(ctx, keys, i));
    if (!y.ok()) return AtChild(y.status(), absl::StrCat("layers[", i, "]"));
    if (y->out.values.is_list) {
      return LayerUnimplemented(
          name(), absl::StrCat("branch ", i, " returns a list; nested lists are not supported"));
    }
    out.push_back(std::move(y->out.values.single()));
    out_masks.push_back(std::move(y->out.masks.single()));
    pullbacks.push_back(std::move(y->pullback));
  }
  // Branch i sees input i only: cotangent item i goes through branch i.
  Pullback pullback = [pullbacks = std::move(pullbacks)](const ArrayFlow& dy) -> absl::StatusOr<Cotangents> {
    Cotangents c;
    std::vector<Array> dx;
    for (size_t i = 0; i < pullbacks.size(); ++i) {
      auto ci = pullbacks[i](ArrayFlow::Single(dy.items[i]));
      if (!ci.ok()) return ci.status();
      dx.push_back(std::move(ci->dx.single()));
      c.dparams.children.push_back(std::move(ci->dparams));
    }
    c.dx = ArrayFlow::List(std::move(dx));
    return c;
  };
  return LinearizedMasked{Masked{ArrayFlow::List(std::move(out)), MaskFlow::List(std::move(out_masks))},
                          std::move(pullback)};
}

absl::Status ParallelLayer::TransformKernel(KernelFlow* k, const KernelContext& ctx) const {
  if (absl::Status st = CheckArity(k->items.size(), k->is_list); !st.ok()) return st;
  for (size_t i = 0; i < layers_.size(); ++i) {
    KernelFlow branch = KernelFlow::Single(std::move(k->items[i]));
    if (absl::Status st = layers_[i]->ApplyKernel(&branch, ctx); !st.ok()) {
      return AtChild(st, absl::StrCat("layers[", i, "]"));
    }
    if (branch.is_list) {
      return LayerUnimplemented(
          name(), absl::StrCat("branch ", i, " returns a list; nested lists are not supported"));
    }
    k->items[i] = std::move(branch.single());
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------------
RepeatLayer::RepeatLayer(LayerPtr layer, int n) : layer_(std::move(layer)), n_(n) {}

Requirements RepeatLayer::requirements() const { return layer_->requirements(); }

absl::StatusOr<ShapeFlow> RepeatLayer::OutputShape(const ShapeFlow& in) const {
  if (n_ < 0) return LayerError(name(), "n", absl::StrCat("must be >= 0, got ", n_));
  if (n_ == 0) return in;
  auto out = layer_->OutputShape(in);
  if (!out.ok()) return out.status();
  if (out->items != in.items || out->is_list != in.is_list) {
    return LayerError(
        name(), "layer",
        absl::StrCat("the repeated layer ", layer_->name(), " must keep its input shape, but maps ",
                     ShapeToString(in.items.front()), " to ", ShapeToString(out->items.front())));
  }
  return out;
}

absl::StatusOr<double> RepeatLayer::NumParams(const ShapeFlow& in) const {
  auto shape_ok = OutputShape(in);
  if (!shape_ok.ok()) return shape_ok.status();
  auto one = layer_->NumParams(in);
  if (!one.ok()) return AtChild(one.status(), "layer");
  return *one * n_;
}

absl::StatusOr<double> RepeatLayer::PeakActivations(const ShapeFlow& in) const {
  auto shape_ok = OutputShape(in);
  if (!shape_ok.ok()) return shape_ok.status();
  return layer_->PeakActivations(in);  // The layer keeps shapes: every copy sees `in`.
}

absl::StatusOr<Params> RepeatLayer::Init(const RngKey& key, const ShapeFlow& in) const {
  auto shape_ok = OutputShape(in);
  if (!shape_ok.ok()) return shape_ok.status();
  Params p;
  std::vector<RngKey> keys = SerialKeys(key, n_);
  for (int i = 0; i < n_; ++i) {
    auto child = layer_->Init(keys[i], in);
    if (!child.ok()) return child.status();
    p.children.push_back(*std::move(child));
  }
  return p;
}

absl::StatusOr<ArrayFlow> RepeatLayer::Apply(const Params& params, const ArrayFlow& x) const {
  auto y = ApplyMasked(params, x, NoMasks(x), ApplyContext{});
  if (!y.ok()) return y.status();
  return std::move(y->values);
}

absl::StatusOr<Layer::Masked> RepeatLayer::ApplyMasked(const Params& params, const ArrayFlow& x,
                                                       const MaskFlow& masks, const ApplyContext& ctx) const {
  if (params.children.size() != static_cast<size_t>(n_)) {
    return LayerError(name(), "params", "wrong number of entries");
  }
  const std::vector<RngKey> keys = SplitRng(ctx, n_);
  Masked y{x, masks};
  for (int i = 0; i < n_; ++i) {
    auto next = layer_->ApplyMasked(params.children[i], y.values, y.masks, ChildContext(ctx, keys, i));
    if (!next.ok()) return AtChild(next.status(), "layer");
    y = *std::move(next);
  }
  return y;
}

absl::StatusOr<Layer::Linearized> RepeatLayer::Linearize(const Params& params, const ArrayFlow& x) const {
  return Unmasked(*this, params, x);
}

absl::StatusOr<Layer::LinearizedMasked> RepeatLayer::LinearizeMasked(const Params& params, const ArrayFlow& x,
                                                                     const MaskFlow& masks,
                                                                     const ApplyContext& ctx) const {
  if (params.children.size() != static_cast<size_t>(n_)) {
    return LayerError(name(), "params", "wrong number of entries");
  }
  return LinearizeChain([this](size_t) -> const Layer& { return *layer_; }, n_,
                        [](size_t) { return std::string("layer"); }, params, x, masks, ctx);
}

absl::Status RepeatLayer::TransformKernel(KernelFlow* k, const KernelContext& ctx) const {
  if (n_ < 0) return LayerError(name(), "n", absl::StrCat("must be >= 0, got ", n_));
  for (int i = 0; i < n_; ++i) {
    const bool reversed = k->items.front().is_reversed;
    if (absl::Status st = layer_->ApplyKernel(k, ctx); !st.ok()) return AtChild(st, "layer");
    if (k->items.front().is_reversed != reversed) {
      return LayerError(name(), "layer",
                        "the repeated layer changes the kernel's metadata (is_reversed); repeat an "
                        "even number of such layers as one block instead");
    }
  }
  return absl::OkStatus();
}

}  // namespace NT_CORE_NS
