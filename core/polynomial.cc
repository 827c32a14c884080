#include "core/polynomial.h"

#include <algorithm>
#include <cmath>

#include "core/math_util.h"

namespace NT_CORE_NS {

namespace {

constexpr int64_t kBlock = 64;  // Entries per block of the vectorised loops.

double Horner(const std::vector<double>& c, double x) {
  double y = 0;
  for (auto it = c.rbegin(); it != c.rend(); ++it) y = y * x + *it;
  return y;
}

}  // namespace

PolynomialLayer::PolynomialLayer(std::vector<double> coef) : coef_(std::move(coef)) {
  // x^k = sum over l = k, k-2, ... of k! / (2^i i! l!) He_l(x) with k = 2i + l, so with u = sqrt(q) z,
  // f(u) = sum_l r_l(q) He_l(z) / sqrt(l!) and r_l(q) = q^(l/2) sum_i coef[2i+l] (2i+l)! /
  // (2^i i! sqrt(l!)) q^i.
  const int m = static_cast<int>(coef_.size());
  p_.resize(m);
  for (int l = 0; l < m; ++l) {
    for (int i = 0; 2 * i + l < m; ++i) {
      const int k = 2 * i + l;
      p_[l].push_back(coef_[k] * Factorial(k) /
                      (std::ldexp(1.0, i) * Factorial(i) * std::sqrt(Factorial(l))));
    }
  }
}

double PolynomialLayer::Phi(double x) const { return Horner(coef_, x); }

void PolynomialLayer::PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
                              double* tdot) const {
  // Mehler: T = sum_l r_l(q11) r_l(q22) rho^l = sum_l p_l(q11) p_l(q22) q12^l and Tdot = dT/dq12 (Price).
  // Deliberate fix: upstream divides by sqrt(q11 q22) to form rho, which is NaN at zero variance (for T
  // with two or more coefficients, and for the ntk always); the powers of sqrt(q11 q22) cancel, so this
  // polynomial form is exact and finite everywhere. Blocks of entries, with the loop over entries
  // innermost so that it vectorises; inputs may alias t (DiagMap runs in place).
  const int deg = static_cast<int>(p_.size());
  for (int64_t s = 0; s < n; s += kBlock) {
    const int64_t m = std::min(kBlock, n - s);
    double y[kBlock], dy[kBlock], h1[kBlock], h2[kBlock];
    for (int64_t i = 0; i < m; ++i) y[i] = dy[i] = 0;
    for (int l = deg - 1; l >= 0; --l) {
      const std::vector<double>& c = p_[l];
      for (int64_t i = 0; i < m; ++i) h1[i] = h2[i] = 0;
      for (auto it = c.rbegin(); it != c.rend(); ++it) {
        const double ck = *it;
        for (int64_t i = 0; i < m; ++i) {
          h1[i] = h1[i] * q11[s + i] + ck;
          h2[i] = h2[i] * q22[s + i] + ck;
        }
      }
      for (int64_t i = 0; i < m; ++i) {
        dy[i] = dy[i] * q12[s + i] + y[i];  // Derivative of the Horner step y <- y q12 + w.
        y[i] = y[i] * q12[s + i] + h1[i] * h2[i];
      }
    }
    if (tdot) std::copy(dy, dy + m, tdot + s);
    std::copy(y, y + m, t + s);
  }
}

void PolynomialLayer::DiagMap(const double* q, int64_t n, double* t) const {
  // sum_l p_l(q)^2 q^l (rho = 1).
  PairMap(q, q, q, n, t, nullptr);
}

double PolynomialLayer::DPhi(double x) const {
  double y = 0, dy = 0;
  for (auto it = coef_.rbegin(); it != coef_.rend(); ++it) {
    dy = dy * x + y;
    y = y * x + *it;
  }
  return dy;
}

}  // namespace NT_CORE_NS
