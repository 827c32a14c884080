// Aggregate: the kernel is A1^T K A2 per pair of samples (exact checks against the identity, SPARSE
// against DENSE, tiles against one piece), refusals, and Monte Carlo agreement of our finite networks
// (apply_fn with the pattern) with the analytic NNGP.
#include "core/aggregate.h"

#include <cmath>
#include <memory>
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

const std::vector<std::string> kAll = {"nngp", "ntk", "cov1", "cov2"};

// Random weighted directed graphs on v vertices, one per sample: (n, v, v), about half of the arcs present.
std::shared_ptr<const Array> Graphs(int64_t n, int64_t v, uint64_t seed) {
  const Array u = CosNormal({n, v, v}, seed);
  auto a = std::make_shared<Array>(Shape{n, v, v});
  for (int64_t i = 0; i < a->size(); ++i) (*a)[i] = u[i] > 0 ? 0.5 + u[i] : 0.0;
  return a;
}

std::shared_ptr<const Array> Identities(int64_t n, int64_t v) {
  auto a = std::make_shared<Array>(Shape{n, v, v});
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < v; ++j) (*a)[(i * v + j) * v + j] = 1;
  }
  return a;
}

KernelOptions WithPatterns(std::shared_ptr<const Array> p1, std::shared_ptr<const Array> p2) {
  KernelOptions o;
  o.pattern1 = std::move(p1);
  o.pattern2 = std::move(p2);
  return o;
}

TEST(AggregateKernelTest, IdentityPatternsAndNoPatternsLeaveTheKernel) {
  const Net head = serial(Conv(8, {2}, {}, "SAME", 1.3, 0.2), Relu());
  const Net net = serial(head, Aggregate(), Conv(4, {2}, {}, "SAME"));
  const Net plain = serial(head, Conv(4, {2}, {}, "SAME"));
  const Array x1 = CosNormal({3, 5, 2}, 1), x2 = CosNormal({2, 5, 2}, 2);
  auto want = plain.kernel_fn(x1, &x2, kAll);
  ASSERT_TRUE(want.ok()) << want.status();
  for (const KernelOptions& o : {KernelOptions{}, WithPatterns(Identities(3, 5), Identities(2, 5))}) {
    auto got = net.kernel_fn(x1, &x2, kAll, o);
    ASSERT_TRUE(got.ok()) << got.status();
    for (const std::string& name : kAll) ExpectArraysNear(Get(*want, name), Get(*got, name), 1e-13, name);
  }
}

// The same graphs as edge lists (with repeated edges and edges to masked, negative vertices) give the
// DENSE kernel of their edge counts, and the same apply_fn.
TEST(AggregateKernelTest, SparseEdgeListsEqualDenseCounts) {
  const int64_t n = 2, v = 4;
  // Edges (tail, head) per sample; (-1, -1) and (2, -1) are dropped; (0, 1) twice counts twice.
  const std::vector<std::vector<std::pair<int, int>>> edges = {{{0, 1}, {0, 1}, {1, 2}, {3, 3}, {-1, -1}},
                                                               {{2, 0}, {1, 3}, {0, 0}, {2, -1}, {3, 1}}};
  auto sparse = std::make_shared<Array>(Shape{n, 5, 2});
  auto dense = std::make_shared<Array>(Shape{n, v, v});
  for (int64_t i = 0; i < n; ++i) {
    for (int e = 0; e < 5; ++e) {
      const auto [t, h] = edges[i][e];
      (*sparse)[(i * 5 + e) * 2] = t;
      (*sparse)[(i * 5 + e) * 2 + 1] = h;
      if (t >= 0 && h >= 0) (*dense)[(i * v + t) * v + h] += 1;
    }
  }
  const Net head = serial(Conv(8, {2}, {}, "CIRCULAR", 1.3, 0.2), Erf());
  const Net d = serial(head, Aggregate(std::nullopt, 0, -1, "DENSE"), GlobalAvgPool());
  const Net s = serial(head, Aggregate(std::nullopt, 0, -1, "SPARSE"), GlobalAvgPool());
  const Array x1 = CosNormal({2, 4, 2}, 3);
  auto kd = d.kernel_fn(x1, nullptr, kAll, WithPatterns(dense, nullptr));
  auto ks = s.kernel_fn(x1, nullptr, kAll, WithPatterns(sparse, nullptr));
  ASSERT_TRUE(kd.ok() && ks.ok()) << kd.status() << ks.status();
  for (const char* name : {"nngp", "ntk", "cov1"})
    ExpectArraysNear(Get(*kd, name), Get(*ks, name), 1e-13, name);
  auto init = d.init_fn(RngKey(3), x1.shape());
  ASSERT_TRUE(init.ok()) << init.status();
  auto yd = d.apply_fn(init->second, x1, std::nullopt, ApplyContext{dense.get()});
  auto ys = s.apply_fn(init->second, x1, std::nullopt, ApplyContext{sparse.get()});
  ASSERT_TRUE(yd.ok() && ys.ok()) << yd.status() << ys.status();
  ExpectArraysNear(*yd, *ys, 1e-14, "apply_fn");
}

// Tiles carry the rows of the patterns of their own samples.
TEST(AggregateKernelTest, TilesAgreeWithOnePiece) {
  const Net net = serial(Conv(8, {2}, {}, "SAME", 1.3, 0.2), Relu(), Aggregate(), Conv(8, {1}), Relu(),
                         Aggregate(), GlobalSumPool(), Dense(2));
  const Array x1 = CosNormal({5, 4, 2}, 4), x2 = CosNormal({3, 4, 2}, 5);
  KernelOptions o = WithPatterns(Graphs(5, 4, 6), Graphs(3, 4, 7));
  auto whole = net.kernel_fn(x1, &x2, kAll, o);
  ASSERT_TRUE(whole.ok()) << whole.status();
  o.tile_size = 2;
  auto tiled = net.kernel_fn(x1, &x2, kAll, o);
  ASSERT_TRUE(tiled.ok()) << tiled.status();
  for (const std::string& name : kAll) ExpectArraysNear(Get(*whole, name), Get(*tiled, name), 1e-13, name);
  // x2 = None: pattern1 serves both sides, equal to passing x1 and pattern1 twice (up to Relu's
  // amplification of rounding at correlation 1, which the x2 = None path makes exactly 1).
  KernelOptions same = WithPatterns(o.pattern1, o.pattern1);  // Upstream's pattern=(p, p).
  same.tile_size = 2;
  auto none = net.kernel_fn(x1, nullptr, {"nngp", "ntk"}, same);
  auto twice = net.kernel_fn(x1, &x1, {"nngp", "ntk"}, WithPatterns(o.pattern1, o.pattern1));
  ASSERT_TRUE(none.ok() && twice.ok()) << none.status() << twice.status();
  for (const char* name : {"nngp", "ntk"}) ExpectArraysNear(Get(*twice, name), Get(*none, name), 1e-9, name);
}

TEST(AggregateErrorsTest, NameTheProblem) {
  const Net net = serial(Conv(8, {2}, {}, "SAME"), Aggregate(), GlobalAvgPool());
  const Array x1 = CosNormal({3, 5, 2}, 8), x2 = CosNormal({2, 5, 2}, 9);
  auto r = net.kernel_fn(x1, &x2, {}, WithPatterns(Graphs(3, 5, 1), nullptr));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_NE(r.status().message().find("pattern2"), std::string::npos) << r.status();
  r = net.kernel_fn(x1, &x2, {}, WithPatterns(Graphs(2, 5, 1), Graphs(2, 5, 2)));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_NE(r.status().message().find("pattern1"), std::string::npos) << r.status();
  r = net.kernel_fn(x1, &x2, {}, WithPatterns(Graphs(3, 4, 1), Graphs(2, 4, 2)));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_NE(r.status().message().find("DENSE"), std::string::npos) << r.status();
  KernelOptions diag = WithPatterns(Graphs(3, 5, 1), Graphs(2, 5, 2));
  diag.diagonal_spatial = true;
  EXPECT_EQ(net.kernel_fn(x1, &x2, {}, diag).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(serial(Conv(8, {2}), Aggregate(std::vector<int>{0})).kernel_fn(x1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Aggregate(std::nullopt, 0, -1, "dense").status().code(), absl::StatusCode::kInvalidArgument);
  // apply_fn checks its pattern too (kernel_fn's are checked when planning).
  auto nan_pattern = std::make_shared<Array>(*Graphs(3, 5, 1));
  (*nan_pattern)[4] = NAN;
  auto init = net.init_fn(RngKey(0), x1.shape());
  ASSERT_TRUE(init.ok());
  EXPECT_EQ(net.apply_fn(init->second, x1, std::nullopt, ApplyContext{nan_pattern.get()}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

struct McCase {
  std::string name;
  Net net;
  Shape shape;       // Of one input.
  int64_t vertices;  // Per pattern.
  std::optional<double> mask_constant;
};

class AggregateMonteCarloTest : public ::testing::TestWithParam<int> {};

std::vector<McCase> McCases() {
  const int w = 256;
  return {
      {"Graph",
       serial(Conv(w, {1}, {}, "SAME", 1.4, 0.1), Relu(), Aggregate(), Conv(w, {1}, {}, "SAME", 1.2, 0.1),
              Relu(), Aggregate(), GlobalSumPool(), Dense(w, 1.1, 0.1)),
       {0, 5, 2},
       5,
       std::nullopt},
      // One of two spatial axes aggregated.
      {"OneAxis",
       serial(Conv(w, {2, 2}, {}, "SAME", 1.3, 0.2), Relu(), Aggregate(std::vector<int>{2}), Conv(w, {1, 1}),
              Erf(), GlobalAvgPool(), Dense(w)),
       {0, 3, 4, 2},
       4,
       std::nullopt},
      // Masked vertices enter as zeros and leave the average.
      {"Masked",
       serial(Conv(w, {1}, {}, "SAME", 1.4, 0.1), Relu(), Aggregate(), GlobalAvgPool(), Dense(w)),
       {0, 5, 2},
       5,
       10.0},
  };
}

TEST_P(AggregateMonteCarloTest, AnalyticNngpMatchesFiniteNetworks) {
  const McCase c = McCases()[GetParam()];
  Shape s1 = c.shape, s2 = c.shape;
  s1[0] = 3;
  s2[0] = 2;
  Array x1 = CosNormal(s1, 31, 1.2), x2 = CosNormal(s2, 32, 1.2);
  KernelOptions o = WithPatterns(Graphs(3, c.vertices, 33), Graphs(2, c.vertices, 34));
  if (c.mask_constant) {
    o.mask_constant = c.mask_constant;
    x1[2] = x1[3] = *c.mask_constant;  // Vertex 1 of sample 0.
    x2[8] = x2[9] = *c.mask_constant;  // Vertex 4 of sample 0.
  }
  ExpectNngpMatchesMonteCarlo(c.net, x1, x2, 150, 35, 1e-3, c.name, o);
}

INSTANTIATE_TEST_SUITE_P(Networks, AggregateMonteCarloTest,
                         ::testing::Range(0, static_cast<int>(McCases().size())),
                         [](const ::testing::TestParamInfo<int>& i) { return McCases()[i.param].name; });

}  // namespace
}  // namespace nt
