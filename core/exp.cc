#include "core/exp.h"

#include <cmath>

#include "core/fast_math.h"

namespace NT_CORE_NS {

void ExpLayer::PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
                       double* tdot) const {
  // E[exp(b u + b v)] = exp(b^2 (q11 + q22 + 2 q12) / 2); Tdot = a^2 b^2 T0 (upstream scales the
  // whole kernel, ntk included, by a^2 afterwards).
  const double a2 = a_ * a_, b2 = b_ * b_;
  if (tdot) {
    for (int64_t i = 0; i < n; ++i) {
      const double t0 = Exp(b2 * ((q11[i] + q22[i]) / 2 + q12[i]));
      t[i] = a2 * t0;
      tdot[i] = a2 * b2 * t0;
    }
  } else {
    for (int64_t i = 0; i < n; ++i) t[i] = a2 * Exp(b2 * ((q11[i] + q22[i]) / 2 + q12[i]));
  }
}

void ExpLayer::DiagMap(const double* q, int64_t n, double* t) const {
  const double a2 = a_ * a_, b2 = b_ * b_;
  for (int64_t i = 0; i < n; ++i) t[i] = a2 * Exp(2 * b2 * q[i]);
}

}  // namespace NT_CORE_NS
