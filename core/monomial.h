// Monomial(degree) = x^degree (degree in 0..5, as upstream).
#ifndef NT_CORE_MONOMIAL_H_
#define NT_CORE_MONOMIAL_H_

#include <string>
#include <vector>

#include "core/elementwise.h"
#include "core/real.h"

namespace NT_CORE_NS {

class MonomialLayer : public ElementwiseLayer {
 public:
  explicit MonomialLayer(int degree);
  std::string name() const override { return "Monomial"; }
  void PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
               double* tdot) const override;
  void DiagMap(const double* q, int64_t n, double* t) const override;
  double Phi(double x) const override;
  double DPhi(double x) const override;
  // As upstream: T(0, 0, 0) is 0 except for degree 0 (1), which stays in masked entries.
  bool remask_kernel() const override { return false; }

 private:
  int degree_;
  // E[u^d v^d] = q12^(d mod 2) sum_j coef[d][j] q12^(2j) (q11 q22)^(d/2 - j), for d = degree, degree - 1.
  std::vector<double> coef_, coef_prev_;
  double double_factorial_;  // (2 degree - 1)!!
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_MONOMIAL_H_
