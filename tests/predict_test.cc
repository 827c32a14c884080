// Predictions from precomputed kernels (core/predict.h): every golden predict case from its own kernels,
// upstream's consistency properties, cached factorisations and errors.
#include "core/predict.h"

#include <cmath>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/rng.h"
#include "gtest/gtest.h"
#include "tests/golden_test_util.h"

namespace nt::predict {
namespace {

using testing::ArrayFromJson;

// check.py's rule for one array of a predict case: |got - expected| <= atol + rtol |expected|.
void ExpectMatchesGolden(const nlohmann::json& c, const std::string& kind, const std::string& part,
                         const Array& got) {
  const Array expected = ArrayFromJson(c["expected"][kind][part]);
  ASSERT_EQ(got.shape(), expected.shape()) << kind << "." << part;
  const double rtol = c["rtol"].get<double>();
  const nlohmann::json& a = c["atol"];
  const double atol = a.is_number() ? a.get<double>() : a[kind][part].get<double>();
  for (int64_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], expected[i], atol + rtol * std::abs(expected[i]))
        << kind << "." << part << "[" << i << "]";
  }
}

// Stacks per-time predictions (M, K) or (M, M) into (T, ...).
Array Stack(const std::vector<Array>& parts) {
  Shape shape = parts.front().shape();
  shape.insert(shape.begin(), static_cast<int64_t>(parts.size()));
  Array out(shape);
  const int64_t inner = parts.front().size();
  for (size_t t = 0; t < parts.size(); ++t) {
    for (int64_t i = 0; i < inner; ++i) out[t * inner + i] = parts[t][i];
  }
  return out;
}

class PredictGoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(PredictGoldenTest, MatchesGoldenFromItsKernels) {
  const nlohmann::json c = testing::LoadCase(GetParam());
  const nlohmann::json& k = c["kernels"];
  const nlohmann::json& o = c["options"];
  MseOptions options;
  options.learning_rate = o["learning_rate"].get<double>();
  options.diag_reg = o["diag_reg"].get<double>();
  options.diag_reg_absolute_scale = o["diag_reg_absolute_scale"].get<bool>();
  auto ens = MseEnsemble::Create(ArrayFromJson(k["nngp_train_train"]), ArrayFromJson(k["ntk_train_train"]),
                                 ArrayFromJson(c["inputs"]["y_train"]), options);
  ASSERT_TRUE(ens.ok()) << ens.status();
  const Array nngp_td = ArrayFromJson(k["nngp_test_train"]), ntk_td = ArrayFromJson(k["ntk_test_train"]);
  const Array nngp_tt = ArrayFromJson(k["nngp_test_test"]);
  for (Kind kind : {Kind::kNngp, Kind::kNtk}) {
    std::vector<Array> means, covs;
    for (const nlohmann::json& tj : o["t"]) {
      const std::optional<double> t =
          tj.is_string() ? std::nullopt : std::optional<double>(tj.get<double>());  // "inf": t = None.
      TestKernels test{kind == Kind::kNngp ? &nngp_td : &ntk_td, &nngp_td, &nngp_tt};
      auto p = (*ens)->Predict(kind, t, test, /*compute_cov=*/true);
      ASSERT_TRUE(p.ok()) << p.status();
      means.push_back(p->mean);
      covs.push_back(*p->cov);
    }
    ExpectMatchesGolden(c, KindName(kind), "mean", Stack(means));
    ExpectMatchesGolden(c, KindName(kind), "cov", Stack(covs));
  }
}

INSTANTIATE_TEST_SUITE_P(Golden, PredictGoldenTest,
                         ::testing::Values("predict_fc_relu", "predict_fc_erf_reg", "predict_conv1d_absreg"));

// A small positive definite problem: K = X X^T / d + 0.1 I.
struct Problem {
  Array k_dd, k_td, k_tt, theta_dd, theta_td, y;
};

Problem MakeProblem() {
  const int64_t n = 6, m = 3, d = 4;
  const Array x = nt::RngKey(3).Normal({n + m, d});
  Problem p{Array({n, n}), Array({m, n}), Array({m, m}),
            Array({n, n}), Array({m, n}), nt::RngKey(4).Normal({n, 2})};
  auto dot = [&](int64_t i, int64_t j) {
    double s = 0;
    for (int64_t e = 0; e < d; ++e) s += x[i * d + e] * x[j * d + e];
    return s / d + (i == j ? 0.1 : 0.0);
  };
  for (int64_t i = 0; i < n + m; ++i) {
    for (int64_t j = 0; j < n + m; ++j) {
      const double v = dot(i, j), th = 2 * dot(i, j) + 0.3;
      if (i < n && j < n) {
        p.k_dd[i * n + j] = v;
        p.theta_dd[i * n + j] = th;
      } else if (i >= n && j < n) {
        p.k_td[(i - n) * n + j] = v;
        p.theta_td[(i - n) * n + j] = th;
      } else if (i >= n && j >= n) {
        p.k_tt[(i - n) * m + (j - n)] = v;
      }
    }
  }
  return p;
}

void ExpectNear(const Array& a, const Array& b, double tol, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  for (int64_t i = 0; i < a.size(); ++i)
    ASSERT_NEAR(a[i], b[i], tol * (1 + std::abs(b[i]))) << what << " " << i;
}

TEST(PredictTest, UpstreamConsistencyProperties) {
  const Problem p = MakeProblem();
  auto ens = MseEnsemble::Create(p.k_dd, p.theta_dd, p.y, MseOptions{0.7, 0.0, false});
  ASSERT_TRUE(ens.ok());
  for (Kind kind : {Kind::kNngp, Kind::kNtk}) {
    const TestKernels test{kind == Kind::kNngp ? &p.k_td : &p.theta_td, &p.k_td, &p.k_tt};
    // t = 0: mean 0, covariance the prior.
    auto t0 = (*ens)->Predict(kind, 0.0, test, true);
    ASSERT_TRUE(t0.ok());
    ExpectNear(t0->mean, Array(t0->mean.shape(), 0.0), 1e-12, "mean at t=0");
    ExpectNear(*t0->cov, p.k_tt, 1e-12, "cov at t=0");
    // A long time approaches infinity (t = inf is t = None).
    auto late = (*ens)->Predict(kind, 1e7, test, true);
    auto inf = (*ens)->Predict(kind, std::numeric_limits<double>::infinity(), test, true);
    auto none = (*ens)->Predict(kind, std::nullopt, test, true);
    ASSERT_TRUE(late.ok() && inf.ok() && none.ok());
    ExpectNear(late->mean, none->mean, 1e-8, "mean t=1e7 vs None");
    ExpectNear(*late->cov, *none->cov, 1e-8, "cov t=1e7 vs None");
    ExpectNear(inf->mean, none->mean, 0, "mean t=inf vs None");
    // Covariances are symmetric.
    const Array& cov = *none->cov;
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t j = 0; j < 3; ++j) EXPECT_NEAR(cov[i * 3 + j], cov[j * 3 + i], 1e-12);
    // Train predictions converge to the targets.
    auto train = (*ens)->Predict(kind, 1e7, TestKernels{}, false);
    ASSERT_TRUE(train.ok());
    ExpectNear(train->mean, p.y, 1e-8, "train mean at late t");
  }
  // The NTK's mean through the nngp code path: an ensemble whose "nngp" is the NTK.
  auto swapped = MseEnsemble::Create(p.theta_dd, std::nullopt, p.y, MseOptions{0.7, 0.0, false});
  ASSERT_TRUE(swapped.ok());
  for (double t : {0.5, 3.0}) {
    auto a = (*ens)->Predict(Kind::kNtk, t, TestKernels{&p.theta_td}, false);
    auto b = (*swapped)->Predict(Kind::kNngp, t, TestKernels{&p.theta_td}, false);
    ASSERT_TRUE(a.ok() && b.ok());
    ExpectNear(a->mean, b->mean, 1e-12, "ntk mean via the nngp path");
  }
}

TEST(PredictTest, FactorisationsAreCachedAcrossRequests) {
  const Problem p = MakeProblem();
  auto ens = MseEnsemble::Create(p.k_dd, p.theta_dd, p.y, MseOptions{});
  ASSERT_TRUE(ens.ok());
  EXPECT_EQ((*ens)->cached_bytes(), 0);
  ASSERT_TRUE((*ens)->Predict(Kind::kNngp, std::nullopt, TestKernels{&p.k_td}, false).ok());
  const int64_t after_cholesky = (*ens)->cached_bytes();
  EXPECT_GT(after_cholesky, 0);
  ASSERT_TRUE((*ens)->Predict(Kind::kNngp, std::nullopt, TestKernels{&p.k_td}, false).ok());
  EXPECT_EQ((*ens)->cached_bytes(), after_cholesky);  // Reused, not recomputed.
  ASSERT_TRUE((*ens)->Predict(Kind::kNngp, 1.0, TestKernels{&p.k_td}, false).ok());
  EXPECT_GT((*ens)->cached_bytes(), after_cholesky);  // The eigendecomposition joins it.
}

TEST(PredictTest, SingularKernelSuggestsDiagReg) {
  // Two identical training points: a singular NNGP.
  Array k({2, 2}, 1.0);
  auto ens = MseEnsemble::Create(k, std::nullopt, Array({2, 1}, 1.0), MseOptions{});
  ASSERT_TRUE(ens.ok());
  Array k_td({1, 2}, 0.5);
  auto p = (*ens)->Predict(Kind::kNngp, std::nullopt, TestKernels{&k_td}, false);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(p.status().message().find("diag_reg"), std::string::npos) << p.status();
  // With diag_reg the same request succeeds, and finite times never give NaN.
  auto reg = MseEnsemble::Create(k, std::nullopt, Array({2, 1}, 1.0), MseOptions{1.0, 1e-6, false});
  ASSERT_TRUE(reg.ok());
  ASSERT_TRUE((*reg)->Predict(Kind::kNngp, std::nullopt, TestKernels{&k_td}, false).ok());
  auto finite = (*ens)->Predict(Kind::kNngp, 2.0, TestKernels{&k_td}, false);
  ASSERT_TRUE(finite.ok());
  for (int64_t i = 0; i < finite->mean.size(); ++i) EXPECT_TRUE(std::isfinite(finite->mean[i]));
}

TEST(PredictTest, BadArgumentsNameTheField) {
  const Problem p = MakeProblem();
  EXPECT_EQ(MseEnsemble::Create(std::nullopt, std::nullopt, p.y, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto bad_lr = MseEnsemble::Create(p.k_dd, std::nullopt, p.y, MseOptions{-1.0, 0.0, false});
  EXPECT_NE(bad_lr.status().message().find("learning_rate"), std::string::npos);
  auto bad_shape = MseEnsemble::Create(p.k_td, std::nullopt, p.y, {});
  EXPECT_NE(bad_shape.status().message().find("k_train_train.nngp"), std::string::npos);
  auto ens = MseEnsemble::Create(p.k_dd, std::nullopt, p.y, {});
  ASSERT_TRUE(ens.ok());
  EXPECT_NE((*ens)->Predict(Kind::kNtk, 1.0, {}, false).status().message().find("ntk"), std::string::npos);
  EXPECT_NE((*ens)->Predict(Kind::kNngp, -1.0, {}, false).status().message().find("t:"), std::string::npos);
  EXPECT_NE(
      (*ens)->Predict(Kind::kNngp, 1.0, TestKernels{&p.k_td}, true).status().message().find("compute_cov"),
      std::string::npos);
}

TEST(PredictTest, MaxLearningRate) {
  Array k({2, 2}, 0.0);
  k[0] = 3;
  k[3] = 1;
  auto lr = MaxLearningRate(k, std::nullopt, 0.0, 0.0);
  ASSERT_TRUE(lr.ok());
  EXPECT_NEAR(*lr, 2.0 * 2 / 3, 1e-12);
  EXPECT_NEAR(*MaxLearningRate(k, 10, 0.5, 0.0), 2.0 * 1.5 * 10 / 3, 1e-12);
}

}  // namespace
}  // namespace nt::predict
