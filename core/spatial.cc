#include "core/spatial.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/layer.h"

namespace nt {

absl::StatusOr<Padding> ParsePadding(const std::string& layer, const std::string& value) {
  if (value == "VALID") return Padding::kValid;
  if (value == "SAME") return Padding::kSame;
  if (value == "CIRCULAR") return Padding::kCircular;
  return LayerError(
      layer, "padding",
      absl::StrCat("must be 'VALID', 'SAME' or 'CIRCULAR' (case-sensitive), got '", value, "'"));
}

const char* PaddingName(Padding p) {
  switch (p) {
    case Padding::kValid:
      return "VALID";
    case Padding::kSame:
      return "SAME";
    case Padding::kCircular:
      return "CIRCULAR";
  }
  return "?";
}

AxisGeometry ForwardGeometry(Padding p, int64_t n, int64_t k, int64_t s) {
  if (p == Padding::kValid) return {n >= k ? (n - k) / s + 1 : 0, 0};
  const int64_t out = (n + s - 1) / s;
  const int64_t total = std::max<int64_t>((out - 1) * s + k - n, 0);
  return {out, total / 2};
}

AxisGeometry TransposeGeometry(Padding p, int64_t n, int64_t k, int64_t s) {
  if (p == Padding::kSame) {
    const int64_t a = s > k - 1 ? k - 1 : (k + s - 2 + 1) / 2;  // ceil((k + s - 2) / 2)
    return {n * s, a};
  }
  const int64_t valid = n * s + std::max<int64_t>(k - s, 0);
  return {p == Padding::kValid ? valid : n * s, k - 1};
}

AxisTaps ForwardTaps(Padding p, int64_t n, int64_t k, int64_t s) {
  const AxisGeometry g = ForwardGeometry(p, n, k, s);
  AxisTaps t{n, g.out, k, std::vector<int64_t>(g.out * k)};
  for (int64_t j = 0; j < g.out; ++j) {
    for (int64_t f = 0; f < k; ++f) {
      int64_t i = s * j + f - g.lo;
      if (p == Padding::kCircular) {
        i = ((i % n) + n) % n;
      } else if (i < 0 || i >= n) {
        i = -1;
      }
      t.index[j * k + f] = i;
    }
  }
  return t;
}

AxisTaps TransposeTaps(Padding p, int64_t n, int64_t k, int64_t s) {
  const Padding geometry = p == Padding::kCircular ? Padding::kValid : p;
  const AxisGeometry g = TransposeGeometry(geometry, n, k, s);
  AxisTaps t{n, g.out, k, std::vector<int64_t>(g.out * k)};
  for (int64_t j = 0; j < g.out; ++j) {
    for (int64_t f = 0; f < k; ++f) {
      const int64_t m = j + f - g.lo;
      const bool hit = m >= 0 && m % s == 0 && m / s < n;
      t.index[j * k + f] = hit ? m / s : -1;
    }
  }
  return t;
}

AxisMatrix TapsMatrix(const AxisTaps& taps, const std::vector<double>& row_weight) {
  AxisMatrix m{taps.n_in, taps.n_out, {}};
  m.rows.resize(taps.n_out);
  for (int64_t j = 0; j < taps.n_out; ++j) {
    for (int64_t f = 0; f < taps.k; ++f) {
      const int64_t i = taps.at(j, f);
      if (i < 0) continue;
      auto& row = m.rows[j];
      auto it = std::find_if(row.begin(), row.end(), [i](const auto& e) { return e.first == i; });
      if (it == row.end()) {
        row.emplace_back(i, row_weight[j]);
      } else {
        it->second += row_weight[j];
      }
    }
  }
  return m;
}

AxisMatrix TapsMatrix(const AxisTaps& taps, double weight) {
  return TapsMatrix(taps, std::vector<double>(taps.n_out, weight));
}

AxisMatrix FoldMatrix(int64_t lz, int64_t l) {
  AxisMatrix m{lz, l, {}};
  m.rows.resize(l);
  const int64_t lo = (lz - l) / 2;
  for (int64_t z = 0; z < lz; ++z) {
    const int64_t j = (((z - lo) % l) + l) % l;
    m.rows[j].emplace_back(z, 1.0);
  }
  return m;
}

AxisMatrix Then(const AxisMatrix& a, const AxisMatrix& b) {
  AxisMatrix m{a.n_in, b.n_out, {}};
  m.rows.resize(b.n_out);
  for (int64_t j = 0; j < b.n_out; ++j) {
    std::vector<double> dense(a.n_in, 0.0);
    std::vector<char> used(a.n_in, 0);
    for (const auto& [mid, wb] : b.rows[j]) {
      for (const auto& [i, wa] : a.rows[mid]) {
        dense[i] += wb * wa;
        used[i] = 1;
      }
    }
    for (int64_t i = 0; i < a.n_in; ++i) {
      if (used[i]) m.rows[j].emplace_back(i, dense[i]);
    }
  }
  return m;
}

AxisMatrix DenseAxisMatrix(int64_t n_out, int64_t n_in, const std::vector<double>& dense) {
  AxisMatrix m{n_in, n_out, {}};
  m.rows.resize(n_out);
  for (int64_t j = 0; j < n_out; ++j) {
    for (int64_t i = 0; i < n_in; ++i) {
      const double w = dense[j * n_in + i];
      if (w != 0.0) m.rows[j].emplace_back(i, w);
    }
  }
  return m;
}

Array ApplyAlongAxis(const Array& t, int axis, const AxisMatrix& m) {
  Shape shape = t.shape();
  const int64_t outer = NumElements(absl::MakeConstSpan(shape).subspan(0, axis));
  const int64_t inner = NumElements(absl::MakeConstSpan(shape).subspan(axis + 1));
  shape[axis] = m.n_out;
  Array out(shape, 0.0);
  const double* src = t.data();
  double* dst = out.data();
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t j = 0; j < m.n_out; ++j) {
      double* d = dst + (o * m.n_out + j) * inner;
      for (const auto& [i, w] : m.rows[j]) {
        const double* s = src + (o * m.n_in + i) * inner;
        for (int64_t e = 0; e < inner; ++e) d[e] += w * s[e];
      }
    }
  }
  return out;
}

Array ApplyTapsToPair(const Array& t, int axis, const AxisTaps& taps, double scale) {
  Shape shape = t.shape();
  const int64_t outer = NumElements(absl::MakeConstSpan(shape).subspan(0, axis));
  const int64_t inner = NumElements(absl::MakeConstSpan(shape).subspan(axis + 2));
  const int64_t n = taps.n_in, m = taps.n_out, k = taps.k;
  shape[axis] = m;
  shape[axis + 1] = m;
  Array out(shape, 0.0);
  const double* src = t.data();
  double* dst = out.data();
  for (int64_t o = 0; o < outer; ++o) {
    const double* so = src + o * n * n * inner;
    double* dobase = dst + o * m * m * inner;
    for (int64_t j = 0; j < m; ++j) {
      for (int64_t f = 0; f < k; ++f) {
        const int64_t i = taps.at(j, f);
        if (i < 0) continue;
        const double* srow = so + i * n * inner;
        double* drow = dobase + j * m * inner;
        if (inner == 1) {
          for (int64_t jp = 0; jp < m; ++jp) {
            const int64_t ip = taps.index[jp * k + f];
            if (ip >= 0) drow[jp] += srow[ip];
          }
        } else {
          for (int64_t jp = 0; jp < m; ++jp) {
            const int64_t ip = taps.index[jp * k + f];
            if (ip < 0) continue;
            const double* s = srow + ip * inner;
            double* d = drow + jp * inner;
            for (int64_t e = 0; e < inner; ++e) d[e] += s[e];
          }
        }
      }
    }
  }
  if (scale != 1.0) {
    for (double& v : out.vec()) v *= scale;
  }
  return out;
}

void ForEachKernelArray(Kernel* k, const std::function<void(Array*, int)>& fn) {
  fn(&k->nngp, 2);
  if (k->ntk && k->ntk->rank() > 0) fn(&*k->ntk, 2);
  fn(&k->cov1, CovBatchAxes(*k));
  if (k->cov2) fn(&*k->cov2, CovBatchAxes(*k));
}

std::vector<int> SpatialAxes(int rank, int batch_axis, int channel_axis) {
  std::vector<int> out;
  for (int i = 0; i < rank; ++i) {
    if (i != batch_axis && i != channel_axis) out.push_back(i);
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> PerAxis(const std::string& layer, const std::string& field,
                                             const std::vector<int64_t>& v, size_t n, int64_t fill) {
  if (v.empty()) return std::vector<int64_t>(n, fill);
  if (v.size() != n) {
    return LayerError(layer, field, absl::StrCat("must have ", n, " entries, got ", v.size()));
  }
  for (int64_t x : v) {
    if (x <= 0) return LayerError(layer, field, absl::StrCat("entries must be positive, got ", x));
  }
  return v;
}

}  // namespace nt
