// upstream's stax_test grids (spec/linear.md 7.2: test_exact, test_dropout, ParameterizationTest), every
// case of the product (upstream samples 4 per grid and skips conv on CPU): the NNGP and NTK of finite
// networks, averaged over random draws (NTK by reverse mode), against kernel_fn, with upstream's metric and
// its rtol of 0.041. Cases are named after their grid point.
#include <cmath>
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

constexpr double kRtol = 0.041;

// Monte Carlo estimate of `get` ("nngp" or "ntk") with `samples` draws, and the analytic kernel.
void ExpectConverges(const Net& net, const Array& x1, const Array* x2, const std::string& get, int samples) {
  ASSERT_TRUE(net.status().ok()) << net.status();
  MonteCarloOptions o;
  o.key = RngKey(77);
  o.n_samples = {samples};
  o.empirical.vmap_in_axis = 0;
  const bool ntk = get == "ntk";
  Array mc;
  absl::Status st =
      MonteCarloKernelFn(*net.layer(), x1, x2, !ntk, ntk, o, [&](int, const EmpiricalKernel& k) {
        mc = ntk ? *k.ntk : *k.nngp;
        return absl::OkStatus();
      });
  ASSERT_TRUE(st.ok()) << st;
  auto exact = net.kernel_fn(x1, x2, {get});
  ASSERT_TRUE(exact.ok()) << exact.status();
  const Array& want = exact->arrays[0].second;
  ASSERT_EQ(mc.shape(), want.shape());
  const double err = testing_util::RelativeFrobeniusError(mc, want);
  EXPECT_LE(err, kRtol) << get;
  std::printf("%s %.4f\n", get.c_str(), err);
}

Net Phi(const std::string& name) {
  if (name == "Relu") return Relu();
  if (name == "Erf") return Erf();
  if (name == "Abs") return Abs();
  return Gelu();
}

// ---------------------------------------------------------------------------------------------------
// Fully connected: nonlinearity x depth x residual x parameterization x same inputs.
using FcPoint = std::tuple<std::string, int, bool, std::string, bool>;

class FcGridTest : public ::testing::TestWithParam<FcPoint> {};

TEST_P(FcGridTest, NngpAndNtkConverge) {
  const auto& [phi, depth, residual, param, same] = GetParam();
  constexpr int kW = 512;
  std::vector<Net> layers = {Dense(kW, 1.5, 0.1, 0, -1, param)};
  for (int d = 0; d < depth; ++d) {
    Net block = serial(Phi(phi), Dense(kW, 1.2, 0.05, 0, -1, param));
    if (residual) {
      layers.push_back(serial(FanOut(2), parallel(block, Identity()), FanInSum()));
    } else {
      layers.push_back(block);
    }
  }
  const Net body = serial(layers);
  const Array x1 = CosNormal({4, 8}, 1), x2 = CosNormal({3, 8}, 2, 2.0);
  const Array* x2p = same ? nullptr : &x2;
  ExpectConverges(body, x1, x2p, "nngp", 64);
  ExpectConverges(serial(body, Dense(1, 1.0, 0.1, 0, -1, param)), x1, x2p, "ntk", 64);
}

std::string FcName(const ::testing::TestParamInfo<FcPoint>& info) {
  const auto& [phi, depth, residual, param, same] = info.param;
  return absl::StrCat(phi, "_depth", depth, residual ? "_residual" : "", "_", param,
                      same ? "_same" : "_different");
}

INSTANTIATE_TEST_SUITE_P(Grid, FcGridTest,
                         ::testing::Combine(::testing::Values("Relu", "Erf", "Abs", "Gelu"),
                                            ::testing::Values(1, 2), ::testing::Bool(),
                                            ::testing::Values("ntk", "standard"), ::testing::Bool()),
                         FcName);

// ---------------------------------------------------------------------------------------------------
// Convolutions: padding x strides x readout x residual x same inputs (test_exact's conv half).
using ConvPoint = std::tuple<std::string, int, std::string, bool, bool>;

class ConvGridTest : public ::testing::TestWithParam<ConvPoint> {};

TEST_P(ConvGridTest, NngpAndNtkConverge) {
  const auto& [padding, stride, readout, residual, same] = GetParam();
  constexpr int kC = 96;
  Net block = serial(Relu(), Conv(kC, {2, 3}, {}, "SAME", 1.2, 0.05));
  Net mid = residual ? serial(FanOut(2), parallel(block, Identity()), FanInSum()) : block;
  const Net body = serial(Conv(kC, {3, 2}, {stride, 1}, padding, 1.5, 0.1), mid, Relu(),
                          readout == "GlobalAvgPool" ? GlobalAvgPool() : Flatten(), Dense(256, 1.1, 0.05));
  const Array x1 = CosNormal({3, 6, 4, 2}, 3), x2 = CosNormal({2, 6, 4, 2}, 4, 2.0);
  const Array* x2p = same ? nullptr : &x2;
  ExpectConverges(body, x1, x2p, "nngp", 256);
  // Conv kernels average few effective features: 4-6x upstream's sample count for its rtol at width 96.
  ExpectConverges(serial(body, Dense(1, 1.0, 0.1)), x1, x2p, "ntk", 384);
}

std::string ConvName(const ::testing::TestParamInfo<ConvPoint>& info) {
  const auto& [padding, stride, readout, residual, same] = info.param;
  return absl::StrCat(padding, "_stride", stride, "_", readout, residual ? "_residual" : "",
                      same ? "_same" : "_different");
}

INSTANTIATE_TEST_SUITE_P(Grid, ConvGridTest,
                         ::testing::Combine(::testing::Values("VALID", "SAME", "CIRCULAR"),
                                            ::testing::Values(1, 2),
                                            ::testing::Values("GlobalAvgPool", "Flatten"), ::testing::Bool(),
                                            ::testing::Bool()),
                         ConvName);

// ---------------------------------------------------------------------------------------------------
// Dropout (test_dropout): keep rate x fc / conv x same inputs; the masks of an input against itself agree.
using DropoutPoint = std::tuple<double, bool, bool>;

class DropoutGridTest : public ::testing::TestWithParam<DropoutPoint> {};

TEST_P(DropoutGridTest, NngpAndNtkConverge) {
  const auto& [rate, conv, same] = GetParam();
  const Net body = conv ? serial(Conv(96, {2, 2}, {}, "SAME", 1.3, 0.1), Relu(), Dropout(rate),
                                 GlobalAvgPool(), Dense(256, 1.0, 0.05))
                        : serial(Dense(512, 1.3, 0.1), Relu(), Dropout(rate), Dense(512, 1.0, 0.05));
  const Array x1 = conv ? CosNormal({3, 5, 4, 2}, 5) : CosNormal({4, 8}, 5);
  const Array x2 = conv ? CosNormal({2, 5, 4, 2}, 6, 2.0) : CosNormal({3, 8}, 6, 2.0);
  const Array* x2p = same ? nullptr : &x2;
  ExpectConverges(body, x1, x2p, "nngp", 96);
  ExpectConverges(serial(body, Dense(1, 1.0, 0.1)), x1, x2p, "ntk", 96);
}

std::string DropoutName(const ::testing::TestParamInfo<DropoutPoint>& info) {
  const auto& [rate, conv, same] = info.param;
  return absl::StrCat("rate", static_cast<int>(rate * 10), conv ? "_conv" : "_fc",
                      same ? "_same" : "_different");
}

INSTANTIATE_TEST_SUITE_P(Grid, DropoutGridTest,
                         ::testing::Combine(::testing::Values(0.6, 0.9), ::testing::Bool(),
                                            ::testing::Bool()),
                         DropoutName);

}  // namespace
}  // namespace nt
