// The analytic NNGP agrees with Monte Carlo estimates from our own finite networks (init_fn/apply_fn).
#include <cmath>

#include "core/attention.h"
#include "core/stax.h"
#include "gtest/gtest.h"

namespace nt {
namespace {

using namespace nt::stax;  // NOLINT: reads like upstream's examples.

// Empirical NNGP over `samples` networks: the mean over output channels of f(x1) f(x2), with the
// per-entry mean and standard error across networks.
struct McEstimate {
  Array mean, stderr_;
};

McEstimate MonteCarloNngp(const Net& net, const Array& x1, const Array& x2, int samples,
                          std::optional<double> mask_constant = std::nullopt) {
  const int64_t n1 = x1.dim(0), n2 = x2.dim(0);
  Array mean({n1, n2}), sq({n1, n2});
  std::vector<RngKey> keys = RngKey(7).Split(samples);
  for (int s = 0; s < samples; ++s) {
    auto init = net.init_fn(keys[s], x1.shape());
    EXPECT_TRUE(init.ok()) << init.status();
    // One dropout key per network, the same for x1 and x2 (a sample meets the same mask on both sides).
    const ApplyContext kwargs{nullptr, keys[s].FoldIn(1)};
    auto f1 = net.apply_fn(init->second, x1, mask_constant, kwargs);
    auto f2 = net.apply_fn(init->second, x2, mask_constant, kwargs);
    EXPECT_TRUE(f1.ok() && f2.ok());
    const int64_t w = f1->dim(1);
    for (int64_t i = 0; i < n1; ++i) {
      for (int64_t j = 0; j < n2; ++j) {
        double dot = 0;
        for (int64_t ch = 0; ch < w; ++ch) dot += (*f1)[i * w + ch] * (*f2)[j * w + ch];
        mean[i * n2 + j] += dot / w / samples;
        sq[i * n2 + j] += (dot / w) * (dot / w) / samples;
      }
    }
  }
  Array se(mean.shape());
  for (int64_t e = 0; e < se.size(); ++e) {
    se[e] = std::sqrt(std::max(sq[e] - mean[e] * mean[e], 0.0) / (samples - 1));
  }
  return {mean, se};
}

// Five standard errors plus the O(1/width) finite-width bias.
void ExpectAgrees(const McEstimate& mc, const Array& k, int64_t e, const std::string& what) {
  EXPECT_NEAR(mc.mean[e], k[e], 5 * mc.stderr_[e] + 0.03 * std::abs(k[e]) + 1e-3) << what << " entry " << e;
}

struct McCase {
  std::string name;
  Net net;
};

class MonteCarloTest : public ::testing::TestWithParam<int> {};

std::vector<McCase> Cases() {
  const int w = 1024;
  return {
      {"Relu", serial(Dense(w, 1.5, 0.2), Relu(), Dense(w, 1.2, 0.1))},
      {"ABRelu", serial(Dense(w, 1.3), ABRelu(-0.4, 1.2), Dense(w))},
      {"LeakyRelu", serial(Dense(w, 1.0, 0.3), LeakyRelu(0.1), Dense(w))},
      {"Abs", serial(Dense(w, 1.1), Abs(), Dense(w, 0.9, 0.5))},
      {"Erf", serial(Dense(w, 2.0, 0.5), Erf(1.2, 0.8, 0.3), Dense(w))},
      {"Sigmoid_like", serial(Dense(w, 1.5), Sigmoid_like(), Dense(w, 1.0, 0.1))},
      {"Residual", serial(Dense(w), FanOut(2), parallel(serial(Relu(), Dense(w, 1.3)), Identity()),
                          FanInSum(), Relu(), Dense(w))},
      {"LayerNorm", serial(Dense(w, 1.2, 0.1), LayerNorm(), Relu(), Dense(w, 1.0, 0.1))},
      // Independent branches multiplied; a Dense makes the product Gaussian again before the readout.
      // Channels of two branches side by side, weighted by their widths.
      {"FanInConcat",
       serial(FanOut(2), parallel(serial(Dense(w, 1.2, 0.2), Relu()), serial(Dense(w / 2), Erf())),
              FanInConcat(), Dense(w, 1.1, 0.1))},
      {"FanInProd",
       serial(FanOut(2), parallel(serial(Dense(w, 1.2, 0.2), Erf()), serial(Dense(w, 1.0), Relu())),
              FanInProd(), Dense(w, 1.1, 0.1))},
      {"Standard",
       serial(Dense(w, 1.3, 0.2, 0, -1, "standard"), Relu(), Dense(w, 1.0, 0.1, 0, -1, "standard"))},
      {"Sin", serial(Dense(w, 1.2, 0.3), Sin(1.1, 0.9, 0.4), Dense(w))},
      {"Cos", serial(Dense(w, 1.0, 0.2), Cos(0.8, 1.3, -0.3), Dense(w, 1.0, 0.2))},
      {"Exp", serial(Dense(w, 0.8, 0.2), Exp(0.7, 0.6), Dense(w))},
      {"Gaussian", serial(Dense(w, 1.2, 0.3), Gaussian(1.5, -0.7), Dense(w))},
      {"Rbf", serial(Dense(w, 1.0, 0.2), Rbf(0.5), Dense(w))},
      {"Gelu", serial(Dense(w, 1.5, 0.2), Gelu(), Dense(w))},
      // The kernel is the exact GELU's; the tanh form differs from it by ~1e-4 here.
      {"GeluApproximate", serial(Dense(w, 1.5, 0.2), Gelu(true), Dense(w))},
      {"Gabor", serial(Dense(w, 1.3, 0.2), Gabor(), Dense(w, 1.0, 0.1))},
      {"Monomial2", serial(Dense(w, 1.0, 0.2), Monomial(2), Dense(w))},
      {"Monomial3", serial(Dense(w, 0.8), Monomial(3), Dense(w))},
      {"RectifiedMonomial0", serial(Dense(w, 1.0, 0.3), RectifiedMonomial(0), Dense(w))},
      {"RectifiedMonomial2", serial(Dense(w, 1.1, 0.2), RectifiedMonomial(2), Dense(w))},
      {"Polynomial", serial(Dense(w, 1.0, 0.2), Polynomial({0.2, 1.0, -0.3, 0.1}), Dense(w))},
      {"Sign", serial(Dense(w, 1.0, 0.1), Sign(), Dense(w, 1.0, 0.2))},
      {"Tanh", serial(Dense(w, 1.5, 0.2), Tanh(), Dense(w, 1.0, 0.1))},
      {"Softplus", serial(Dense(w, 1.2, 0.3), Softplus(), Dense(w))},
      {"Swish", serial(Dense(w, 1.4, 0.2), Swish(), Dense(w, 1.0, 0.1))},
      // Text expressions: quadrature without df, and a closed-form dual (Sin's) without d_nngp_fn.
      {"ElementwiseNumerical",
       serial(Dense(w, 1.2, 0.3), ElementwiseNumerical("tanh(x) + 0.3 * x", 64), Dense(w))},
      {"Elementwise",
       serial(Dense(w, 1.2, 0.3),
              Elementwise("sin(x)", "(exp(cov12 - (var1 + var2) / 2) - exp(-cov12 - (var1 + var2) / 2)) / 2"),
              Dense(w))},
      // Hermite (unit variances only) has its own test below; ExpNormalized has no finite network.
  };
}

TEST_P(MonteCarloTest, AnalyticNngpMatchesFiniteNetworks) {
  const McCase c = Cases()[GetParam()];
  const Array x1 = RngKey(1).Normal({3, 5}), x2 = RngKey(2).Normal({2, 5});
  auto analytic = c.net.kernel_fn(x1, &x2, {"nngp"});
  ASSERT_TRUE(analytic.ok()) << analytic.status();
  const Array& k = *analytic->Find("nngp");
  const McEstimate mc = MonteCarloNngp(c.net, x1, x2, 32);
  for (int64_t e = 0; e < k.size(); ++e) ExpectAgrees(mc, k, e, c.name);
}

INSTANTIATE_TEST_SUITE_P(Layers, MonteCarloTest, ::testing::Range(0, static_cast<int>(Cases().size())),
                         [](const ::testing::TestParamInfo<int>& i) { return Cases()[i.param].name; });

// Hermite's kernel assumes unit variances (as upstream): inputs of squared norm d through Dense(W_std=1)
// without bias give exactly that.
TEST(MonteCarloHermiteTest, UnitVarianceInputsMatchFiniteNetworks) {
  auto unit = [](Array x) {
    const int64_t n = x.dim(0), d = x.dim(1);
    for (int64_t i = 0; i < n; ++i) {
      double sq = 0;
      for (int64_t c = 0; c < d; ++c) sq += x[i * d + c] * x[i * d + c];
      for (int64_t c = 0; c < d; ++c) x[i * d + c] *= std::sqrt(d / sq);
    }
    return x;
  };
  const Array x1 = unit(RngKey(1).Normal({3, 5})), x2 = unit(RngKey(2).Normal({2, 5}));
  for (int degree : {0, 1, 2, 3}) {
    Net net = serial(Dense(1024), Hermite(degree), Dense(1024, 1.0, 0.1));
    auto analytic = net.kernel_fn(x1, &x2, {"nngp"});
    ASSERT_TRUE(analytic.ok()) << analytic.status();
    const Array& k = *analytic->Find("nngp");
    const McEstimate mc = MonteCarloNngp(net, x1, x2, 32);
    for (int64_t e = 0; e < k.size(); ++e) ExpectAgrees(mc, k, e, "Hermite(" + std::to_string(degree) + ")");
  }
}

// Masking end to end: the analytic kernel with mask_constant agrees with finite networks whose masked
// inputs and outputs are handled as upstream's supports_masking / unmask_fn do.
TEST(MonteCarloMaskingTest, MaskedInputsMatchFiniteNetworks) {
  const double kMask = -3.0;
  Array x = RngKey(4).Normal({4, 6});
  for (int c = 0; c < 6; ++c) x[1 * 6 + c] = kMask;  // A fully masked sample.
  x[2 * 6 + 0] = x[2 * 6 + 5] = kMask;               // Two masked features.
  const int w = 1024;
  Net net = serial(Dense(w, 1.4, 0.1), Relu(), Dense(w, 1.2), FanOut(2),
                   parallel(serial(Erf(), Dense(w)), Identity()), FanInSum(), Relu(), Dense(w, 1.1, 0.2));
  KernelOptions o;
  o.mask_constant = kMask;
  auto analytic = net.kernel_fn(x, nullptr, {"nngp"}, o);
  ASSERT_TRUE(analytic.ok()) << analytic.status();
  const Array& k = *analytic->Find("nngp");
  const McEstimate mc = MonteCarloNngp(net, x, x, 32, kMask);
  for (int64_t e = 0; e < k.size(); ++e) {
    if (e / 4 == 1 || e % 4 == 1) {
      EXPECT_EQ(k[e], 0.0);  // The masked sample vanishes, exactly, on both sides.
      EXPECT_EQ(mc.mean[e], 0.0);
    } else {
      ExpectAgrees(mc, k, e, "masked");
    }
  }
}

// Dropout in train mode: a sample meets the same mask against itself (its variance scales by 1 / rate),
// independent masks against other samples (unchanged).
TEST(MonteCarloDropoutTest, TrainModeMatchesFiniteNetworksWithMasks) {
  const Array x = RngKey(6).Normal({4, 5});
  const int w = 1024;
  Net net = serial(Dense(w, 1.2, 0.1), Relu(), Dropout(0.6), Dense(w, 1.0, 0.1));
  auto analytic = net.kernel_fn(x, nullptr, {"nngp"});
  ASSERT_TRUE(analytic.ok()) << analytic.status();
  const Array& k = *analytic->Find("nngp");
  auto test_mode = serial(Dense(w, 1.2, 0.1), Relu(), Dropout(0.6, "test"), Dense(w, 1.0, 0.1)).kernel_fn(x);
  ASSERT_TRUE(test_mode.ok()) << test_mode.status();
  const McEstimate mc = MonteCarloNngp(net, x, x, 48);
  for (int64_t e = 0; e < k.size(); ++e) {
    ExpectAgrees(mc, k, e, "Dropout");
    const double test_k = (*test_mode->Find("nngp"))[e];
    if (e / 4 != e % 4) {
      EXPECT_NEAR(k[e], test_k, 1e-12);  // Other samples: unchanged.
    } else {
      EXPECT_GT(k[e], test_k * 1.2);  // A sample with itself: its dropped-out variance grows.
    }
  }
}

TEST(DropoutApplyTest, TrainModeKeepsRateOfEntriesScaledAndNeedsAKey) {
  const Net drop = Dropout(0.3);
  const Array x(Shape{200, 100}, 2.0);
  auto y = drop.apply_fn(Params{}, x, std::nullopt, ApplyContext{nullptr, RngKey(3)});
  ASSERT_TRUE(y.ok()) << y.status();
  double kept = 0;
  for (Real v : y->vec()) {
    EXPECT_TRUE(v == 0.0 || std::abs(v - 2.0 / 0.3) < 1e-12) << v;
    kept += v != 0.0;
  }
  EXPECT_NEAR(kept / x.size(), 0.3, 0.01);
  auto again = drop.apply_fn(Params{}, x, std::nullopt, ApplyContext{nullptr, RngKey(3)});
  EXPECT_EQ(again->vec(), y->vec());  // The same key, the same mask.
  EXPECT_EQ(drop.apply_fn(Params{}, x).status().code(), absl::StatusCode::kInvalidArgument);
  auto test = Dropout(0.3, "test").apply_fn(Params{}, x);
  ASSERT_TRUE(test.ok());
  EXPECT_EQ(test->vec(), x.vec());
}

TEST(RngTest, SameKeySameParametersOnEveryCall) {
  Net net = serial(Dense(16, 1.0, 0.1), Relu(), Dense(3));
  auto a = net.init_fn(RngKey(5), {2, 4});
  auto b = net.init_fn(RngKey(5), {2, 4});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->first, (Shape{2, 3}));
  EXPECT_EQ(a->second.children[0].arrays[0].vec(), b->second.children[0].arrays[0].vec());
  auto c = net.init_fn(RngKey(6), {2, 4});
  EXPECT_NE(a->second.children[0].arrays[0].vec(), c->second.children[0].arrays[0].vec());
}

double CountArrays(const Params& p) {
  double n = 0;
  for (const Array& a : p.arrays) n += static_cast<double>(a.size());
  for (const Params& c : p.children) n += CountArrays(c);
  return n;
}

// NumParams (what Init will draw, known before it allocates) agrees with Init.
TEST(NumParamsTest, EqualsWhatInitDraws) {
  GlobalSelfAttentionOptions att;
  att.n_chan_out = 6;
  att.n_chan_key = 5;
  att.n_chan_val = 4;
  att.n_heads = 3;
  att.linear_scaling = false;
  att.b_std = 0.1;
  att.pos_emb_type = PositionalEmbedding::kConcat;
  att.n_chan_pos_emb = 2;
  att.val_pos_emb = true;
  const std::vector<std::pair<Net, Shape>> nets = {
      {serial(Dense(7, 1.0, 0.1), Relu(), Dense(3)), {2, 5}},
      {serial(Conv(4, {3, 2}, {}, "SAME", 1.0, 0.2), ConvLocal(3, {2, 2}), Flatten(), Dense(2, 1.0, 0.1)),
       {2, 6, 5, 3}},
      {serial(FanOut(2), parallel(Dense(3), serial(Dense(4), Dense(3, 1.0, 0.3))), FanInSum()), {2, 5}},
      {repeat(serial(Dense(5, 1.0, 0.1), Erf()), 3), {2, 5}},
      {serial(Conv(4, {2}), GlobalSelfAttention(att), LayerNorm()), {2, 5, 3}},
  };
  for (const auto& [net, shape] : nets) {
    auto count = net.layer()->NumParams(ShapeFlow::Single(shape));
    ASSERT_TRUE(count.ok()) << count.status();
    auto init = net.init_fn(RngKey(1), shape);
    ASSERT_TRUE(init.ok()) << init.status();
    EXPECT_EQ(*count, CountArrays(init->second)) << ShapeToString(shape);
  }
  // The largest inputs + outputs of one layer: Relu's 2 x 7 in and out.
  auto peak = nets[0].first.layer()->PeakActivations(ShapeFlow::Single(nets[0].second));
  ASSERT_TRUE(peak.ok()) << peak.status();
  EXPECT_EQ(*peak, 28.0);
}

TEST(RngTest, NormalSamplesHaveUnitMoments) {
  Array z = RngKey(9).Normal({200000});
  double m = 0, v = 0;
  for (double x : z.vec()) m += x / z.size();
  for (double x : z.vec()) v += (x - m) * (x - m) / z.size();
  EXPECT_NEAR(m, 0, 0.01);
  EXPECT_NEAR(v, 1, 0.01);
}

}  // namespace
}  // namespace nt
