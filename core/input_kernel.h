// Building the input Kernel from raw arrays (core.md section 2.3), tile by tile.
#ifndef NT_CORE_INPUT_KERNEL_H_
#define NT_CORE_INPUT_KERNEL_H_

#include <string>

#include "absl/status/statusor.h"
#include "core/array.h"
#include "core/kernel.h"
#include "core/real.h"

namespace NT_CORE_NS {

// An input batch viewed as (N, P, C): batch first, positions in input order, channels last. Inputs
// already in that order (batch first, channels last) are used in place, without a copy.
class CanonicalInput {
 public:
  const Real* data() const { return owned_ ? storage_.data() : external_; }
  int64_t n() const { return n_; }
  int64_t p() const { return p_; }
  int64_t c() const { return c_; }

  Shape spatial;  // Spatial sizes in input order (empty for flat inputs).
  Shape shape;    // The (post-flatten) activation shape, as shape1/shape2 report it.
  int batch_axis = 0;
  int channel_axis = 1;

 private:
  friend absl::StatusOr<CanonicalInput> Canonicalize(const Array& x, int batch_axis, int channel_axis,
                                                     bool flatten, const std::string& field,
                                                     bool check_finite);
  bool owned_ = false;
  Array storage_;  // The rearranged copy, when the input's axes needed moving.
  const Real* external_ = nullptr;
  int64_t n_ = 0, p_ = 1, c_ = 1;
};

// `flatten` reproduces channel_axis=None (a Flatten first layer): inputs become (N, prod(rest)).
// The view may point into `x`, which must outlive it. With `check_finite`, NaN/Inf entries are refused.
absl::StatusOr<CanonicalInput> Canonicalize(const Array& x, int batch_axis, int channel_axis, bool flatten,
                                            const std::string& field, bool check_finite = true);

// nngp of rows [r0, r1) of a against rows [c0, c1) of b: (r, c) + Sp, divided by a's channel count.
Array InputNngp(const CanonicalInput& a, int64_t r0, int64_t r1, const CanonicalInput& b, int64_t c0,
                int64_t c1, bool diagonal_spatial);
// Diagonal-batch covariance of rows [r0, r1): (r,) + Sp.
Array InputCovDiag(const CanonicalInput& a, int64_t r0, int64_t r1, bool diagonal_spatial);

// max |a_i - b_i| < eps over the same shapes (upstream's x1_is_x2 test).
bool SameInputs(const Array& a, const Array& b, Real eps = 1e-12);

}  // namespace NT_CORE_NS

#endif  // NT_CORE_INPUT_KERNEL_H_
