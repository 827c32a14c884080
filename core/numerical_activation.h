// Elementwise activations whose kernel maps are computed by Gauss-Hermite quadrature (upstream's
// ElementwiseNumerical): T = E[phi(u) phi(v)], Tdot = E[phi'(u) phi'(v)] over the bivariate normal with
// covariance [[q11, q12], [q12, q22]] by a deg x deg tensor rule, and T_diag = E[phi(u)^2] by the 1-D rule.
// The ready-made Tanh, Softplus and Swish (core/stax.h) are built on it.
#ifndef NT_CORE_NUMERICAL_ACTIVATION_H_
#define NT_CORE_NUMERICAL_ACTIVATION_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/elementwise.h"
#include "core/real.h"

namespace NT_CORE_NS {

// Physicists' Gauss-Hermite rule of `deg` nodes (weight exp(-x^2), sum of weights sqrt(pi), as scipy's
// roots_hermite): Golub-Welsch, nodes polished by Newton steps on the orthonormal Hermite recurrence
// (which also gives the weights). Nodes ascending; exact for
// polynomials of degree <= 2 deg - 1. deg in [1, kMaxQuadratureDegree].
void GaussHermite(int deg, std::vector<double>* nodes, std::vector<double>* weights);

// Beyond this the recurrence's values overflow double at the outer nodes (and the cost is deg^2 per entry).
constexpr int kMaxQuadratureDegree = 512;

// INVALID_ARGUMENT naming `layer` and 'deg' unless deg is in [1, kMaxQuadratureDegree].
absl::Status ValidateQuadratureDegree(const std::string& layer, int64_t deg);

class NumericalActivationLayer : public ElementwiseLayer {
 public:
  // y[i] = f(x[i]) for i < n: evaluated over all nodes of an entry at once, so that the call overhead is
  // per entry and the loop inside can be tight.
  using BatchFn = std::function<void(const double* x, int64_t n, double* y)>;
  using ScalarFn = std::function<double(double)>;

  // `deg` must have been validated (ValidateQuadratureDegree).
  NumericalActivationLayer(std::string name, BatchFn phi, BatchFn dphi, int deg);
  // Convenience for scalar callables (wrapped in a loop over the nodes).
  NumericalActivationLayer(std::string name, ScalarFn phi, ScalarFn dphi, int deg);

  std::string name() const override { return name_; }
  void PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
               double* tdot) const override;
  void DiagMap(const double* q, int64_t n, double* t) const override;
  double Phi(double x) const override;
  double DPhi(double x) const override;
  // apply_fn over the whole array in one batch call.
  absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const override;
  // phi(0) need not be 0: masked entries are zeroed again (as upstream's ElementwiseNumerical).
  bool remask_kernel() const override { return true; }

  int deg() const { return static_cast<int>(nodes_.size()); }

 private:
  std::string name_;
  BatchFn phi_, dphi_;
  std::vector<double> nodes_, weights_;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_NUMERICAL_ACTIVATION_H_
