// RectifiedMonomial(degree) = [x >= 0] x^degree: the arc-cosine kernel of order `degree`.
#ifndef NT_CORE_RECTIFIED_MONOMIAL_H_
#define NT_CORE_RECTIFIED_MONOMIAL_H_

#include <string>

#include "core/elementwise.h"
#include "core/real.h"

namespace NT_CORE_NS {

class RectifiedMonomialLayer : public ElementwiseLayer {
 public:
  explicit RectifiedMonomialLayer(int degree);
  std::string name() const override { return "RectifiedMonomial"; }
  void PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
               double* tdot) const override;
  void DiagMap(const double* q, int64_t n, double* t) const override;
  double Phi(double x) const override;
  double DPhi(double x) const override;
  // As upstream (whose T(0, 0, 0) is NaN; ours is f(0)^2: 1 for degree 0, else 0).
  bool remask_kernel() const override { return false; }

 private:
  int degree_;
  double double_factorial_;  // (2 degree - 1)!!
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_RECTIFIED_MONOMIAL_H_
