// Convolutions: Conv (shared weights), ConvTranspose (shared, transposed) and ConvLocal (unshared, "LCN"),
// upstream's _Conv family (linear.md 5.3).
#ifndef NT_CORE_CONV_H_
#define NT_CORE_CONV_H_

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "core/dense.h"
#include "core/layer.h"
#include "core/real.h"
#include "core/spatial.h"

namespace NT_CORE_NS {

enum class ConvKind { kConv, kTranspose, kLocal };

struct ConvOptions {
  int64_t out_chan = 0;
  std::vector<int64_t> filter_shape;  // In the order of rhs_spec's spatial letters.
  std::vector<int64_t> strides;       // Empty: ones. Same order as filter_shape.
  Padding padding = Padding::kValid;
  double W_std = 1.0;
  std::optional<double> b_std;  // None: no bias.
  // (lhs_spec, rhs_spec, out_spec), e.g. ("NHWC", "HWIO", "NHWC"); empty strings: the default.
  std::array<std::string, 3> dimension_numbers;
  Parameterization parameterization = Parameterization::kNtk;
  std::array<double, 2> s = {1.0, 1.0};
};

class ConvLayer : public Layer {
 public:
  ConvLayer(ConvKind kind, ConvOptions o);
  static absl::Status Validate(ConvKind kind, const ConvOptions& o);

  std::string name() const override;
  Requirements requirements() const override;
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override;
  absl::StatusOr<Params> Init(const RngKey& key, const ShapeFlow& in) const override;
  absl::StatusOr<double> NumParams(const ShapeFlow& in) const override;
  absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const override;
  // Reverse mode: the transposed convolution for the inputs, input-output correlations for W, sums of the
  // output cotangents for b. Masks: the default LinearizeMasked (no ApplyMasked override).
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;
  absl::StatusOr<MaskFlow> MaskFn(const MaskFlow& masks, const ShapeFlow& shapes) const override;
  bool remask_kernel() const override { return true; }
  // The output's (q, q) entries read only (i, i) entries (the same tap on both sides).
  CovUse cov_use() const override { return CovUse::kDiagonal; }

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;

 private:
  // Geometry resolved against an input shape (spatial axes in lhs order).
  struct Geometry {
    int64_t n = 0, c_in = 0;
    std::vector<int64_t> in, out;  // Spatial sizes.
    std::vector<AxisTaps> taps;    // Per spatial axis (transposed: before the CIRCULAR fold).
    std::vector<int64_t> out_before_fold;
  };
  absl::StatusOr<Geometry> Resolve(const Shape& in) const;
  // What the forward pass keeps for its pullback (defined in conv.cc).
  struct Saved;
  // apply_fn proper, shared by Apply and Linearize; fills `saved` when not null.
  absl::StatusOr<Array> Forward(const Params& params, const ArrayFlow& xf, Saved* saved) const;
  // The pullback of the forward pass that filled `saved`.
  absl::StatusOr<Cotangents> Backward(const Saved& saved, const ArrayFlow& dyf) const;
  // Shapes of W (laid out by rhs_spec) and, with a bias, b (by out_spec).
  std::vector<Shape> ParamShapes(const Geometry& g) const;
  int64_t width() const;
  int64_t filter_size() const;
  // Activation `x` in lhs layout -> (N, spatial in lhs order, C); and back from that order to out_spec.
  Array ToCanonical(const Array& x) const;
  Array FromCanonical(const Array& y) const;
  // The per-axis linear map of the diagonal-layout transform (1/k taps, folded when CIRCULAR transposed).
  AxisMatrix DiagonalMatrix(const Geometry& g, int d) const;
  // The filter-averaged covariance transform of one kernel array (linear.md 5.3).
  // factor * K(t [+ plus]) + shift, the shift only on the spatial diagonal for ConvLocal's full layout.
  Array Transform(const Array& t, int lead, bool diagonal_spatial, const Geometry& g, double factor,
                  double shift, const Array* plus) const;

  ConvKind kind_;
  ConvOptions o_;
  std::string lhs_, rhs_, out_;
  std::vector<int64_t> k_, strides_;  // In lhs spatial order.
  std::vector<int> rhs_of_lhs_;       // rhs spatial index of each lhs spatial axis.
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_CONV_H_
