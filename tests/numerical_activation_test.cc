// Gauss-Hermite quadrature activations (core/numerical_activation.h): the rule itself, agreement with the
// closed-form layers, edge cases, and the accuracy of Tanh / Softplus / Swish at their default degree.
#include "core/numerical_activation.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/expression.h"
#include "core/stax.h"
#include "gtest/gtest.h"
#include "server/layer_builder.h"

namespace nt {
namespace {

using namespace nt::stax;  // NOLINT: reads like upstream's examples.

const ElementwiseLayer& AsElementwise(const Net& net) {
  EXPECT_TRUE(net.status().ok()) << net.status();
  const auto* e = dynamic_cast<const ElementwiseLayer*>(net.layer().get());
  EXPECT_NE(e, nullptr);
  return *e;
}

struct Maps {
  double t, tdot, tdiag;
};

Maps At(const ElementwiseLayer& l, double q11, double q12, double q22) {
  Maps m;
  l.PairMap(&q11, &q12, &q22, 1, &m.t, &m.tdot);
  l.DiagMap(&q11, 1, &m.tdiag);
  return m;
}

std::shared_ptr<NumericalActivationLayer> Numerical(NumericalActivationLayer::ScalarFn f,
                                                    NumericalActivationLayer::ScalarFn df, int deg) {
  return std::make_shared<NumericalActivationLayer>("ElementwiseNumerical", std::move(f), std::move(df), deg);
}

// ---------------------------------------------------------------------------------------------------
// The rule.

TEST(GaussHermiteTest, SmallRulesAreTheKnownOnes) {
  std::vector<double> x, w;
  GaussHermite(1, &x, &w);
  ASSERT_EQ(x.size(), 1u);
  EXPECT_EQ(x[0], 0.0);
  EXPECT_NEAR(w[0], std::sqrt(M_PI), 1e-15);
  GaussHermite(2, &x, &w);
  EXPECT_NEAR(x[0], -M_SQRT1_2, 1e-15);
  EXPECT_NEAR(x[1], M_SQRT1_2, 1e-15);
  EXPECT_NEAR(w[0], std::sqrt(M_PI) / 2, 1e-15);
  GaussHermite(3, &x, &w);
  EXPECT_NEAR(x[0], -std::sqrt(1.5), 1e-15);
  EXPECT_EQ(x[1], 0.0);
  EXPECT_NEAR(x[2], std::sqrt(1.5), 1e-15);
  EXPECT_NEAR(w[0], std::sqrt(M_PI) / 6, 1e-15);
  EXPECT_NEAR(w[1], 2 * std::sqrt(M_PI) / 3, 1e-15);
}

// sum_k w_k x_k^j = integral x^j exp(-x^2) = Gamma((j + 1) / 2) for even j, 0 for odd j, for every
// j <= 2 deg - 1 (and not beyond: the rule is not exact at 2 deg).
TEST(GaussHermiteTest, MonomialsUpToTwiceTheDegreeMinusOneAreExact) {
  for (int deg = 1; deg <= 40; ++deg) {
    std::vector<double> x, w;
    GaussHermite(deg, &x, &w);
    ASSERT_EQ(static_cast<int>(x.size()), deg);
    EXPECT_TRUE(std::is_sorted(x.begin(), x.end()));
    for (int j = 0; j <= 2 * deg; ++j) {
      double sum = 0, abs_sum = 0;
      for (int k = 0; k < deg; ++k) {
        sum += w[k] * std::pow(x[k], j);
        abs_sum += std::abs(w[k] * std::pow(x[k], j));
      }
      const double exact = j % 2 ? 0.0 : std::tgamma((j + 1) / 2.0);
      if (j <= 2 * deg - 1) {
        EXPECT_NEAR(sum, exact, 1e-13 * abs_sum) << "deg " << deg << " j " << j;
      } else if (deg <= 20) {
        EXPECT_GT(std::abs(sum - exact), 1e-9 * exact) << "deg " << deg << " j " << j;
      }
    }
  }
}

// Exactness on the whole polynomial space for large rules: the orthonormal Hermite polynomials
// p_0..p_{deg-1} are orthonormal under the rule (products have degree <= 2 deg - 2, and p_deg vanishes at
// the nodes, so degree 2 deg - 1 is covered too).
TEST(GaussHermiteTest, HermitePolynomialsAreOrthonormalUnderLargeRules) {
  for (int deg : {50, 64, 128, 256, 512}) {
    std::vector<double> x, w;
    GaussHermite(deg, &x, &w);
    double wsum = 0;
    for (double v : w) {
      EXPECT_GE(v, 0.0);
      wsum += v;
    }
    EXPECT_NEAR(wsum, std::sqrt(M_PI), 1e-13) << deg;
    for (int k = 1; k < deg; ++k) EXPECT_GT(x[k], x[k - 1]) << deg;
    if (deg > 256) continue;  // The Gram matrix below is deg^3 work.
    // p[j][k] = p_j(x_k) scaled by sqrt(w_k).
    std::vector<std::vector<double>> p(deg, std::vector<double>(deg));
    for (int k = 0; k < deg; ++k) {
      double p1 = std::pow(M_PI, -0.25), p2 = 0;
      for (int j = 0; j < deg; ++j) {
        p[j][k] = p1 * std::sqrt(w[k]);
        const double p3 = p2;
        p2 = p1;
        p1 = x[k] * std::sqrt(2.0 / (j + 1)) * p2 - std::sqrt(static_cast<double>(j) / (j + 1)) * p3;
      }
    }
    double worst = 0;
    for (int i = 0; i < deg; ++i) {
      for (int j = 0; j <= i; ++j) {
        double s = 0;
        for (int k = 0; k < deg; ++k) s += p[i][k] * p[j][k];
        worst = std::max(worst, std::abs(s - (i == j ? 1.0 : 0.0)));
      }
    }
    EXPECT_LT(worst, 1e-11) << "deg " << deg;
  }
}

// ---------------------------------------------------------------------------------------------------
// Against closed forms.

const std::vector<std::array<double, 3>>& Points() {
  static const std::vector<std::array<double, 3>> pts = {
      {0.7, 0.3, 1.3}, {2.0, -1.1, 0.9},  {1.0, 0.4, 1.2}, {4.0, 3.9, 4.0}, {0.5, -0.5, 0.5},
      {3.0, 2.0, 4.0}, {4.0, -0.85, 0.2}, {0.1, 0.0, 4.0}, {1.0, 1.0, 1.0}, {2.5, 0.7, 3.1}};
  return pts;
}

void ExpectMatchesClosedForm(const ElementwiseLayer& quad, const ElementwiseLayer& exact, double tol,
                             const std::string& what) {
  for (const auto& [q11, q12, q22] : Points()) {
    const Maps a = At(quad, q11, q12, q22), b = At(exact, q11, q12, q22);
    const std::string at =
        what + " at (" + std::to_string(q11) + ", " + std::to_string(q12) + ", " + std::to_string(q22) + ")";
    EXPECT_NEAR(a.t, b.t, tol * std::max(1.0, std::abs(b.t))) << at << " T";
    EXPECT_NEAR(a.tdot, b.tdot, tol * std::max(1.0, std::abs(b.tdot))) << at << " Tdot";
    EXPECT_NEAR(a.tdiag, b.tdiag, tol * std::max(1.0, std::abs(b.tdiag))) << at << " T_diag";
  }
}

// Polynomial phi are integrated exactly once 2 deg - 1 >= 2 * (degree of phi).
TEST(NumericalActivationTest, MonomialsAreExact) {
  ExpectMatchesClosedForm(*Numerical([](double x) { return x * x; }, [](double x) { return 2 * x; }, 3),
                          AsElementwise(Monomial(2)), 1e-13, "x^2, deg 3");
  ExpectMatchesClosedForm(
      *Numerical([](double x) { return x * x * x; }, [](double x) { return 3 * x * x; }, 4),
      AsElementwise(Monomial(3)), 1e-13, "x^3, deg 4");
  ExpectMatchesClosedForm(*Numerical([](double x) { return 1.3 - 1.2 * x * x - 0.5 * x * x * x; },
                                     [](double x) { return -2.4 * x - 1.5 * x * x; }, 4),
                          AsElementwise(Polynomial({1.3, 0, -1.2, -0.5})), 1e-13, "cubic, deg 4");
}

TEST(NumericalActivationTest, ErfMatchesItsClosedForm) {
  const auto erf = Numerical([](double x) { return std::erf(x); },
                             [](double x) { return 2 / std::sqrt(M_PI) * std::exp(-x * x); }, 200);
  ExpectMatchesClosedForm(*erf, AsElementwise(Erf()), 1e-10, "erf, deg 200");
}

TEST(NumericalActivationTest, SinAndCosMatchTheirClosedForms) {
  ExpectMatchesClosedForm(
      *Numerical([](double x) { return std::sin(x); }, [](double x) { return std::cos(x); }, 64),
      AsElementwise(Sin()), 1e-12, "sin, deg 64");
}

// The spec's deg = 25 values (section 5), with its change of variables (conditioned on u).
TEST(NumericalActivationTest, SpecGoldenValuesAtDegree25) {
  const auto gelu =
      Numerical([](double x) { return 0.5 * x * (1 + std::erf(x * M_SQRT1_2)); },
                [](double x) {
                  return 0.5 * (1 + std::erf(x * M_SQRT1_2)) + x * std::exp(-x * x / 2) / std::sqrt(2 * M_PI);
                },
                25);
  const auto cos = Numerical([](double x) { return std::cos(x); }, [](double x) { return -std::sin(x); }, 25);
  auto check = [](const ElementwiseLayer& l, double q11, double q12, double q22, Maps want,
                  const std::string& what) {
    const Maps got = At(l, q11, q12, q22);
    EXPECT_NEAR(got.t, want.t, 1e-11 * std::abs(want.t)) << what;
    EXPECT_NEAR(got.tdot, want.tdot, 1e-11 * std::abs(want.tdot)) << what;
    EXPECT_NEAR(got.tdiag, want.tdiag, 1e-11 * std::abs(want.tdiag)) << what;
  };
  check(*gelu, 0.7, 0.3, 1.3, {0.156542690154, 0.305626661264, 0.281503776059}, "gelu 1");
  check(*gelu, 2, -1.1, 0.9, {-0.0687290586764, 0.0843666095948, 0.922089144565}, "gelu 2");
  check(*cos, 0.7, 0.3, 1.3, {0.384558548413, 0.112026755379, 0.623298481971}, "cos 1");
  check(*cos, 2, -1.1, 0.9, {0.39138487786, -0.313303211859, 0.509157819444}, "cos 2");
}

// ---------------------------------------------------------------------------------------------------
// Edge cases.

TEST(NumericalActivationTest, ZeroVariancesAndFullCorrelationAreFinite) {
  for (const Net& net : {Tanh(), Softplus(), Swish()}) {
    const ElementwiseLayer& l = AsElementwise(net);
    const std::string name = net.layer()->name();
    // q11 = 0: u = 0, so T = phi(0) E[phi(v)] and Tdot = phi'(0) E[phi'(v)].
    const Maps z = At(l, 0, 0, 0);
    EXPECT_NEAR(z.t, l.Phi(0) * l.Phi(0), 1e-15) << name;
    EXPECT_NEAR(z.tdiag, l.Phi(0) * l.Phi(0), 1e-15) << name;
    EXPECT_TRUE(std::isfinite(z.tdot)) << name;
    const Maps h = At(l, 0, 0, 1.3);
    const Maps one = At(l, 1.3, 0, 1.3);  // Independent: T = E[phi(v)]^2.
    // E[phi(v)] = sqrt(T(1.3, 0, 1.3)) up to sign: 0 for Tanh, positive for Softplus and Swish.
    EXPECT_NEAR(h.t, l.Phi(0) * std::sqrt(std::max(one.t, 0.0)), 1e-12) << name;
    EXPECT_TRUE(std::isfinite(h.t) && std::isfinite(h.tdot)) << name;
    // q22 = 0, and a stray q12 with a zero variance.
    for (const auto& [a, b, c] : std::vector<std::array<double, 3>>{
             {1.3, 0, 0}, {0, 0.2, 1.0}, {1.0, 0.2, 0}, {-1e-18, 0, 1.0}, {1.0, 1.0 + 1e-15, 1.0}}) {
      const Maps m = At(l, a, b, c);
      EXPECT_TRUE(std::isfinite(m.t) && std::isfinite(m.tdot) && std::isfinite(m.tdiag))
          << name << " at " << a << ", " << b << ", " << c;
    }
    // Correlation +1 (also beyond, by rounding) is the diagonal map; -1 is E[phi(u) phi(-u)].
    for (double q : {0.3, 1.0, 2.0}) {
      EXPECT_NEAR(At(l, q, q, q).t, At(l, q, q, q).tdiag, 1e-13 * At(l, q, q, q).tdiag) << name;
      EXPECT_NEAR(At(l, q, q * (1 + 1e-14), q).t, At(l, q, q, q).tdiag, 1e-12 * At(l, q, q, q).tdiag) << name;
      EXPECT_TRUE(std::isfinite(At(l, q, -q, q).t)) << name;
      // Unequal variances at correlation 1: v = sqrt(q22 / q11) u exactly.
      const Maps m = At(l, q, std::sqrt(q * 2 * q), 2 * q);
      EXPECT_TRUE(std::isfinite(m.t) && std::isfinite(m.tdot)) << name;
    }
  }
  // Tanh is odd: at q11 = 0 both maps vanish.
  const Maps t = At(AsElementwise(Tanh()), 0, 0, 1.3);
  EXPECT_EQ(t.t, 0.0);
}

TEST(NumericalActivationTest, OddFunctionsAreAntisymmetricInQ12) {
  const Net tanh = Tanh();
  const ElementwiseLayer& l = AsElementwise(tanh);
  const Maps p = At(l, 1.2, 0.5, 0.8), m = At(l, 1.2, -0.5, 0.8);
  EXPECT_NEAR(p.t, -m.t, 1e-15);
  EXPECT_NEAR(p.tdot, m.tdot, 1e-15);
}

// Price's theorem: dT/dq12 = Tdot.
TEST(NumericalActivationTest, TdotIsTheDerivativeOfT) {
  // At degree 256 the quadrature errors (below 1e-10 here) are below the finite difference's.
  for (const Net& net : {Tanh(256), Softplus(256), Swish(256)}) {
    const ElementwiseLayer& l = AsElementwise(net);
    for (const auto& [q11, q12, q22] :
         std::vector<std::array<double, 3>>{{0.7, 0.3, 1.3}, {2.0, -1.1, 0.9}}) {
      const double h = 1e-5;
      const double fd = (At(l, q11, q12 + h, q22).t - At(l, q11, q12 - h, q22).t) / (2 * h);
      EXPECT_NEAR(At(l, q11, q12, q22).tdot, fd, 1e-7) << net.layer()->name();
    }
  }
}

TEST(NumericalActivationTest, DegreeIsValidated) {
  for (int deg : {0, -3, kMaxQuadratureDegree + 1}) {
    for (const Net& net : {Tanh(deg), Softplus(deg), Swish(deg)}) {
      EXPECT_EQ(net.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(net.status().message().find(net.layer()->name() + ".deg"), std::string::npos) << net.status();
    }
  }
  EXPECT_TRUE(Tanh(1).status().ok());
  EXPECT_TRUE(Swish(kMaxQuadratureDegree).status().ok());
}

// ---------------------------------------------------------------------------------------------------
// apply_fn.

TEST(NumericalActivationTest, FiniteNetworkActivations) {
  const Net tanh_net = Tanh(), softplus_net = Softplus(), swish_net = Swish();
  const ElementwiseLayer& tanh = AsElementwise(tanh_net);
  const ElementwiseLayer& softplus = AsElementwise(softplus_net);
  const ElementwiseLayer& swish = AsElementwise(swish_net);
  for (double x : {-30.0, -2.5, -0.3, 0.0, 0.4, 3.0, 25.0}) {
    EXPECT_DOUBLE_EQ(tanh.Phi(x), std::tanh(x));
    EXPECT_NEAR(softplus.Phi(x), std::log1p(std::exp(x)), 1e-15 * std::max(1.0, std::abs(x)));
    EXPECT_NEAR(swish.Phi(x), x / (1 + std::exp(-x)), 1e-15 * std::max(1.0, std::abs(x)));
  }
  // Stable far out.
  EXPECT_EQ(softplus.Phi(1000), 1000);
  EXPECT_EQ(softplus.Phi(-1000), 0);
  EXPECT_EQ(swish.Phi(1000), 1000);
  EXPECT_EQ(swish.Phi(-1000), 0);
  EXPECT_DOUBLE_EQ(softplus.Phi(-50), std::exp(-50));
  const Array x = RngKey(3).Normal({2, 3});
  const Net net = serial(Dense(4), Swish());
  auto y = net.apply_fn(net.init_fn(RngKey(1), x.shape())->second, x);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{2, 4}));
}

TEST(NumericalActivationTest, KernelFnThroughANetwork) {
  const Array x1 = RngKey(1).Normal({3, 4}), x2 = RngKey(2).Normal({2, 4});
  for (const Net& act : {Tanh(), Softplus(), Swish()}) {
    const Net net = serial(Dense(8, 1.5, 0.1), act, Dense(8));
    auto k = net.kernel_fn(x1, &x2, {"nngp", "ntk"});
    ASSERT_TRUE(k.ok()) << k.status();
    for (double v : k->Find("nngp")->vec()) EXPECT_TRUE(std::isfinite(v));
    for (double v : k->Find("ntk")->vec()) EXPECT_TRUE(std::isfinite(v));
    // Activations need a Gaussian input.
    EXPECT_FALSE(act.kernel_fn(x1, &x2, {"nngp"}).ok());
  }
}

// The server's builder: deg optional (the default degree), validated with the layer path.
TEST(NumericalActivationTest, ServerBuilder) {
  for (const char* which : {"Tanh", "Softplus", "Swish"}) {
    const std::string name = which;
    auto layer_with = [&](std::optional<int64_t> deg) {
      nt::v1::Layer l;
      if (name == "Tanh") {
        auto* m = l.mutable_tanh();
        if (deg) m->set_deg(*deg);
      } else if (name == "Softplus") {
        auto* m = l.mutable_softplus();
        if (deg) m->set_deg(*deg);
      } else {
        auto* m = l.mutable_swish();
        if (deg) m->set_deg(*deg);
      }
      return l;
    };
    auto def = server::BuildLayer(layer_with(std::nullopt));
    ASSERT_TRUE(def.ok()) << def.status();
    EXPECT_EQ((*def)->name(), name);
    const auto* n = dynamic_cast<const NumericalActivationLayer*>(def->get());
    ASSERT_NE(n, nullptr);
    EXPECT_EQ(n->deg(), kDefaultQuadratureDegree);
    auto d7 = server::BuildLayer(layer_with(7));
    ASSERT_TRUE(d7.ok()) << d7.status();
    EXPECT_EQ(dynamic_cast<const NumericalActivationLayer*>(d7->get())->deg(), 7);
    for (int64_t bad : {int64_t{0}, int64_t{-5}, int64_t{1} << 40}) {
      auto st = server::BuildLayer(layer_with(bad)).status();
      EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
      EXPECT_NE(st.message().find("architecture (" + name + ")"), std::string::npos) << st;
      EXPECT_NE(st.message().find(name + ".deg"), std::string::npos) << st;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Accuracy of the default degree (64) against degree 256, over variances q11, q22 in {0.1, 0.5, 1, 2, 4, 9}
// (up to a bound) and correlations {-1, -0.6, 0, 0.3, 0.9, 1}: the largest absolute error of T and T_diag,
// and of Tdot. Measured (this test prints them):
//
//   deg 64    | q <= 1          | q <= 4          | q <= 9
//   Tanh      | 3e-9 / 1e-7     | 9e-5 / 9e-4     | 2e-3 / 1e-2
//   Softplus  | 4e-15 / 2e-15   | 6e-11 / 7e-10   | 1e-7 / 7e-7
//   Swish     | 1e-15 / 2e-15   | 6e-9 / 6e-8     | 6e-6 / 3e-5
//
// tanh(sqrt(q) z) approaches a step as q grows (poles at +-i pi / (2 sqrt(q)) in z), which Gauss-Hermite
// resolves slowly: for Tanh with variances above ~1, ask for more nodes (deg 128: 7e-7 / 1.4e-5 at q <= 4;
// deg 256: 6e-10 / 3e-8 at q <= 4, 1e-6 / 2e-5 at q <= 9, against deg 512).
TEST(NumericalActivationTest, AccuracyOfDefaultDegree) {
  struct Case {
    std::string name;
    Net def, ref;
    double bound[3][2];  // {T, Tdot} for q <= 1, 4, 9: about 3x the measured errors.
  };
  const std::vector<Case> cases = {
      {"Tanh", Tanh(), Tanh(256), {{1e-8, 3e-7}, {3e-4, 3e-3}, {7e-3, 3e-2}}},
      {"Softplus", Softplus(), Softplus(256), {{1e-13, 1e-13}, {2e-10, 2e-9}, {4e-7, 2e-6}}},
      {"Swish", Swish(), Swish(256), {{1e-13, 1e-13}, {2e-8, 2e-7}, {2e-5, 1e-4}}}};
  EXPECT_EQ(kDefaultQuadratureDegree, 64);  // The table above is for 64.
  const double vars[] = {0.1, 0.5, 1.0, 2.0, 4.0, 9.0};
  const double rhos[] = {-1.0, -0.6, 0.0, 0.3, 0.9, 1.0};
  const double vmaxs[] = {1.0, 4.0, 9.0};
  for (const Case& c : cases) {
    const ElementwiseLayer& a = AsElementwise(c.def);
    const ElementwiseLayer& b = AsElementwise(c.ref);
    std::printf("%-9s deg %d vs 256:", c.name.c_str(), kDefaultQuadratureDegree);
    for (int r = 0; r < 3; ++r) {
      double et = 0, ed = 0;
      for (double q11 : vars) {
        for (double q22 : vars) {
          if (q11 > vmaxs[r] || q22 > vmaxs[r]) continue;
          for (double rho : rhos) {
            const double q12 = rho * std::sqrt(q11 * q22);
            const Maps x = At(a, q11, q12, q22), y = At(b, q11, q12, q22);
            et = std::max({et, std::abs(x.t - y.t), std::abs(x.tdiag - y.tdiag)});
            ed = std::max(ed, std::abs(x.tdot - y.tdot));
          }
        }
      }
      std::printf("  q<=%g: T %.1e Tdot %.1e", vmaxs[r], et, ed);
      EXPECT_LT(et, c.bound[r][0]) << c.name << " q <= " << vmaxs[r];
      EXPECT_LT(ed, c.bound[r][1]) << c.name << " q <= " << vmaxs[r];
    }
    std::printf("\n");
  }
}

// ---------------------------------------------------------------------------------------------------
// Text expressions: ElementwiseNumerical(fn, deg, df) and Elementwise(fn, nngp_fn, d_nngp_fn).

TEST(ExpressionLayersTest, ElementwiseNumericalMatchesTheSpecAtDegree25) {
  const Net with_df = ElementwiseNumerical("cos(x)", 25, "-sin(x)");
  const Net without_df = ElementwiseNumerical("cos(x)", 25);
  const ElementwiseLayer& a = AsElementwise(with_df);
  const ElementwiseLayer& b = AsElementwise(without_df);
  const Maps m1 = At(a, 0.7, 0.3, 1.3), m2 = At(a, 2, -1.1, 0.9);
  EXPECT_NEAR(m1.t, 0.384558548413, 1e-11);
  EXPECT_NEAR(m1.tdot, 0.112026755379, 1e-11);
  EXPECT_NEAR(m1.tdiag, 0.623298481971, 1e-11);
  EXPECT_NEAR(m2.t, 0.39138487786, 1e-11);
  EXPECT_NEAR(m2.tdot, -0.313303211859, 1e-11);
  EXPECT_NEAR(m2.tdiag, 0.509157819444, 1e-11);
  // df by finite differences of fn.
  EXPECT_NEAR(At(b, 0.7, 0.3, 1.3).tdot, m1.tdot, 1e-9);
  EXPECT_NEAR(At(b, 2, -1.1, 0.9).tdot, m2.tdot, 1e-9);
  EXPECT_EQ(At(b, 0.7, 0.3, 1.3).t, m1.t);
  EXPECT_DOUBLE_EQ(a.Phi(0.4), std::cos(0.4));
}

const char kErfDual[] = "2 / _pi * asin(2 * cov12 / sqrt((1 + 2 * var1) * (1 + 2 * var2)))";
const char kErfDualDerivative[] = "4 / _pi / sqrt((1 + 2 * var1) * (1 + 2 * var2) - 4 * cov12^2)";

TEST(ExpressionLayersTest, ElementwiseDualMatchesClosedForms) {
  const Net erf = Erf();
  const ElementwiseLayer& exact = AsElementwise(erf);
  const Net given = Elementwise(std::nullopt, kErfDual, kErfDualDerivative);
  const Net derived = Elementwise(std::nullopt, kErfDual);
  for (const auto& [q11, q12, q22] : Points()) {
    const Maps e = At(exact, q11, q12, q22);
    const Maps g = At(AsElementwise(given), q11, q12, q22), d = At(AsElementwise(derived), q11, q12, q22);
    // (muparser's asin and _pi differ from the closed form's arithmetic by ~1e-13.)
    EXPECT_NEAR(g.t, e.t, 1e-12);
    EXPECT_NEAR(g.tdot, e.tdot, 1e-12);
    EXPECT_NEAR(g.tdiag, e.tdiag, 1e-12);                                  // nngp_fn(q, q, q).
    EXPECT_NEAR(d.tdot, e.tdot, 1e-9) << q11 << " " << q12 << " " << q22;  // Finite differences.
  }
  const Net sin =
      Elementwise("sin(x)", "(exp(cov12 - (var1 + var2) / 2) - exp(-cov12 - (var1 + var2) / 2)) / 2");
  const Maps s = At(AsElementwise(sin), 0.7, 0.3, 1.3);
  EXPECT_NEAR(s.t, 0.112026755379, 1e-12);
  EXPECT_NEAR(s.tdot, 0.384558548413, 1e-9);
  EXPECT_NEAR(s.tdiag, 0.376701518029, 1e-12);
}

// Many kernel entries evaluated from TBB tasks at once (parser instances are per evaluation).
TEST(ExpressionLayersTest, ConcurrentKernelFnMatchesClosedForm) {
  const Array x1 = RngKey(11).Normal({300, 6}), x2 = RngKey(12).Normal({280, 6});
  const Net a = serial(Dense(8, 1.3, 0.2), Elementwise("tanh(x)", kErfDual, kErfDualDerivative), Dense(4));
  const Net b = serial(Dense(8, 1.3, 0.2), Erf(), Dense(4));
  auto ka = a.kernel_fn(x1, &x2, {"nngp", "ntk"});
  auto kb = b.kernel_fn(x1, &x2, {"nngp", "ntk"});
  ASSERT_TRUE(ka.ok() && kb.ok()) << ka.status() << kb.status();
  for (const char* name : {"nngp", "ntk"}) {
    const Array& p = *ka->Find(name);
    const Array& q = *kb->Find(name);
    ASSERT_EQ(p.size(), q.size());
    double worst = 0;
    for (int64_t i = 0; i < p.size(); ++i) worst = std::max(worst, std::abs(p[i] - q[i]));
    EXPECT_LT(worst, 1e-12) << name;
  }
  // ElementwiseNumerical under the same load.
  const Net c = serial(Dense(8, 1.3, 0.2), ElementwiseNumerical("sin(x)", 40, "cos(x)"), Dense(4));
  const Net d = serial(Dense(8, 1.3, 0.2), Sin(), Dense(4));
  auto kc = c.kernel_fn(x1, &x2, {"nngp", "ntk"});
  auto kd = d.kernel_fn(x1, &x2, {"nngp", "ntk"});
  ASSERT_TRUE(kc.ok() && kd.ok());
  for (const char* name : {"nngp", "ntk"}) {
    const Array& p = *kc->Find(name);
    const Array& q = *kd->Find(name);
    double worst = 0;
    for (int64_t i = 0; i < p.size(); ++i) worst = std::max(worst, std::abs(p[i] - q[i]));
    EXPECT_LT(worst, 1e-10) << name;
  }
}

TEST(ExpressionLayersTest, ApplyAndMissingFunctions) {
  const Array x = RngKey(3).Normal({2, 3});
  const Net act = Elementwise("x^2 + 1", "1");
  auto y = act.apply_fn(act.init_fn(RngKey(1), x.shape())->second, x);
  ASSERT_TRUE(y.ok()) << y.status();
  for (int64_t i = 0; i < y->size(); ++i) EXPECT_DOUBLE_EQ((*y)[i], x[i] * x[i] + 1);
  auto init = serial(Dense(4), act).init_fn(RngKey(1), x.shape());
  ASSERT_TRUE(init.ok());
  // No fn: apply_fn is UNIMPLEMENTED; no nngp_fn: kernel_fn is.
  const Net kernel_only = serial(Dense(4), Elementwise(std::nullopt, kErfDual));
  EXPECT_EQ(kernel_only.apply_fn(init->second, x).status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_TRUE(kernel_only.kernel_fn(x, nullptr, {"nngp"}).ok());
  const Net apply_only = serial(Dense(4), Elementwise("sin(x)"));
  EXPECT_EQ(apply_only.kernel_fn(x, nullptr, {"nngp"}).status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_TRUE(apply_only.apply_fn(init->second, x).ok());
}

TEST(ExpressionLayersTest, BadExpressionsNameTheLayerAndArgument) {
  auto expect = [](const Net& net, const std::string& where) {
    EXPECT_EQ(net.status().code(), absl::StatusCode::kInvalidArgument) << where << ": " << net.status();
    EXPECT_NE(net.status().message().find(where), std::string::npos) << net.status();
  };
  expect(Elementwise(), "Elementwise.fn");
  expect(Elementwise("sin(x", kErfDual), "Elementwise.fn");
  expect(Elementwise("sin(y)"), "Elementwise.fn");
  expect(Elementwise(std::nullopt, "cov12 + var3"), "Elementwise.nngp_fn");
  expect(Elementwise(std::nullopt, "x"), "Elementwise.nngp_fn");
  expect(Elementwise("x", kErfDual, "cov12 *"), "Elementwise.d_nngp_fn");
  expect(Elementwise("x", ""), "Elementwise.nngp_fn");
  expect(ElementwiseNumerical("tanh(z)", 10), "ElementwiseNumerical.fn");
  expect(ElementwiseNumerical("tanh(x)", 10, "1 - "), "ElementwiseNumerical.df");
  expect(ElementwiseNumerical("tanh(x)", 0), "ElementwiseNumerical.deg");
  expect(ElementwiseNumerical("x, x", 4), "ElementwiseNumerical.fn");
  expect(ElementwiseNumerical(std::string(5000, '1'), 4), "ElementwiseNumerical.fn");
}

TEST(ExpressionLayersTest, ServerBuilder) {
  nt::v1::Layer l;
  l.mutable_elementwise_numerical()->set_fn("cos(x)");
  EXPECT_EQ(server::BuildLayer(l).status().code(), absl::StatusCode::kInvalidArgument);  // deg missing.
  l.mutable_elementwise_numerical()->set_deg(25);
  auto built = server::BuildLayer(l);
  ASSERT_TRUE(built.ok()) << built.status();
  const auto* n = dynamic_cast<const NumericalActivationLayer*>(built->get());
  ASSERT_NE(n, nullptr);
  EXPECT_NEAR(At(*n, 0.7, 0.3, 1.3).t, 0.384558548413, 1e-11);
  l.mutable_elementwise_numerical()->set_df("-sin(q)");
  auto bad = server::BuildLayer(l).status();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("architecture (ElementwiseNumerical)"), std::string::npos) << bad;
  EXPECT_NE(bad.message().find("df"), std::string::npos) << bad;
  l.mutable_elementwise_numerical()->set_deg(0);
  EXPECT_NE(server::BuildLayer(l).status().message().find("deg"), std::string::npos);

  nt::v1::Layer e;
  e.mutable_elementwise();
  EXPECT_EQ(server::BuildLayer(e).status().code(), absl::StatusCode::kInvalidArgument);
  e.mutable_elementwise()->set_nngp_fn(kErfDual);
  auto ok = server::BuildLayer(e);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)->name(), "Elementwise");
  e.mutable_elementwise()->set_d_nngp_fn("cov12 +* 2");
  auto st = server::BuildLayer(e).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("Elementwise.d_nngp_fn"), std::string::npos) << st;
}

}  // namespace
}  // namespace nt
