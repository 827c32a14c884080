// Reverse mode of GlobalSelfAttention, DotGeneral and Aggregate: each layer's pullback against finite
// differences of its apply_fn (inputs and parameters), for every attention mechanism, positional
// embedding and mask, every contraction form of DotGeneral, and DENSE/SPARSE patterns of Aggregate.
#include <array>
#include <cmath>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/stax.h"
#include "gtest/gtest.h"
#include "tests/attention_test_util.h"
#include "tests/layer_test_util.h"
#include "tests/vjp_test_util.h"

namespace nt {
namespace {

using namespace nt::stax;  // NOLINT: reads like upstream's examples.
using testing_util::CosNormal;
using testing_util::Describe;
using testing_util::ExpectNetVjpMatchesFiniteDifferences;
using testing_util::ExpectVjpMatchesFiniteDifferences;
using Dims = std::array<std::vector<int>, 4>;

constexpr double kTol = 1e-7;
constexpr double kSoftmaxTol = 1e-6;

// ---------------------------------------------------------------------------------------------------------
// GlobalSelfAttention.

const AttentionMechanism kMechanisms[] = {AttentionMechanism::kSoftmax, AttentionMechanism::kIdentity,
                                          AttentionMechanism::kAbs, AttentionMechanism::kRelu};

// Small widths, so that the checks are fast.
GlobalSelfAttentionOptions Options(AttentionMechanism mech,
                                   PositionalEmbedding pe = PositionalEmbedding::kNone) {
  return testing_util::AttentionOptions(mech, pe, {4, 5, 3, 2});
}

double Tol(const GlobalSelfAttentionOptions& o) {
  return o.attention_mechanism == AttentionMechanism::kSoftmax ? kSoftmaxTol : kTol;
}

// Sets every channel of `position` (flattened spatial index) of sample n to `value` (channels last).
void MaskPosition(Array* x, int64_t n, int64_t position, double value) {
  const int64_t c = x->shape().back(), p = x->size() / (x->dim(0) * c);
  for (int64_t k = 0; k < c; ++k) (*x)[(n * p + position) * c + k] = value;
}

TEST(AttentionVjpTest, EveryMechanismMatchesFiniteDifferences1D) {
  const Array x = CosNormal({2, 4, 3}, 1);
  for (AttentionMechanism m : kMechanisms) {
    for (bool linear : {true, false}) {
      GlobalSelfAttentionOptions o = Options(m);
      o.linear_scaling = linear;  // False draws W_query: queries differ from keys.
      SCOPED_TRACE(Describe(o));
      ExpectNetVjpMatchesFiniteDifferences(GlobalSelfAttention(o), x, std::nullopt, {}, Tol(o));
    }
  }
}

TEST(AttentionVjpTest, EveryMechanismMatchesFiniteDifferences2D) {
  const Array x = RngKey(2).Normal({2, 2, 3, 3});
  for (AttentionMechanism m : kMechanisms) {
    for (bool linear : {true, false}) {
      GlobalSelfAttentionOptions o = Options(m);
      o.linear_scaling = linear;
      SCOPED_TRACE(Describe(o));
      ExpectNetVjpMatchesFiniteDifferences(GlobalSelfAttention(o), x, std::nullopt, {}, Tol(o));
    }
  }
}

TEST(AttentionVjpTest, NoBiasOneHeadMatchesFiniteDifferences) {
  const Array x = RngKey(3).Normal({3, 5, 2});
  for (AttentionMechanism m : kMechanisms) {
    GlobalSelfAttentionOptions o = Options(m);
    o.b_std.reset();
    o.n_heads = 1;
    SCOPED_TRACE(Describe(o));
    ExpectNetVjpMatchesFiniteDifferences(GlobalSelfAttention(o), x, std::nullopt, {}, Tol(o));
  }
}

TEST(AttentionVjpTest, EveryPositionalEmbeddingMatchesFiniteDifferences) {
  for (const Shape& shape : {Shape{2, 4, 3}, Shape{2, 2, 3, 3}}) {
    const Array x = RngKey(4).Normal(shape);
    for (PositionalEmbedding pe : {PositionalEmbedding::kSum, PositionalEmbedding::kConcat}) {
      for (bool val : {false, true}) {
        for (bool decay : {false, true}) {
          for (AttentionMechanism m : kMechanisms) {
            GlobalSelfAttentionOptions o = Options(m, pe);
            o.val_pos_emb = val;
            if (decay) o.pos_emb_decay_fn = "exp(-d)";
            if (pe == PositionalEmbedding::kConcat) o.n_chan_pos_emb = 2;
            o.linear_scaling = m != AttentionMechanism::kIdentity;
            SCOPED_TRACE(Describe(o) + " rank " + std::to_string(shape.size()));
            ExpectNetVjpMatchesFiniteDifferences(GlobalSelfAttention(o), x, std::nullopt, {}, Tol(o));
          }
        }
      }
    }
  }
}

TEST(AttentionVjpTest, MaskedPositionsMatchFiniteDifferences) {
  constexpr double kMask = 10.0;
  Array x1 = CosNormal({2, 5, 3}, 5);
  MaskPosition(&x1, 0, 1, kMask);
  MaskPosition(&x1, 1, 0, kMask);
  MaskPosition(&x1, 1, 4, kMask);
  Array x2 = RngKey(6).Normal({2, 2, 3, 3});
  MaskPosition(&x2, 0, 5, kMask);
  MaskPosition(&x2, 1, 2, kMask);
  for (const Array* x : {&x1, &x2}) {
    for (PositionalEmbedding pe :
         {PositionalEmbedding::kNone, PositionalEmbedding::kSum, PositionalEmbedding::kConcat}) {
      for (AttentionMechanism m : kMechanisms) {
        GlobalSelfAttentionOptions o = Options(m, pe);
        o.val_pos_emb = pe == PositionalEmbedding::kConcat;
        if (pe == PositionalEmbedding::kSum) o.pos_emb_decay_fn = "1 / (1 + 4 * d)";
        o.linear_scaling = m != AttentionMechanism::kAbs;
        SCOPED_TRACE(Describe(o) + " rank " + std::to_string(x->rank()));
        ExpectNetVjpMatchesFiniteDifferences(GlobalSelfAttention(o), *x, kMask, {}, Tol(o));
      }
    }
  }
}

// Every key of a sample masked: the softmax weights are uniform over the (constant) fill.
TEST(AttentionVjpTest, FullyMaskedSampleMatchesFiniteDifferences) {
  constexpr double kMask = -3.0;
  Array x = CosNormal({2, 3, 2}, 7);
  for (int64_t q = 0; q < 3; ++q) MaskPosition(&x, 1, q, kMask);
  for (AttentionMechanism m : kMechanisms) {
    const GlobalSelfAttentionOptions o = Options(m);
    SCOPED_TRACE(Describe(o));
    ExpectNetVjpMatchesFiniteDifferences(GlobalSelfAttention(o), x, kMask, {}, Tol(o));
  }
}

// Masks given directly: some entries of a position masked (the key stays), and a mask broadcast over the
// channels.
TEST(AttentionVjpTest, PartialAndBroadcastMasksMatchFiniteDifferences) {
  const Array x = RngKey(8).Normal({2, 4, 3});
  Array partial({2, 4, 3});
  partial[0 * 12 + 1 * 3 + 0] = 1;                                  // One channel of (0, 1).
  for (int64_t k = 0; k < 3; ++k) partial[1 * 12 + 2 * 3 + k] = 1;  // All of (1, 2).
  Array broadcast({2, 4, 1});
  broadcast[0 * 4 + 3] = 1;
  broadcast[1 * 4 + 0] = 1;
  for (const Array* mask : {&partial, &broadcast}) {
    for (PositionalEmbedding pe : {PositionalEmbedding::kNone, PositionalEmbedding::kSum}) {
      for (AttentionMechanism m : kMechanisms) {
        const GlobalSelfAttentionOptions o = Options(m, pe);
        SCOPED_TRACE(Describe(o) + (mask == &partial ? " partial" : " broadcast"));
        const Net net = GlobalSelfAttention(o);
        auto init = net.init_fn(RngKey(9), x.shape());
        ASSERT_TRUE(init.ok()) << init.status();
        ExpectVjpMatchesFiniteDifferences(*net.layer(), init->second, ArrayFlow::Single(x),
                                          MaskFlow::Single(*mask), {}, Tol(o));
      }
    }
  }
}

TEST(AttentionVjpTest, ChannelFirstLayoutMatchesFiniteDifferences) {
  // (C, H, N, W): channels first, batch third.
  const Array x = RngKey(10).Normal({3, 2, 2, 3});
  for (PositionalEmbedding pe : {PositionalEmbedding::kNone, PositionalEmbedding::kConcat}) {
    for (AttentionMechanism m : kMechanisms) {
      GlobalSelfAttentionOptions o = Options(m, pe);
      o.batch_axis = 2;
      o.channel_axis = 0;
      o.val_pos_emb = true;
      o.pos_emb_decay_fn = "exp(-d)";
      SCOPED_TRACE(Describe(o));
      ExpectNetVjpMatchesFiniteDifferences(GlobalSelfAttention(o), x, std::nullopt, {}, Tol(o));
    }
  }
}

// The pullback owns its forward pass: repeated and concurrent calls give the same cotangents.
TEST(AttentionVjpTest, PullbackIsRepeatableAndThreadSafe) {
  GlobalSelfAttentionOptions o = Options(AttentionMechanism::kSoftmax, PositionalEmbedding::kConcat);
  o.linear_scaling = false;
  const Net net = GlobalSelfAttention(o);
  const Array x = RngKey(11).Normal({2, 4, 3});
  auto init = net.init_fn(RngKey(12), x.shape());
  ASSERT_TRUE(init.ok()) << init.status();
  std::optional<Layer::LinearizedMasked> lin;
  {
    auto l =
        net.layer()->LinearizeMasked(init->second, ArrayFlow::Single(x), MaskFlow::Single(std::nullopt), {});
    ASSERT_TRUE(l.ok()) << l.status();
    lin = *std::move(l);
  }
  const ArrayFlow dy = ArrayFlow::Single(RngKey(13).Normal(lin->out.values.single().shape()));
  auto want = lin->pullback(dy);
  ASSERT_TRUE(want.ok()) << want.status();
  std::vector<absl::StatusOr<Cotangents>> got(4, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (size_t t = 0; t < got.size(); ++t) threads.emplace_back([&, t] { got[t] = lin->pullback(dy); });
  for (std::thread& t : threads) t.join();
  for (const auto& g : got) {
    ASSERT_TRUE(g.ok()) << g.status();
    EXPECT_EQ(g->dx.single().vec(), want->dx.single().vec());
    ASSERT_EQ(g->dparams.arrays.size(), want->dparams.arrays.size());
    for (size_t i = 0; i < g->dparams.arrays.size(); ++i) {
      EXPECT_EQ(g->dparams.arrays[i].vec(), want->dparams.arrays[i].vec()) << i;
    }
  }
  // A cotangent of the wrong shape is refused, naming the layer.
  auto bad = lin->pullback(ArrayFlow::Single(Array({2, 4, 3})));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("GlobalSelfAttention"), std::string::npos) << bad.status();
}

// ---------------------------------------------------------------------------------------------------------
// DotGeneral.

Array Cosines(const Shape& shape, double phase) {
  Array a(shape);
  for (int64_t i = 0; i < a.size(); ++i) a[i] = std::cos(0.7 * double(i) + phase);
  return a;
}

TEST(DotGeneralVjpTest, RhsContractingASpatialAxisMatchesFiniteDifferences) {
  const Array x = RngKey(20).Normal({2, 3, 2});
  ExpectNetVjpMatchesFiniteDifferences(DotGeneral(std::nullopt, Cosines({3, 4}, 0), Dims{{{1}, {0}, {}, {}}}),
                                       x);
}

TEST(DotGeneralVjpTest, LhsContractingASpatialAxisMatchesFiniteDifferences) {
  const Array x = RngKey(21).Normal({2, 3, 2});
  ExpectNetVjpMatchesFiniteDifferences(DotGeneral(Cosines({4, 3}, 1), std::nullopt, Dims{{{1}, {1}, {}, {}}}),
                                       x);
}

TEST(DotGeneralVjpTest, ContractingTwoSpatialAxesMatchesFiniteDifferences) {
  const Array x = RngKey(22).Normal({2, 3, 4, 2});
  ExpectNetVjpMatchesFiniteDifferences(
      DotGeneral(std::nullopt, Cosines({4, 5, 3}, 2), Dims{{{2, 1}, {0, 2}, {}, {}}}), x);
  ExpectNetVjpMatchesFiniteDifferences(
      DotGeneral(Cosines({3, 5, 4}, 3), std::nullopt, Dims{{{0, 2}, {1, 2}, {}, {}}}), x);
}

TEST(DotGeneralVjpTest, DotBatchDimensionsMatchFiniteDifferences) {
  // The spatial axis of x paired with the constant's axis 0, contracting its channels.
  const Array x = RngKey(23).Normal({2, 3, 2});
  ExpectNetVjpMatchesFiniteDifferences(
      DotGeneral(std::nullopt, Cosines({3, 2, 4}, 4), Dims{{{2}, {1}, {1}, {0}}}), x);
  ExpectNetVjpMatchesFiniteDifferences(DotGeneral(Cosines({3, 5}, 5), std::nullopt, Dims{{{}, {}, {0}, {1}}}),
                                       x);
}

TEST(DotGeneralVjpTest, ScalarAndOuterProductConstantsMatchFiniteDifferences) {
  const Array x = RngKey(24).Normal({2, 4, 3});
  ExpectNetVjpMatchesFiniteDifferences(DotGeneral(std::nullopt, Array::Scalar(-1.7)), x);
  ExpectNetVjpMatchesFiniteDifferences(DotGeneral(Array::Scalar(0.6), std::nullopt), x);
  ExpectNetVjpMatchesFiniteDifferences(DotGeneral(std::nullopt, Cosines({2}, 6)), x);
}

TEST(DotGeneralVjpTest, IdentityAndMaskedInputsMatchFiniteDifferences) {
  constexpr double kMask = 5.0;
  Array x = RngKey(25).Normal({2, 3, 2});
  x[1] = kMask;
  x[2 * 3 * 2 - 1] = kMask;
  ExpectNetVjpMatchesFiniteDifferences(DotGeneral(std::nullopt, std::nullopt), x, kMask);
  ExpectNetVjpMatchesFiniteDifferences(DotGeneral(std::nullopt, Cosines({3, 4}, 7), Dims{{{1}, {0}, {}, {}}}),
                                       x, kMask);
}

// ---------------------------------------------------------------------------------------------------------
// Aggregate.

// Random weighted directed graphs, one per sample: pattern (n, *agg, *agg), about half of the arcs present.
Array Graphs(const Shape& shape, uint64_t seed) {
  const Array u = CosNormal(shape, seed);
  Array a(shape);
  for (int64_t i = 0; i < a.size(); ++i) a[i] = u[i] > 0 ? 0.5 + u[i] : 0.0;
  return a;
}

ApplyContext WithPattern(const Array& pattern) {
  ApplyContext ctx;
  ctx.pattern = &pattern;
  return ctx;
}

TEST(AggregateVjpTest, DensePatternOverEverySpatialAxisMatchesFiniteDifferences) {
  const Array x1 = RngKey(30).Normal({2, 5, 3});
  const Array p1 = Graphs({2, 5, 5}, 31);
  ExpectNetVjpMatchesFiniteDifferences(Aggregate(), x1, std::nullopt, WithPattern(p1));
  const Array x2 = RngKey(32).Normal({2, 2, 3, 2});
  const Array p2 = Graphs({2, 2, 3, 2, 3}, 33);
  ExpectNetVjpMatchesFiniteDifferences(Aggregate(), x2, std::nullopt, WithPattern(p2));
}

TEST(AggregateVjpTest, DensePatternOverChosenAxesMatchesFiniteDifferences) {
  const Array x = RngKey(34).Normal({2, 3, 4, 2});
  const Array p1 = Graphs({2, 3, 3}, 35), p2 = Graphs({2, 4, 4}, 36), p0 = Graphs({2}, 37);
  ExpectNetVjpMatchesFiniteDifferences(Aggregate(std::vector<int>{1}), x, std::nullopt, WithPattern(p1));
  ExpectNetVjpMatchesFiniteDifferences(Aggregate(std::vector<int>{-2}), x, std::nullopt, WithPattern(p2));
  // No aggregated axis: a per-sample scale.
  ExpectNetVjpMatchesFiniteDifferences(Aggregate(std::vector<int>{}), x, std::nullopt, WithPattern(p0));
}

TEST(AggregateVjpTest, ChannelFirstLayoutMatchesFiniteDifferences) {
  // (C, N, V): channels first, batch second.
  const Array x = RngKey(38).Normal({3, 2, 4});
  const Array p = Graphs({2, 4, 4}, 39);
  ExpectNetVjpMatchesFiniteDifferences(Aggregate(std::nullopt, 1, 0), x, std::nullopt, WithPattern(p));
}

TEST(AggregateVjpTest, SparseEdgeListsMatchFiniteDifferences) {
  // K = 1 squeezed (n, edges, 2), with a repeated edge and a dropped (negative) one.
  const Array x1 = RngKey(40).Normal({2, 4, 3});
  Array e1({2, 5, 2});
  const std::vector<double> edges1 = {0, 1, 0, 1, 1, 2, 3, 3, -1, 2, 2, 0, 1, 3, 0, 0, 2, -1, 3, 1};
  for (int64_t i = 0; i < e1.size(); ++i) e1[i] = edges1[i];
  ExpectNetVjpMatchesFiniteDifferences(Aggregate(std::nullopt, 0, -1, "SPARSE"), x1, std::nullopt,
                                       WithPattern(e1));
  // K = 2: (n, edges, 2, 2) of ((tail_h, head_h), (tail_w, head_w)) on a 2 x 3 grid.
  const Array x2 = RngKey(41).Normal({2, 2, 3, 2});
  Array e2({2, 4, 2, 2});
  const std::vector<double> edges2 = {0, 1, 0, 2, 1, 1, 2, 0, 0, 0, 1, 1, 1, 0, 0, 2,
                                      1, 1, 0, 0, 0, 1, 2, 2, 0, 1, 1, 1, 1, 0, 2, 1};
  for (int64_t i = 0; i < e2.size(); ++i) e2[i] = edges2[i];
  ExpectNetVjpMatchesFiniteDifferences(Aggregate(std::nullopt, 0, -1, "SPARSE"), x2, std::nullopt,
                                       WithPattern(e2));
}

TEST(AggregateVjpTest, MaskedInputsMatchFiniteDifferences) {
  constexpr double kMask = -2.0;
  Array x = RngKey(42).Normal({2, 5, 3});
  MaskPosition(&x, 0, 2, kMask);
  x[1 * 15 + 4 * 3 + 1] = kMask;  // One channel only.
  const Array p = Graphs({2, 5, 5}, 43);
  ExpectNetVjpMatchesFiniteDifferences(Aggregate(), x, kMask, WithPattern(p));
  ExpectNetVjpMatchesFiniteDifferences(Aggregate(), x, kMask);
}

TEST(AggregateVjpTest, NoPatternIsTheIdentity) {
  const Array x = RngKey(44).Normal({2, 3, 2});
  ExpectNetVjpMatchesFiniteDifferences(Aggregate(), x);
  const Net net = Aggregate();
  auto lin = net.layer()->LinearizeMasked(Params{}, ArrayFlow::Single(x), MaskFlow::Single(std::nullopt), {});
  ASSERT_TRUE(lin.ok()) << lin.status();
  const Array dy = RngKey(45).Normal(x.shape());
  auto c = lin->pullback(ArrayFlow::Single(dy));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->dx.single().vec(), dy.vec());
  EXPECT_TRUE(c->dparams.arrays.empty());
}

}  // namespace
}  // namespace nt
