// The closed-form elementwise maps against the reference values of the spec (../shared/spec/
// elementwise.md, section 5), which were checked there against 2-D Gauss-Hermite quadrature.
#include <array>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/elementwise.h"
#include "core/stax.h"
#include "gtest/gtest.h"

namespace nt {
namespace {

using namespace nt::stax;  // NOLINT: reads like upstream's examples.

struct Row {
  std::string name;
  Net net;
  // T, Tdot at (0.7, 0.3, 1.3), T_diag(0.7), T, Tdot at (2.0, -1.1, 0.9), T_diag(2.0).
  double v[6];
};

const ElementwiseLayer& AsElementwise(const Net& net) {
  EXPECT_TRUE(net.status().ok()) << net.status();
  const auto* e = dynamic_cast<const ElementwiseLayer*>(net.layer().get());
  EXPECT_NE(e, nullptr);
  return *e;
}

// The spec gives 12 significant digits.
void ExpectClose(double got, double want, const std::string& what) {
  EXPECT_NEAR(got, want, 1e-10 * std::max(1.0, std::abs(want)) + 1e-13) << what;
}

void CheckRow(const Row& r) {
  const ElementwiseLayer& l = AsElementwise(r.net);
  const double q11[] = {0.7, 2.0}, q12[] = {0.3, -1.1}, q22[] = {1.3, 0.9};
  double t[2], tdot[2], td[2];
  l.PairMap(q11, q12, q22, 2, t, tdot);
  l.DiagMap(q11, 2, td);
  for (int p = 0; p < 2; ++p) {
    const std::string at = r.name + (p == 0 ? " at (0.7, 0.3, 1.3)" : " at (2.0, -1.1, 0.9)");
    ExpectClose(t[p], r.v[3 * p], at + " T");
    ExpectClose(tdot[p], r.v[3 * p + 1], at + " Tdot");
    ExpectClose(td[p], r.v[3 * p + 2], at + " T_diag");
  }
  // Without the NTK factor, T is the same.
  double t_only[2];
  l.PairMap(q11, q12, q22, 2, t_only, nullptr);
  EXPECT_EQ(t_only[0], t[0]) << r.name;
  EXPECT_EQ(t_only[1], t[1]) << r.name;
  // The general map on a variance is T_diag (up to rounding), except where upstream's T_diag differs.
}

// T and Tdot at (q11, q12, q22) for zero-variance checks.
std::pair<double, double> At(const Net& net, double q11, double q12, double q22) {
  double t, tdot;
  AsElementwise(net).PairMap(&q11, &q12, &q22, 1, &t, &tdot);
  return {t, tdot};
}

TEST(ElementwiseReferenceTest, SinAndCos) {
  for (const Row& r : std::vector<Row>{
           {"Sin()",
            Sin(),
            {0.112026755379, 0.384558548413, 0.376701518029, -0.313303211859, 0.39138487786, 0.490842180556}},
           {"Sin(0.3,1.5,-pi/4)",
            Sin(0.3, 1.5, -M_PI_4),
            {0.00931533987065, 0.020959514709, 0.045, 0.000145026686274, 0.000326310044115, 0.045}},
           {"Cos()",
            Cos(),
            {0.384558548413, 0.112026755379, 0.623298481971, 0.39138487786, -0.313303211859, 0.509157819444}},
       }) {
    CheckRow(r);
  }
  auto [t, tdot] = At(Sin(), 0, 0, 0);
  EXPECT_EQ(t, 0);
  EXPECT_EQ(tdot, 1);
  std::tie(t, tdot) = At(Sin(), 0, 0, 1.3);
  EXPECT_NEAR(tdot, 0.5220458, 1e-7);
}

TEST(ElementwiseReferenceTest, Exp) {
  CheckRow({"Exp()",
            Exp(),
            {3.66929666762, 3.66929666762, 4.05519996684, 1.41906754859, 1.41906754859, 54.5981500331}});
  CheckRow({"Exp(0.25,-0.5)",
            Exp(0.25, -0.5),
            {0.0865019153738, 0.0216254788434, 0.0886917217871, 0.0682151415277, 0.0170537853819,
             0.169892614279}});
  auto [t, tdot] = At(Exp(), 0, 0, 1.3);
  EXPECT_NEAR(t, 1.9155408, 1e-7);
  EXPECT_NEAR(tdot, 1.9155408, 1e-7);
}

TEST(ElementwiseReferenceTest, Gaussian) {
  CheckRow(
      {"Gaussian()",
       Gaussian(),
       {0.347524023428, 0.0503658004969, 0.512989176043, 0.330409300228, -0.158711890939, 0.333333333333}});
  CheckRow({"Gaussian(0.25,-0.5)",
            Gaussian(0.25, -0.5),
            {0.031977781881, 0.00251134412678, 0.040343576523, 0.0294955736364, -0.00722608708242,
             0.0279508497187}});
  auto [t, tdot] = At(Gaussian(), 0, 0, 0);
  EXPECT_EQ(t, 1);
  EXPECT_EQ(tdot, 0);
  std::tie(t, tdot) = At(Gaussian(), 0, 0, 1.3);
  EXPECT_NEAR(t, 0.5270463, 1e-7);
}

TEST(ElementwiseReferenceTest, Rbf) {
  CheckRow({"Rbf(1.0)", Rbf(1.0), {0.246596963942, 0.493193927883, 1, 0.00609674656552, 0.012193493131, 1}});
  CheckRow({"Rbf(0.25)", Rbf(0.25), {0.704688089719, 0.352344044859, 1, 0.279430968221, 0.139715484111, 1}});
  auto [t, tdot] = At(Rbf(), 0, 0, 0);
  EXPECT_EQ(t, 1);
  EXPECT_EQ(tdot, 2);
  std::tie(t, tdot) = At(Rbf(), 0, 0, 1.3);
  EXPECT_NEAR(t, 0.2725318, 1e-7);
  EXPECT_NEAR(tdot, 0.5450636, 1e-7);
}

TEST(ElementwiseReferenceTest, Gelu) {
  for (bool approximate : {false, true}) {  // `approximate` only changes the finite network.
    CheckRow(
        {"Gelu",
         Gelu(approximate),
         {0.156542690154, 0.305626661258, 0.28150377602, -0.0687291214797, 0.0843661383123, 0.92208287211}});
  }
  auto [t, tdot] = At(Gelu(), 0, 0, 0);
  EXPECT_EQ(t, 0);
  EXPECT_DOUBLE_EQ(tdot, 0.25);
  EXPECT_NEAR(AsElementwise(Gelu()).Phi(1.0), 0.841344746068543, 1e-14);
  EXPECT_NEAR(AsElementwise(Gelu(true)).Phi(1.0), 0.8411919906082768, 1e-14);
}

TEST(ElementwiseReferenceTest, Gabor) {
  CheckRow({"Gabor",
            Gabor(),
            {0.00915587934538, 0.034995704821, 0.079045007986, -0.0298468894162, 0.0765164982467,
             0.059803268595}});
  auto [t, tdot] = At(Gabor(), 0, 0, 0);
  EXPECT_EQ(t, 0);
  EXPECT_DOUBLE_EQ(tdot, 1);
  std::tie(t, tdot) = At(Gabor(), 0, 0, 1.3);
  EXPECT_NEAR(tdot, 0.1222171, 1e-7);
}

TEST(ElementwiseReferenceTest, Monomial) {
  const std::vector<std::array<double, 6>> v = {
      {1, 0, 1, 1, 0, 1},
      {0.3, 1, 0.7, -1.1, 1, 2},
      {1.09, 1.2, 1.47, 4.22, -4.4, 12},
      {2.619, 9.81, 5.145, -25.806, 37.98, 120},
      {13.5441, 41.904, 25.2105, 221.1144, -412.896, 1680},
      {70.93035, 338.6025, 158.82615, -2432.6412, 5527.86, 30240},
  };
  for (int n = 0; n <= 5; ++n) {
    Row r{"Monomial(" + std::to_string(n) + ")", Monomial(n), {}};
    std::copy(v[n].begin(), v[n].end(), r.v);
    CheckRow(r);
  }
}

TEST(ElementwiseReferenceTest, RectifiedMonomial) {
  const std::vector<std::array<double, 6>> v = {
      {0.300915982622, 0, 0.5, 0.097016824601, 0, 0.5},
      {0.23439572542, 0.300915982622, 0.35, 0.0155307243771, 0.097016824601, 1},
      {0.457707258629, 0.937582901681, 0.735, 0.00598853607016, 0.0621228975084, 6},
      {1.45537886732, 4.11936532766, 2.5725, 0.00371556114409, 0.0538968246314, 60},
      {6.43417519005, 23.2860618771, 12.60525, 0.00318930572304, 0.0594489783055, 840},
      {36.4668437524, 160.854379751, 79.413075, 0.00350077054211, 0.0797326430761, 15120},
  };
  for (int n = 0; n <= 5; ++n) {
    Row r{"RectifiedMonomial(" + std::to_string(n) + ")", RectifiedMonomial(n), {}};
    std::copy(v[n].begin(), v[n].end(), r.v);
    CheckRow(r);
    // Deliberate fix of upstream's NaN: correlation +-1 and zero variance give the exact limits.
    const ElementwiseLayer& l = AsElementwise(r.net);
    double q = 0.7, td;
    l.DiagMap(&q, 1, &td);
    auto [t1, d1] = At(r.net, 0.7, 0.7, 0.7);
    // sqrt(q11 q22 - q12^2) turns the rounding of 0.7 * 0.7 into an angle of ~1e-9.
    EXPECT_NEAR(t1, td, 1e-8 * td) << r.name;
    auto [tm, dm] = At(r.net, 0.7, -0.7, 0.7);
    EXPECT_NEAR(tm, 0, 1e-8) << r.name;
    EXPECT_TRUE(std::isfinite(d1) && std::isfinite(dm)) << r.name;
    auto [t0, d0] = At(r.net, 0, 0, 1.3);
    EXPECT_TRUE(std::isfinite(t0) && std::isfinite(d0)) << r.name;
    EXPECT_EQ(t0, n == 0 ? 0.5 : 0.0) << r.name;  // f(0) = [n == 0], E[f(v)] = 1/2 for n = 0.
    auto [t00, d00] = At(r.net, 0, 0, 0);
    EXPECT_EQ(t00, n == 0 ? 1.0 : 0.0) << r.name;
    EXPECT_EQ(d00, n == 1 ? 0.25 : 0.0) << r.name;  // Relu's convention (atan2(0, 0) = pi/2) for n = 1.
  }
}

TEST(ElementwiseReferenceTest, Polynomial) {
  const std::vector<std::pair<std::vector<double>, std::array<double, 6>>> cases = {
      {{}, {0, 0, 0, 0, 0, 0}},
      {{0}, {0, 0, 0, 0, 0, 0}},
      {{-2}, {4, 0, 4, 4, 0, 4}},
      {{0, 0}, {0, 0, 0, 0, 0, 0}},
      {{0, 1}, {0.3, 1, 0.7, -1.1, 1, 2}},
      {{1, 0}, {1, 0, 1, 1, 0, 1}},
      {{1, -1}, {1.3, 1, 1.7, -0.1, 1, 3}},
      {{-0.5, 1.2}, {0.682, 1.44, 1.258, -1.334, 1.44, 3.13}},
      {{1.3, 0, -1.2, -0.5}, {0.79435, 4.1805, 2.90905, -3.2087, 3.159, 42.73}},
      {{-0.1, 2.1, 0, 0, -1.2, -0.5, 0, 0},
       {29.0533915, 115.067385, 68.6549575, -209.531714, 716.04726, 9738.91}},
  };
  for (const auto& [coef, v] : cases) {
    Row r{"Polynomial(" + std::to_string(coef.size()) + " coefficients)", Polynomial(coef), {}};
    std::copy(v.begin(), v.end(), r.v);
    CheckRow(r);
    // Finite at zero variance (upstream: NaN from q12 / sqrt(q11 q22)); T(0, 0, 0) = f(0)^2.
    auto [t0, d0] = At(r.net, 0, 0, 0);
    EXPECT_DOUBLE_EQ(t0, coef.empty() ? 0.0 : coef[0] * coef[0]) << r.name;
    EXPECT_TRUE(std::isfinite(d0)) << r.name;
  }
  // Polynomial with a single 1 at position n is Monomial(n).
  for (int n = 0; n <= 5; ++n) {
    std::vector<double> c(n + 1, 0.0);
    c[n] = 1;
    auto [tp, dp] = At(Polynomial(c), 0.7, 0.3, 1.3);
    auto [tm, dm] = At(Monomial(n), 0.7, 0.3, 1.3);
    EXPECT_NEAR(tp, tm, 1e-12 * std::abs(tm)) << n;
    EXPECT_NEAR(dp, dm, 1e-12 * std::abs(dm) + 1e-15) << n;
  }
}

TEST(ElementwiseReferenceTest, Hermite) {
  const double want[5][3] = {
      {1, 0, 1}, {0.37, 1, 1}, {0.1369, 0.74, 1}, {0.050653, 0.4107, 1}, {0.01874161, 0.202612, 1}};
  for (int n = 0; n <= 4; ++n) {
    auto [t, tdot] = At(Hermite(n), 1, 0.37, 1);
    ExpectClose(t, want[n][0], "Hermite T");
    ExpectClose(tdot, want[n][1], "Hermite Tdot");
    double q = 1, td;
    AsElementwise(Hermite(n)).DiagMap(&q, 1, &td);
    ExpectClose(td, want[n][2], "Hermite T_diag");
  }
  // He_3(x) / sqrt(3!) = (x^3 - 3x) / sqrt(6).
  EXPECT_NEAR(AsElementwise(Hermite(3)).Phi(1.7), (1.7 * 1.7 * 1.7 - 3 * 1.7) / std::sqrt(6.0), 1e-14);
}

TEST(ElementwiseReferenceTest, Sign) {
  CheckRow({"Sign", Sign(), {0.20366393049, 0, 1, -0.611932701596, 0, 1}});
  auto [t, tdot] = At(Sign(), 0, 0, 0);
  EXPECT_EQ(t, 0);
  EXPECT_EQ(tdot, 0);
  double q = 0, td;
  AsElementwise(Sign()).DiagMap(&q, 1, &td);
  EXPECT_EQ(td, 0);
  // Deliberate fix: covariances between different positions use (2/pi) arcsin(rho), not [c != 0].
  std::tie(t, tdot) = At(Sign(), 1, 0.5, 1);
  EXPECT_NEAR(t, 2 / M_PI * std::asin(0.5), 1e-14);
}

TEST(ElementwiseReferenceTest, ExpNormalized) {
  const Net plain = ExpNormalized(), clipped = ExpNormalized(2, 0, true);
  const ElementwiseLayer& l = AsElementwise(plain);
  const ElementwiseLayer& lc = AsElementwise(clipped);
  const double q11[] = {0.7, 2.0}, q12[] = {0.3, -1.1}, q22[] = {1.3, 0.9};
  const double want[2][6] = {
      {0.480624062784, 0.50383091718, 0.7, 0.217403923018, 0.162043316814, 2},
      {1.7892840402, 3.75135865586, 5.17233926925, 0.260307969449, 0.388044209849, 14.7781121979}};
  for (int k = 0; k < 2; ++k) {
    const ElementwiseLayer& e = k == 0 ? l : lc;
    double t[2], tdot[2], td[2];
    e.PairMap(q11, q12, q22, 2, t, tdot);
    e.DiagMap(q11, 2, td);
    for (int p = 0; p < 2; ++p) {
      ExpectClose(t[p], want[k][3 * p], "ExpNormalized T");
      ExpectClose(tdot[p], want[k][3 * p + 1], "ExpNormalized Tdot");
      ExpectClose(td[p], want[k][3 * p + 2], "ExpNormalized T_diag");
    }
  }
  auto [t, tdot] = At(ExpNormalized(), 0, 0, 0);
  EXPECT_NEAR(t, 1e-15 * std::exp(-1), 1e-20);
  EXPECT_NEAR(tdot, std::exp(-1), 1e-15);
  // No finite network.
  Net net = serial(Dense(4), ExpNormalized());
  auto init = net.init_fn(RngKey(1), {2, 3});
  ASSERT_TRUE(init.ok()) << init.status();
  auto y = net.apply_fn(init->second, Array({2, 3}, 1.0));
  EXPECT_EQ(y.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(std::string(y.status().message()).find("ExpNormalized"), std::string::npos);
}

TEST(ElementwiseReferenceTest, InvalidArguments) {
  const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
  for (const Net& n : {Sin(nan), Cos(1, inf), Exp(1, nan), Gaussian(inf), Rbf(nan), Rbf(-1), Monomial(-1),
                       Monomial(6), RectifiedMonomial(-2), Hermite(-1), Polynomial({1, nan}),
                       ExpNormalized(inf), ExpNormalized(1, nan)}) {
    EXPECT_EQ(n.status().code(), absl::StatusCode::kInvalidArgument) << n.status();
  }
  EXPECT_NE(std::string(Monomial(6).status().message()).find("Monomial.degree"), std::string::npos);
  EXPECT_NE(std::string(Sin(nan).status().message()).find("Sin.a"), std::string::npos);
  EXPECT_TRUE(Polynomial({}).status().ok());
}

}  // namespace
}  // namespace nt

namespace nt {
namespace {

using namespace nt::stax;  // NOLINT

std::vector<std::pair<std::string, Net>> AllLayers() {
  return {{"Sin", Sin(1.1, 0.9, 0.4)},
          {"Cos", Cos(0.8, 1.3, -0.3)},
          {"Exp", Exp(0.7, 0.6)},
          {"Gaussian", Gaussian(1.5, -0.7)},
          {"Rbf", Rbf(0.5)},
          {"Gelu", Gelu()},
          {"Gabor", Gabor()},
          {"Monomial0", Monomial(0)},
          {"Monomial3", Monomial(3)},
          {"RectifiedMonomial0", RectifiedMonomial(0)},
          {"RectifiedMonomial3", RectifiedMonomial(3)},
          {"Polynomial", Polynomial({0.2, 1.0, -0.3, 0.1})},
          {"Hermite0", Hermite(0)},
          {"Hermite3", Hermite(3)},
          {"Sign", Sign()},
          {"ExpNormalized", ExpNormalized(1.3, -0.5)},
          {"ExpNormalizedClip", ExpNormalized(0.7, 0.2, true)}};
}

// Tdot = dT/dq12 (Price's theorem) wherever upstream does not zero the ntk of a discontinuous f.
TEST(ElementwiseConsistencyTest, TdotIsTheDerivativeOfT) {
  for (const auto& [name, net] : AllLayers()) {
    if (name == "Sign" || name == "RectifiedMonomial0") continue;
    const auto* l = dynamic_cast<const ElementwiseLayer*>(net.layer().get());
    ASSERT_NE(l, nullptr) << name;
    for (auto [q11, q12, q22] : {std::array<double, 3>{0.7, 0.3, 1.3}, {2.0, -1.1, 0.9}, {0.4, 0.05, 0.5}}) {
      const double h = 1e-5;
      double qs[3] = {q12 - h, q12, q12 + h}, a[3] = {q11, q11, q11}, b[3] = {q22, q22, q22}, t[3], tdot[3];
      l->PairMap(a, qs, b, 3, t, tdot);
      EXPECT_NEAR(tdot[1], (t[2] - t[0]) / (2 * h), 1e-6 * std::max(1.0, std::abs(tdot[1])))
          << name << " at " << q11 << ", " << q12 << ", " << q22;
    }
  }
}

// The general map on a variance (q11 = q12 = q22 = q, used for full-layout covariances) agrees with
// T_diag (used when both batch and space are diagonal).
TEST(ElementwiseConsistencyTest, PairMapOnVariancesIsTDiag) {
  for (const auto& [name, net] : AllLayers()) {
    const auto* l = dynamic_cast<const ElementwiseLayer*>(net.layer().get());
    ASSERT_NE(l, nullptr) << name;
    const double q[] = {0.0, 0.3, 1.7};
    double t[3], td[3];
    l->PairMap(q, q, q, 3, t, nullptr);
    l->DiagMap(q, 3, td);
    for (int i = 0; i < 3; ++i) {
      if (name.rfind("ExpNormalized", 0) == 0 && q[i] == 0) continue;  // 1e-15-scale values either way.
      EXPECT_NEAR(t[i], td[i], 1e-7 * std::max(1.0, std::abs(td[i]))) << name << " at q = " << q[i];
    }
  }
}

// Every layout gives the same numbers: full batch and spatial covariances against the diagonal ones.
TEST(ElementwiseConsistencyTest, LayoutsAgree) {
  const Array x1 = RngKey(11).Normal({3, 4, 5}), x2 = RngKey(12).Normal({2, 4, 5});
  for (const auto& [name, layer] : AllLayers()) {
    Net net = serial(Dense(8, 1.1, 0.2), layer, Dense(8, 0.9, 0.1));
    KernelOptions full, diag;
    full.diagonal_batch = false;
    full.diagonal_spatial = false;
    diag.diagonal_batch = true;
    diag.diagonal_spatial = true;
    auto kf = net.kernel_fn(x1, &x2, {"nngp", "ntk", "cov1", "cov2"}, full);
    auto kd = net.kernel_fn(x1, &x2, {"nngp", "ntk", "cov1", "cov2"}, diag);
    ASSERT_TRUE(kf.ok()) << name << ": " << kf.status();
    ASSERT_TRUE(kd.ok()) << name << ": " << kd.status();
    const int64_t n1 = 3, n2 = 2, x = 4;
    for (const char* a : {"nngp", "ntk"}) {
      const Array &f = *kf->Find(a), &d = *kd->Find(a);
      ASSERT_EQ(d.shape(), (Shape{n1, n2, x})) << name;
      for (int64_t i = 0; i < n1 * n2; ++i) {
        for (int64_t p = 0; p < x; ++p) {
          const double want = d[i * x + p], got = f[(i * x + p) * x + p];
          EXPECT_NEAR(got, want, 1e-9 * std::max(1.0, std::abs(want))) << name << " " << a;
        }
      }
    }
    for (const char* a : {"cov1", "cov2"}) {
      const int64_t n = a[3] == '1' ? n1 : n2;
      const Array &f = *kf->Find(a), &d = *kd->Find(a);
      ASSERT_EQ(d.shape(), (Shape{n, x})) << name;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t p = 0; p < x; ++p) {
          const double want = d[i * x + p], got = f[((i * n + i) * x + p) * x + p];
          EXPECT_NEAR(got, want, 1e-7 * std::max(1.0, std::abs(want))) << name << " " << a;
        }
      }
    }
  }
}

// Spatial kernels whose last axis is long enough for the run-wise map (9 >= 8 entries per run) agree
// entry by entry with the pair map of the input kernel's entries, in both spatial layouts.
TEST(ElementwiseConsistencyTest, SpatialKernelsAreTheEntrywiseMap) {
  const Array x1 = RngKey(21).Normal({3, 2, 9, 4}), x2 = RngKey(22).Normal({2, 2, 9, 4});
  const int64_t n1 = 3, n2 = 2, p = 18;
  for (bool diagonal_spatial : {false, true}) {
    KernelOptions o;
    o.diagonal_batch = false;
    o.diagonal_spatial = diagonal_spatial;
    auto in = serial(Dense(8, 1.1, 0.2)).kernel_fn(x1, &x2, {"nngp", "ntk", "cov1", "cov2"}, o);
    ASSERT_TRUE(in.ok()) << in.status();
    const Array &q12 = *in->Find("nngp"), &ntk = *in->Find("ntk");
    const Array &c1 = *in->Find("cov1"), &c2 = *in->Find("cov2");
    const int64_t inner = diagonal_spatial ? p : p * p;
    // Variance of sample i (of n) at flat spatial position s, from a full-batch covariance array.
    auto var = [&](const Array& c, int64_t n, int64_t i, int64_t s) {
      if (diagonal_spatial) return c[(i * n + i) * inner + s];
      return c[(i * n + i) * inner + ((s / 9 * 2 + s / 9) * 9 + s % 9) * 9 + s % 9];
    };
    // Flat spatial positions (s1 * 9 + s2) of an entry's two members; the full layout's trailing axes
    // are (s1, s1', s2, s2') of sizes (2, 2, 9, 9).
    auto left = [&](int64_t s) { return diagonal_spatial ? s : s / 162 * 9 + s / 9 % 9; };
    auto right = [&](int64_t s) { return diagonal_spatial ? s : s / 81 % 2 * 9 + s % 9; };
    for (const auto& [name, layer] : AllLayers()) {
      const auto* l = dynamic_cast<const ElementwiseLayer*>(layer.layer().get());
      ASSERT_NE(l, nullptr) << name;
      auto out = serial(Dense(8, 1.1, 0.2), layer).kernel_fn(x1, &x2, {"nngp", "ntk", "cov1"}, o);
      ASSERT_TRUE(out.ok()) << name << ": " << out.status();
      const Array &t = *out->Find("nngp"), &tn = *out->Find("ntk"), &t1 = *out->Find("cov1");
      ASSERT_EQ(t.size(), n1 * n2 * inner) << name;
      for (int64_t e = 0; e < n1 * n2 * inner; ++e) {
        const int64_t i = e / (n2 * inner), j = e / inner % n2, s = e % inner;
        const double v1 = var(c1, n1, i, left(s)), v2 = var(c2, n2, j, right(s));
        double want, tdot;
        const double v12 = q12[e];
        l->PairMap(&v1, &v12, &v2, 1, &want, &tdot);
        EXPECT_NEAR(t[e], want, 1e-12 * std::max(1.0, std::abs(want))) << name << " nngp at " << e;
        EXPECT_NEAR(tn[e], ntk[e] * tdot, 1e-12 * std::max(1.0, std::abs(ntk[e] * tdot)))
            << name << " ntk at " << e;
      }
      // cov1 (full batch): the map of x1's covariance with itself.
      for (int64_t e = 0; e < n1 * n1 * inner; ++e) {
        const int64_t i = e / (n1 * inner), k = e / inner % n1, s = e % inner;
        const double v1 = var(c1, n1, i, left(s)), v2 = var(c1, n1, k, right(s));
        double want;
        const double v12 = c1[e];
        l->PairMap(&v1, &v12, &v2, 1, &want, nullptr);
        EXPECT_NEAR(t1[e], want, 1e-12 * std::max(1.0, std::abs(want))) << name << " cov1 at " << e;
      }
    }
  }
}

}  // namespace
}  // namespace nt

namespace nt {
namespace {

// E[erf(u)^2] and E[erf(u) erf(v)] at large variances (the attention layer drives Erf's inputs to ~600 in
// the golden case conv1d_attention_identity_posemb_sum) against a fine trapezoid rule over the standard
// normal: erf saturates into a step there, which low-order Gauss-Hermite rules see as exactly 1.
TEST(ElementwiseReferenceTest, ErfAtSaturatingVariancesMatchesDenseQuadrature) {
  const stax::Net erf = stax::Erf();  // Keeps the layer alive: AsElementwise returns a reference into it.
  const ElementwiseLayer& l = AsElementwise(erf);
  for (double var : {1.0, 100.0, 617.89310053, 1e4}) {
    const double s = std::sqrt(var);
    // E[erf(s z)^2], z ~ N(0, 1): 4e5 trapezoid steps over [-12, 12] resolve the step of width ~1/s.
    const int steps = 400000;
    const double h = 24.0 / steps;
    double want = 0;
    for (int i = 0; i <= steps; ++i) {
      const double z = -12.0 + i * h;
      const double w = (i == 0 || i == steps) ? 0.5 : 1.0;
      want += w * h * std::pow(std::erf(s * z), 2) * std::exp(-0.5 * z * z) / std::sqrt(2 * M_PI);
    }
    double t;
    l.DiagMap(&var, 1, &t);
    EXPECT_NEAR(t, want, 1e-9) << "Var(u) = " << var;
    EXPECT_LT(t, 1.0) << "|erf| < 1, so E[erf(u)^2] < 1";
  }
}

}  // namespace
}  // namespace nt
