// Predictions of infinitely wide networks from precomputed kernels (core.md section 6): the mean and
// covariance of an infinite ensemble trained by gradient flow on the MSE loss
// (gradient_descent_mse_ensemble), with GP inference at infinite time (gp_inference), and
// max_learning_rate. Kernels are 2-D (trace_axes = (-1,): outputs are independent and identically
// distributed over the last axis of y_train).
#ifndef NT_CORE_PREDICT_H_
#define NT_CORE_PREDICT_H_

#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "core/array.h"
#include "core/real.h"

namespace NT_CORE_NS::predict {

struct MseOptions {
  double learning_rate = 1.0;
  // Added to the diagonal of the train-train kernel that is inverted or exponentiated: diag_reg itself
  // with diag_reg_absolute_scale, else diag_reg times the mean of its diagonal.
  double diag_reg = 0.0;
  bool diag_reg_absolute_scale = false;
};

enum class Kind { kNngp, kNtk };
const char* KindName(Kind kind);

struct Prediction {
  Array mean;                // (M, K): test points (or train points without a test set) x outputs.
  std::optional<Array> cov;  // (M, M), when asked for.
};

// Test-side kernels of one request: k_td of the kind predicted (M, N), and for covariances the NNGP's
// k_td (for the NTK kind) and k_tt (M, M). All null: predictions at the training points.
struct TestKernels {
  const Array* k_td = nullptr;
  const Array* nngp_td = nullptr;
  const Array* nngp_tt = nullptr;
};

// gradient_descent_mse_ensemble on precomputed train-train kernels. The Cholesky factor (t = infinity) and
// the eigendecomposition (finite t) of each kind's regularised train-train kernel are computed on first
// use and kept, so later calls with new test points or times skip them. Thread-safe.
class MseEnsemble {
 public:
  // y_train (N, K). Either kernel may be absent (then that kind cannot be predicted; the NTK's
  // covariance also needs the NNGP).
  static absl::StatusOr<std::unique_ptr<MseEnsemble>> Create(std::optional<Array> nngp_dd,
                                                             std::optional<Array> ntk_dd, Array y_train,
                                                             MseOptions options);

  // t: nullopt or +infinity = infinite time; otherwise learning_rate * t of gradient flow (t >= 0).
  absl::StatusOr<Prediction> Predict(Kind kind, std::optional<double> t, const TestKernels& test,
                                     bool compute_cov) const;

  ~MseEnsemble();
  int64_t num_train() const { return y_.dim(0); }
  // Bytes held by the cached factorisations.
  int64_t cached_bytes() const;

 private:
  struct Factors;
  MseEnsemble() = default;
  absl::StatusOr<const Factors*> Cholesky(Kind kind) const;
  absl::StatusOr<const Factors*> Eigen(Kind kind) const;
  absl::StatusOr<Prediction> Infinite(Kind kind, const TestKernels& test, bool compute_cov) const;
  absl::StatusOr<Prediction> Finite(Kind kind, double t, const TestKernels& test, bool compute_cov) const;
  const Array* Kernel(Kind kind) const { return kind == Kind::kNngp ? nngp_dd_.get() : ntk_dd_.get(); }

  std::shared_ptr<const Array> nngp_dd_, ntk_dd_;
  Array y_;
  MseOptions o_;
  mutable std::mutex mu_;
  mutable std::unique_ptr<Factors> chol_[2], eig_[2];
};

// max_learning_rate: the largest learning rate for which gradient descent on the MSE converges,
// 2 (1 + momentum) m / (lambda_max(ntk) + eps), m = y_train_size or the kernel's row count.
absl::StatusOr<double> MaxLearningRate(const Array& ntk_train_train,
                                       std::optional<int64_t> y_train_size = std::nullopt,
                                       double momentum = 0.0, double eps = 1e-12);

}  // namespace NT_CORE_NS::predict

#endif  // NT_CORE_PREDICT_H_
