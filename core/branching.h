// FanOut, FanInSum and Identity.
#ifndef NT_CORE_BRANCHING_H_
#define NT_CORE_BRANCHING_H_

#include <string>
#include <vector>

#include "core/layer.h"
#include "core/real.h"

namespace NT_CORE_NS {

class IdentityLayer : public Layer {
 public:
  std::string name() const override { return "Identity"; }
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override { return in; }
  absl::StatusOr<ArrayFlow> Apply(const Params&, const ArrayFlow& x) const override { return x; }
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;
  CovUse cov_use() const override { return CovUse::kDiagonal; }

 protected:
  absl::Status TransformKernel(KernelFlow*, const KernelContext&) const override { return absl::OkStatus(); }
};

// num perfectly correlated copies of the input.
class FanOutLayer : public Layer {
 public:
  explicit FanOutLayer(int num) : num_(num) {}
  std::string name() const override { return "FanOut"; }
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override;
  absl::StatusOr<ArrayFlow> Apply(const Params&, const ArrayFlow& x) const override;
  // The pullback sums the cotangents of the copies.
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;
  absl::StatusOr<MaskFlow> MaskFn(const MaskFlow& masks, const ShapeFlow& shapes) const override;

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;

 private:
  int num_;
};

// Sum of independent branches; more than one input must be Gaussian.
class FanInSumLayer : public Layer {
 public:
  std::string name() const override { return "FanInSum"; }
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override;
  absl::StatusOr<ArrayFlow> Apply(const Params&, const ArrayFlow& x) const override;
  // Every input receives the output's cotangent.
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;
  // A position is masked only where every input that has a mask masks it (absent masks are ignored, as
  // upstream does).
  absl::StatusOr<MaskFlow> MaskFn(const MaskFlow& masks, const ShapeFlow& shapes) const override;

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;
  // A list of inputs of one shape.
  absl::Status CheckInputs(const ArrayFlow& x) const;
};

// Elementwise product of independent branches (core.md 4.7): covariances multiply, the NTK follows the
// product rule, and the output is Gaussian only for a single Gaussian input.
class FanInProdLayer : public FanInSumLayer {
 public:
  std::string name() const override { return "FanInProd"; }
  absl::StatusOr<ArrayFlow> Apply(const Params&, const ArrayFlow& x) const override;
  // Product rule: input i receives the cotangent times the product of the other inputs.
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;
};

// Concatenation of independent branches along `axis` (core.md 4.8): along the channel axis the kernels
// average, weighted by the branches' finite widths; along a spatial axis they are assembled block-diagonally
// (zero covariance across branches). Concatenating samples (the batch axis) is refused: tiles hold blocks
// of samples.
class FanInConcatLayer : public Layer {
 public:
  explicit FanInConcatLayer(int axis) : axis_(axis) {}
  std::string name() const override { return "FanInConcat"; }
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override;
  absl::StatusOr<ArrayFlow> Apply(const Params&, const ArrayFlow& x) const override;
  // The pullback splits the cotangent along the axis.
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;
  absl::StatusOr<MaskFlow> MaskFn(const MaskFlow& masks, const ShapeFlow& shapes) const override;

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;

 private:
  int axis_;
};

// Shared by the fan-in layers: the inputs must agree on layout and axes; is_reversed is harmonised by
// majority (ties: not reversed), as upstream's _preprocess_kernels_for_fan_in.
absl::Status PrepareFanIn(const std::string& layer, std::vector<Kernel>* ks);

}  // namespace NT_CORE_NS

#endif  // NT_CORE_BRANCHING_H_
