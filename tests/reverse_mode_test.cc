// Reverse mode of Dense, the nonlinearities and the combinators, and the empirical / Monte Carlo kernels
// built on it (core/empirical.h).
#include <cmath>
#include <string>
#include <vector>

#include "core/empirical.h"
#include "core/stax.h"
#include "gtest/gtest.h"
#include "tbb/task_arena.h"
#include "tests/layer_test_util.h"
#include "tests/vjp_test_util.h"

namespace nt {
namespace {

using testing_util::CosNormal;
using testing_util::ExpectArraysNear;
using testing_util::ExpectNetVjpMatchesFiniteDifferences;
using testing_util::ExpectVjpMatchesFiniteDifferences;

TEST(DenseVjpTest, NtkAndStandardParameterizationWithAndWithoutBias) {
  const Array x = CosNormal({3, 5}, 1);
  ExpectNetVjpMatchesFiniteDifferences(stax::Dense(4, 1.5, 0.3), x);
  ExpectNetVjpMatchesFiniteDifferences(stax::Dense(4, 1.5), x);
  ExpectNetVjpMatchesFiniteDifferences(stax::Dense(4, 1.2, 0.5, 0, -1, "standard", {2.0, 3.0}), x);
}

TEST(DenseVjpTest, ChannelAxisFirstAndSpatialInputs) {
  ExpectNetVjpMatchesFiniteDifferences(stax::Dense(3, 1.0, 0.1, 1, 0), CosNormal({5, 4}, 2));
  ExpectNetVjpMatchesFiniteDifferences(stax::Dense(3, 1.0, 0.1), CosNormal({2, 4, 3, 5}, 3));
}

TEST(DenseVjpTest, MaskedInputsGetZeroCotangents) {
  Array x = CosNormal({4, 6}, 4);
  x[1] = 10;
  x[7] = 10;
  for (int64_t c = 0; c < 6; ++c) x[2 * 6 + c] = 10;  // A fully masked sample.
  ExpectNetVjpMatchesFiniteDifferences(stax::serial(stax::Dense(5, 1.0, 0.2), stax::Relu(), stax::Dense(2)),
                                       x, 10.0);
}

// Every nonlinearity with a finite network, after a Dense layer (so the parameter cotangents flow through
// it).
TEST(ElementwiseVjpTest, EveryNonlinearity) {
  const Array x = CosNormal({3, 4}, 5, 2.0);
  const std::vector<std::pair<std::string, stax::Net>> nets = {
      {"Relu", stax::Relu()},
      {"ABRelu", stax::ABRelu(-0.3, 1.7)},
      {"LeakyRelu", stax::LeakyRelu(0.1)},
      {"Abs", stax::Abs()},
      {"Erf", stax::Erf(1.3, 0.7, 0.2)},
      {"Sigmoid_like", stax::Sigmoid_like()},
      {"Sin", stax::Sin(1.2, 0.8, 0.3)},
      {"Cos", stax::Cos(0.9, 1.1, -0.2)},
      {"Exp", stax::Exp(0.5, 0.4)},
      {"Gaussian", stax::Gaussian(1.1, -0.6)},
      {"Rbf", stax::Rbf(0.7)},
      {"Gelu", stax::Gelu(false)},
      {"Gelu approximate", stax::Gelu(true)},
      {"Gabor", stax::Gabor()},
      {"Monomial 3", stax::Monomial(3)},
      {"Monomial 0", stax::Monomial(0)},
      {"RectifiedMonomial 2", stax::RectifiedMonomial(2)},
      {"RectifiedMonomial 0", stax::RectifiedMonomial(0)},
      {"Polynomial", stax::Polynomial({0.5, -1.0, 0.3, 0.2})},
      {"Hermite 1", stax::Hermite(1)},
      {"Hermite 4", stax::Hermite(4)},
      {"Sign", stax::Sign()},
      {"Tanh", stax::Tanh()},
      {"Softplus", stax::Softplus()},
      {"ElementwiseNumerical with df", stax::ElementwiseNumerical("x^3 - x", 32, std::string("3*x^2 - 1"))},
  };
  for (const auto& [what, phi] : nets) {
    SCOPED_TRACE(what);
    ExpectNetVjpMatchesFiniteDifferences(stax::serial(stax::Dense(6, 1.3, 0.2), phi, stax::Dense(2)), x);
  }
}

// Text functions without a derivative are differentiated by 5-point central differences: close, not exact.
TEST(ElementwiseVjpTest, TextFunctionsWithoutDerivative) {
  const Array x = CosNormal({3, 4}, 6);
  ExpectNetVjpMatchesFiniteDifferences(
      stax::serial(stax::Dense(5), stax::Elementwise(std::string("sin(x) * x"))), x, std::nullopt, {}, 1e-6);
  ExpectNetVjpMatchesFiniteDifferences(
      stax::serial(stax::Dense(5), stax::ElementwiseNumerical("tanh(x)", 16)), x, std::nullopt, {}, 1e-6);
}

TEST(ElementwiseVjpTest, KernelOnlyLayersRefuseReverseMode) {
  const stax::Net net = stax::serial(stax::Dense(3), stax::ExpNormalized());
  auto init = net.init_fn(RngKey(0), {2, 3});
  ASSERT_TRUE(init.ok());
  auto lin = LinearizeApply(*net.layer(), init->second, CosNormal({2, 3}, 1), std::nullopt, {});
  EXPECT_EQ(lin.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(lin.status().message().find("ExpNormalized"), std::string::npos) << lin.status();
}

TEST(CombinatorVjpTest, SerialRepeatAndParallel) {
  const Array x = CosNormal({3, 4}, 7);
  ExpectNetVjpMatchesFiniteDifferences(
      stax::serial(stax::Dense(5, 1.0, 0.1), stax::Erf(),
                   stax::repeat(stax::serial(stax::Dense(5, 1.4, 0.3), stax::Relu()), 3),
                   stax::Dense(2, 1.0, 0.5)),
      x);
  ExpectNetVjpMatchesFiniteDifferences(stax::repeat(stax::Dense(4), 0), x);
  // parallel on a list of inputs.
  const stax::Net par = stax::parallel(stax::Dense(3, 1.0, 0.1), stax::serial(stax::Dense(2), stax::Sin()));
  const ArrayFlow in = ArrayFlow::List({CosNormal({3, 4}, 8), CosNormal({3, 6}, 9)});
  ShapeFlow shapes = ShapeFlow::List({{3, 4}, {3, 6}});
  auto params = par.layer()->Init(RngKey(1), shapes);
  ASSERT_TRUE(params.ok()) << params.status();
  ExpectVjpMatchesFiniteDifferences(*par.layer(), *params, in);
}

// ---------------------------------------------------------------------------------------------------
// Empirical kernels.

// f(x) = W_std x W / sqrt(n) + b_std b: the NTK is (W_std^2 x1.x2 / n + b_std^2) per output, the NNGP the
// output products.
TEST(EmpiricalKernelTest, DenseMatchesClosedForm) {
  const double w_std = 1.3, b_std = 0.4;
  const stax::Net net = stax::Dense(3, w_std, b_std);
  const Array x1 = CosNormal({4, 5}, 1), x2 = CosNormal({2, 5}, 2);
  auto init = net.init_fn(RngKey(3), x1.shape());
  ASSERT_TRUE(init.ok());
  EmpiricalOptions o;
  o.trace_axes = {};
  auto k = EmpiricalKernelFn(*net.layer(), init->second, x1, &x2, true, true, o);
  ASSERT_TRUE(k.ok()) << k.status();
  ASSERT_EQ(k->ntk->shape(), (Shape{4, 2, 3, 3}));
  auto y1 = net.apply_fn(init->second, x1), y2 = net.apply_fn(init->second, x2);
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 2; ++j) {
      double dot = 0;
      for (int c = 0; c < 5; ++c) dot += x1[i * 5 + c] * x2[j * 5 + c];
      for (int a = 0; a < 3; ++a) {
        for (int b = 0; b < 3; ++b) {
          const int64_t e = ((i * 2 + j) * 3 + a) * 3 + b;
          EXPECT_NEAR((*k->ntk)[e], a == b ? w_std * w_std * dot / 5 + b_std * b_std : 0.0, 1e-12);
          EXPECT_NEAR((*k->nngp)[e], (*y1)[i * 3 + a] * (*y2)[j * 3 + b], 1e-12);
        }
      }
    }
  }
}

// Layouts of spec 7.1 against a direct evaluation from the full (trace_axes = ()) kernel.
TEST(EmpiricalKernelTest, TraceAndDiagonalAxes) {
  const stax::Net net = stax::serial(stax::Dense(4, 1.0, 0.1), stax::Relu(), stax::Dense(3));
  const Array x = CosNormal({3, 2, 5}, 4);
  auto init = net.init_fn(RngKey(5), x.shape());
  ASSERT_TRUE(init.ok());
  EmpiricalOptions full;
  full.trace_axes = {};
  auto k = EmpiricalKernelFn(*net.layer(), init->second, x, nullptr, true, true, full);
  ASSERT_TRUE(k.ok()) << k.status();
  ASSERT_EQ(k->ntk->shape(), (Shape{3, 3, 2, 2, 3, 3}));
  auto at = [&](const Array& a, int n1, int n2, int p1, int p2, int c1, int c2) {
    return a[((((n1 * 3 + n2) * 2 + p1) * 2 + p2) * 3 + c1) * 3 + c2];
  };
  EmpiricalOptions o;
  o.trace_axes = {-1};
  o.diagonal_axes = {1};
  auto kd = EmpiricalKernelFn(*net.layer(), init->second, x, nullptr, true, true, o);
  ASSERT_TRUE(kd.ok()) << kd.status();
  ASSERT_EQ(kd->ntk->shape(), (Shape{3, 3, 2}));
  o.trace_axes = {1, 2};
  o.diagonal_axes = {0};
  auto kb = EmpiricalKernelFn(*net.layer(), init->second, x, nullptr, true, true, o);
  ASSERT_TRUE(kb.ok()) << kb.status();
  ASSERT_EQ(kb->ntk->shape(), (Shape{3}));
  for (const Array* f : {&*k->ntk, &*k->nngp}) {
    const Array& d = f == &*k->ntk ? *kd->ntk : *kd->nngp;
    const Array& b = f == &*k->ntk ? *kb->ntk : *kb->nngp;
    for (int n1 = 0; n1 < 3; ++n1) {
      for (int n2 = 0; n2 < 3; ++n2) {
        for (int p = 0; p < 2; ++p) {
          double s = 0;
          for (int c = 0; c < 3; ++c) s += at(*f, n1, n2, p, p, c, c);
          EXPECT_NEAR(d[(n1 * 3 + n2) * 2 + p], s / 3, 1e-12);
        }
      }
      double s = 0;
      for (int p = 0; p < 2; ++p) {
        for (int c = 0; c < 3; ++c) s += at(*f, n1, n1, p, p, c, c);
      }
      EXPECT_NEAR(b[n1], s / 6, 1e-12);
    }
  }
  o.trace_axes = {0};
  o.diagonal_axes = {0};
  EXPECT_EQ(EmpiricalKernelFn(*net.layer(), init->second, x, nullptr, true, true, o).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.diagonal_axes = {5};
  EXPECT_EQ(EmpiricalKernelFn(*net.layer(), init->second, x, nullptr, true, true, o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// upstream's testAxes: a CONV network with outputs (N, H, W, C), every non-overlapping pair of trace_axes
// and diagonal_axes subsets, for x2 = None and another x2, against a naive reduction of the full (trace_axes
// = ()) kernel: the sum of K_full[a1, a2] over the output index pairs that agree on every traced and diagonal
// axis.
TEST(EmpiricalKernelTest, EveryTraceAndDiagonalAxesCombination) {
  const stax::Net net = stax::serial(stax::Conv(3, {2, 2}, {}, "SAME", 1.2, 0.1), stax::Relu(),
                                     stax::Conv(2, {2, 1}, {}, "SAME", 1.0, 0.2));
  const Array x1 = CosNormal({3, 3, 2, 2}, 11), x2 = CosNormal({2, 3, 2, 2}, 12);
  auto init = net.init_fn(RngKey(4), x1.shape());
  ASSERT_TRUE(init.ok());
  int checked = 0;
  for (const bool same : {false, true}) {
    const Array* x2p = same ? nullptr : &x2;
    EmpiricalOptions full_o;
    full_o.trace_axes = {};
    auto full = EmpiricalKernelFn(*net.layer(), init->second, x1, x2p, true, true, full_o);
    ASSERT_TRUE(full.ok()) << full.status();
    const Shape s1 = {3, 3, 2, 2}, s2 = same ? s1 : Shape{2, 3, 2, 2};
    for (int tmask = 0; tmask < 16; ++tmask) {
      for (int dmask = 0; dmask < 16; ++dmask) {
        if (tmask & dmask) continue;
        EmpiricalOptions o;
        o.trace_axes.clear();
        for (int a = 0; a < 4; ++a) {
          // Negative and positive spellings of the same axes.
          if (tmask & (1 << a)) o.trace_axes.push_back(a % 2 ? a - 4 : a);
          if (dmask & (1 << a)) o.diagonal_axes.push_back(a);
        }
        auto k = EmpiricalKernelFn(*net.layer(), init->second, x1, x2p, true, true, o);
        if (!same &&
            ((tmask | dmask) & 1)) {  // The batch axis differs in size between x1 and x2: only as a pair.
          EXPECT_EQ(k.status().code(), absl::StatusCode::kInvalidArgument);
          continue;
        }
        ASSERT_TRUE(k.ok()) << k.status();
        Shape want_shape;
        double traced = 1;
        for (int a = 0; a < 4; ++a) {
          if (tmask & (1 << a)) {
            traced *= s1[a];
          } else if (dmask & (1 << a)) {
            want_shape.push_back(s1[a]);
          } else {
            want_shape.insert(want_shape.end(), {s1[a], s2[a]});
          }
        }
        ASSERT_EQ(k->ntk->shape(), want_shape) << tmask << " " << dmask;
        for (const bool ntk : {true, false}) {
          const Array& src = ntk ? *full->ntk : *full->nngp;
          Array want(want_shape, 0.0);
          // Walk every (a1, a2) of the full kernel, whose layout is (n1, n2, h1, h2, w1, w2, c1, c2).
          int64_t e = 0;
          std::vector<int64_t> idx(8, 0);
          const Shape fs = {s1[0], s2[0], 3, 3, 2, 2, 2, 2};
          for (; e < src.size(); ++e) {
            bool keep = true;
            int64_t pos = 0;
            for (int a = 0; a < 4; ++a) {
              const int64_t i1 = idx[2 * a], i2 = idx[2 * a + 1];
              if ((tmask | dmask) & (1 << a)) keep = keep && i1 == i2;
              if (tmask & (1 << a)) continue;
              if (dmask & (1 << a)) {
                pos = pos * s1[a] + i1;
              } else {
                pos = (pos * s1[a] + i1) * s2[a] + i2;
              }
            }
            if (keep) want[pos] += src[e] / traced;
            for (int d = 7; d >= 0; --d) {
              if (++idx[d] < fs[d]) break;
              idx[d] = 0;
            }
          }
          ExpectArraysNear(want, ntk ? *k->ntk : *k->nngp, 1e-12, ntk ? "ntk" : "nngp");
        }
        ++checked;
      }
    }
  }
  // 81 disjoint pairs with x2 = None; with another x2, less the 54 that trace or diagonalise the batch axis.
  EXPECT_EQ(checked, 81 + 27);
}

// vmap_axes is a hint: per-example Jacobians give the same kernel, also with masks.
TEST(EmpiricalKernelTest, VmapAxesGiveTheSameKernel) {
  const stax::Net net = stax::serial(stax::Dense(6, 1.2, 0.1), stax::Erf(), stax::Dense(2, 1.0, 0.3));
  Array x1 = CosNormal({4, 5}, 6);
  const Array x2 = CosNormal({3, 5}, 7);
  x1[3] = 7;
  auto init = net.init_fn(RngKey(8), x1.shape());
  ASSERT_TRUE(init.ok());
  EmpiricalOptions o;
  o.mask_constant = 7;
  auto whole = EmpiricalKernelFn(*net.layer(), init->second, x1, &x2, true, true, o);
  ASSERT_TRUE(whole.ok()) << whole.status();
  o.vmap_in_axis = 0;
  o.vmap_out_axis = 0;
  auto per = EmpiricalKernelFn(*net.layer(), init->second, x1, &x2, true, true, o);
  ASSERT_TRUE(per.ok()) << per.status();
  ExpectArraysNear(*whole->ntk, *per->ntk, 1e-13, "ntk");
  ExpectArraysNear(*whole->nngp, *per->nngp, 1e-13, "nngp");
}

TEST(EmpiricalKernelTest, MemoryBudgetIsEnforced) {
  const stax::Net net = stax::Dense(1000);
  const Array x = CosNormal({10, 1000}, 1);
  auto init = net.init_fn(RngKey(0), x.shape());
  ASSERT_TRUE(init.ok());
  EmpiricalOptions o;
  o.memory_budget_bytes = 1e6;
  auto k = EmpiricalKernelFn(*net.layer(), init->second, x, nullptr, false, true, o);
  EXPECT_EQ(k.status().code(), absl::StatusCode::kResourceExhausted) << k.status();
}

// ---------------------------------------------------------------------------------------------------
// Monte Carlo.

std::vector<EmpiricalKernel> Estimates(const stax::Net& net, const Array& x1, const Array* x2,
                                       std::vector<int> n, uint64_t seed) {
  MonteCarloOptions o;
  o.key = RngKey(seed);
  o.n_samples = std::move(n);
  std::vector<EmpiricalKernel> out;
  absl::Status st =
      MonteCarloKernelFn(*net.layer(), x1, x2, true, true, o, [&](int, const EmpiricalKernel& k) {
        out.push_back(k);
        return absl::OkStatus();
      });
  EXPECT_TRUE(st.ok()) << st;
  return out;
}

TEST(MonteCarloKernelTest, EstimatesArePrefixConsistentAndIndependentOfThreads) {
  const stax::Net net =
      stax::serial(stax::Dense(16, 1.5, 0.2), stax::Relu(), stax::Dropout(0.8), stax::Dense(2, 1.0, 0.1));
  const Array x1 = CosNormal({3, 4}, 1), x2 = CosNormal({2, 4}, 2);
  const std::vector<EmpiricalKernel> all = Estimates(net, x1, &x2, {4, 1, 2, 4}, 9);
  ASSERT_EQ(all.size(), 3u);
  for (int i : {0, 1, 2}) {
    const int n = 1 << i;
    const std::vector<EmpiricalKernel> one = Estimates(net, x1, &x2, {n}, 9);
    ASSERT_EQ(one.size(), 1u);
    ExpectArraysNear(*one[0].ntk, *all[i].ntk, 0, "ntk prefix");
    ExpectArraysNear(*one[0].nngp, *all[i].nngp, 0, "nngp prefix");
  }
  std::vector<EmpiricalKernel> serial_run;
  tbb::task_arena one_thread(1);
  one_thread.execute([&] { serial_run = Estimates(net, x1, &x2, {4}, 9); });
  ASSERT_EQ(serial_run.size(), 1u);
  for (int64_t i = 0; i < serial_run[0].ntk->size(); ++i) {
    EXPECT_EQ((*serial_run[0].ntk)[i], (*all[2].ntk)[i]) << "bit-identical across thread counts";
  }
  EXPECT_NE((*all[0].ntk)[0], (*all[2].ntk)[0]);
}

TEST(MonteCarloKernelTest, RejectsBadSampleCounts) {
  MonteCarloOptions o;
  o.n_samples = {3, 0};
  const stax::Net net = stax::Dense(2);
  absl::Status st = MonteCarloKernelFn(*net.layer(), CosNormal({2, 3}, 1), nullptr, true, false, o,
                                       [](int, const EmpiricalKernel&) { return absl::OkStatus(); });
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("n_samples"), std::string::npos);
}

}  // namespace
}  // namespace nt
