// Polynomial(coef) = coef[0] + coef[1] x + ... + coef[m-1] x^(m-1) (m = len(coef); [] is f = 0).
#ifndef NT_CORE_POLYNOMIAL_H_
#define NT_CORE_POLYNOMIAL_H_

#include <string>
#include <vector>

#include "core/elementwise.h"
#include "core/real.h"

namespace NT_CORE_NS {

class PolynomialLayer : public ElementwiseLayer {
 public:
  explicit PolynomialLayer(std::vector<double> coef);
  std::string name() const override { return "Polynomial"; }
  void PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
               double* tdot) const override;
  void DiagMap(const double* q, int64_t n, double* t) const override;
  double Phi(double x) const override;
  double DPhi(double x) const override;
  // As upstream: masked entries keep T(0, 0, 0) = coef[0]^2.
  bool remask_kernel() const override { return false; }

 private:
  std::vector<double> coef_;
  // p_[l][i]: coefficient of q^i in p_l(q) = r_l(q) / q^(l/2), the Hermite coefficient of
  // f(sqrt(q) z) on He_l(z) / sqrt(l!).
  std::vector<std::vector<double>> p_;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_POLYNOMIAL_H_
