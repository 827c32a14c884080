// Checks reverse mode (Layer::LinearizeMasked, the pullbacks behind the empirical NTK) against central
// differences of the forward pass: one check shared by every layer's test.
#ifndef NT_TESTS_VJP_TEST_UTIL_H_
#define NT_TESTS_VJP_TEST_UTIL_H_

#include <cstdint>
#include <optional>

#include "core/layer.h"
#include "core/stax.h"

namespace nt::testing_util {

// For random cotangents dy of the outputs and random directions dx of the inputs and dp of the
// parameters, checks <pullback(dy).dx, dx> == d/dt <dy, f(params, x + t dx)> and
// <pullback(dy).dparams, dp> == d/dt <dy, f(params + t dp, x)> (fourth-order central differences, step
// 1e-5 times the direction's scale) to relative `tol`; also that the cotangents have the shapes of the
// inputs and parameters and that the forward pass equals ApplyMasked. `masks`: one entry per input (or
// empty); `ctx`: apply_fn's keyword arguments (the same rng on every evaluation).
void ExpectVjpMatchesFiniteDifferences(const Layer& layer, const Params& params, const ArrayFlow& x,
                                       const MaskFlow& masks = {}, const ApplyContext& ctx = {},
                                       double tol = 1e-7, uint64_t seed = 1);

// The same for a Net on one input, with the parameters its init_fn draws from RngKey(param_seed), and
// masks where x equals `mask_constant` (NaN: NaN entries), as apply_fn masks them.
void ExpectNetVjpMatchesFiniteDifferences(const stax::Net& net, const Array& x,
                                          std::optional<double> mask_constant = std::nullopt,
                                          const ApplyContext& ctx = {}, double tol = 1e-7,
                                          uint64_t param_seed = 0);

}  // namespace nt::testing_util

#endif  // NT_TESTS_VJP_TEST_UTIL_H_
