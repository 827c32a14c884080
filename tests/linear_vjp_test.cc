// Reverse mode of the parameter-free layers (pooling, Flatten, Index, ImageResize, Identity, the fan-out /
// fan-in layers, Dropout, LayerNorm): their pullbacks against finite differences of apply_fn, one layer
// at a time, with and without masks.
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/layer.h"
#include "core/stax.h"
#include "gtest/gtest.h"
#include "tests/layer_test_util.h"
#include "tests/vjp_test_util.h"

namespace nt {
namespace {

using stax::Net;
using testing_util::CosNormal;
using testing_util::ExpectNetVjpMatchesFiniteDifferences;
using testing_util::ExpectVjpMatchesFiniteDifferences;

constexpr double kTol = 1e-7;
constexpr double kMaskConstant = 7.0;

// x with every channel of the given (batch, spatial...) positions set to kMaskConstant, so that
// mask_constant masks whole positions (pooling layers accept channel-collapsed masks only). `channel` is
// the channel axis; `positions` are flat offsets over the other axes in row-major order.
Array MaskPositions(Array x, int channel, const std::vector<int64_t>& positions) {
  const int rank = x.rank();
  std::vector<int64_t> idx(rank, 0);
  for (int64_t e = 0; e < x.size(); ++e) {
    int64_t flat = 0;
    for (int a = 0; a < rank; ++a) {
      if (a != channel) flat = flat * x.dim(a) + idx[a];
    }
    for (int64_t p : positions) {
      if (p == flat) x[e] = kMaskConstant;
    }
    for (int a = rank - 1; a >= 0; --a) {
      if (++idx[a] < x.dim(a)) break;
      idx[a] = 0;
    }
  }
  return x;
}

// A mask of x's shape with the channel axis collapsed to 1, masking the given flat positions.
Array PositionMask(const Shape& shape, int channel, const std::vector<int64_t>& positions) {
  Shape s = shape;
  s[channel] = 1;
  Array m(s, 0.0);
  for (int64_t p : positions) m[p] = 1.0;
  return m;
}

void ExpectListVjp(const Net& net, std::vector<Array> xs, std::vector<std::optional<Array>> masks = {}) {
  ASSERT_TRUE(net.status().ok()) << net.status();
  MaskFlow mf;
  if (!masks.empty()) mf = MaskFlow::List(std::move(masks));
  ExpectVjpMatchesFiniteDifferences(*net.layer(), Params{}, ArrayFlow::List(std::move(xs)), mf, {}, kTol);
}

// ---------------------------------------------------------------------------------------------------
// AvgPool / SumPool

TEST(LinearVjpTest, AvgPoolEveryPaddingWithStrides2D) {
  const Array x = CosNormal({2, 5, 6, 3}, 1);
  for (const std::string padding : {"VALID", "SAME", "CIRCULAR"}) {
    SCOPED_TRACE(padding);
    ExpectNetVjpMatchesFiniteDifferences(stax::AvgPool({2, 3}, {2, 1}, padding), x, std::nullopt, {}, kTol);
    ExpectNetVjpMatchesFiniteDifferences(stax::AvgPool({3, 2}, {1, 3}, padding), x, std::nullopt, {}, kTol);
  }
}

TEST(LinearVjpTest, AvgPoolSameNormalizeEdges) {
  const Array x = CosNormal({2, 6, 5, 2}, 2);
  ExpectNetVjpMatchesFiniteDifferences(stax::AvgPool({3, 3}, {2, 2}, "SAME", /*normalize_edges=*/true), x,
                                       std::nullopt, {}, kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::AvgPool({4, 2}, {}, "SAME", /*normalize_edges=*/true), x,
                                       std::nullopt, {}, kTol);
}

TEST(LinearVjpTest, SumPoolEveryPadding1D) {
  const Array x = CosNormal({3, 9, 2}, 3);
  for (const std::string padding : {"VALID", "SAME", "CIRCULAR"}) {
    SCOPED_TRACE(padding);
    ExpectNetVjpMatchesFiniteDifferences(stax::SumPool({3}, {2}, padding), x, std::nullopt, {}, kTol);
  }
}

TEST(LinearVjpTest, PoolChannelFirstAndBatchNotFirst) {
  // NCHW.
  ExpectNetVjpMatchesFiniteDifferences(stax::AvgPool({2, 2}, {2, 1}, "SAME", false, 0, 1),
                                       CosNormal({2, 3, 5, 4}, 4), std::nullopt, {}, kTol);
  // Channel first, batch second (CNHW); 3 spatial axes.
  ExpectNetVjpMatchesFiniteDifferences(stax::SumPool({2, 1, 2}, {1, 1, 2}, "VALID", 1, 0),
                                       CosNormal({2, 3, 4, 3, 5}, 5), std::nullopt, {}, kTol);
}

TEST(LinearVjpTest, PoolWithMasks) {
  // One channel: mask_constant gives channel-collapsed masks.
  const Array x = MaskPositions(CosNormal({2, 6, 5, 1}, 6), 3, {0, 7, 8, 31, 40});
  ExpectNetVjpMatchesFiniteDifferences(stax::AvgPool({2, 2}, {2, 2}, "SAME"), x, kMaskConstant, {}, kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::SumPool({3, 2}, {}, "VALID"), x, kMaskConstant, {}, kTol);
  // Several channels with a channel-collapsed mask.
  const Array x3 = CosNormal({2, 6, 5, 3}, 7);
  const Array m = PositionMask(x3.shape(), 3, {1, 2, 17, 33, 59});
  const Net pool = stax::AvgPool({3, 2}, {2, 1}, "CIRCULAR");
  ExpectVjpMatchesFiniteDifferences(*pool.layer(), Params{}, ArrayFlow::Single(x3), MaskFlow::Single(m), {},
                                    kTol);
}

// ---------------------------------------------------------------------------------------------------
// GlobalAvgPool / GlobalSumPool

TEST(LinearVjpTest, GlobalPoolLayouts) {
  const Array x = CosNormal({3, 4, 5, 2}, 8);
  ExpectNetVjpMatchesFiniteDifferences(stax::GlobalAvgPool(), x, std::nullopt, {}, kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::GlobalSumPool(), x, std::nullopt, {}, kTol);
  // Channel first; channel before batch (the output is then (C, N)).
  ExpectNetVjpMatchesFiniteDifferences(stax::GlobalAvgPool(0, 1), x, std::nullopt, {}, kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::GlobalSumPool(2, 0), x, std::nullopt, {}, kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::GlobalAvgPool(), CosNormal({3, 2}, 9), std::nullopt, {}, kTol);
}

TEST(LinearVjpTest, GlobalAvgPoolMaskedMean) {
  // Sample 1 is fully masked (its output is masked too); the others average over their unmasked positions.
  std::vector<int64_t> masked = {0, 3, 4, 9, 24, 40, 41};
  for (int64_t p = 20; p < 40; ++p) masked.push_back(p);
  const Array x = MaskPositions(CosNormal({3, 4, 5, 1}, 10), 3, masked);
  ExpectNetVjpMatchesFiniteDifferences(stax::GlobalAvgPool(), x, kMaskConstant, {}, kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::GlobalSumPool(), x, kMaskConstant, {}, kTol);
  // Several channels, channel-collapsed mask, channel-first layout.
  const Array x3 = CosNormal({3, 2, 4, 5}, 11);
  const Array m = PositionMask(x3.shape(), 1, {1, 2, 7, 19, 22, 23, 50, 51, 52});
  const Net gap = stax::GlobalAvgPool(0, 1);
  ExpectVjpMatchesFiniteDifferences(*gap.layer(), Params{}, ArrayFlow::Single(x3), MaskFlow::Single(m), {},
                                    kTol);
}

// ---------------------------------------------------------------------------------------------------
// Flatten, Index

TEST(LinearVjpTest, FlattenBatchAxes) {
  const Array x = CosNormal({2, 3, 4, 2}, 12);
  ExpectNetVjpMatchesFiniteDifferences(stax::Flatten(), x, std::nullopt, {}, kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::Flatten(0, 1), x, std::nullopt, {}, kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::Flatten(2, 0), x, std::nullopt, {}, kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::Flatten(-1, -1), x, std::nullopt, {}, kTol);
}

TEST(LinearVjpTest, FlattenWithMasks) {
  Array x = CosNormal({2, 3, 4, 2}, 13);
  for (int64_t i : {0, 5, 6, 7, 30}) x[i] = kMaskConstant;  // Entry-wise masks.
  ExpectNetVjpMatchesFiniteDifferences(stax::Flatten(), x, kMaskConstant, {}, kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::Flatten(1, 1), x, kMaskConstant, {}, kTol);
}

TEST(LinearVjpTest, IndexIntsSlicesAndEllipsis) {
  using I = IndexItem;
  const Array x = CosNormal({3, 5, 6, 4}, 14);
  const std::vector<std::vector<I>> indices = {
      {I::Slice(), I::Int(1)},                                    // Removes an axis.
      {I::Ellipsis(), I::Slice(1, 3)},                            // Channels 1:3.
      {I::Slice(), I::Slice(std::nullopt, std::nullopt, -2)},     // ::-2.
      {I::Slice(2, 0, -1), I::Ellipsis(), I::Int(-1)},            // Samples 2:0:-1, last channel.
      {I::Slice(), I::Slice(-4, 5, 2), I::Slice(1), I::Slice()},  // Negative start, step.
      {I::Int(0), I::Int(2), I::Int(3), I::Int(1)},               // A scalar.
      {I::Ellipsis()},                                            // The identity.
  };
  for (size_t i = 0; i < indices.size(); ++i) {
    SCOPED_TRACE(i);
    ExpectNetVjpMatchesFiniteDifferences(stax::Index(indices[i]), x, std::nullopt, {}, kTol);
  }
}

TEST(LinearVjpTest, IndexWithMasks) {
  using I = IndexItem;
  Array x = CosNormal({3, 5, 4}, 15);
  for (int64_t i : {0, 1, 9, 22, 23, 40, 59}) x[i] = kMaskConstant;
  ExpectNetVjpMatchesFiniteDifferences(stax::Index({I::Slice(), I::Slice(1, 5, 2)}), x, kMaskConstant, {},
                                       kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::Index({I::Ellipsis(), I::Int(-2)}), x, kMaskConstant, {}, kTol);
}

// ---------------------------------------------------------------------------------------------------
// ImageResize

TEST(LinearVjpTest, ImageResizeEveryMethodUpAndDown) {
  const Array x = CosNormal({2, 5, 7, 2}, 16);
  for (const std::string method : {"nearest", "linear", "cubic", "lanczos3", "lanczos5"}) {
    for (bool antialias : {true, false}) {
      SCOPED_TRACE(method + (antialias ? " antialias" : ""));
      // Upsample one axis, downsample the other.
      ExpectNetVjpMatchesFiniteDifferences(stax::ImageResize({-1, 9, 3, -1}, method, antialias), x,
                                           std::nullopt, {}, kTol);
      // Strong downsampling (wide antialiasing kernels) and a resized channel axis.
      ExpectNetVjpMatchesFiniteDifferences(stax::ImageResize({-1, 2, 7, 5}, method, antialias), x,
                                           std::nullopt, {}, kTol);
    }
  }
}

TEST(LinearVjpTest, ImageResizeChannelFirstAndBatchAxis) {
  const Array x = CosNormal({3, 2, 6}, 17);
  // NCW layout; resizing the batch axis too (apply_fn allows it).
  ExpectNetVjpMatchesFiniteDifferences(stax::ImageResize({-1, -1, 10}, "linear", true, "HIGHEST", 0, 1), x,
                                       std::nullopt, {}, kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::ImageResize({5, -1, 4}, "cubic", true, "HIGHEST", 0, 1), x,
                                       std::nullopt, {}, kTol);
}

TEST(LinearVjpTest, ImageResizeWithMasks) {
  const Array x = MaskPositions(CosNormal({2, 6, 5, 2}, 18), 3, {0, 1, 2, 13, 29, 44});
  ExpectNetVjpMatchesFiniteDifferences(stax::ImageResize({-1, 9, 3, -1}, "linear"), x, kMaskConstant, {},
                                       kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::ImageResize({-1, 3, 8, -1}, "lanczos3"), x, kMaskConstant, {},
                                       kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::ImageResize({-1, 4, 10, -1}, "nearest"), x, kMaskConstant, {},
                                       kTol);
}

// ---------------------------------------------------------------------------------------------------
// Identity, FanOut, FanInSum, FanInProd, FanInConcat

TEST(LinearVjpTest, IdentitySingleAndList) {
  Array x = CosNormal({2, 3, 4}, 19);
  ExpectNetVjpMatchesFiniteDifferences(stax::Identity(), x, std::nullopt, {}, kTol);
  x[5] = kMaskConstant;
  ExpectNetVjpMatchesFiniteDifferences(stax::Identity(), x, kMaskConstant, {}, kTol);
  ExpectListVjp(stax::Identity(), {CosNormal({2, 3}, 20), CosNormal({4, 1, 2}, 21)});
}

TEST(LinearVjpTest, FanOutSumsCotangents) {
  const Net fan_out = stax::FanOut(3);
  Array x = CosNormal({2, 4, 3}, 22);
  ExpectVjpMatchesFiniteDifferences(*fan_out.layer(), Params{}, ArrayFlow::Single(x), {}, {}, kTol);
  x[0] = x[7] = kMaskConstant;
  ExpectVjpMatchesFiniteDifferences(*fan_out.layer(), Params{}, ArrayFlow::Single(x),
                                    MaskFlow::Single(MaskOfConstant(x, kMaskConstant)), {}, kTol);
  // The cotangent of the input is the sum of those of the copies.
  auto lin = fan_out.layer()->Linearize(Params{}, ArrayFlow::Single(x));
  ASSERT_TRUE(lin.ok()) << lin.status();
  const Array a = CosNormal(x.shape(), 23), b = CosNormal(x.shape(), 24), c = CosNormal(x.shape(), 25);
  auto cot = lin->pullback(ArrayFlow::List({a, b, c}));
  ASSERT_TRUE(cot.ok()) << cot.status();
  ASSERT_FALSE(cot->dx.is_list);
  for (int64_t i = 0; i < x.size(); ++i) EXPECT_DOUBLE_EQ(cot->dx.single()[i], a[i] + b[i] + c[i]);
}

TEST(LinearVjpTest, FanInSumWithAndWithoutMasks) {
  const Shape s = {2, 3, 4};
  ExpectListVjp(stax::FanInSum(), {CosNormal(s, 26), CosNormal(s, 27), CosNormal(s, 28)});
  ExpectListVjp(stax::FanInSum(), {CosNormal(s, 29)});
  Array m0(s, 0.0), m1(s, 0.0);
  for (int64_t i : {0, 1, 5, 11}) m0[i] = 1;
  for (int64_t i : {1, 5, 6, 20}) m1[i] = 1;
  ExpectListVjp(stax::FanInSum(), {CosNormal(s, 30), CosNormal(s, 31), CosNormal(s, 32)},
                {m0, m1, std::nullopt});
}

TEST(LinearVjpTest, FanInProdProductRule) {
  const Shape s = {3, 2, 5};
  ExpectListVjp(stax::FanInProd(), {CosNormal(s, 33), CosNormal(s, 34)});
  // Three inputs, one with zero entries (the pullback must not divide by the inputs).
  Array z = CosNormal(s, 35);
  z[0] = z[4] = z[17] = 0;
  ExpectListVjp(stax::FanInProd(), {CosNormal(s, 36), z, CosNormal(s, 37)});
  ExpectListVjp(stax::FanInProd(), {CosNormal(s, 38)});
  Array m(s, 0.0);
  for (int64_t i : {2, 3, 29}) m[i] = 1;
  ExpectListVjp(stax::FanInProd(), {CosNormal(s, 39), CosNormal(s, 40)}, {m, std::nullopt});
}

TEST(LinearVjpTest, FanInConcatEveryAxis) {
  // Inputs differ in the concatenated axis only.
  for (int axis : {0, 1, 2, -1}) {
    SCOPED_TRACE(axis);
    const int a = axis < 0 ? axis + 3 : axis;
    Shape s0 = {2, 3, 4}, s1 = s0, s2 = s0;
    s1[a] = 1;
    s2[a] = 5;
    ExpectListVjp(stax::FanInConcat(axis), {CosNormal(s0, 41), CosNormal(s1, 42), CosNormal(s2, 43)});
  }
}

// ---------------------------------------------------------------------------------------------------
// Dropout

TEST(LinearVjpTest, DropoutTrainUsesTheSameKeepMask) {
  const Array x = CosNormal({3, 4, 5}, 44);
  ApplyContext ctx;
  ctx.rng = RngKey(3);
  ExpectNetVjpMatchesFiniteDifferences(stax::Dropout(0.6), x, std::nullopt, ctx, kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::Dropout(1.0), x, std::nullopt, ctx, kTol);
  Array xm = x;
  for (int64_t i : {0, 1, 2, 3, 19, 33}) xm[i] = kMaskConstant;
  ExpectNetVjpMatchesFiniteDifferences(stax::Dropout(0.3), xm, kMaskConstant, ctx, kTol);
  // The pullback is dy * keep / rate: zero exactly where the forward output dropped a non-zero input.
  const Net net = stax::Dropout(0.5);
  auto lin =
      net.layer()->LinearizeMasked(Params{}, ArrayFlow::Single(x), MaskFlow::Single(std::nullopt), ctx);
  ASSERT_TRUE(lin.ok()) << lin.status();
  auto cot = lin->pullback(ArrayFlow::Single(Array(x.shape(), 1.0)));
  ASSERT_TRUE(cot.ok()) << cot.status();
  for (int64_t i = 0; i < x.size(); ++i) {
    EXPECT_DOUBLE_EQ(cot->dx.single()[i], lin->out.values.single()[i] == 0 ? 0.0 : 2.0);
    EXPECT_DOUBLE_EQ(lin->out.values.single()[i], cot->dx.single()[i] * x[i]);
  }
}

TEST(LinearVjpTest, DropoutTestModeAndNoRngAreTheIdentity) {
  const Array x = CosNormal({2, 3, 4}, 45);
  ApplyContext ctx;
  ctx.rng = RngKey(3);
  ExpectNetVjpMatchesFiniteDifferences(stax::Dropout(0.5, "test"), x, std::nullopt, ctx, kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::Dropout(0.5, "test"), x, std::nullopt, {}, kTol);
  // Train mode without a key fails as apply_fn does, naming the layer.
  const Net train = stax::Dropout(0.5);
  auto lin =
      train.layer()->LinearizeMasked(Params{}, ArrayFlow::Single(x), MaskFlow::Single(std::nullopt), {});
  ASSERT_FALSE(lin.ok());
  EXPECT_NE(std::string(lin.status().message()).find("Dropout"), std::string::npos) << lin.status();
}

// ---------------------------------------------------------------------------------------------------
// LayerNorm

TEST(LinearVjpTest, LayerNormOverSeveralAxes) {
  const Array x = CosNormal({3, 4, 5, 6}, 46, 2.0);
  ExpectNetVjpMatchesFiniteDifferences(stax::LayerNorm(), x, std::nullopt, {}, kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::LayerNorm({1, 3}), x, std::nullopt, {}, kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::LayerNorm({-1, -2, -3}), x, std::nullopt, {}, kTol);
  // Channel first, normalising over channels and the last axis; a larger eps.
  ExpectNetVjpMatchesFiniteDifferences(stax::LayerNorm({1, 3}, 0.5, 0, 1), x, std::nullopt, {}, kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::LayerNorm({-1}, 1e-3), CosNormal({5, 7}, 47), std::nullopt, {},
                                       kTol);
}

TEST(LinearVjpTest, LayerNormWithMasks) {
  // Whole positions masked (their group is then zero) and single entries masked (a partly zero group).
  Array x = MaskPositions(CosNormal({2, 3, 4}, 48), 2, {0, 4});
  x[13] = x[22] = kMaskConstant;
  ExpectNetVjpMatchesFiniteDifferences(stax::LayerNorm(), x, kMaskConstant, {}, kTol);
  ExpectNetVjpMatchesFiniteDifferences(stax::LayerNorm({1, 2}), x, kMaskConstant, {}, kTol);
}

// ---------------------------------------------------------------------------------------------------
// Pullbacks are pure: many concurrent calls give the same cotangents.

TEST(LinearVjpTest, PullbacksAreReentrant) {
  const Array x = CosNormal({2, 6, 5, 3}, 49);
  const std::vector<Net> nets = {stax::AvgPool({2, 2}, {2, 1}, "SAME", true),
                                 stax::GlobalAvgPool(),
                                 stax::ImageResize({-1, 9, 3, -1}, "cubic"),
                                 stax::LayerNorm({1, 3}),
                                 stax::Flatten(),
                                 stax::Dropout(0.5)};
  ApplyContext ctx;
  ctx.rng = RngKey(3);
  for (const Net& net : nets) {
    SCOPED_TRACE(net.layer()->name());
    auto lin =
        net.layer()->LinearizeMasked(Params{}, ArrayFlow::Single(x), MaskFlow::Single(std::nullopt), ctx);
    ASSERT_TRUE(lin.ok()) << lin.status();
    const ArrayFlow dy = ArrayFlow::Single(CosNormal(lin->out.values.single().shape(), 50));
    auto want = lin->pullback(dy);
    ASSERT_TRUE(want.ok()) << want.status();
    std::vector<Array> got(4);
    std::vector<std::thread> threads;
    for (size_t t = 0; t < got.size(); ++t) {
      threads.emplace_back([&, t] {
        auto c = lin->pullback(dy);
        if (c.ok()) got[t] = c->dx.single();
      });
    }
    for (std::thread& t : threads) t.join();
    for (const Array& g : got) {
      ASSERT_EQ(g.shape(), want->dx.single().shape());
      for (int64_t i = 0; i < g.size(); ++i) EXPECT_EQ(g[i], want->dx.single()[i]);
    }
  }
}

TEST(LinearVjpTest, PullbackRejectsMisshapenCotangents) {
  const Array x = CosNormal({2, 6, 5, 3}, 51);
  for (const Net& net : {stax::AvgPool({2, 2}), stax::GlobalSumPool(), stax::Flatten(), stax::LayerNorm(),
                         stax::Index({IndexItem::Int(0)}), stax::ImageResize({-1, 3, -1, -1}, "linear")}) {
    auto lin = net.layer()->Linearize(Params{}, ArrayFlow::Single(x));
    ASSERT_TRUE(lin.ok()) << lin.status();
    auto cot = lin->pullback(ArrayFlow::Single(Array(Shape{7})));
    ASSERT_FALSE(cot.ok()) << net.layer()->name();
    EXPECT_NE(std::string(cot.status().message()).find(net.layer()->name()), std::string::npos)
        << cot.status();
  }
}

}  // namespace
}  // namespace nt
