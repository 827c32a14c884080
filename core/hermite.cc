#include "core/hermite.h"

#include <algorithm>
#include <cmath>

namespace NT_CORE_NS {

namespace {

constexpr int64_t kBlock = 64;  // Entries per block of the vectorised loops.

}  // namespace

double HermiteLayer::Phi(double x) const {
  // h_k = He_k / sqrt(k!): h_{k+1} = (x h_k - sqrt(k) h_{k-1}) / sqrt(k + 1), free of overflow.
  double prev = 0, cur = 1;
  for (int k = 0; k < degree_; ++k) {
    const double next = (x * cur - std::sqrt(double(k)) * prev) / std::sqrt(double(k + 1));
    prev = cur;
    cur = next;
  }
  return cur;
}

void HermiteLayer::PairMap(const double*, const double* q12, const double*, int64_t n, double* t,
                           double* tdot) const {
  // Blocks of entries, with the loop over entries innermost so that it vectorises. Inputs may alias t
  // (DiagMap runs in place), so every entry is read before it is written.
  const int deg = degree_;
  for (int64_t s = 0; s < n; s += kBlock) {
    const int64_t m = std::min(kBlock, n - s);
    double before[kBlock];  // q12^(n-1) (for n >= 1).
    for (int64_t i = 0; i < m; ++i) before[i] = 1;
    for (int k = 1; k < deg; ++k) {
      for (int64_t i = 0; i < m; ++i) before[i] *= q12[s + i];
    }
    if (tdot) {
      for (int64_t i = 0; i < m; ++i) tdot[s + i] = deg * before[i];  // 0 for n = 0.
    }
    const double zero_degree = deg == 0 ? 1.0 : 0.0;
    for (int64_t i = 0; i < m; ++i) t[s + i] = deg == 0 ? zero_degree : before[i] * q12[s + i];
  }
}

void HermiteLayer::DiagMap(const double* q, int64_t n, double* t) const {
  // Every stored covariance entry c becomes c^n, variances included.
  PairMap(q, q, q, n, t, nullptr);
}

// h_k' = sqrt(k) h_{k-1} (He_k' = k He_{k-1}).
double HermiteLayer::DPhi(double x) const {
  double prev = 0, cur = 1;
  for (int k = 0; k + 1 < degree_; ++k) {
    const double next = (x * cur - std::sqrt(double(k)) * prev) / std::sqrt(double(k + 1));
    prev = cur;
    cur = next;
  }
  return degree_ == 0 ? 0.0 : std::sqrt(double(degree_)) * cur;
}

}  // namespace NT_CORE_NS
