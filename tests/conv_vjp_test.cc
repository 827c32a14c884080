// Reverse mode of Conv, ConvTranspose and ConvLocal: pullbacks against finite differences of apply_fn
// in every padding, stride, dimension layout and parameterization, with and without bias and masks.
#include <array>
#include <cmath>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/stax.h"
#include "gtest/gtest.h"
#include "tests/layer_test_util.h"
#include "tests/vjp_test_util.h"

namespace nt {
namespace {

using namespace nt::stax;  // NOLINT: reads like upstream's examples.
using testing_util::CosNormal;
using testing_util::ExpectNetVjpMatchesFiniteDifferences;
using testing_util::ExpectVjpMatchesFiniteDifferences;

const char* const kPaddings[] = {"VALID", "SAME", "CIRCULAR"};

// The finite-difference check of a single-layer net for a few random cotangents and directions.
void ExpectConvVjp(const Net& net, const Array& x, const std::string& what) {
  SCOPED_TRACE(what);
  ASSERT_TRUE(net.status().ok()) << net.status();
  auto init = net.init_fn(RngKey(7), x.shape());
  ASSERT_TRUE(init.ok()) << init.status();
  for (uint64_t seed : {1, 2}) {
    ExpectVjpMatchesFiniteDifferences(*net.layer(), init->second, ArrayFlow::Single(x), {}, {}, 1e-7, seed);
  }
}

TEST(ConvVjpTest, Conv2dEveryPaddingStrideAndBias) {
  const Array x = CosNormal({2, 5, 6, 3}, 1);
  for (const char* pad : kPaddings) {
    for (std::vector<int64_t> strides :
         {std::vector<int64_t>{1, 1}, std::vector<int64_t>{2, 1}, std::vector<int64_t>{2, 3}}) {
      for (std::optional<double> b_std : {std::optional<double>(), std::optional<double>(0.3)}) {
        ExpectConvVjp(Conv(4, {3, 2}, strides, pad, 1.5, b_std), x,
                      std::string(pad) + " strides " + std::to_string(strides[0]) +
                          std::to_string(strides[1]) + (b_std ? " bias" : " no bias"));
      }
    }
  }
}

TEST(ConvVjpTest, Conv1dAndConv3dEveryPadding) {
  const Array x1 = CosNormal({2, 7, 3}, 2), x3 = CosNormal({2, 4, 5, 3, 2}, 3);
  for (const char* pad : kPaddings) {
    ExpectConvVjp(Conv(3, {3}, {2}, pad, 1.2, 0.1), x1, std::string("1d ") + pad);
    ExpectConvVjp(Conv(3, {2, 3, 2}, {1, 2, 1}, pad, 0.9, 0.2), x3, std::string("3d ") + pad);
  }
}

TEST(ConvVjpTest, ConvNonDefaultDimensionNumbers) {
  // Channel-first inputs and outputs, and spatial orders that differ between lhs, rhs and out.
  const std::array<std::string, 3> layouts[] = {
      {"NCHW", "OIHW", "NCHW"}, {"NHWC", "HWIO", "NCHW"}, {"NWHC", "HWIO", "CHWN"}, {"HCNW", "WIOH", "WNHC"}};
  const Array x = CosNormal({2, 5, 6, 3}, 4);  // Read by each lhs spec.
  for (const auto& dn : layouts) {
    for (const char* pad : kPaddings) {
      ExpectConvVjp(Conv(4, {3, 2}, {2, 1}, pad, 1.3, 0.2, dn), x,
                    dn[0] + "/" + dn[1] + "/" + dn[2] + " " + pad);
    }
  }
}

TEST(ConvVjpTest, ConvStandardParameterization) {
  const Array x = CosNormal({2, 5, 6, 3}, 5);
  for (const char* pad : kPaddings) {
    for (std::optional<double> b_std : {std::optional<double>(), std::optional<double>(0.7)}) {
      ExpectConvVjp(Conv(4, {3, 2}, {1, 2}, pad, 1.4, b_std, {}, "standard", {2.0, 1.5}), x,
                    std::string(pad) + (b_std ? " bias" : " no bias"));
    }
  }
}

TEST(ConvVjpTest, ConvTransposeEveryPaddingAndStride) {
  const Array x = CosNormal({2, 4, 3, 3}, 6);
  for (const char* pad : kPaddings) {
    // Strides below, equal to and above the filter size (CIRCULAR folds differently in each case).
    for (std::vector<int64_t> strides : {std::vector<int64_t>{1, 1}, std::vector<int64_t>{2, 1},
                                         std::vector<int64_t>{2, 3}, std::vector<int64_t>{4, 2}}) {
      for (std::optional<double> b_std : {std::optional<double>(), std::optional<double>(0.4)}) {
        ExpectConvVjp(ConvTranspose(4, {3, 2}, strides, pad, 1.1, b_std), x,
                      std::string(pad) + " strides " + std::to_string(strides[0]) +
                          std::to_string(strides[1]) + (b_std ? " bias" : " no bias"));
      }
    }
  }
}

TEST(ConvVjpTest, ConvTranspose1dAnd3dLayoutsAndStandardParameterization) {
  const Array x1 = CosNormal({2, 5, 2}, 7), x3 = CosNormal({2, 3, 2, 4, 2}, 8),
              x2 = CosNormal({2, 3, 4, 3}, 9);
  for (const char* pad : kPaddings) {
    ExpectConvVjp(ConvTranspose(3, {3}, {2}, pad, 1.2, 0.1), x1, std::string("1d ") + pad);
    ExpectConvVjp(ConvTranspose(3, {2, 3, 2}, {2, 1, 2}, pad, 0.9, 0.2), x3, std::string("3d ") + pad);
    ExpectConvVjp(ConvTranspose(4, {2, 3}, {2, 2}, pad, 1.3, 0.2, {"NCHW", "OIHW", "NHWC"}), x2,
                  std::string("NCHW ") + pad);
    ExpectConvVjp(ConvTranspose(4, {3, 2}, {1, 2}, pad, 1.3, 0.5, {}, "standard", {1.5, 2.0}), x2,
                  std::string("standard ") + pad);
  }
}

TEST(ConvVjpTest, ConvLocalEveryPaddingStrideAndLayout) {
  const Array x = CosNormal({2, 5, 6, 3}, 10);
  for (const char* pad : kPaddings) {
    for (std::vector<int64_t> strides : {std::vector<int64_t>{1, 1}, std::vector<int64_t>{2, 3}}) {
      for (std::optional<double> b_std : {std::optional<double>(), std::optional<double>(0.3)}) {
        ExpectConvVjp(ConvLocal(4, {3, 2}, strides, pad, 1.5, b_std), x,
                      std::string(pad) + " strides " + std::to_string(strides[0]) +
                          std::to_string(strides[1]) + (b_std ? " bias" : " no bias"));
      }
    }
    // rhs spatial letters in another order than lhs (the patch follows rhs order), channel-first output.
    ExpectConvVjp(ConvLocal(4, {2, 3}, {1, 2}, pad, 1.2, 0.2, {"NHWC", "WHIO", "NCWH"}), x,
                  std::string("WHIO ") + pad);
    ExpectConvVjp(ConvLocal(4, {3, 2}, {2, 1}, pad, 1.2, 0.2, {}, "standard", {2.0, 3.0}), x,
                  std::string("standard ") + pad);
  }
  ExpectConvVjp(ConvLocal(3, {3}, {2}, "SAME", 1.0, 0.1), CosNormal({2, 7, 2}, 11), "1d");
  ExpectConvVjp(ConvLocal(3, {2, 2, 3}, {1, 2, 1}, "CIRCULAR", 1.0, 0.1), CosNormal({2, 3, 4, 3, 2}, 12),
                "3d");
}

// Masked entries: some whole positions (masked outputs too) and some single channels.
Array WithMaskedEntries(Array x, double constant) {
  const int64_t c = x.dim(x.rank() - 1);
  for (int64_t p = 0; p < x.size() / c; p += 5) {
    for (int64_t ch = 0; ch < c; ++ch) x[p * c + ch] = constant;
  }
  for (int64_t i = 3; i < x.size(); i += 7) x[i] = constant;
  return x;
}

TEST(ConvVjpTest, MaskedInputs) {
  const Array x = WithMaskedEntries(CosNormal({2, 5, 6, 3}, 13), 10.0);
  for (const char* pad : kPaddings) {
    SCOPED_TRACE(pad);
    ExpectNetVjpMatchesFiniteDifferences(Conv(4, {3, 2}, {2, 1}, pad, 1.5, 0.2), x, 10.0);
    ExpectNetVjpMatchesFiniteDifferences(ConvTranspose(4, {3, 2}, {2, 1}, pad, 1.5, 0.2), x, 10.0);
    ExpectNetVjpMatchesFiniteDifferences(ConvLocal(4, {3, 2}, {1, 2}, pad, 1.5, 0.2), x, 10.0);
    ExpectNetVjpMatchesFiniteDifferences(Conv(4, {3, 2}, {1, 1}, pad, 1.5, 0.2, {"NHWC", "HWIO", "NCHW"}), x,
                                         10.0);
  }
}

TEST(ConvVjpTest, PullbackIsRepeatableAndThreadSafe) {
  const Net net = Conv(4, {3, 2}, {2, 1}, "SAME", 1.5, 0.2);
  const Array x = CosNormal({2, 5, 6, 3}, 14);
  auto init = net.init_fn(RngKey(0), x.shape());
  ASSERT_TRUE(init.ok()) << init.status();
  auto lin = net.layer()->Linearize(init->second, ArrayFlow::Single(x));
  ASSERT_TRUE(lin.ok()) << lin.status();
  auto apply = net.layer()->Apply(init->second, ArrayFlow::Single(x));
  ASSERT_TRUE(apply.ok()) << apply.status();
  EXPECT_EQ(apply->single().vec(), lin->y.single().vec());  // The same code path: bit for bit.
  const ArrayFlow dy = ArrayFlow::Single(RngKey(3).Normal(lin->y.single().shape()));
  auto want = lin->pullback(dy);
  ASSERT_TRUE(want.ok()) << want.status();
  std::vector<std::optional<Cotangents>> got(4);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto c = lin->pullback(dy);
      if (c.ok()) got[t] = *std::move(c);
    });
  }
  for (std::thread& t : threads) t.join();
  for (const auto& c : got) {
    ASSERT_TRUE(c.has_value());
    EXPECT_EQ(c->dx.single().vec(), want->dx.single().vec());
    ASSERT_EQ(c->dparams.arrays.size(), 2u);
    for (int i = 0; i < 2; ++i) EXPECT_EQ(c->dparams.arrays[i].vec(), want->dparams.arrays[i].vec());
  }
}

TEST(ConvVjpTest, WrongCotangentShapeIsAnErrorNamingTheLayer) {
  const Net net = ConvTranspose(4, {3, 2}, {2, 1}, "VALID");
  const Array x = CosNormal({2, 5, 6, 3}, 15);
  auto init = net.init_fn(RngKey(0), x.shape());
  ASSERT_TRUE(init.ok()) << init.status();
  auto lin = net.layer()->Linearize(init->second, ArrayFlow::Single(x));
  ASSERT_TRUE(lin.ok()) << lin.status();
  auto c = lin->pullback(ArrayFlow::Single(Array({2, 3}, 1.0)));
  ASSERT_FALSE(c.ok());
  EXPECT_NE(std::string(c.status().message()).find("ConvTranspose"), std::string::npos) << c.status();
}

}  // namespace
}  // namespace nt
