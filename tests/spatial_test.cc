// The spatial helpers against naive loops written from their documented definitions (spatial.h and
// linear.md 4.1): padding geometry and taps, the per-axis linear maps, and the pair convolution.
#include "core/spatial.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "core/array.h"
#include "core/rng.h"
#include "gtest/gtest.h"

namespace nt {
namespace {

constexpr Padding kPaddings[] = {Padding::kValid, Padding::kSame, Padding::kCircular};

int64_t Flat(const Shape& shape, const std::vector<int64_t>& idx) {
  int64_t f = 0;
  for (size_t d = 0; d < shape.size(); ++d) f = f * shape[d] + idx[d];
  return f;
}

std::vector<int64_t> Unflat(const Shape& shape, int64_t f) {
  std::vector<int64_t> idx(shape.size());
  for (int d = static_cast<int>(shape.size()) - 1; d >= 0; --d) {
    idx[d] = f % shape[d];
    f /= shape[d];
  }
  return idx;
}

// One expectation per comparison (the worst entry, relative to 1 + |want|), not one per element.
void ExpectNear(const Array& got, const Array& want, double tol = 1e-12) {
  ASSERT_EQ(got.shape(), want.shape());
  double worst = 0;
  int64_t at = 0;
  for (int64_t i = 0; i < want.size() && !std::isnan(worst); ++i) {
    const double e = std::abs(got[i] - want[i]) / (1 + std::abs(want[i]));
    if (std::isnan(e) || e > worst) {
      worst = e;
      at = i;
    }
  }
  EXPECT_LE(worst, tol) << "at " << at << ": got " << got[at] << ", want " << want[at];
}

std::vector<double> ToDense(const AxisMatrix& m) {
  std::vector<double> d(m.n_out * m.n_in, 0.0);
  for (int64_t j = 0; j < m.n_out; ++j) {
    for (const auto& [i, w] : m.rows[j]) d[j * m.n_in + i] += w;
  }
  return d;
}

// out[.., j, ..] = sum_i dense[j, i] * t[.., i, ..] along `axis`.
Array NaiveApply(const Array& t, int axis, int64_t n_out, const std::vector<double>& dense) {
  Shape shape = t.shape();
  const int64_t n_in = shape[axis];
  shape[axis] = n_out;
  Array out(shape);
  for (int64_t e = 0; e < out.size(); ++e) {
    std::vector<int64_t> idx = Unflat(shape, e);
    const int64_t j = idx[axis];
    for (int64_t i = 0; i < n_in; ++i) {
      idx[axis] = i;
      out[e] += dense[j * n_in + i] * t[Flat(t.shape(), idx)];
    }
  }
  return out;
}

// linear.md 4.1's construction: pad to n + t (zeros, or wrapped for CIRCULAR), then a VALID window.
struct NaiveAxis {
  int64_t out = 0, lo = 0;
  std::vector<int64_t> taps;  // (j, f) row-major; -1 for a zero pad.
};
NaiveAxis NaiveForward(Padding p, int64_t n, int64_t k, int64_t s) {
  NaiveAxis r;
  int64_t total = 0;
  if (p == Padding::kValid) {
    while (r.out * s + k <= n) ++r.out;
  } else {
    while (r.out * s < n) ++r.out;  // ceil(n / s)
    total = std::max<int64_t>((r.out - 1) * s + k - n, 0);
  }
  r.lo = total / 2;
  std::vector<int64_t> padded(n + total);
  for (int64_t m = 0; m < n + total; ++m) {
    int64_t i = m - r.lo;
    if (p == Padding::kCircular) {
      while (i < 0) i += n;  // Wraps repeatedly when total > n.
      while (i >= n) i -= n;
    } else if (i < 0 || i >= n) {
      i = -1;
    }
    padded[m] = i;
  }
  for (int64_t j = 0; j < r.out; ++j) {
    for (int64_t f = 0; f < k; ++f) r.taps.push_back(padded[s * j + f]);
  }
  return r;
}

TEST(PaddingTest, ParsePaddingIsCaseSensitive) {
  for (Padding p : kPaddings) {
    auto parsed = ParsePadding("Conv", PaddingName(p));
    ASSERT_TRUE(parsed.ok()) << PaddingName(p);
    EXPECT_EQ(*parsed, p);
  }
  for (const std::string bad : {"same", "Valid", "circular", "", "FULL", "SAME "}) {
    EXPECT_EQ(ParsePadding("Conv", bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(ForwardTapsTest, HandWorkedSameAndCircularStride2) {
  // n = 5, k = 3, s = 2: out = 3, total pad = 2, lo = 1.
  const std::vector<int64_t> same = {-1, 0, 1, 1, 2, 3, 3, 4, -1};
  const std::vector<int64_t> circular = {4, 0, 1, 1, 2, 3, 3, 4, 0};
  EXPECT_EQ(ForwardTaps(Padding::kSame, 5, 3, 2).index, same);
  EXPECT_EQ(ForwardTaps(Padding::kCircular, 5, 3, 2).index, circular);
  EXPECT_EQ(ForwardTaps(Padding::kValid, 5, 3, 2).index, (std::vector<int64_t>{0, 1, 2, 2, 3, 4}));
}

TEST(ForwardTapsTest, GeometryAndTapsMatchPadThenValid) {
  for (Padding p : kPaddings) {
    for (int64_t n = 1; n <= 7; ++n) {
      for (int64_t k = 1; k <= 5; ++k) {
        for (int64_t s = 1; s <= 3; ++s) {
          SCOPED_TRACE(testing::Message() << PaddingName(p) << " n=" << n << " k=" << k << " s=" << s);
          const NaiveAxis want = NaiveForward(p, n, k, s);
          const AxisGeometry g = ForwardGeometry(p, n, k, s);
          EXPECT_EQ(g.out, want.out);
          EXPECT_EQ(g.lo, want.lo);
          const AxisTaps t = ForwardTaps(p, n, k, s);
          EXPECT_EQ(t.n_in, n);
          EXPECT_EQ(t.n_out, want.out);
          EXPECT_EQ(t.k, k);
          EXPECT_EQ(t.index, want.taps);
        }
      }
    }
  }
}

TEST(TransposeTapsTest, MatchLhsDilatedDefinition) {
  for (Padding p : kPaddings) {
    for (int64_t n = 1; n <= 5; ++n) {
      for (int64_t k = 1; k <= 4; ++k) {
        for (int64_t s = 1; s <= 3; ++s) {
          SCOPED_TRACE(testing::Message() << PaddingName(p) << " n=" << n << " k=" << k << " s=" << s);
          // CIRCULAR's taps are VALID's (folded afterwards); its geometry's length is after the fold.
          const int64_t valid_out = n * s + std::max<int64_t>(k - s, 0);
          const int64_t a = p == Padding::kSame && s <= k - 1 ? (k + s - 1) / 2 : k - 1;
          EXPECT_EQ(TransposeGeometry(p, n, k, s).out, p == Padding::kValid ? valid_out : n * s);
          const AxisTaps t = TransposeTaps(p, n, k, s);
          ASSERT_EQ(t.n_out, p == Padding::kSame ? n * s : valid_out);
          for (int64_t j = 0; j < t.n_out; ++j) {
            for (int64_t f = 0; f < k; ++f) {
              int64_t want = -1;
              for (int64_t i = 0; i < n; ++i) {
                if (j + f - a == s * i) want = i;
              }
              EXPECT_EQ(t.at(j, f), want) << "j=" << j << " f=" << f;
            }
          }
        }
      }
    }
  }
}

TEST(FoldMatrixTest, SumsEntriesCongruentModuloLength) {
  const Array z = RngKey(1).Normal({11});
  for (int64_t l = 1; l <= 11; ++l) {
    const int64_t lo = (11 - l) / 2;
    Array want({l});
    for (int64_t m = 0; m < 11; ++m) want[((m - lo) % l + l) % l] += z[m];
    ExpectNear(ApplyAlongAxis(z, 0, FoldMatrix(11, l)), want);
  }
}

TEST(TapsMatrixTest, MergesRepeatedTapsAndSkipsPadding) {
  // CIRCULAR with k > n reads some inputs more than once per output.
  for (Padding p : kPaddings) {
    const AxisTaps t = ForwardTaps(p, 2, 5, 1);
    const std::vector<Real> w = {0.5, -1.25};
    const AxisMatrix m = TapsMatrix(t, w);
    std::vector<double> want(t.n_out * 2, 0.0);
    for (int64_t j = 0; j < t.n_out; ++j) {
      for (int64_t f = 0; f < t.k; ++f) {
        if (t.at(j, f) >= 0) want[j * 2 + t.at(j, f)] += w[j];
      }
      for (size_t a = 0; a < m.rows[j].size(); ++a) {
        for (size_t b = 0; b < a; ++b) EXPECT_NE(m.rows[j][a].first, m.rows[j][b].first);
      }
    }
    EXPECT_EQ(ToDense(m), want) << PaddingName(p);
  }
}

// Matrices from n inputs that exercise the application's cases: dense with uneven rows, strided and
// wrapped taps (runs of equal weight), and empty rows.
std::vector<std::pair<AxisMatrix, std::vector<double>>> TestMatrices(int64_t n, uint64_t seed) {
  const Array r = RngKey(seed).Normal({3 * n});
  std::vector<double> dense(r.vec().begin(), r.vec().end());
  for (int64_t e = 0; e < 3 * n; e += 3) dense[e] = 0.0;  // Dropped by DenseAxisMatrix.
  std::vector<std::pair<AxisMatrix, std::vector<double>>> out;
  out.emplace_back(DenseAxisMatrix(3, n, dense), dense);
  const AxisTaps strided = ForwardTaps(Padding::kSame, n, 2, 2);
  const std::vector<Real> row_weight(r.vec().begin(), r.vec().begin() + strided.n_out);
  for (const AxisMatrix& m :
       {TapsMatrix(strided, row_weight), TapsMatrix(ForwardTaps(Padding::kValid, n, 2, 2), 1.0),
        TapsMatrix(ForwardTaps(Padding::kCircular, n, 3, 1), 0.7),
        TapsMatrix(TransposeTaps(Padding::kSame, n, 1, 2), 0.5)}) {
    out.emplace_back(m, ToDense(m));
  }
  return out;
}

TEST(ApplyAlongAxisTest, MatchesNaiveLoopOnEveryAxis) {
  const Array t = RngKey(2).Normal({3, 4, 5});
  for (int axis = 0; axis < 3; ++axis) {
    for (const auto& [m, dense] : TestMatrices(t.dim(axis), 10 + axis)) {
      SCOPED_TRACE(testing::Message() << "axis " << axis << " n_out " << m.n_out);
      ExpectNear(ApplyAlongAxis(t, axis, m), NaiveApply(t, axis, m.n_out, dense));
    }
  }
}

TEST(ApplyAlongAxesTest, EqualsConsecutiveApplicationsScaledAndShifted) {
  const Array t = RngKey(3).Normal({2, 3, 4, 5});
  const Array plus = RngKey(4).Normal({2, 3, 4, 5});
  Array sum = t;
  for (int64_t i = 0; i < sum.size(); ++i) sum[i] += plus[i];
  for (int first = 0; first < 4; ++first) {
    for (int count = 0; first + count <= 4; ++count) {
      std::vector<AxisMatrix> ms;
      for (int d = 0; d < count; ++d)
        ms.push_back(TestMatrices(t.dim(first + d), 20 + d)[(first + d) % 5].first);
      for (const Array* p : {static_cast<const Array*>(nullptr), &plus}) {
        SCOPED_TRACE(testing::Message()
                     << "first " << first << " count " << count << " plus " << (p != nullptr));
        Array want = p == nullptr ? t : sum;
        for (int d = 0; d < count; ++d) want = ApplyAlongAxis(want, first + d, ms[d]);
        for (Real& v : want.vec()) v = 1.7 * v - 0.3;
        ExpectNear(ApplyAlongAxes(t, first, ms, 1.7, -0.3, p), want);
      }
    }
  }
}

TEST(AxisMatrixTest, AdjointIsTranspose) {
  const Array x = RngKey(5).Normal({6});
  for (const auto& [m, dense] : TestMatrices(6, 30)) {
    const AxisMatrix mt = Adjoint(m);
    ASSERT_EQ(mt.n_in, m.n_out);
    ASSERT_EQ(mt.n_out, m.n_in);
    const Array y = RngKey(6).Normal({m.n_out});
    // <m x, y> = <x, m^T y>.
    const Array mx = ApplyAlongAxis(x, 0, m), mty = ApplyAlongAxis(y, 0, mt);
    double lhs = 0, rhs = 0;
    for (int64_t j = 0; j < m.n_out; ++j) lhs += mx[j] * y[j];
    for (int64_t i = 0; i < m.n_in; ++i) rhs += x[i] * mty[i];
    EXPECT_NEAR(lhs, rhs, 1e-12 * (1 + std::abs(lhs)));
    const std::vector<double> dt = ToDense(mt);
    for (int64_t j = 0; j < m.n_out; ++j) {
      for (int64_t i = 0; i < m.n_in; ++i) EXPECT_EQ(dt[i * m.n_out + j], dense[j * m.n_in + i]);
    }
  }
}

TEST(AxisMatrixTest, ThenAppliesFirstThenSecond) {
  const Array x = RngKey(7).Normal({2, 6});
  for (const auto& [a, unused_a] : TestMatrices(6, 40)) {
    for (const auto& [b, unused_b] : TestMatrices(a.n_out, 41)) {
      const AxisMatrix ab = Then(a, b);
      ASSERT_EQ(ab.n_in, 6);
      ASSERT_EQ(ab.n_out, b.n_out);
      ExpectNear(ApplyAlongAxis(x, 1, ab), ApplyAlongAxis(ApplyAlongAxis(x, 1, a), 1, b));
    }
  }
}

// out[.., j_d, j_d', ..] = scale * sum over tap tuples f of (t + plus)[.., taps_d(j_d, f_d),
// taps_d(j_d', f_d), ..] + shift, over the tuples with no padding tap on either side.
Array NaiveConvolvePairs(const Array& t, int lead, const std::vector<AxisTaps>& taps, double scale,
                         double shift, const Array* plus) {
  const int num = static_cast<int>(taps.size());
  Shape shape(t.shape().begin(), t.shape().begin() + lead);
  for (const AxisTaps& a : taps) shape.insert(shape.end(), {a.n_out, a.n_out});
  Array out(shape);
  for (int64_t e = 0; e < out.size(); ++e) {
    const std::vector<int64_t> jdx = Unflat(shape, e);
    std::vector<int64_t> f(num, 0);
    double sum = 0;
    for (int d = 0; d >= 0;) {
      std::vector<int64_t> idx = jdx;
      bool valid = true;
      for (int c = 0; c < num; ++c) {
        idx[lead + 2 * c] = taps[c].at(jdx[lead + 2 * c], f[c]);
        idx[lead + 2 * c + 1] = taps[c].at(jdx[lead + 2 * c + 1], f[c]);
        valid = valid && idx[lead + 2 * c] >= 0 && idx[lead + 2 * c + 1] >= 0;
      }
      if (valid) {
        const int64_t i = Flat(t.shape(), idx);
        sum += t[i] + (plus != nullptr ? (*plus)[i] : 0.0);
      }
      for (d = num - 1; d >= 0 && ++f[d] == taps[d].k; --d) f[d] = 0;  // Next tuple.
    }
    out[e] = scale * sum + shift;
  }
  return out;
}

TEST(ConvolvePairsTest, MatchesNaiveSumOverTaps) {
  // Per-axis taps: SAME and VALID at strides 1 and 2, CIRCULAR, and a transposed one whose sparse taps
  // leave some (j, j') pairs with no common tap (the output is then just `shift`).
  const std::vector<AxisTaps> axes = {
      ForwardTaps(Padding::kSame, 5, 3, 1),     ForwardTaps(Padding::kSame, 5, 3, 2),
      ForwardTaps(Padding::kValid, 5, 2, 1),    ForwardTaps(Padding::kValid, 6, 3, 2),
      ForwardTaps(Padding::kCircular, 4, 3, 2), TransposeTaps(Padding::kSame, 3, 3, 2)};
  // No axes is the plain affine map; three also cover the recursion through an inner (non-last) pair.
  const std::vector<std::vector<int>> cases = {{},     {0},    {1},    {2},    {3},    {4},       {5},
                                               {0, 1}, {2, 3}, {1, 4}, {5, 3}, {3, 5}, {1, 5, 2}, {0, 3, 4}};
  for (const std::vector<int>& c : cases) {
    std::vector<AxisTaps> taps;
    Shape shape = c.size() < 3 ? Shape{2, 3} : Shape{2};
    const int lead = static_cast<int>(shape.size());
    std::string name = "axes";
    for (int a : c) {
      taps.push_back(axes[a]);
      shape.insert(shape.end(), {axes[a].n_in, axes[a].n_in});
      name += " " + std::to_string(a);
    }
    const Array t = RngKey(8).Normal(shape), plus = RngKey(9).Normal(shape);
    struct Affine {
      double scale, shift;
      const Array* plus;
    };
    for (const Affine& f : {Affine{1.0, 0.0, nullptr}, Affine{1.7, 0.3, nullptr}, Affine{0.6, -0.2, &plus}}) {
      SCOPED_TRACE(testing::Message() << name << " scale " << f.scale << " plus " << (f.plus != nullptr));
      ExpectNear(ConvolvePairs(t, lead, taps, f.scale, f.shift, f.plus),
                 NaiveConvolvePairs(t, lead, taps, f.scale, f.shift, f.plus));
    }
  }
}

TEST(DiagonalOffsetsTest, PicksTheDiagonalEntriesOfABlock) {
  for (const std::vector<int64_t>& sizes : {std::vector<int64_t>{3}, {2, 3}, {2, 1, 3}}) {
    Shape full, q_shape = sizes;
    for (int64_t n : sizes) full.insert(full.end(), {n, n});
    std::vector<int64_t> want, want_diagonal;
    for (int64_t e = 0; e < NumElements(q_shape); ++e) {
      std::vector<int64_t> idx;
      for (int64_t q : Unflat(q_shape, e)) idx.insert(idx.end(), {q, q});
      want.push_back(Flat(full, idx));
      want_diagonal.push_back(e);
    }
    EXPECT_EQ(DiagonalOffsets(sizes), want);
    EXPECT_EQ(DiagonalOffsets(sizes, /*diagonal=*/true), want_diagonal);
  }
}

}  // namespace
}  // namespace nt
