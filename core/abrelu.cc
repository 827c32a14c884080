#include "core/abrelu.h"

#include <algorithm>
#include <cmath>

namespace nt {

void ABReluLayer::PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
                          double* tdot) const {
  // Arc-cosine kernel generalised to two slopes: T = K r + Tdot q12 with theta the angle between u, v.
  const double k = (a_ - b_) * (a_ - b_) / (2 * M_PI);
  const double m = (a_ * a_ + b_ * b_) / 2;
  for (int64_t i = 0; i < n; ++i) {
    const double c = q12[i];
    const double r = std::sqrt(std::max(q11[i] * q22[i] - c * c, 0.0));
    // atan2(0, 0) = pi/2 here (orthogonal zero vectors), which keeps zero-variance inputs NaN-free
    // and matches upstream's atan2f.
    const double theta = (r == 0 && c == 0) ? M_PI / 2 : std::atan2(r, c);
    const double td = m - k * theta;
    t[i] = k * r + td * c;
    if (tdot) tdot[i] = td;
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
    for (double& v : k.nngp.vec()) v *= s;
    for (double& v : k.cov1.vec()) v *= s;
    if (k.cov2) {
      for (double& v : k.cov2->vec()) v *= s;
    }
  };
  scale(1 / f);
  absl::Status st = ElementwiseLayer::TransformKernel(kf, ctx);
  scale(f);
  return st;
}

}  // namespace nt
