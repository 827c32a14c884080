// Rbf(gamma) = sqrt(2) sin(sqrt(2 gamma) x + pi/4), whose dual is the normalized RBF kernel.
#ifndef NT_CORE_RBF_H_
#define NT_CORE_RBF_H_

#include <cmath>
#include <string>

#include "core/elementwise.h"
#include "core/real.h"

namespace NT_CORE_NS {

class RbfLayer : public ElementwiseLayer {
 public:
  explicit RbfLayer(double gamma) : gamma_(gamma) {}
  std::string name() const override { return "Rbf"; }
  void PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
               double* tdot) const override;
  void DiagMap(const double* q, int64_t n, double* t) const override;
  double Phi(double x) const override { return M_SQRT2 * std::sin(std::sqrt(2 * gamma_) * x + M_PI_4); }
  double DPhi(double x) const override {
    return M_SQRT2 * std::sqrt(2 * gamma_) * std::cos(std::sqrt(2 * gamma_) * x + M_PI_4);
  }
  // T(0, 0, 0) = 1 is not 0: masked entries are zeroed again (as upstream).
  bool remask_kernel() const override { return true; }

 private:
  double gamma_;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_RBF_H_
