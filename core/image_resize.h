// ImageResize: resampling of activations mimicking jax.image.resize (linear.md 5.10). The kernel is
// resampled with the same per-axis linear maps on every axis copy (LINEAR and NEAREST only).
#ifndef NT_CORE_IMAGE_RESIZE_H_
#define NT_CORE_IMAGE_RESIZE_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/layer.h"
#include "core/real.h"
#include "core/spatial.h"

namespace NT_CORE_NS {

// jax.image.ResizeMethod.
enum class ResizeMethod { kNearest, kLinear, kCubic, kLanczos3, kLanczos5 };

// jax's ResizeMethod.from_string (case-sensitive, lower-case names): 'nearest'; 'linear', 'bilinear',
// 'trilinear', 'triangle'; 'cubic', 'bicubic', 'tricubic'; 'lanczos3'; 'lanczos5'.
absl::StatusOr<ResizeMethod> ParseResizeMethod(const std::string& layer, const std::string& method);
const char* ResizeMethodName(ResizeMethod m);

// The (n_out x n_in) map jax.image.resize applies along one axis whose size changes: a gather for
// NEAREST, else jax's compute_weight_mat (normalised kernel weights, rows outside the input zeroed).
// Computed in double (upstream: float32, except NEAREST's offsets, which stay float32 here too).
AxisMatrix ResizeMatrix(ResizeMethod method, int64_t n_in, int64_t n_out, bool antialias);

struct ImageResizeOptions {
  std::vector<int64_t> shape;  // One entry per activation axis; -1 keeps the axis' size.
  std::string method;
  bool antialias = true;
  std::string precision = "HIGHEST";  // Accepted for compatibility; we always compute in double.
  int batch_axis = 0;
  int channel_axis = -1;
};

class ImageResizeLayer : public Layer {
 public:
  explicit ImageResizeLayer(ImageResizeOptions o);
  // Argument checks: shape entries -1 or positive, a known method and precision.
  static absl::Status Validate(const ImageResizeOptions& o);

  std::string name() const override { return "ImageResize"; }
  // Diagonal batch only if the batch axis keeps its size; diagonal spatial input NO if any spatial
  // entry is set (even to the current size, as upstream).
  Requirements requirements() const override;
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override;
  absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const override;
  // Linear in x: the pullback applies the transposed per-axis resize maps.
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;
  // not resize(not mask): a position stays unmasked if any unmasked input contributes to it.
  absl::StatusOr<MaskFlow> MaskFn(const MaskFlow& masks, const ShapeFlow& shapes) const override;
  bool remask_kernel() const override { return true; }

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;

 private:
  // Output shape for an input shape of the right rank (-1 entries replaced).
  Shape Target(const Shape& in) const;
  // The (axis, map) pairs that resize `in` to `target`, in the order they apply.
  std::vector<std::pair<int, AxisMatrix>> Maps(const Shape& in, const Shape& target) const;
  // Resizes every axis of `x` whose size differs from `target`.
  Array Resize(const Array& x, const Shape& target) const;

  ImageResizeOptions o_;
  absl::StatusOr<ResizeMethod> method_;
  int batch_axis_ = 0;    // Reduced mod len(shape), as upstream.
  int channel_axis_ = 0;  // Likewise.
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_IMAGE_RESIZE_H_
