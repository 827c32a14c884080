#include "core/dense.h"

#include <cmath>

#include "Eigen/Core"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace NT_CORE_NS {

absl::StatusOr<Parameterization> ParseParameterization(const std::string& layer, const std::string& value) {
  const std::string v = absl::AsciiStrToLower(value);
  if (v.empty() || v == "ntk") return Parameterization::kNtk;
  if (v == "standard") return Parameterization::kStandard;
  return LayerError(layer, "parameterization",
                    absl::StrCat("must be 'ntk' or 'standard', got '", value, "'"));
}

absl::Status DenseLayer::Validate(const DenseOptions& o) {
  if (o.out_dim <= 0) {
    return LayerError("Dense", "out_dim", absl::StrCat("must be positive, got ", o.out_dim));
  }
  if (!std::isfinite(o.W_std)) return LayerError("Dense", "W_std", "must be finite");
  if (o.b_std && !std::isfinite(*o.b_std)) return LayerError("Dense", "b_std", "must be finite");
  if (o.parameterization == Parameterization::kStandard) {
    for (int i = 0; i < 2; ++i) {
      if (!(o.s[i] > 0) || !std::isfinite(o.s[i])) {
        return LayerError("Dense", "s", absl::StrCat("entries must be positive, got s[", i, "] = ", o.s[i]));
      }
    }
  }
  return absl::OkStatus();
}

int64_t DenseLayer::width() const {
  return o_.parameterization == Parameterization::kStandard
             ? static_cast<int64_t>(std::llround(o_.out_dim * o_.s[1]))
             : o_.out_dim;
}

Requirements DenseLayer::requirements() const {
  Requirements r;
  r.diagonal_spatial = Diagonal{};
  r.batch_axis = o_.batch_axis;
  r.channel_axis = o_.channel_axis;
  return r;
}

absl::StatusOr<ShapeFlow> DenseLayer::OutputShape(const ShapeFlow& in) const {
  if (absl::Status st = ExpectSingle(name(), in.is_list, in.items.size()); !st.ok()) return st;
  Shape s = in.single();
  auto ch = CanonicalAxis(name(), "channel_axis", o_.channel_axis, static_cast<int>(s.size()));
  if (!ch.ok()) return ch.status();
  s[*ch] = width();
  return ShapeFlow::Single(s);
}

absl::StatusOr<MaskFlow> DenseLayer::MaskFn(const MaskFlow& masks, const ShapeFlow&) const {
  return AllOverChannels(name(), o_.channel_axis, masks);
}

absl::StatusOr<double> DenseLayer::NumParams(const ShapeFlow& in) const {
  auto out = OutputShape(in);
  if (!out.ok()) return out.status();
  const Shape& s = in.single();
  const int ch = *CanonicalAxis(name(), "channel_axis", o_.channel_axis, static_cast<int>(s.size()));
  return double(s[ch]) * double(width()) + (o_.b_std ? double(width()) : 0.0);
}

absl::StatusOr<Params> DenseLayer::Init(const RngKey& key, const ShapeFlow& in) const {
  auto out = OutputShape(in);
  if (!out.ok()) return out.status();
  const Shape& s = in.single();
  const int rank = static_cast<int>(s.size());
  const int ch = *CanonicalAxis(name(), "channel_axis", o_.channel_axis, rank);
  const int64_t n_in = s[ch];
  std::vector<RngKey> keys = key.Split(2);
  Params p;
  Array w = keys[0].Normal({n_in, width()});
  if (o_.parameterization == Parameterization::kStandard) {
    const Real scale = o_.W_std / std::sqrt(n_in / o_.s[0]);
    for (Real& v : w.vec()) v *= scale;
  }
  p.arrays.push_back(std::move(w));
  if (o_.b_std) {
    Shape bs(rank, 1);
    bs[ch] = width();
    Array b = keys[1].Normal(bs);
    if (o_.parameterization == Parameterization::kStandard) {
      for (Real& v : b.vec()) v *= *o_.b_std;
    }
    p.arrays.push_back(std::move(b));
  }
  return p;
}

absl::StatusOr<ArrayFlow> DenseLayer::Apply(const Params& params, const ArrayFlow& xf) const {
  if (absl::Status st = ExpectSingle(name(), xf.is_list, xf.items.size()); !st.ok()) return st;
  const Array& x = xf.single();
  const int rank = x.rank();
  auto ch_or = CanonicalAxis(name(), "channel_axis", o_.channel_axis, rank);
  if (!ch_or.ok()) return ch_or.status();
  const int ch = *ch_or;
  const size_t want = o_.b_std ? 2 : 1;
  if (params.arrays.size() != want) {
    return LayerError(name(), "params",
                      absl::StrCat("expected ", want, " arrays, got ", params.arrays.size()));
  }
  const Array& w = params.arrays[0];
  const int64_t n_in = x.dim(ch), n_out = width();
  if (w.rank() != 2 || w.dim(0) != n_in || w.dim(1) != n_out) {
    return LayerError(
        name(), "params",
        absl::StrCat("W has shape ", ShapeToString(w.shape()), ", expected ", ShapeToString({n_in, n_out})));
  }
  // Move the channel axis last, multiply, move it back.
  std::vector<int> perm, inv(rank);
  for (int i = 0; i < rank; ++i)
    if (i != ch) perm.push_back(i);
  perm.push_back(ch);
  for (int i = 0; i < rank; ++i) inv[perm[i]] = i;
  Array xt = ch == rank - 1 ? x : Transpose(x, perm);
  const int64_t rows = xt.size() / n_in;
  Shape yt_shape = xt.shape();
  yt_shape.back() = n_out;
  Array yt = Array::Uninitialized(yt_shape);
  using RowMat = Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<const RowMat> xm(xt.data(), rows, n_in);
  Eigen::Map<const RowMat> wm(w.data(), n_in, n_out);
  Eigen::Map<RowMat> ym(yt.data(), rows, n_out);
  const Real scale = o_.parameterization == Parameterization::kNtk ? o_.W_std / std::sqrt(Real(n_in))
                                                                   : 1.0 / std::sqrt(o_.s[0]);
  ym.noalias() = scale * (xm * wm);
  if (o_.b_std) {
    const Real bscale = o_.parameterization == Parameterization::kNtk ? *o_.b_std : 1.0;
    const Array& b = params.arrays[1];
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < n_out; ++c) ym(r, c) += bscale * b[c];
    }
  }
  return ArrayFlow::Single(ch == rank - 1 ? std::move(yt) : Transpose(yt, inv));
}

absl::Status DenseLayer::TransformKernel(KernelFlow* kf, const KernelContext&) const {
  Kernel& k = kf->single();
  const Real w2 = o_.W_std * o_.W_std;
  const Real b2 = o_.b_std ? *o_.b_std * *o_.b_std : 0.0;
  auto affine = [&](Array& a) {
    for (Real& v : a.vec()) v = w2 * v + b2;
  };
  if (k.ntk) {
    Array& ntk = *k.ntk;
    const bool scalar = ntk.rank() == 0;
    const Real ntk0 = scalar ? ntk[0] : 0.0;
    if (scalar) ntk = Array(k.nngp.shape(), ntk0);
    if (o_.parameterization == Parameterization::kNtk) {
      // ntk' = nngp' + W^2 ntk
      for (int64_t i = 0; i < ntk.size(); ++i) ntk[i] = w2 * (k.nngp[i] + ntk[i]) + b2;
    } else {
      // Standard: the finite input width enters the NTK.
      const int ch = k.channel_axis;
      const Real n_in = static_cast<Real>(k.shape1[ch]);
      const Real c = n_in / o_.s[0];
      const Real bias = o_.b_std ? 1.0 : 0.0;
      for (int64_t i = 0; i < ntk.size(); ++i) ntk[i] = c * k.nngp[i] + w2 * ntk[i] + bias;
    }
  }
  affine(k.nngp);
  affine(k.cov1);
  if (k.cov2) affine(*k.cov2);
  k.is_gaussian = true;
  k.is_input = false;
  return absl::OkStatus();
}

}  // namespace NT_CORE_NS

namespace NT_CORE_NS {

absl::StatusOr<Layer::Linearized> DenseLayer::Linearize(const Params& params, const ArrayFlow& xf) const {
  auto y = Apply(params, xf);  // Also checks the input and the parameter shapes.
  if (!y.ok()) return y.status();
  const Array& x = xf.single();
  const int rank = x.rank();
  const int ch = *CanonicalAxis(name(), "channel_axis", o_.channel_axis, rank);
  std::vector<int> perm, inv(rank);
  for (int i = 0; i < rank; ++i)
    if (i != ch) perm.push_back(i);
  perm.push_back(ch);
  for (int i = 0; i < rank; ++i) inv[perm[i]] = i;
  const int64_t n_in = x.dim(ch), n_out = width();
  const bool ntk = o_.parameterization == Parameterization::kNtk;
  const Real scale = ntk ? o_.W_std / std::sqrt(Real(n_in)) : 1.0 / std::sqrt(o_.s[0]);
  const Real bscale = ntk && o_.b_std ? *o_.b_std : 1.0;
  const bool bias = o_.b_std.has_value();
  const Shape b_shape = bias ? params.arrays[1].shape() : Shape{};
  // Channel-last copies of what the pullback needs.
  auto xt = std::make_shared<const Array>(ch == rank - 1 ? x : Transpose(x, perm));
  auto w = std::make_shared<const Array>(params.arrays[0]);
  Pullback pullback = [=](const ArrayFlow& dyf) -> absl::StatusOr<Cotangents> {
    const Array& dy = dyf.single();
    const Array dyt = ch == rank - 1 ? dy : Transpose(dy, perm);
    const int64_t rows = xt->size() / n_in;
    using RowMat = Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    Eigen::Map<const RowMat> xm(xt->data(), rows, n_in);
    Eigen::Map<const RowMat> wm(w->data(), n_in, n_out);
    Eigen::Map<const RowMat> gm(dyt.data(), rows, n_out);
    Cotangents c;
    Array dw = Array::Uninitialized({n_in, n_out});
    Eigen::Map<RowMat>(dw.data(), n_in, n_out).noalias() = scale * (xm.transpose() * gm);
    c.dparams.arrays.push_back(std::move(dw));
    if (bias) {
      Array db(b_shape, 0.0);
      Eigen::Map<Eigen::Matrix<Real, 1, Eigen::Dynamic>>(db.data(), n_out) = bscale * gm.colwise().sum();
      c.dparams.arrays.push_back(std::move(db));
    }
    Shape dxt_shape = dyt.shape();
    dxt_shape.back() = n_in;
    Array dxt = Array::Uninitialized(dxt_shape);
    Eigen::Map<RowMat>(dxt.data(), rows, n_in).noalias() = scale * (gm * wm.transpose());
    c.dx = ArrayFlow::Single(ch == rank - 1 ? std::move(dxt) : Transpose(dxt, inv));
    return c;
  };
  return Linearized{*std::move(y), std::move(pullback)};
}

}  // namespace NT_CORE_NS
