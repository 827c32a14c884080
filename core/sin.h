// Sin(a, b, c) = a sin(b x + c), and Cos(a, b, c) = Sin(a, b, c + pi/2).
#ifndef NT_CORE_SIN_H_
#define NT_CORE_SIN_H_

#include <cmath>
#include <string>

#include "core/elementwise.h"
#include "core/real.h"

namespace NT_CORE_NS {

class SinLayer : public ElementwiseLayer {
 public:
  SinLayer(double a, double b, double c, std::string name = "Sin")
      : a_(a), b_(b), c_(c), name_(std::move(name)) {}
  std::string name() const override { return name_; }
  void PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
               double* tdot) const override;
  void DiagMap(const double* q, int64_t n, double* t) const override;
  double Phi(double x) const override { return a_ * std::sin(b_ * x + c_); }
  double DPhi(double x) const override { return a_ * b_ * std::cos(b_ * x + c_); }
  // T(0, 0, 0) = a^2 sin(c)^2 is not 0: masked entries are zeroed again (as upstream).
  bool remask_kernel() const override { return true; }

 private:
  double a_, b_, c_;
  std::string name_;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_SIN_H_
