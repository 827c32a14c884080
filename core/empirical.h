// Finite-width kernels (spec/core.md section 7): the empirical NNGP f(x1) f(x2)^T and NTK J(x1) J(x2)^T
// of one finite network, J computed by reverse mode through our own layers (Layer::LinearizeMasked), and
// their Monte Carlo averages over networks drawn by init_fn.
#ifndef NT_CORE_EMPIRICAL_H_
#define NT_CORE_EMPIRICAL_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/array.h"
#include "core/layer.h"
#include "core/real.h"
#include "core/rng.h"

namespace NT_CORE_NS {

struct EmpiricalOptions {
  // Output axes contracted between the two sides and averaged (upstream's default: the last).
  std::vector<int> trace_axes = {-1};
  // Output axes of which only the diagonal is kept; they appear once.
  std::vector<int> diagonal_axes;
  // upstream's vmap_axes = (in_axis, out_axis): f is independent across this input / output axis, so
  // the Jacobian is computed one example at a time (the result is the same; each example gets the rng
  // fold_in(rng, index) and its own pattern rows). None: whole-batch reverse passes, no assumption.
  std::optional<int> vmap_in_axis;
  std::optional<int> vmap_out_axis;
  // apply_fn's keyword arguments: mask_constant, Aggregate's patterns for x1 and x2 (null: None), and
  // Dropout's key. With x2 given, x2 gets fold_in(rng, 1) unless x2 equals x1 (upstream's rule).
  std::optional<double> mask_constant;
  const Array* pattern1 = nullptr;
  const Array* pattern2 = nullptr;
  std::optional<RngKey> rng;
  // Refuse (RESOURCE_EXHAUSTED) when the Jacobians and kernels would need more bytes than this; 0: no
  // bound.
  double memory_budget_bytes = 0;
};

struct EmpiricalKernel {
  std::optional<Array> nngp;
  std::optional<Array> ntk;
};

// apply_fn(params, x, mask_constant, ctx) of a single-input, single-output network (masked outputs are
// zeros) with its pullback: the cotangents of x and of the parameters for a cotangent of the output.
struct LinearizedApply {
  Array y;
  std::function<absl::StatusOr<Cotangents>(const Array& dy)> pullback;
};
absl::StatusOr<LinearizedApply> LinearizeApply(const Layer& net, const Params& params, const Array& x,
                                               std::optional<double> mask_constant, const ApplyContext& ctx);

// Number of parameters of a parameter tree.
int64_t NumParamEntries(const Params& params);

// The kernel's shape for outputs of shapes s1 and s2 (spec 7.1): every axis that is neither traced nor
// diagonal as a pair (s1[a], s2[a]), a diagonal axis once, in output-axis order. Errors name trace_axes /
// diagonal_axes.
absl::StatusOr<Shape> EmpiricalKernelShape(const Shape& s1, const Shape& s2, const EmpiricalOptions& o);

// Bytes EmpiricalKernelFn would hold (Jacobians, outputs, kernels, and an estimate of what the pullbacks
// keep of the forward passes) for inputs of these shapes (x2 null: the same batch) and `num_params`
// parameters; RESOURCE_EXHAUSTED over o.memory_budget_bytes.
absl::StatusOr<double> EmpiricalKernelBytes(const Layer& net, double num_params, const Shape& x1,
                                            const Shape* x2, bool get_ntk, const EmpiricalOptions& o);

// empirical_kernel_fn(f)(x1, x2, get, params): x2 = null means x1.
absl::StatusOr<EmpiricalKernel> EmpiricalKernelFn(const Layer& net, const Params& params, const Array& x1,
                                                  const Array* x2, bool get_nngp, bool get_ntk,
                                                  const EmpiricalOptions& o);

struct MonteCarloOptions {
  EmpiricalOptions empirical;  // Its rng is ignored: each sample draws its own.
  RngKey key;
  // The estimates to return (positive, any order, duplicates ignored): each is the plain mean of the
  // first n samples, so the estimate at n equals a separate call with n_samples = {n}.
  std::vector<int> n_samples = {1};
};

// monte_carlo_kernel_fn: key_0 = key, (key_n, sample_key_n) = split(key_{n-1}), (init_key, dropout_key)
// = split(sample_key_n), params = init_fn(init_key, x1.shape), then the empirical kernel with
// rng = dropout_key. Samples run in parallel and are summed in order, so results do not depend on the
// thread count. Calls on_estimate(n, estimate) for each requested n in increasing order (an error from it
// stops the run) and progress(samples done, samples total) after each sample in order (the same).
absl::Status MonteCarloKernelFn(const Layer& net, const Array& x1, const Array* x2, bool get_nngp,
                                bool get_ntk, const MonteCarloOptions& o,
                                const std::function<absl::Status(int n, const EmpiricalKernel&)>& on_estimate,
                                const std::function<absl::Status(int done, int total)>& progress = {});

}  // namespace NT_CORE_NS

#endif  // NT_CORE_EMPIRICAL_H_
