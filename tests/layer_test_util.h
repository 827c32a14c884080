// Shared by the layer tests (conv, pooling, flatten, image_resize, index): reference kernels computed
// directly from activations, array comparisons, and Monte Carlo estimates over finite networks. One
// implementation, so every test checks layers against the same reference.
#ifndef NT_TESTS_LAYER_TEST_UTIL_H_
#define NT_TESTS_LAYER_TEST_UTIL_H_

#include <cstdint>
#include <optional>
#include <string>

#include "core/array.h"
#include "core/kernel.h"
#include "core/kernel_fn.h"
#include "core/stax.h"

namespace nt::testing_util {

// cos(normal) entries times scale: the bounded inputs upstream's tests use.
Array CosNormal(const Shape& shape, uint64_t seed, double scale = 1.0);

// sum_c y1[n1, p, c] y2[n2, p', c] / C for activations with batch axis `batch_axis` and channel axis
// `channel_axis` (negative values count from the end), in the full zipped layout
// (N1, N2, X1, X1', X2, X2', ...) or, with `diagonal_spatial`, the diagonal layout (N1, N2, X1, X2, ...).
// This is both the input kernel of linear.md 1.4 and the empirical NNGP of a finite network's outputs.
Array EmpiricalNngp(const Array& y1, const Array& y2, int batch_axis = 0, int channel_axis = -1,
                    bool diagonal_spatial = false);

// Entries (n, n, ...) of an (N, N, ...) array: the diagonal-batch covariance of a full-batch one.
Array BatchDiagonal(const Array& a);

// The input Kernel that kernel_fn would build for x1 (and x2; nullptr means x2 = x1), for feeding the
// Kernel path of a layer or for comparing with its output. The NTK is the scalar zero of an input.
Kernel InputKernel(const Array& x1, const Array* x2, int batch_axis, int channel_axis,
                   bool diagonal_batch = true, bool diagonal_spatial = false);

// ||got - want||_F / max(||want||_F, 1e-12): upstream's Monte Carlo metric (assert_close_matrices).
double RelativeFrobeniusError(const Array& got, const Array& want);

// Fails on a shape mismatch or on the first entry with |expected - actual| > tol (1 + |expected|).
void ExpectArraysNear(const Array& expected, const Array& actual, double tol, const std::string& what);

// Checks a layer's output Kernel against the input kernel of the layer's outputs: nngp and covariances
// to 1e-12, a scalar NTK (no parameters) and the same shapes and axes.
void ExpectKernelMatchesInputKernel(const Kernel& got, const Kernel& want);

// The array `name` of a kernel_fn result; an empty array (and a failure) when missing.
const Array& Get(const KernelResult& r, const std::string& name);

// apply_fn of net with the parameters init_fn draws from RngKey(0): the outputs of one fixed network.
Array ApplyNet(const stax::Net& net, const Array& x, std::optional<double> mask_constant = std::nullopt);

struct McEstimate {
  Array mean;
  Array std_error;  // Standard error of the mean.
};

// Mean and standard error of the empirical NNGP of the outputs (batch axis 0, channel axis -1; full
// zipped layout of their spatial axes) of `samples` networks initialised with the keys
// RngKey(seed).Split(samples): what the analytic NNGP should match within a few standard errors. The
// networks see the options' mask_constant and Aggregate patterns (pattern1 for x1, pattern2 for x2), and
// a Dropout key per network.
McEstimate MonteCarloNngp(const stax::Net& net, const Array& x1, const Array& x2, int samples, uint64_t seed,
                          const KernelOptions& options = {});

// Checks net's analytic NNGP of (x1, x2) against MonteCarloNngp(net, x1, x2, samples, seed): within 5
// standard errors plus 3% of the value plus atol, which absorbs the finite-width bias (O(1 / width)).
void ExpectNngpMatchesMonteCarlo(const stax::Net& net, const Array& x1, const Array& x2, int samples,
                                 uint64_t seed, double atol, const std::string& what,
                                 const KernelOptions& options = {});

}  // namespace nt::testing_util

#endif  // NT_TESTS_LAYER_TEST_UTIL_H_
