// serial, parallel and repeat.
#ifndef NT_CORE_COMBINATORS_H_
#define NT_CORE_COMBINATORS_H_

#include <functional>
#include <vector>

#include "core/layer.h"
#include "core/real.h"

namespace NT_CORE_NS {

class SerialLayer : public Layer {
 public:
  explicit SerialLayer(std::vector<LayerPtr> layers);
  std::string name() const override { return "serial"; }
  Requirements requirements() const override { return req_; }
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override;
  absl::StatusOr<Params> Init(const RngKey& key, const ShapeFlow& in) const override;
  absl::StatusOr<double> NumParams(const ShapeFlow& in) const override;
  absl::StatusOr<double> PeakActivations(const ShapeFlow& in) const override;
  absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const override;
  using Layer::ApplyMasked;
  absl::StatusOr<Masked> ApplyMasked(const Params& params, const ArrayFlow& x, const MaskFlow& masks,
                                     const ApplyContext& ctx) const override;
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;
  absl::StatusOr<LinearizedMasked> LinearizeMasked(const Params& params, const ArrayFlow& x,
                                                   const MaskFlow& masks,
                                                   const ApplyContext& ctx) const override;
  const std::vector<LayerPtr>& layers() const { return layers_; }
  int64_t NumLayers() const override;
  // kDiagonal when every layer is; kReadout when only the last one is a readout.
  CovUse cov_use() const override;

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;
  bool is_combinator() const override { return true; }

 private:
  // Calls fn(layer, its input shapes) for every layer in order; errors are prefixed with the layer's index.
  absl::Status ForEachLayerInput(const ShapeFlow& in,
                                 const std::function<absl::Status(const Layer&, const ShapeFlow&)>& fn) const;
  std::vector<LayerPtr> layers_;
  Requirements req_;
};

// Branch i acts on input i; the output is the list of branch outputs.
class ParallelLayer : public Layer {
 public:
  explicit ParallelLayer(std::vector<LayerPtr> layers);
  std::string name() const override { return "parallel"; }
  Requirements requirements() const override { return req_; }
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override;
  absl::StatusOr<Params> Init(const RngKey& key, const ShapeFlow& in) const override;
  absl::StatusOr<double> NumParams(const ShapeFlow& in) const override;
  absl::StatusOr<double> PeakActivations(const ShapeFlow& in) const override;
  absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const override;
  using Layer::ApplyMasked;
  absl::StatusOr<Masked> ApplyMasked(const Params& params, const ArrayFlow& x, const MaskFlow& masks,
                                     const ApplyContext& ctx) const override;
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;
  absl::StatusOr<LinearizedMasked> LinearizeMasked(const Params& params, const ArrayFlow& x,
                                                   const MaskFlow& masks,
                                                   const ApplyContext& ctx) const override;
  int64_t NumLayers() const override;

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;
  bool is_combinator() const override { return true; }

 private:
  absl::Status CheckArity(size_t n, bool is_list) const;
  // CheckArity and one params entry per branch (apply_fn and its reverse mode).
  absl::Status CheckCall(const Params& params, const ArrayFlow& x) const;
  std::vector<LayerPtr> layers_;
  Requirements req_;
};

// serial(layer, ..., layer) with n copies sharing the layer's definition (parameters are not shared).
// The layer must preserve shapes and kernel metadata, as upstream's compiled loop requires.
class RepeatLayer : public Layer {
 public:
  RepeatLayer(LayerPtr layer, int n);
  std::string name() const override { return "repeat"; }
  Requirements requirements() const override;
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override;
  absl::StatusOr<Params> Init(const RngKey& key, const ShapeFlow& in) const override;
  absl::StatusOr<double> NumParams(const ShapeFlow& in) const override;
  absl::StatusOr<double> PeakActivations(const ShapeFlow& in) const override;
  absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const override;
  using Layer::ApplyMasked;
  absl::StatusOr<Masked> ApplyMasked(const Params& params, const ArrayFlow& x, const MaskFlow& masks,
                                     const ApplyContext& ctx) const override;
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;
  absl::StatusOr<LinearizedMasked> LinearizeMasked(const Params& params, const ArrayFlow& x,
                                                   const MaskFlow& masks,
                                                   const ApplyContext& ctx) const override;
  int64_t NumLayers() const override { return n_ * layer_->NumLayers(); }
  CovUse cov_use() const override {
    return layer_->cov_use() == CovUse::kDiagonal ? CovUse::kDiagonal : CovUse::kFull;
  }

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;
  bool is_combinator() const override { return true; }

 private:
  LayerPtr layer_;
  int n_;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_COMBINATORS_H_
