#include "core/numerical_activation.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "Eigen/Eigenvalues"
#include "absl/strings/str_cat.h"

namespace NT_CORE_NS {

void GaussHermite(int deg, std::vector<double>* nodes, std::vector<double>* weights) {
  const int n = deg;
  nodes->assign(n, 0.0);
  weights->assign(n, 0.0);
  // Orthonormal Hermite polynomials (w.r.t. exp(-x^2)): p_0 = pi^(-1/4),
  // p_{j+1} = x sqrt(2/(j+1)) p_j - sqrt(j/(j+1)) p_{j-1}, and p_n' = sqrt(2n) p_{n-1}. The weight of a
  // root of p_n is 2 / p_n'(x)^2.
  constexpr double kPiM4 = 0.7511255444649425;  // pi^(-1/4)
  auto eval = [n](double z, double* pn, double* dpn) {
    double p1 = kPiM4, p2 = 0.0;
    for (int j = 0; j < n; ++j) {
      const double p3 = p2;
      p2 = p1;
      p1 = z * std::sqrt(2.0 / (j + 1)) * p2 - std::sqrt(static_cast<double>(j) / (j + 1)) * p3;
    }
    *pn = p1;
    *dpn = std::sqrt(2.0 * n) * p2;
  };
  // Golub-Welsch: the nodes are the eigenvalues of the Jacobi matrix (zero diagonal, off-diagonal
  // sqrt(k / 2)); each is then polished by Newton steps on p_n, whose derivative also gives the weight.
  Eigen::VectorXd diag = Eigen::VectorXd::Zero(n), sub(std::max(n - 1, 0));
  for (int k = 1; k < n; ++k) sub[k - 1] = std::sqrt(k / 2.0);
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig;
  eig.computeFromTridiagonal(diag, sub, Eigen::EigenvaluesOnly);
  const Eigen::VectorXd& ev = eig.eigenvalues();  // Ascending.
  // The positive half (the rule is symmetric); the middle root of odd n is exactly 0.
  for (int i = n / 2; i < n; ++i) {
    double z = (2 * i + 1 == n) ? 0.0 : ev[i];
    double pn = 0, dpn = 1;
    if (z != 0.0) {
      for (int it = 0; it < 10; ++it) {
        eval(z, &pn, &dpn);
        const double step = pn / dpn;
        z -= step;
        if (std::abs(step) <= 1e-16 * std::abs(z)) break;
      }
    }
    eval(z, &pn, &dpn);
    const double w = 2.0 / (dpn * dpn);
    (*nodes)[i] = z;
    (*nodes)[n - 1 - i] = -z;
    (*weights)[i] = w;
    (*weights)[n - 1 - i] = w;
  }
}

absl::Status ValidateQuadratureDegree(const std::string& layer, int64_t deg) {
  if (deg < 1 || deg > kMaxQuadratureDegree) {
    return LayerError(layer, "deg", absl::StrCat("must be in [1, ", kMaxQuadratureDegree, "], got ", deg));
  }
  return absl::OkStatus();
}

NumericalActivationLayer::NumericalActivationLayer(std::string name, BatchFn phi, BatchFn dphi, int deg)
    : name_(std::move(name)), phi_(std::move(phi)), dphi_(std::move(dphi)) {
  GaussHermite(deg, &nodes_, &weights_);
  // Normalised to the standard normal: with z = sqrt(2) x, E[g(z)] = sum_k w_k g(sqrt(2) x_k) / sqrt(pi).
  for (double& x : nodes_) x *= M_SQRT2;
  for (double& w : weights_) w /= std::sqrt(M_PI);
}

namespace {

NumericalActivationLayer::BatchFn Batch(NumericalActivationLayer::ScalarFn f) {
  return [f = std::move(f)](const double* x, int64_t n, double* y) {
    for (int64_t i = 0; i < n; ++i) y[i] = f(x[i]);
  };
}

}  // namespace

NumericalActivationLayer::NumericalActivationLayer(std::string name, ScalarFn phi, ScalarFn dphi, int deg)
    : NumericalActivationLayer(std::move(name), Batch(std::move(phi)), Batch(std::move(dphi)), deg) {}

double NumericalActivationLayer::Phi(double x) const {
  double y;
  phi_(&x, 1, &y);
  return y;
}

absl::StatusOr<ArrayFlow> NumericalActivationLayer::Apply(const Params&, const ArrayFlow& x) const {
  if (absl::Status st = ExpectSingle(name(), x.is_list, x.items.size()); !st.ok()) return st;
  ArrayFlow y = x;
  Array& a = y.single();
  MapInPlace(&a, phi_);
  return y;
}

void NumericalActivationLayer::PairMap(const double* q11, const double* q12, const double* q22, int64_t n,
                                       double* t, double* tdot) const {
  const int d = deg();
  const double* z = nodes_.data();  // Standard normal nodes.
  const double* w = weights_.data();
  // Per-thread scratch (deg^2 values for v): kernel tiles call this from TBB tasks, up to 256 entries a call.
  thread_local std::vector<double> u, fu, dfu, v, fv, dfv;
  const size_t dd = static_cast<size_t>(d) * d;
  for (auto* b : {&u, &fu, &dfu}) b->resize(d);
  for (auto* b : {&v, &fv, &dfv}) b->resize(dd);
  for (int64_t i = 0; i < n; ++i) {
    // Cholesky-style: u = sqrt(q11) z1, v = a z1 + c z2 with a = q12 / sqrt(q11) and
    // c = sqrt(q22 - q12^2 / q11). q12 is clamped to |q12| <= sqrt(q11 q22) (rounding can exceed it at
    // correlation +-1), and q11 = 0 gives u = 0, v = sqrt(q22) z2 (upstream: NaN).
    const double a11 = std::max(q11[i], 0.0), a22 = std::max(q22[i], 0.0);
    const double s11 = std::sqrt(a11), bound = std::sqrt(a11 * a22);
    const double c12 = std::clamp(q12[i], -bound, bound);
    double a = 0.0, c = std::sqrt(a22);
    if (s11 > 0) {
      a = c12 / s11;
      c = std::sqrt(std::max(a22 - a * a, 0.0));
    }
    for (int k = 0; k < d; ++k) u[k] = s11 * z[k];
    for (int k = 0; k < d; ++k) {
      const double base = a * z[k];
      double* vk = v.data() + static_cast<size_t>(k) * d;
      for (int m = 0; m < d; ++m) vk[m] = base + c * z[m];
    }
    phi_(u.data(), d, fu.data());
    phi_(v.data(), dd, fv.data());
    if (tdot) {
      dphi_(u.data(), d, dfu.data());
      dphi_(v.data(), dd, dfv.data());
    }
    double sum = 0, dsum = 0;
    for (int k = 0; k < d; ++k) {
      const double* fvk = fv.data() + static_cast<size_t>(k) * d;
      double inner = 0;
      for (int m = 0; m < d; ++m) inner += w[m] * fvk[m];
      sum += w[k] * fu[k] * inner;
    }
    if (tdot) {
      for (int k = 0; k < d; ++k) {
        const double* dfvk = dfv.data() + static_cast<size_t>(k) * d;
        double inner = 0;
        for (int m = 0; m < d; ++m) inner += w[m] * dfvk[m];
        dsum += w[k] * dfu[k] * inner;
      }
      tdot[i] = dsum;
    }
    t[i] = sum;
  }
}

void NumericalActivationLayer::DiagMap(const double* q, int64_t n, double* t) const {
  const int d = deg();
  thread_local std::vector<double> u, fu;
  u.resize(d);
  fu.resize(d);
  for (int64_t i = 0; i < n; ++i) {
    const double s = std::sqrt(std::max(q[i], 0.0));
    for (int k = 0; k < d; ++k) u[k] = s * nodes_[k];
    phi_(u.data(), d, fu.data());
    double sum = 0;
    for (int k = 0; k < d; ++k) sum += weights_[k] * fu[k] * fu[k];
    t[i] = sum;
  }
}

double NumericalActivationLayer::DPhi(double x) const {
  double y;
  dphi_(&x, 1, &y);
  return y;
}

}  // namespace NT_CORE_NS
