#include "core/spatial.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "core/layer.h"
#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"

namespace NT_CORE_NS {

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

AxisMatrix TapsMatrix(const AxisTaps& taps, const std::vector<Real>& row_weight) {
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

AxisMatrix TapsMatrix(const AxisTaps& taps, Real weight) {
  return TapsMatrix(taps, std::vector<Real>(taps.n_out, weight));
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

AxisMatrix Adjoint(const AxisMatrix& m) {
  AxisMatrix t{m.n_out, m.n_in, {}};
  t.rows.resize(m.n_in);
  for (int64_t j = 0; j < m.n_out; ++j) {
    for (const auto& [i, w] : m.rows[j]) t.rows[i].emplace_back(j, w);
  }
  return t;
}

AxisMatrix Then(const AxisMatrix& a, const AxisMatrix& b) {
  AxisMatrix m{a.n_in, b.n_out, {}};
  m.rows.resize(b.n_out);
  for (int64_t j = 0; j < b.n_out; ++j) {
    std::vector<Real> dense(a.n_in, 0.0);
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

AxisMatrix DenseAxisMatrix(int64_t n_out, int64_t n_in, const std::vector<Real>& dense) {
  AxisMatrix m{n_in, n_out, {}};
  m.rows.resize(n_out);
  for (int64_t j = 0; j < n_out; ++j) {
    for (int64_t i = 0; i < n_in; ++i) {
      const Real w = dense[j * n_in + i];
      if (w != 0.0) m.rows[j].emplace_back(i, w);
    }
  }
  return m;
}

namespace {

// One term position of every row of an AxisMatrix as runs over the output index: term t of row j reads
// input i0 + step * (j - j0) with weight w for j in [j0, j1). Summing term by term adds the same
// numbers in the same order as row by row, in loops over contiguous outputs (vectorised).
struct TermRun {
  int64_t j0, j1, i0, step;
  Real w;
};

std::vector<std::vector<TermRun>> TermRuns(const AxisMatrix& m) {
  std::vector<std::vector<TermRun>> terms;
  for (int64_t j = 0; j < m.n_out; ++j) {
    const auto& row = m.rows[j];
    if (terms.size() < row.size()) terms.resize(row.size());
    for (size_t t = 0; t < row.size(); ++t) {
      const auto [i, w] = row[t];
      auto& runs = terms[t];
      if (!runs.empty()) {
        TermRun& r = runs.back();
        const int64_t len = r.j1 - r.j0;
        if (r.j1 == j && r.w == w && (len == 1 || i == r.i0 + r.step * len)) {
          if (len == 1) r.step = i - r.i0;
          ++r.j1;
          continue;
        }
      }
      runs.push_back(TermRun{j, j + 1, i, 1, w});
    }
  }
  return terms;
}

// dst (a, m.n_out, b) = m applied along the middle axis of src (a, m.n_in, b). Rows without entries are
// zero. The first term is assigned, not added to zeros: the same sums in the same order without a
// memset of the output.
void ApplyOne(const Real* __restrict src, Real* __restrict dst, int64_t a, const AxisMatrix& m,
              const std::vector<std::vector<TermRun>>& terms, int64_t b) {
  // Term 0 covers exactly the rows with entries.
  int64_t covered = 0;
  if (!terms.empty()) {
    for (const TermRun& r : terms[0]) covered += r.j1 - r.j0;
  }
  const bool all_rows = covered == m.n_out;
  for (int64_t ai = 0; ai < a; ++ai) {
    const Real* __restrict s = src + ai * m.n_in * b;
    Real* __restrict d = dst + ai * m.n_out * b;
    if (b == 1) {
      // The last axis (the diagonal layout's common case): term by term over runs of outputs.
      if (!all_rows) {
        for (int64_t j = 0; j < m.n_out; ++j) {
          if (m.rows[j].empty()) d[j] = 0;
        }
      }
      for (size_t t = 0; t < terms.size(); ++t) {
        for (const TermRun& r : terms[t]) {
          const Real* __restrict in = s + r.i0;
          Real* __restrict out = d + r.j0;
          const int64_t len = r.j1 - r.j0, step = r.step;
          const Real w = r.w;
          if (t == 0 && step == 1) {
            for (int64_t k = 0; k < len; ++k) out[k] = w * in[k];
          } else if (t == 0) {
            for (int64_t k = 0; k < len; ++k) out[k] = w * in[step * k];
          } else if (step == 1) {
            for (int64_t k = 0; k < len; ++k) out[k] += w * in[k];
          } else {
            for (int64_t k = 0; k < len; ++k) out[k] += w * in[step * k];
          }
        }
      }
      continue;
    }
    for (int64_t j = 0; j < m.n_out; ++j, d += b) {
      const auto& row = m.rows[j];
      if (row.empty()) {
        std::fill(d, d + b, Real(0));
        continue;
      }
      const Real w0 = row[0].second;
      const Real* s0 = s + row[0].first * b;
      for (int64_t e = 0; e < b; ++e) d[e] = w0 * s0[e];
      for (size_t t = 1; t < row.size(); ++t) {
        const Real w = row[t].second;
        const Real* si = s + row[t].first * b;
        for (int64_t e = 0; e < b; ++e) d[e] += w * si[e];
      }
    }
  }
}

}  // namespace

Array ApplyAlongAxes(const Array& t, int first, const std::vector<AxisMatrix>& ms, Real scale, Real shift,
                     const Array* plus) {
  const Shape& in_shape = t.shape();
  const int s = static_cast<int>(ms.size());
  Shape shape = in_shape;
  for (int d = 0; d < s; ++d) shape[first + d] = ms[d].n_out;
  const auto span = [](const Shape& sh, size_t from, size_t count = absl::Span<const int64_t>::npos) {
    return NumElements(absl::MakeConstSpan(sh).subspan(from, count));
  };
  const int64_t outer = span(in_shape, 0, first);
  const int64_t in_block = span(in_shape, first), out_block = span(shape, first);
  // Step d maps (a[d], n_in, b[d]) to (a[d], n_out, b[d]); the buffers hold the largest of them.
  std::vector<int64_t> a(s), b(s);
  int64_t scratch = in_block;
  for (int d = 0; d < s; ++d) {
    a[d] = span(shape, first, d);
    b[d] = span(in_shape, first + d + 1);
    scratch = std::max(scratch, a[d] * ms[d].n_out * b[d]);
  }
  std::vector<std::vector<std::vector<TermRun>>> terms;
  for (const AxisMatrix& m : ms) terms.push_back(TermRuns(m));
  Array out = Array::Uninitialized(shape);
  // Entries of the leading axes are independent; chunks of about 64k elements amortise the scratch.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(1, scratch));
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, outer, grain), [&](const tbb::blocked_range<int64_t>& r) {
    std::vector<Real> buf[2] = {std::vector<Real>(scratch), std::vector<Real>(scratch)};
    for (int64_t o = r.begin(); o != r.end(); ++o) {
      const Real* src = t.data() + o * in_block;
      Real* dst = out.data() + o * out_block;
      int next = 0;
      if (plus != nullptr) {
        const Real* p = plus->data() + o * in_block;
        Real* sum = buf[next].data();
        for (int64_t e = 0; e < in_block; ++e) sum[e] = src[e] + p[e];
        src = sum;
        next = 1;
      }
      if (s == 0) std::copy(src, src + in_block, dst);
      for (int d = 0; d < s; ++d) {
        Real* to = d + 1 == s ? dst : buf[next].data();
        ApplyOne(src, to, a[d], ms[d], terms[d], b[d]);
        src = to;
        next ^= 1;
      }
      if (scale != Real(1) || shift != Real(0)) {
        for (int64_t e = 0; e < out_block; ++e) dst[e] = dst[e] * scale + shift;
      }
    }
  });
  return out;
}

Array ApplyAlongAxis(const Array& t, int axis, const AxisMatrix& m) {
  return ApplyAlongAxes(t, axis, {m}, Real(1), Real(0), nullptr);
}

namespace {

// Runs of one tap across the output index j': input index i0 + step * (j' - j0) for j' in [j0, j1).
struct Segment {
  int64_t j0, j1, i0, step;
};

struct PairAxis {
  const AxisTaps* taps;
  std::vector<std::vector<Segment>> segments;  // Per tap.
};

PairAxis MakePairAxis(const AxisTaps& t) {
  PairAxis a{&t, std::vector<std::vector<Segment>>(t.k)};
  for (int64_t f = 0; f < t.k; ++f) {
    auto& segs = a.segments[f];
    for (int64_t j = 0; j < t.n_out; ++j) {
      const int64_t i = t.at(j, f);
      if (i < 0) continue;
      if (!segs.empty()) {
        Segment& s = segs.back();
        const int64_t len = s.j1 - s.j0;
        if (s.j1 == j && (len == 1 ? i > s.i0 : i == s.i0 + s.step * len)) {
          if (len == 1) s.step = i - s.i0;
          ++s.j1;
          continue;
        }
      }
      segs.push_back(Segment{j, j + 1, i, 1});
    }
  }
  return a;
}

struct PairConv {
  std::vector<PairAxis> axes;
  std::vector<int64_t> in_block, out_block;  // Elements of the pairs after d (d + 1 .. S - 1).
  Real scale, shift;

  // in: (n_d, n_d, rest_in), out: (m_d, m_d, rest_out); scratch: one buffer per level.
  void Run(const Real* in, Real* out, int d, std::vector<std::vector<Real>>* scratch) const {
    const AxisTaps& t = *axes[d].taps;
    const int64_t n = t.n_in, m = t.n_out, k = t.k;
    if (d + 1 == static_cast<int>(axes.size())) {
      for (int64_t j = 0; j < m; ++j) RunRow(in, out + j * m, j, d);
      return;
    }
    Real* s = (*scratch)[d].data();
    const int64_t ib = in_block[d], ob = out_block[d];
    for (int64_t j = 0; j < m; ++j) {
      for (int64_t jp = 0; jp < m; ++jp) {
        bool any = false;
        for (int64_t f = 0; f < k; ++f) {
          const int64_t r = t.at(j, f), rp = t.at(jp, f);
          if (r < 0 || rp < 0) continue;
          const Real* src = in + (r * n + rp) * ib;
          if (!any) {
            std::copy(src, src + ib, s);
          } else {
            for (int64_t e = 0; e < ib; ++e) s[e] += src[e];
          }
          any = true;
        }
        Real* dst = out + (j * m + jp) * ob;
        if (any) {
          Run(s, dst, d + 1, scratch);
        } else {
          std::fill(dst, dst + ob, shift);
        }
      }
    }
  }

  // Row j of the last pair: out[j'] = scale * sum_f in[taps(j, f), taps(j', f)].
  void RunRow(const Real* in, Real* orow, int64_t j, int d) const {
    const AxisTaps& t = *axes[d].taps;
    const int64_t n = t.n_in, m = t.n_out;
    std::fill(orow, orow + m, 0.0);
    for (int64_t f = 0; f < t.k; ++f) {
      const int64_t r = t.at(j, f);
      if (r < 0) continue;
      const Real* irow = in + r * n;
      for (const Segment& sg : axes[d].segments[f]) {
        const Real* src = irow + sg.i0 - sg.step * sg.j0;
        if (sg.step == 1) {
          for (int64_t jp = sg.j0; jp < sg.j1; ++jp) orow[jp] += src[jp];
        } else {
          for (int64_t jp = sg.j0; jp < sg.j1; ++jp) orow[jp] += src[sg.step * jp];
        }
      }
    }
    for (int64_t jp = 0; jp < m; ++jp) orow[jp] = orow[jp] * scale + shift;
  }
};

}  // namespace

Array ConvolvePairs(const Array& t, int lead, const std::vector<AxisTaps>& taps, Real scale, Real shift,
                    const Array* plus) {
  const int s = static_cast<int>(taps.size());
  Shape shape(t.shape().begin(), t.shape().begin() + lead);
  const int64_t outer = NumElements(shape);
  if (s < 2 && plus != nullptr) {
    // No blocks to sum at the first level: add up front.
    Array sum = t;
    for (int64_t i = 0; i < sum.size(); ++i) sum[i] += (*plus)[i];
    return ConvolvePairs(sum, lead, taps, scale, shift, nullptr);
  }
  if (s == 0) {
    Array out = t;
    for (Real& v : out.vec()) v = v * scale + shift;
    return out;
  }
  PairConv pc;
  pc.scale = scale;
  pc.shift = shift;
  pc.in_block.assign(s, 1);
  pc.out_block.assign(s, 1);
  for (int d = s - 1; d >= 0; --d) {
    pc.axes.insert(pc.axes.begin(), MakePairAxis(taps[d]));
    if (d + 1 < s) {
      pc.in_block[d] = pc.in_block[d + 1] * taps[d + 1].n_in * taps[d + 1].n_in;
      pc.out_block[d] = pc.out_block[d + 1] * taps[d + 1].n_out * taps[d + 1].n_out;
    }
  }
  for (const AxisTaps& a : taps) {
    shape.push_back(a.n_out);
    shape.push_back(a.n_out);
  }
  Array out = Array::Uninitialized(shape);
  const int64_t in_total = pc.in_block[0] * taps[0].n_in * taps[0].n_in;
  const int64_t out_total = pc.out_block[0] * taps[0].n_out * taps[0].n_out;
  const int64_t m0 = taps[0].n_out;
  // Parallel over (outer entry, first output index): independent output slabs.
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, outer * m0), [&](const tbb::blocked_range<int64_t>& r) {
    std::vector<std::vector<Real>> scratch(s);
    for (int d = 0; d < s; ++d) scratch[d].resize(pc.in_block[d]);
    for (int64_t e = r.begin(); e != r.end(); ++e) {
      const int64_t o = e / m0, j = e % m0;
      const Real* in = t.data() + o * in_total;
      const Real* in2 = plus != nullptr ? plus->data() + o * in_total : nullptr;
      Real* dst = out.data() + o * out_total;
      if (s == 1) {
        pc.RunRow(in, dst + j * m0, j, 0);
        continue;
      }
      // Level 0 restricted to row j.
      const AxisTaps& a = taps[0];
      const int64_t n = a.n_in, ib = pc.in_block[0], ob = pc.out_block[0];
      Real* sc = scratch[0].data();
      for (int64_t jp = 0; jp < m0; ++jp) {
        bool any = false;
        for (int64_t f = 0; f < a.k; ++f) {
          const int64_t ri = a.at(j, f), rp = a.at(jp, f);
          if (ri < 0 || rp < 0) continue;
          const Real* src = in + (ri * n + rp) * ib;
          if (!any) {
            std::copy(src, src + ib, sc);
          } else {
            for (int64_t x = 0; x < ib; ++x) sc[x] += src[x];
          }
          if (in2 != nullptr) {
            const Real* src2 = in2 + (ri * n + rp) * ib;
            for (int64_t x = 0; x < ib; ++x) sc[x] += src2[x];
          }
          any = true;
        }
        Real* o_blk = dst + (j * m0 + jp) * ob;
        if (any) {
          pc.Run(sc, o_blk, 1, &scratch);
        } else {
          std::fill(o_blk, o_blk + ob, shift);
        }
      }
    }
  });
  return out;
}

std::vector<int64_t> DiagonalOffsets(const std::vector<int64_t>& sizes, bool diagonal) {
  std::vector<int64_t> out{0};
  int64_t block = 1;  // Elements of the pairs after d.
  for (int d = static_cast<int>(sizes.size()) - 1; d >= 0; --d) {
    std::vector<int64_t> next;
    next.reserve(out.size() * sizes[d]);
    const int64_t step = diagonal ? block : block * (sizes[d] + 1);
    for (int64_t i = 0; i < sizes[d]; ++i) {
      for (int64_t base : out) next.push_back(i * step + base);
    }
    out = std::move(next);
    block *= diagonal ? sizes[d] : sizes[d] * sizes[d];
  }
  return out;
}

void ForEachKernelArray(Kernel* k, const std::function<void(Array*, int)>& fn) {
  fn(&k->nngp, 2);
  if (k->ntk && k->ntk->rank() > 0) fn(&*k->ntk, 2);
  fn(&k->cov1, CovBatchAxes(*k));
  if (k->cov2) fn(&*k->cov2, CovBatchAxes(*k));
}

absl::StatusOr<std::pair<int, int>> BatchAndChannelAxes(const std::string& layer, int batch_axis,
                                                        int channel_axis, int rank) {
  auto b = CanonicalAxis(layer, "batch_axis", batch_axis, rank);
  if (!b.ok()) return b.status();
  auto c = CanonicalAxis(layer, "channel_axis", channel_axis, rank);
  if (!c.ok()) return c.status();
  if (*b == *c) {
    return LayerError(layer, "channel_axis",
                      absl::StrCat("resolves to axis ", *c, ", the same as batch_axis"));
  }
  return std::make_pair(*b, *c);
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

}  // namespace NT_CORE_NS
