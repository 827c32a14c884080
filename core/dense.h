// Dense (fully connected) layer, NTK or standard parameterization.
#ifndef NT_CORE_DENSE_H_
#define NT_CORE_DENSE_H_

#include <array>

#include "core/layer.h"
#include "core/real.h"

namespace NT_CORE_NS {

enum class Parameterization { kNtk, kStandard };

struct DenseOptions {
  int64_t out_dim = 0;
  double W_std = 1.0;
  std::optional<double> b_std;  // None: no bias.
  int batch_axis = 0;
  int channel_axis = -1;
  Parameterization parameterization = Parameterization::kNtk;
  std::array<double, 2> s = {1.0, 1.0};
};

// Parses "ntk" / "standard" (case-insensitive).
absl::StatusOr<Parameterization> ParseParameterization(const std::string& layer, const std::string& value);

class DenseLayer : public Layer {
 public:
  explicit DenseLayer(DenseOptions o) : o_(o) {}
  // Argument checks (done once when a network is built from a request).
  static absl::Status Validate(const DenseOptions& o);

  std::string name() const override { return "Dense"; }
  Requirements requirements() const override;
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override;
  absl::StatusOr<Params> Init(const RngKey& key, const ShapeFlow& in) const override;
  absl::StatusOr<double> NumParams(const ShapeFlow& in) const override;
  absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const override;
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;
  // A position stays masked only if every input channel is masked.
  absl::StatusOr<MaskFlow> MaskFn(const MaskFlow& masks, const ShapeFlow& shapes) const override;
  bool remask_kernel() const override { return true; }
  CovUse cov_use() const override { return CovUse::kDiagonal; }  // Entrywise.

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;

 private:
  int64_t width() const;
  DenseOptions o_;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_DENSE_H_
