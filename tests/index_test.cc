// Index: numpy indexing semantics, exact kernels (the input kernel of the indexed inputs, and the input
// kernel sliced on both batch axes / both spatial copies), masks, refusals, and Monte Carlo agreement.
#include "core/index.h"

#include <memory>
#include <string>
#include <vector>

#include "core/stax.h"
#include "gtest/gtest.h"
#include "tests/layer_test_util.h"

namespace nt {
namespace {

using stax::Net;
using It = IndexItem;

using testing_util::ExpectArraysNear;
using testing_util::ExpectKernelMatchesInputKernel;
using testing_util::InputKernel;

Net Index(std::vector<IndexItem> idx, int batch_axis = 0, int channel_axis = -1) {
  IndexOptions o{std::move(idx), batch_axis, channel_axis};
  EXPECT_TRUE(IndexLayer::Validate(o).ok());
  return Net(std::make_shared<IndexLayer>(o));
}

std::vector<int64_t> Take(const IndexItem& item, int64_t n) {
  auto s = SelectAxis("Index", item, n, 0);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? s->take : std::vector<int64_t>{-99};
}

// Python's list(range(n))[item] for reference values.
TEST(IndexSelectTest, FollowsPythonSliceSemantics) {
  using V = std::vector<int64_t>;
  EXPECT_EQ(Take(It::Slice(), 5), (V{0, 1, 2, 3, 4}));
  EXPECT_EQ(Take(It::Slice(1, 4), 5), (V{1, 2, 3}));
  EXPECT_EQ(Take(It::Slice({}, {}, -1), 5), (V{4, 3, 2, 1, 0}));
  EXPECT_EQ(Take(It::Slice(1, 2, -1), 5), V{});
  EXPECT_EQ(Take(It::Slice(-2, {}), 5), (V{3, 4}));
  EXPECT_EQ(Take(It::Slice(10, {}), 5), V{});
  EXPECT_EQ(Take(It::Slice({}, -10, -1), 5), (V{4, 3, 2, 1, 0}));
  EXPECT_EQ(Take(It::Slice(3, 0, -2), 5), (V{3, 1}));
  EXPECT_EQ(Take(It::Slice(-1, -6, -2), 5), (V{4, 2, 0}));
  EXPECT_EQ(Take(It::Slice(-100, 100, 3), 5), (V{0, 3}));
  EXPECT_EQ(Take(It::Slice(100, -100, -3), 5), (V{4, 1}));
  EXPECT_EQ(Take(It::Int(-1), 5), (V{4}));
  EXPECT_TRUE(SelectAxis("Index", It::Int(2), 5, 0)->drop);
  EXPECT_TRUE(SelectAxis("Index", It::Slice(), 5, 0)->identity);
  EXPECT_FALSE(SelectAxis("Index", It::Slice({}, {}, -1), 5, 0)->identity);
  EXPECT_EQ(SelectAxis("Index", It::Int(5), 5, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SelectAxis("Index", It::Int(-6), 5, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SelectAxis("Index", It::Slice({}, {}, 0), 5, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(IndexShapeTest, CanonicalisesLikeUpstream) {
  auto shape = [](std::vector<IndexItem> idx, Shape in) -> absl::StatusOr<Shape> {
    auto out = IndexLayer({std::move(idx)}).OutputShape(ShapeFlow::Single(in));
    if (!out.ok()) return out.status();
    return out->single();
  };
  const Shape x{6, 3, 4, 5};
  EXPECT_EQ(*shape({It::Slice(1, 2, -1)}, x), (Shape{0, 3, 4, 5}));
  EXPECT_EQ(*shape({It::Slice(), It::Int(1)}, x), (Shape{6, 4, 5}));
  EXPECT_EQ(*shape({It::Ellipsis(), It::Int(0), It::Slice()}, x), (Shape{6, 3, 5}));
  EXPECT_EQ(*shape({It::Int(-1), It::Ellipsis()}, x), (Shape{3, 4, 5}));
  EXPECT_EQ(*shape({It::Slice({}, {}, 2), It::Ellipsis(), It::Slice({}, {}, -2)}, x), (Shape{3, 3, 4, 3}));
  EXPECT_EQ(*shape({It::Ellipsis()}, x), x);
  EXPECT_EQ(*shape({}, x), x);
  EXPECT_EQ(*shape({It::Slice(), It::Slice(), It::Slice(), It::Slice(), It::Ellipsis()}, x), x);
  EXPECT_EQ(shape({It::Slice(), It::Slice(), It::Slice(), It::Slice(), It::Slice()}, x).status().code(),
            absl::StatusCode::kInvalidArgument);  // Too many indices.
  EXPECT_EQ(shape({It::Slice(), It::Int(3)}, x).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(IndexApplyTest, MatchesNumpyIndexing) {
  Array x({2, 3, 4});
  for (int64_t i = 0; i < x.size(); ++i) x[i] = static_cast<double>(i);
  auto y = Index({It::Slice({}, {}, -1), It::Int(1), It::Slice(3, 0, -2)}).apply_fn(Params{}, x);
  ASSERT_TRUE(y.ok()) << y.status();
  // x[::-1, 1, 3:0:-2]: rows 1, 0; column 1; entries 3, 1.
  EXPECT_EQ(y->shape(), (Shape{2, 2}));
  EXPECT_EQ(y->vec(), (Storage{12 + 4 + 3, 12 + 4 + 1, 4 + 3, 4 + 1}));
  auto empty = Index({It::Slice(), It::Slice(1, 2, -1)}).apply_fn(Params{}, x);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->shape(), (Shape{2, 0, 4}));
}

struct ExactCase {
  std::string name;
  std::vector<IndexItem> idx;
  Shape x1, x2;
  int b, c;  // Of the input activations.
  int b_out, c_out;
  bool selects_batch;  // The declared flag: true where the batch item might select at some other rank.
};

std::vector<ExactCase> ExactCases() {
  const Shape nhwc1{4, 3, 4, 2}, nhwc2{3, 3, 4, 2};
  return {
      {"SpatialSlice", {It::Slice(), It::Slice(1, 3)}, nhwc1, nhwc2, 0, 3, 0, 3, false},
      {"NegativeSteps",
       {It::Slice(), It::Slice({}, {}, -1), It::Slice(1, {}, 2)},
       nhwc1,
       nhwc2,
       0,
       3,
       0,
       3,
       false},
      {"NegativeStepBounds",
       {It::Slice(), It::Slice(2, 0, -1), It::Slice(-1, -5, -2)},
       nhwc1,
       nhwc2,
       0,
       3,
       0,
       3,
       false},
      // Rank-dependent: on (N, C) inputs these would index the batch.
      {"EllipsisIntDropsW", {It::Ellipsis(), It::Int(0), It::Slice()}, nhwc1, nhwc2, 0, 3, 0, 2, true},
      {"IntDropsH", {It::Slice(), It::Int(-1)}, nhwc1, nhwc2, 0, 3, 0, 2, false},
      {"DropsAllSpatial", {It::Slice(), It::Int(2), It::Int(-1)}, nhwc1, nhwc2, 0, 3, 0, 1, false},
      {"EmptySpatial", {It::Slice(), It::Slice(1, 2, -1)}, nhwc1, nhwc2, 0, 3, 0, 3, false},
      {"BatchTakesAll", {It::Slice(0, {}, 1), It::Slice(1, {})}, nhwc1, nhwc2, 0, 3, 0, 3, false},
      {"EllipsisThenW", {It::Ellipsis(), It::Slice(1, 3), It::Slice()}, nhwc1, nhwc2, 0, 3, 0, 3, true},
      {"ChannelFirst",
       {It::Slice(), It::Ellipsis(), It::Slice({}, {}, -2)},
       {3, 2, 5},
       {2, 2, 5},
       0,
       1,
       0,
       1,
       false},
      // An int before the batch axis shifts it (and the channel axis).
      {"IntBeforeBatch", {It::Int(1), It::Ellipsis()}, {3, 4, 5, 2}, {3, 2, 5, 2}, 1, 3, 0, 2, false},
      {"BatchStride", {It::Slice(0, 3, 2), It::Ellipsis()}, nhwc1, nhwc2, 0, 3, 0, 3, true},
      {"BatchReversedAndSpatial",
       {It::Slice({}, {}, -1), It::Slice(1, {}), It::Int(2)},
       nhwc1,
       nhwc2,
       0,
       3,
       0,
       2,
       true},
      {"BatchEmpty", {It::Slice(5, {})}, nhwc1, nhwc2, 0, 3, 0, 3, true},
      {"BatchInMiddle", {It::Slice(1, 3), It::Slice({}, {}, -1)}, {3, 4, 2}, {3, 3, 2}, 1, 2, 1, 2, true},
  };
}

class IndexExactTest : public ::testing::TestWithParam<int> {};

// Index is deterministic: its kernel is the input kernel of the indexed activations (spec 7.3).
TEST_P(IndexExactTest, KernelEqualsInputKernelOfIndexedInputs) {
  const ExactCase c = ExactCases()[GetParam()];
  Net net = Index(c.idx, c.b, c.c);
  const Array x1 = RngKey(21).Normal(c.x1), x2 = RngKey(22).Normal(c.x2);
  auto y1 = net.apply_fn(Params{}, x1);
  auto y2 = net.apply_fn(Params{}, x2);
  ASSERT_TRUE(y1.ok() && y2.ok()) << y1.status() << y2.status();
  for (bool diagonal_batch : {false, true}) {
    for (bool diagonal_spatial : {false, true}) {
      for (bool same : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "diagonal_batch " << diagonal_batch << " diagonal_spatial "
                                          << diagonal_spatial << " x2 absent " << same);
        const Array* x2p = same ? nullptr : &x2;
        auto out = net.kernel_fn(InputKernel(x1, x2p, c.b, c.c, diagonal_batch, diagonal_spatial));
        ASSERT_TRUE(out.ok()) << out.status();
        ExpectKernelMatchesInputKernel(*out, InputKernel(*y1, same ? nullptr : &*y2, c.b_out, c.c_out,
                                                         diagonal_batch, diagonal_spatial));
      }
    }
  }
  EXPECT_EQ(net.layer()->requirements().selects_batch, c.selects_batch);
  if (c.b == 0) {
    // Through the tiled engine, with one-sample tiles too (a batch slice evaluates the whole batch).
    for (int64_t tile : {0, 1}) {
      for (bool diagonal_batch : {true, false}) {
        SCOPED_TRACE(::testing::Message() << "engine tile " << tile << " diagonal_batch " << diagonal_batch);
        KernelOptions o;
        o.tile_size = tile;
        o.diagonal_batch = diagonal_batch;
        auto r = net.kernel_fn(x1, &x2, {"nngp", "cov1", "cov2"}, o);
        ASSERT_TRUE(r.ok()) << r.status();
        const Kernel want = InputKernel(*y1, &*y2, c.b_out, c.c_out, diagonal_batch);
        ExpectArraysNear(want.nngp, *r->Find("nngp"), 1e-12, "engine nngp");
        ExpectArraysNear(want.cov1, *r->Find("cov1"), 1e-12, "engine cov1");
        ExpectArraysNear(*want.cov2, *r->Find("cov2"), 1e-12, "engine cov2");
        auto r1 = net.kernel_fn(x1, nullptr, {"nngp", "cov1"}, o);
        ASSERT_TRUE(r1.ok()) << r1.status();
        const Kernel want1 = InputKernel(*y1, nullptr, c.b_out, c.c_out, diagonal_batch);
        ExpectArraysNear(want1.nngp, *r1->Find("nngp"), 1e-12, "engine nngp (x2 = None)");
        ExpectArraysNear(want1.cov1, *r1->Find("cov1"), 1e-12, "engine cov1 (x2 = None)");
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, IndexExactTest, ::testing::Range(0, static_cast<int>(ExactCases().size())),
                         [](const ::testing::TestParamInfo<int>& i) { return ExactCases()[i.param].name; });

// The batch item acts on both batch axes, spatial items on both copies (checked entry by entry).
TEST(IndexKernelTest, SlicesInputKernelOnBothBatchAxesAndBothSpatialCopies) {
  const Array x1 = RngKey(3).Normal({5, 4, 3, 2}), x2 = RngKey(4).Normal({4, 4, 3, 2});
  const Kernel in = InputKernel(x1, &x2, 0, 3, false);
  Net net = Index({It::Slice(3, 0, -2), It::Slice(1, {}, 2), It::Slice({}, {}, -1)});
  auto out = net.kernel_fn(in);
  ASSERT_TRUE(out.ok()) << out.status();
  const std::vector<int64_t> b1{3, 1}, b2{3, 1}, h{1, 3}, w{2, 1, 0};
  ASSERT_EQ(out->nngp.shape(), (Shape{2, 2, 2, 2, 3, 3}));
  ASSERT_EQ(out->cov1.shape(), (Shape{2, 2, 2, 2, 3, 3}));
  const Shape& s = in.nngp.shape();  // (5, 4, 4, 4, 3, 3)
  int64_t e = 0;
  for (int64_t i : b1)
    for (int64_t j : b2)
      for (int64_t p : h)
        for (int64_t pp : h)
          for (int64_t q : w)
            for (int64_t qq : w) {
              const int64_t src = ((((i * s[1] + j) * s[2] + p) * s[3] + pp) * s[4] + q) * s[5] + qq;
              ASSERT_EQ(out->nngp[e++], in.nngp[src]);
            }
  // cov2 has 4 samples: 3:0:-2 still takes 3, 1.
  ASSERT_EQ(out->cov2->shape(), (Shape{2, 2, 2, 2, 3, 3}));
  EXPECT_EQ((*out->cov2)[0], (*in.cov2)[((((3 * 4 + 3) * 4 + 1) * 4 + 1) * 3 + 2) * 3 + 2]);
}

TEST(IndexKernelTest, ArrayNtkIsIndexedLikeNngp) {
  Net dense = stax::Dense(3, 1.2, 0.3);
  const std::vector<IndexItem> idx{It::Slice(), It::Slice({}, {}, -2)};
  Net net = stax::serial(dense, Index(idx));
  const Array x1 = RngKey(1).Normal({2, 5, 3}), x2 = RngKey(2).Normal({3, 5, 3});
  auto before = dense.kernel_fn(InputKernel(x1, &x2, 0, 2, true));
  auto after = net.kernel_fn(InputKernel(x1, &x2, 0, 2, true));
  ASSERT_TRUE(before.ok() && after.ok());
  ASSERT_EQ(after->ntk->shape(), (Shape{2, 3, 3, 3}));
  const std::vector<int64_t> p{4, 2, 0};
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int a = 0; a < 3; ++a)
        for (int b = 0; b < 3; ++b) {
          EXPECT_EQ((*after->ntk)[((i * 3 + j) * 3 + a) * 3 + b],
                    (*before->ntk)[((i * 3 + j) * 5 + p[a]) * 5 + p[b]]);
        }
}

TEST(IndexKernelTest, ReversedKernelIsIndexedInNaturalOrder) {
  const Array x1 = RngKey(5).Normal({2, 4, 3, 2}), x2 = RngKey(6).Normal({2, 4, 3, 2});
  Net net = Index({It::Slice(), It::Slice(1, {}), It::Slice({}, {}, -1)});
  Kernel k = InputKernel(x1, &x2, 0, 3, true);
  k.Reverse();
  auto out = net.kernel_fn(k);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_FALSE(out->is_reversed);
  auto y1 = net.apply_fn(Params{}, x1);
  auto y2 = net.apply_fn(Params{}, x2);
  ExpectKernelMatchesInputKernel(*out, InputKernel(*y1, &*y2, 0, 3, true));
}

TEST(IndexKernelTest, LaterLayersSeeShiftedAxes) {
  // (H, N, W, C) indexed with [0, ...] leaves (N, W, C): a Dense with batch_axis 0 follows.
  Net net =
      stax::serial(Index({It::Int(0), It::Ellipsis()}, 1, -1), stax::Dense(4, 1.0, std::nullopt, 0, -1));
  const Array x = RngKey(1).Normal({3, 2, 5, 2});
  auto out = net.kernel_fn(InputKernel(x, nullptr, 1, 3, true));
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->batch_axis, 0);
  EXPECT_EQ(out->channel_axis, 2);
  EXPECT_EQ(out->shape1, (Shape{2, 5, 4}));
}

TEST(IndexMaskTest, MaskFnIndexesMasksAndKeepsBroadcastAxes) {
  IndexLayer layer({{It::Slice({}, {}, -1), It::Int(1), It::Slice(0, 2)}});
  EXPECT_FALSE(layer.remask_kernel());
  Array m({2, 3, 4});
  for (int64_t i = 0; i < m.size(); ++i) m[i] = i % 3 == 0 ? 1 : 0;
  auto out = layer.MaskFn(MaskFlow::Single(m), ShapeFlow::Single({2, 3, 4}));
  ASSERT_TRUE(out.ok()) << out.status();
  auto y = Index({It::Slice({}, {}, -1), It::Int(1), It::Slice(0, 2)}).apply_fn(Params{}, m);
  EXPECT_EQ(out->single()->vec(), y->vec());
  // A channel-collapsed mask (size 1 on the last axis) stays broadcast.
  Array mc({2, 3, 1});
  mc[4] = 1;
  auto outc = layer.MaskFn(MaskFlow::Single(mc), ShapeFlow::Single({2, 3, 4}));
  ASSERT_TRUE(outc.ok()) << outc.status();
  EXPECT_EQ(outc->single()->shape(), (Shape{2, 1}));
  EXPECT_EQ(outc->single()->vec(), (Storage{1, 0}));
}

TEST(IndexMaskTest, MaskedKernelIsTheSlicedMaskedKernel) {
  const double kMask = -5.0;
  Array x = RngKey(9).Normal({3, 6, 2});
  x[(0 * 6 + 1) * 2] = x[(0 * 6 + 1) * 2 + 1] = kMask;  // Sample 0, position 1.
  x[(2 * 6 + 4) * 2] = x[(2 * 6 + 4) * 2 + 1] = kMask;  // Sample 2, position 4.
  Net dense = stax::Dense(3, 1.1, 0.2);
  Net net = stax::serial(dense, Index({It::Slice(), It::Slice(5, 0, -2)}));  // Positions 5, 3, 1.
  KernelOptions o;
  o.mask_constant = kMask;
  auto full = dense.kernel_fn(x, nullptr, {"nngp"}, o);
  auto sliced = net.kernel_fn(x, nullptr, {"nngp"}, o);
  ASSERT_TRUE(full.ok() && sliced.ok()) << full.status() << sliced.status();
  const Array& f = *full->Find("nngp");
  const Array& s = *sliced->Find("nngp");
  ASSERT_EQ(s.shape(), (Shape{3, 3, 3, 3}));
  const std::vector<int64_t> p{5, 3, 1};
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int a = 0; a < 3; ++a)
        for (int b = 0; b < 3; ++b) {
          EXPECT_EQ(s[((i * 3 + j) * 3 + a) * 3 + b], f[((i * 3 + j) * 6 + p[a]) * 6 + p[b]]);
        }
  EXPECT_EQ(s[((0 * 3 + 0) * 3 + 2) * 3 + 0], 0.0);  // Sample 0, position 1 is masked.
  EXPECT_NE(s[((0 * 3 + 0) * 3 + 0) * 3 + 0], 0.0);
}

TEST(IndexValidateTest, RejectsBadArguments) {
  EXPECT_TRUE(IndexLayer::Validate({{It::Ellipsis(), It::Slice(1, 2, -1)}}).ok());
  const absl::Status two = IndexLayer::Validate({{It::Ellipsis(), It::Int(0), It::Ellipsis()}});
  EXPECT_EQ(two.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(two.message().find("Index.idx"), std::string::npos) << two;
  EXPECT_EQ(IndexLayer::Validate({{It::Slice({}, {}, 0)}}).code(), absl::StatusCode::kInvalidArgument);
}

TEST(IndexErrorTest, ChannelItemMustBeExactlyAColon) {
  const Array x = RngKey(1).Normal({2, 4, 3});
  const Kernel k = InputKernel(x, nullptr, 0, 2, true);
  for (const IndexItem& item :
       {It::Int(0), It::Slice(0, 2), It::Slice({}, {}, 1), It::Slice(0, {}), It::Slice({}, {}, -1)}) {
    SCOPED_TRACE(item.ToString());
    Net net = Index({It::Ellipsis(), item});
    auto out = net.kernel_fn(k);
    EXPECT_EQ(out.status().code(), absl::StatusCode::kUnimplemented) << out.status();
    EXPECT_NE(out.status().message().find("channel"), std::string::npos) << out.status();
    EXPECT_TRUE(net.apply_fn(Params{}, x).ok());  // apply_fn indexes channels fine.
  }
}

TEST(IndexErrorTest, BatchItemCannotBeAnInteger) {
  const Array x = RngKey(1).Normal({2, 4, 3});
  Net net = Index({It::Int(1)});
  auto out = net.kernel_fn(InputKernel(x, nullptr, 0, 2, false));
  EXPECT_EQ(out.status().code(), absl::StatusCode::kUnimplemented) << out.status();
  EXPECT_NE(out.status().message().find("batch"), std::string::npos) << out.status();
  EXPECT_EQ(net.kernel_fn(x, nullptr, {"nngp"}).status().code(), absl::StatusCode::kUnimplemented);
}

TEST(IndexErrorTest, OutOfRangeItemsAreInvalid) {
  const Array x = RngKey(1).Normal({2, 4, 3});
  const Kernel k = InputKernel(x, nullptr, 0, 2, true);
  EXPECT_EQ(Index({It::Slice(), It::Int(4)}).kernel_fn(k).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Index({It::Slice(), It::Slice(), It::Slice(), It::Slice()}).kernel_fn(k).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Index({It::Slice(), It::Int(-5)}).apply_fn(Params{}, x).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(IndexRequirementsTest, BatchSelectionIsDeclared) {
  auto selects = [](std::vector<IndexItem> idx, int b = 0, int c = -1) {
    return IndexLayer({std::move(idx), b, c}).requirements().selects_batch;
  };
  EXPECT_FALSE(selects({It::Slice(), It::Slice(1, 3)}));
  EXPECT_FALSE(selects({It::Ellipsis(), It::Int(0)}));  // The batch is inside the Ellipsis.
  EXPECT_TRUE(selects({It::Slice({}, {}, 2), It::Ellipsis()}));
  EXPECT_TRUE(selects({It::Int(0)}));
  // '0:' and '::1' take every sample (only the channel item must be literally ':').
  EXPECT_FALSE(selects({It::Slice({}, {}, 1)}));
  EXPECT_FALSE(selects({It::Slice(0, {}), It::Slice(1, 2)}));
  EXPECT_TRUE(selects({It::Slice({}, 100)}));
  EXPECT_TRUE(selects({It::Slice(-1, {})}));
  EXPECT_TRUE(selects({It::Slice(), It::Slice(0, 2)}, 1));
  EXPECT_FALSE(selects({It::Slice(0, 2), It::Ellipsis(), It::Slice()}, -1, 0));
  // Where the batch item depends on the rank, any selecting item counts.
  EXPECT_TRUE(selects({It::Slice(), It::Slice(0, 2)}, -3));
  EXPECT_TRUE(selects({It::Ellipsis(), It::Slice(0, 2), It::Slice()}));
  EXPECT_FALSE(selects({It::Ellipsis(), It::Slice(0, {}), It::Slice()}));
  const Requirements r = IndexLayer({{It::Slice()}, 1, 2}).requirements();
  EXPECT_EQ(r.batch_axis, 1);
  EXPECT_EQ(r.channel_axis, 2);
  EXPECT_FALSE(r.diagonal_batch.has_value());
  EXPECT_FALSE(r.diagonal_spatial.has_value());
}

// The golden case conv1d_index_batch's structure: a batch slice after per-sample layers equals the network
// without it on the selected samples.
TEST(IndexEngineTest, BatchSliceEqualsNetworkOnSelectedSamples) {
  const Array x1 = RngKey(1).Normal({4, 5, 2}), x2 = RngKey(2).Normal({3, 5, 2});
  auto rows = [](const Array& x, std::vector<int64_t> r) {
    return GatherAxes(x, {AxisSelection{r}, AxisSelection{{0, 1, 2, 3, 4}, false, true},
                          AxisSelection{{0, 1}, false, true}});
  };
  Net head = stax::serial(stax::Dense(8, 1.3, 0.1), stax::Relu());
  Net tail = stax::Dense(3, 1.5, 0.2);
  Net net = stax::serial(head, Index({It::Slice(0, 3, 2), It::Ellipsis()}), tail);
  Net plain = stax::serial(head, tail);
  for (bool diagonal_batch : {true, false}) {
    SCOPED_TRACE(diagonal_batch);
    KernelOptions o;
    o.diagonal_batch = diagonal_batch;
    auto got = net.kernel_fn(x1, &x2, {"nngp", "ntk", "cov1", "cov2"}, o);
    const Array s1 = rows(x1, {0, 2}), s2 = rows(x2, {0, 2});
    auto want = plain.kernel_fn(s1, &s2, {"nngp", "ntk", "cov1", "cov2"}, o);
    ASSERT_TRUE(got.ok() && want.ok()) << got.status() << want.status();
    for (const char* name : {"nngp", "ntk", "cov1", "cov2"}) {
      ExpectArraysNear(*want->Find(name), *got->Find(name), 1e-12, name);
    }
    EXPECT_EQ(got->meta.shape1, (Shape{2, 5, 3}));
    EXPECT_EQ(got->meta.shape2, (Shape{2, 5, 3}));
    // The Kernel path agrees.
    auto k = net.kernel_fn(InputKernel(x1, &x2, 0, 2, diagonal_batch));
    ASSERT_TRUE(k.ok()) << k.status();
    ExpectArraysNear(*want->Find("nngp"), k->nngp, 1e-12, "Kernel path nngp");
    ExpectArraysNear(*want->Find("cov1"), k->cov1, 1e-12, "Kernel path cov1");
  }
  // Shape-only planning reports the selected batch sizes.
  const Shape sh1 = x1.shape(), sh2 = x2.shape();
  auto plan = PlanKernelForShapes(*net.layer(), sh1, &sh2, {});
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->arrays[0].shape, (Shape{2, 2, 5, 5}));
}

TEST(IndexEngineTest, RankDependentBatchSlicing) {
  // [..., 1:3, :] slices the batch of (N, C) inputs only.
  Net net = Index({It::Ellipsis(), It::Slice(1, 3), It::Slice()});
  const Array x1 = RngKey(1).Normal({4, 3}), x2 = RngKey(2).Normal({3, 3});
  auto y1 = net.apply_fn(Params{}, x1);
  auto y2 = net.apply_fn(Params{}, x2);
  auto engine = net.kernel_fn(x1, &x2, {"nngp", "cov1", "cov2"});
  ASSERT_TRUE(engine.ok()) << engine.status();
  const Kernel want = InputKernel(*y1, &*y2, 0, 1, true);
  ExpectArraysNear(want.nngp, *engine->Find("nngp"), 1e-12, "nngp");
  ExpectArraysNear(want.cov1, *engine->Find("cov1"), 1e-12, "cov1");
  ExpectArraysNear(*want.cov2, *engine->Find("cov2"), 1e-12, "cov2");
  // On (N, H, C) inputs the same index slices H.
  auto spatial = net.kernel_fn(RngKey(3).Normal({4, 5, 2}), nullptr, {"nngp"});
  ASSERT_TRUE(spatial.ok()) << spatial.status();
  EXPECT_EQ(spatial->Find("nngp")->shape(), (Shape{4, 4, 2, 2}));
}

// Analytic NNGP of networks with Index against the mean over finite networks (Dense acts per position).
class IndexMonteCarloTest : public ::testing::TestWithParam<int> {};

TEST_P(IndexMonteCarloTest, AnalyticNngpMatchesFiniteNetworks) {
  const int w = 512;
  const std::vector<std::pair<std::string, Net>> nets = {
      {"ReversedStride", stax::serial(stax::Dense(w, 1.5, 0.2), stax::Relu(),
                                      Index({It::Slice(), It::Slice({}, {}, -2)}), stax::Dense(w, 1.2, 0.1))},
      {"IntDropsAxis", stax::serial(stax::Dense(w, 1.3), stax::Relu(), Index({It::Slice(), It::Int(1)}),
                                    stax::Dense(w, 1.0, 0.3))},
  };
  const auto& [name, net] = nets[GetParam()];
  const Shape s = GetParam() == 1 ? Shape{3, 3, 2, 2} : Shape{3, 5, 2};
  Shape s2 = s;
  s2[0] = 2;
  testing_util::ExpectNngpMatchesMonteCarlo(net, RngKey(1).Normal(s), RngKey(2).Normal(s2), 200, /*seed=*/7,
                                            1e-3, name);
}

INSTANTIATE_TEST_SUITE_P(Nets, IndexMonteCarloTest, ::testing::Range(0, 2));

}  // namespace
}  // namespace nt
