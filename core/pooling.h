// Pooling layers (linear.md 5.4, 5.5): AvgPool / SumPool over windows of the spatial axes, and
// GlobalAvgPool / GlobalSumPool over all of them. Parameter-free linear maps: the kernel of the output
// is the input kernel with the map applied to both of its position arguments.
#ifndef NT_CORE_POOLING_H_
#define NT_CORE_POOLING_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/layer.h"
#include "core/real.h"
#include "core/spatial.h"

namespace NT_CORE_NS {

enum class PoolKind { kAvg, kSum };

struct PoolOptions {
  // One entry per spatial axis, in activation order (batch and channel removed).
  std::vector<int64_t> window_shape;
  std::vector<int64_t> strides;  // Empty: all ones.
  Padding padding = Padding::kValid;
  // AvgPool with SAME padding only: divide by the in-bounds part of each window.
  bool normalize_edges = false;
  int batch_axis = 0;
  int channel_axis = -1;
};

// AvgPool / SumPool.
class PoolLayer : public Layer {
 public:
  using PoolKind = ::NT_CORE_NS::PoolKind;

  PoolLayer(PoolKind kind, PoolOptions o) : kind_(kind), o_(std::move(o)) {}
  // Argument checks that need no input shape (window/stride entries, SumPool's missing normalize_edges).
  static absl::Status Validate(PoolKind kind, const PoolOptions& o);

  std::string name() const override { return kind_ == PoolKind::kAvg ? "AvgPool" : "SumPool"; }
  Requirements requirements() const override;
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override;
  absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const override;
  // Linear: the pullback applies the transposed per-axis window maps.
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;
  // Channel-collapsed masks only; strided outputs take the mask of their window's centre.
  absl::StatusOr<MaskFlow> MaskFn(const MaskFlow& masks, const ShapeFlow& shapes) const override;
  bool remask_kernel() const override { return true; }

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;

 private:
  // Batch/channel axes and per-spatial-axis window and stride for an activation of `rank`.
  struct Axes {
    int batch = 0;
    int channel = 0;
    std::vector<int> spatial;
    std::vector<int64_t> window;
    std::vector<int64_t> strides;
  };
  absl::StatusOr<Axes> ResolveAxes(int rank) const;
  // The forward map along one spatial axis of length n; `squared` gives the weights 1/nu^2 of the
  // diagonal-spatial kernel.
  AxisMatrix PoolMatrix(int64_t n, int64_t window, int64_t stride, bool squared) const;
  absl::StatusOr<Shape> PooledShape(const Shape& in) const;

  PoolKind kind_;
  PoolOptions o_;
};

struct GlobalPoolOptions {
  int batch_axis = 0;
  int channel_axis = -1;
};

// GlobalAvgPool / GlobalSumPool: removes every spatial axis, keeping batch and channel in their order.
class GlobalPoolLayer : public Layer {
 public:
  using PoolKind = ::NT_CORE_NS::PoolKind;

  GlobalPoolLayer(PoolKind kind, GlobalPoolOptions o) : kind_(kind), o_(o) {}

  std::string name() const override { return kind_ == PoolKind::kAvg ? "GlobalAvgPool" : "GlobalSumPool"; }
  Requirements requirements() const override;
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override;
  absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const override;
  // The average runs over unmasked positions only (upstream's masked mean).
  using Layer::ApplyMasked;
  absl::StatusOr<Masked> ApplyMasked(const Params& params, const ArrayFlow& x,
                                     const MaskFlow& masks) const override;
  // Linear in x: each input entry receives its output's cotangent times the output's divisor (masked
  // inputs none).
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;
  absl::StatusOr<LinearizedMasked> LinearizeMasked(const Params& params, const ArrayFlow& x,
                                                   const MaskFlow& masks,
                                                   const ApplyContext& ctx) const override;
  // Channel-collapsed masks only; an output is masked iff all its positions are.
  CovUse cov_use() const override { return CovUse::kReadout; }
  absl::StatusOr<MaskFlow> MaskFn(const MaskFlow& masks, const ShapeFlow& shapes) const override;

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;

 private:
  absl::StatusOr<std::pair<int, int>> ResolveAxes(int rank) const;
  // Sum (or masked mean) over the spatial axes of x; `mask` (1 = masked) broadcasts against x. `scale`
  // (optional) receives each output's factor (1, or 1 / its count of unmasked positions).
  absl::StatusOr<Array> Pool(const Array& x, const Array* mask, Array* scale = nullptr) const;
  // The forward pass (masked when `mask` is set) with its pullback.
  absl::StatusOr<Linearized> LinearizePool(const Array& x, const std::optional<Array>& mask) const;

  PoolKind kind_;
  GlobalPoolOptions o_;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_POOLING_H_
