// DotGeneral: exact kernels (scaling, selecting a position equals Index, diagonal layout equals the full
// layout's diagonal), masks, refusals, and Monte Carlo agreement of our finite networks with the NNGP.
#include "core/dot_general.h"

#include <cmath>
#include <string>
#include <vector>

#include "core/stax.h"
#include "gtest/gtest.h"
#include "tests/layer_test_util.h"

namespace nt {
namespace {

using namespace nt::stax;  // NOLINT: reads like upstream's examples.
using testing_util::CosNormal;
using testing_util::ExpectArraysNear;
using testing_util::ExpectNngpMatchesMonteCarlo;
using testing_util::Get;

using Dims = std::array<std::vector<int>, 4>;  // lhs_contracting, rhs_contracting, lhs_batch, rhs_batch.

Array Vector(std::vector<Real> v) { return Array(Shape{static_cast<int64_t>(v.size())}, v); }

// (N, 6, 2) inputs.
Array Inputs(int64_t n, uint64_t seed) { return CosNormal({n, 6, 2}, seed, 1.3); }

TEST(DotGeneralKernelTest, ScalarConstantScalesTheKernelBySquare) {
  const Net base = serial(Conv(8, {2}, {}, "SAME", 1.2, 0.3), Relu());
  const Net scaled = serial(base, DotGeneral(std::nullopt, Array::Scalar(-1.7)));
  const Array x1 = Inputs(3, 1), x2 = Inputs(2, 2);
  auto want = base.kernel_fn(x1, &x2, {"nngp", "ntk", "cov1", "cov2"});
  auto got = scaled.kernel_fn(x1, &x2, {"nngp", "ntk", "cov1", "cov2"});
  ASSERT_TRUE(want.ok() && got.ok()) << want.status() << got.status();
  for (const char* name : {"nngp", "ntk", "cov1", "cov2"}) {
    Array w = Get(*want, name);
    for (int64_t i = 0; i < w.size(); ++i) w[i] *= 1.7 * 1.7;
    ExpectArraysNear(w, Get(*got, name), 1e-13, name);
  }
}

// A one-hot constant contracted against the spatial axis selects one position: Index's kernel.
TEST(DotGeneralKernelTest, OneHotContractionEqualsIndexing) {
  const Net base = serial(Conv(8, {3}, {}, "SAME", 1.1, 0.2), Relu());
  const Net dot =
      serial(base, DotGeneral(std::nullopt, Vector({0, 0, 1, 0, 0, 0}), Dims{{{1}, {0}, {}, {}}}), Dense(4));
  const Net index =
      serial(base, Index({IndexItem::Slice(), IndexItem::Int(2), IndexItem::Slice()}), Dense(4));
  const Array x1 = Inputs(3, 3), x2 = Inputs(2, 4);
  auto want = index.kernel_fn(x1, &x2, {"nngp", "ntk", "cov1", "cov2"});
  auto got = dot.kernel_fn(x1, &x2, {"nngp", "ntk", "cov1", "cov2"});
  ASSERT_TRUE(want.ok() && got.ok()) << want.status() << got.status();
  for (const char* name : {"nngp", "ntk", "cov1", "cov2"}) {
    ExpectArraysNear(Get(*want, name), Get(*got, name), 1e-13, name);
  }
}

// Without contractions every output position reads one input position: the diagonal layout is the full
// layout's diagonal, also with new output axes from the constant.
TEST(DotGeneralKernelTest, DiagonalLayoutIsTheFullLayoutsDiagonal) {
  const Net net =
      serial(Conv(8, {2}, {}, "SAME", 1.2, 0.1), DotGeneral(std::nullopt, Vector({0.5, -2, 1})), Erf());
  const Array x1 = Inputs(2, 5), x2 = Inputs(2, 6);
  KernelOptions full, diag;
  diag.diagonal_spatial = true;
  auto f = net.kernel_fn(x1, &x2, {"nngp"}, full);
  auto d = net.kernel_fn(x1, &x2, {"nngp"}, diag);
  ASSERT_TRUE(f.ok() && d.ok()) << f.status() << d.status();
  const Array& fa = Get(*f, "nngp");
  const Array& da = Get(*d, "nngp");
  ASSERT_EQ(ShapeToString(fa.shape()), "(2, 2, 6, 6, 3, 3)");
  ASSERT_EQ(ShapeToString(da.shape()), "(2, 2, 6, 3)");
  for (int64_t n = 0; n < 4; ++n) {
    for (int64_t p = 0; p < 6; ++p) {
      for (int64_t q = 0; q < 3; ++q) {
        EXPECT_NEAR(da[(n * 6 + p) * 3 + q], fa[((n * 6 + p) * 6 + p) * 9 + q * 3 + q], 1e-13);
      }
    }
  }
}

TEST(DotGeneralApplyTest, ContractsLikeLaxDotGeneral) {
  // x (2, 3, 2) with rhs (3, 4): out[n, c, k] = sum_p x[n, p, c] rhs[p, k].
  Array x({2, 3, 2});
  for (int64_t i = 0; i < x.size(); ++i) x[i] = 0.5 * static_cast<double>(i) - 1;
  Array rhs({3, 4});
  for (int64_t i = 0; i < rhs.size(); ++i) rhs[i] = std::cos(static_cast<double>(i));
  const Net dot = DotGeneral(std::nullopt, rhs, Dims{{{1}, {0}, {}, {}}});
  auto y = dot.apply_fn(Params{}, x);
  ASSERT_TRUE(y.ok()) << y.status();
  ASSERT_EQ(ShapeToString(y->shape()), "(2, 2, 4)");
  for (int64_t n = 0; n < 2; ++n) {
    for (int64_t c = 0; c < 2; ++c) {
      for (int64_t k = 0; k < 4; ++k) {
        double want = 0;
        for (int64_t p = 0; p < 3; ++p) want += x[(n * 3 + p) * 2 + c] * rhs[p * 4 + k];
        EXPECT_NEAR((*y)[(n * 2 + c) * 4 + k], want, 1e-14);
      }
    }
  }
  // The lhs form puts the constant's free axes first: (4, 2, 2) for lhs (4, 3) contracting its axis 1.
  Array lhs({4, 3});
  for (int64_t i = 0; i < lhs.size(); ++i) lhs[i] = rhs[(i % 3) * 4 + i / 3];
  auto z = DotGeneral(lhs, std::nullopt, Dims{{{1}, {1}, {}, {}}}).apply_fn(Params{}, x);
  ASSERT_TRUE(z.ok()) << z.status();
  ASSERT_EQ(ShapeToString(z->shape()), "(4, 2, 2)");
  for (int64_t k = 0; k < 4; ++k) {
    for (int64_t n = 0; n < 2; ++n) {
      for (int64_t c = 0; c < 2; ++c)
        EXPECT_NEAR((*z)[(k * 2 + n) * 2 + c], (*y)[(n * 2 + c) * 4 + k], 1e-14);
    }
  }
}

TEST(DotGeneralErrorsTest, NameTheProblem) {
  EXPECT_EQ(DotGeneral(Array::Scalar(1), Array::Scalar(2)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DotGeneral(std::nullopt, Vector({1, NAN})).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DotGeneral(std::nullopt, Vector({1, 2}), Dims{{{1}, {}, {}, {}}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DotGeneral(std::nullopt, Vector({1, 2}), Dims{{{1}, {3}, {}, {}}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  const Array x = Inputs(2, 7);
  // Sizes that do not match.
  auto r = DotGeneral(std::nullopt, Vector({1, 2}), Dims{{{1}, {0}, {}, {}}}).kernel_fn(x);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_NE(r.status().message().find("dimension_numbers"), std::string::npos) << r.status();
  // The channel axis cannot be contracted: the kernel already sums over channels.
  r = DotGeneral(std::nullopt, Vector({1, 2}), Dims{{{2}, {0}, {}, {}}}).kernel_fn(x);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_NE(r.status().message().find("channel"), std::string::npos) << r.status();
  // Contracting the batch axis mixes samples.
  r = DotGeneral(std::nullopt, Vector({1, 2}), Dims{{{0}, {0}, {}, {}}}).kernel_fn(x);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnimplemented) << r.status();
  // Spatial contractions need the full spatial layout.
  KernelOptions o;
  o.diagonal_spatial = true;
  r = DotGeneral(std::nullopt, Vector({1, 1, 1, 1, 1, 1}), Dims{{{1}, {0}, {}, {}}})
          .kernel_fn(x, nullptr, {}, o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
}

// An output is masked iff every input position reaching it through a non-zero entry is masked.
TEST(DotGeneralMaskTest, OutputMaskedIffNoUnmaskedInputReachesIt) {
  Array rhs({3, 2}, std::vector<Real>{1, 0, 0, 1, 0, 1});  // Output 0 reads position 0; output 1 reads 1, 2.
  DotGeneralLayer layer(DotGeneralOptions{std::nullopt, rhs, {1}, {0}, {}, {}, 0, -1});
  Array mask({2, 3, 1}, std::vector<Real>{1, 0, 1, 0, 1, 1});
  auto m = layer.MaskFn(MaskFlow::Single(mask), ShapeFlow::Single({2, 3, 4}));
  ASSERT_TRUE(m.ok()) << m.status();
  const Array& out = *m->single();
  ASSERT_EQ(ShapeToString(out.shape()), "(2, 1, 2)");
  EXPECT_EQ(out[0], 1);  // Sample 0: position 0 masked.
  EXPECT_EQ(out[1], 0);  // Position 1 unmasked.
  EXPECT_EQ(out[2], 0);
  EXPECT_EQ(out[3], 1);  // Sample 1: positions 1 and 2 masked.
}

struct McCase {
  std::string name;
  Net net;
  std::optional<double> mask_constant;
};

class DotGeneralMonteCarloTest : public ::testing::TestWithParam<int> {};

std::vector<McCase> McCases() {
  const int w = 256;
  Array rhs({6, 3});
  for (int64_t i = 0; i < rhs.size(); ++i) rhs[i] = std::sin(1.3 * static_cast<double>(i) + 0.2);
  Array lhs({2, 6});
  for (int64_t i = 0; i < lhs.size(); ++i) lhs[i] = std::cos(0.7 * static_cast<double>(i));
  const Array weights = Vector({0.7, -0.2, 1.1, 0.4, -0.9, 0.3});
  // A linear map keeps its input Gaussian: the nonlinearity may follow it.
  const Net conv = serial(Conv(w, {2}, {}, "SAME", 1.3, 0.2), Relu(), Conv(w, {2}, {}, "SAME", 1.1, 0.1));
  return {
      {"ContractSpatial",
       serial(conv, DotGeneral(std::nullopt, weights, Dims{{{1}, {0}, {}, {}}}), Dense(w, 1.2, 0.1))},
      // New spatial axis from the constant's free axis, the channel axis moves to 1.
      {"ConstantFreeAxis",
       serial(conv, DotGeneral(std::nullopt, rhs, Dims{{{1}, {0}, {}, {}}}), Relu(), Flatten(), Dense(w))},
      // lhs form: the batch axis moves to 1.
      {"LhsConstant",
       serial(conv, DotGeneral(lhs, std::nullopt, Dims{{{1}, {1}, {}, {}}}), Erf(), Flatten(1), Dense(w))},
      {"Masked",
       serial(Conv(w, {1}, {}, "SAME", 1.2, 0.1), Relu(),
              DotGeneral(std::nullopt, weights, Dims{{{1}, {0}, {}, {}}}), Dense(w)),
       10.0},
  };
}

TEST_P(DotGeneralMonteCarloTest, AnalyticNngpMatchesFiniteNetworks) {
  const McCase c = McCases()[GetParam()];
  Array x1 = Inputs(3, 11), x2 = Inputs(2, 12);
  KernelOptions o;
  if (c.mask_constant) {
    o.mask_constant = c.mask_constant;
    x1[1 * 2 + 0] = x1[1 * 2 + 1] = *c.mask_constant;                       // Sample 0, position 1.
    for (int64_t i = 6 * 2; i < 12 * 2 - 2; ++i) x1[i] = *c.mask_constant;  // Sample 1 but its last position.
  }
  ExpectNngpMatchesMonteCarlo(c.net, x1, x2, 150, 21, 1e-3, c.name, o);
}

INSTANTIATE_TEST_SUITE_P(Networks, DotGeneralMonteCarloTest,
                         ::testing::Range(0, static_cast<int>(McCases().size())),
                         [](const ::testing::TestParamInfo<int>& i) { return McCases()[i.param].name; });

}  // namespace
}  // namespace nt
