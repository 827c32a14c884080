// DotGeneral(lhs or rhs, dimension_numbers): contraction of the activations with a constant (linear.md
// 5.12). The kernel is the exact covariance of the contracted activations.
#ifndef NT_CORE_DOT_GENERAL_H_
#define NT_CORE_DOT_GENERAL_H_

#include <optional>
#include <string>
#include <vector>

#include "core/layer.h"
#include "core/position_map.h"
#include "core/real.h"

namespace NT_CORE_NS {

struct DotGeneralOptions {
  // At most one of them; neither: the identity.
  std::optional<Array> lhs;
  std::optional<Array> rhs;
  // XLA's ((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch)).
  std::vector<int> lhs_contracting, rhs_contracting, lhs_batch, rhs_batch;
  int batch_axis = 0;
  int channel_axis = -1;
};

class DotGeneralLayer : public Layer {
 public:
  explicit DotGeneralLayer(DotGeneralOptions o) : o_(std::move(o)) {}
  static absl::Status Validate(const DotGeneralOptions& o);

  std::string name() const override { return "DotGeneral"; }
  Requirements requirements() const override;
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override;
  absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const override;
  // Linear in x: the pullback contracts the output cotangent back with the constant.
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;
  absl::StatusOr<MaskFlow> MaskFn(const MaskFlow& masks, const ShapeFlow& shapes) const override;

  // One contraction of the activation (x) with the constant, as lax.dot_general.
  struct Geometry {
    // Where each output axis comes from: a dot batch dimension, an axis of x, or an axis of the constant.
    enum Source { kBatch, kX, kConstant };
    std::vector<std::pair<Source, int>> out_axes;
    Shape out_shape;
    std::vector<int> x_contracting, c_contracting, x_batch, c_batch;
  };
  // Geometry for an input of `shape`, checking the dimension numbers against it.
  absl::StatusOr<Geometry> Plan(const Shape& shape) const;

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;

 private:
  const Array* constant() const { return o_.rhs ? &*o_.rhs : o_.lhs ? &*o_.lhs : nullptr; }
  // dot_general(x, c) or dot_general(c, x) for a constant `c` of the constant's shape.
  static Array Contract(const Geometry& g, const Array& x, const Array& c);
  // The transpose of Contract in x: the cotangent of x (of `x_shape`) for the cotangent `dy` of the output.
  static Array ContractTransposed(const Geometry& g, const Array& dy, const Array& c, const Shape& x_shape);
  DotGeneralOptions o_;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_DOT_GENERAL_H_
