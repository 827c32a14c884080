#include "core/rectified_monomial.h"

#include <algorithm>
#include <cmath>

#include "core/fast_math.h"

namespace NT_CORE_NS {

namespace {

constexpr int64_t kBlock = 64;  // Entries per block of the vectorised loops.

}  // namespace

RectifiedMonomialLayer::RectifiedMonomialLayer(int degree) : degree_(degree) {
  double_factorial_ = 1;
  for (int k = 2 * degree - 1; k > 1; k -= 2) double_factorial_ *= k;
}

double RectifiedMonomialLayer::Phi(double x) const {
  double y = 1;
  for (int k = 0; k < degree_; ++k) y *= x;
  return x >= 0 ? y : 0.0;
}

void RectifiedMonomialLayer::PairMap(const double* q11, const double* q12, const double* q22, int64_t n,
                                     double* t, double* tdot) const {
  // Cho & Saul: T = s^n J_n(theta) / (2 pi) with s = sqrt(q11 q22) and theta the angle between u and v.
  // With K_k = s^k J_k: K_0 = pi - theta, K_1 = r + q12 (pi - theta) (r = s sin(theta)) and
  // K_{k+1} = (2k + 1) q12 K_k + k^2 r^2 K_{k-1}; Tdot = n^2 K_{n-1} / (2 pi) by Price's theorem.
  // Deliberate fix: upstream builds J_n by autodiff of (pi - theta)/sin(theta) and an unclipped arccos,
  // which is NaN at correlation +-1 (identical inputs, diagonals of full covariances) and at zero
  // variance. Here theta = atan2(r, q12) with r clamped, so theta in [0, pi] and T is the exact limit
  // there (T_diag at theta = 0, 0 at theta = pi). Degree 0 is discontinuous: its ntk is zeroed as
  // upstream (f' = 0 almost everywhere).
  // Blocks of entries, with the loop over entries innermost so that it vectorises.
  const int deg = degree_;
  constexpr double k1Over2Pi = 1 / (2 * M_PI);
  for (int64_t s = 0; s < n; s += kBlock) {
    const int64_t m = std::min(kBlock, n - s);
    double c[kBlock], r2[kBlock], prev[kBlock], cur[kBlock];
    for (int64_t i = 0; i < m; ++i) {
      c[i] = q12[s + i];
      r2[i] = std::max(q11[s + i] * q22[s + i] - c[i] * c[i], 0.0);
      const double r = std::sqrt(r2[i]);
      prev[i] = M_PI - Atan2NonNegative(r, c[i]);  // K_0.
      cur[i] = r + c[i] * prev[i];                 // K_1.
    }
    for (int k = 1; k < deg; ++k) {
      const double a = 2 * k + 1, b = double(k) * k;
      for (int64_t i = 0; i < m; ++i) {
        const double next = a * c[i] * cur[i] + b * r2[i] * prev[i];
        prev[i] = cur[i];
        cur[i] = next;
      }
    }
    // Now cur = K_deg and prev = K_{deg-1} for deg >= 1; prev = K_0 for deg = 0.
    if (deg == 0) {
      // f(0) = 1 ([0 >= 0]): with a zero variance u = 0 surely, so T = P(v >= 0) (1/2, or 1 when v = 0
      // too), where the angle convention would give 1/4 (upstream: NaN).
      for (int64_t i = 0; i < m; ++i) {
        const bool z1 = q11[s + i] == 0, z2 = q22[s + i] == 0;
        const double degenerate = (z1 ? 1.0 : 0.5) * (z2 ? 1.0 : 0.5);
        t[s + i] = z1 || z2 ? degenerate : prev[i] * k1Over2Pi;
      }
    } else {
      for (int64_t i = 0; i < m; ++i) t[s + i] = cur[i] * k1Over2Pi;
    }
    if (tdot) {
      const double f = deg == 0 ? 0.0 : double(deg) * deg * k1Over2Pi;
      for (int64_t i = 0; i < m; ++i) tdot[s + i] = f * prev[i];
    }
  }
}

void RectifiedMonomialLayer::DiagMap(const double* q, int64_t n, double* t) const {
  // (2n - 1)!! q^n / 2, the theta = 0 limit; for degree 0, 1 = f(0)^2 at q = 0 (upstream: 1/2). q may
  // alias t.
  const double at_zero = degree_ == 0 ? 1.0 : 0.0;
  for (int64_t s = 0; s < n; s += kBlock) {
    const int64_t m = std::min(kBlock, n - s);
    double y[kBlock];
    for (int64_t i = 0; i < m; ++i) y[i] = double_factorial_ / 2;
    for (int k = 0; k < degree_; ++k) {
      for (int64_t i = 0; i < m; ++i) y[i] *= q[s + i];
    }
    for (int64_t i = 0; i < m; ++i) t[s + i] = q[s + i] == 0 ? at_zero : y[i];
  }
}

double RectifiedMonomialLayer::DPhi(double x) const {
  double y = degree_;
  for (int k = 1; k < degree_; ++k) y *= x;
  return degree_ == 0 || x < 0 ? 0.0 : y;
}

}  // namespace NT_CORE_NS
