#include "core/abrelu.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "core/fast_math.h"

namespace NT_CORE_NS {

void ABReluLayer::PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
                          double* tdot) const {
  // Arc-cosine kernel generalised to two slopes: T = K r + Tdot q12 with theta the angle between u, v.
  const double k = (a_ - b_) * (a_ - b_) / (2 * M_PI);
  const double m = (a_ * a_ + b_ * b_) / 2;
  // Two branch-free loops (with and without the NTK factor) so that both vectorise. atan2(0, 0) is
  // pi/2 (orthogonal zero vectors), which keeps zero-variance inputs NaN-free as upstream's atan2f.
  auto r_of = [&](int64_t i) { return std::sqrt(std::max(q11[i] * q22[i] - q12[i] * q12[i], 0.0)); };
  if (tdot) {
    for (int64_t i = 0; i < n; ++i) {
      const double r = r_of(i);
      tdot[i] = m - k * Atan2NonNegative(r, q12[i]);
      t[i] = k * r + tdot[i] * q12[i];
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const double r = r_of(i);
      t[i] = k * r + (m - k * Atan2NonNegative(r, q12[i])) * q12[i];
    }
  }
}

void ABReluLayer::PairMapReal(const Real* q11, const Real* q12, const Real* q22, int64_t n, Real* t,
                              Real* tdot) const {
  if (!std::is_same_v<Real, float>) {
    ElementwiseLayer::PairMapReal(q11, q12, q22, n, t, tdot);
  } else {
    // With A = |q12| and a0 = atan2(r, A) in [0, pi/2]: theta = a0 (q12 >= 0) or pi - a0, and
    //   q12 >= 0: Tdot = m - k a0,   T = m q12 + k D;     q12 < 0: Tdot = ab + k a0,   T = ab q12 + k D,
    // with D = r - a0 A >= 0 (m - k pi = ab). Where r / A is small, D = -r x^2 P(x^2) comes from the
    // arctangent's own series, so neither T nor Tdot cancels near correlation +-1 (r << A).
    const float k = static_cast<float>((a_ - b_) * (a_ - b_) / (2 * M_PI));
    const float m = static_cast<float>((a_ * a_ + b_ * b_) / 2), ab = static_cast<float>(a_ * b_);
    constexpr float kPi2 = static_cast<float>(M_PI_2), kPi4 = static_cast<float>(M_PI_4);
    constexpr float kTanPi8 = 0.41421356f;
    for (int64_t i = 0; i < n; ++i) {
      // Products of floats are exact in double: r keeps full float accuracy near correlation 1. The
      // square root stays in double, where q11 q22 cannot overflow or become subnormal.
      const double det = static_cast<double>(q11[i]) * q22[i] - static_cast<double>(q12[i]) * q12[i];
      const float r = static_cast<float>(std::sqrt(std::max(det, 0.0)));
      const float a = std::fabs(q12[i]);
      // Cephes' atanf on |x| <= tan(pi/8) after the reductions x -> 1/x and x -> (x - 1) / (x + 1).
      const bool steep = r > a;
      const float hi = steep ? r : a, lo = steep ? a : r;
      const bool big = lo > kTanPi8 * hi;
      const float x = (big ? lo - hi : lo) / (big ? lo + hi : (hi > 0 ? hi : 1.0f));
      const float z = x * x;
      const float poly =
          (((8.05374449538e-2f * z - 1.38776856032e-1f) * z + 1.99777106478e-1f) * z - 3.33329491539e-1f) * z;
      float a0 = (big ? kPi4 : 0.0f) + (x + x * poly);  // atan(lo / hi).
      a0 = steep ? kPi2 - a0 : a0;
      a0 = hi > 0 ? a0 : kPi2;  // atan2(0, 0): orthogonal zero vectors, as in PairMap.
      const float d = (steep || big) ? r - a0 * a : -r * poly;
      const bool neg = q12[i] < 0;
      if (tdot) tdot[i] = static_cast<Real>(neg ? ab + k * a0 : m - k * a0);
      t[i] = static_cast<Real>((neg ? ab : m) * q12[i] + k * d);
    }
  }
}

void ABReluLayer::DiagMap(const double* q, int64_t n, double* t) const {
  const double m = (a_ * a_ + b_ * b_) / 2;
  for (int64_t i = 0; i < n; ++i) t[i] = m * q[i];
}

absl::Status ABReluLayer::TransformKernel(KernelFlow* kf, const KernelContext& ctx) const {
  if (!do_stabilize_ || kf->is_list || kf->items.size() != 1) {
    return ElementwiseLayer::TransformKernel(kf, ctx);
  }
  // The maps are homogeneous (T of degree 1, Tdot of degree 0): rescale to avoid over/underflow in
  // q11 q22 for very deep networks.
  Kernel& k = kf->single();
  double f = 1e-12;
  for (double v : k.nngp.vec()) f = std::max(f, std::abs(v));
  auto scale = [&](double s) {
    for (auto& v : k.nngp.vec()) v *= s;
    for (auto& v : k.cov1.vec()) v *= s;
    if (k.cov2) {
      for (auto& v : k.cov2->vec()) v *= s;
    }
  };
  scale(1 / f);
  absl::Status st = ElementwiseLayer::TransformKernel(kf, ctx);
  scale(f);
  return st;
}

}  // namespace NT_CORE_NS
