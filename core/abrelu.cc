#include "core/abrelu.h"

#include <algorithm>
#include <cmath>

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
