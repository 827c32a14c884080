// GlobalSelfAttention: Monte Carlo agreement of finite networks (our init_fn/apply_fn) with the analytic
// NNGP for every mechanism and positional embedding, exact identities of the kernel (x2 = None, full-batch
// covariances, zero keys, masked keys), and the refused and invalid configurations.
#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "core/stax.h"
#include "gtest/gtest.h"
#include "tests/attention_test_util.h"
#include "tests/layer_test_util.h"

namespace nt {
namespace {

using namespace nt::stax;  // NOLINT: reads like upstream's examples.
using testing_util::Describe;
using testing_util::ExpectArraysNear;
using testing_util::Get;

// Inputs with a different scale per position, so that attention weights vary across positions: normal
// entries, or cos(normal) ones (`cosine`), whose positive mean keeps every logit away from RELU's and ABS's
// kink, where the finite-width fluctuations of the logits would bias the Monte Carlo estimate.
Array Input(const Shape& shape, uint64_t seed, bool cosine = false) {
  Array x = cosine ? testing_util::CosNormal(shape, seed) : RngKey(seed).Normal(shape);
  const int64_t c = shape.back();
  const int64_t p = x.size() / (shape[0] * c);
  for (int64_t i = 0; i < x.size(); ++i) x[i] *= 0.6 + 0.25 * double((i / c) % p);
  return x;
}

GlobalSelfAttentionOptions Options(AttentionMechanism mech,
                                   PositionalEmbedding pe = PositionalEmbedding::kNone) {
  return testing_util::AttentionOptions(mech, pe, {32, 256, 16, 4});
}

constexpr int kSamples = 200;

void ExpectMonteCarlo(const GlobalSelfAttentionOptions& o, bool cosine, int64_t channels = 128,
                      int samples = kSamples) {
  const Array x1 = Input({2, 2, 3, channels}, 1, cosine), x2 = Input({2, 2, 3, channels}, 2, cosine);
  testing_util::ExpectNngpMatchesMonteCarlo(GlobalSelfAttention(o), x1, x2, samples, 7, 0.01, Describe(o));
}

TEST(AttentionTest, MonteCarloNngpMatchesForEveryMechanism) {
  for (AttentionMechanism m : {AttentionMechanism::kSoftmax, AttentionMechanism::kIdentity,
                               AttentionMechanism::kAbs, AttentionMechanism::kRelu}) {
    ExpectMonteCarlo(Options(m), false);
  }
}

TEST(AttentionTest, MonteCarloNngpMatchesForEveryPositionalEmbedding) {
  for (PositionalEmbedding pe : {PositionalEmbedding::kSum, PositionalEmbedding::kConcat}) {
    for (bool val : {false, true}) {
      for (AttentionMechanism m : {AttentionMechanism::kSoftmax, AttentionMechanism::kAbs}) {
        GlobalSelfAttentionOptions o = Options(m, pe);
        o.val_pos_emb = val;
        // Sharper softmax weights, so that the embeddings visibly move them.
        if (m == AttentionMechanism::kSoftmax) o.W_key_std = 2.5;
        if (pe == PositionalEmbedding::kConcat) o.n_chan_pos_emb = 64;
        ExpectMonteCarlo(o, true);
      }
    }
  }
  // Correlated embeddings: R = exp(-|p - p'|^2), through its Cholesky factor on the apply side.
  GlobalSelfAttentionOptions o = Options(AttentionMechanism::kRelu, PositionalEmbedding::kSum);
  o.pos_emb_decay_fn = "exp(-d)";
  o.val_pos_emb = true;
  o.W_pos_emb_std = 1.1;
  ExpectMonteCarlo(o, true);
  o.pos_emb_type = PositionalEmbedding::kConcat;
  o.attention_mechanism = AttentionMechanism::kAbs;
  o.pos_emb_p_norm = 1;
  ExpectMonteCarlo(o, true);
}

TEST(AttentionTest, MonteCarloNngpMatchesIdentityWithoutLinearScaling) {
  for (PositionalEmbedding pe :
       {PositionalEmbedding::kNone, PositionalEmbedding::kSum, PositionalEmbedding::kConcat}) {
    for (bool val : {false, true}) {
      if (pe == PositionalEmbedding::kNone && val) continue;
      GlobalSelfAttentionOptions o = Options(AttentionMechanism::kIdentity, pe);
      o.linear_scaling = false;
      o.val_pos_emb = val;
      // The logits stay random at any width: more heads average them.
      o.n_heads = 8;
      o.n_chan_key = 32;
      ExpectMonteCarlo(o, false, 64, 250);
    }
  }
}

// Whole positions (every channel) set to `value`.
void MaskPosition(Array* x, int64_t n, int64_t position, double value) {
  const int64_t c = x->shape().back(), p = x->size() / (x->dim(0) * c);
  for (int64_t k = 0; k < c; ++k) (*x)[(n * p + position) * c + k] = value;
}

TEST(AttentionTest, MonteCarloNngpMatchesWithMaskedInputs) {
  constexpr double kMask = 10.0;
  Array x1 = Input({2, 2, 3, 128}, 3, true), x2 = Input({2, 2, 3, 128}, 4, true);
  MaskPosition(&x1, 0, 5, kMask);
  MaskPosition(&x1, 1, 0, kMask);
  MaskPosition(&x1, 1, 2, kMask);
  MaskPosition(&x2, 1, 4, kMask);
  for (AttentionMechanism m : {AttentionMechanism::kSoftmax, AttentionMechanism::kRelu}) {
    for (PositionalEmbedding pe : {PositionalEmbedding::kNone, PositionalEmbedding::kSum}) {
      GlobalSelfAttentionOptions o = Options(m, pe);
      o.val_pos_emb = pe != PositionalEmbedding::kNone;
      const Net net = GlobalSelfAttention(o);
      KernelOptions ko;
      ko.mask_constant = kMask;
      // Masked entries are exact zeros on both sides.
      testing_util::ExpectNngpMatchesMonteCarlo(net, x1, x2, kSamples, 11, 0.01, Describe(o), ko);
    }
  }
}

KernelResult KernelOf(const Net& net, const Array& x1, const Array* x2, KernelOptions o = {}) {
  auto r = net.kernel_fn(x1, x2, {"nngp", "ntk", "cov1", "cov2"}, o);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : KernelResult{};
}

TEST(AttentionTest, SqrtScalingOtherThanIdentityIsUnimplementedAtKernelTime) {
  const Array x = Input({2, 4, 8}, 5);
  for (AttentionMechanism m :
       {AttentionMechanism::kSoftmax, AttentionMechanism::kAbs, AttentionMechanism::kRelu}) {
    GlobalSelfAttentionOptions o = Options(m);
    o.linear_scaling = false;
    const Net net = GlobalSelfAttention(o);
    ASSERT_TRUE(net.status().ok()) << net.status();
    auto init = net.init_fn(RngKey(1), x.shape());
    ASSERT_TRUE(init.ok()) << init.status();
    EXPECT_EQ(init->second.arrays.size(), 5u);  // Query, key, value, out, bias.
    auto y = net.apply_fn(init->second, x);
    ASSERT_TRUE(y.ok()) << y.status();
    EXPECT_EQ(y->shape(), (Shape{2, 4, 32}));
    auto k = net.kernel_fn(x, nullptr, {"nngp"});
    ASSERT_FALSE(k.ok());
    EXPECT_EQ(k.status().code(), absl::StatusCode::kUnimplemented) << k.status();
    EXPECT_TRUE(absl::StrContains(k.status().message(), "GlobalSelfAttention")) << k.status();
    EXPECT_TRUE(absl::StrContains(k.status().message(), "linear_scaling")) << k.status();
  }
}

std::vector<GlobalSelfAttentionOptions> Variety() {
  std::vector<GlobalSelfAttentionOptions> out;
  out.push_back(Options(AttentionMechanism::kSoftmax));
  GlobalSelfAttentionOptions o = Options(AttentionMechanism::kAbs, PositionalEmbedding::kSum);
  o.val_pos_emb = true;
  o.pos_emb_decay_fn = "1 / (1 + 4 * d)";
  out.push_back(o);
  o = Options(AttentionMechanism::kIdentity, PositionalEmbedding::kConcat);
  o.linear_scaling = false;
  o.n_chan_pos_emb = 5;
  out.push_back(o);
  o.val_pos_emb = true;
  out.push_back(o);
  return out;
}

TEST(AttentionTest, MissingX2EqualsX2EqualToX1) {
  const Array x = Input({3, 2, 2, 4}, 6);
  for (const GlobalSelfAttentionOptions& o : Variety()) {
    // A nonlinearity and a second attention layer also see the propagated cov2 = None.
    const Net net = serial(GlobalSelfAttention(o), Relu(), GlobalSelfAttention(o));
    const KernelResult none = KernelOf(net, x, nullptr), same = KernelOf(net, x, &x);
    for (const char* name : {"nngp", "ntk", "cov1"}) {
      ExpectArraysNear(*same.Find(name), *none.Find(name), 1e-12, Describe(o) + " " + name);
    }
  }
}

TEST(AttentionTest, FullBatchCovarianceHasTheDiagonalBatchOneOnItsDiagonal) {
  const Array x1 = Input({3, 2, 3, 4}, 7), x2 = Input({2, 2, 3, 4}, 8);
  for (const GlobalSelfAttentionOptions& o : Variety()) {
    const Net net = serial(Dense(8, 1.1, 0.2), GlobalSelfAttention(o));
    auto full = net.kernel_fn(testing_util::InputKernel(x1, &x2, 0, -1, false));
    auto diag = net.kernel_fn(testing_util::InputKernel(x1, &x2, 0, -1, true));
    ASSERT_TRUE(full.ok() && diag.ok()) << full.status() << diag.status();
    const std::string what = Describe(o);
    ExpectArraysNear(diag->cov1, testing_util::BatchDiagonal(full->cov1), 1e-12, what + " cov1");
    ExpectArraysNear(*diag->cov2, testing_util::BatchDiagonal(*full->cov2), 1e-12, what + " cov2");
    ExpectArraysNear(diag->nngp, full->nngp, 1e-12, what + " nngp");
    ExpectArraysNear(*diag->ntk, *full->ntk, 1e-12, what + " ntk");
    // Off the batch diagonal, the full covariance is the nngp of x1 with itself.
    auto self = net.kernel_fn(testing_util::InputKernel(x1, &x1, 0, -1, true));
    ASSERT_TRUE(self.ok()) << self.status();
    ExpectArraysNear(self->nngp, full->cov1, 1e-12, what + " cov1 vs nngp(x1, x1)");
  }
}

// Sum over the trailing P x P entries of each (n1, n2) block.
std::vector<double> BlockSums(const Array& a, int64_t blocks) {
  std::vector<double> s(blocks, 0.0);
  const int64_t inner = a.size() / blocks;
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t e = 0; e < inner; ++e) s[b] += a[b * inner + e];
  return s;
}

TEST(AttentionTest, ZeroKeyWeightsGiveUniformOrNoAttention) {
  const Array x1 = Input({2, 2, 3, 5}, 9), x2 = Input({3, 2, 3, 5}, 10);
  const Kernel in = testing_util::InputKernel(x1, &x2, 0, -1);
  const int64_t p = 6;
  const double ov2 = std::pow(0.8 * 1.2, 2), b2 = 0.09;
  for (AttentionMechanism m : {AttentionMechanism::kSoftmax, AttentionMechanism::kIdentity,
                               AttentionMechanism::kRelu, AttentionMechanism::kAbs}) {
    GlobalSelfAttentionOptions o = Options(m);
    o.W_key_std = 0;
    auto out = GlobalSelfAttention(o).kernel_fn(in);
    ASSERT_TRUE(out.ok()) << out.status();
    // SOFTMAX of zero logits averages every key (A = 1/P); the others give A = 0: only the bias is left.
    const bool softmax = m == AttentionMechanism::kSoftmax;
    const std::vector<double> sums = BlockSums(in.nngp, 6);
    for (int64_t b = 0; b < 6; ++b) {
      const double want = softmax ? ov2 * sums[b] / double(p * p) + b2 : b2;
      for (int64_t e = 0; e < p * p; ++e) {
        EXPECT_NEAR(out->nngp[b * p * p + e], want, 1e-12) << AttentionMechanismName(m);
        // The input NTK is the scalar 0: ntk = 2 nngp - b^2.
        EXPECT_NEAR((*out->ntk)[b * p * p + e], 2 * want - b2, 1e-12) << AttentionMechanismName(m);
      }
    }
  }
  // Square-root scaling: zero logits, so the output is the bias alone.
  GlobalSelfAttentionOptions o = Options(AttentionMechanism::kIdentity, PositionalEmbedding::kSum);
  o.linear_scaling = false;
  o.W_query_std = 0;
  auto out = GlobalSelfAttention(o).kernel_fn(in);
  ASSERT_TRUE(out.ok()) << out.status();
  for (double v : out->nngp.vec()) EXPECT_NEAR(v, b2, 1e-12);
  for (double v : out->ntk->vec()) EXPECT_NEAR(v, b2, 1e-12);
}

TEST(AttentionTest, SinglePositionSoftmaxEqualsDense) {
  // One position: softmax attention weighs it by 1, leaving the value and output projections.
  const Array x1 = Input({3, 1, 6}, 11), x2 = Input({2, 1, 6}, 12);
  const GlobalSelfAttentionOptions o = Options(AttentionMechanism::kSoftmax, PositionalEmbedding::kNone);
  const KernelResult a = KernelOf(serial(Dense(8, 1.4, 0.1), Relu(), GlobalSelfAttention(o)), x1, &x2);
  const KernelResult d = KernelOf(serial(Dense(8, 1.4, 0.1), Relu(), Dense(8, 0.8 * 1.2, 0.3)), x1, &x2);
  for (const char* name : {"nngp", "cov1", "cov2"}) {
    ExpectArraysNear(*d.Find(name), *a.Find(name), 1e-12, name);
  }
}

TEST(AttentionTest, MaskedKeysEqualTheTruncatedSequence) {
  constexpr double kMask = -7.0;
  const Array x1 = Input({2, 5, 6}, 13), x2 = Input({3, 5, 6}, 14);
  Array m1 = x1, m2 = x2;
  // The last position of every sample is padding.
  for (int64_t n = 0; n < 2; ++n) MaskPosition(&m1, n, 4, kMask);
  for (int64_t n = 0; n < 3; ++n) MaskPosition(&m2, n, 4, kMask);
  const Array t1 = SliceAxis(x1, 1, 0, 4), t2 = SliceAxis(x2, 1, 0, 4);
  for (AttentionMechanism m : {AttentionMechanism::kSoftmax, AttentionMechanism::kIdentity,
                               AttentionMechanism::kRelu, AttentionMechanism::kAbs}) {
    for (bool linear : {true, false}) {
      if (!linear && m != AttentionMechanism::kIdentity) continue;
      GlobalSelfAttentionOptions o = Options(m);
      o.linear_scaling = linear;
      const std::string what = Describe(o);
      const Net net = serial(Dense(8, 1.2, 0.1), GlobalSelfAttention(o));
      KernelOptions ko;
      ko.mask_constant = kMask;
      const KernelResult masked = KernelOf(net, m1, &m2, ko), truncated = KernelOf(net, t1, &t2);
      const Array& mn = *masked.Find("nngp");
      const Array& tn = *truncated.Find("nngp");
      for (int64_t b = 0; b < 6; ++b) {
        for (int64_t q = 0; q < 5; ++q) {
          for (int64_t r = 0; r < 5; ++r) {
            const double got = mn[(b * 5 + q) * 5 + r];
            // Masked positions are zeroed; the others only attend to unmasked keys.
            const double want = q == 4 || r == 4 ? 0.0 : tn[(b * 4 + q) * 4 + r];
            EXPECT_NEAR(got, want, 1e-12) << what << " block " << b << " (" << q << ", " << r << ")";
          }
        }
      }
      // apply_fn likewise: unmasked outputs equal those of the truncated inputs, masked ones are 0.
      auto init = net.init_fn(RngKey(3), m1.shape());
      ASSERT_TRUE(init.ok()) << init.status();
      auto ym = net.apply_fn(init->second, m1, kMask);
      auto yt = net.apply_fn(init->second, t1);
      ASSERT_TRUE(ym.ok() && yt.ok());
      for (int64_t n = 0; n < 2; ++n) {
        for (int64_t q = 0; q < 5; ++q) {
          for (int64_t c = 0; c < 32; ++c) {
            const double got = (*ym)[(n * 5 + q) * 32 + c];
            const double want = q == 4 ? 0.0 : (*yt)[(n * 4 + q) * 32 + c];
            EXPECT_NEAR(got, want, 1e-10) << what << " apply (" << n << ", " << q << ", " << c << ")";
          }
        }
      }
    }
  }
}

TEST(AttentionTest, InitDrawsUpstreamParameterShapes) {
  GlobalSelfAttentionOptions o = Options(AttentionMechanism::kRelu, PositionalEmbedding::kConcat);
  o.linear_scaling = false;
  o.val_pos_emb = true;
  o.n_chan_pos_emb = 3;
  o.batch_axis = 1;
  o.channel_axis = 0;
  const Net net = GlobalSelfAttention(o);
  auto init = net.init_fn(RngKey(2), {5, 2, 4, 3});
  ASSERT_TRUE(init.ok()) << init.status();
  EXPECT_EQ(init->first, (Shape{32, 2, 4, 3}));
  const std::vector<Shape> want = {{4, 8, 256}, {4, 8, 256},   {4, 8, 16},
                                   {64, 32},    {32, 1, 1, 1}, {3, 1, 4, 3}};
  ASSERT_EQ(init->second.arrays.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(init->second.arrays[i].shape(), want[i]) << i;
  // Channels first, batch second.
  const Array x = Input({5, 2, 4, 3}, 15);
  auto y = net.apply_fn(init->second, x);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{32, 2, 4, 3}));
}

TEST(AttentionTest, ChannelFirstLayoutMatchesChannelLast) {
  const Array x1 = Input({2, 2, 3, 6}, 16), x2 = Input({3, 2, 3, 6}, 17);
  // (N, H, W, C) -> (C, H, N, W).
  const std::vector<int> perm = {3, 1, 0, 2};
  const Array p1 = Transpose(x1, perm), p2 = Transpose(x2, perm);
  for (GlobalSelfAttentionOptions o : Variety()) {
    const KernelResult last = KernelOf(GlobalSelfAttention(o), x1, &x2);
    o.batch_axis = 2;
    o.channel_axis = 0;
    const KernelResult first = KernelOf(GlobalSelfAttention(o), p1, &p2);
    for (const char* name : {"nngp", "ntk", "cov1", "cov2"}) {
      ExpectArraysNear(*last.Find(name), *first.Find(name), 1e-12, Describe(o) + " " + name);
    }
  }
}

TEST(AttentionTest, ErrorsNameTheLayerAndField) {
  auto expect = [](const Net& net, absl::StatusCode code, const std::string& text) {
    const Array x = Input({2, 3, 4}, 18);
    absl::Status st = net.status();
    if (st.ok()) st = net.init_fn(RngKey(0), x.shape()).status();
    if (st.ok()) st = net.kernel_fn(x, nullptr, {"nngp"}).status();
    EXPECT_EQ(st.code(), code) << st;
    EXPECT_TRUE(absl::StrContains(st.message(), text)) << st;
  };
  GlobalSelfAttentionOptions o = Options(AttentionMechanism::kSoftmax, PositionalEmbedding::kSum);
  o.n_chan_pos_emb = 5;
  expect(GlobalSelfAttention(o), absl::StatusCode::kInvalidArgument, "GlobalSelfAttention.n_chan_pos_emb");
  o = Options(AttentionMechanism::kSoftmax);
  o.n_heads = 0;
  expect(GlobalSelfAttention(o), absl::StatusCode::kInvalidArgument, "GlobalSelfAttention.n_heads");
  o = Options(AttentionMechanism::kSoftmax, PositionalEmbedding::kSum);
  o.pos_emb_decay_fn = "exp(-q)";
  expect(GlobalSelfAttention(o), absl::StatusCode::kInvalidArgument, "GlobalSelfAttention.pos_emb_decay_fn");
  o.W_out_std = NAN;
  o.pos_emb_decay_fn.reset();
  expect(GlobalSelfAttention(o), absl::StatusCode::kInvalidArgument, "GlobalSelfAttention.W_out_std");

  // The kernel needs the full spatial layout.
  const Array x = Input({2, 3, 4}, 19);
  KernelOptions ko;
  ko.diagonal_spatial = true;
  auto k = GlobalSelfAttention(Options(AttentionMechanism::kSoftmax)).kernel_fn(x, nullptr, {"nngp"}, ko);
  EXPECT_EQ(k.status().code(), absl::StatusCode::kInvalidArgument) << k.status();

  // A decay that is not positive definite has no Cholesky factor to correlate embeddings with.
  o = Options(AttentionMechanism::kSoftmax, PositionalEmbedding::kSum);
  o.pos_emb_decay_fn = "1";
  const Net net = GlobalSelfAttention(o);
  auto init = net.init_fn(RngKey(0), x.shape());
  ASSERT_TRUE(init.ok()) << init.status();
  auto y = net.apply_fn(init->second, x);
  EXPECT_EQ(y.status().code(), absl::StatusCode::kInvalidArgument) << y.status();
  EXPECT_TRUE(absl::StrContains(y.status().message(), "GlobalSelfAttention.pos_emb_decay_fn")) << y.status();
  // The kernel only needs R itself.
  EXPECT_TRUE(net.kernel_fn(x, nullptr, {"nngp"}).ok());
}

}  // namespace
}  // namespace nt
