#include "core/attention.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "Eigen/Cholesky"
#include "Eigen/Core"
#include "absl/strings/str_cat.h"
#include "core/position_map.h"
#include "core/spatial.h"

namespace NT_CORE_NS {

namespace {

using RowMat = Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatMap = Eigen::Map<RowMat>;
using ConstMatMap = Eigen::Map<const RowMat>;

// Upstream's stand-in for -inf at masked softmax logits (an all-masked row stays finite).
constexpr double kNegInf = -1e20;

// Whether every axis of `m` equals the one of `shape` or is 1.
bool Broadcasts(const Array& m, const Shape& shape);

// The input with masked entries zeroed (ApplyMasked and LinearizeMasked); the mask must broadcast to it.
absl::StatusOr<Array> ZeroMasked(const std::string& layer, const Array& mask, Array x) {
  if (!Broadcasts(mask, x.shape())) {
    return LayerError(layer, "mask",
                      absl::StrCat("of shape ", ShapeToString(mask.shape()),
                                   " does not broadcast to the input shape ", ShapeToString(x.shape())));
  }
  ZeroWhereMasked(mask, &x);
  return x;
}

bool Broadcasts(const Array& m, const Shape& shape) {
  if (m.rank() != static_cast<int>(shape.size())) return false;
  for (int a = 0; a < m.rank(); ++a) {
    if (m.dim(a) != 1 && m.dim(a) != shape[a]) return false;
  }
  return true;
}

// `m` (0/1) repeated along its size-1 axes to `shape`.
Array BroadcastMask(const Array& m, const Shape& shape) {
  Array out(shape, 1.0);
  ZeroWhereMasked(m, &out);
  for (Real& v : out.vec()) v = 1 - v;
  return out;
}

// Whether some position has both masked and unmasked entries along `axis`.
bool MixedAlong(const Array& m, int axis) {
  Array inverse = m;
  for (Real& v : inverse.vec()) v = v != 0 ? 0 : 1;
  const Array all = AllAlongAxis(m, axis), none = AllAlongAxis(inverse, axis);
  for (int64_t i = 0; i < all.size(); ++i) {
    if (all[i] == 0 && none[i] == 0) return true;
  }
  return false;
}

void ApplyMechanism(AttentionMechanism mech, int64_t rows, int64_t cols, Real* g) {
  switch (mech) {
    case AttentionMechanism::kSoftmax:
      for (int64_t r = 0; r < rows; ++r) {
        Real* row = g + r * cols;
        const Real mx = *std::max_element(row, row + cols);
        Real sum = 0;
        for (int64_t c = 0; c < cols; ++c) sum += row[c] = std::exp(row[c] - mx);
        for (int64_t c = 0; c < cols; ++c) row[c] /= sum;
      }
      break;
    case AttentionMechanism::kIdentity:
      break;
    case AttentionMechanism::kAbs:
      for (int64_t i = 0; i < rows * cols; ++i) g[i] = std::abs(g[i]);
      break;
    case AttentionMechanism::kRelu:
      for (int64_t i = 0; i < rows * cols; ++i) g[i] = std::max<Real>(g[i], 0);
      break;
  }
}

double Dot(const Real* a, const Real* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += double(a[i]) * double(b[i]);
  return s;
}

// Turns `d` (the cotangent of the attention weights `a` = phi(logits)) into that of the logits.
void MechanismBackward(AttentionMechanism mech, const RowMat& a, const RowMat* logits, RowMat* d) {
  switch (mech) {
    case AttentionMechanism::kSoftmax:
      for (int64_t r = 0; r < a.rows(); ++r) {
        const Real s = d->row(r).dot(a.row(r));
        d->row(r) = (a.row(r).array() * (d->row(r).array() - s)).matrix();
      }
      break;
    case AttentionMechanism::kIdentity:
      break;
    case AttentionMechanism::kAbs:
      // sign(0) = 0, as jax's derivative of abs.
      *d = (d->array() * logits->array().sign()).matrix();
      break;
    case AttentionMechanism::kRelu:
      // relu(g) > 0 exactly where g > 0; the derivative at 0 is 0, as jax's.
      *d = (a.array() > 0).select(d->array(), Real(0)).matrix();
      break;
  }
}

}  // namespace

// Everything in the canonical layout (N, spatial..., C), positions of a sample flattened row-major.
struct GlobalSelfAttentionLayer::Tape {
  AttentionMechanism mech;
  std::vector<int> perm, inv;  // To the canonical layout and back.
  Shape y_shape;               // The outputs, in the caller's layout.
  Shape xt_shape;              // The inputs, canonical.
  Shape emb_shape;             // Per-sample embeddings (N, spatial..., c_pe).
  Shape pe_t_shape;            // The embedding parameter (1, spatial..., c_pe).
  Shape bias_shape;
  int64_t n = 0, p = 0, c_in = 0, c_k = 0, c_v = 0, nk = 0, nv = 0, heads = 0, c_out = 0, c_pe = 0;
  bool has_query = false, has_bias = false, has_pe = false, values_read_keys = true;
  Real scale = 0, out_scale = 0, b_std = 0, w_pe = 0;
  Array wq, wk, wv, wo;
  RowMat xk, xv;                  // Inputs of keys/queries and of values (xv empty when the values read xk).
  std::vector<RowMat> q, k, v;    // Per head (q empty without W_query: the queries are the keys).
  std::vector<RowMat> a, logits;  // Per head and sample (h N + i): weights; ABS's logits.
  RowMat heads_out;
  std::vector<char> key_masked;
  std::optional<Array> emb_mask;  // The mask applied to the per-sample embeddings.
  std::optional<RowMat> chol;     // The Cholesky factor that correlates the embeddings.
};

absl::StatusOr<AttentionMechanism> ParseAttentionMechanism(const std::string& value) {
  if (value == "SOFTMAX") return AttentionMechanism::kSoftmax;
  if (value == "IDENTITY") return AttentionMechanism::kIdentity;
  if (value == "ABS") return AttentionMechanism::kAbs;
  if (value == "RELU") return AttentionMechanism::kRelu;
  return LayerError("GlobalSelfAttention", "attention_mechanism",
                    absl::StrCat("must be SOFTMAX, IDENTITY, ABS or RELU, got '", value, "'"));
}

absl::StatusOr<PositionalEmbedding> ParsePositionalEmbedding(const std::string& value) {
  if (value == "NONE") return PositionalEmbedding::kNone;
  if (value == "SUM") return PositionalEmbedding::kSum;
  if (value == "CONCAT") return PositionalEmbedding::kConcat;
  return LayerError("GlobalSelfAttention", "pos_emb_type",
                    absl::StrCat("must be NONE, SUM or CONCAT, got '", value, "'"));
}

const char* AttentionMechanismName(AttentionMechanism m) {
  switch (m) {
    case AttentionMechanism::kSoftmax:
      return "SOFTMAX";
    case AttentionMechanism::kIdentity:
      return "IDENTITY";
    case AttentionMechanism::kAbs:
      return "ABS";
    case AttentionMechanism::kRelu:
      return "RELU";
  }
  return "?";
}

const char* PositionalEmbeddingName(PositionalEmbedding p) {
  switch (p) {
    case PositionalEmbedding::kNone:
      return "NONE";
    case PositionalEmbedding::kSum:
      return "SUM";
    case PositionalEmbedding::kConcat:
      return "CONCAT";
  }
  return "?";
}

absl::Status GlobalSelfAttentionLayer::Validate(const GlobalSelfAttentionOptions& o) {
  const std::string layer = "GlobalSelfAttention";
  for (auto [field, v] : {std::pair<const char*, int64_t>{"n_chan_out", o.n_chan_out},
                          {"n_chan_key", o.n_chan_key},
                          {"n_chan_val", o.n_chan_val},
                          {"n_heads", o.n_heads}}) {
    if (v <= 0) return LayerError(layer, field, absl::StrCat("must be positive, got ", v));
  }
  for (auto [field, v] : {std::pair<const char*, double>{"W_key_std", o.W_key_std},
                          {"W_value_std", o.W_value_std},
                          {"W_query_std", o.W_query_std},
                          {"W_out_std", o.W_out_std},
                          {"W_pos_emb_std", o.W_pos_emb_std},
                          {"pos_emb_p_norm", o.pos_emb_p_norm}}) {
    if (!std::isfinite(v)) return LayerError(layer, field, absl::StrCat("must be finite, got ", v));
  }
  if (o.b_std && !std::isfinite(*o.b_std)) return LayerError(layer, "b_std", "must be finite");
  if (o.n_chan_pos_emb && *o.n_chan_pos_emb <= 0) {
    return LayerError(layer, "n_chan_pos_emb", absl::StrCat("must be positive, got ", *o.n_chan_pos_emb));
  }
  if (o.pos_emb_decay_fn) {
    // |p - p'|^p_norm at p = p' is 0 only for a positive exponent.
    if (!(o.pos_emb_p_norm > 0)) {
      return LayerError(layer, "pos_emb_p_norm", absl::StrCat("must be positive, got ", o.pos_emb_p_norm));
    }
    auto e = Expression::Parse(layer, "pos_emb_decay_fn", *o.pos_emb_decay_fn, {"d"});
    if (!e.ok()) return e.status();
  }
  return absl::OkStatus();
}

GlobalSelfAttentionLayer::GlobalSelfAttentionLayer(GlobalSelfAttentionOptions o) : o_(std::move(o)) {
  if (o_.pos_emb_decay_fn) {
    auto e = Expression::Parse(name(), "pos_emb_decay_fn", *o_.pos_emb_decay_fn, {"d"});
    if (e.ok()) {
      decay_ = *std::move(e);
    } else {
      decay_status_ = e.status();
    }
  }
}

Requirements GlobalSelfAttentionLayer::requirements() const {
  Requirements r;
  // Attention mixes every pair of positions: never a diagonal-only kernel in or out.
  r.diagonal_spatial = Diagonal{Bool::kNo, Bool::kNo};
  r.batch_axis = o_.batch_axis;
  r.channel_axis = o_.channel_axis;
  return r;
}

int64_t GlobalSelfAttentionLayer::PosEmbChannels(int64_t c_in) const {
  return o_.n_chan_pos_emb ? *o_.n_chan_pos_emb : c_in;
}

absl::StatusOr<ShapeFlow> GlobalSelfAttentionLayer::OutputShape(const ShapeFlow& in) const {
  if (absl::Status st = ExpectSingle(name(), in.is_list, in.items.size()); !st.ok()) return st;
  if (!decay_status_.ok()) return decay_status_;
  Shape s = in.single();
  auto bc = BatchAndChannelAxes(name(), o_.batch_axis, o_.channel_axis, static_cast<int>(s.size()));
  if (!bc.ok()) return bc.status();
  const int c = bc->second;
  // Upstream adds the embedding to the inputs, which fails to broadcast otherwise.
  if (o_.pos_emb_type == PositionalEmbedding::kSum && PosEmbChannels(s[c]) != s[c]) {
    return LayerError(
        name(), "n_chan_pos_emb",
        absl::StrCat("is ", PosEmbChannels(s[c]), " but pos_emb_type=SUM adds the embedding to the ", s[c],
                     " input channels (leave it unset or equal)"));
  }
  s[c] = o_.n_chan_out;
  return ShapeFlow::Single(s);
}

absl::StatusOr<MaskFlow> GlobalSelfAttentionLayer::MaskFn(const MaskFlow& masks, const ShapeFlow&) const {
  return AllOverChannels(name(), o_.channel_axis, masks);
}

std::vector<std::pair<int, Shape>> GlobalSelfAttentionLayer::ParamShapes(const Shape& s) const {
  const auto [b, c] =
      *BatchAndChannelAxes(name(), o_.batch_axis, o_.channel_axis, static_cast<int>(s.size()));
  const int64_t c_in = s[c], c_pe = PosEmbChannels(c_in);
  const bool concat = o_.pos_emb_type == PositionalEmbedding::kConcat;
  const int64_t c_k = c_in + (concat ? c_pe : 0);
  const int64_t c_v = c_in + (concat && o_.val_pos_emb ? c_pe : 0);
  // Upstream's split order: query, key, value, out, bias, embedding.
  std::vector<std::pair<int, Shape>> out;
  if (!o_.linear_scaling) out.push_back({0, {o_.n_heads, c_k, o_.n_chan_key}});
  out.push_back({1, {o_.n_heads, c_k, o_.n_chan_key}});
  out.push_back({2, {o_.n_heads, c_v, o_.n_chan_val}});
  out.push_back({3, {o_.n_chan_val * o_.n_heads, o_.n_chan_out}});
  if (o_.b_std) {
    Shape bs(s.size(), 1);
    bs[c] = o_.n_chan_out;
    out.push_back({4, bs});
  }
  if (o_.pos_emb_type != PositionalEmbedding::kNone) {
    Shape es = s;
    es[b] = 1;
    es[c] = c_pe;
    out.push_back({5, es});
  }
  return out;
}

absl::StatusOr<double> GlobalSelfAttentionLayer::NumParams(const ShapeFlow& in) const {
  auto out = OutputShape(in);
  if (!out.ok()) return out.status();
  double n = 0;
  for (const auto& [key, shape] : ParamShapes(in.single())) n += double(NumElements(shape));
  return n;
}

absl::StatusOr<Params> GlobalSelfAttentionLayer::Init(const RngKey& key, const ShapeFlow& in) const {
  auto out = OutputShape(in);
  if (!out.ok()) return out.status();
  const std::vector<RngKey> keys = key.Split(6);
  Params p;
  for (const auto& [k, shape] : ParamShapes(in.single())) p.arrays.push_back(keys[k].Normal(shape));
  return p;
}

std::vector<double> GlobalSelfAttentionLayer::PositionalCovariance(const std::vector<int64_t>& sizes) const {
  const int64_t p = NumElements(sizes);
  std::vector<double> r(static_cast<size_t>(p * p), 0.0);
  if (!decay_) {
    for (int64_t q = 0; q < p; ++q) r[q * p + q] = 1.0;
    return r;
  }
  // d[q, q'] = sum over axes of |q_a - q'_a|^p_norm, positions flattened row-major.
  std::vector<int64_t> stride(sizes.size(), 1);
  for (int a = static_cast<int>(sizes.size()) - 2; a >= 0; --a) stride[a] = stride[a + 1] * sizes[a + 1];
  std::vector<double> d(r.size(), 0.0);
  for (int64_t q = 0; q < p; ++q) {
    for (int64_t q2 = 0; q2 < p; ++q2) {
      double s = 0;
      for (size_t a = 0; a < sizes.size(); ++a) {
        const int64_t diff = (q / stride[a]) % sizes[a] - (q2 / stride[a]) % sizes[a];
        s += std::pow(std::abs(double(diff)), o_.pos_emb_p_norm);
      }
      d[q * p + q2] = s;
    }
  }
  decay_->Eval1(d.data(), static_cast<int64_t>(d.size()), r.data());
  return r;
}

absl::StatusOr<ArrayFlow> GlobalSelfAttentionLayer::Apply(const Params& params, const ArrayFlow& xf) const {
  if (absl::Status st = ExpectSingle(name(), xf.is_list, xf.items.size()); !st.ok()) return st;
  auto y = Forward(params, xf.single(), nullptr);
  if (!y.ok()) return y.status();
  return ArrayFlow::Single(*std::move(y));
}

absl::StatusOr<Layer::Masked> GlobalSelfAttentionLayer::ApplyMasked(const Params& params, const ArrayFlow& xf,
                                                                    const MaskFlow& masks) const {
  if (absl::Status st = ExpectSingle(name(), xf.is_list, xf.items.size()); !st.ok()) return st;
  if (masks.items.empty() || !masks.items.front()) return Layer::ApplyMasked(params, xf, masks);
  const Array& mask = *masks.items.front();
  auto zeroed = ZeroMasked(name(), mask, xf.single());
  if (!zeroed.ok()) return zeroed.status();
  const Array& x = *zeroed;
  auto y = Forward(params, x, &mask);
  if (!y.ok()) return y.status();
  auto out_masks = MaskFn(masks, ShapeFlow::Single(x.shape()));
  if (!out_masks.ok()) return out_masks.status();
  return Masked{ArrayFlow::Single(*std::move(y)), *std::move(out_masks)};
}

absl::StatusOr<Layer::Linearized> GlobalSelfAttentionLayer::Linearize(const Params& params,
                                                                      const ArrayFlow& xf) const {
  if (absl::Status st = ExpectSingle(name(), xf.is_list, xf.items.size()); !st.ok()) return st;
  std::shared_ptr<Tape> tape;
  auto y = Forward(params, xf.single(), nullptr, &tape);
  if (!y.ok()) return y.status();
  Pullback pullback = [tape = std::shared_ptr<const Tape>(std::move(tape))](const ArrayFlow& dy) {
    return Backward(*tape, dy);
  };
  return Linearized{ArrayFlow::Single(*std::move(y)), std::move(pullback)};
}

absl::StatusOr<Layer::LinearizedMasked> GlobalSelfAttentionLayer::LinearizeMasked(
    const Params& params, const ArrayFlow& xf, const MaskFlow& masks, const ApplyContext& ctx) const {
  if (absl::Status st = ExpectSingle(name(), xf.is_list, xf.items.size()); !st.ok()) return st;
  if (masks.items.empty() || !masks.items.front()) return Layer::LinearizeMasked(params, xf, masks, ctx);
  // As ApplyMasked.
  const Array& mask = *masks.items.front();
  auto zeroed = ZeroMasked(name(), mask, xf.single());
  if (!zeroed.ok()) return zeroed.status();
  const Array& x = *zeroed;
  std::shared_ptr<Tape> tape;
  auto y = Forward(params, x, &mask, &tape);
  if (!y.ok()) return y.status();
  auto out_masks = MaskFn(masks, ShapeFlow::Single(x.shape()));
  if (!out_masks.ok()) return out_masks.status();
  // Masked inputs were zeroed before use: their values never reach the outputs.
  Pullback pullback = [tape = std::shared_ptr<const Tape>(std::move(tape)),
                       mask](const ArrayFlow& dy) -> absl::StatusOr<Cotangents> {
    auto c = Backward(*tape, dy);
    if (c.ok()) ZeroWhereMasked(mask, &c->dx.single());
    return c;
  };
  return LinearizedMasked{Masked{ArrayFlow::Single(*std::move(y)), *std::move(out_masks)},
                          std::move(pullback)};
}

absl::StatusOr<Array> GlobalSelfAttentionLayer::Forward(const Params& params, const Array& x,
                                                        const Array* mask,
                                                        std::shared_ptr<Tape>* tape) const {
  const int rank = x.rank();
  auto bc = BatchAndChannelAxes(name(), o_.batch_axis, o_.channel_axis, rank);
  if (!bc.ok()) return bc.status();
  const auto [b, c] = *bc;
  if (auto s = OutputShape(ShapeFlow::Single(x.shape())); !s.ok()) return s.status();
  const std::vector<int> spatial = SpatialAxes(rank, b, c);
  // Canonical layout (N, spatial..., C): positions flatten row-major.
  std::vector<int> perm{b}, inv(rank);
  perm.insert(perm.end(), spatial.begin(), spatial.end());
  perm.push_back(c);
  for (int i = 0; i < rank; ++i) inv[perm[i]] = i;
  std::vector<int64_t> sizes;
  for (int a : spatial) sizes.push_back(x.dim(a));
  const int64_t n = x.dim(b), c_in = x.dim(c), p = NumElements(sizes);
  const int64_t heads = o_.n_heads, nk = o_.n_chan_key, nv = o_.n_chan_val, c_out = o_.n_chan_out;
  const bool has_pe = o_.pos_emb_type != PositionalEmbedding::kNone;
  const bool concat = o_.pos_emb_type == PositionalEmbedding::kConcat;
  const int64_t c_pe = PosEmbChannels(c_in);
  const int64_t c_k = c_in + (concat ? c_pe : 0);
  const int64_t c_v = c_in + (concat && o_.val_pos_emb ? c_pe : 0);

  const size_t want = 3 + (o_.linear_scaling ? 0 : 1) + (o_.b_std ? 1 : 0) + (has_pe ? 1 : 0);
  if (params.arrays.size() != want) {
    return LayerError(name(), "params",
                      absl::StrCat("expected ", want, " arrays, got ", params.arrays.size()));
  }
  size_t next = 0;
  auto take = [&](const char* what, const Shape& shape) -> absl::StatusOr<const Array*> {
    const Array& a = params.arrays[next++];
    if (a.shape() != shape) {
      return LayerError(
          name(), "params",
          absl::StrCat(what, " has shape ", ShapeToString(a.shape()), ", expected ", ShapeToString(shape)));
    }
    return &a;
  };
  const Array* wq = nullptr;
  if (!o_.linear_scaling) {
    auto a = take("W_query", {heads, c_k, nk});
    if (!a.ok()) return a.status();
    wq = *a;
  }
  auto wk = take("W_key", {heads, c_k, nk});
  if (!wk.ok()) return wk.status();
  auto wv = take("W_value", {heads, c_v, nv});
  if (!wv.ok()) return wv.status();
  auto wo = take("W_out", {nv * heads, c_out});
  if (!wo.ok()) return wo.status();
  const Array* bias = nullptr;
  if (o_.b_std) {
    Shape bs(rank, 1);
    bs[c] = c_out;
    auto a = take("b", bs);
    if (!a.ok()) return a.status();
    bias = *a;
  }
  const Array* pos_emb = nullptr;
  if (has_pe) {
    Shape es = x.shape();
    es[b] = 1;
    es[c] = c_pe;
    auto a = take("pos_emb", es);
    if (!a.ok()) return a.status();
    pos_emb = *a;
  }

  std::shared_ptr<Tape> tp;
  if (tape) {
    tp = std::make_shared<Tape>();
    tp->mech = o_.attention_mechanism;
    tp->perm = perm;
    tp->inv = inv;
    tp->n = n;
    tp->p = p;
    tp->c_in = c_in;
    tp->c_k = c_k;
    tp->c_v = c_v;
    tp->nk = nk;
    tp->nv = nv;
    tp->heads = heads;
    tp->c_out = c_out;
    tp->c_pe = c_pe;
    tp->has_query = wq != nullptr;
    tp->has_bias = bias != nullptr;
    tp->has_pe = has_pe;
    if (wq) tp->wq = *wq;
    tp->wk = **wk;
    tp->wv = **wv;
    tp->wo = **wo;
    if (bias) tp->bias_shape = bias->shape();
    tp->b_std = static_cast<Real>(o_.b_std.value_or(0.0));
    tp->w_pe = static_cast<Real>(o_.W_pos_emb_std);
  }

  const Array xt = Transpose(x, perm);
  std::optional<Array> mask_t;
  if (mask) {
    if (!Broadcasts(*mask, x.shape())) {
      return LayerError(name(), "mask",
                        absl::StrCat("of shape ", ShapeToString(mask->shape()),
                                     " does not broadcast to the input shape ", ShapeToString(x.shape())));
    }
    mask_t = Transpose(*mask, perm);
  }

  // Inputs of keys/queries (N P, c_k) and of values (N P, c_v).
  RowMat xk(n * p, c_k);
  xk.leftCols(c_in) = ConstMatMap(xt.data(), n * p, c_in);
  if (has_pe) {
    Array et = Transpose(*pos_emb, perm);  // (1, spatial..., c_pe)
    MatMap e(et.data(), p, c_pe);
    if (decay_) {
      const std::vector<double> r = PositionalCovariance(sizes);
      Eigen::LLT<Eigen::MatrixXd> llt(Eigen::Map<const Eigen::MatrixXd>(r.data(), p, p));
      if (llt.info() != Eigen::Success) {
        return LayerError(name(), "pos_emb_decay_fn",
                          "gives a positional covariance that is not positive definite, so its Cholesky "
                          "factor (which correlates the embeddings) does not exist");
      }
      const Eigen::MatrixXd l = llt.matrixL();
      e = (l.cast<Real>() * e).eval();
      if (tp) tp->chol = RowMat(l.cast<Real>());
    }
    // Per-sample embeddings: zeroed at masked entries, then scaled.
    Shape full = xt.shape();
    full.back() = c_pe;
    Array emb(full);
    for (int64_t i = 0; i < n; ++i) std::copy(et.data(), et.data() + p * c_pe, emb.data() + i * p * c_pe);
    if (mask_t) {
      Array m = *mask_t;
      const int64_t cm = m.dim(rank - 1);
      if (cm != 1 && cm != c_pe) {
        // A mask over other channels than the embedding's only fits when it is the same for all of them.
        if (MixedAlong(m, rank - 1)) {
          return LayerError(name(), "mask",
                            absl::StrCat("differs between the ", cm,
                                         " input channels and does not broadcast "
                                         "against the ",
                                         c_pe, " positional embedding channels"));
        }
        m = AllAlongAxis(m, rank - 1);
      }
      ZeroWhereMasked(m, &emb);
      if (tp) tp->emb_mask = std::move(m);
    }
    if (tp) {
      tp->emb_shape = emb.shape();
      tp->pe_t_shape = et.shape();
    }
    const Real w_pe = static_cast<Real>(o_.W_pos_emb_std);
    MatMap em(emb.data(), n * p, c_pe);
    em *= w_pe;
    if (concat) {
      xk.rightCols(c_pe) = em;
    } else {
      xk += em;
    }
  }
  RowMat xv_own;
  const bool values_see_pe = has_pe && o_.val_pos_emb;
  if (!values_see_pe && has_pe) xv_own = ConstMatMap(xt.data(), n * p, c_in);
  const RowMat& xv = has_pe && !values_see_pe ? xv_own : xk;

  // Keys whose every channel is masked get no attention.
  std::vector<char> key_masked;
  if (mask_t) {
    Shape ms = xt.shape();
    ms.back() = 1;
    const Array km = BroadcastMask(AllAlongAxis(*mask_t, rank - 1), ms);
    key_masked.resize(n * p);
    for (int64_t i = 0; i < n * p; ++i) key_masked[i] = km[i] != 0;
  }

  const Real scale =
      static_cast<Real>(o_.W_query_std * o_.W_key_std /
                        (double(c_k) * (o_.linear_scaling ? double(nk) : std::sqrt(double(nk)))));
  // Heads concatenated value-channel-major: column v * heads + h.
  RowMat heads_out(n * p, nv * heads);
  RowMat g(p, p);
  if (tp) {
    tp->scale = scale;
    tp->key_masked = key_masked;
    tp->k.resize(heads);
    tp->v.resize(heads);
    if (wq) tp->q.resize(heads);
    tp->a.resize(heads * n);
    if (o_.attention_mechanism == AttentionMechanism::kAbs) tp->logits.resize(heads * n);
  }
  for (int64_t h = 0; h < heads; ++h) {
    RowMat kh = xk * ConstMatMap((*wk)->data() + h * c_k * nk, c_k, nk);
    RowMat qh;
    if (wq) qh = xk * ConstMatMap(wq->data() + h * c_k * nk, c_k, nk);
    const RowMat& qr = wq ? qh : kh;
    RowMat vh = xv * ConstMatMap((*wv)->data() + h * c_v * nv, c_v, nv);
    for (int64_t i = 0; i < n; ++i) {
      g.noalias() = scale * (qr.middleRows(i * p, p) * kh.middleRows(i * p, p).transpose());
      if (!key_masked.empty()) {
        const Real fill = o_.attention_mechanism == AttentionMechanism::kSoftmax ? Real(kNegInf) : Real(0);
        for (int64_t k = 0; k < p; ++k) {
          if (key_masked[i * p + k]) g.col(k).setConstant(fill);
        }
      }
      if (tp && !tp->logits.empty()) tp->logits[h * n + i] = g;
      ApplyMechanism(o_.attention_mechanism, p, p, g.data());
      if (tp) tp->a[h * n + i] = g;
      const RowMat head = g * vh.middleRows(i * p, p);
      for (int64_t q = 0; q < p; ++q) {
        for (int64_t v = 0; v < nv; ++v) heads_out(i * p + q, v * heads + h) = head(q, v);
      }
    }
    if (tp) {
      tp->k[h] = std::move(kh);
      if (wq) tp->q[h] = std::move(qh);
      tp->v[h] = std::move(vh);
    }
  }
  Shape ys = xt.shape();
  ys.back() = c_out;
  Array yt = Array::Uninitialized(ys);
  MatMap ym(yt.data(), n * p, c_out);
  const Real out_scale =
      static_cast<Real>(o_.W_out_std * o_.W_value_std / std::sqrt(double(nv) * double(heads) * double(c_v)));
  ym.noalias() = out_scale * (heads_out * ConstMatMap((*wo)->data(), nv * heads, c_out));
  if (bias) {
    const Real b_std = static_cast<Real>(*o_.b_std);
    for (int64_t r = 0; r < n * p; ++r) {
      for (int64_t o = 0; o < c_out; ++o) ym(r, o) += b_std * (*bias)[o];
    }
  }
  Array y = Transpose(yt, inv);
  if (tp) {
    tp->out_scale = out_scale;
    tp->y_shape = y.shape();
    tp->xt_shape = xt.shape();
    tp->values_read_keys = !has_pe || values_see_pe;
    tp->xk = std::move(xk);
    tp->xv = std::move(xv_own);
    tp->heads_out = std::move(heads_out);
    *tape = std::move(tp);
  }
  return y;
}

absl::StatusOr<Cotangents> GlobalSelfAttentionLayer::Backward(const Tape& t, const ArrayFlow& dyf) {
  const std::string layer = "GlobalSelfAttention";
  if (absl::Status st = ExpectSingle(layer, dyf.is_list, dyf.items.size()); !st.ok()) return st;
  if (dyf.single().shape() != t.y_shape) {
    return LayerError(layer, "",
                      absl::StrCat("output cotangent of shape ", ShapeToString(dyf.single().shape()),
                                   " for outputs of shape ", ShapeToString(t.y_shape)));
  }
  const int64_t n = t.n, p = t.p, np = n * p, heads = t.heads, nk = t.nk, nv = t.nv;
  const int64_t c_in = t.c_in, c_k = t.c_k, c_v = t.c_v, c_out = t.c_out;
  const Array dyt = Transpose(dyf.single(), t.perm);
  const ConstMatMap dy(dyt.data(), np, c_out);

  // y = out_scale heads_out W_out + b_std b.
  Array dwo(t.wo.shape());
  MatMap(dwo.data(), nv * heads, c_out).noalias() = t.out_scale * (t.heads_out.transpose() * dy);
  const RowMat dheads = t.out_scale * (dy * ConstMatMap(t.wo.data(), nv * heads, c_out).transpose());

  // Per head and sample: head = phi(scale Q K^T, masked keys filled) V.
  RowMat dxk = RowMat::Zero(np, c_k);
  RowMat dxv_own;
  if (!t.values_read_keys) dxv_own = RowMat::Zero(np, c_v);
  RowMat& dxv = t.values_read_keys ? dxk : dxv_own;
  const RowMat& xv = t.values_read_keys ? t.xk : t.xv;
  Array dwq(t.wq.shape()), dwk(t.wk.shape()), dwv(t.wv.shape());
  RowMat dhead(p, nv), dg(p, p);
  for (int64_t h = 0; h < heads; ++h) {
    const RowMat& kh = t.k[h];
    const RowMat& qr = t.has_query ? t.q[h] : kh;
    const RowMat& vh = t.v[h];
    RowMat dk(np, nk), dq, dv(np, nv);
    if (t.has_query) dq.resize(np, nk);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t q = 0; q < p; ++q) {
        for (int64_t v = 0; v < nv; ++v) dhead(q, v) = dheads(i * p + q, v * heads + h);
      }
      const RowMat& a = t.a[h * n + i];
      dv.middleRows(i * p, p).noalias() = a.transpose() * dhead;
      dg.noalias() = dhead * vh.middleRows(i * p, p).transpose();
      MechanismBackward(t.mech, a, t.logits.empty() ? nullptr : &t.logits[h * n + i], &dg);
      // Masked keys' logits are replaced by a constant.
      if (!t.key_masked.empty()) {
        for (int64_t k = 0; k < p; ++k) {
          if (t.key_masked[i * p + k]) dg.col(k).setZero();
        }
      }
      dg *= t.scale;
      dk.middleRows(i * p, p).noalias() = dg.transpose() * qr.middleRows(i * p, p);
      if (t.has_query) {
        dq.middleRows(i * p, p).noalias() = dg * kh.middleRows(i * p, p);
      } else {
        dk.middleRows(i * p, p).noalias() += dg * kh.middleRows(i * p, p);
      }
    }
    const ConstMatMap wk(t.wk.data() + h * c_k * nk, c_k, nk);
    MatMap(dwk.data() + h * c_k * nk, c_k, nk).noalias() = t.xk.transpose() * dk;
    dxk.noalias() += dk * wk.transpose();
    if (t.has_query) {
      const ConstMatMap wq(t.wq.data() + h * c_k * nk, c_k, nk);
      MatMap(dwq.data() + h * c_k * nk, c_k, nk).noalias() = t.xk.transpose() * dq;
      dxk.noalias() += dq * wq.transpose();
    }
    const ConstMatMap wv(t.wv.data() + h * c_v * nv, c_v, nv);
    MatMap(dwv.data() + h * c_v * nv, c_v, nv).noalias() = xv.transpose() * dv;
    dxv.noalias() += dv * wv.transpose();
  }

  // x is the first c_in columns of the keys' inputs (all of them with SUM), and the values' own inputs.
  Array dxt(t.xt_shape);
  MatMap dx(dxt.data(), np, c_in);
  dx = dxk.leftCols(c_in);
  if (!t.values_read_keys) dx += dxv_own;

  Cotangents out;
  out.dx = ArrayFlow::Single(Transpose(dxt, t.inv));
  Params& dp = out.dparams;
  if (t.has_query) dp.arrays.push_back(std::move(dwq));
  dp.arrays.push_back(std::move(dwk));
  dp.arrays.push_back(std::move(dwv));
  dp.arrays.push_back(std::move(dwo));
  if (t.has_bias) {
    Array db(t.bias_shape);
    for (int64_t o = 0; o < c_out; ++o) db[o] = t.b_std * dy.col(o).sum();
    dp.arrays.push_back(std::move(db));
  }
  if (t.has_pe) {
    // The embeddings are the last c_pe columns of the keys' inputs (all of them with SUM), scaled by
    // W_pos_emb_std, zeroed where masked, the same for every sample and correlated by the Cholesky factor.
    const int64_t c_pe = t.c_pe;
    Array demb(t.emb_shape);
    MatMap(demb.data(), np, c_pe) = t.w_pe * dxk.rightCols(c_pe);
    if (t.emb_mask) ZeroWhereMasked(*t.emb_mask, &demb);
    RowMat de = RowMat::Zero(p, c_pe);
    for (int64_t i = 0; i < n; ++i) de += ConstMatMap(demb.data() + i * p * c_pe, p, c_pe);
    if (t.chol) de = (t.chol->transpose() * de).eval();
    Array det(t.pe_t_shape);
    MatMap(det.data(), p, c_pe) = de;
    dp.arrays.push_back(Transpose(det, t.inv));
  }
  return out;
}

absl::Status GlobalSelfAttentionLayer::TransformKernel(KernelFlow* kf, const KernelContext&) const {
  if (absl::Status st = ExpectSingle(name(), kf->is_list, kf->items.size()); !st.ok()) return st;
  const AttentionMechanism mech = o_.attention_mechanism;
  if (!o_.linear_scaling && mech != AttentionMechanism::kIdentity) {
    return LayerUnimplemented(
        name(), absl::StrCat("linear_scaling=False with attention_mechanism=", AttentionMechanismName(mech),
                             " has no known closed-form kernel (only IDENTITY has one, as upstream); "
                             "init_fn and apply_fn work"));
  }
  Kernel& k = kf->single();
  if (k.diagonal_spatial) {
    return LayerError(name(), "diagonal_spatial",
                      "needs the full spatial covariance; recompute with diagonal_spatial=False");
  }
  if (k.cov_diagonal_only) {
    return absl::InternalError(absl::StrCat(name(), ": received covariances reduced to their diagonal"));
  }
  NaturalOrder(&k);
  const int rank = static_cast<int>(k.shape1.size());
  const std::vector<int> spatial = SpatialAxes(rank, k.batch_axis, k.channel_axis);
  std::vector<int64_t> sizes;
  for (int a : spatial) {
    if (k.shape2[a] != k.shape1[a]) {
      return LayerError(name(), "",
                        absl::StrCat("x1 and x2 differ in spatial shape: ", ShapeToString(k.shape1), " vs ",
                                     ShapeToString(k.shape2)));
    }
    sizes.push_back(k.shape1[a]);
  }
  const int64_t p = NumElements(sizes), inner = p * p;
  const int64_t n1 = k.nngp.dim(0), n2 = k.nngp.dim(1);
  const int cb = CovBatchAxes(k);
  if (k.nngp.size() != n1 * n2 * inner) {
    return absl::InternalError(absl::StrCat(name(), ": nngp of shape ", ShapeToString(k.nngp.shape()),
                                            " for spatial sizes ", ShapeToString(sizes)));
  }

  // Entry e of a zipped block (s1, s1', s2, s2', ...) is entry unzip[e] of the P x P matrix.
  const auto offsets = PairOffsetsFor(Shape(sizes), false);
  std::vector<int64_t> unzip(inner);
  for (int64_t e = 0; e < inner; ++e) unzip[e] = offsets->left[e] * p + offsets->right[e];

  // Positional embeddings: covariance R and its weight against the input covariances.
  const bool has_pe = o_.pos_emb_type != PositionalEmbedding::kNone;
  double alpha = 1, beta = 0;
  std::vector<Real> rz;  // R in the zipped order.
  if (has_pe) {
    beta = o_.W_pos_emb_std * o_.W_pos_emb_std;
    if (o_.pos_emb_type == PositionalEmbedding::kConcat) {
      const double c_in = double(k.shape1[k.channel_axis]),
                   c_pe = double(PosEmbChannels(k.shape1[k.channel_axis]));
      alpha = c_in / (c_in + c_pe);
      beta *= c_pe / (c_in + c_pe);
    }
    const std::vector<double> r = PositionalCovariance(sizes);
    rz.resize(inner);
    for (int64_t e = 0; e < inner; ++e) rz[e] = static_cast<Real>(r[unzip[e]]);
  }

  // Per-sample position masks (N, P): masked when every channel is (upstream's jnp.all).
  auto position_mask = [&](const Array& m, const Shape& shape) -> absl::StatusOr<Array> {
    if (!Broadcasts(m, shape)) {
      return LayerError(name(), "mask",
                        absl::StrCat("of shape ", ShapeToString(m.shape()),
                                     " does not broadcast to the activation shape ", ShapeToString(shape)));
    }
    // The embedding covariance assumes the same mask for every channel of a position.
    if (has_pe && MixedAlong(m, k.channel_axis)) {
      return LayerUnimplemented(name(),
                                "masks that differ between channels are not supported with positional "
                                "embeddings (upstream neither): put a Dense/Conv layer first");
    }
    Shape s = shape;
    s[k.channel_axis] = 1;
    auto pm = PositionMask(BroadcastMask(AllAlongAxis(m, k.channel_axis), s), k);
    if (!pm.ok()) return pm.status();
    const int64_t rows = pm->dim(0);
    return std::move(*pm).Reshaped({rows, p});
  };
  std::optional<Array> km1, km2;
  if (k.mask1) {
    auto m = position_mask(*k.mask1, k.shape1);
    if (!m.ok()) return m.status();
    km1 = *std::move(m);
  }
  if (k.mask2) {
    auto m = position_mask(*k.mask2, k.shape2);
    if (!m.ok()) return m.status();
    km2 = *std::move(m);
  }
  // Masks of R's positions: as MaskKernel, a missing second mask means the first one.
  const Array* rm1 = km1 ? &*km1 : nullptr;
  const Array* rm2 = km2 ? &*km2 : rm1;
  auto row_of = [p](const Array* m, int64_t i) -> const Real* { return m ? m->data() + i * p : nullptr; };

  // dst = alpha src + beta R, R zeroed where the left (ml) or right (mr) position is masked; src null
  // stands for the constant `src0` (the rank-0 input NTK).
  auto interp = [&](const Real* src, Real src0, const Real* ml, const Real* mr, Real* dst) {
    for (int64_t e = 0; e < inner; ++e) {
      const bool masked = (ml && ml[offsets->left[e]] != 0) || (mr && mr[offsets->right[e]] != 0);
      dst[e] = static_cast<Real>(alpha * (src ? src[e] : src0) + (masked ? 0.0 : beta * rz[e]));
    }
  };

  const double b2 = o_.b_std ? *o_.b_std * *o_.b_std : 0.0;
  auto cov_block = [&](Array& cov, int64_t i, int64_t j) {
    const int64_t cols = cb == 2 ? cov.dim(1) : 1;
    return cov.data() + (i * cols + (cb == 2 ? j : 0)) * inner;
  };

  if (!o_.linear_scaling) {
    // (b) IDENTITY with 1/sqrt(n_chan_key) scaling: the logits are Gaussian; everything is a multiple of
    // the interpolated covariances, with weights from their spatial inner products.
    const double sigma2 = std::pow(o_.W_query_std * o_.W_key_std * o_.W_out_std * o_.W_value_std, 2);
    std::vector<Real> hat(inner), that(inner), tin(inner);
    auto covariance = [&](Array& cov, const Array* rm) {
      const int64_t rows = cov.dim(0), cols = cb == 2 ? cov.dim(1) : 1;
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = 0; j < cols; ++j) {
          Real* blk = cov_block(cov, i, j);
          if (has_pe) {
            interp(blk, 0, row_of(rm, i), row_of(rm, cb == 2 ? j : i), hat.data());
          } else {
            std::copy(blk, blk + inner, hat.data());
          }
          const double d = o_.val_pos_emb ? Dot(hat.data(), hat.data(), inner) : Dot(hat.data(), blk, inner);
          for (int64_t e = 0; e < inner; ++e) blk[e] = static_cast<Real>(sigma2 * d * hat[e] + b2);
        }
      }
    };
    const bool scalar_ntk = k.ntk && k.ntk->rank() == 0;
    const Real ntk0 = scalar_ntk ? (*k.ntk)[0] : Real(0);
    if (scalar_ntk) k.ntk = Array(k.nngp.shape(), ntk0);
    for (int64_t i = 0; i < n1; ++i) {
      for (int64_t j = 0; j < n2; ++j) {
        Real* nb = k.nngp.data() + (i * n2 + j) * inner;
        if (has_pe) {
          interp(nb, 0, row_of(rm1, i), row_of(rm2, j), hat.data());
        } else {
          std::copy(nb, nb + inner, hat.data());
        }
        const double d12 = o_.val_pos_emb ? Dot(hat.data(), hat.data(), inner) : Dot(hat.data(), nb, inner);
        if (k.ntk) {
          Real* tb = k.ntk->data() + (i * n2 + j) * inner;
          std::copy(tb, tb + inner, tin.data());
          if (has_pe) {
            interp(tin.data(), 0, row_of(rm1, i), row_of(rm2, j), that.data());
          } else {
            that = tin;
          }
          const double t = o_.val_pos_emb || !has_pe
                               ? 2 * Dot(hat.data(), that.data(), inner)
                               : Dot(hat.data(), tin.data(), inner) + Dot(nb, that.data(), inner);
          for (int64_t e = 0; e < inner; ++e) {
            tb[e] = static_cast<Real>(sigma2 * (t * hat[e] + d12 * (that[e] + 4 * hat[e])) + b2);
          }
        }
        for (int64_t e = 0; e < inner; ++e) nb[e] = static_cast<Real>(sigma2 * d12 * hat[e] + b2);
      }
    }
    covariance(k.cov1, rm1);
    if (k.cov2) covariance(*k.cov2, rm2);
    k.is_gaussian = true;
    return absl::OkStatus();
  }

  // (a) Linear scaling: the logits concentrate at QK times the (interpolated) covariances, so the
  // attention matrices are deterministic per sample: A[n; q, k] = phi(QK Chat[n, n; q, k]).
  const Real qk = static_cast<Real>(o_.W_query_std * o_.W_key_std);
  auto attention = [&](const Array& cov, const Array* key_mask, const Array* rm) {
    const int64_t rows = cov.dim(0);
    std::vector<PositionMatrix> a(rows, PositionMatrix(p, p));
    std::vector<Real> lam(inner);
    for (int64_t i = 0; i < rows; ++i) {
      const Real* blk = cov.data() + (cb == 2 ? i * rows + i : i) * inner;  // The batch diagonal.
      if (has_pe) {
        interp(blk, 0, row_of(rm, i), row_of(rm, i), lam.data());
        blk = lam.data();
      }
      Real* ai = a[i].data();
      for (int64_t e = 0; e < inner; ++e) ai[unzip[e]] = blk[e];
      if (key_mask) {
        const Real fill = mech == AttentionMechanism::kSoftmax ? Real(kNegInf) : Real(0);
        const Real* km = key_mask->data() + i * p;
        for (int64_t kk = 0; kk < p; ++kk) {
          if (km[kk] != 0) a[i].col(kk).setConstant(fill);
        }
      }
      a[i] *= qk;
      ApplyMechanism(mech, p, p, ai);
    }
    return a;
  };
  const std::vector<PositionMatrix> a1 = attention(k.cov1, km1 ? &*km1 : nullptr, rm1);
  const std::vector<PositionMatrix> a2 =
      k.cov2 ? attention(*k.cov2, km2 ? &*km2 : nullptr, rm2) : std::vector<PositionMatrix>();
  const PositionMatrixFn left = [&a1](int64_t i) -> const PositionMatrix& { return a1[i]; };
  const PositionMatrixFn right = [&a1, &a2](int64_t i) -> const PositionMatrix& {
    return a2.empty() ? a1[i] : a2[i];
  };

  // Value-side tensors: with val_pos_emb the interpolated ones (src null: the constant src0 everywhere).
  const bool val = o_.val_pos_emb && has_pe;
  auto values = [&](const Array* src, Real src0, const Shape& shape, int lead, const Array* ml,
                    const Array* mr) {
    Array out = Array::Uninitialized(shape);
    const int64_t cols = lead == 2 ? shape[1] : 1;
    for (int64_t r = 0; r < out.size() / inner; ++r) {
      const int64_t i = r / cols, j = lead == 2 ? r % cols : i;
      interp(src ? src->data() + r * inner : nullptr, src0, row_of(ml, i), row_of(mr, j),
             out.data() + r * inner);
    }
    return out;
  };
  // OV^2 W(m) + b^2, where W(m)[n1, n2] = A[n1] m[n1, n2] A[n2]^T.
  const double ov2 = std::pow(o_.W_out_std * o_.W_value_std, 2);
  std::vector<int> axes(sizes.size());
  for (size_t d = 0; d < axes.size(); ++d) axes[d] = static_cast<int>(d);
  auto weigh = [&](const Array& m, int lead, const PositionMatrixFn& l, const PositionMatrixFn& r) {
    Array out = MapPositionPairs(m, lead, Shape(sizes), axes, Shape(sizes), l, r);
    for (Real& v : out.vec()) v = static_cast<Real>(ov2 * v + b2);
    return out;
  };

  const Array v12 = val ? values(&k.nngp, 0, k.nngp.shape(), 2, rm1, rm2) : k.nngp;
  Array nngp = weigh(v12, 2, left, right);
  if (k.ntk) {
    const bool scalar_ntk = k.ntk->rank() == 0;
    const Real ntk0 = scalar_ntk ? (*k.ntk)[0] : Real(0);
    if (scalar_ntk && !val) {
      // Upstream weighs only array NTKs: the rank-0 input value passes through (ntk = 2 nngp - b^2 for
      // the zero it always is).
      Array ntk = nngp;
      for (Real& v : ntk.vec()) v = static_cast<Real>(ov2 * ntk0 + 2 * (v - b2) + b2);
      k.ntk = std::move(ntk);
    } else {
      // ntk' = OV^2 W(U12 + 2 V12) + b^2 (the weighting is linear).
      Array u12 = val ? values(scalar_ntk ? nullptr : &*k.ntk, ntk0, k.nngp.shape(), 2, rm1, rm2) : *k.ntk;
      for (int64_t e = 0; e < u12.size(); ++e) u12[e] += 2 * v12[e];
      k.ntk = weigh(u12, 2, left, right);
    }
  }
  k.nngp = std::move(nngp);
  // Covariances: cov[i, j] weighed with the attention of samples i and j of the same batch.
  k.cov1 = weigh(val ? values(&k.cov1, 0, k.cov1.shape(), cb, rm1, rm1) : k.cov1, cb, left, left);
  if (k.cov2)
    k.cov2 = weigh(val ? values(&*k.cov2, 0, k.cov2->shape(), cb, rm2, rm2) : *k.cov2, cb, right, right);
  k.is_gaussian = true;
  return absl::OkStatus();
}

}  // namespace NT_CORE_NS
