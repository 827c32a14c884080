// kernel_fn semantics: get, errors, tiling, layouts, the Kernel path and the rank-0 NTK.
#include "core/kernel_fn.h"

#include <cmath>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "core/stax.h"
#include "gtest/gtest.h"

namespace nt {
namespace {

using stax::Dense;
using stax::Erf;
using stax::Relu;
using stax::serial;

Array Normal(Shape s, uint64_t seed) { return RngKey(seed).Normal(s); }

double MaxAbsDiff(const Array& a, const Array& b) {
  EXPECT_EQ(a.shape(), b.shape());
  double m = 0;
  for (int64_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

TEST(KernelFnTest, DenseMatchesClosedForm) {
  const Array x1 = Normal({5, 7}, 1), x2 = Normal({3, 7}, 2);
  auto k = Dense(4, 1.5, 0.3).kernel_fn(x1, &x2);
  ASSERT_TRUE(k.ok()) << k.status();
  const Array& nngp = *k->Find("nngp");
  for (int i = 0; i < 5; ++i) {
    for (int j = 0; j < 3; ++j) {
      double dot = 0;
      for (int c = 0; c < 7; ++c) dot += x1[i * 7 + c] * x2[j * 7 + c];
      EXPECT_NEAR(nngp[i * 3 + j], 2.25 * dot / 7 + 0.09, 1e-14);
      EXPECT_NEAR((*k->Find("ntk"))[i * 3 + j], nngp[i * 3 + j], 1e-14);
    }
  }
  EXPECT_EQ(k->Find("cov1")->shape(), (Shape{5}));
  EXPECT_EQ(k->Find("cov2")->shape(), (Shape{3}));
}

// One spatial position: the full layout still has a pair of axes per spatial axis, as layers expect.
TEST(KernelFnTest, SinglePositionFullLayoutHasAxisPairs) {
  const Array x = RngKey(3).Normal({3, 1, 1, 2});
  for (bool diagonal : {false, true}) {
    KernelOptions o;
    o.diagonal_spatial = diagonal;
    auto k = serial(Dense(4), Relu()).kernel_fn(x, nullptr, {"nngp", "cov1"}, o);
    ASSERT_TRUE(k.ok()) << k.status();
    EXPECT_EQ(ShapeToString(k->Find("nngp")->shape()), diagonal ? "(3, 3, 1, 1)" : "(3, 3, 1, 1, 1, 1)");
    EXPECT_EQ(ShapeToString(k->Find("cov1")->shape()), diagonal ? "(3, 1, 1)" : "(3, 1, 1, 1, 1)");
  }
}

TEST(KernelFnTest, TileSizesAgreeAndMirrorTilesAreSymmetric) {
  const Array x = Normal({37, 9}, 3);
  auto net = serial(Dense(8, 1.3, 0.2), Relu(), Dense(8, 1.1), Erf(), Dense(1));
  KernelOptions o;
  o.tile_size = 64;
  auto ref = ComputeKernel(*net.layer(), x, nullptr, o);
  ASSERT_TRUE(ref.ok()) << ref.status();
  for (int64_t t : {1, 5, 16, 36}) {
    o.tile_size = t;
    auto k = ComputeKernel(*net.layer(), x, nullptr, o);
    ASSERT_TRUE(k.ok());
    for (const char* name : {"nngp", "ntk", "cov1"}) {
      EXPECT_LT(MaxAbsDiff(*k->Find(name), *ref->Find(name)), 1e-13) << name << " tile " << t;
    }
  }
  const Array& nngp = *ref->Find("nngp");
  for (int i = 0; i < 37; ++i)
    for (int j = 0; j < 37; ++j) EXPECT_EQ(nngp[i * 37 + j], nngp[j * 37 + i]);
}

// Tiles are computed on demand from their index: ranges that split [0, num_tiles) emit every block of
// the kernel exactly once (triangular passes for x2 = None and the full-batch covariances included), and
// the counts the plan announces are the blocks sent.
TEST(KernelFnTest, TileRangesPartitionTheTiles) {
  const Array x1 = Normal({11, 4}, 21), x2 = Normal({7, 4}, 22);
  auto net = serial(Dense(8, 1.2, 0.1), Relu(), Dense(3));
  for (bool with_x2 : {false, true}) {
    for (bool diagonal_batch : {true, false}) {
      for (int64_t t : {1, 2, 3, 11}) {
        KernelOptions o;
        o.tile_size = t;
        o.diagonal_batch = diagonal_batch;
        o.get = {"nngp", "ntk", "cov1", "cov2"};
        if (!with_x2) o.get = {"nngp", "ntk", "cov1"};
        const Array* x2p = with_x2 ? &x2 : nullptr;
        auto whole = PlanKernel(*net.layer(), x1, x2p, o);
        ASSERT_TRUE(whole.ok()) << whole.status();
        const int64_t n = whole->num_tiles;
        std::map<std::tuple<std::string, int64_t, int64_t>, int> seen;
        int64_t messages = 0;
        for (int64_t begin = 0; begin < n; begin += 5) {
          o.tile_begin = begin;
          o.tile_end = std::min(n, begin + 5);
          auto plan = PlanKernel(*net.layer(), x1, x2p, o);
          ASSERT_TRUE(plan.ok()) << plan.status();
          std::mutex mu;
          int64_t sent = 0;
          ASSERT_TRUE(ComputeKernelTiles(*net.layer(), x1, x2p, *plan, o, [&](TileBlock&& b) {
                        std::lock_guard<std::mutex> lock(mu);
                        ++seen[{b.name, b.row, b.col}];
                        ++sent;
                        return absl::OkStatus();
                      }).ok());
          EXPECT_EQ(sent, plan->num_tile_messages);
          messages += sent;
        }
        EXPECT_EQ(messages, whole->num_tile_messages);
        const int64_t n1 = 11, n2 = with_x2 ? 7 : 11;
        auto tiles = [&](int64_t a) { return (a + t - 1) / t; };
        int64_t expected_nngp = with_x2 ? tiles(n1) * tiles(n2) : tiles(n1) * (tiles(n1) + 1) / 2;
        int64_t nngp_blocks = 0;
        for (const auto& [key, count] : seen) {
          EXPECT_EQ(count, 1) << std::get<0>(key) << " " << std::get<1>(key) << " " << std::get<2>(key);
          if (std::get<0>(key) == "nngp") {
            ++nngp_blocks;
            EXPECT_EQ(std::get<1>(key) % t, 0);
            EXPECT_EQ(std::get<2>(key) % t, 0);
            if (!with_x2) {
              EXPECT_LE(std::get<1>(key), std::get<2>(key));
            }
          }
        }
        EXPECT_EQ(nngp_blocks, expected_nngp) << "x2 " << with_x2 << " tile " << t;
      }
    }
  }
}

TEST(KernelFnTest, FullBatchCovarianceIsTheSelfKernel) {
  const Array x1 = Normal({6, 4}, 4), x2 = Normal({5, 4}, 5);
  auto net = serial(Dense(8, 1.2, 0.1), Relu(), Dense(3));
  KernelOptions o;
  o.diagonal_batch = false;
  o.tile_size = 2;
  auto k = ComputeKernel(*net.layer(), x1, &x2, o);
  ASSERT_TRUE(k.ok()) << k.status();
  auto k11 = net.kernel_fn(x1, nullptr, {"nngp"});
  auto k22 = net.kernel_fn(x2, nullptr, {"nngp"});
  ASSERT_TRUE(k11.ok() && k22.ok());
  EXPECT_EQ(k->Find("cov1")->shape(), (Shape{6, 6}));
  EXPECT_LT(MaxAbsDiff(*k->Find("cov1"), *k11->Find("nngp")), 1e-14);
  EXPECT_LT(MaxAbsDiff(*k->Find("cov2"), *k22->Find("nngp")), 1e-14);
}

// Upstream's 'CN' layout: batch_axis=1, channel_axis=0 on transposed inputs gives the same kernel.
TEST(KernelFnTest, ChannelFirstLayoutMatchesChannelLast) {
  const Array x1 = Normal({6, 5}, 19), x2 = Normal({4, 5}, 20);
  const Array t1 = Transpose(x1, std::vector<int>{1, 0}), t2 = Transpose(x2, std::vector<int>{1, 0});
  auto nc = serial(Dense(8, 1.3, 0.2), Relu(), Dense(3, 0.9, 0.1)).kernel_fn(x1, &x2);
  auto cn = serial(Dense(8, 1.3, 0.2, /*batch_axis=*/1, /*channel_axis=*/0), Relu(), Dense(3, 0.9, 0.1, 1, 0))
                .kernel_fn(t1, &t2);
  ASSERT_TRUE(nc.ok() && cn.ok()) << cn.status();
  for (const char* name : {"nngp", "ntk", "cov1", "cov2"}) {
    EXPECT_LT(MaxAbsDiff(*nc->Find(name), *cn->Find(name)), 1e-14) << name;
  }
  EXPECT_EQ(cn->meta.shape1, (Shape{3, 6}));
  // A layer declaring other axes than the kernel's: the infinite limit is ill-defined.
  auto bad = serial(Dense(8, 1.3, 0.2, 1, 0), Relu(), Dense(3)).kernel_fn(t1, &t2);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(bad.status().message()).find("ill-defined"), std::string::npos) << bad.status();
}

TEST(KernelFnTest, KernelPathEqualsArrayPath) {
  const Array x1 = Normal({4, 3}, 6), x2 = Normal({2, 3}, 7);
  auto first = serial(Dense(5, 1.4, 0.3), Relu());
  auto second = serial(Dense(5, 0.9, 0.1), Erf(), Dense(2));
  auto whole = serial(first, second);
  auto direct = whole.kernel_fn(x1, &x2);
  auto mid = first.kernel_fn(x1, &x2);
  ASSERT_TRUE(direct.ok() && mid.ok());
  Kernel k = mid->meta;
  k.nngp = *mid->Find("nngp");
  k.ntk = *mid->Find("ntk");
  k.cov1 = *mid->Find("cov1");
  k.cov2 = *mid->Find("cov2");
  auto out = second.kernel_fn(k);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_LT(MaxAbsDiff(out->nngp, *direct->Find("nngp")), 1e-14);
  EXPECT_LT(MaxAbsDiff(*out->ntk, *direct->Find("ntk")), 1e-14);
  EXPECT_EQ(out->shape1, (Shape{4, 2}));
}

TEST(KernelFnTest, NetworkWithoutParametersHasRankZeroNtk) {
  const Array x = Normal({3, 4}, 8);
  auto k = stax::Identity().kernel_fn(x);
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(k->Find("ntk")->shape(), Shape{});
  EXPECT_EQ((*k->Find("ntk"))[0], 0.0);
}

TEST(KernelFnTest, GetSelectsArraysInRequestOrder) {
  const Array x = Normal({3, 4}, 9);
  auto k = Dense(2).kernel_fn(x, nullptr, {"NTK", "cov1"});
  ASSERT_TRUE(k.ok());
  ASSERT_EQ(k->arrays.size(), 2u);
  EXPECT_EQ(k->arrays[0].first, "ntk");
  EXPECT_EQ(k->arrays[1].first, "cov1");
}

TEST(KernelFnTest, ErrorsNameTheFieldOrLayer) {
  const Array x = Normal({3, 4}, 10);
  auto expect = [](const absl::Status& st, absl::StatusCode code, const std::string& needle) {
    EXPECT_EQ(st.code(), code) << st;
    EXPECT_NE(std::string(st.message()).find(needle), std::string::npos) << st;
  };
  expect(Dense(2).kernel_fn(x, nullptr, {"nngp", "nngp"}).status(), absl::StatusCode::kInvalidArgument,
         "get");
  expect(Dense(2).kernel_fn(x, nullptr, {"bogus"}).status(), absl::StatusCode::kInvalidArgument, "bogus");
  expect(Relu().kernel_fn(x).status(), absl::StatusCode::kInvalidArgument, "Gaussian");
  expect(serial(Relu(), Relu()).kernel_fn(x).status(), absl::StatusCode::kInvalidArgument, "Relu");
  expect(Dense(0).kernel_fn(x).status(), absl::StatusCode::kInvalidArgument, "out_dim");
  expect(Dense(2, 1, std::nullopt, 0, -1, "wide").kernel_fn(x).status(), absl::StatusCode::kInvalidArgument,
         "parameterization");
  const Array x2 = Normal({3, 5}, 11);
  expect(Dense(2).kernel_fn(x, &x2).status(), absl::StatusCode::kInvalidArgument, "x2");
  Array bad = x;
  bad[5] = NAN;
  expect(Dense(2).kernel_fn(bad).status(), absl::StatusCode::kInvalidArgument, "x1");
  expect(Dense(2).kernel_fn(Normal({4}, 12)).status(), absl::StatusCode::kInvalidArgument, "x1");
  expect(stax::FanInSum().kernel_fn(x).status(), absl::StatusCode::kInvalidArgument, "FanInSum");
}

// mask_constant: a sample whose features are all masked vanishes from the kernel (its rows and columns
// are zero after Dense re-masks), and partly masked samples see their masked features as zeros.
TEST(MaskingTest, MaskedSamplesVanishAndMaskedFeaturesAreZeros) {
  const double kMask = 10.0;
  Array x1 = Normal({5, 4}, 16), x2 = Normal({3, 4}, 17);
  for (int c = 0; c < 4; ++c) x1[2 * 4 + c] = kMask;  // Sample 2 of x1 fully masked.
  x1[0 * 4 + 1] = kMask;                              // One feature of sample 0.
  x2[1 * 4 + 3] = kMask;                              // One feature of sample 1 of x2.
  Array z1 = x1, z2 = x2;
  for (double& v : z1.vec()) v = v == kMask ? 0.0 : v;
  for (double& v : z2.vec()) v = v == kMask ? 0.0 : v;
  const std::vector<stax::Net> nets = {
      serial(Dense(8, 1.5, 0.2), Relu(), Dense(8, 1.2, 0.1), Erf(), Dense(2)),
      serial(Dense(8, 1.1), stax::FanOut(2), stax::parallel(serial(Relu(), Dense(8)), stax::Identity()),
             stax::FanInSum(), Erf(0.5, 1.0, 0.3))};
  for (const stax::Net& net : nets) {
    KernelOptions masked;
    masked.mask_constant = kMask;
    masked.tile_size = 2;
    auto k = ComputeKernel(*net.layer(), x1, &x2, masked);
    ASSERT_TRUE(k.ok()) << k.status();
    auto plain = ComputeKernel(*net.layer(), z1, &z2, KernelOptions{});
    ASSERT_TRUE(plain.ok());
    for (const char* name : {"nngp", "ntk"}) {
      const Array& a = *k->Find(name);
      const Array& b = *plain->Find(name);
      for (int i = 0; i < 5; ++i) {
        for (int j = 0; j < 3; ++j) {
          if (i == 2) {
            EXPECT_EQ(a[i * 3 + j], 0.0) << name << " " << i << "," << j;
          } else {
            EXPECT_NEAR(a[i * 3 + j], b[i * 3 + j], 1e-12) << name << " " << i << "," << j;
          }
        }
      }
    }
    EXPECT_EQ((*k->Find("cov1"))[2], 0.0);
    EXPECT_NEAR((*k->Find("cov1"))[0], (*plain->Find("cov1"))[0], 1e-12);
    EXPECT_NEAR((*k->Find("cov2"))[1], (*plain->Find("cov2"))[1], 1e-12);
  }
}

TEST(MaskingTest, NanMaskConstantMasksNanEntries) {
  Array x = Normal({4, 3}, 18);
  for (int c = 0; c < 3; ++c) x[1 * 3 + c] = NAN;
  KernelOptions o;
  o.mask_constant = NAN;
  auto k = ComputeKernel(*serial(Dense(4), Relu(), Dense(1)).layer(), x, nullptr, o);
  ASSERT_TRUE(k.ok()) << k.status();
  const Array& nngp = *k->Find("nngp");
  for (int j = 0; j < 4; ++j) {
    EXPECT_EQ(nngp[1 * 4 + j], 0.0);
    EXPECT_EQ(nngp[j * 4 + 1], 0.0);
  }
  EXPECT_GT(nngp[0], 0.0);
  // Without masking, NaN inputs are refused.
  EXPECT_EQ(ComputeKernel(*Dense(2).layer(), x, nullptr, KernelOptions{}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MaskingTest, ChannelDependentMasksAreRefusedWhenReMasking) {
  // A re-masking layer (Erf) reached by a mask that still differs between channels: upstream's
  // NotImplementedError. Built through the Kernel path, since kernel_fn always puts Dense first.
  Kernel k;
  k.nngp = Array({1, 1}, 1.0);
  k.cov1 = Array({1}, 1.0);
  k.shape1 = k.shape2 = {1, 2};
  k.is_gaussian = true;
  k.mask1 = Array({1, 2}, 0.0);
  (*k.mask1)[1] = 1.0;
  auto out = Erf().kernel_fn(k);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kUnimplemented) << out.status();
}

TEST(KernelFnTest, X1IsX2DetectsEqualInputs) {
  const Array x = Normal({3, 4}, 13);
  const Array y = x;
  auto k = Dense(2).kernel_fn(x, &y);
  ASSERT_TRUE(k.ok());
  EXPECT_TRUE(k->meta.x1_is_x2);
  const Array z = Normal({3, 4}, 14);
  EXPECT_FALSE(Dense(2).kernel_fn(x, &z)->meta.x1_is_x2);
}

TEST(KernelFnTest, CancellationStopsWork) {
  const Array x = Normal({300, 4}, 15);
  std::atomic<bool> cancelled{true};
  KernelOptions o;
  o.cancelled = &cancelled;
  o.tile_size = 10;
  auto k = ComputeKernel(*serial(Dense(4), Relu()).layer(), x, nullptr, o);
  EXPECT_EQ(k.status().code(), absl::StatusCode::kCancelled);
}

// Without cov1/cov2 in `get`, tiles carry the covariances as spatial diagonals where every layer allows it
// (Kernel::cov_diagonal_only); the NNGP and NTK must not change.
TEST(KernelFnTest, DiagonalOnlyCovariancesLeaveNngpAndNtkUnchanged) {
  using namespace stax;  // NOLINT
  const Array x1 = Normal({3, 6, 5, 2}, 21), x2 = Normal({2, 6, 5, 2}, 22);
  const std::vector<Net> nets = {
      serial(Conv(4, {3, 3}, {}, "SAME", 1.4, 0.2), Relu(), Conv(4, {2, 3}, {2, 1}, "VALID", 1.1, 0.1), Erf(),
             GlobalAvgPool()),
      serial(Conv(4, {3, 3}, {}, "CIRCULAR", 1.2, 0.3), Gelu(), Conv(4, {3, 3}, {}, "SAME"), GlobalSumPool()),
      serial(ConvTranspose(4, {2, 2}, {2, 1}, "SAME", 1.3, 0.2), Relu(), Conv(4, {3, 3}, {}, "SAME"), Relu()),
      serial(ConvLocal(4, {3, 3}, {}, "SAME", 1.3, 0.2), Relu(), Conv(4, {3, 3}, {}, "SAME"), Relu(),
             Flatten(), Dense(3), Relu()),
      serial(Dense(4, 1.2, 0.1), repeat(serial(Conv(4, {3, 3}, {}, "SAME"), Sin()), 2), GlobalAvgPool()),
      // A pooling layer reads off-diagonal covariances: the engine keeps them whole here.
      serial(Conv(4, {3, 3}, {}, "SAME"), Relu(), AvgPool({2, 2}), Conv(4, {2, 2}), Relu(), GlobalAvgPool()),
  };
  for (size_t i = 0; i < nets.size(); ++i) {
    for (const Array* x2p : {&x2, static_cast<const Array*>(nullptr)}) {
      KernelOptions o;
      o.tile_size = 1;
      auto lean = nets[i].kernel_fn(x1, x2p, {"nngp", "ntk"}, o);
      auto whole = nets[i].kernel_fn(x1, x2p, {"nngp", "ntk", "cov1"}, o);
      ASSERT_TRUE(lean.ok() && whole.ok()) << i << ": " << lean.status() << " " << whole.status();
      for (const char* name : {"nngp", "ntk"}) {
        const Array& a = *lean->Find(name);
        const Array& b = *whole->Find(name);
        ASSERT_EQ(a.shape(), b.shape());
        for (int64_t e = 0; e < a.size(); ++e) {
          ASSERT_NEAR(a[e], b[e], 1e-12 * (1 + std::abs(b[e]))) << "network " << i << " " << name << " " << e;
        }
      }
    }
  }
}

}  // namespace
}  // namespace nt
