// Text expressions (muparser syntax: + - * / ^, sin, exp, sqrt, tanh, ..., `_pi`, `_e`, comparisons and
// `c ? a : b`) over a fixed list of named variables, for the layers whose functions come as text over gRPC
// (Elementwise, ElementwiseNumerical). Safe to evaluate concurrently: a muparser instance is not
// thread-safe, so each evaluation borrows a parser of its own from a per-expression pool.
#ifndef NT_CORE_EXPRESSION_H_
#define NT_CORE_EXPRESSION_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/elementwise.h"
#include "core/real.h"

namespace NT_CORE_NS {

class Expression {
 public:
  // Parses `text` over `vars`; does not parse, or uses another name: INVALID_ARGUMENT naming
  // `layer`.`field`.
  static absl::StatusOr<std::shared_ptr<const Expression>> Parse(const std::string& layer,
                                                                 const std::string& field,
                                                                 const std::string& text,
                                                                 std::vector<std::string> vars);
  ~Expression();

  const std::string& text() const { return text_; }
  int arity() const { return static_cast<int>(vars_.size()); }

  // out[i] = expr(args[0][i], .., args[arity - 1][i]) for i < n.
  void Eval(const double* const* args, int64_t n, double* out) const;
  // The same for one variable: y[i] = expr(x[i]).
  void Eval1(const double* x, int64_t n, double* y) const;
  // out[i] = d expr / d vars[wrt] at args[.][i], by a 5-point central difference with step
  // h = 1e-3 max(scale[i], 1e-8) (scale: null means max(1, |arg|)); where that is not finite (a boundary
  // of the domain), by one-sided second-order differences.
  void Diff(int wrt, const double* const* args, const double* scale, int64_t n, double* out) const;

 private:
  struct Slot;
  Expression(std::string text, std::vector<std::string> vars);
  std::unique_ptr<Slot> NewSlot() const;
  std::unique_ptr<Slot> Acquire() const;
  void Release(std::unique_ptr<Slot> slot) const;

  std::string text_;
  std::vector<std::string> vars_;
  mutable std::mutex mu_;
  mutable std::vector<std::unique_ptr<Slot>> pool_;
};

using ExpressionPtr = std::shared_ptr<const Expression>;

// Elementwise(fn, nngp_fn, d_nngp_fn) (upstream's user-supplied dual): fn of `x` for the finite network,
// nngp_fn and d_nngp_fn of (`cov12`, `var1`, `var2`) for T and Tdot; without d_nngp_fn, Tdot is
// d nngp_fn / d cov12 (Price's theorem) by finite differences. Every covariance entry, the diagonal ones
// included, is nngp_fn(entry, left variance, right variance) (no separate T_diag, as upstream).
// A missing fn makes apply_fn UNIMPLEMENTED, a missing nngp_fn kernel_fn.
class ElementwiseExpressionLayer : public ElementwiseLayer {
 public:
  ElementwiseExpressionLayer(ExpressionPtr fn, ExpressionPtr nngp_fn, ExpressionPtr d_nngp_fn)
      : fn_(std::move(fn)), nngp_fn_(std::move(nngp_fn)), d_nngp_fn_(std::move(d_nngp_fn)) {}
  std::string name() const override { return "Elementwise"; }
  absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const override;
  void PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
               double* tdot) const override;
  double Phi(double x) const override;
  double DPhi(double x) const override;
  bool remask_kernel() const override { return true; }

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;

 private:
  ExpressionPtr fn_, nngp_fn_, d_nngp_fn_;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_EXPRESSION_H_
