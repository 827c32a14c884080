#include "core/erf.h"

#include <algorithm>
#include <cmath>

#include "core/fast_math.h"

namespace NT_CORE_NS {

void ErfLayer::PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
                       double* tdot) const {
  // Williams' erf kernel on the b^2-scaled covariances; E[erf] = 0 so the offset c only adds c^2.
  const double b2 = b_ * b_, a2 = a_ * a_, c2 = c_ * c_;
  auto r_of = [&](int64_t i) {
    const double s11 = b2 * q11[i], s12 = b2 * q12[i], s22 = b2 * q22[i];
    return std::sqrt(std::max((1 + 2 * s11) * (1 + 2 * s22) - 4 * s12 * s12, 0.0));
  };
  // Separate loops with and without the NTK factor keep both branch-free (vectorised).
  if (tdot) {
    for (int64_t i = 0; i < n; ++i) {
      const double r = r_of(i);
      tdot[i] = a2 * b2 * 4 / (M_PI * r);
      t[i] = a2 * (2 / M_PI) * Atan2(2 * b2 * q12[i], r) + c2;
    }
  } else {
    for (int64_t i = 0; i < n; ++i) t[i] = a2 * (2 / M_PI) * Atan2(2 * b2 * q12[i], r_of(i)) + c2;
  }
}

void ErfLayer::DiagMap(const double* q, int64_t n, double* t) const {
  const double b2 = b_ * b_, a2 = a_ * a_, c2 = c_ * c_;
  for (int64_t i = 0; i < n; ++i) {
    const double s = b2 * q[i];
    t[i] = a2 * (2 / M_PI) * Atan2NonNegative(s, std::sqrt(s + 0.25)) + c2;
  }
}

}  // namespace NT_CORE_NS
