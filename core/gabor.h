// Gabor() = exp(-x^2) sin(x).
#ifndef NT_CORE_GABOR_H_
#define NT_CORE_GABOR_H_

#include <cmath>
#include <string>

#include "core/elementwise.h"
#include "core/real.h"

namespace NT_CORE_NS {

class GaborLayer : public ElementwiseLayer {
 public:
  std::string name() const override { return "Gabor"; }
  void PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
               double* tdot) const override;
  void DiagMap(const double* q, int64_t n, double* t) const override;
  double Phi(double x) const override { return std::exp(-x * x) * std::sin(x); }
  double DPhi(double x) const override { return std::exp(-x * x) * (std::cos(x) - 2 * x * std::sin(x)); }
  // T(0, 0, 0) = 0 already (upstream does not re-mask either).
  bool remask_kernel() const override { return false; }
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_GABOR_H_
