// ExpNormalized(gamma, shift, do_clip): the normalized Gaussian kernel, defined at the kernel level only
// (no finite network).
#ifndef NT_CORE_EXP_NORMALIZED_H_
#define NT_CORE_EXP_NORMALIZED_H_

#include <limits>
#include <string>

#include "core/elementwise.h"
#include "core/real.h"

namespace NT_CORE_NS {

class ExpNormalizedLayer : public ElementwiseLayer {
 public:
  ExpNormalizedLayer(double gamma, double shift, bool do_clip)
      : gamma_(gamma), shift_(shift), do_clip_(do_clip) {}
  std::string name() const override { return "ExpNormalized"; }
  absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const override;
  // No special T_diag (as upstream): variances go through the pair map with q11 = q12 = q22.
  void PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
               double* tdot) const override;
  double Phi(double) const override { return std::numeric_limits<double>::quiet_NaN(); }
  double DPhi(double) const override { return std::numeric_limits<double>::quiet_NaN(); }
  // T(0, 0, 0) = 1e-15 exp(gamma shift) is not 0: masked entries are zeroed again (as upstream).
  bool remask_kernel() const override { return true; }

 private:
  double gamma_, shift_;
  bool do_clip_;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_EXP_NORMALIZED_H_
