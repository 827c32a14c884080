#include "core/gelu.h"

#include <algorithm>
#include <cmath>

#include "core/fast_math.h"

namespace NT_CORE_NS {

double GeluLayer::Phi(double x) const {
  if (approximate_) {
    return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
  }
  return 0.5 * x * (1 + std::erf(x * M_SQRT1_2));
}

void GeluLayer::PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
                        double* tdot) const {
  // With P+ = (1 + q11)(1 + q22), delta = sqrt(P+ - q12^2) >= sqrt(1 + q11 + q22) > 0 and
  // phi = atan2(q12, delta) (arXiv 2002.08517):
  //   T    = q12/4 + [(q12^2 + q11 q22 delta^2) / (P+ delta) + q12 phi] / (2 pi),
  //   Tdot = 1/4 + phi/(2 pi) + q12/(2 pi delta) [1/delta^2 + (1 - q11 q22)/P+ + 1].
  constexpr double k2Pi = 2 * M_PI;
  if (tdot) {
    for (int64_t i = 0; i < n; ++i) {
      const double p = q11[i] * q22[i], pp = (1 + q11[i]) * (1 + q22[i]), c = q12[i];
      const double d2 = std::max(pp - c * c, 0.0), d = std::sqrt(d2);
      const double phi = Atan2(c, d);
      t[i] = c / 4 + ((c * c + p * d2) / (pp * d) + c * phi) / k2Pi;
      tdot[i] = 0.25 + phi / k2Pi + c / (k2Pi * d) * (1 / d2 + (1 - p) / pp + 1);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const double p = q11[i] * q22[i], pp = (1 + q11[i]) * (1 + q22[i]), c = q12[i];
      const double d2 = std::max(pp - c * c, 0.0), d = std::sqrt(d2);
      t[i] = c / 4 + ((c * c + p * d2) / (pp * d) + c * Atan2(c, d)) / k2Pi;
    }
  }
}

void GeluLayer::DiagMap(const double* q, int64_t n, double* t) const {
  for (int64_t i = 0; i < n; ++i) {
    const double r = std::sqrt(1 + 2 * q[i]);
    t[i] = q[i] * (0.25 + (q[i] / ((1 + q[i]) * r) + 0.5 * Atan2(q[i], r)) / M_PI);
  }
}

double GeluLayer::DPhi(double x) const {
  if (approximate_) {
    const double c = std::sqrt(2 / M_PI);
    const double t = std::tanh(c * (x + 0.044715 * x * x * x));
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x);
  }
  return 0.5 * (1 + std::erf(x * M_SQRT1_2)) + x * std::exp(-0.5 * x * x) * (0.5 * M_2_SQRTPI * M_SQRT1_2);
}

}  // namespace NT_CORE_NS
