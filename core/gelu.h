// Gelu(approximate) = x Phi(x) (approximate: the tanh form, for the finite network only).
#ifndef NT_CORE_GELU_H_
#define NT_CORE_GELU_H_

#include <cmath>
#include <string>

#include "core/elementwise.h"
#include "core/real.h"

namespace NT_CORE_NS {

class GeluLayer : public ElementwiseLayer {
 public:
  explicit GeluLayer(bool approximate) : approximate_(approximate) {}
  std::string name() const override { return "Gelu"; }
  void PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
               double* tdot) const override;
  void DiagMap(const double* q, int64_t n, double* t) const override;
  // As upstream, `approximate` only changes the finite network: the kernel is the exact GELU's.
  double Phi(double x) const override;
  double DPhi(double x) const override;
  // T(0, 0, 0) = 0 already (upstream does not re-mask either).
  bool remask_kernel() const override { return false; }

 private:
  bool approximate_;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_GELU_H_
