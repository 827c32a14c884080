// Flatten (linear.md 5.6): every non-batch axis merged into one channel axis. Its kernel is the mean of
// the spatial diagonal, i.e. the NNGP of the flattened vector normalised by its length.
#ifndef NT_CORE_FLATTEN_H_
#define NT_CORE_FLATTEN_H_

#include <vector>

#include "core/layer.h"
#include "core/real.h"

namespace NT_CORE_NS {

struct FlattenOptions {
  int batch_axis = 0;
  // 0 or -2: output (N, features); 1 or -1: output (features, N).
  int batch_axis_out = 0;
};

class FlattenLayer : public Layer {
 public:
  explicit FlattenLayer(FlattenOptions o) : o_(o) {}
  static absl::Status Validate(const FlattenOptions& o);

  std::string name() const override { return "Flatten"; }
  // Diagonal(YES, YES), batch axis only; a network starting with Flatten flattens its inputs.
  Requirements requirements() const override;
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override;
  absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const override;
  // A permutation of the entries: the pullback undoes it.
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;
  // The mask broadcast to the activation and rearranged exactly like the values.
  absl::StatusOr<MaskFlow> MaskFn(const MaskFlow& masks, const ShapeFlow& shapes) const override;
  // The mean of the spatial diagonal.
  CovUse cov_use() const override { return CovUse::kDiagonal; }

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;

 private:
  // Canonical output batch axis (0 or 1).
  int batch_out() const { return o_.batch_axis_out == 0 || o_.batch_axis_out == -2 ? 0 : 1; }
  // Moves the batch axis first (batch_out 0) or last (1) and merges the rest.
  absl::StatusOr<Array> FlattenArray(const Array& x) const;
  // The axis permutation FlattenArray applies before merging.
  std::vector<int> Permutation(int rank) const;

  FlattenOptions o_;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_FLATTEN_H_
