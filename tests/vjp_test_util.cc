#include "tests/vjp_test_util.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace nt::testing_util {

namespace {

double Dot(const Array& a, const Array& b) {
  double s = 0;
  for (int64_t i = 0; i < a.size(); ++i) s += double(a[i]) * double(b[i]);
  return s;
}

// Random arrays shaped like `like`, one key per item, with `scale` the rms of each item.
std::vector<Array> RandomLike(const std::vector<Array>& like, RngKey key) {
  std::vector<Array> out;
  for (const Array& a : like) {
    std::vector<RngKey> two = key.Split(2);
    key = two[0];
    out.push_back(two[1].Normal(a.shape()));
  }
  return out;
}

void Flatten(const Params& p, std::vector<const Array*>* out) {
  for (const Array& a : p.arrays) out->push_back(&a);
  for (const Params& c : p.children) Flatten(c, out);
}
void FlattenMutable(Params* p, std::vector<Array*>* out) {
  for (Array& a : p->arrays) out->push_back(&a);
  for (Params& c : p->children) FlattenMutable(&c, out);
}

// Cotangent trees may leave out the arrays of layers without parameters but must otherwise mirror params.
void ExpectSameTree(const Params& want, const Params& got, const std::string& where) {
  ASSERT_EQ(want.arrays.size(), got.arrays.size()) << where << ": number of parameter cotangents";
  for (size_t i = 0; i < want.arrays.size(); ++i) {
    EXPECT_EQ(want.arrays[i].shape(), got.arrays[i].shape()) << where << ".arrays[" << i << "]";
  }
  ASSERT_EQ(want.children.size(), got.children.size()) << where << ": number of children";
  for (size_t i = 0; i < want.children.size(); ++i) {
    ExpectSameTree(want.children[i], got.children[i], absl::StrCat(where, ".children[", i, "]"));
  }
}

// Fourth-order central difference of g at 0 with step h.
double Derivative(const std::function<double(double)>& g, double h) {
  return (-g(2 * h) + 8 * g(h) - 8 * g(-h) + g(-2 * h)) / (12 * h);
}

void ExpectClose(double fd, double vjp, double tol, const std::string& what) {
  const double scale = std::max({std::abs(fd), std::abs(vjp), 1e-3});
  EXPECT_LE(std::abs(fd - vjp), tol * scale) << what << ": finite differences " << fd << ", pullback " << vjp;
}

}  // namespace

void ExpectVjpMatchesFiniteDifferences(const Layer& layer, const Params& params, const ArrayFlow& x,
                                       const MaskFlow& masks_in, const ApplyContext& ctx, double tol,
                                       uint64_t seed) {
  MaskFlow masks = masks_in;
  masks.is_list = x.is_list;
  masks.items.resize(x.items.size());
  auto lin = layer.LinearizeMasked(params, x, masks, ctx);
  ASSERT_TRUE(lin.ok()) << layer.name() << ": " << lin.status();
  auto plain = layer.ApplyMasked(params, x, masks, ctx);
  ASSERT_TRUE(plain.ok()) << plain.status();
  ASSERT_EQ(plain->values.items.size(), lin->out.values.items.size());
  for (size_t i = 0; i < plain->values.items.size(); ++i) {
    ASSERT_EQ(plain->values.items[i].shape(), lin->out.values.items[i].shape());
    for (int64_t j = 0; j < plain->values.items[i].size(); ++j) {
      ASSERT_NEAR(plain->values.items[i][j], lin->out.values.items[i][j],
                  1e-12 * (1 + std::abs(plain->values.items[i][j])))
          << layer.name() << ": Linearize's outputs differ from apply_fn's at item " << i << " entry " << j;
    }
  }
  // Cotangents of masked outputs: apply_fn zeroes those outputs, so use dy = 0 there.
  std::vector<RngKey> keys = RngKey(seed).Split(3);
  std::vector<Array> dy = RandomLike(lin->out.values.items, keys[0]);
  for (size_t i = 0; i < dy.size(); ++i) {
    if (i < lin->out.masks.items.size() && lin->out.masks.items[i])
      ZeroWhereMasked(*lin->out.masks.items[i], &dy[i]);
  }
  ArrayFlow dyf;
  dyf.items = dy;
  dyf.is_list = lin->out.values.is_list;
  auto cot = lin->pullback(dyf);
  ASSERT_TRUE(cot.ok()) << layer.name() << ": " << cot.status();
  ASSERT_EQ(cot->dx.items.size(), x.items.size());
  for (size_t i = 0; i < x.items.size(); ++i) {
    ASSERT_EQ(cot->dx.items[i].shape(), x.items[i].shape()) << layer.name() << ": input cotangent " << i;
  }
  ExpectSameTree(params, cot->dparams, layer.name());
  if (::testing::Test::HasFatalFailure()) return;

  // <dy, f(params, x)> as a function of a perturbation.
  auto objective = [&](const Params& p, const ArrayFlow& xs) {
    auto y = layer.ApplyMasked(p, xs, masks, ctx);
    EXPECT_TRUE(y.ok()) << y.status();
    if (!y.ok()) return 0.0;
    double s = 0;
    for (size_t i = 0; i < dy.size(); ++i) s += Dot(dy[i], y->values.items[i]);
    return s;
  };

  // Inputs.
  std::vector<Array> dx = RandomLike(x.items, keys[1]);
  for (size_t i = 0; i < dx.size(); ++i) {
    if (masks.items[i]) ZeroWhereMasked(*masks.items[i], &dx[i]);  // Masked entries must stay masked.
  }
  double vjp_x = 0, x_scale = 0;
  for (size_t i = 0; i < dx.size(); ++i) {
    vjp_x += Dot(cot->dx.items[i], dx[i]);
    for (int64_t j = 0; j < x.items[i].size(); ++j)
      x_scale = std::max(x_scale, std::abs(double(x.items[i][j])));
  }
  const double hx = 1e-5 * std::max(x_scale, 1e-3);
  const double fd_x = Derivative(
      [&](double t) {
        ArrayFlow xs = x;
        for (size_t i = 0; i < dx.size(); ++i) {
          for (int64_t j = 0; j < dx[i].size(); ++j) xs.items[i][j] += t * dx[i][j];
        }
        return objective(params, xs);
      },
      hx);
  ExpectClose(fd_x, vjp_x, tol, absl::StrCat(layer.name(), ": input cotangent"));

  // Parameters.
  std::vector<const Array*> p_arrays, dp_arrays;
  Flatten(params, &p_arrays);
  Flatten(cot->dparams, &dp_arrays);
  if (p_arrays.empty()) return;
  std::vector<Array> p_values;
  for (const Array* a : p_arrays) p_values.push_back(*a);
  std::vector<Array> dp = RandomLike(p_values, keys[2]);
  double vjp_p = 0, p_scale = 0;
  for (size_t i = 0; i < dp.size(); ++i) {
    vjp_p += Dot(*dp_arrays[i], dp[i]);
    for (int64_t j = 0; j < p_values[i].size(); ++j)
      p_scale = std::max(p_scale, std::abs(double(p_values[i][j])));
  }
  const double hp = 1e-5 * std::max(p_scale, 1e-3);
  const double fd_p = Derivative(
      [&](double t) {
        Params ps = params;
        std::vector<Array*> arrays;
        FlattenMutable(&ps, &arrays);
        for (size_t i = 0; i < dp.size(); ++i) {
          for (int64_t j = 0; j < dp[i].size(); ++j) (*arrays[i])[j] += t * dp[i][j];
        }
        return objective(ps, x);
      },
      hp);
  ExpectClose(fd_p, vjp_p, tol, absl::StrCat(layer.name(), ": parameter cotangent"));
}

void ExpectNetVjpMatchesFiniteDifferences(const stax::Net& net, const Array& x,
                                          std::optional<double> mask_constant, const ApplyContext& ctx,
                                          double tol, uint64_t param_seed) {
  ASSERT_TRUE(net.status().ok()) << net.status();
  auto init = net.init_fn(RngKey(param_seed), x.shape());
  ASSERT_TRUE(init.ok()) << init.status();
  ExpectVjpMatchesFiniteDifferences(*net.layer(), init->second, ArrayFlow::Single(x),
                                    MaskFlow::Single(MaskOfConstant(x, mask_constant)), ctx, tol);
}

}  // namespace nt::testing_util
