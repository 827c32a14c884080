// Flatten: forward pass layouts, the kernel as the mean of the spatial diagonal (equal to the empirical
// kernel of the flattened values), Flatten as first layer (inputs flattened before the input kernel),
// layout consistency, metadata, masks and argument errors.
#include "core/flatten.h"

#include <memory>
#include <string>
#include <vector>

#include "core/pooling.h"
#include "core/stax.h"
#include "gtest/gtest.h"
#include "tests/layer_test_util.h"

namespace nt {
namespace {

using stax::Net;

Net Flatten(int batch_axis = 0, int batch_axis_out = 0) {
  return Net(std::make_shared<FlattenLayer>(FlattenOptions{batch_axis, batch_axis_out}));
}

using testing_util::ApplyNet;
using testing_util::CosNormal;
using testing_util::EmpiricalNngp;
using testing_util::ExpectArraysNear;

TEST(FlattenTest, ApplyMovesBatchFirstOrLastAndFlattensRowMajor) {
  Array x({2, 3, 4});
  for (int64_t i = 0; i < x.size(); ++i) x[i] = static_cast<double>(i);
  // batch_axis 0, batch_axis_out 0 (and -2): (2, 12), the plain reshape.
  for (int out : {0, -2}) {
    const Array y = ApplyNet(Flatten(0, out), x);
    ASSERT_EQ(ShapeToString(y.shape()), ShapeToString({2, 12}));
    for (int64_t i = 0; i < y.size(); ++i) EXPECT_EQ(y[i], x[i]);
  }
  // batch_axis_out 1 (and -1): (12, 2) with y[f, n] = x[n, f].
  for (int out : {1, -1}) {
    const Array y = ApplyNet(Flatten(0, out), x);
    ASSERT_EQ(ShapeToString(y.shape()), ShapeToString({12, 2}));
    for (int64_t n = 0; n < 2; ++n) {
      for (int64_t f = 0; f < 12; ++f) EXPECT_EQ(y[f * 2 + n], x[n * 12 + f]);
    }
  }
  // batch_axis 1: (2, 3, 4) -> (3, 8) with z[n, (a, c)] = x[a, n, c].
  const Array z = ApplyNet(Flatten(1, 0), x);
  ASSERT_EQ(ShapeToString(z.shape()), ShapeToString({3, 8}));
  for (int64_t a = 0; a < 2; ++a) {
    for (int64_t n = 0; n < 3; ++n) {
      for (int64_t c = 0; c < 4; ++c) EXPECT_EQ(z[n * 8 + a * 4 + c], x[(a * 3 + n) * 4 + c]);
    }
  }
  auto init = Flatten(1, 1).init_fn(RngKey(0), {5, 6, 7, 8});
  ASSERT_TRUE(init.ok());
  EXPECT_EQ(ShapeToString(init->first), ShapeToString({280, 6}));
  EXPECT_TRUE(init->second.arrays.empty());
}

// The kernel of Flatten is the mean of the spatial diagonal, which is the empirical kernel of the
// flattened values (normalised by their length P C), in both spatial layouts.
TEST(FlattenTest, KernelEqualsEmpiricalKernelOfFlattenedInputs) {
  struct Case {
    Shape s1, s2;
    int batch_axis, channel_axis;
  };
  const std::vector<Case> cases = {
      {{3, 4, 5, 2}, {2, 4, 5, 2}, 0, 3},
      {{4, 3, 2}, {4, 2, 2}, 1, 0},  // (C, N, H)
      {{2, 3, 2, 2}, {3, 3, 2, 2}, 0, 1},
      {{3, 5}, {2, 5}, 0, 1},  // No spatial axes.
  };
  for (const Case& c : cases) {
    const Array x1 = CosNormal(c.s1, 1), x2 = CosNormal(c.s2, 2, 2.0);
    for (bool diagonal : {false, true}) {
      for (int out : {0, 1, -1, -2}) {
        const std::string what =
            ShapeToString(c.s1) + (diagonal ? " diagonal" : " full") + " out " + std::to_string(out);
        Net net = Flatten(c.batch_axis, out);
        auto k = net.kernel_fn(testing_util::InputKernel(x1, &x2, c.batch_axis, c.channel_axis,
                                                         /*diagonal_batch=*/true, diagonal));
        ASSERT_TRUE(k.ok()) << what << ": " << k.status();
        const Array y1 = ApplyNet(net, x1), y2 = ApplyNet(net, x2);
        const int b = out == 0 || out == -2 ? 0 : 1;
        ExpectArraysNear(EmpiricalNngp(y1, y2, b, 1 - b), k->nngp, 1e-12, what + " nngp");
        ExpectArraysNear(testing_util::BatchDiagonal(EmpiricalNngp(y1, y1, b, 1 - b)), k->cov1, 1e-12,
                         what + " cov1");
        ExpectArraysNear(testing_util::BatchDiagonal(EmpiricalNngp(y2, y2, b, 1 - b)), *k->cov2, 1e-12,
                         what + " cov2");
        EXPECT_EQ(k->ntk->rank(), 0) << what;
        EXPECT_EQ(k->batch_axis, b) << what;
        EXPECT_EQ(k->channel_axis, 1 - b) << what;
        EXPECT_FALSE(k->is_gaussian) << what;
        EXPECT_FALSE(k->is_reversed) << what;
        EXPECT_FALSE(k->diagonal_spatial) << what;
        EXPECT_EQ(ShapeToString(k->shape1), ShapeToString(y1.shape())) << what;
        EXPECT_EQ(ShapeToString(k->shape2), ShapeToString(y2.shape())) << what;
      }
    }
  }
}

TEST(FlattenTest, ReversedKernelFlattensToTheSameValues) {
  const Array x1 = CosNormal({2, 3, 4, 2}, 3), x2 = CosNormal({3, 3, 4, 2}, 4);
  Kernel k = testing_util::InputKernel(x1, &x2, 0, 3);
  auto a = Flatten().kernel_fn(k);
  k.Reverse();
  auto b = Flatten().kernel_fn(k);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_FALSE(b->is_reversed);
  ExpectArraysNear(a->nngp, b->nngp, 1e-14, "nngp");
  ExpectArraysNear(a->cov1, b->cov1, 1e-14, "cov1");
}

// upstream's FlattenTest: Flatten at the bottom equals the fully connected network on pre-flattened
// inputs (the inputs are flattened before the input kernel is built).
TEST(FlattenTest, FlattenFirstThenDenseEqualsDenseOnFlattenedInputs) {
  using stax::Dense;
  using stax::Erf;
  using stax::serial;
  const Array x1 = CosNormal({4, 4, 3, 2}, 5), x2 = CosNormal({2, 4, 3, 2}, 6);
  const Array f1 = x1.Reshaped({4, 24}), f2 = x2.Reshaped({2, 24});
  Net flat = serial(Flatten(), Dense(16, 1.7, 0.1), Erf(), Dense(4, 1.2, 0.3));
  Net fc = serial(Dense(16, 1.7, 0.1), Erf(), Dense(4, 1.2, 0.3));
  EXPECT_TRUE(flat.layer()->requirements().flatten_input);
  for (bool same : {false, true}) {
    auto a = flat.kernel_fn(x1, same ? nullptr : &x2);
    auto b = fc.kernel_fn(f1, same ? nullptr : &f2);
    ASSERT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
    ASSERT_EQ(a->arrays.size(), b->arrays.size());
    for (size_t i = 0; i < a->arrays.size(); ++i) {
      EXPECT_EQ(a->arrays[i].first, b->arrays[i].first);
      ExpectArraysNear(b->arrays[i].second, a->arrays[i].second, 1e-12, a->arrays[i].first);
    }
    EXPECT_EQ(ShapeToString(a->meta.shape1), ShapeToString({4, 4}));
  }
  // The finite network agrees too: the same parameters give the same outputs.
  auto init = flat.init_fn(RngKey(3), x1.shape());
  ASSERT_TRUE(init.ok());
  EXPECT_EQ(ShapeToString(init->first), ShapeToString({4, 4}));
  auto y = flat.apply_fn(init->second, x1);
  Params fc_params;
  fc_params.children.assign(init->second.children.begin() + 1, init->second.children.end());
  auto z = fc.apply_fn(fc_params, f1);
  ASSERT_TRUE(y.ok() && z.ok()) << y.status() << z.status();
  ExpectArraysNear(*z, *y, 1e-12, "apply");
}

// Dense acts per position, so a network ending in Flatten needs only the spatial diagonal: it defaults
// to the diagonal layout, and the full layout gives the same result.
TEST(FlattenTest, DiagonalAndFullLayoutsAgreeForNetworksEndingInFlatten) {
  using stax::Dense;
  using stax::Relu;
  using stax::serial;
  const Array x1 = CosNormal({3, 4, 3, 2}, 7), x2 = CosNormal({2, 4, 3, 2}, 8, 2.0);
  for (Net net :
       {serial(Dense(8, 1.5, 0.2), Relu(), Dense(8, 1.1), Flatten()),
        serial(Dense(8, 1.5, 0.2), Relu(), Dense(8), Flatten(), Dense(8, 1.3, 0.1), Relu(), Dense(2)),
        serial(Dense(8, 1.5, 0.2), Relu(), Flatten(0, 1), Dense(8, 1.0, 0.0, 1, 0))}) {
    EXPECT_EQ(*net.layer()->requirements().diagonal_spatial, (Diagonal{Bool::kYes, Bool::kYes}));
    KernelOptions diag, full;
    diag.diagonal_spatial = true;
    full.diagonal_spatial = false;
    for (const Array* x2p : {static_cast<const Array*>(nullptr), &x2}) {
      auto a = net.kernel_fn(x1, x2p, {}, diag);
      auto b = net.kernel_fn(x1, x2p, {}, full);
      auto c = net.kernel_fn(x1, x2p);
      ASSERT_TRUE(a.ok() && b.ok() && c.ok()) << a.status() << b.status() << c.status();
      for (size_t i = 0; i < a->arrays.size(); ++i) {
        ExpectArraysNear(b->arrays[i].second, a->arrays[i].second, 1e-12, a->arrays[i].first);
        ExpectArraysNear(a->arrays[i].second, c->arrays[i].second, 0, a->arrays[i].first + " default");
      }
    }
  }
}

TEST(FlattenTest, ActivationDirectlyAfterFlattenIsRefused) {
  const Array x = CosNormal({2, 3, 2}, 9);
  auto k = stax::serial(stax::Dense(4), Flatten(), stax::Relu()).kernel_fn(x, nullptr, {"nngp"});
  EXPECT_EQ(k.status().code(), absl::StatusCode::kInvalidArgument) << k.status();
}

TEST(FlattenTest, Requirements) {
  FlattenLayer layer(FlattenOptions{1, 0});
  const Requirements r = layer.requirements();
  EXPECT_EQ(*r.diagonal_spatial, (Diagonal{Bool::kYes, Bool::kYes}));
  EXPECT_EQ(*r.batch_axis, 1);
  EXPECT_FALSE(r.channel_axis.has_value());
  EXPECT_TRUE(r.flatten_input);
  EXPECT_FALSE(layer.remask_kernel());
  EXPECT_EQ(layer.name(), "Flatten");
  // Preceded by a layer declaring a channel axis, the inputs keep theirs.
  const Requirements s = stax::serial(stax::Dense(3), Flatten()).layer()->requirements();
  EXPECT_FALSE(s.flatten_input);
  EXPECT_EQ(*s.channel_axis, -1);
}

TEST(FlattenTest, MaskedFlattenKernelEqualsEmpiricalKernelOfMaskedOutputs) {
  Array x1 = CosNormal({3, 4, 2}, 10), x2 = CosNormal({2, 4, 2}, 11);
  const double mc = -1.0;
  for (int64_t i : {0, 3, 9, 20}) x1[i] = mc;
  for (int64_t i = 8; i < 16; ++i) x2[i] = mc;  // Second sample fully masked.
  KernelOptions opts;
  opts.mask_constant = mc;
  // Flatten first: the mask is flattened with the inputs.
  Net net = Flatten();
  auto k = net.kernel_fn(x1, &x2, {"nngp", "cov1", "cov2"}, opts);
  ASSERT_TRUE(k.ok()) << k.status();
  const Array y1 = ApplyNet(net, x1, mc), y2 = ApplyNet(net, x2, mc);
  ExpectArraysNear(EmpiricalNngp(y1, y2, 0, 1), testing_util::Get(*k, "nngp"), 1e-12, "nngp");
  ExpectArraysNear(testing_util::BatchDiagonal(EmpiricalNngp(y2, y2, 0, 1)), testing_util::Get(*k, "cov2"),
                   1e-12, "cov2");
  EXPECT_EQ(testing_util::Get(*k, "nngp")[1], 0.0);
  // After a pooling layer (one input channel so masks are channel-collapsed): the output mask is the
  // input mask rearranged like the values.
  Array z1 = CosNormal({3, 5, 1}, 12), z2 = CosNormal({2, 5, 1}, 13);
  z1[2] = mc;
  for (int64_t i = 5; i < 10; ++i) z2[i] = mc;
  Net pooled = stax::serial(
      Net(std::make_shared<PoolLayer>(PoolKind::kAvg, PoolOptions{{2}, {1}, Padding::kSame})), Flatten());
  auto kp = pooled.kernel_fn(z1, &z2, {"nngp"}, opts);
  ASSERT_TRUE(kp.ok()) << kp.status();
  ExpectArraysNear(EmpiricalNngp(ApplyNet(pooled, z1, mc), ApplyNet(pooled, z2, mc), 0, 1),
                   testing_util::Get(*kp, "nngp"), 1e-12, "pooled nngp");
}

TEST(FlattenTest, MaskFollowsTheValues) {
  // Rank 3 with batch_axis_out = 1: the mask is laid out exactly like the values (upstream moves the
  // mask's batch axis to position 1 instead, which scrambles it for rank > 2).
  FlattenLayer layer(FlattenOptions{0, 1});
  Array m({2, 3, 1});
  m[1] = 1;  // Sample 0, position 1.
  m[5] = 1;  // Sample 1, position 2.
  auto out = layer.MaskFn(MaskFlow::Single(m), ShapeFlow::Single({2, 3, 2}));
  ASSERT_TRUE(out.ok()) << out.status();
  const Array& f = *out->single();
  ASSERT_EQ(ShapeToString(f.shape()), ShapeToString({6, 2}));
  // Feature (h, c) = 2 h + c; entry [feature, n].
  for (int64_t n = 0; n < 2; ++n) {
    for (int64_t h = 0; h < 3; ++h) {
      for (int64_t c = 0; c < 2; ++c) {
        const bool masked = (n == 0 && h == 1) || (n == 1 && h == 2);
        EXPECT_EQ(f[(2 * h + c) * 2 + n], masked ? 1.0 : 0.0) << n << " " << h << " " << c;
      }
    }
  }
}

TEST(FlattenTest, BadArgumentsAreInvalid) {
  EXPECT_TRUE(FlattenLayer::Validate(FlattenOptions{0, -2}).ok());
  for (int out : {2, -3, 5}) {
    const absl::Status st = FlattenLayer::Validate(FlattenOptions{0, out});
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("Flatten.batch_axis_out"), std::string::npos) << st;
    EXPECT_EQ(Flatten(0, out).init_fn(RngKey(0), {2, 3}).status().code(), absl::StatusCode::kInvalidArgument);
  }
  const absl::Status st = Flatten(4, 0).init_fn(RngKey(0), {2, 3, 4}).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("Flatten.batch_axis"), std::string::npos) << st;
}

}  // namespace
}  // namespace nt
