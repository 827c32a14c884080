// Gaussian(a, b) = a exp(b x^2).
#ifndef NT_CORE_GAUSSIAN_H_
#define NT_CORE_GAUSSIAN_H_

#include <cmath>
#include <string>

#include "core/elementwise.h"
#include "core/real.h"

namespace NT_CORE_NS {

class GaussianLayer : public ElementwiseLayer {
 public:
  GaussianLayer(double a, double b) : a_(a), b_(b) {}
  std::string name() const override { return "Gaussian"; }
  void PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
               double* tdot) const override;
  void DiagMap(const double* q, int64_t n, double* t) const override;
  double Phi(double x) const override { return a_ * std::exp(b_ * x * x); }
  double DPhi(double x) const override { return 2 * a_ * b_ * x * std::exp(b_ * x * x); }
  // T(0, 0, 0) = a^2 is not 0: masked entries are zeroed again (as upstream).
  bool remask_kernel() const override { return true; }

 private:
  double a_, b_;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_GAUSSIAN_H_
