// Sign() = sign(x) (sign(0) = 0).
#ifndef NT_CORE_SIGN_H_
#define NT_CORE_SIGN_H_

#include <string>

#include "core/elementwise.h"
#include "core/real.h"

namespace NT_CORE_NS {

class SignLayer : public ElementwiseLayer {
 public:
  std::string name() const override { return "Sign"; }
  void PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
               double* tdot) const override;
  void DiagMap(const double* q, int64_t n, double* t) const override;
  double Phi(double x) const override { return double(x > 0) - double(x < 0); }
  double DPhi(double) const override { return 0.0; }  // Almost everywhere (as jax.grad of sign).
  // T(0, 0, 0) = 0 already (upstream does not re-mask either).
  bool remask_kernel() const override { return false; }
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_SIGN_H_
