#include "core/exp_normalized.h"

#include <algorithm>
#include <cmath>

#include "core/fast_math.h"

namespace NT_CORE_NS {

absl::StatusOr<ArrayFlow> ExpNormalizedLayer::Apply(const Params&, const ArrayFlow&) const {
  return LayerUnimplemented(name(), "has no finite network (apply_fn): it is defined by its kernel only");
}

void ExpNormalizedLayer::PairMap(const double* q11, const double* q12, const double* q22, int64_t n,
                                 double* t, double* tdot) const {
  // s = sqrt(max(q11 q22, 1e-30)), rho = q12 / s (clipped to [-1, 1] with do_clip),
  // T = s exp(gamma (rho + shift)) and Tdot = dT/dq12 = gamma exp(gamma (rho + shift)).
  const double g = gamma_, sh = shift_;
  const double lo = do_clip_ ? -1.0 : -std::numeric_limits<double>::infinity();
  const double hi = do_clip_ ? 1.0 : std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    const double s = std::sqrt(std::max(q11[i] * q22[i], 1e-30));
    const double e = Exp(g * (std::clamp(q12[i] / s, lo, hi) + sh));
    t[i] = s * e;
    if (tdot) tdot[i] = g * e;
  }
}

}  // namespace NT_CORE_NS
