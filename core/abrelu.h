// ABRelu(a, b) = a min(x, 0) + b max(x, 0), and its aliases Relu, LeakyRelu and Abs.
#ifndef NT_CORE_ABRELU_H_
#define NT_CORE_ABRELU_H_

#include "core/elementwise.h"
#include "core/real.h"

namespace NT_CORE_NS {

class ABReluLayer : public ElementwiseLayer {
 public:
  ABReluLayer(double a, double b, bool do_stabilize, std::string name = "ABRelu")
      : a_(a), b_(b), do_stabilize_(do_stabilize), name_(std::move(name)) {}
  std::string name() const override { return name_; }
  void PairMap(const double* q11, const double* q12, const double* q22, int64_t n, double* t,
               double* tdot) const override;
  // Float32 engine: single-precision square root and arctangent (twice the lanes of double).
  void PairMapReal(const Real* q11, const Real* q12, const Real* q22, int64_t n, Real* t,
                   Real* tdot) const override;
  void DiagMap(const double* q, int64_t n, double* t) const override;
  double Phi(double x) const override { return x < 0 ? a_ * x : b_ * x; }
  double DPhi(double x) const override { return x < 0 ? a_ : b_; }
  // T(0, 0, 0) = 0 already (upstream does not re-mask either).
  bool remask_kernel() const override { return false; }

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;

 private:
  double a_, b_;
  bool do_stabilize_;
  std::string name_;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_ABRELU_H_
