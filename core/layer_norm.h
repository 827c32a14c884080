// LayerNorm(axis, eps): normalisation over axes that include the channel axis (linear.md 5.8).
#ifndef NT_CORE_LAYER_NORM_H_
#define NT_CORE_LAYER_NORM_H_

#include <cstdint>
#include <string>
#include <vector>

#include "core/layer.h"
#include "core/real.h"

namespace NT_CORE_NS {

struct LayerNormOptions {
  std::vector<int> axis = {-1};
  double eps = 1e-12;
  int batch_axis = 0;
  int channel_axis = -1;
};

class LayerNormLayer : public Layer {
 public:
  explicit LayerNormLayer(LayerNormOptions o) : o_(std::move(o)) {}
  static absl::Status Validate(const LayerNormOptions& o);

  std::string name() const override { return "LayerNorm"; }
  Requirements requirements() const override;
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override;
  absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const override;
  // The pullback of each group: s (dy - mean(dy) - xhat mean(dy xhat)), xhat the output, s = 1 / sqrt(eps
  // + var).
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;
  // Scales every entry by per-position factors computed from the variances alone.
  CovUse cov_use() const override { return CovUse::kDiagonal; }

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;

 private:
  // The normalised axes of an activation of `rank`, canonical and sorted.
  absl::StatusOr<std::vector<int>> Axes(int rank) const;
  // The forward pass in the layout where each group is a row: x transposed by `perm` (the normalised axes
  // last), every row of `group` entries normalised; `scale` holds each row's 1 / sqrt(eps + var).
  struct Normalized {
    Array t;
    std::vector<int> perm, inv;
    int64_t group = 1;
    std::vector<Real> scale;
  };
  absl::StatusOr<Normalized> Normalize(const Array& x) const;
  LayerNormOptions o_;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_LAYER_NORM_H_
