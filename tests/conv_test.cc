// Conv, ConvTranspose and ConvLocal: exact identities between layouts and layers, Monte Carlo agreement of
// finite CNNs (our init_fn/apply_fn) with the analytic NNGP, and argument errors.
#include <cmath>
#include <string>
#include <vector>

#include "core/stax.h"
#include "gtest/gtest.h"
#include "tests/layer_test_util.h"

namespace nt {
namespace {

using namespace nt::stax;  // NOLINT: reads like upstream's examples.
using testing_util::ExpectArraysNear;

Array RandomInput(const Shape& shape, uint64_t seed) { return RngKey(seed).Normal(shape); }

KernelResult Kernel(const Net& net, const Array& x1, const Array* x2, std::optional<bool> diagonal_spatial,
                    int64_t tile_size = 0) {
  KernelOptions o;
  o.diagonal_spatial = diagonal_spatial;
  o.tile_size = tile_size;
  auto r = net.kernel_fn(x1, x2, {"nngp", "ntk", "cov1", "cov2"}, o);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : KernelResult{};
}

TEST(ConvTest, UnitFilterEqualsDenseInEveryLayout) {
  const Array x1 = RandomInput({3, 4, 5, 2}, 1), x2 = RandomInput({2, 4, 5, 2}, 2);
  for (bool diag : {false, true}) {
    const Net conv =
        serial(Conv(8, {1, 1}, {}, "SAME", 1.3, 0.4), Relu(), Conv(8, {1, 1}, {}, "VALID", 0.9, 0.1));
    const Net dense = serial(Dense(8, 1.3, 0.4), Relu(), Dense(8, 0.9, 0.1));
    const KernelResult a = Kernel(conv, x1, &x2, diag), b = Kernel(dense, x1, &x2, diag);
    for (const char* name : {"nngp", "ntk", "cov1", "cov2"}) {
      ExpectArraysNear(*b.Find(name), *a.Find(name), 1e-12, std::string(name) + (diag ? " diag" : " full"));
    }
  }
}

// The spatial diagonal (N1, N2, s1, s2) of a full-layout 2-d kernel (N1, N2, s1, s1', s2, s2').
Array Diagonal2d(const Array& full) {
  const int64_t n1 = full.dim(0), n2 = full.dim(1), h = full.dim(2), w = full.dim(4);
  Array out({n1, n2, h, w});
  for (int64_t a = 0; a < n1 * n2; ++a)
    for (int64_t i = 0; i < h; ++i)
      for (int64_t j = 0; j < w; ++j)
        out[(a * h + i) * w + j] = full[((a * h + i) * h + i) * w * w + j * w + j];
  return out;
}

TEST(ConvTest, FullLayoutDiagonalEqualsDiagonalLayout) {
  const Array x1 = RandomInput({2, 6, 5, 3}, 3), x2 = RandomInput({3, 6, 5, 3}, 4);
  for (const char* pad : {"VALID", "SAME", "CIRCULAR"}) {
    for (std::vector<int64_t> strides : {std::vector<int64_t>{1, 1}, std::vector<int64_t>{2, 1}}) {
      const Net net =
          serial(Conv(4, {3, 2}, strides, pad, 1.5, 0.3), Erf(), Conv(4, {2, 3}, {}, pad, 0.8, 0.2));
      const KernelResult full = Kernel(net, x1, &x2, false), diag = Kernel(net, x1, &x2, true);
      for (const char* name : {"nngp", "ntk"}) {
        ExpectArraysNear(*diag.Find(name), Diagonal2d(*full.Find(name)), 1e-12,
                         std::string(pad) + " " + name);
      }
    }
  }
}

TEST(ConvTest, ConvLocalFullLayoutIsDiagonalAndMatchesConv) {
  const Array x1 = RandomInput({2, 7, 2}, 5), x2 = RandomInput({2, 7, 2}, 6);
  for (const char* pad : {"VALID", "SAME", "CIRCULAR"}) {
    const Net local =
        serial(ConvLocal(4, {3}, {}, pad, 1.2, 0.5), Relu(), ConvLocal(4, {2}, {2}, pad, 1.1, 0.5));
    const Net conv = serial(Conv(4, {3}, {}, pad, 1.2, 0.5), Relu(), Conv(4, {2}, {2}, pad, 1.1, 0.5));
    const Array lf = *Kernel(local, x1, &x2, false).Find("nngp");
    const Array cd = *Kernel(conv, x1, &x2, true).Find("nngp");
    const int64_t w = lf.dim(2);
    for (int64_t a = 0; a < 4; ++a) {
      for (int64_t i = 0; i < w; ++i) {
        for (int64_t j = 0; j < w; ++j) {
          const double v = lf[(a * w + i) * w + j];
          if (i != j) {
            EXPECT_EQ(v, 0.0) << pad;
          } else {
            EXPECT_NEAR(v, cd[a * w + i], 1e-12) << pad;
          }
        }
      }
    }
  }
}

TEST(ConvTest, DimensionNumbersPermuteAxesConsistently) {
  // Channels first (NCW) with an OIW filter equals the default NWC layout on transposed inputs.
  const Array x = RandomInput({3, 7, 2}, 7);
  const Array x_ncw = Transpose(x, std::vector<int>{0, 2, 1});
  const Net nwc = serial(Conv(3, {3}, {2}, "SAME", 1.4, 0.2), Relu(), Conv(3, {2}, {}, "VALID"));
  const Net ncw = serial(Conv(3, {3}, {2}, "SAME", 1.4, 0.2, std::array<std::string, 3>{"NCA", "OIA", "NCA"}),
                         Relu(), Conv(3, {2}, {}, "VALID", 1.0, std::nullopt, {"NCA", "AIO", "NAC"}));
  const KernelResult a = Kernel(nwc, x, nullptr, false), b = Kernel(ncw, x_ncw, nullptr, false);
  for (const char* name : {"nngp", "ntk", "cov1"})
    ExpectArraysNear(*b.Find(name), *a.Find(name), 1e-12, name);
  // apply_fn lays the output out by out_spec.
  auto init = ncw.init_fn(RngKey(1), x_ncw.shape());
  ASSERT_TRUE(init.ok()) << init.status();
  EXPECT_EQ(init->first, (Shape{3, 3, 3}));
  auto y = ncw.apply_fn(init->second, x_ncw);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{3, 3, 3}));
}

TEST(ConvTest, OutputShapesFollowPaddingRules) {
  struct Case {
    Net net;
    Shape in, out;
  };
  const std::vector<Case> cases = {
      {Conv(5, {3}, {2}, "VALID"), {1, 8, 2}, {1, 3, 5}},
      {Conv(5, {3}, {2}, "SAME"), {1, 8, 2}, {1, 4, 5}},
      {Conv(5, {4}, {3}, "CIRCULAR"), {1, 8, 2}, {1, 3, 5}},
      {ConvTranspose(5, {3}, {2}, "VALID"), {1, 4, 2}, {1, 9, 5}},
      {ConvTranspose(5, {3}, {2}, "SAME"), {1, 4, 2}, {1, 8, 5}},
      {ConvTranspose(5, {3}, {2}, "CIRCULAR"), {1, 4, 2}, {1, 8, 5}},
      {ConvLocal(5, {2, 3}, {1, 2}, "SAME"), {1, 4, 5, 2}, {1, 4, 3, 5}},
      {Conv(5, {}, {}, "VALID"), {2, 3}, {2, 5}},
  };
  for (const Case& c : cases) {
    auto init = c.net.init_fn(RngKey(3), c.in);
    ASSERT_TRUE(init.ok()) << init.status();
    EXPECT_EQ(init->first, c.out) << c.net.layer()->name();
    auto y = c.net.apply_fn(init->second, RandomInput(c.in, 4));
    ASSERT_TRUE(y.ok()) << y.status();
    EXPECT_EQ(y->shape(), c.out) << c.net.layer()->name();
    auto k = c.net.kernel_fn(RandomInput(c.in, 5), nullptr, {"nngp"});
    ASSERT_TRUE(k.ok()) << k.status();
  }
}

TEST(ConvTest, BadArgumentsAreRefusedNamingTheField) {
  const Array x = RandomInput({2, 5, 3}, 8);
  struct Case {
    Net net;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {Conv(0, {3}), "out_chan"},
      {Conv(4, {0}), "filter_shape"},
      {Conv(4, {3}, {1, 1}), "strides"},
      {Conv(4, {3}, {}, "same"), "padding"},
      {Conv(4, {3}, {}, "VALID", 1.0, std::nullopt, {}, "xavier"), "parameterization"},
      {Conv(4, {3}, {}, "VALID", 1.0, std::nullopt, {"NHC", "HIO", "NWC"}), "dimension_numbers"},
      {Conv(4, {3}, {}, "VALID", 1.0, std::nullopt, {"NHC", "HIO", "NHWC"}), "dimension_numbers"},
      {Conv(4, {9}, {}, "VALID"), "filter_shape"},  // Larger than the input with VALID.
      {Conv(4, {3, 3}), "input"},                   // Rank mismatch.
  };
  for (const Case& c : cases) {
    auto r = c.net.kernel_fn(x, nullptr, {"nngp"});
    ASSERT_FALSE(r.ok()) << c.needle;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    EXPECT_NE(r.status().message().find(c.needle), std::string::npos) << r.status();
  }
}

TEST(ConvTest, DiagonalSpatialRequestRefusedWhenNotAllowed) {
  // ConvLocal's output may be diagonal (MAYBE); a later shared Conv turns that into a full-layout need
  // only for pooling readouts, so a plain Conv network accepts diagonal_spatial=True ...
  const Array x = RandomInput({2, 5, 3}, 9);
  KernelOptions o;
  o.diagonal_spatial = true;
  EXPECT_TRUE(Conv(4, {3}).kernel_fn(x, nullptr, {"nngp"}, o).ok());
  // ... and by default keeps the full layout (Conv declares output NO).
  auto r = Conv(4, {3}).kernel_fn(x, nullptr, {"nngp"});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->Find("nngp")->shape(), (Shape{2, 2, 3, 3}));
}

struct McCase {
  std::string name;
  Net net;
};

std::vector<McCase> McCases() {
  const int w = 256;
  std::vector<McCase> out;
  for (std::string pad : {"VALID", "SAME", "CIRCULAR"}) {
    out.push_back(
        {"Conv_" + pad, serial(Conv(w, {3}, {}, pad, 1.5, 0.3), Relu(), Conv(w, {2}, {2}, pad, 1.2, 0.2))});
    out.push_back({"ConvTranspose_" + pad, serial(ConvTranspose(w, {3}, {2}, pad, 1.5, 0.3), Relu(),
                                                  ConvTranspose(w, {2}, {}, pad, 1.2, 0.2))});
    out.push_back({"ConvLocal_" + pad, serial(ConvLocal(w, {3}, {}, pad, 1.5, 0.3), Relu(),
                                              ConvLocal(w, {2}, {2}, pad, 1.2, 0.2))});
    out.push_back({"ConvStandard_" + pad, serial(Conv(w, {3}, {}, pad, 1.5, 0.3, {}, "standard"), Erf(),
                                                 Conv(w, {2}, {}, pad, 1.2, 0.2, {}, "standard"))});
  }
  return out;
}

// Three spatial dimensions: a trailing axis of size 1 (filter, window and stride 1 along it) reproduces the
// 2-d network exactly, in the full layout with pooling and in the diagonal layout.
TEST(ConvTest, ThreeSpatialDimensionsReduceToTwo) {
  const Array x2d = RandomInput({2, 5, 4, 3}, 41);
  const Array x3d = x2d.Reshaped({2, 5, 4, 1, 3});
  const Net net2 = serial(Conv(4, {3, 2}, {1, 2}, "SAME", 1.3, 0.2), Relu(), AvgPool({2, 2}, {}, "SAME"),
                          ConvTranspose(4, {2, 2}, {}, "CIRCULAR"), Relu(), GlobalAvgPool());
  const Net net3 =
      serial(Conv(4, {3, 2, 1}, {1, 2, 1}, "SAME", 1.3, 0.2), Relu(), AvgPool({2, 2, 1}, {}, "SAME"),
             ConvTranspose(4, {2, 2, 1}, {}, "CIRCULAR"), Relu(), GlobalAvgPool());
  const KernelResult a = Kernel(net2, x2d, nullptr, false), b = Kernel(net3, x3d, nullptr, false);
  for (const char* name : {"nngp", "ntk", "cov1"})
    ExpectArraysNear(*a.Find(name), *b.Find(name), 1e-12, name);
  const Net flat2 = serial(Conv(4, {3, 3}, {}, "SAME"), Erf(), Conv(4, {2, 2}, {}, "VALID"), Flatten());
  const Net flat3 = serial(Conv(4, {3, 3, 1}, {}, "SAME"), Erf(), Conv(4, {2, 2, 1}, {}, "VALID"), Flatten());
  const KernelResult c = Kernel(flat2, x2d, nullptr, std::nullopt),
                     d = Kernel(flat3, x3d, nullptr, std::nullopt);
  for (const char* name : {"nngp", "ntk", "cov1"})
    ExpectArraysNear(*c.Find(name), *d.Find(name), 1e-12, name);
}

// Masked inputs (mask_constant) through convolutions: masked entries enter as zeros, Conv reduces the mask
// over channels (stride 1 SAME keeps positions) and re-masks its output. The reference applies each layer
// on the Kernel path and zeroes the masked rows and columns by hand.
TEST(ConvTest, MaskedPositionsAreZeroedAfterEveryConv) {
  Array x = RandomInput({2, 6, 2}, 31);
  const std::vector<std::pair<int, int>> masked = {{0, 4}, {1, 1}};  // (sample, position), all channels.
  Array x_zeroed = x;
  for (auto [n, p] : masked) {
    for (int c = 0; c < 2; ++c) {
      x[(n * 6 + p) * 2 + c] = std::nan("");
      x_zeroed[(n * 6 + p) * 2 + c] = 0;
    }
  }
  const Net conv1 = Conv(4, {3}, {}, "SAME", 1.3, 0.2), relu = Relu(),
            conv2 = Conv(4, {3}, {}, "SAME", 0.9, 0.1);
  KernelOptions o;
  o.mask_constant = std::nan("");
  auto got = serial(conv1, relu, conv2).kernel_fn(x, nullptr, {"nngp", "ntk"}, o);
  ASSERT_TRUE(got.ok()) << got.status();

  auto zero_masked = [&](nt::Kernel* k) {
    for (Array* a : {&k->nngp, &*k->ntk}) {
      if (a->rank() == 0) continue;
      for (int64_t i = 0; i < 2; ++i)
        for (int64_t j = 0; j < 2; ++j)
          for (int64_t p = 0; p < 6; ++p)
            for (int64_t q = 0; q < 6; ++q) {
              bool m = false;
              for (auto [n, pos] : masked) m = m || (n == i && pos == p) || (n == j && pos == q);
              if (m) (*a)[((i * 2 + j) * 6 + p) * 6 + q] = 0;
            }
    }
    for (auto [n, pos] : masked) {  // cov1 (N, W, W): the sample's masked row and column.
      for (int64_t q = 0; q < 6; ++q) {
        k->cov1[(n * 6 + pos) * 6 + q] = 0;
        k->cov1[(n * 6 + q) * 6 + pos] = 0;
      }
    }
  };
  nt::Kernel k = testing_util::InputKernel(x_zeroed, nullptr, 0, -1);
  for (const Net* layer : {&conv1, &relu, &conv2}) {
    auto next = layer->kernel_fn(k);
    ASSERT_TRUE(next.ok()) << next.status();
    k = *std::move(next);
    if (layer != &relu) zero_masked(&k);
  }
  ExpectArraysNear(k.nngp, *got->Find("nngp"), 1e-12, "nngp");
  ExpectArraysNear(*k.ntk, *got->Find("ntk"), 1e-12, "ntk");
  // And the masked positions are exactly zero.
  EXPECT_EQ((*got->Find("nngp"))[((0 * 2 + 1) * 6 + 4) * 6 + 2], 0.0);
}

class ConvMonteCarloTest : public ::testing::TestWithParam<int> {};

TEST_P(ConvMonteCarloTest, FiniteNetworksConvergeToTheNngp) {
  const McCase c = McCases()[GetParam()];
  const Array x1 = RandomInput({2, 6, 3}, 21), x2 = RandomInput({2, 6, 3}, 22);
  KernelOptions full;
  full.diagonal_spatial = false;  // ConvLocal alone would pick the diagonal layout.
  // The empirical NNGP of the 1-d output in the full layout (N1, N2, s, s'), over 100 networks.
  testing_util::ExpectNngpMatchesMonteCarlo(c.net, x1, x2, 100, /*seed=*/11, 2e-3, c.name, full);
}

INSTANTIATE_TEST_SUITE_P(AllConvolutions, ConvMonteCarloTest, ::testing::Range(0, 12),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return McCases()[info.param].name;
                         });

}  // namespace
}  // namespace nt
