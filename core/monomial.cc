#include "core/monomial.h"

#include <algorithm>
#include <cmath>

#include "core/math_util.h"

namespace NT_CORE_NS {

namespace {

// Isserlis: E[u^d v^d] = sum over k = d, d-2, ... of (d!)^2 / (k! ((d-k)/2)!^2 2^(d-k)) q12^k P^((d-k)/2),
// stored by j = (k - d mod 2) / 2.
std::vector<double> MomentCoefficients(int d) {
  std::vector<double> c;
  if (d < 0) return c;
  for (int k = d % 2; k <= d; k += 2) {
    const int h = (d - k) / 2;
    c.push_back(Factorial(d) * Factorial(d) /
                (Factorial(k) * Factorial(h) * Factorial(h) * std::ldexp(1.0, d - k)));
  }
  return c;
}

constexpr int64_t kBlock = 64;  // Entries per block of the vectorised loops.

// out[i] = q12^(d mod 2) sum_j c[j] x2^j p^(m - j) (x2 = q12^2, p = q11 q22, m = c.size() - 1) by
// homogeneous Horner, for m <= kBlock entries (0 for d < 0); the loop over entries is innermost.
void Moments(const std::vector<double>& c, int d, const double* q11, const double* q12, const double* q22,
             int64_t m, double* out) {
  if (c.empty()) {
    for (int64_t i = 0; i < m; ++i) out[i] = 0;
    return;
  }
  double x2[kBlock], p[kBlock], pp[kBlock], acc[kBlock];
  const int top = static_cast<int>(c.size()) - 1;
  for (int64_t i = 0; i < m; ++i) {
    x2[i] = q12[i] * q12[i];
    p[i] = q11[i] * q22[i];
    pp[i] = 1;
    acc[i] = c[top];
  }
  for (int j = top - 1; j >= 0; --j) {
    for (int64_t i = 0; i < m; ++i) {
      pp[i] *= p[i];
      acc[i] = acc[i] * x2[i] + c[j] * pp[i];
    }
  }
  const double odd = d % 2 ? 1.0 : 0.0;
  for (int64_t i = 0; i < m; ++i) out[i] = acc[i] * (odd * q12[i] + (1 - odd));
}

}  // namespace

MonomialLayer::MonomialLayer(int degree)
    : degree_(degree), coef_(MomentCoefficients(degree)), coef_prev_(MomentCoefficients(degree - 1)) {
  double_factorial_ = 1;
  for (int k = 2 * degree - 1; k > 1; k -= 2) double_factorial_ *= k;
}

double MonomialLayer::Phi(double x) const {
  double y = 1;
  for (int k = 0; k < degree_; ++k) y *= x;
  return y;
}

void MonomialLayer::PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
                            double* tdot) const {
  // T = E[u^n v^n] and Tdot = n^2 E[u^(n-1) v^(n-1)] (0 for n = 0). Inputs may alias t (DiagMap runs in
  // place), so each block is read before it is written.
  const double n2 = double(degree_) * degree_;
  for (int64_t s = 0; s < n; s += kBlock) {
    const int64_t m = std::min(kBlock, n - s);
    double y[kBlock];
    if (tdot) {
      Moments(coef_prev_, degree_ - 1, q11 + s, q12 + s, q22 + s, m, tdot + s);
      for (int64_t i = 0; i < m; ++i) tdot[s + i] *= n2;
    }
    Moments(coef_, degree_, q11 + s, q12 + s, q22 + s, m, y);
    std::copy(y, y + m, t + s);
  }
}

void MonomialLayer::DiagMap(const double* q, int64_t n, double* t) const {
  // (2n - 1)!! q^n. q may alias t.
  for (int64_t s = 0; s < n; s += kBlock) {
    const int64_t m = std::min(kBlock, n - s);
    double y[kBlock];
    for (int64_t i = 0; i < m; ++i) y[i] = double_factorial_;
    for (int k = 0; k < degree_; ++k) {
      for (int64_t i = 0; i < m; ++i) y[i] *= q[s + i];
    }
    std::copy(y, y + m, t + s);
  }
}

double MonomialLayer::DPhi(double x) const {
  double y = degree_;
  for (int k = 1; k < degree_; ++k) y *= x;
  return degree_ == 0 ? 0.0 : y;
}

}  // namespace NT_CORE_NS
