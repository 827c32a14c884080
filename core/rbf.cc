#include "core/rbf.h"

#include <cmath>

#include "core/fast_math.h"

namespace NT_CORE_NS {

void RbfLayer::PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
                       double* tdot) const {
  // Sin(sqrt(2), sqrt(2 gamma), pi/4) with cos(pi/2) taken as exactly 0: T = exp(-gamma E|u - v|^2).
  const double g = gamma_;
  if (tdot) {
    for (int64_t i = 0; i < n; ++i) {
      t[i] = Exp(-g * (q11[i] + q22[i] - 2 * q12[i]));
      tdot[i] = 2 * g * t[i];
    }
  } else {
    for (int64_t i = 0; i < n; ++i) t[i] = Exp(-g * (q11[i] + q22[i] - 2 * q12[i]));
  }
}

void RbfLayer::DiagMap(const double*, int64_t n, double* t) const {
  for (int64_t i = 0; i < n; ++i) t[i] = 1.0;
}

}  // namespace NT_CORE_NS
