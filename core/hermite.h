// Hermite(degree) = He_degree(x) / sqrt(degree!), the normalized probabilists' Hermite polynomial.
#ifndef NT_CORE_HERMITE_H_
#define NT_CORE_HERMITE_H_

#include <string>

#include "core/elementwise.h"
#include "core/real.h"

namespace NT_CORE_NS {

// As upstream, the kernel assumes unit-variance inputs (e.g. after LayerNorm) and uses Mehler's
// formula: every stored covariance entry c becomes c^n (0^0 = 1), and ntk_out = n c^(n-1) ntk_in
// (zeros for n = 0). Other variances give a silently different value, as upstream.
class HermiteLayer : public ElementwiseLayer {
 public:
  explicit HermiteLayer(int degree) : degree_(degree) {}
  std::string name() const override { return "Hermite"; }
  void PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
               double* tdot) const override;
  void DiagMap(const double* q, int64_t n, double* t) const override;
  double Phi(double x) const override;
  double DPhi(double x) const override;
  // T(0, 0, 0) = 1 for degree 0: masked entries are zeroed again (as upstream).
  bool remask_kernel() const override { return true; }

 private:
  int degree_;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_HERMITE_H_
