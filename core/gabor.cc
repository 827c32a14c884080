#include "core/gabor.h"

#include <algorithm>
#include <cmath>

#include "core/fast_math.h"

namespace NT_CORE_NS {

void GaborLayer::PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
                         double* tdot) const {
  // With S = q11 + q22, P = q11 q22, Delta = 4 (P - q12^2), D = 1 + 2 S + Delta >= 1,
  // L = exp(-(S + Delta + 2 q12) / (2 D)) and R = exp(2 q12 / D):
  //   T = L (R - 1) / (2 sqrt(D)),  Tdot = L [(A - B) + R (A + B)] / (2 D^(5/2)),
  // with A = 1 + 2 S + 4 (q12^2 + P) and B = 4 q12 (Delta + 3 S + 2).
  // Both maps share D, L and R; the loop-invariant branch on tdot is unswitched by the compiler.
  for (int64_t i = 0; i < n; ++i) {
    const double s = q11[i] + q22[i], p = q11[i] * q22[i], c = q12[i];
    const double delta = 4 * (p - c * c);
    const double d = 1 + 2 * s + delta;
    const double sd = std::sqrt(std::max(d, 0.0));
    const double l = Exp(-(s + delta + 2 * c) / (2 * d));
    const double r = Exp(2 * c / d);
    t[i] = l * (r - 1) / (2 * sd);
    if (tdot) {
      const double a = 1 + 2 * s + 4 * (c * c + p), b = 4 * c * (delta + 3 * s + 2);
      tdot[i] = l * ((a - b) + r * (a + b)) / (2 * d * d * sd);
    }
  }
}

void GaborLayer::DiagMap(const double* q, int64_t n, double* t) const {
  for (int64_t i = 0; i < n; ++i) {
    const double d = 1 + 4 * q[i];
    t[i] = (1 - Exp(-2 * q[i] / d)) / (2 * std::sqrt(std::max(d, 0.0)));
  }
}

}  // namespace NT_CORE_NS
