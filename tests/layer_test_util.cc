#include "tests/layer_test_util.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace nt::testing_util {

Array CosNormal(const Shape& shape, uint64_t seed, double scale) {
  Array x = RngKey(seed).Normal(shape);
  for (double& v : x.vec()) v = scale * std::cos(v);
  return x;
}

Array EmpiricalNngp(const Array& y1, const Array& y2, int batch_axis, int channel_axis,
                    bool diagonal_spatial) {
  const int rank = y1.rank();
  const int b = (batch_axis + rank) % rank, c = (channel_axis + rank) % rank;
  // Batch first and channel last, spatial axes in order: entry (n, p, ch) is at (n P + p) C + ch.
  std::vector<int> perm{b};
  Shape spatial;
  for (int a = 0; a < rank; ++a) {
    if (a != b && a != c) {
      perm.push_back(a);
      spatial.push_back(y1.dim(a));
    }
  }
  perm.push_back(c);
  const Array t1 = Transpose(y1, perm), t2 = Transpose(y2, perm);
  const int64_t n1 = y1.dim(b), n2 = y2.dim(b), ch = y1.dim(c), p = NumElements(spatial);
  auto dot = [&](int64_t i, int64_t q, int64_t j, int64_t r) {
    double s = 0;
    for (int64_t k = 0; k < ch; ++k) s += t1[(i * p + q) * ch + k] * t2[(j * p + r) * ch + k];
    return s / ch;
  };
  Shape shape{n1, n2};
  shape.insert(shape.end(), spatial.begin(), spatial.end());
  if (diagonal_spatial) {
    Array out(shape);
    for (int64_t i = 0; i < n1; ++i)
      for (int64_t j = 0; j < n2; ++j)
        for (int64_t q = 0; q < p; ++q) out[(i * n2 + j) * p + q] = dot(i, q, j, q);
    return out;
  }
  // Computed unzipped (N1, N2, X1, X2, ..., X1', X2', ...), then the axis pairs are zipped.
  shape.insert(shape.end(), spatial.begin(), spatial.end());
  Array out(shape);
  for (int64_t i = 0; i < n1; ++i)
    for (int64_t j = 0; j < n2; ++j)
      for (int64_t q = 0; q < p; ++q)
        for (int64_t r = 0; r < p; ++r) out[((i * n2 + j) * p + q) * p + r] = dot(i, q, j, r);
  const int s = static_cast<int>(spatial.size());
  std::vector<int> zip{0, 1};
  for (int d = 0; d < s; ++d) {
    zip.push_back(2 + d);
    zip.push_back(2 + s + d);
  }
  return Transpose(out, zip);
}

Array BatchDiagonal(const Array& a) {
  const int64_t n = a.dim(0), inner = a.size() / std::max<int64_t>(a.dim(0) * a.dim(1), 1);
  Shape s(a.shape().begin() + 1, a.shape().end());
  s[0] = n;
  Array out(s);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t e = 0; e < inner; ++e) out[i * inner + e] = a[(i * a.dim(1) + i) * inner + e];
  }
  return out;
}

Kernel InputKernel(const Array& x1, const Array* x2, int batch_axis, int channel_axis, bool diagonal_batch,
                   bool diagonal_spatial) {
  const int rank = x1.rank();
  const int b = (batch_axis + rank) % rank, c = (channel_axis + rank) % rank;
  auto cov = [&](const Array& x) {
    Array g = EmpiricalNngp(x, x, b, c, diagonal_spatial);
    return diagonal_batch ? BatchDiagonal(g) : g;
  };
  Kernel k;
  k.nngp = EmpiricalNngp(x1, x2 ? *x2 : x1, b, c, diagonal_spatial);
  k.ntk = Array::Scalar(0.0);
  k.cov1 = cov(x1);
  if (x2) k.cov2 = cov(*x2);
  k.x1_is_x2 = x2 == nullptr;
  k.diagonal_batch = diagonal_batch;
  k.diagonal_spatial = diagonal_spatial;
  k.shape1 = x1.shape();
  k.shape2 = x2 ? x2->shape() : x1.shape();
  k.batch_axis = b;
  k.channel_axis = c;
  return k;
}

void ExpectArraysNear(const Array& expected, const Array& actual, double tol, const std::string& what) {
  ASSERT_EQ(ShapeToString(expected.shape()), ShapeToString(actual.shape())) << what;
  for (int64_t i = 0; i < expected.size(); ++i) {
    ASSERT_NEAR(expected[i], actual[i], tol * (1 + std::abs(expected[i]))) << what << " entry " << i;
  }
}

void ExpectKernelMatchesInputKernel(const Kernel& got, const Kernel& want) {
  ExpectArraysNear(want.nngp, got.nngp, 1e-12, "nngp");
  ExpectArraysNear(want.cov1, got.cov1, 1e-12, "cov1");
  ASSERT_EQ(got.cov2.has_value(), want.cov2.has_value());
  if (want.cov2) ExpectArraysNear(*want.cov2, *got.cov2, 1e-12, "cov2");
  ASSERT_TRUE(got.ntk.has_value());
  EXPECT_EQ(got.ntk->rank(), 0);  // The input's scalar NTK passes through.
  EXPECT_EQ(got.shape1, want.shape1);
  EXPECT_EQ(got.shape2, want.shape2);
  EXPECT_EQ(got.batch_axis, want.batch_axis);
  EXPECT_EQ(got.channel_axis, want.channel_axis);
}

const Array& Get(const KernelResult& r, const std::string& name) {
  const Array* a = r.Find(name);
  EXPECT_NE(a, nullptr) << name;
  static const Array kEmpty;
  return a ? *a : kEmpty;
}

Array ApplyNet(const stax::Net& net, const Array& x, std::optional<double> mask_constant) {
  auto init = net.init_fn(RngKey(0), x.shape());
  EXPECT_TRUE(init.ok()) << init.status();
  auto y = net.apply_fn(init->second, x, mask_constant);
  EXPECT_TRUE(y.ok()) << y.status();
  return y.ok() ? *y : Array();
}

McEstimate MonteCarloNngp(const stax::Net& net, const Array& x1, const Array& x2, int samples, uint64_t seed,
                          const KernelOptions& options) {
  const std::vector<RngKey> keys = RngKey(seed).Split(samples);
  Array mean, sq;
  for (int s = 0; s < samples; ++s) {
    auto init = net.init_fn(keys[s], x1.shape());
    EXPECT_TRUE(init.ok()) << init.status();
    // One dropout key per network, the same for x1 and x2 (a sample meets the same mask on both sides).
    const RngKey dropout_key = keys[s].FoldIn(1);
    auto f1 = net.apply_fn(init->second, x1, options.mask_constant, {options.pattern1.get(), dropout_key});
    auto f2 = net.apply_fn(init->second, x2, options.mask_constant,
                           {options.pattern2 ? options.pattern2.get() : options.pattern1.get(), dropout_key});
    EXPECT_TRUE(f1.ok() && f2.ok());
    const Array e = EmpiricalNngp(*f1, *f2);  // f1 f2^T / width.
    if (s == 0) {
      mean = Array(e.shape());
      sq = Array(e.shape());
    }
    for (int64_t i = 0; i < e.size(); ++i) {
      mean[i] += e[i] / samples;
      sq[i] += e[i] * e[i] / samples;
    }
  }
  Array se(mean.shape());
  for (int64_t i = 0; i < se.size(); ++i) {
    se[i] = std::sqrt(std::max(sq[i] - mean[i] * mean[i], 0.0) / (samples - 1));
  }
  return {mean, se};
}

void ExpectNngpMatchesMonteCarlo(const stax::Net& net, const Array& x1, const Array& x2, int samples,
                                 uint64_t seed, double atol, const std::string& what,
                                 const KernelOptions& options) {
  SCOPED_TRACE(what);
  auto k = net.kernel_fn(x1, &x2, {"nngp"}, options);
  ASSERT_TRUE(k.ok()) << what << ": " << k.status();
  const Array& nngp = Get(*k, "nngp");
  const McEstimate mc = MonteCarloNngp(net, x1, x2, samples, seed, options);
  ASSERT_EQ(ShapeToString(mc.mean.shape()), ShapeToString(nngp.shape())) << what;
  for (int64_t e = 0; e < nngp.size(); ++e) {
    EXPECT_NEAR(mc.mean[e], nngp[e], 5 * mc.std_error[e] + 0.03 * std::abs(nngp[e]) + atol)
        << what << " entry " << e;
  }
}

double RelativeFrobeniusError(const Array& got, const Array& want) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < want.size(); ++i) {
    num += (got[i] - want[i]) * (got[i] - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-12);
}

}  // namespace nt::testing_util
