// Shared machinery of elementwise nonlinearities: the kernel maps are evaluated over whole arrays in
// chunks, with (q11, q12, q22) gathered per chunk so that a layer's map is one tight loop.
#ifndef NT_CORE_ELEMENTWISE_H_
#define NT_CORE_ELEMENTWISE_H_

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "core/layer.h"
#include "core/real.h"

namespace NT_CORE_NS {

// Applies a map f(const double* x, n, double* y) of doubles in place to an array of the engine's Real
// (through a double copy in the float32 engine).
template <typename F>
void MapInPlace(Array* a, const F& f) {
  if constexpr (std::is_same_v<Real, double>) {
    f(a->data(), a->size(), a->data());
  } else {
    std::vector<double> buf(a->data(), a->data() + a->size());
    f(buf.data(), a->size(), buf.data());
    std::copy(buf.begin(), buf.end(), a->data());
  }
}

class ElementwiseLayer : public Layer {
 public:
  Requirements requirements() const override;
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override;
  absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const override;
  CovUse cov_use() const override { return CovUse::kDiagonal; }

  // E[phi(u) phi(v)] (into t) and E[phi'(u) phi'(v)] (into tdot, when not null) for (u, v) centred
  // Gaussian with covariance [[q11, q12], [q12, q22]], for n entries.
  virtual void PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
                       double* tdot) const = 0;
  // PairMap on the engine's Real. Default: PairMap itself in double engines, through double copies in
  // the float32 engine, whose layers may override it with single-precision arithmetic.
  virtual void PairMapReal(const Real* q11, const Real* q12, const Real* q22, int64_t n, Real* t,
                           Real* tdot) const;
  // E[phi(u)^2] for variance q; default: PairMap(q, q, q).
  virtual void DiagMap(const double* q, int64_t n, double* t) const;
  // phi(x) for the finite network.
  virtual double Phi(double x) const = 0;
  // phi'(x), for reverse mode (the empirical NTK).
  virtual double DPhi(double x) const = 0;
  // Reverse mode: y = apply_fn(x), dx = dy phi'(x).
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_ELEMENTWISE_H_
