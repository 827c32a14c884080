#include "core/sin.h"

#include <cmath>

#include "core/fast_math.h"

namespace NT_CORE_NS {

void SinLayer::PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
                       double* tdot) const {
  // sin(x) sin(y) = [cos(x - y) - cos(x + y)] / 2 and E[cos(w + d)] = cos(d) exp(-Var w / 2): with
  // E- = exp(b^2 (q12 - S/2)) and E+ = cos(2c) exp(-b^2 (q12 + S/2)), T = a^2/2 (E- - E+) and
  // Tdot = a^2 b^2 / 2 (E- + E+).
  const double b2 = b_ * b_, h = a_ * a_ / 2, cos2c = std::cos(2 * c_);
  if (tdot) {
    for (int64_t i = 0; i < n; ++i) {
      const double half_s = (q11[i] + q22[i]) / 2;
      const double em = Exp(b2 * (q12[i] - half_s));
      const double ep = cos2c * Exp(-b2 * (q12[i] + half_s));
      t[i] = h * (em - ep);
      tdot[i] = h * b2 * (em + ep);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const double half_s = (q11[i] + q22[i]) / 2;
      t[i] = h * (Exp(b2 * (q12[i] - half_s)) - cos2c * Exp(-b2 * (q12[i] + half_s)));
    }
  }
}

void SinLayer::DiagMap(const double* q, int64_t n, double* t) const {
  const double b2 = b_ * b_, h = a_ * a_ / 2, cos2c = std::cos(2 * c_);
  for (int64_t i = 0; i < n; ++i) t[i] = h * (1 - cos2c * Exp(-2 * b2 * q[i]));
}

}  // namespace NT_CORE_NS
