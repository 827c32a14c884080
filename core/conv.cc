#include "core/conv.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <set>
#include <utility>

#include "Eigen/Core"
#include "absl/strings/str_cat.h"

namespace NT_CORE_NS {

namespace {

// Spatial letters of the default dimension numbers (uppercase without N, C, I, O).
constexpr char kSpatialLetters[] = "ABDEFGHJKLMPQRSTUVWXYZ";

std::string SpatialLetters(const std::string& spec, const std::string& skip) {
  std::string out;
  for (char c : spec) {
    if (skip.find(c) == std::string::npos) out += c;
  }
  return out;
}

std::array<std::string, 3> DefaultDimensionNumbers(size_t s) {
  const std::string l(kSpatialLetters, s);
  return {"N" + l + "C", l + "IO", "N" + l + "C"};
}

std::array<std::string, 3> Specs(const ConvOptions& o) {
  const auto& d = o.dimension_numbers;
  if (d[0].empty() && d[1].empty() && d[2].empty()) return DefaultDimensionNumbers(o.filter_shape.size());
  return d;
}

using RowMat = Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Odometer over a multi-index with the given sizes (row-major).
bool Next(const std::vector<int64_t>& sizes, std::vector<int64_t>* idx) {
  for (int d = static_cast<int>(sizes.size()) - 1; d >= 0; --d) {
    if (++(*idx)[d] < sizes[d]) return true;
    (*idx)[d] = 0;
  }
  return false;
}

// The spatial diagonal (lead..., s1, ..., sS) of a full-layout array (lead..., s1, s1', ...).
Array SpatialDiagonal(const Array& t, int lead, const std::vector<int64_t>& sizes) {
  Shape shape(t.shape().begin(), t.shape().begin() + lead);
  const int64_t outer = NumElements(shape);
  shape.insert(shape.end(), sizes.begin(), sizes.end());
  Array out = Array::Uninitialized(shape);
  const std::vector<int64_t> offsets = DiagonalOffsets(sizes);
  const int64_t p = static_cast<int64_t>(offsets.size()), block = t.size() / std::max<int64_t>(outer, 1);
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t e = 0; e < p; ++e) out[o * p + e] = t[o * block + offsets[e]];
  }
  return out;
}

// The inverse embedding: a full-layout array, zero off the spatial diagonal.
Array EmbedDiagonal(const Array& t, int lead, const std::vector<int64_t>& sizes) {
  Shape shape(t.shape().begin(), t.shape().begin() + lead);
  const int64_t outer = NumElements(shape);
  for (int64_t s : sizes) {
    shape.push_back(s);
    shape.push_back(s);
  }
  Array out(shape, 0.0);
  const std::vector<int64_t> offsets = DiagonalOffsets(sizes);
  const int64_t p = static_cast<int64_t>(offsets.size()), block = out.size() / std::max<int64_t>(outer, 1);
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t e = 0; e < p; ++e) out[o * block + offsets[e]] = t[o * p + e];
  }
  return out;
}

// Adds `v` on the spatial diagonal (q = q' on every axis) of a full-layout array.
void AddOnSpatialDiagonal(Real v, const std::vector<int64_t>& sizes, Array* t) {
  const std::vector<int64_t> offsets = DiagonalOffsets(sizes);
  int64_t block = 1;
  for (int64_t s : sizes) block *= s * s;
  for (int64_t o = 0; o < t->size() / block; ++o) {
    for (int64_t off : offsets) (*t)[o * block + off] += v;
  }
}

}  // namespace

ConvLayer::ConvLayer(ConvKind kind, ConvOptions o) : kind_(kind), o_(std::move(o)) {
  const auto specs = Specs(o_);
  lhs_ = specs[0];
  rhs_ = specs[1];
  out_ = specs[2];
  const std::string lsp = SpatialLetters(lhs_, "NC"), rsp = SpatialLetters(rhs_, "IO");
  for (char c : lsp) {
    const size_t r = rsp.find(c);
    rhs_of_lhs_.push_back(static_cast<int>(r == std::string::npos ? 0 : r));
  }
  for (int r : rhs_of_lhs_) {
    k_.push_back(r < static_cast<int>(o_.filter_shape.size()) ? o_.filter_shape[r] : 1);
    strides_.push_back(o_.strides.empty() || r >= static_cast<int>(o_.strides.size()) ? 1 : o_.strides[r]);
  }
}

std::string ConvLayer::name() const {
  switch (kind_) {
    case ConvKind::kConv:
      return "Conv";
    case ConvKind::kTranspose:
      return "ConvTranspose";
    case ConvKind::kLocal:
      return "ConvLocal";
  }
  return "Conv";
}

absl::Status ConvLayer::Validate(ConvKind kind, const ConvOptions& o) {
  const std::string name = ConvLayer(kind, ConvOptions{}).name();
  if (o.out_chan <= 0)
    return LayerError(name, "out_chan", absl::StrCat("must be positive, got ", o.out_chan));
  for (int64_t f : o.filter_shape) {
    if (f <= 0) return LayerError(name, "filter_shape", absl::StrCat("entries must be positive, got ", f));
  }
  if (o.filter_shape.size() > 8) {
    return LayerError(name, "filter_shape", "at most 8 spatial dimensions are supported");
  }
  if (!o.strides.empty()) {
    auto st = PerAxis(name, "strides", o.strides, o.filter_shape.size(), 1);
    if (!st.ok()) return st.status();
  }
  if (!std::isfinite(o.W_std)) return LayerError(name, "W_std", "must be finite");
  if (o.b_std && !std::isfinite(*o.b_std)) return LayerError(name, "b_std", "must be finite");
  if (o.parameterization == Parameterization::kStandard) {
    for (int i = 0; i < 2; ++i) {
      if (!(o.s[i] > 0) || !std::isfinite(o.s[i])) {
        return LayerError(name, "s", absl::StrCat("entries must be positive, got s[", i, "] = ", o.s[i]));
      }
    }
  }
  const auto& dn = o.dimension_numbers;
  const bool any = !dn[0].empty() || !dn[1].empty() || !dn[2].empty();
  if (any) {
    const size_t want = o.filter_shape.size() + 2;
    const char* fields[3] = {"dimension_numbers.lhs_spec", "dimension_numbers.rhs_spec",
                             "dimension_numbers.out_spec"};
    const std::string special[3] = {"NC", "IO", "NC"};
    std::set<char> letters;
    for (char c : SpatialLetters(dn[1], "IO")) letters.insert(c);
    for (int i = 0; i < 3; ++i) {
      const std::string& s = dn[i];
      if (s.size() != want) {
        return LayerError(name, fields[i],
                          absl::StrCat("must have ", want, " letters (filter_shape has ", want - 2,
                                       " entries), got '", s, "'"));
      }
      std::set<char> seen(s.begin(), s.end());
      if (seen.size() != s.size())
        return LayerError(name, fields[i], absl::StrCat("repeats a letter: '", s, "'"));
      for (char c : special[i]) {
        if (!seen.count(c))
          return LayerError(name, fields[i],
                            absl::StrCat("must contain '", std::string(1, c), "', got '", s, "'"));
      }
      const std::string sp = SpatialLetters(s, special[i]);
      if (std::set<char>(sp.begin(), sp.end()) != letters) {
        return LayerError(name, fields[i],
                          absl::StrCat("spatial letters of '", s, "' differ from rhs_spec '", dn[1], "'"));
      }
    }
  }
  return absl::OkStatus();
}

int64_t ConvLayer::width() const {
  // ConvLocal ignores s[1] (upstream quirk, linear.md 5.3).
  if (kind_ != ConvKind::kLocal && o_.parameterization == Parameterization::kStandard) {
    return static_cast<int64_t>(std::llround(o_.out_chan * o_.s[1]));
  }
  return o_.out_chan;
}

int64_t ConvLayer::filter_size() const {
  int64_t f = 1;
  for (int64_t k : k_) f *= k;
  return f;
}

Requirements ConvLayer::requirements() const {
  Requirements r;
  r.diagonal_spatial = Diagonal{Bool::kYes, kind_ == ConvKind::kLocal ? Bool::kMaybe : Bool::kNo};
  r.batch_axis = static_cast<int>(lhs_.find('N'));
  r.channel_axis = static_cast<int>(lhs_.find('C'));
  return r;
}

absl::StatusOr<ConvLayer::Geometry> ConvLayer::Resolve(const Shape& in) const {
  const size_t rank = lhs_.size();
  if (in.size() != rank) {
    return LayerError(
        name(), "input",
        absl::StrCat("expects rank-", rank, " inputs ('", lhs_, "'), got shape ", ShapeToString(in)));
  }
  Geometry g;
  g.n = in[lhs_.find('N')];
  g.c_in = in[lhs_.find('C')];
  const std::string lsp = SpatialLetters(lhs_, "NC");
  for (size_t d = 0; d < lsp.size(); ++d) {
    const int64_t n = in[lhs_.find(lsp[d])];
    g.in.push_back(n);
    if (kind_ == ConvKind::kTranspose) {
      AxisTaps t = TransposeTaps(o_.padding, n, k_[d], strides_[d]);
      g.out_before_fold.push_back(t.n_out);
      g.out.push_back(TransposeGeometry(o_.padding, n, k_[d], strides_[d]).out);
      g.taps.push_back(std::move(t));
    } else {
      if (o_.padding == Padding::kValid && n < k_[d]) {
        return LayerError(name(), "filter_shape",
                          absl::StrCat("filter size ", k_[d], " exceeds the input size ", n,
                                       " of spatial axis '", std::string(1, lsp[d]), "' with VALID padding"));
      }
      AxisTaps t = ForwardTaps(o_.padding, n, k_[d], strides_[d]);
      g.out_before_fold.push_back(t.n_out);
      g.out.push_back(t.n_out);
      g.taps.push_back(std::move(t));
    }
  }
  return g;
}

absl::StatusOr<ShapeFlow> ConvLayer::OutputShape(const ShapeFlow& in) const {
  if (absl::Status st = ExpectSingle(name(), in.is_list, in.items.size()); !st.ok()) return st;
  auto g = Resolve(in.single());
  if (!g.ok()) return g.status();
  Shape out(out_.size());
  out[out_.find('N')] = g->n;
  out[out_.find('C')] = width();
  const std::string lsp = SpatialLetters(lhs_, "NC");
  for (size_t d = 0; d < lsp.size(); ++d) out[out_.find(lsp[d])] = g->out[d];
  return ShapeFlow::Single(out);
}

Array ConvLayer::ToCanonical(const Array& x) const {
  const std::string canon = "N" + SpatialLetters(lhs_, "NC") + "C";
  if (canon == lhs_) return x;
  std::vector<int> perm;
  for (char c : canon) perm.push_back(static_cast<int>(lhs_.find(c)));
  return Transpose(x, perm);
}

Array ConvLayer::FromCanonical(const Array& y) const {
  const std::string canon = "N" + SpatialLetters(lhs_, "NC") + "C";
  if (canon == out_) return y;
  std::vector<int> perm;
  for (char c : out_) perm.push_back(static_cast<int>(canon.find(c)));
  return Transpose(y, perm);
}

std::vector<Shape> ConvLayer::ParamShapes(const Geometry& g) const {
  const std::string lsp = SpatialLetters(lhs_, "NC");
  // Weights laid out by rhs_spec.
  Shape ws;
  for (char c : rhs_) {
    if (c == 'O') {
      ws.push_back(width());
    } else if (c == 'I') {
      ws.push_back(kind_ == ConvKind::kLocal ? g.c_in * filter_size() : g.c_in);
    } else {
      const size_t d = lsp.find(c);
      ws.push_back(kind_ == ConvKind::kLocal ? g.out[d] : k_[d]);
    }
  }
  std::vector<Shape> shapes{ws};
  if (o_.b_std) {
    // Shared: one bias per output channel; ConvLocal: one per (location, channel).
    Shape bs;
    for (char c : out_) {
      if (c == 'N') {
        bs.push_back(1);
      } else if (c == 'C') {
        bs.push_back(width());
      } else {
        bs.push_back(kind_ == ConvKind::kLocal ? g.out[lsp.find(c)] : 1);
      }
    }
    shapes.push_back(bs);
  }
  return shapes;
}

absl::StatusOr<double> ConvLayer::NumParams(const ShapeFlow& in) const {
  auto out_shape = OutputShape(in);
  if (!out_shape.ok()) return out_shape.status();
  double n = 0;
  for (const Shape& s : ParamShapes(*Resolve(in.single()))) {
    double e = 1;
    for (int64_t d : s) e *= double(d);
    n += e;
  }
  return n;
}

absl::StatusOr<Params> ConvLayer::Init(const RngKey& key, const ShapeFlow& in) const {
  auto out_shape = OutputShape(in);
  if (!out_shape.ok()) return out_shape.status();
  auto g = Resolve(in.single());
  const std::vector<Shape> shapes = ParamShapes(*g);
  const std::vector<RngKey> keys = key.Split(2);
  Params p;
  Array w = keys[0].Normal(shapes[0]);
  if (o_.parameterization == Parameterization::kStandard) {
    const Real scale = o_.W_std / std::sqrt(Real(g->c_in * filter_size()) / o_.s[0]);
    for (Real& v : w.vec()) v *= scale;
  }
  p.arrays.push_back(std::move(w));
  if (o_.b_std) {
    Array b = keys[1].Normal(shapes[1]);
    if (o_.parameterization == Parameterization::kStandard) {
      for (Real& v : b.vec()) v *= *o_.b_std;
    }
    p.arrays.push_back(std::move(b));
  }
  return p;
}

struct ConvLayer::Saved {
  Geometry g;
  Shape y_shape;  // The output, in out_spec layout.
  // Patch matrix (N Q, F C): rows (n, q) over the unfolded output grid, columns laid out by col.
  Array patches;
  Array w;                   // W in canonical order (lhs spatial letters, I, O).
  std::vector<int64_t> pos;  // Input spatial position read by (q, f), or -1 (padding).
  std::vector<int64_t> col;  // Patch column of (f, channel 0); channels step by col_step.
  int64_t col_step = 1;
  Shape b_shape;  // The bias in canonical order (empty without one).
  Real scale = 1.0, bscale = 1.0;
};

absl::StatusOr<ArrayFlow> ConvLayer::Apply(const Params& params, const ArrayFlow& xf) const {
  auto y = Forward(params, xf, nullptr);
  if (!y.ok()) return y.status();
  return ArrayFlow::Single(*std::move(y));
}

absl::StatusOr<Array> ConvLayer::Forward(const Params& params, const ArrayFlow& xf, Saved* saved) const {
  if (absl::Status st = ExpectSingle(name(), xf.is_list, xf.items.size()); !st.ok()) return st;
  auto g = Resolve(xf.single().shape());
  if (!g.ok()) return g.status();
  const size_t want = o_.b_std ? 2 : 1;
  if (params.arrays.size() != want) {
    return LayerError(name(), "params",
                      absl::StrCat("expected ", want, " arrays, got ", params.arrays.size()));
  }
  // The shapes only: drawing a fresh set of weights per call just to compare shapes would be waste.
  const std::vector<Shape> expected = ParamShapes(*g);
  for (size_t i = 0; i < want; ++i) {
    if (params.arrays[i].shape() != expected[i]) {
      return LayerError(
          name(), "params",
          absl::StrCat(i == 0 ? "W" : "b", " has shape ", ShapeToString(params.arrays[i].shape()),
                       ", expected ", ShapeToString(expected[i])));
    }
  }
  const Array x = ToCanonical(xf.single());
  const int s = static_cast<int>(g->in.size());
  const int64_t n = g->n, c = g->c_in, o = width(), f_total = filter_size();
  const std::vector<int64_t>& outs = g->out_before_fold;
  const int64_t q_total = NumElements(outs);
  const int64_t p_in = NumElements(g->in);
  // Patch columns: f * C + c (shared) or c * F + f_rhs (local: the patch follows rhs letter order).
  std::vector<int64_t> col(f_total);
  const int64_t col_step = kind_ == ConvKind::kLocal ? f_total : 1;
  {
    std::vector<int64_t> f(s, 0);
    std::vector<int64_t> rhs_sizes(s);
    for (int d = 0; d < s; ++d) rhs_sizes[rhs_of_lhs_[d]] = k_[d];
    for (int64_t e = 0; e < f_total; ++e) {
      std::vector<int64_t> fr(s);
      for (int d = 0; d < s; ++d) fr[rhs_of_lhs_[d]] = f[d];
      int64_t flat = 0;
      for (int d = 0; d < s; ++d) flat = flat * rhs_sizes[d] + fr[d];
      col[e] = kind_ == ConvKind::kLocal ? flat : e * c;
      Next(k_, &f);
    }
  }
  // The input position each (q, f) reads (filter positions in lhs order).
  std::vector<int64_t> pos(q_total * f_total);
  {
    std::vector<int64_t> q(s, 0);
    for (int64_t qi = 0; qi < q_total; ++qi) {
      std::vector<int64_t> f(s, 0);
      for (int64_t fi = 0; fi < f_total; ++fi) {
        int64_t p = 0;
        bool inside = true;
        for (int d = 0; d < s && inside; ++d) {
          const int64_t i = g->taps[d].at(q[d], f[d]);
          inside = i >= 0;
          p = p * g->in[d] + i;
        }
        pos[qi * f_total + fi] = inside ? p : -1;
        Next(k_, &f);
      }
      Next(outs, &q);
    }
  }
  // Patches: rows (n, q).
  Array patches({n * q_total, f_total * c}, 0.0);
  Eigen::Map<RowMat> pm(patches.data(), n * q_total, f_total * c);
  for (int64_t qi = 0; qi < q_total; ++qi) {
    for (int64_t fi = 0; fi < f_total; ++fi) {
      const int64_t p = pos[qi * f_total + fi];
      if (p < 0) continue;
      for (int64_t b = 0; b < n; ++b) {
        const Real* src = x.data() + (b * p_in + p) * c;
        Real* row = pm.row(b * q_total + qi).data() + col[fi];
        for (int64_t ch = 0; ch < c; ++ch) row[ch * col_step] = src[ch];
      }
    }
  }
  // Weights to (F * C, O) per location in the patch order.
  const std::string lsp = SpatialLetters(lhs_, "NC");
  const std::string canon_w = lsp + "IO";
  std::vector<int> wperm;
  for (char ch : canon_w) wperm.push_back(static_cast<int>(rhs_.find(ch)));
  Array w = Transpose(params.arrays[0], wperm);
  const Real scale = o_.parameterization == Parameterization::kNtk ? o_.W_std / std::sqrt(Real(c * f_total))
                                                                   : 1.0 / std::sqrt(o_.s[0]);
  Shape y_shape{n};
  y_shape.insert(y_shape.end(), outs.begin(), outs.end());
  y_shape.push_back(o);
  Array y = Array::Uninitialized(y_shape);
  Eigen::Map<RowMat> ym(y.data(), n * q_total, o);
  if (kind_ == ConvKind::kLocal) {
    // One GEMM per location over the samples' patches (rows q_total apart).
    const int64_t rows = f_total * c;
    using Strided = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;
    using StridedOut = Eigen::Map<RowMat, 0, Eigen::OuterStride<>>;
    for (int64_t qi = 0; qi < q_total; ++qi) {
      Eigen::Map<const RowMat> wq(w.data() + qi * rows * o, rows, o);
      Strided pq(patches.data() + qi * rows, n, rows, Eigen::OuterStride<>(q_total * rows));
      StridedOut yq(y.data() + qi * o, n, o, Eigen::OuterStride<>(q_total * o));
      yq.noalias() = scale * (pq * wq);
    }
  } else {
    Eigen::Map<const RowMat> wm(w.data(), f_total * c, o);
    ym.noalias() = scale * (pm * wm);
  }
  if (kind_ == ConvKind::kTranspose && o_.padding == Padding::kCircular) {
    for (int d = 0; d < s; ++d) y = ApplyAlongAxis(y, 1 + d, FoldMatrix(outs[d], g->out[d]));
  }
  const Real bscale = o_.parameterization == Parameterization::kNtk && o_.b_std ? *o_.b_std : 1.0;
  Shape b_shape;
  if (o_.b_std) {
    // The bias in canonical order: (1, output spatial sizes or ones, O).
    std::vector<int> to_lhs;
    for (char ch : lhs_) to_lhs.push_back(static_cast<int>(out_.find(ch)));
    const Array b = ToCanonical(Transpose(params.arrays[1], to_lhs));
    b_shape = b.shape();
    const int64_t per_sample = y.size() / n;
    for (int64_t b0 = 0; b0 < n; ++b0) {
      Real* yb = y.data() + b0 * per_sample;
      for (int64_t e = 0; e < per_sample; ++e) yb[e] += bscale * b[b.size() == o ? e % o : e];
    }
  }
  y = FromCanonical(y);
  if (saved != nullptr) {
    saved->g = *std::move(g);
    saved->y_shape = y.shape();
    saved->patches = std::move(patches);
    saved->w = std::move(w);
    saved->pos = std::move(pos);
    saved->col = std::move(col);
    saved->col_step = col_step;
    saved->b_shape = std::move(b_shape);
    saved->scale = scale;
    saved->bscale = bscale;
  }
  return y;
}

absl::StatusOr<Layer::Linearized> ConvLayer::Linearize(const Params& params, const ArrayFlow& xf) const {
  auto saved = std::make_shared<Saved>();
  auto y = Forward(params, xf, saved.get());
  if (!y.ok()) return y.status();
  // The pullback owns a copy of the layer (a few strings and vectors), not a pointer to it.
  auto self = std::make_shared<const ConvLayer>(*this);
  std::shared_ptr<const Saved> frozen = std::move(saved);
  Pullback pullback = [self, frozen](const ArrayFlow& dy) { return self->Backward(*frozen, dy); };
  return Linearized{ArrayFlow::Single(*std::move(y)), std::move(pullback)};
}

absl::StatusOr<Cotangents> ConvLayer::Backward(const Saved& sv, const ArrayFlow& dyf) const {
  if (dyf.is_list || dyf.items.size() != 1) {
    return LayerError(name(), "cotangent", "expects a single output cotangent");
  }
  if (dyf.single().shape() != sv.y_shape) {
    return LayerError(name(), "cotangent",
                      absl::StrCat("has shape ", ShapeToString(dyf.single().shape()), ", expected ",
                                   ShapeToString(sv.y_shape)));
  }
  const Geometry& g = sv.g;
  const int s = static_cast<int>(g.in.size());
  const int64_t n = g.n, c = g.c_in, o = width(), f_total = filter_size();
  const std::vector<int64_t>& outs = g.out_before_fold;
  const int64_t q_total = NumElements(outs), p_in = NumElements(g.in);
  // dy from out_spec to canonical (N, spatial in lhs order, O): the inverse of FromCanonical.
  const std::string lsp = SpatialLetters(lhs_, "NC");
  const std::string canon = "N" + lsp + "C";
  Array dy = dyf.single();
  if (canon != out_) {
    std::vector<int> perm;
    for (char ch : canon) perm.push_back(static_cast<int>(out_.find(ch)));
    dy = Transpose(dy, perm);
  }
  Cotangents cot;
  Array db;
  if (o_.b_std) {
    // The bias is added after the fold: sum dy over samples (and locations when shared).
    db = Array(sv.b_shape, 0.0);
    const int64_t per_sample = dy.size() / n;
    const bool shared = db.size() == o;
    for (int64_t b0 = 0; b0 < n; ++b0) {
      const Real* dyb = dy.data() + b0 * per_sample;
      for (int64_t e = 0; e < per_sample; ++e) db[shared ? e % o : e] += sv.bscale * dyb[e];
    }
    db = FromCanonical(db);
  }
  // The adjoint of the CIRCULAR fold: copy every output back to the positions folded onto it.
  if (kind_ == ConvKind::kTranspose && o_.padding == Padding::kCircular) {
    for (int d = 0; d < s; ++d) dy = ApplyAlongAxis(dy, 1 + d, Adjoint(FoldMatrix(outs[d], g.out[d])));
  }
  const int64_t rows = f_total * c;
  Eigen::Map<const RowMat> gm(dy.data(), n * q_total, o);
  Eigen::Map<const RowMat> pm(sv.patches.data(), n * q_total, rows);
  Array dw = Array::Uninitialized(sv.w.shape());
  Array dpatches = Array::Uninitialized({n * q_total, rows});
  if (kind_ == ConvKind::kLocal) {
    using Strided = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;
    using StridedOut = Eigen::Map<RowMat, 0, Eigen::OuterStride<>>;
    for (int64_t qi = 0; qi < q_total; ++qi) {
      Eigen::Map<const RowMat> wq(sv.w.data() + qi * rows * o, rows, o);
      Strided pq(sv.patches.data() + qi * rows, n, rows, Eigen::OuterStride<>(q_total * rows));
      Strided gq(dy.data() + qi * o, n, o, Eigen::OuterStride<>(q_total * o));
      Eigen::Map<RowMat>(dw.data() + qi * rows * o, rows, o).noalias() = sv.scale * (pq.transpose() * gq);
      StridedOut(dpatches.data() + qi * rows, n, rows, Eigen::OuterStride<>(q_total * rows)).noalias() =
          sv.scale * (gq * wq.transpose());
    }
  } else {
    Eigen::Map<const RowMat> wm(sv.w.data(), rows, o);
    Eigen::Map<RowMat>(dw.data(), rows, o).noalias() = sv.scale * (pm.transpose() * gm);
    Eigen::Map<RowMat>(dpatches.data(), n * q_total, rows).noalias() = sv.scale * (gm * wm.transpose());
  }
  // W back to rhs_spec order.
  const std::string canon_w = lsp + "IO";
  std::vector<int> to_rhs(canon_w.size());
  for (size_t i = 0; i < canon_w.size(); ++i) to_rhs[rhs_.find(canon_w[i])] = static_cast<int>(i);
  cot.dparams.arrays.push_back(Transpose(dw, to_rhs));
  if (o_.b_std) cot.dparams.arrays.push_back(std::move(db));
  // dx: scatter-add of the patch cotangents (the transpose of the gather), then back to lhs_spec.
  Shape dx_shape{n};
  dx_shape.insert(dx_shape.end(), g.in.begin(), g.in.end());
  dx_shape.push_back(c);
  Array dx(dx_shape, 0.0);
  for (int64_t qi = 0; qi < q_total; ++qi) {
    for (int64_t fi = 0; fi < f_total; ++fi) {
      const int64_t p = sv.pos[qi * f_total + fi];
      if (p < 0) continue;
      for (int64_t b = 0; b < n; ++b) {
        Real* dst = dx.data() + (b * p_in + p) * c;
        const Real* row = dpatches.data() + (b * q_total + qi) * rows + sv.col[fi];
        for (int64_t ch = 0; ch < c; ++ch) dst[ch] += row[ch * sv.col_step];
      }
    }
  }
  if (canon != lhs_) {
    std::vector<int> to_lhs(lhs_.size());
    for (size_t i = 0; i < canon.size(); ++i) to_lhs[lhs_.find(canon[i])] = static_cast<int>(i);
    dx = Transpose(dx, to_lhs);
  }
  cot.dx = ArrayFlow::Single(std::move(dx));
  return cot;
}

absl::StatusOr<MaskFlow> ConvLayer::MaskFn(const MaskFlow& masks, const ShapeFlow& shapes) const {
  MaskFlow out = masks;
  for (size_t i = 0; i < out.items.size(); ++i) {
    std::optional<Array>& m = out.items[i];
    if (!m) continue;
    if (m->rank() != static_cast<int>(lhs_.size()))
      return LayerError(name(), "mask", "rank differs from the input's");
    Array mc = ToCanonical(AllAlongAxis(*m, static_cast<int>(lhs_.find('C'))));
    auto g = Resolve(shapes.items[i]);
    if (!g.ok()) return g.status();
    const int s = static_cast<int>(g->in.size());
    for (int d = 0; d < s; ++d) {
      const int64_t n = mc.dim(1 + d);
      if (n != g->in[d]) continue;  // A broadcast (size-1) axis stays as it is.
      AxisMatrix m_d;
      if (kind_ == ConvKind::kTranspose) {
        // Masked iff any contributing input is masked.
        m_d = TapsMatrix(g->taps[d], 1.0);
        if (o_.padding == Padding::kCircular) m_d = Then(m_d, FoldMatrix(g->out_before_fold[d], g->out[d]));
      } else {
        if (g->out[d] == n) continue;
        // The input at the centre of each receptive field ((w - 1) // 2 from its start).
        const Padding init = o_.padding == Padding::kCircular ? Padding::kSame : o_.padding;
        const AxisGeometry geo = ForwardGeometry(init, n, k_[d], strides_[d]);
        m_d = AxisMatrix{n, g->out[d], {}};
        m_d.rows.resize(g->out[d]);
        for (int64_t j = 0; j < g->out[d]; ++j) {
          const int64_t src = std::clamp<int64_t>(strides_[d] * j - geo.lo + (k_[d] - 1) / 2, 0, n - 1);
          m_d.rows[j].emplace_back(src, 1.0);
        }
      }
      mc = ApplyAlongAxis(mc, 1 + d, m_d);
      for (Real& v : mc.vec()) v = v != 0.0 ? 1.0 : 0.0;
    }
    m = FromCanonical(mc);
  }
  return out;
}

AxisMatrix ConvLayer::DiagonalMatrix(const Geometry& g, int d) const {
  // Unweighted (the 1/|F| goes with the final scaling): the same sums, in the same order, as
  // ConvolvePairs on the full layout, so diagonal-only covariances match the nngp's diagonal bit for bit.
  AxisMatrix m = TapsMatrix(g.taps[d], 1.0);
  if (kind_ == ConvKind::kTranspose && o_.padding == Padding::kCircular) {
    m = Then(m, FoldMatrix(g.out_before_fold[d], g.out[d]));
  }
  return m;
}

Array ConvLayer::Transform(const Array& t, int lead, bool diagonal_spatial, const Geometry& g, double factor,
                           double shift, const Array* plus) const {
  const int s = static_cast<int>(g.in.size());
  const bool fused = !diagonal_spatial && kind_ != ConvKind::kLocal &&
                     !(kind_ == ConvKind::kTranspose && o_.padding == Padding::kCircular);
  if (fused) return ConvolvePairs(t, lead, g.taps, factor / Real(filter_size()), shift, plus);
  std::vector<AxisMatrix> mats;
  for (int d = 0; d < s; ++d) mats.push_back(DiagonalMatrix(g, d));
  const Real scale = factor / Real(filter_size());
  if (diagonal_spatial) return ApplyAlongAxes(t, lead, mats, scale, shift, plus);
  Array sum;
  if (plus != nullptr) {
    sum = t;
    for (int64_t i = 0; i < sum.size(); ++i) sum[i] += (*plus)[i];
  }
  const Array& in = plus != nullptr ? sum : t;
  if (kind_ == ConvKind::kLocal) {
    // Untied biases are independent across locations: only q = q' gets the shift.
    Array out = EmbedDiagonal(
        ApplyAlongAxes(SpatialDiagonal(in, lead, g.in), lead, mats, scale, 0.0, nullptr), lead, g.out);
    if (shift != 0.0) AddOnSpatialDiagonal(shift, g.out, &out);
    return out;
  }
  // CIRCULAR transposed: convolve on the unfolded grid, then fold both copies of every axis.
  Array out = ConvolvePairs(in, lead, g.taps, factor / Real(filter_size()));
  for (int d = 0; d < s; ++d) {
    const AxisMatrix fold = FoldMatrix(g.out_before_fold[d], g.out[d]);
    out = ApplyAlongAxis(out, lead + 2 * d, fold);
    out = ApplyAlongAxis(out, lead + 2 * d + 1, fold);
  }
  for (Real& v : out.vec()) v += shift;
  return out;
}

absl::Status ConvLayer::TransformKernel(KernelFlow* kf, const KernelContext&) const {
  Kernel& k = kf->single();
  NaturalOrder(&k);
  auto g = Resolve(k.shape1);
  if (!g.ok()) return g.status();
  const bool diag = k.diagonal_spatial;
  const Real w2 = o_.W_std * o_.W_std;
  const Real b2 = o_.b_std ? *o_.b_std * *o_.b_std : 0.0;
  // The transform is linear: combine the NTK's inputs and transform once.
  if (k.ntk) {
    Array& ntk = *k.ntk;
    const Real fan_in = Real(g->c_in * filter_size()) / o_.s[0];  // Finite (standard param).
    const Real bias_ntk = o_.b_std ? 1.0 : 0.0;
    if (ntk.rank() == 0 && ntk[0] != 0.0) ntk = Array(k.nngp.shape(), ntk[0]);
    if (ntk.rank() == 0) {
      // The input's NTK is 0: ntk' = nngp' (NTK parameterization) or fan_in K(nngp) (+ 1).
      ntk = o_.parameterization == Parameterization::kNtk
                ? Transform(k.nngp, 2, diag, *g, w2, b2, nullptr)
                : Transform(k.nngp, 2, diag, *g, fan_in, bias_ntk, nullptr);
    } else if (o_.parameterization == Parameterization::kNtk) {
      // ntk' = W^2 K(ntk + nngp) + b^2
      ntk = Transform(ntk, 2, diag, *g, w2, b2, &k.nngp);
    } else {
      // ntk' = K(fan_in nngp + W^2 ntk) (+ 1 with a bias).
      for (int64_t i = 0; i < ntk.size(); ++i) ntk[i] = fan_in * k.nngp[i] + w2 * ntk[i];
      ntk = Transform(ntk, 2, diag, *g, 1.0, bias_ntk, nullptr);
    }
  }
  k.nngp = Transform(k.nngp, 2, diag, *g, w2, b2, nullptr);
  const int cb = CovBatchAxes(k);
  const bool cov_diag = CovDiagonalSpatial(k);
  k.cov1 = Transform(k.cov1, cb, cov_diag, *g, w2, b2, nullptr);
  if (k.cov2) k.cov2 = Transform(*k.cov2, cb, cov_diag, *g, w2, b2, nullptr);
  // Kernel spatial axes follow out_spec's letter order.
  const std::string lsp = SpatialLetters(lhs_, "NC"), osp = SpatialLetters(out_, "NC");
  if (lsp != osp) {
    ForEachKernelArray(&k, [&](Array* a, int lead) {
      std::vector<int> perm;
      for (int i = 0; i < lead; ++i) perm.push_back(i);
      const bool single = a->rank() - lead == static_cast<int>(osp.size());  // Diagonal layout.
      for (char c : osp) {
        const int d = static_cast<int>(lsp.find(c));
        if (single) {
          perm.push_back(lead + d);
        } else {
          perm.push_back(lead + 2 * d);
          perm.push_back(lead + 2 * d + 1);
        }
      }
      *a = Transpose(*a, perm);
    });
  }
  k.batch_axis = static_cast<int>(out_.find('N'));
  k.channel_axis = static_cast<int>(out_.find('C'));
  k.is_gaussian = true;
  k.is_input = false;
  return absl::OkStatus();
}

}  // namespace NT_CORE_NS
