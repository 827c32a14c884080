#include "core/sign.h"

#include <algorithm>
#include <cmath>

#include "core/fast_math.h"

namespace NT_CORE_NS {

void SignLayer::PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
                        double* tdot) const {
  // T = 1 - 2 theta / pi = (2/pi) arcsin(rho), with theta = atan2(r, q12) and atan2(0, 0) = pi/2 (so a
  // zero variance gives 0). Deliberate fix: upstream replaces every covariance entry c by [c != 0],
  // which is right for variances but gives 1 instead of (2/pi) arcsin(rho) for covariances between
  // different positions (or inputs, diagonal_batch = false); here those use this map like nngp, and
  // only the variances (DiagMap) are the indicator. The ntk is zeroed as upstream: f' = 0 almost
  // everywhere, which is what the finite network's gradients see.
  for (int64_t i = 0; i < n; ++i) {
    const double r = std::sqrt(std::max(q11[i] * q22[i] - q12[i] * q12[i], 0.0));
    t[i] = 1 - (2 / M_PI) * Atan2NonNegative(r, q12[i]);
  }
  if (tdot) std::fill(tdot, tdot + n, 0.0);
}

void SignLayer::DiagMap(const double* q, int64_t n, double* t) const {
  for (int64_t i = 0; i < n; ++i) t[i] = q[i] != 0 ? 1.0 : 0.0;
}

}  // namespace NT_CORE_NS
