#include "core/gaussian.h"

#include <algorithm>
#include <cmath>

namespace NT_CORE_NS {

void GaussianLayer::PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
                            double* tdot) const {
  // E[exp(b u^2 + b v^2)] = 1 / G with G = sqrt(det(I - 2 b Q)); Tdot = dT/dq12 = 4 b^2 q12 / G^3,
  // both times a^2 (upstream scales the ntk by a^2 too). For b > 0 and large variances the expectation
  // diverges: G clamps to 0 and the result is +inf, as upstream.
  const double a2 = a_ * a_, b2 = b_ * b_;
  auto g_of = [&](int64_t i) {
    return std::sqrt(std::max((1 - 2 * b_ * q11[i]) * (1 - 2 * b_ * q22[i]) - 4 * b2 * q12[i] * q12[i], 0.0));
  };
  if (tdot) {
    for (int64_t i = 0; i < n; ++i) {
      const double g = g_of(i);
      t[i] = a2 / g;
      tdot[i] = a2 * 4 * b2 * q12[i] / (g * g * g);
    }
  } else {
    for (int64_t i = 0; i < n; ++i) t[i] = a2 / g_of(i);
  }
}

void GaussianLayer::DiagMap(const double* q, int64_t n, double* t) const {
  const double a2 = a_ * a_;
  for (int64_t i = 0; i < n; ++i) t[i] = a2 / std::sqrt(std::max(1 - 4 * b_ * q[i], 0.0));
}

}  // namespace NT_CORE_NS
