// Dropout(rate, mode): rate is the keep probability (linear.md 5.9).
#ifndef NT_CORE_DROPOUT_H_
#define NT_CORE_DROPOUT_H_

#include <string>

#include "core/layer.h"
#include "core/real.h"

namespace NT_CORE_NS {

struct DropoutOptions {
  double rate = 1.0;  // Keep probability, in (0, 1].
  bool train = true;  // mode 'train' (kernel: same-sample, same-position entries scale by 1/rate) or 'test'.
};

class DropoutLayer : public Layer {
 public:
  explicit DropoutLayer(DropoutOptions o) : o_(o) {}
  static absl::Status Validate(const DropoutOptions& o);

  std::string name() const override { return "Dropout"; }
  Requirements requirements() const override;
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override;
  // Test mode: the identity. Train mode needs apply_fn's rng (ApplyMasked with a context).
  absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const override;
  // Train mode: keep each entry with probability `rate` (drawn from ctx.rng) and scale it by 1 / rate.
  using Layer::ApplyMasked;
  absl::StatusOr<Masked> ApplyMasked(const Params& params, const ArrayFlow& x, const MaskFlow& masks,
                                     const ApplyContext& ctx) const override;
  // Test mode: the identity (train mode without rng fails as Apply does).
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;
  // Train mode with rng: the pullback multiplies by the same keep mask / rate as the forward pass.
  absl::StatusOr<LinearizedMasked> LinearizeMasked(const Params& params, const ArrayFlow& x,
                                                   const MaskFlow& masks,
                                                   const ApplyContext& ctx) const override;

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;

 private:
  DropoutOptions o_;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_DROPOUT_H_
