#include "core/predict.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <thread>
#include <type_traits>
#include <vector>

#include "Eigen/Core"
#include "Eigen/Eigenvalues"
#include "absl/strings/str_cat.h"

// LAPACK from OpenBLAS (which the core links for its GEMMs): multithreaded Cholesky and symmetric
// eigendecompositions, several times faster than Eigen's single-threaded ones at these sizes.
extern "C" {
void openblas_set_num_threads(int num_threads);
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info);
void spotrf_(const char* uplo, const int* n, float* a, const int* lda, int* info);
void dpotrs_(const char* uplo, const int* n, const int* nrhs, const double* a, const int* lda, double* b,
             const int* ldb, int* info);
void spotrs_(const char* uplo, const int* n, const int* nrhs, const float* a, const int* lda, float* b,
             const int* ldb, int* info);
void dsyevd_(const char* jobz, const char* uplo, const int* n, double* a, const int* lda, double* w,
             double* work, const int* lwork, int* iwork, const int* liwork, int* info);
void ssyevd_(const char* jobz, const char* uplo, const int* n, float* a, const int* lda, float* w,
             float* work, const int* lwork, int* iwork, const int* liwork, int* info);
}

namespace NT_CORE_NS::predict {

namespace {

// The LAPACK routine of the engine's precision (a template, so that the other precision's is not compiled).
// Both on the lower triangle ("L") of a column-major matrix: a row-major array read as column-major is
// its transpose, whose lower triangle is the array's upper one. OpenBLAS's "L" factorisation measured
// 5% faster than "U" at n = 8192.
template <typename T>
void Potrf(int n, T* a, int* info) {
  if constexpr (std::is_same_v<T, double>) {
    dpotrf_("L", &n, a, &n, info);
  } else {
    spotrf_("L", &n, a, &n, info);
  }
}
template <typename T>
void Potrs(int n, int nrhs, const T* a, T* b, int* info) {
  if constexpr (std::is_same_v<T, double>) {
    dpotrs_("L", &n, &nrhs, a, &n, b, &n, info);
  } else {
    spotrs_("L", &n, &nrhs, a, &n, b, &n, info);
  }
}
template <typename T>
void Syevd(int n, T* a, T* w, int* info) {
  const int query = -1;
  T work_size = 0;
  int iwork_size = 0;
  auto call = [&](T* work, const int* lwork, int* iwork, const int* liwork) {
    if constexpr (std::is_same_v<T, double>) {
      dsyevd_("V", "L", &n, a, &n, w, work, lwork, iwork, liwork, info);
    } else {
      ssyevd_("V", "L", &n, a, &n, w, work, lwork, iwork, liwork, info);
    }
  };
  call(&work_size, &query, &iwork_size, &query);
  if (*info != 0) return;
  const int lwork = static_cast<int>(work_size), liwork = iwork_size;
  std::vector<T> work(static_cast<size_t>(std::max(lwork, 1)));
  std::vector<int> iwork(static_cast<size_t>(std::max(liwork, 1)));
  call(work.data(), &lwork, iwork.data(), &liwork);
}

// Factorisations run outside the engine's TBB tiles: let OpenBLAS use every core.
void AllCoresBlas() {
  openblas_set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
}

using Mat = Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic>;
using Vec = Eigen::Matrix<Real, Eigen::Dynamic, 1>;
using RowMat = Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

Mat ToMat(const Array& a) { return Eigen::Map<const RowMat>(a.data(), a.dim(0), a.dim(1)); }

Array ToArray(const Mat& m) {
  Array a = Array::Uninitialized({m.rows(), m.cols()});
  Eigen::Map<RowMat>(a.data(), m.rows(), m.cols()) = m;
  return a;
}

absl::Status CheckMatrix(const Array& a, const std::string& field, int64_t rows, int64_t cols) {
  if (a.rank() != 2 || a.dim(0) != rows || a.dim(1) != cols) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": expected shape ", ShapeToString({rows, cols}),
                                                   ", got ", ShapeToString(a.shape())));
  }
  // x * 0 is 0 for finite x and NaN otherwise: eight independent sums vectorise (a branch per entry
  // does not), which matters for train-train kernels of hundreds of MB.
  constexpr int64_t kLanes = 8;
  Real acc[kLanes] = {};
  const int64_t size = a.size(), body = size / kLanes * kLanes;
  for (int64_t i = 0; i < body; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) acc[j] += a[i + j] * Real(0);
  }
  bool finite = true;
  for (int64_t j = 0; j < kLanes; ++j) finite = finite && acc[j] == 0;
  if (finite && std::all_of(a.data() + body, a.data() + size, [](Real v) { return std::isfinite(v); })) {
    return absl::OkStatus();
  }
  for (int64_t i = 0; i < size; ++i) {
    if (!std::isfinite(a[i])) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": non-finite value ", a[i], " at index ", i));
    }
  }
  return absl::OkStatus();
}

}  // namespace

const char* KindName(Kind kind) { return kind == Kind::kNngp ? "nngp" : "ntk"; }

struct MseEnsemble::Factors {
  // Cholesky factor of the regularised kernel (t = infinity): LAPACK's L (column-major) in an Array,
  // whose allocator backs it with huge pages (a fresh 8192 x 8192 Eigen matrix took 1.4 s of page
  // faults, more than half the factorisation).
  Array chol;

  // (regularised kernel)^{-1} b.
  Mat Solve(Mat b) const {
    int info = 0;
    Potrs(static_cast<int>(chol.dim(0)), static_cast<int>(b.cols()), chol.data(), b.data(), &info);
    return b;
  }
  Vec lambda;  // Eigenvalues (ascending) and eigenvectors of it (finite t).
  Mat v;
};

MseEnsemble::~MseEnsemble() = default;

absl::StatusOr<std::unique_ptr<MseEnsemble>> MseEnsemble::Create(std::optional<Array> nngp_dd,
                                                                 std::optional<Array> ntk_dd, Array y_train,
                                                                 MseOptions options) {
  if (y_train.rank() != 2 || y_train.dim(0) == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("y_train: expected (N, K) with N > 0, got ", ShapeToString(y_train.shape())));
  }
  const int64_t n = y_train.dim(0);
  if (absl::Status st = CheckMatrix(y_train, "y_train", n, y_train.dim(1)); !st.ok()) return st;
  if (!nngp_dd && !ntk_dd) return absl::InvalidArgumentError("k_train_train: needs the nngp or the ntk");
  for (auto [k, name] : {std::pair{&nngp_dd, "k_train_train.nngp"}, {&ntk_dd, "k_train_train.ntk"}}) {
    if (*k) {
      if (absl::Status st = CheckMatrix(**k, name, n, n); !st.ok()) return st;
    }
  }
  if (!std::isfinite(options.learning_rate) || options.learning_rate <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("learning_rate: must be positive, got ", options.learning_rate));
  }
  if (!std::isfinite(options.diag_reg) || options.diag_reg < 0) {
    return absl::InvalidArgumentError(absl::StrCat("diag_reg: must be >= 0, got ", options.diag_reg));
  }
  std::unique_ptr<MseEnsemble> e(new MseEnsemble());
  if (nngp_dd) e->nngp_dd_ = std::make_shared<const Array>(*std::move(nngp_dd));
  if (ntk_dd) e->ntk_dd_ = std::make_shared<const Array>(*std::move(ntk_dd));
  e->y_ = std::move(y_train);
  e->o_ = options;
  return e;
}

int64_t MseEnsemble::cached_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t bytes = 0;
  const int64_t n = y_.dim(0);
  for (int k = 0; k < 2; ++k) {
    if (chol_[k]) bytes += n * n * int64_t(sizeof(Real));
    if (eig_[k]) bytes += (n * n + n) * int64_t(sizeof(Real));
  }
  return bytes;
}

namespace {

// What is added to the diagonal: diag_reg, or diag_reg times the mean diagonal.
Real RegularisationOf(const Array& k, const MseOptions& o) {
  if (o.diag_reg_absolute_scale) return Real(o.diag_reg);
  const int64_t n = k.dim(0);
  Real trace = 0;
  for (int64_t i = 0; i < n; ++i) trace += k[i * n + i];
  return Real(o.diag_reg) * trace / Real(n);
}

Mat Regularised(const Array& k, const MseOptions& o) {
  Mat a = ToMat(k);
  a.diagonal().array() += RegularisationOf(k, o);
  return a;
}

absl::Status NotPositiveDefinite(Kind kind, int64_t n, const MseOptions& o) {
  return absl::FailedPreconditionError(absl::StrCat(
      "the train-train ", KindName(kind), " kernel (", n, " x ", n, ") plus diag_reg = ", o.diag_reg,
      o.diag_reg_absolute_scale ? "" : " x its mean diagonal",
      " is not positive definite (Cholesky failed), e.g. because training points repeat; pass a larger "
      "diag_reg (such as 1e-6) to regularise it"));
}

}  // namespace

absl::StatusOr<const MseEnsemble::Factors*> MseEnsemble::Cholesky(Kind kind) const {
  const Array* k = Kernel(kind);
  if (k == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("get: '", KindName(kind), "' needs its train-train kernel"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  std::unique_ptr<Factors>& f = chol_[int(kind)];
  if (!f) {
    auto fresh = std::make_unique<Factors>();
    // A copy as it is (no transposing copy): Potrf reads the upper triangle of the row-major array.
    fresh->chol = *k;
    const int64_t n = k->dim(0);
    const Real lam = RegularisationOf(*k, o_);
    Real max_diag = 0;
    for (int64_t i = 0; i < n; ++i) {
      fresh->chol[i * n + i] += lam;
      max_diag = std::max(max_diag, fresh->chol[i * n + i]);
    }
    int info = 0;
    AllCoresBlas();
    Potrf(static_cast<int>(n), fresh->chol.data(), &info);
    if (info != 0) return NotPositiveDefinite(kind, k->dim(0), o_);
    // Pivots at rounding level mean a singular kernel that rounding happened to keep positive (which
    // triangle is read decides it): its solve would be noise, so it is refused as well.
    const Real floor = Real(n) * std::numeric_limits<Real>::epsilon() * max_diag;
    for (int64_t i = 0; i < n; ++i) {
      const Real u = fresh->chol[i * n + i];
      if (!(u * u > floor)) return NotPositiveDefinite(kind, k->dim(0), o_);
    }
    f = std::move(fresh);
  }
  return f.get();
}

absl::StatusOr<const MseEnsemble::Factors*> MseEnsemble::Eigen(Kind kind) const {
  const Array* k = Kernel(kind);
  if (k == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("get: '", KindName(kind), "' needs its train-train kernel"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  std::unique_ptr<Factors>& f = eig_[int(kind)];
  if (!f) {
    auto fresh = std::make_unique<Factors>();
    fresh->v = Regularised(*k, o_);
    fresh->lambda.resize(fresh->v.rows());
    int info = 0;
    AllCoresBlas();
    Syevd(static_cast<int>(fresh->v.rows()), fresh->v.data(), fresh->lambda.data(), &info);
    if (info != 0) {
      return absl::InternalError(
          absl::StrCat("eigendecomposition of the ", KindName(kind), " kernel failed (info ", info, ")"));
    }
    f = std::move(fresh);
  }
  return f.get();
}

absl::StatusOr<Prediction> MseEnsemble::Predict(Kind kind, std::optional<double> t, const TestKernels& test,
                                                bool compute_cov) const {
  const int64_t n = y_.dim(0);
  if (test.k_td) {
    const int64_t m = test.k_td->dim(0);
    if (absl::Status st = CheckMatrix(*test.k_td, absl::StrCat("k_test_train.", KindName(kind)), m, n);
        !st.ok()) {
      return st;
    }
    if (compute_cov) {
      if (!test.nngp_tt) return absl::InvalidArgumentError("compute_cov: needs the test-test nngp kernel");
      if (absl::Status st = CheckMatrix(*test.nngp_tt, "k_test_test.nngp", m, m); !st.ok()) return st;
      if (kind == Kind::kNtk) {
        if (!test.nngp_td)
          return absl::InvalidArgumentError("compute_cov: the ntk's covariance needs the nngp k_test_train");
        if (absl::Status st = CheckMatrix(*test.nngp_td, "k_test_train.nngp", m, n); !st.ok()) return st;
      }
    }
  }
  if (compute_cov && kind == Kind::kNtk && !nngp_dd_) {
    return absl::InvalidArgumentError("compute_cov: the ntk's covariance needs the nngp train-train kernel");
  }
  if (!t || std::isinf(*t)) {
    if (t && *t < 0) return absl::InvalidArgumentError("t: must be >= 0 or infinity");
    return Infinite(kind, test, compute_cov);
  }
  if (!(*t >= 0)) return absl::InvalidArgumentError(absl::StrCat("t: must be >= 0 or infinity, got ", *t));
  return Finite(kind, *t, test, compute_cov);
}

absl::StatusOr<Prediction> MseEnsemble::Infinite(Kind kind, const TestKernels& test, bool compute_cov) const {
  const int64_t n = y_.dim(0);
  Prediction p;
  if (!test.k_td) {
    // At the training points the infinite-time prediction is the targets, with no variance.
    p.mean = y_;
    if (compute_cov) p.cov = Array({n, n}, 0.0);
    return p;
  }
  auto f = Cholesky(kind);
  if (!f.ok()) return f.status();
  const Factors& llt = **f;
  const Mat k_td = ToMat(*test.k_td);
  p.mean = ToArray(k_td * llt.Solve(ToMat(y_)));
  if (!compute_cov) return p;
  const Mat k_tt = ToMat(*test.nngp_tt);
  if (kind == Kind::kNngp) {
    p.cov = ToArray(k_tt - k_td * llt.Solve(Mat(k_td.transpose())));
    return p;
  }
  // NTK: K_tt + A^T K_dd A - (A^T K_dt + K_td A), A = Theta^{-1} Theta_dt.
  const Mat a = llt.Solve(Mat(k_td.transpose()));
  const Mat nngp_td = ToMat(*test.nngp_td);
  const Mat cross = nngp_td * a;
  p.cov = ToArray(k_tt + a.transpose() * ToMat(*nngp_dd_) * a - (cross + cross.transpose()));
  return p;
}

absl::StatusOr<Prediction> MseEnsemble::Finite(Kind kind, double t, const TestKernels& test,
                                               bool compute_cov) const {
  auto f = Eigen(kind);
  if (!f.ok()) return f.status();
  const Vec& lambda = (*f)->lambda;
  const Mat& v = (*f)->v;
  const double size = double(y_.size());  // MSE normalised by y_train.size.
  const double tau = o_.learning_rate * t;
  // -expm1(-max(lambda, 0) tau / n), and that over lambda (its limit tau / n where lambda <= 0).
  auto one_minus_e = [&](double s) {
    Vec out(lambda.size());
    for (int64_t i = 0; i < lambda.size(); ++i)
      out[i] = Real(-std::expm1(-std::max(double(lambda[i]), 0.0) * s / size));
    return out;
  };
  auto one_minus_e_over = [&](double s) {
    Vec out(lambda.size());
    for (int64_t i = 0; i < lambda.size(); ++i) {
      const double l = lambda[i];
      out[i] = Real(l > 0 ? -std::expm1(-l * s / size) / l : s / size);
    }
    return out;
  };
  const Mat vt_y = v.transpose() * ToMat(y_);
  Prediction p;
  if (!test.k_td) {
    p.mean = ToArray(v * (one_minus_e(tau).asDiagonal() * vt_y));
    if (!compute_cov) return p;
    if (kind == Kind::kNngp) {
      Vec d(lambda.size());
      for (int64_t i = 0; i < lambda.size(); ++i) {
        const double l = std::max(double(lambda[i]), 0.0);
        d[i] = Real(l * std::exp(-2 * l * tau / size));
      }
      p.cov = ToArray(v * d.asDiagonal() * v.transpose());
    } else {
      Vec d(lambda.size());
      for (int64_t i = 0; i < lambda.size(); ++i)
        d[i] = Real(std::exp(-std::max(double(lambda[i]), 0.0) * tau / size));
      const Mat e = v * d.asDiagonal() * v.transpose();
      p.cov = ToArray(e * ToMat(*nngp_dd_) * e.transpose());
    }
    return p;
  }
  const Mat k_td = ToMat(*test.k_td);
  p.mean = ToArray(k_td * (v * (one_minus_e_over(tau).asDiagonal() * vt_y)));
  if (!compute_cov) return p;
  const Mat k_tt = ToMat(*test.nngp_tt);
  if (kind == Kind::kNngp) {
    const Mat w = v.transpose() * k_td.transpose();  // V^T K_dt
    p.cov = ToArray(k_tt - w.transpose() * one_minus_e_over(2 * tau).asDiagonal() * w);
    return p;
  }
  // NTK: K_tt + T1^T K_dd T1 - (T2 + T2^T), T1 = Theta^{-1} (I - E) Theta_dt, T2 = T1^T K_dt.
  const Mat t1 = v * (one_minus_e_over(tau).asDiagonal() * (v.transpose() * k_td.transpose()));
  const Mat t2 = t1.transpose() * ToMat(*test.nngp_td).transpose();
  p.cov = ToArray(k_tt + t1.transpose() * ToMat(*nngp_dd_) * t1 - (t2 + t2.transpose()));
  return p;
}

absl::StatusOr<double> MaxLearningRate(const Array& ntk_train_train, std::optional<int64_t> y_train_size,
                                       double momentum, double eps) {
  const int64_t n = ntk_train_train.rank() == 2 ? ntk_train_train.dim(0) : 0;
  if (absl::Status st = CheckMatrix(ntk_train_train, "ntk_train_train", n, n); !st.ok() || n == 0) {
    return st.ok() ? absl::InvalidArgumentError("ntk_train_train: empty") : st;
  }
  Eigen::SelfAdjointEigenSolver<Mat> es(ToMat(ntk_train_train), Eigen::EigenvaluesOnly);
  if (es.info() != Eigen::Success) return absl::InternalError("eigenvalues of ntk_train_train failed");
  const double m = y_train_size ? double(*y_train_size) : double(n);
  return 2 * (1 + momentum) * m / (double(es.eigenvalues().maxCoeff()) + eps);
}

}  // namespace NT_CORE_NS::predict
