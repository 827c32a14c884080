// AvgPool, SumPool, GlobalAvgPool and GlobalSumPool: exact kernel identities (pooling is linear, so the
// kernel of the pooled input equals the 1-sample empirical kernel of the pooled values), hand-computed
// values, layout consistency, masks, requirement errors, and Monte Carlo agreement inside networks.
#include "core/pooling.h"

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/flatten.h"
#include "core/stax.h"
#include "gtest/gtest.h"
#include "tests/layer_test_util.h"

namespace nt {
namespace {

using stax::Net;

Net Pool(PoolKind kind, PoolOptions o) { return Net(std::make_shared<PoolLayer>(kind, std::move(o))); }
Net AvgPool(std::vector<int64_t> window, std::vector<int64_t> strides = {}, Padding padding = Padding::kValid,
            bool normalize_edges = false) {
  return Pool(PoolKind::kAvg, PoolOptions{window, strides, padding, normalize_edges});
}
Net SumPool(std::vector<int64_t> window, std::vector<int64_t> strides = {},
            Padding padding = Padding::kValid) {
  return Pool(PoolKind::kSum, PoolOptions{window, strides, padding, false});
}
Net GlobalPool(PoolKind kind, GlobalPoolOptions o = {}) {
  return Net(std::make_shared<GlobalPoolLayer>(kind, o));
}

using testing_util::ApplyNet;
using testing_util::BatchDiagonal;
using testing_util::CosNormal;
using testing_util::EmpiricalNngp;
using testing_util::ExpectArraysNear;
using testing_util::Get;
using testing_util::InputKernel;

// kernel_fn(x1, x2) of a parameter-free linear net equals the empirical kernel of its outputs.
void ExpectKernelIsEmpiricalKernel(const Net& net, const Array& x1, const Array& x2, const std::string& what,
                                   std::optional<double> mask_constant = std::nullopt) {
  KernelOptions opts;
  opts.mask_constant = mask_constant;
  auto k = net.kernel_fn(x1, &x2, {"nngp", "ntk", "cov1", "cov2"}, opts);
  ASSERT_TRUE(k.ok()) << what << ": " << k.status();
  const Array y1 = ApplyNet(net, x1, mask_constant), y2 = ApplyNet(net, x2, mask_constant);
  auto init = net.init_fn(RngKey(0), x1.shape());
  ASSERT_TRUE(init.ok());
  EXPECT_EQ(ShapeToString(init->first), ShapeToString(y1.shape())) << what;
  EXPECT_EQ(ShapeToString(k->meta.shape1), ShapeToString(y1.shape())) << what;
  EXPECT_EQ(ShapeToString(k->meta.shape2), ShapeToString(y2.shape())) << what;
  const int b = k->meta.batch_axis, c = k->meta.channel_axis;
  ExpectArraysNear(EmpiricalNngp(y1, y2, b, c), Get(*k, "nngp"), 1e-12, what + " nngp");
  ExpectArraysNear(BatchDiagonal(EmpiricalNngp(y1, y1, b, c)), Get(*k, "cov1"), 1e-12, what + " cov1");
  ExpectArraysNear(BatchDiagonal(EmpiricalNngp(y2, y2, b, c)), Get(*k, "cov2"), 1e-12, what + " cov2");
  // No parameters: the NTK stays the scalar zero of the input.
  EXPECT_EQ(Get(*k, "ntk").rank(), 0) << what;
}

std::string Describe(PoolKind kind, const PoolOptions& o) {
  std::string s = kind == PoolKind::kAvg ? "AvgPool(" : "SumPool(";
  for (int64_t w : o.window_shape) s += std::to_string(w) + ",";
  s += " strides ";
  for (int64_t w : o.strides) s += std::to_string(w) + ",";
  return s + " " + PaddingName(o.padding) + (o.normalize_edges ? ", normalize_edges)" : ")");
}

// ---------------------------------------------------------------------------------------------------
// Exact identities

TEST(PoolingTest, AvgPoolKernelEqualsEmpiricalKernelOfPooledInputs1d) {
  const Array x1 = CosNormal({3, 7, 2}, 1), x2 = CosNormal({2, 7, 2}, 2, 2.0);
  for (PoolKind kind : {PoolKind::kAvg, PoolKind::kSum}) {
    for (Padding padding : {Padding::kValid, Padding::kSame, Padding::kCircular}) {
      for (bool normalize : {false, true}) {
        if (normalize && kind == PoolKind::kSum) continue;
        for (int64_t w : {1, 2, 3, 4}) {
          for (int64_t s : {1, 2, 3}) {
            PoolOptions o{{w}, {s}, padding, normalize};
            ExpectKernelIsEmpiricalKernel(Pool(kind, o), x1, x2, Describe(kind, o));
          }
        }
      }
    }
  }
}

// Windows longer than the input: SAME pads more than the input length and CIRCULAR wraps repeatedly.
TEST(PoolingTest, WindowsLongerThanTheInputEqualEmpiricalKernel) {
  const Array x1 = CosNormal({2, 3, 2}, 36), x2 = CosNormal({3, 3, 2}, 37);
  for (Padding padding : {Padding::kSame, Padding::kCircular}) {
    for (int64_t w : {4, 5, 8}) {
      for (int64_t s : {1, 2}) {
        PoolOptions o{{w}, {s}, padding, padding == Padding::kSame};
        ExpectKernelIsEmpiricalKernel(Pool(PoolKind::kAvg, o), x1, x2, Describe(PoolKind::kAvg, o));
        o.normalize_edges = false;
        ExpectKernelIsEmpiricalKernel(Pool(PoolKind::kSum, o), x1, x2, Describe(PoolKind::kSum, o));
      }
    }
  }
}

TEST(PoolingTest, AvgPoolKernelEqualsEmpiricalKernelOfPooledInputs2d) {
  const Array x1 = CosNormal({2, 5, 4, 3}, 3), x2 = CosNormal({3, 5, 4, 3}, 4, 2.0);
  const std::vector<std::vector<int64_t>> windows = {{2, 3}, {3, 1}, {1, 1}, {5, 2}};
  const std::vector<std::vector<int64_t>> strides = {{1, 2}, {2, 2}, {}, {3, 1}};
  for (PoolKind kind : {PoolKind::kAvg, PoolKind::kSum}) {
    for (Padding padding : {Padding::kValid, Padding::kSame, Padding::kCircular}) {
      for (bool normalize : {false, true}) {
        if (normalize && kind == PoolKind::kSum) continue;
        for (size_t i = 0; i < windows.size(); ++i) {
          PoolOptions o{windows[i], strides[i], padding, normalize};
          ExpectKernelIsEmpiricalKernel(Pool(kind, o), x1, x2, Describe(kind, o));
        }
      }
    }
  }
}

TEST(PoolingTest, AvgPoolWithNonDefaultAxesEqualsEmpiricalKernel) {
  // Activations laid out (C, N, H, W): batch axis 1, channel axis 0.
  const Array x1 = CosNormal({2, 3, 4, 5}, 5), x2 = CosNormal({2, 2, 4, 5}, 6);
  for (Padding padding : {Padding::kValid, Padding::kSame, Padding::kCircular}) {
    PoolOptions o{{2, 3}, {2, 1}, padding, true, /*batch_axis=*/1, /*channel_axis=*/0};
    ExpectKernelIsEmpiricalKernel(Pool(PoolKind::kAvg, o), x1, x2, Describe(PoolKind::kAvg, o));
  }
  // Channels in the middle: (N, H, C, W).
  const Array y1 = CosNormal({2, 4, 3, 5}, 7), y2 = CosNormal({3, 4, 3, 5}, 8);
  PoolOptions o{{3, 2}, {1, 2}, Padding::kSame, false, 0, 2};
  ExpectKernelIsEmpiricalKernel(Pool(PoolKind::kSum, {{3, 2}, {1, 2}, Padding::kSame, false, 0, 2}), y1, y2,
                                "SumPool channel axis 2");
  ExpectKernelIsEmpiricalKernel(Pool(PoolKind::kAvg, o), y1, y2, "AvgPool channel axis 2");
}

TEST(PoolingTest, GlobalPoolKernelEqualsEmpiricalKernelOfPooledInputs) {
  const Array x1 = CosNormal({3, 4, 5, 2}, 9), x2 = CosNormal({2, 4, 5, 2}, 10, 2.0);
  for (PoolKind kind : {PoolKind::kAvg, PoolKind::kSum}) {
    ExpectKernelIsEmpiricalKernel(GlobalPool(kind), x1, x2, kind == PoolKind::kAvg ? "GAP" : "GSP");
    // After windowed pooling too.
    ExpectKernelIsEmpiricalKernel(stax::serial(AvgPool({2, 2}, {1, 2}, Padding::kSame), GlobalPool(kind)), x1,
                                  x2, "AvgPool then global pool");
  }
  // Channel before batch: (C, H, N) gives outputs (C, N).
  const Array y1 = CosNormal({2, 5, 3}, 11), y2 = CosNormal({2, 5, 4}, 12);
  for (PoolKind kind : {PoolKind::kAvg, PoolKind::kSum}) {
    Net net = GlobalPool(kind, GlobalPoolOptions{2, 0});
    ExpectKernelIsEmpiricalKernel(net, y1, y2, "global pool (C, H, N)");
    auto k = net.kernel_fn(y1, &y2, {"nngp"});
    ASSERT_TRUE(k.ok()) << k.status();
    EXPECT_EQ(k->meta.batch_axis, 1);
    EXPECT_EQ(k->meta.channel_axis, 0);
  }
  // No spatial axes: the identity.
  const Array z1 = CosNormal({3, 4}, 13), z2 = CosNormal({2, 4}, 14);
  ExpectKernelIsEmpiricalKernel(GlobalPool(PoolKind::kAvg), z1, z2, "GAP without spatial axes");
}

// A 1-d example by hand: x = [1, 2, 3] (one channel), window 2, stride 1, so T[p, p'] = x_p x_p' and the
// pooled kernel is y y^T for the pooled values y.
TEST(PoolingTest, AvgPool1dHandComputedValues) {
  const Array x({1, 3, 1}, std::vector<double>{1, 2, 3});
  struct Case {
    std::string name;
    Net net;
    std::vector<double> y;
  };
  const std::vector<Case> cases = {
      {"SAME", AvgPool({2}, {1}, Padding::kSame), {1.5, 2.5, 1.5}},
      {"SAME normalize_edges", AvgPool({2}, {1}, Padding::kSame, true), {1.5, 2.5, 3.0}},
      {"CIRCULAR", AvgPool({2}, {1}, Padding::kCircular), {1.5, 2.5, 2.0}},
      {"CIRCULAR ignores normalize_edges", AvgPool({2}, {1}, Padding::kCircular, true), {1.5, 2.5, 2.0}},
      {"VALID", AvgPool({2}, {1}, Padding::kValid), {1.5, 2.5}},
      {"SumPool SAME", SumPool({2}, {1}, Padding::kSame), {3.0, 5.0, 3.0}},
      {"SAME stride 2 window 3", AvgPool({3}, {2}, Padding::kSame), {1.0, 5.0 / 3.0}},
      {"SAME stride 2 window 3 normalize_edges", AvgPool({3}, {2}, Padding::kSame, true), {1.5, 2.5}},
  };
  for (const Case& c : cases) {
    const Array y = ApplyNet(c.net, x);
    const int64_t m = static_cast<int64_t>(c.y.size());
    ASSERT_EQ(ShapeToString(y.shape()), ShapeToString({1, m, 1})) << c.name;
    for (int64_t i = 0; i < m; ++i) EXPECT_NEAR(y[i], c.y[i], 1e-14) << c.name;
    auto k = c.net.kernel_fn(x, nullptr, {"nngp", "cov1"});
    ASSERT_TRUE(k.ok()) << c.name << ": " << k.status();
    const Array& nngp = Get(*k, "nngp");
    ASSERT_EQ(ShapeToString(nngp.shape()), ShapeToString({1, 1, m, m})) << c.name;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < m; ++j) EXPECT_NEAR(nngp[i * m + j], c.y[i] * c.y[j], 1e-13) << c.name;
    }
  }
}

// Diagonal layout (Kernel path): T[p] = x_p^2 = [1, 4, 9]; AVG divides the window sum by nu(q)^2.
TEST(PoolingTest, AvgPool1dDiagonalLayoutDividesByNormaliserSquared) {
  Kernel k;
  k.nngp = Array({1, 1, 3}, std::vector<double>{1, 4, 9});
  k.cov1 = Array({1, 3}, std::vector<double>{1, 4, 9});
  k.ntk = Array::Scalar(0.0);
  k.diagonal_spatial = true;
  k.shape1 = k.shape2 = {1, 3, 1};
  k.batch_axis = 0;
  k.channel_axis = 2;
  struct Case {
    Net net;
    std::vector<double> expected;
  };
  const std::vector<Case> cases = {
      {AvgPool({2}, {1}, Padding::kSame), {5.0 / 4, 13.0 / 4, 9.0 / 4}},
      {AvgPool({2}, {1}, Padding::kSame, true), {5.0 / 4, 13.0 / 4, 9.0}},
      {AvgPool({2}, {1}, Padding::kCircular), {5.0 / 4, 13.0 / 4, 10.0 / 4}},
      {SumPool({2}, {1}, Padding::kSame), {5.0, 13.0, 9.0}},
      {AvgPool({3}, {1}, Padding::kValid), {14.0 / 9}},
  };
  for (const Case& c : cases) {
    auto out = c.net.kernel_fn(k);
    ASSERT_TRUE(out.ok()) << out.status();
    ASSERT_EQ(out->nngp.size(), static_cast<int64_t>(c.expected.size()));
    for (size_t i = 0; i < c.expected.size(); ++i) {
      EXPECT_NEAR(out->nngp[i], c.expected[i], 1e-14);
      EXPECT_NEAR(out->cov1[i], c.expected[i], 1e-14);
    }
    EXPECT_EQ(out->ntk->rank(), 0);
    EXPECT_TRUE(out->diagonal_spatial);
  }
}

// upstream's StaxTest.test_avg_pool.
TEST(PoolingTest, AvgPoolOnOnesMatchesUpstreamValues) {
  const Array x1({4, 2, 3, 2}, 1.0), x2({3, 2, 3, 2}, 1.0);
  const double pattern[2][3] = {{1, 1, .5}, {.5, .5, .25}};
  for (bool normalize : {false, true}) {
    Net net = AvgPool({2, 2}, {1, 1}, Padding::kSame, normalize);
    const Array y = ApplyNet(net, x1);
    ASSERT_EQ(ShapeToString(y.shape()), ShapeToString({4, 2, 3, 2}));
    for (int64_t i = 0; i < y.size(); ++i) {
      const int64_t h = (i / 6) % 2, w = (i / 2) % 3;
      EXPECT_DOUBLE_EQ(y[i], normalize ? 1.0 : pattern[h][w]);
    }
    auto k = net.kernel_fn(x1, &x2, {"nngp", "cov1", "cov2"});
    ASSERT_TRUE(k.ok()) << k.status();
    const Array& nngp = Get(*k, "nngp");
    ASSERT_EQ(ShapeToString(nngp.shape()), ShapeToString({4, 3, 2, 2, 3, 3}));
    for (int64_t i = 0; i < nngp.size(); ++i) {
      const int64_t w2 = i % 3, w1 = (i / 3) % 3, h2 = (i / 9) % 2, h1 = (i / 18) % 2;
      EXPECT_DOUBLE_EQ(nngp[i], normalize ? 1.0 : pattern[h1][w1] * pattern[h2][w2]);
    }
    EXPECT_EQ(ShapeToString(Get(*k, "cov1").shape()), ShapeToString({4, 2, 2, 3, 3}));
    EXPECT_EQ(ShapeToString(Get(*k, "cov2").shape()), ShapeToString({3, 2, 2, 3, 3}));
  }
}

TEST(PoolingTest, SumPoolIsWindowSizeTimesAvgPool) {
  const Array x1 = CosNormal({3, 6, 5, 2}, 15), x2 = CosNormal({2, 6, 5, 2}, 16);
  for (Padding padding : {Padding::kValid, Padding::kSame, Padding::kCircular}) {
    const std::vector<int64_t> window{3, 2}, strides{2, 1};
    const double w = 6.0;
    Net avg = AvgPool(window, strides, padding), sum = SumPool(window, strides, padding);
    auto ka = stax::serial(stax::Dense(16, 1.3, 0.2), stax::Relu(), avg).kernel_fn(x1, &x2);
    auto ks = stax::serial(stax::Dense(16, 1.3, 0.2), stax::Relu(), sum).kernel_fn(x1, &x2);
    ASSERT_TRUE(ka.ok() && ks.ok()) << ka.status() << ks.status();
    for (const char* name : {"nngp", "ntk", "cov1", "cov2"}) {
      Array scaled = Get(*ka, name);
      for (double& v : scaled.vec()) v *= w * w;
      ExpectArraysNear(scaled, Get(*ks, name), 1e-12, std::string(PaddingName(padding)) + " " + name);
    }
    const Array ya = ApplyNet(avg, x1), ys = ApplyNet(sum, x1);
    ASSERT_EQ(ya.size(), ys.size());
    for (int64_t i = 0; i < ya.size(); ++i) EXPECT_NEAR(w * ya[i], ys[i], 1e-12);
  }
}

TEST(PoolingTest, GlobalSumPoolIsPositionsSquaredTimesGlobalAvgPool) {
  const Array x1 = CosNormal({3, 4, 5, 2}, 17), x2 = CosNormal({2, 4, 5, 2}, 18);
  const double p = 20;
  auto ka =
      stax::serial(stax::Dense(16, 1.3, 0.2), stax::Relu(), GlobalPool(PoolKind::kAvg)).kernel_fn(x1, &x2);
  auto ks =
      stax::serial(stax::Dense(16, 1.3, 0.2), stax::Relu(), GlobalPool(PoolKind::kSum)).kernel_fn(x1, &x2);
  ASSERT_TRUE(ka.ok() && ks.ok()) << ka.status() << ks.status();
  for (const char* name : {"nngp", "ntk", "cov1", "cov2"}) {
    Array scaled = Get(*ka, name);
    ASSERT_EQ(ShapeToString(scaled.shape()), ShapeToString(Get(*ks, name).shape()));
    for (double& v : scaled.vec()) v *= p * p;
    ExpectArraysNear(scaled, Get(*ks, name), 1e-12, name);
  }
}

// Where off-diagonal spatial entries vanish, the diagonal layout is exact: the spatial diagonal of the
// full-layout output equals the diagonal-layout output (the MAYBE requirement).
TEST(PoolingTest, DiagonalLayoutMatchesFullLayoutOnSpatiallyDiagonalKernels) {
  const int64_t n1 = 2, n2 = 3, h = 5, w = 4;
  const Array v1 = CosNormal({n1, n2, h, w}, 19), c1 = CosNormal({n1, h, w}, 20),
              c2 = CosNormal({n2, h, w}, 21);
  auto full_of = [&](const Array& diag, int batch_axes) {
    Shape s(diag.shape().begin(), diag.shape().begin() + batch_axes);
    for (int64_t d : {h, h, w, w}) s.push_back(d);
    Array out(s, 0.0);
    const int64_t rows = NumElements(Shape(s.begin(), s.begin() + batch_axes));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t i = 0; i < h; ++i) {
        for (int64_t j = 0; j < w; ++j)
          out[(((r * h + i) * h + i) * w + j) * w + j] = diag[(r * h + i) * w + j];
      }
    }
    return out;
  };
  Kernel diag;
  diag.nngp = v1;
  diag.ntk = CosNormal({n1, n2, h, w}, 22);
  diag.cov1 = c1;
  diag.cov2 = c2;
  diag.diagonal_spatial = true;
  diag.shape1 = {n1, h, w, 1};
  diag.shape2 = {n2, h, w, 1};
  diag.batch_axis = 0;
  diag.channel_axis = 3;
  Kernel full = diag;
  full.diagonal_spatial = false;
  full.nngp = full_of(diag.nngp, 2);
  full.ntk = full_of(*diag.ntk, 2);
  full.cov1 = full_of(diag.cov1, 1);
  full.cov2 = full_of(*diag.cov2, 1);

  std::vector<std::pair<std::string, Net>> nets;
  for (Padding padding : {Padding::kValid, Padding::kSame, Padding::kCircular}) {
    for (bool normalize : {false, true}) {
      nets.emplace_back(std::string("AvgPool ") + PaddingName(padding),
                        AvgPool({3, 2}, {2, 1}, padding, normalize));
    }
    nets.emplace_back(std::string("SumPool ") + PaddingName(padding), SumPool({2, 3}, {1, 2}, padding));
  }
  nets.emplace_back("GlobalAvgPool", GlobalPool(PoolKind::kAvg));
  nets.emplace_back("GlobalSumPool", GlobalPool(PoolKind::kSum));
  for (const auto& [name, net] : nets) {
    auto d = net.kernel_fn(diag);
    auto f = net.kernel_fn(full);
    ASSERT_TRUE(d.ok() && f.ok()) << name << d.status() << f.status();
    EXPECT_TRUE(d->diagonal_spatial) << name;
    const int s = d->num_spatial();
    auto spatial_diag = [&](const Array& a, int batch_axes) {
      if (s == 0) return a;
      // Collapse the batch axes into one, take the spatial diagonal, restore them.
      Shape lead(a.shape().begin(), a.shape().begin() + batch_axes);
      Shape flat{NumElements(lead)};
      flat.insert(flat.end(), a.shape().begin() + batch_axes, a.shape().end());
      Array g = GetDiagonal(a.Reshaped(flat), 1, false, s);
      Shape back = lead;
      back.insert(back.end(), g.shape().begin() + 1, g.shape().end());
      return std::move(g).Reshaped(back);
    };
    ExpectArraysNear(spatial_diag(f->nngp, 2), d->nngp, 1e-12, name + " nngp");
    ExpectArraysNear(spatial_diag(*f->ntk, 2), *d->ntk, 1e-12, name + " ntk");
    ExpectArraysNear(spatial_diag(f->cov1, 1), d->cov1, 1e-12, name + " cov1");
    ExpectArraysNear(spatial_diag(*f->cov2, 1), *d->cov2, 1e-12, name + " cov2");
  }
}

TEST(PoolingTest, ReversedKernelGivesTheSameResultInNaturalOrder) {
  const Array x1 = CosNormal({2, 5, 4, 2}, 23), x2 = CosNormal({3, 5, 4, 2}, 24);
  const Kernel k = InputKernel(x1, &x2, 0, -1);
  Kernel reversed = k;
  reversed.Reverse();
  ASSERT_TRUE(reversed.is_reversed);
  for (Net net : {AvgPool({3, 2}, {2, 1}, Padding::kSame, true), SumPool({2, 3}, {1, 2}, Padding::kCircular),
                  GlobalPool(PoolKind::kAvg)}) {
    auto a = net.kernel_fn(k);
    auto b = net.kernel_fn(reversed);
    ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
    EXPECT_FALSE(b->is_reversed);
    ExpectArraysNear(a->nngp, b->nngp, 1e-14, "nngp");
    ExpectArraysNear(a->cov1, b->cov1, 1e-14, "cov1");
    ExpectArraysNear(*a->cov2, *b->cov2, 1e-14, "cov2");
  }
}

TEST(PoolingTest, ShapesAndMetadata) {
  PoolLayer pool(PoolKind::kAvg, PoolOptions{{3, 2}, {2, 2}, Padding::kValid});
  auto s = pool.OutputShape(ShapeFlow::Single({4, 7, 5, 3}));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(ShapeToString(s->single()), ShapeToString({4, 3, 2, 3}));
  PoolLayer same(PoolKind::kSum, PoolOptions{{3, 2}, {2, 2}, Padding::kCircular});
  EXPECT_EQ(ShapeToString(same.OutputShape(ShapeFlow::Single({4, 7, 5, 3}))->single()),
            ShapeToString({4, 4, 3, 3}));
  EXPECT_EQ(pool.name(), "AvgPool");
  EXPECT_EQ(same.name(), "SumPool");
  EXPECT_TRUE(pool.remask_kernel());
  EXPECT_EQ(*pool.requirements().diagonal_spatial, (Diagonal{Bool::kMaybe, Bool::kNo}));

  GlobalPoolLayer gap(PoolKind::kAvg, GlobalPoolOptions{1, 0});
  EXPECT_EQ(ShapeToString(gap.OutputShape(ShapeFlow::Single({3, 4, 5, 6}))->single()), ShapeToString({3, 4}));
  EXPECT_EQ(gap.name(), "GlobalAvgPool");
  EXPECT_EQ(GlobalPoolLayer(PoolKind::kSum, {}).name(), "GlobalSumPool");
  EXPECT_FALSE(gap.remask_kernel());
  EXPECT_EQ(*gap.requirements().diagonal_spatial, (Diagonal{Bool::kMaybe, Bool::kYes}));
  EXPECT_EQ(*gap.requirements().batch_axis, 1);
  EXPECT_EQ(*gap.requirements().channel_axis, 0);

  // Params are empty; init reports the output shape.
  auto init = AvgPool({2}, {2}).init_fn(RngKey(1), {3, 5, 2});
  ASSERT_TRUE(init.ok());
  EXPECT_EQ(ShapeToString(init->first), ShapeToString({3, 2, 2}));
  EXPECT_TRUE(init->second.arrays.empty());

  // is_reversed is reset and axes follow the batch/channel order after global pooling.
  const Array x = CosNormal({2, 3, 4, 2}, 25);
  Kernel k = InputKernel(x, &x, 0, -1);
  k.Reverse();
  auto out = GlobalPool(PoolKind::kSum).kernel_fn(k);
  ASSERT_TRUE(out.ok());
  EXPECT_FALSE(out->is_reversed);
  EXPECT_EQ(out->batch_axis, 0);
  EXPECT_EQ(out->channel_axis, 1);
  EXPECT_EQ(ShapeToString(out->nngp.shape()), ShapeToString({2, 2}));
  EXPECT_EQ(ShapeToString(out->cov1.shape()), ShapeToString({2}));
  EXPECT_EQ(out->ntk->rank(), 0);
}

// ---------------------------------------------------------------------------------------------------
// Requirements

TEST(PoolingTest, RequirementFolding) {
  using stax::Dense;
  using stax::Relu;
  using stax::serial;
  EXPECT_EQ(*serial(AvgPool({2}), stax::Identity()).layer()->requirements().diagonal_spatial,
            (Diagonal{Bool::kMaybe, Bool::kNo}));
  // A Dense before pooling needs the full layout.
  EXPECT_EQ(
      *serial(Dense(4), AvgPool({2}), GlobalPool(PoolKind::kAvg)).layer()->requirements().diagonal_spatial,
      (Diagonal{Bool::kNo, Bool::kYes}));
  EXPECT_EQ(*serial(Dense(4), GlobalPool(PoolKind::kAvg)).layer()->requirements().diagonal_spatial,
            (Diagonal{Bool::kNo, Bool::kYes}));
  // Pooling twice needs the full layout (the first pool creates off-diagonals); once before Flatten
  // does not.
  EXPECT_EQ(*serial(AvgPool({2}), GlobalPool(PoolKind::kAvg)).layer()->requirements().diagonal_spatial,
            (Diagonal{Bool::kNo, Bool::kYes}));
  EXPECT_EQ(*serial(AvgPool({2}), Net(std::make_shared<FlattenLayer>(FlattenOptions{})))
                 .layer()
                 ->requirements()
                 .diagonal_spatial,
            (Diagonal{Bool::kMaybe, Bool::kYes}));
}

TEST(PoolingTest, DiagonalSpatialIsRefusedWherePoolingNeedsTheFullKernel) {
  const Array x = CosNormal({2, 5, 3}, 26);
  KernelOptions diag;
  diag.diagonal_spatial = true;
  for (Net net : {stax::serial(stax::Dense(4), AvgPool({2}, {1}, Padding::kSame), GlobalPool(PoolKind::kAvg)),
                  stax::serial(stax::Dense(4), stax::Relu(), GlobalPool(PoolKind::kSum)),
                  stax::serial(stax::Dense(4), SumPool({2}))}) {
    auto k = net.kernel_fn(x, nullptr, {"nngp"}, diag);
    EXPECT_EQ(k.status().code(), absl::StatusCode::kInvalidArgument) << k.status();
    // The default picks the full layout and works.
    EXPECT_TRUE(net.kernel_fn(x, nullptr, {"nngp"}).ok());
  }
  // Pooling applied directly to the inputs is MAYBE: before Flatten a forced diagonal layout is accepted
  // (exact when the inputs' off-diagonals vanish), before a global pool it is not.
  auto flat = stax::serial(AvgPool({2}), Net(std::make_shared<FlattenLayer>(FlattenOptions{})))
                  .kernel_fn(x, nullptr, {"nngp"}, diag);
  EXPECT_TRUE(flat.ok()) << flat.status();
  auto global = stax::serial(AvgPool({2}), GlobalPool(PoolKind::kAvg)).kernel_fn(x, nullptr, {"nngp"}, diag);
  EXPECT_EQ(global.status().code(), absl::StatusCode::kInvalidArgument) << global.status();
}

TEST(PoolingTest, AxisDeclarationsAreChecked) {
  const Array x = CosNormal({2, 5, 3}, 27);
  // Dense fixes batch axis 0; a pooling layer declaring batch axis 1 is ill-defined.
  auto k =
      stax::serial(stax::Dense(4), Pool(PoolKind::kAvg, PoolOptions{{2}, {}, Padding::kValid, false, 1, -1}))
          .kernel_fn(x, nullptr, {"nngp"});
  EXPECT_EQ(k.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(k.status().message().find("AvgPool"), std::string::npos) << k.status();
  auto g = stax::serial(stax::Dense(4), GlobalPool(PoolKind::kAvg, GlobalPoolOptions{0, 1}))
               .kernel_fn(x, nullptr, {"nngp"});
  EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------------
// Errors

TEST(PoolingTest, ValidateRejectsBadArguments) {
  auto expect_invalid = [](const absl::Status& st, const std::string& field) {
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_NE(st.message().find(field), std::string::npos) << st;
  };
  EXPECT_TRUE(PoolLayer::Validate(PoolKind::kAvg, PoolOptions{{2, 3}, {1, 2}}).ok());
  expect_invalid(PoolLayer::Validate(PoolKind::kAvg, PoolOptions{{2, 0}}), "AvgPool.window_shape");
  expect_invalid(PoolLayer::Validate(PoolKind::kSum, PoolOptions{{-1}}), "SumPool.window_shape");
  expect_invalid(PoolLayer::Validate(PoolKind::kAvg, PoolOptions{{2, 2}, {1}}), "AvgPool.strides");
  expect_invalid(PoolLayer::Validate(PoolKind::kAvg, PoolOptions{{2, 2}, {1, 0}}), "AvgPool.strides");
  expect_invalid(PoolLayer::Validate(PoolKind::kSum, PoolOptions{{2}, {}, Padding::kSame, true}),
                 "SumPool.normalize_edges");
  // The same checks guard the layer itself when Validate was skipped.
  auto init = AvgPool({0}).init_fn(RngKey(0), {2, 3, 1});
  expect_invalid(init.status(), "AvgPool.window_shape");
}

TEST(PoolingTest, ShapeErrorsNameTheField) {
  const Array x = CosNormal({2, 5, 3}, 28);
  auto expect_invalid = [](const absl::Status& st, const std::string& field) {
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_NE(st.message().find(field), std::string::npos) << st;
  };
  // Two window entries for one spatial axis.
  expect_invalid(AvgPool({2, 2}).kernel_fn(x, nullptr, {"nngp"}).status(), "window_shape");
  expect_invalid(AvgPool({2, 2}).init_fn(RngKey(0), x.shape()).status(), "window_shape");
  // VALID window longer than the input.
  expect_invalid(AvgPool({6}).kernel_fn(x, nullptr, {"nngp"}).status(), "window_shape");
  // SAME is fine with it.
  EXPECT_TRUE(AvgPool({6}, {}, Padding::kSame).kernel_fn(x, nullptr, {"nngp"}).ok());
  // Batch and channel on the same axis.
  expect_invalid(Pool(PoolKind::kAvg, PoolOptions{{2}, {}, Padding::kValid, false, 0, 3})
                     .init_fn(RngKey(0), {2, 5, 3})
                     .status(),
                 "channel_axis");
  expect_invalid(GlobalPool(PoolKind::kAvg, GlobalPoolOptions{2, -1}).init_fn(RngKey(0), {2, 5, 3}).status(),
                 "channel_axis");
  expect_invalid(GlobalPool(PoolKind::kAvg, GlobalPoolOptions{0, 5}).init_fn(RngKey(0), {2, 5, 3}).status(),
                 "channel_axis");
}

// ---------------------------------------------------------------------------------------------------
// Masks

// The masks took effect: every entry involving the fully masked second sample of x2 is zero.
void ExpectSecondSampleMaskedOut(const Net& net, const Array& x1, const Array& x2, double mask_constant) {
  KernelOptions opts;
  opts.mask_constant = mask_constant;
  auto k = net.kernel_fn(x1, &x2, {"nngp", "cov2"}, opts);
  ASSERT_TRUE(k.ok()) << k.status();
  const Array& nngp = Get(*k, "nngp");
  const int64_t n2 = nngp.dim(1), inner = nngp.size() / (nngp.dim(0) * n2);
  double nonzero = 0;
  for (int64_t i = 0; i < nngp.dim(0); ++i) {
    for (int64_t e = 0; e < inner; ++e) nonzero += std::abs(nngp[(i * n2 + 1) * inner + e]);
  }
  EXPECT_EQ(nonzero, 0.0);
  const Array& cov2 = Get(*k, "cov2");
  for (int64_t e = cov2.size() / 2; e < cov2.size(); ++e) EXPECT_EQ(cov2[e], 0.0);
}

TEST(PoolingTest, MaskedPoolingKernelEqualsEmpiricalKernelOfMaskedOutputs) {
  // One input channel, so the input masks are channel-collapsed already.
  Array x1 = CosNormal({3, 7, 1}, 29), x2 = CosNormal({2, 7, 1}, 30);
  const double mc = 10.0;
  for (int64_t i : {1, 2, 5, 9, 10}) x1[i] = mc;
  for (int64_t i : {0, 6, 7, 8, 9, 10, 11, 12, 13}) x2[i] = mc;  // Second sample of x2 fully masked.
  for (Padding padding : {Padding::kValid, Padding::kSame, Padding::kCircular}) {
    for (int64_t s : {1, 2}) {
      for (int64_t w : {2, 3}) {
        PoolOptions o{{w}, {s}, padding, padding == Padding::kSame};
        ExpectKernelIsEmpiricalKernel(Pool(PoolKind::kAvg, o), x1, x2,
                                      "masked " + Describe(PoolKind::kAvg, o), mc);
        ExpectSecondSampleMaskedOut(Pool(PoolKind::kAvg, o), x1, x2, mc);
        o.normalize_edges = false;
        ExpectKernelIsEmpiricalKernel(Pool(PoolKind::kSum, o), x1, x2,
                                      "masked " + Describe(PoolKind::kSum, o), mc);
      }
    }
  }
  for (PoolKind kind : {PoolKind::kAvg, PoolKind::kSum}) {
    // GlobalAvgPool averages over unmasked positions; a fully masked sample gives 0.
    ExpectKernelIsEmpiricalKernel(GlobalPool(kind), x1, x2, "masked global pool", mc);
    ExpectSecondSampleMaskedOut(GlobalPool(kind), x1, x2, mc);
    ExpectKernelIsEmpiricalKernel(stax::serial(AvgPool({2}, {2}, Padding::kSame), GlobalPool(kind)), x1, x2,
                                  "masked AvgPool then global pool", mc);
  }
}

TEST(PoolingTest, MaskedGlobalAvgPoolDividesByUnmaskedCount) {
  // Kernel path, full and diagonal layouts: sample 0 has positions {1, 3} masked of 4.
  Kernel k;
  k.shape1 = k.shape2 = {1, 4, 1};
  k.batch_axis = 0;
  k.channel_axis = 2;
  k.mask1 = Array({1, 4, 1}, std::vector<double>{0, 1, 0, 1});
  k.mask2 = k.mask1;
  k.ntk = Array::Scalar(0.0);
  k.diagonal_spatial = true;
  k.nngp = Array({1, 1, 4}, std::vector<double>{2, 0, 6, 0});
  k.cov1 = Array({1, 4}, std::vector<double>{2, 0, 6, 0});
  auto d = GlobalPool(PoolKind::kAvg).kernel_fn(k);
  ASSERT_TRUE(d.ok()) << d.status();
  // (sum / #unmasked) / P.
  EXPECT_DOUBLE_EQ(d->nngp[0], 8.0 / 2 / 4);
  EXPECT_DOUBLE_EQ(d->cov1[0], 8.0 / 2 / 4);
  ASSERT_TRUE(d->mask1.has_value());
  EXPECT_EQ(ShapeToString(d->mask1->shape()), ShapeToString({1, 1}));
  EXPECT_EQ((*d->mask1)[0], 0.0);
  k.diagonal_spatial = false;
  k.nngp = Array({1, 1, 4, 4}, 1.0);
  k.cov1 = Array({1, 4, 4}, 1.0);
  auto f = GlobalPool(PoolKind::kAvg).kernel_fn(k);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_DOUBLE_EQ(f->nngp[0], 16.0 / 4);  // 2 x 2 unmasked pairs.
  auto s = GlobalPool(PoolKind::kSum).kernel_fn(k);
  ASSERT_TRUE(s.ok());
  EXPECT_DOUBLE_EQ(s->nngp[0], 16.0);
  // Everything masked: the output mask is set and the count is clamped to 1.
  k.mask1 = k.mask2 = Array({1, 4, 1}, 1.0);
  auto all = GlobalPool(PoolKind::kAvg).kernel_fn(k);
  ASSERT_TRUE(all.ok());
  EXPECT_DOUBLE_EQ(all->nngp[0], 16.0);
  EXPECT_EQ((*all->mask1)[0], 1.0);
}

TEST(PoolingTest, PoolMaskTakesTheWindowCentre) {
  PoolLayer valid(PoolKind::kAvg, PoolOptions{{3}, {2}, Padding::kValid});
  const Array m({1, 7, 1}, std::vector<double>{0, 1, 0, 1, 1, 0, 0});
  auto out = valid.MaskFn(MaskFlow::Single(m), ShapeFlow::Single({1, 7, 4}));
  ASSERT_TRUE(out.ok()) << out.status();
  // Outputs 0, 1, 2 read inputs 1, 3, 5.
  EXPECT_EQ(ShapeToString(out->single()->shape()), ShapeToString({1, 3, 1}));
  EXPECT_EQ((*out->single())[0], 1.0);
  EXPECT_EQ((*out->single())[1], 1.0);
  EXPECT_EQ((*out->single())[2], 0.0);
  // Stride 1 SAME keeps the mask as it is.
  PoolLayer same(PoolKind::kAvg, PoolOptions{{3}, {1}, Padding::kSame});
  auto kept = same.MaskFn(MaskFlow::Single(m), ShapeFlow::Single({1, 7, 4}));
  ASSERT_TRUE(kept.ok());
  for (int64_t i = 0; i < 7; ++i) EXPECT_EQ((*kept->single())[i], m[i]);
  // SAME stride 2 window 2: t = 1, lo = 0, start = 0: inputs 0, 2, 4, 6.
  PoolLayer strided(PoolKind::kSum, PoolOptions{{2}, {2}, Padding::kSame});
  auto st = strided.MaskFn(MaskFlow::Single(m), ShapeFlow::Single({1, 7, 4}));
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(ShapeToString(st->single()->shape()), ShapeToString({1, 4, 1}));
  const std::vector<double> expect{0, 0, 1, 0};
  for (int64_t i = 0; i < 4; ++i) EXPECT_EQ((*st->single())[i], expect[i]);
}

TEST(PoolingTest, ChannelDependentMasksAreUnimplemented) {
  Array x = CosNormal({2, 5, 3}, 31);
  x[4] = 10.0;  // Masks one channel of one position: the mask is not channel-collapsed.
  KernelOptions opts;
  opts.mask_constant = 10.0;
  for (Net net : {AvgPool({2}), SumPool({2}, {}, Padding::kSame), GlobalPool(PoolKind::kAvg),
                  GlobalPool(PoolKind::kSum)}) {
    auto k = net.kernel_fn(x, nullptr, {"nngp"}, opts);
    EXPECT_EQ(k.status().code(), absl::StatusCode::kUnimplemented) << k.status();
    auto init = net.init_fn(RngKey(0), x.shape());
    ASSERT_TRUE(init.ok());
    EXPECT_EQ(net.apply_fn(init->second, x, 10.0).status().code(), absl::StatusCode::kUnimplemented);
  }
  // After a Dense the mask is collapsed over channels and pooling works.
  auto k = stax::serial(stax::Dense(4), AvgPool({2}), GlobalPool(PoolKind::kAvg))
               .kernel_fn(x, nullptr, {"nngp"}, opts);
  EXPECT_TRUE(k.ok()) << k.status();
}

// ---------------------------------------------------------------------------------------------------
// Monte Carlo: analytic NNGP of networks with pooling vs the mean empirical NNGP of finite networks.

TEST(PoolingTest, MonteCarloAgreesWithAnalyticNngp) {
  using stax::Dense;
  using stax::Relu;
  using stax::serial;
  const int w = 256, samples = 200;
  const Array a1 = CosNormal({2, 5, 3}, 32), a2 = CosNormal({2, 5, 3}, 33, 2.0);
  const Array b1 = CosNormal({2, 4, 3, 2}, 34), b2 = CosNormal({1, 4, 3, 2}, 35, 2.0);
  struct Case {
    std::string name;
    Net pool;
    bool two_d;
  };
  const std::vector<Case> cases = {
      {"AvgPool SAME stride 2", AvgPool({3}, {2}, Padding::kSame), false},
      {"AvgPool SAME normalize_edges", AvgPool({3}, {1}, Padding::kSame, true), false},
      {"AvgPool CIRCULAR", AvgPool({2}, {1}, Padding::kCircular), false},
      {"SumPool VALID", SumPool({2}, {1}, Padding::kValid), false},
      {"GlobalAvgPool", GlobalPool(PoolKind::kAvg), false},
      {"GlobalSumPool", GlobalPool(PoolKind::kSum), false},
      {"AvgPool 2d SAME", AvgPool({2, 2}, {1, 2}, Padding::kSame), true},
      {"SumPool 2d CIRCULAR then GlobalAvgPool",
       serial(SumPool({2, 3}, {2, 1}, Padding::kCircular), GlobalPool(PoolKind::kAvg)), true},
  };
  for (const Case& c : cases) {
    const Array& x1 = c.two_d ? b1 : a1;
    const Array& x2 = c.two_d ? b2 : a2;
    Net net = serial(Dense(w, 1.5, 0.1), Relu(), c.pool, Dense(w, 1.2, 0.1));
    testing_util::ExpectNngpMatchesMonteCarlo(net, x1, x2, samples, /*seed=*/11, 1e-3, c.name);
  }
}

}  // namespace
}  // namespace nt
