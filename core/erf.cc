#include "core/erf.h"

#include <algorithm>
#include <cmath>

namespace nt {

void ErfLayer::PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
                       double* tdot) const {
  // Williams' erf kernel on the b^2-scaled covariances; E[erf] = 0 so the offset c only adds c^2.
  const double b2 = b_ * b_, a2 = a_ * a_, c2 = c_ * c_;
  for (int64_t i = 0; i < n; ++i) {
    const double s11 = b2 * q11[i], s12 = b2 * q12[i], s22 = b2 * q22[i];
    const double r = std::sqrt(std::max((1 + 2 * s11) * (1 + 2 * s22) - 4 * s12 * s12, 0.0));
    const double value = a2 * (2 / M_PI) * std::atan2(2 * s12, r) + c2;
    if (tdot) tdot[i] = a2 * b2 * 4 / (M_PI * r);
    t[i] = value;
  }
}

void ErfLayer::DiagMap(const double* q, int64_t n, double* t) const {
  const double b2 = b_ * b_, a2 = a_ * a_, c2 = c_ * c_;
  for (int64_t i = 0; i < n; ++i) {
    const double s = b2 * q[i];
    t[i] = a2 * (2 / M_PI) * std::atan2(s, std::sqrt(s + 0.25)) + c2;
  }
}

}  // namespace nt
