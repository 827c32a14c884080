// ImageResize: resampling maps against jax.image.resize values, exact kernels against the input kernel
// of the resized inputs (the layer is deterministic), masks, refusals, and Monte Carlo agreement.
#include "core/image_resize.h"

#include <memory>
#include <string>
#include <vector>

#include "core/stax.h"
#include "gtest/gtest.h"
#include "tests/layer_test_util.h"

namespace nt {
namespace {

using stax::Net;

using testing_util::ExpectArraysNear;
using testing_util::InputKernel;

// Resizing keeps the natural spatial order: a reversed input kernel comes out unreversed.
void ExpectKernelNear(const Kernel& got, const Kernel& want) {
  testing_util::ExpectKernelMatchesInputKernel(got, want);
  EXPECT_FALSE(got.is_reversed);
}

Net Resize(std::vector<int64_t> shape, std::string method, bool antialias = true, int batch_axis = 0,
           int channel_axis = -1) {
  ImageResizeOptions o;
  o.shape = std::move(shape);
  o.method = std::move(method);
  o.antialias = antialias;
  o.batch_axis = batch_axis;
  o.channel_axis = channel_axis;
  EXPECT_TRUE(ImageResizeLayer::Validate(o).ok());
  return Net(std::make_shared<ImageResizeLayer>(o));
}

// Applies a 1-d resize to a vector.
std::vector<double> Resize1d(const std::vector<double>& v, int64_t n_out, const std::string& method,
                             bool antialias = true) {
  Net net = Resize({-1, n_out, -1}, method, antialias);
  const int64_t n = static_cast<int64_t>(v.size());
  auto y = net.apply_fn(Params{}, Array({1, n, 1}, v));
  EXPECT_TRUE(y.ok()) << y.status();
  return std::vector<double>(y->vec().begin(), y->vec().end());
}

void ExpectVectorNear(const std::vector<double>& got, const std::vector<double>& want, double tol = 1e-12) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << "entry " << i;
}

TEST(ImageResizeHelperTest, InputKernelMatchesEngine) {
  const Array x1 = RngKey(1).Normal({3, 4, 2, 2}), x2 = RngKey(2).Normal({2, 4, 2, 2});
  auto r = stax::Identity().kernel_fn(x1, &x2, {"nngp", "cov1", "cov2"});
  ASSERT_TRUE(r.ok()) << r.status();
  const Kernel k = InputKernel(x1, &x2, 0, 3, true);
  ExpectArraysNear(k.nngp, *r->Find("nngp"), 1e-12, "nngp");
  ExpectArraysNear(k.cov1, *r->Find("cov1"), 1e-12, "cov1");
  ExpectArraysNear(*k.cov2, *r->Find("cov2"), 1e-12, "cov2");
}

// Reference values of jax.image.resize on short vectors (derived from jax's compute_weight_mat).
TEST(ImageResizeApplyTest, LinearMatchesJaxValues) {
  // Antialiased 4 -> 2 widens the triangle to radius 2: weights (3, 3, 1, 0) / 7 and (0, 1, 3, 3) / 7.
  ExpectVectorNear(Resize1d({0, 1, 2, 3}, 2, "linear"), {5.0 / 7, 16.0 / 7});
  ExpectVectorNear(Resize1d({0, 1, 2, 3}, 2, "linear", false), {0.5, 2.5});
  ExpectVectorNear(Resize1d({0, 1}, 4, "linear"), {0, 0.25, 0.75, 1});
  ExpectVectorNear(Resize1d({0, 1}, 4, "bilinear", false), {0, 0.25, 0.75, 1});  // Upsampling: no effect.
  ExpectVectorNear(Resize1d({2, 4, 8}, 1, "triangle", false), {4});
}

TEST(ImageResizeApplyTest, NearestUsesFloorOfCentre) {
  ExpectVectorNear(Resize1d({10, 11, 12, 13}, 2, "nearest"), {11, 13});
  ExpectVectorNear(Resize1d({10, 11}, 5, "nearest"), {10, 10, 11, 11, 11});
  ExpectVectorNear(Resize1d({10, 11, 12}, 2, "nearest"), {10, 12});
}

TEST(ImageResizeApplyTest, CubicAndLanczosInterpolate) {
  // Keys cubic (a = -0.5) 2 -> 4, first output: taps at distances 0.25 and 1.25.
  const double w0 = ((1.5 * 0.25 - 2.5) * 0.25) * 0.25 + 1;
  const double w1 = ((-0.5 * 1.25 + 2.5) * 1.25 - 4) * 1.25 + 2;
  EXPECT_NEAR(Resize1d({0, 1}, 4, "cubic")[0], w1 / (w0 + w1), 1e-12);
  for (const std::string m : {"cubic", "bicubic", "tricubic", "lanczos3", "lanczos5"}) {
    SCOPED_TRACE(m);
    // Rows are normalised: constants are preserved, up- and downsampling.
    ExpectVectorNear(Resize1d(std::vector<double>(7, 2.5), 12, m), std::vector<double>(12, 2.5), 1e-12);
    ExpectVectorNear(Resize1d(std::vector<double>(7, 2.5), 3, m), std::vector<double>(3, 2.5), 1e-12);
    // Same-size resizing is the identity (the axis is skipped).
    ExpectVectorNear(Resize1d({1, 5, 2}, 3, m), {1, 5, 2});
  }
  // Interpolating kernels reproduce samples at integer ratios: 3 -> 9 keeps every third centre.
  const std::vector<double> up = Resize1d({1, 5, 2}, 9, "lanczos3");
  EXPECT_NEAR(up[1], 1, 1e-12);
  EXPECT_NEAR(up[4], 5, 1e-12);
  EXPECT_NEAR(up[7], 2, 1e-12);
}

TEST(ImageResizeApplyTest, ResizesEveryListedAxisSeparably) {
  Net net = Resize({3, 2, -1, -1}, "linear");
  const Array x = RngKey(3).Normal({2, 4, 3, 2});
  auto y = net.apply_fn(Params{}, x);
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_EQ(y->shape(), (Shape{3, 2, 3, 2}));
  const Array want = ApplyAlongAxis(ApplyAlongAxis(x, 0, ResizeMatrix(ResizeMethod::kLinear, 2, 3, true)), 1,
                                    ResizeMatrix(ResizeMethod::kLinear, 4, 2, true));
  ExpectArraysNear(want, *y, 1e-12, "resized");
  auto init = net.init_fn(RngKey(1), x.shape());
  ASSERT_TRUE(init.ok());
  EXPECT_EQ(init->first, (Shape{3, 2, 3, 2}));
}

struct ExactCase {
  std::string name;
  Shape x1, x2;  // Activation shapes (batch at b, channel at c).
  int b, c;
  std::vector<int64_t> shape;
  std::string method;
  bool antialias;
  bool diagonal_batch;
};

std::vector<ExactCase> ExactCases() {
  return {
      {"Up1dLinear", {3, 5, 2}, {2, 5, 2}, 0, 2, {-1, 9, -1}, "linear", true, true},
      {"Down1dLinearAntialias", {3, 9, 2}, {2, 9, 2}, 0, 2, {-1, 4, -1}, "linear", true, true},
      {"Down1dLinearNoAntialias", {3, 9, 2}, {2, 9, 2}, 0, 2, {-1, 4, -1}, "linear", false, true},
      {"Down1dToOne", {2, 5, 3}, {2, 5, 3}, 0, 2, {-1, 1, -1}, "triangle", true, true},
      {"SameSize1d", {2, 5, 3}, {3, 5, 3}, 0, 2, {-1, 5, -1}, "bilinear", true, true},
      {"Up1dNearest", {3, 5, 2}, {2, 5, 2}, 0, 2, {-1, 8, -1}, "nearest", true, true},
      {"Down1dNearest", {3, 7, 2}, {2, 7, 2}, 0, 2, {-1, 3, -1}, "nearest", true, true},
      {"Mixed2dLinear", {2, 4, 3, 2}, {3, 4, 3, 2}, 0, 3, {-1, 2, 5, -1}, "linear", true, true},
      {"Mixed2dNoAntialias", {2, 5, 3, 2}, {1, 5, 3, 2}, 0, 3, {-1, 3, 4, -1}, "trilinear", false, true},
      {"Mixed2dNearest", {2, 4, 3, 2}, {2, 4, 3, 2}, 0, 3, {-1, 7, 2, -1}, "nearest", true, true},
      {"OneAxis2d", {2, 4, 3, 2}, {2, 4, 3, 2}, 0, 3, {-1, -1, 6, -1}, "linear", true, false},
      {"ChannelFirst", {2, 3, 5}, {3, 3, 5}, 0, 1, {-1, -1, 8}, "linear", true, true},
      {"BatchAxisInMiddle", {4, 2, 3}, {4, 3, 3}, 1, 2, {6, -1, -1}, "linear", true, true},
      // Batch resizing mixes samples: full batch covariances only.
      {"BatchLinear", {3, 4, 2}, {2, 4, 2}, 0, 2, {5, -1, -1}, "linear", true, false},
      {"BatchAndSpatialDown", {4, 6, 2}, {3, 6, 2}, 0, 2, {2, 3, -1}, "linear", true, false},
      {"BatchNearest", {3, 4, 2}, {2, 4, 2}, 0, 2, {4, 2, -1}, "nearest", true, false},
  };
}

class ImageResizeExactTest : public ::testing::TestWithParam<int> {};

// ImageResize is deterministic and linear per channel: its kernel is the input kernel of the resized
// activations (spec 7.3), with every kernel axis resampled.
TEST_P(ImageResizeExactTest, KernelEqualsInputKernelOfResizedInputs) {
  const ExactCase c = ExactCases()[GetParam()];
  Net net = Resize(c.shape, c.method, c.antialias, c.b, c.c);
  const Array x1 = RngKey(11).Normal(c.x1), x2 = RngKey(12).Normal(c.x2);
  auto y1 = net.apply_fn(Params{}, x1);
  auto y2 = net.apply_fn(Params{}, x2);
  ASSERT_TRUE(y1.ok() && y2.ok()) << y1.status() << y2.status();
  for (bool same : {false, true}) {
    SCOPED_TRACE(same ? "x2 = None" : "x2 given");
    auto out = net.kernel_fn(InputKernel(x1, same ? nullptr : &x2, c.b, c.c, c.diagonal_batch));
    ASSERT_TRUE(out.ok()) << out.status();
    ExpectKernelNear(*out, InputKernel(*y1, same ? nullptr : &*y2, c.b, c.c, c.diagonal_batch));
  }
  if (c.diagonal_batch && c.b == 0) {
    // The tiled engine (several tile sizes) gives the same arrays.
    for (int64_t tile : {0, 1}) {
      KernelOptions o;
      o.tile_size = tile;
      auto r = net.kernel_fn(x1, &x2, {"nngp", "cov1", "cov2"}, o);
      ASSERT_TRUE(r.ok()) << r.status();
      const Kernel want = InputKernel(*y1, &*y2, c.b, c.c, true);
      ExpectArraysNear(want.nngp, *r->Find("nngp"), 1e-12, "engine nngp");
      ExpectArraysNear(want.cov1, *r->Find("cov1"), 1e-12, "engine cov1");
      ExpectArraysNear(*want.cov2, *r->Find("cov2"), 1e-12, "engine cov2");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, ImageResizeExactTest,
                         ::testing::Range(0, static_cast<int>(ExactCases().size())),
                         [](const ::testing::TestParamInfo<int>& i) { return ExactCases()[i.param].name; });

TEST(ImageResizeKernelTest, ResizesNtkLikeNngp) {
  // After a Dense layer the NTK is an array: it is resampled with the same maps.
  Net dense = stax::Dense(4, 1.3, 0.2);
  Net net = stax::serial(dense, Resize({-1, 7, -1}, "linear"));
  const Array x1 = RngKey(1).Normal({2, 4, 3}), x2 = RngKey(2).Normal({3, 4, 3});
  auto before = dense.kernel_fn(InputKernel(x1, &x2, 0, 2, true));
  auto after = net.kernel_fn(InputKernel(x1, &x2, 0, 2, true));
  ASSERT_TRUE(before.ok() && after.ok());
  const AxisMatrix m = ResizeMatrix(ResizeMethod::kLinear, 4, 7, true);
  const Array want = ApplyAlongAxis(ApplyAlongAxis(*before->ntk, 2, m), 3, m);
  ExpectArraysNear(want, *after->ntk, 1e-12, "ntk");
}

TEST(ImageResizeKernelTest, ReversedKernelIsResizedInNaturalOrder) {
  const Array x1 = RngKey(5).Normal({2, 4, 3, 2}), x2 = RngKey(6).Normal({2, 4, 3, 2});
  Net net = Resize({-1, 2, 5, -1}, "linear");
  Kernel k = InputKernel(x1, &x2, 0, 3, true);
  k.Reverse();
  auto out = net.kernel_fn(k);
  ASSERT_TRUE(out.ok()) << out.status();
  auto y1 = net.apply_fn(Params{}, x1);
  auto y2 = net.apply_fn(Params{}, x2);
  ExpectKernelNear(*out, InputKernel(*y1, &*y2, 0, 3, true));
}

// A position stays unmasked if any unmasked input contributes to it.
TEST(ImageResizeMaskTest, MaskFnKeepsPositionsWithUnmaskedContributions) {
  auto mask_out = [](const std::string& method, bool antialias, std::vector<double> m, int64_t n_out) {
    ImageResizeLayer layer({{-1, n_out, -1}, method, antialias});
    const int64_t n = static_cast<int64_t>(m.size());
    auto out = layer.MaskFn(MaskFlow::Single(Array({1, n, 1}, m)), ShapeFlow::Single({1, n, 1}));
    EXPECT_TRUE(out.ok()) << out.status();
    return std::vector<double>(out->single()->vec().begin(), out->single()->vec().end());
  };
  // 6 -> 2: output 0 sees inputs 0..3 (radius 3 when antialiased), output 1 inputs 2..5.
  ExpectVectorNear(mask_out("linear", true, {0, 1, 1, 1, 1, 1}, 2), {0, 1});
  ExpectVectorNear(mask_out("linear", true, {1, 1, 0, 1, 1, 1}, 2), {0, 0});
  // Without antialiasing output 0 reads input 1 only, output 1 input 4.
  ExpectVectorNear(mask_out("linear", false, {0, 1, 1, 1, 0, 1}, 2), {1, 0});
  ExpectVectorNear(mask_out("nearest", true, {1, 0, 1, 1, 1, 1}, 2), {0, 1});
  ExpectVectorNear(mask_out("linear", true, {0, 1}, 4), {0, 0, 0, 1});
  ImageResizeLayer layer({{-1, 4, -1}, "linear"});
  EXPECT_TRUE(layer.remask_kernel());
}

TEST(ImageResizeMaskTest, MaskedKernelZeroesMaskedOutputPositions) {
  const double kMask = 10.0;
  Array x = RngKey(8).Normal({2, 6, 2});
  for (int64_t p = 1; p < 6; ++p) x[(0 * 6 + p) * 2] = x[(0 * 6 + p) * 2 + 1] = kMask;  // Sample 0: 1..5.
  x[(1 * 6 + 0) * 2] = x[(1 * 6 + 0) * 2 + 1] = kMask;                                  // Sample 1: 0.
  x[(1 * 6 + 3) * 2] = kMask;  // One channel only: not a masked position after Dense.
  Net resize = Resize({-1, 2, -1}, "linear");
  Net net = stax::serial(stax::Dense(3, 1.0), resize);
  KernelOptions o;
  o.mask_constant = kMask;
  auto r = net.kernel_fn(x, nullptr, {"nngp", "cov1"}, o);
  ASSERT_TRUE(r.ok()) << r.status();
  // Reference: resize the zeroed inputs, then zero the entries of masked output positions.
  Array zeroed = x;
  Array pos_mask({2, 6, 1});
  for (int64_t n = 0; n < 2; ++n) {
    for (int64_t p = 0; p < 6; ++p) {
      bool all = true;
      for (int64_t ch = 0; ch < 2; ++ch) {
        double& v = zeroed[(n * 6 + p) * 2 + ch];
        all = all && v == kMask;
        if (v == kMask) v = 0;
      }
      pos_mask[n * 6 + p] = all ? 1 : 0;
    }
  }
  auto y = resize.apply_fn(Params{}, zeroed);
  ASSERT_TRUE(y.ok());
  Kernel want = InputKernel(*y, nullptr, 0, 2, true);
  auto out_mask = resize.layer()->MaskFn(MaskFlow::Single(pos_mask), ShapeFlow::Single({2, 6, 1}));
  ASSERT_TRUE(out_mask.ok());
  const Array& om = *out_mask->single();
  EXPECT_EQ(om.vec(), (Storage{0, 1, 0, 0}));  // Sample 0 keeps output 0 only; sample 1 both.
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 2; ++j)
      for (int64_t p = 0; p < 2; ++p)
        for (int64_t q = 0; q < 2; ++q) {
          if (om[i * 2 + p] != 0 || om[j * 2 + q] != 0) want.nngp[((i * 2 + j) * 2 + p) * 2 + q] = 0;
        }
  ExpectArraysNear(want.nngp, *r->Find("nngp"), 1e-12, "masked nngp");
  EXPECT_EQ((*r->Find("cov1"))[0 * 4 + 1 * 2 + 1], 0.0);  // Sample 0, output position 1.
}

TEST(ImageResizeValidateTest, RejectsBadArguments) {
  auto code = [](ImageResizeOptions o) { return ImageResizeLayer::Validate(o).code(); };
  EXPECT_EQ(code({{-1, 4, -1}, "linear"}), absl::StatusCode::kOk);
  EXPECT_EQ(code({{-1, 4, -1}, "lanczos5"}), absl::StatusCode::kOk);
  EXPECT_EQ(code({{-1, 4, -1}, "Linear"}), absl::StatusCode::kInvalidArgument);  // Case-sensitive.
  EXPECT_EQ(code({{-1, 4, -1}, "bogus"}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{-1, 0, -1}, "linear"}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{-1, -2, -1}, "linear"}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{}, "linear"}), absl::StatusCode::kInvalidArgument);
  ImageResizeOptions p{{-1, 4, -1}, "linear"};
  p.precision = "highest";
  EXPECT_EQ(code(p), absl::StatusCode::kOk);
  p.precision = "bogus";
  const absl::Status st = ImageResizeLayer::Validate(p);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("ImageResize.precision"), std::string::npos) << st;
}

TEST(ImageResizeErrorTest, KernelSupportsLinearAndNearestOnly) {
  const Array x = RngKey(1).Normal({2, 5, 2});
  for (const std::string m : {"cubic", "lanczos3", "lanczos5"}) {
    Net net = Resize({-1, 3, -1}, m);
    auto k = net.kernel_fn(InputKernel(x, nullptr, 0, 2, true));
    EXPECT_EQ(k.status().code(), absl::StatusCode::kUnimplemented) << k.status();
    EXPECT_NE(k.status().message().find(m), std::string::npos) << k.status();
    EXPECT_TRUE(net.apply_fn(Params{}, x).ok());  // apply_fn supports every method.
  }
}

TEST(ImageResizeErrorTest, ResizingTheChannelAxisFailsInKernelOnly) {
  const Array x = RngKey(1).Normal({2, 5, 2});
  Net net = Resize({-1, -1, 4}, "linear");
  auto k = net.kernel_fn(InputKernel(x, nullptr, 0, 2, true));
  EXPECT_EQ(k.status().code(), absl::StatusCode::kInvalidArgument) << k.status();
  EXPECT_NE(k.status().message().find("channel"), std::string::npos) << k.status();
  auto y = net.apply_fn(Params{}, x);
  ASSERT_TRUE(y.ok());
  EXPECT_EQ(y->shape(), (Shape{2, 5, 4}));
  EXPECT_EQ(net.kernel_fn(x, nullptr, {"nngp"}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ImageResizeErrorTest, ShapeMustHaveOneEntryPerAxis) {
  Net net = Resize({-1, 4}, "linear");
  const Array x = RngKey(1).Normal({2, 5, 2});
  EXPECT_EQ(net.apply_fn(Params{}, x).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(net.init_fn(RngKey(0), x.shape()).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(net.kernel_fn(InputKernel(x, nullptr, 0, 2, true)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ImageResizeRequirementsTest, FollowUpstreamDeclarations) {
  auto req = [](std::vector<int64_t> shape, int b = 0, int c = -1) {
    ImageResizeOptions o{std::move(shape), "linear"};
    o.batch_axis = b;
    o.channel_axis = c;
    return ImageResizeLayer(o).requirements();
  };
  Requirements r = req({-1, 4, -1});
  EXPECT_EQ(r.diagonal_batch, true);
  EXPECT_EQ(r.diagonal_spatial->input, Bool::kNo);
  EXPECT_EQ(r.batch_axis, 0);
  EXPECT_EQ(r.channel_axis, 2);  // Reduced mod len(shape).
  r = req({5, -1, -1});
  EXPECT_EQ(r.diagonal_batch, false);
  EXPECT_EQ(r.diagonal_spatial->input, Bool::kYes);
  r = req({3, -1, -1}, 2, 1);  // Batch last, an explicit spatial entry.
  EXPECT_EQ(r.batch_axis, 2);
  EXPECT_EQ(r.channel_axis, 1);
  EXPECT_EQ(r.diagonal_batch, true);
  EXPECT_EQ(r.diagonal_spatial->input, Bool::kNo);
}

TEST(ImageResizeErrorTest, LayoutRefusals) {
  const Array x1 = RngKey(1).Normal({3, 5, 2}), x2 = RngKey(2).Normal({2, 5, 2});
  // A spatial resize needs the full spatial layout.
  KernelOptions diag;
  diag.diagonal_spatial = true;
  EXPECT_EQ(Resize({-1, 4, -1}, "linear").kernel_fn(x1, &x2, {"nngp"}, diag).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Resize({-1, 5, -1}, "linear").kernel_fn(x1, &x2, {"nngp"}, diag).status().code(),
            absl::StatusCode::kInvalidArgument);  // Even at the same size (upstream).
  EXPECT_EQ(Resize({-1, 5, -1}, "linear")
                .kernel_fn(InputKernel(x1, &x2, 0, 2, true, /*diagonal_spatial=*/true))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  // A batch-only resize accepts diagonal spatial kernels.
  Net batch = Resize({4, -1, -1}, "linear");
  auto diag_out = batch.kernel_fn(InputKernel(x1, &x2, 0, 2, false, true));
  ASSERT_TRUE(diag_out.ok()) << diag_out.status();
  EXPECT_EQ(diag_out->nngp.shape(), (Shape{4, 4, 5}));
  // Batch resizing: the tiled engine refuses; a diagonal-batch kernel lacks the information.
  EXPECT_EQ(batch.kernel_fn(x1, &x2, {"nngp"}).status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(batch.kernel_fn(InputKernel(x1, &x2, 0, 2, true)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Analytic NNGP of networks with ImageResize against the mean over finite networks (Dense acts per
// position on the spatial inputs).
class ImageResizeMonteCarloTest : public ::testing::TestWithParam<int> {};

TEST_P(ImageResizeMonteCarloTest, AnalyticNngpMatchesFiniteNetworks) {
  const int w = 512;
  const std::vector<std::pair<std::string, Net>> nets = {
      {"LinearUp", stax::serial(stax::Dense(w, 1.5, 0.2), stax::Relu(), Resize({-1, 7, -1}, "linear"),
                                stax::Dense(w, 1.2, 0.1))},
      {"NearestDown", stax::serial(stax::Dense(w, 1.3, 0.1), stax::Relu(), Resize({-1, 3, -1}, "nearest"),
                                   stax::Dense(w, 1.1))},
      {"Linear2d", stax::serial(stax::Dense(w, 1.4), stax::Relu(), Resize({-1, 2, 3, -1}, "linear"),
                                stax::Dense(w, 1.0, 0.3))},
  };
  const auto& [name, net] = nets[GetParam()];
  const Shape s = GetParam() == 2 ? Shape{3, 3, 2, 2} : Shape{3, 5, 2};
  Shape s2 = s;
  s2[0] = 2;
  testing_util::ExpectNngpMatchesMonteCarlo(net, RngKey(1).Normal(s), RngKey(2).Normal(s2), 200, /*seed=*/7,
                                            1e-3, name);
}

INSTANTIATE_TEST_SUITE_P(Nets, ImageResizeMonteCarloTest, ::testing::Range(0, 3));

}  // namespace
}  // namespace nt
