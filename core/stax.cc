#include "core/stax.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "core/abrelu.h"
#include "core/aggregate.h"
#include "core/attention.h"
#include "core/branching.h"
#include "core/combinators.h"
#include "core/conv.h"
#include "core/dense.h"
#include "core/dot_general.h"
#include "core/dropout.h"
#include "core/erf.h"
#include "core/exp.h"
#include "core/exp_normalized.h"
#include "core/expression.h"
#include "core/flatten.h"
#include "core/gabor.h"
#include "core/gaussian.h"
#include "core/gelu.h"
#include "core/hermite.h"
#include "core/image_resize.h"
#include "core/layer_norm.h"
#include "core/monomial.h"
#include "core/numerical_activation.h"
#include "core/polynomial.h"
#include "core/pooling.h"
#include "core/rbf.h"
#include "core/rectified_monomial.h"
#include "core/sign.h"
#include "core/sin.h"

namespace NT_CORE_NS::stax {

namespace {

class InvalidLayer : public Layer {
 public:
  InvalidLayer(absl::Status status, std::string name) : status_(std::move(status)), name_(std::move(name)) {}
  std::string name() const override { return name_; }
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow&) const override { return status_; }
  absl::StatusOr<ArrayFlow> Apply(const Params&, const ArrayFlow&) const override { return status_; }

 protected:
  absl::Status TransformKernel(KernelFlow*, const KernelContext&) const override { return status_; }

 private:
  absl::Status status_;
  std::string name_;
};

std::vector<LayerPtr> Layers(const std::vector<Net>& nets) {
  std::vector<LayerPtr> out;
  for (const Net& n : nets) out.push_back(n.layer());
  return out;
}

absl::Status CheckFinite(const std::string& layer, const std::string& field, double v) {
  if (!std::isfinite(v)) return LayerError(layer, field, absl::StrCat("must be finite, got ", v));
  return absl::OkStatus();
}

absl::Status CheckAllFinite(const std::string& layer,
                            std::initializer_list<std::pair<const char*, double>> args) {
  for (auto [f, v] : args) {
    if (absl::Status st = CheckFinite(layer, f, v); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::Status CheckDegree(const std::string& layer, int degree, int max_degree) {
  if (degree < 0 || degree > max_degree) {
    return LayerError(layer, "degree", absl::StrCat("must be in [0, ", max_degree, "], got ", degree));
  }
  return absl::OkStatus();
}

// Upstream has no upper bound for Hermite and RectifiedMonomial; the cost per entry grows with it.
constexpr int kMaxDegree = 10000;

}  // namespace

absl::StatusOr<std::pair<Shape, Params>> Net::init_fn(const RngKey& key, const Shape& input_shape) const {
  auto out = layer_->OutputShape(ShapeFlow::Single(input_shape));
  if (!out.ok()) return out.status();
  if (out->is_list) return absl::UnimplementedError("networks with several outputs: use the Layer API");
  auto params = layer_->Init(key, ShapeFlow::Single(input_shape));
  if (!params.ok()) return params.status();
  return std::make_pair(out->single(), *std::move(params));
}

absl::StatusOr<Array> Net::apply_fn(const Params& params, const Array& x, std::optional<double> mask_constant,
                                    const ApplyContext& kwargs) const {
  auto y = layer_->ApplyMasked(params, ArrayFlow::Single(x),
                               MaskFlow::Single(MaskOfConstant(x, mask_constant)), kwargs);
  if (!y.ok()) return y.status();
  if (y->values.is_list) return absl::UnimplementedError("networks with several outputs: use the Layer API");
  Array out = std::move(y->values.single());
  if (y->masks.single()) ZeroWhereMasked(*y->masks.single(), &out);
  return out;
}

absl::StatusOr<KernelResult> Net::kernel_fn(const Array& x1, const Array* x2, std::vector<std::string> get,
                                            KernelOptions options) const {
  if (!get.empty()) options.get = std::move(get);
  return ComputeKernel(*layer_, x1, x2, options);
}

absl::StatusOr<Kernel> Net::kernel_fn(Kernel k, bool compute_ntk) const {
  if (absl::Status st = ApplyToKernel(*layer_, &k, compute_ntk); !st.ok()) return st;
  return k;
}

Net serial(std::vector<Net> layers) { return Net(std::make_shared<SerialLayer>(Layers(layers))); }
Net parallel(std::vector<Net> layers) { return Net(std::make_shared<ParallelLayer>(Layers(layers))); }
Net repeat(Net layer, int n) {
  if (n < 0) return Invalid(LayerError("repeat", "n", absl::StrCat("must be >= 0, got ", n)), "repeat");
  return Net(std::make_shared<RepeatLayer>(layer.layer(), n));
}

Net Identity() { return Net(std::make_shared<IdentityLayer>()); }
Net FanOut(int num) {
  if (num < 1) return Invalid(LayerError("FanOut", "num", absl::StrCat("must be >= 1, got ", num)), "FanOut");
  return Net(std::make_shared<FanOutLayer>(num));
}
Net FanInSum() { return Net(std::make_shared<FanInSumLayer>()); }
Net FanInProd() { return Net(std::make_shared<FanInProdLayer>()); }
Net FanInConcat(int axis) { return Net(std::make_shared<FanInConcatLayer>(axis)); }
Net LayerNorm(std::vector<int> axis, double eps, int batch_axis, int channel_axis) {
  LayerNormOptions o{std::move(axis), eps, batch_axis, channel_axis};
  if (absl::Status st = LayerNormLayer::Validate(o); !st.ok()) return Invalid(st, "LayerNorm");
  return Net(std::make_shared<LayerNormLayer>(std::move(o)));
}

Net GlobalSelfAttention(GlobalSelfAttentionOptions o) {
  if (absl::Status st = GlobalSelfAttentionLayer::Validate(o); !st.ok())
    return Invalid(st, "GlobalSelfAttention");
  return Net(std::make_shared<GlobalSelfAttentionLayer>(std::move(o)));
}

Net DotGeneral(std::optional<Array> lhs, std::optional<Array> rhs, std::array<std::vector<int>, 4> dn,
               int batch_axis, int channel_axis) {
  DotGeneralOptions o{std::move(lhs), std::move(rhs), dn[0], dn[1], dn[2], dn[3], batch_axis, channel_axis};
  if (absl::Status st = DotGeneralLayer::Validate(o); !st.ok()) return Invalid(st, "DotGeneral");
  return Net(std::make_shared<DotGeneralLayer>(std::move(o)));
}

Net Aggregate(std::optional<std::vector<int>> aggregate_axis, int batch_axis, int channel_axis,
              const std::string& implementation) {
  if (implementation != "DENSE" && implementation != "SPARSE") {
    return Invalid(LayerError("Aggregate", "implementation",
                              absl::StrCat("must be 'DENSE' or 'SPARSE', got '", implementation, "'")),
                   "Aggregate");
  }
  AggregateOptions o{
      std::move(aggregate_axis), batch_axis, channel_axis,
      implementation == "DENSE" ? AggregateImplementation::kDense : AggregateImplementation::kSparse};
  return Net(std::make_shared<AggregateLayer>(std::move(o)));
}

Net Dropout(double rate, const std::string& mode) {
  if (mode != "train" && mode != "test") {
    return Invalid(LayerError("Dropout", "mode", absl::StrCat("must be 'train' or 'test', got '", mode, "'")),
                   "Dropout");
  }
  DropoutOptions o{rate, mode == "train"};
  if (absl::Status st = DropoutLayer::Validate(o); !st.ok()) return Invalid(st, "Dropout");
  return Net(std::make_shared<DropoutLayer>(o));
}

Net Dense(int64_t out_dim, double W_std, std::optional<double> b_std, int batch_axis, int channel_axis,
          const std::string& parameterization, std::array<double, 2> s) {
  auto p = ParseParameterization("Dense", parameterization);
  if (!p.ok()) return Invalid(p.status(), "Dense");
  DenseOptions o{out_dim, W_std, b_std, batch_axis, channel_axis, *p, s};
  if (absl::Status st = DenseLayer::Validate(o); !st.ok()) return Invalid(st, "Dense");
  return Net(std::make_shared<DenseLayer>(o));
}

namespace {

Net MakeConv(ConvKind kind, const std::string& name, int64_t out_chan, std::vector<int64_t> filter_shape,
             std::vector<int64_t> strides, const std::string& padding, double W_std,
             std::optional<double> b_std, std::array<std::string, 3> dimension_numbers,
             const std::string& parameterization, std::array<double, 2> s) {
  auto p = ParseParameterization(name, parameterization);
  if (!p.ok()) return Invalid(p.status(), name);
  auto pad = ParsePadding(name, padding);
  if (!pad.ok()) return Invalid(pad.status(), name);
  ConvOptions o{out_chan,
                std::move(filter_shape),
                std::move(strides),
                *pad,
                W_std,
                b_std,
                std::move(dimension_numbers),
                *p,
                s};
  if (absl::Status st = ConvLayer::Validate(kind, o); !st.ok()) return Invalid(st, name);
  return Net(std::make_shared<ConvLayer>(kind, std::move(o)));
}

}  // namespace

Net Conv(int64_t out_chan, std::vector<int64_t> filter_shape, std::vector<int64_t> strides,
         const std::string& padding, double W_std, std::optional<double> b_std,
         std::array<std::string, 3> dimension_numbers, const std::string& parameterization,
         std::array<double, 2> s) {
  return MakeConv(ConvKind::kConv, "Conv", out_chan, std::move(filter_shape), std::move(strides), padding,
                  W_std, b_std, std::move(dimension_numbers), parameterization, s);
}
Net ConvTranspose(int64_t out_chan, std::vector<int64_t> filter_shape, std::vector<int64_t> strides,
                  const std::string& padding, double W_std, std::optional<double> b_std,
                  std::array<std::string, 3> dimension_numbers, const std::string& parameterization,
                  std::array<double, 2> s) {
  return MakeConv(ConvKind::kTranspose, "ConvTranspose", out_chan, std::move(filter_shape),
                  std::move(strides), padding, W_std, b_std, std::move(dimension_numbers), parameterization,
                  s);
}
Net ConvLocal(int64_t out_chan, std::vector<int64_t> filter_shape, std::vector<int64_t> strides,
              const std::string& padding, double W_std, std::optional<double> b_std,
              std::array<std::string, 3> dimension_numbers, const std::string& parameterization,
              std::array<double, 2> s) {
  return MakeConv(ConvKind::kLocal, "ConvLocal", out_chan, std::move(filter_shape), std::move(strides),
                  padding, W_std, b_std, std::move(dimension_numbers), parameterization, s);
}

Net AvgPool(std::vector<int64_t> window_shape, std::vector<int64_t> strides, const std::string& padding,
            bool normalize_edges, int batch_axis, int channel_axis) {
  auto pad = ParsePadding("AvgPool", padding);
  if (!pad.ok()) return Invalid(pad.status(), "AvgPool");
  PoolOptions o{std::move(window_shape), std::move(strides), *pad, normalize_edges, batch_axis, channel_axis};
  if (absl::Status st = PoolLayer::Validate(PoolKind::kAvg, o); !st.ok()) return Invalid(st, "AvgPool");
  return Net(std::make_shared<PoolLayer>(PoolKind::kAvg, std::move(o)));
}
Net SumPool(std::vector<int64_t> window_shape, std::vector<int64_t> strides, const std::string& padding,
            int batch_axis, int channel_axis) {
  auto pad = ParsePadding("SumPool", padding);
  if (!pad.ok()) return Invalid(pad.status(), "SumPool");
  PoolOptions o{std::move(window_shape), std::move(strides), *pad, false, batch_axis, channel_axis};
  if (absl::Status st = PoolLayer::Validate(PoolKind::kSum, o); !st.ok()) return Invalid(st, "SumPool");
  return Net(std::make_shared<PoolLayer>(PoolKind::kSum, std::move(o)));
}
Net GlobalAvgPool(int batch_axis, int channel_axis) {
  return Net(std::make_shared<GlobalPoolLayer>(PoolKind::kAvg, GlobalPoolOptions{batch_axis, channel_axis}));
}
Net GlobalSumPool(int batch_axis, int channel_axis) {
  return Net(std::make_shared<GlobalPoolLayer>(PoolKind::kSum, GlobalPoolOptions{batch_axis, channel_axis}));
}
Net Flatten(int batch_axis, int batch_axis_out) {
  FlattenOptions o{batch_axis, batch_axis_out};
  if (absl::Status st = FlattenLayer::Validate(o); !st.ok()) return Invalid(st, "Flatten");
  return Net(std::make_shared<FlattenLayer>(o));
}
Net ImageResize(std::vector<int64_t> shape, const std::string& method, bool antialias,
                const std::string& precision, int batch_axis, int channel_axis) {
  ImageResizeOptions o{std::move(shape), method, antialias, precision, batch_axis, channel_axis};
  if (absl::Status st = ImageResizeLayer::Validate(o); !st.ok()) return Invalid(st, "ImageResize");
  return Net(std::make_shared<ImageResizeLayer>(std::move(o)));
}
Net Index(std::vector<IndexItem> idx, int batch_axis, int channel_axis) {
  IndexOptions o{std::move(idx), batch_axis, channel_axis};
  if (absl::Status st = IndexLayer::Validate(o); !st.ok()) return Invalid(st, "Index");
  return Net(std::make_shared<IndexLayer>(std::move(o)));
}

Net ABRelu(double a, double b, bool do_stabilize) {
  for (auto [f, v] : {std::pair<const char*, double>{"a", a}, {"b", b}}) {
    if (absl::Status st = CheckFinite("ABRelu", f, v); !st.ok()) return Invalid(st, "ABRelu");
  }
  return Net(std::make_shared<ABReluLayer>(a, b, do_stabilize));
}
Net Relu(bool do_stabilize) { return Net(std::make_shared<ABReluLayer>(0.0, 1.0, do_stabilize, "Relu")); }
Net LeakyRelu(double alpha, bool do_stabilize) {
  if (absl::Status st = CheckFinite("LeakyRelu", "alpha", alpha); !st.ok()) return Invalid(st, "LeakyRelu");
  return Net(std::make_shared<ABReluLayer>(alpha, 1.0, do_stabilize, "LeakyRelu"));
}
Net Abs(bool do_stabilize) { return Net(std::make_shared<ABReluLayer>(-1.0, 1.0, do_stabilize, "Abs")); }
Net Erf(double a, double b, double c) {
  for (auto [f, v] : {std::pair<const char*, double>{"a", a}, {"b", b}, {"c", c}}) {
    if (absl::Status st = CheckFinite("Erf", f, v); !st.ok()) return Invalid(st, "Erf");
  }
  return Net(std::make_shared<ErfLayer>(a, b, c));
}
Net Sigmoid_like() {
  return Net(std::make_shared<ErfLayer>(0.5, 1.0 / 2.4020563531719796, 0.5, "Sigmoid_like"));
}

Net Sin(double a, double b, double c) {
  if (absl::Status st = CheckAllFinite("Sin", {{"a", a}, {"b", b}, {"c", c}}); !st.ok()) {
    return Invalid(st, "Sin");
  }
  return Net(std::make_shared<SinLayer>(a, b, c));
}
Net Cos(double a, double b, double c) {
  if (absl::Status st = CheckAllFinite("Cos", {{"a", a}, {"b", b}, {"c", c}}); !st.ok()) {
    return Invalid(st, "Cos");
  }
  return Net(std::make_shared<SinLayer>(a, b, c + M_PI_2, "Cos"));
}
Net Exp(double a, double b) {
  if (absl::Status st = CheckAllFinite("Exp", {{"a", a}, {"b", b}}); !st.ok()) return Invalid(st, "Exp");
  return Net(std::make_shared<ExpLayer>(a, b));
}
Net Gaussian(double a, double b) {
  if (absl::Status st = CheckAllFinite("Gaussian", {{"a", a}, {"b", b}}); !st.ok()) {
    return Invalid(st, "Gaussian");
  }
  return Net(std::make_shared<GaussianLayer>(a, b));
}
Net Rbf(double gamma) {
  if (absl::Status st = CheckFinite("Rbf", "gamma", gamma); !st.ok()) return Invalid(st, "Rbf");
  // sqrt(2 gamma) in the finite network: a negative gamma has no real activation.
  if (gamma < 0) return Invalid(LayerError("Rbf", "gamma", absl::StrCat("must be >= 0, got ", gamma)), "Rbf");
  return Net(std::make_shared<RbfLayer>(gamma));
}
Net Gelu(bool approximate) { return Net(std::make_shared<GeluLayer>(approximate)); }
Net Gabor() { return Net(std::make_shared<GaborLayer>()); }
Net Monomial(int degree) {
  // Upstream's closed forms stop at degree 5.
  if (absl::Status st = CheckDegree("Monomial", degree, 5); !st.ok()) return Invalid(st, "Monomial");
  return Net(std::make_shared<MonomialLayer>(degree));
}
Net RectifiedMonomial(int degree) {
  if (absl::Status st = CheckDegree("RectifiedMonomial", degree, kMaxDegree); !st.ok()) {
    return Invalid(st, "RectifiedMonomial");
  }
  return Net(std::make_shared<RectifiedMonomialLayer>(degree));
}
Net Polynomial(std::vector<double> coef) {
  for (size_t i = 0; i < coef.size(); ++i) {
    if (absl::Status st = CheckFinite("Polynomial", absl::StrCat("coef[", i, "]"), coef[i]); !st.ok()) {
      return Invalid(st, "Polynomial");
    }
  }
  // The Hermite coefficients involve (len - 1)!, which overflows past 170.
  if (coef.size() > 128) {
    return Invalid(
        LayerError("Polynomial", "coef", absl::StrCat("at most 128 coefficients, got ", coef.size())),
        "Polynomial");
  }
  return Net(std::make_shared<PolynomialLayer>(std::move(coef)));
}
Net Hermite(int degree) {
  if (absl::Status st = CheckDegree("Hermite", degree, kMaxDegree); !st.ok()) return Invalid(st, "Hermite");
  return Net(std::make_shared<HermiteLayer>(degree));
}
Net Sign() { return Net(std::make_shared<SignLayer>()); }

namespace {

Net Numerical(const std::string& name, int deg, NumericalActivationLayer::BatchFn phi,
              NumericalActivationLayer::BatchFn dphi) {
  if (absl::Status st = ValidateQuadratureDegree(name, deg); !st.ok()) return Invalid(st, name);
  return Net(std::make_shared<NumericalActivationLayer>(name, std::move(phi), std::move(dphi), deg));
}

// 1 / (1 + e^-x) without overflow.
inline double Sigmoid(double x) {
  const double e = std::exp(-std::abs(x));
  return x >= 0 ? 1 / (1 + e) : e / (1 + e);
}

}  // namespace

// Accuracy of the default degree (64) against degree 256 (tests/numerical_activation_test.cc,
// AccuracyOfDefaultDegree): largest absolute error of T (and T_diag) / of Tdot over variances q11, q22 up
// to the bound and all correlations in [-1, 1]:
//
//   deg 64    | q <= 1          | q <= 4          | q <= 9
//   Tanh      | 3e-9 / 1e-7     | 9e-5 / 9e-4     | 2e-3 / 1e-2
//   Softplus  | 4e-15 / 2e-15   | 6e-11 / 7e-10   | 1e-7 / 7e-7
//   Swish     | 1e-15 / 2e-15   | 6e-9 / 6e-8     | 6e-6 / 3e-5
//
// tanh(sqrt(q) z) nears a step as q grows, which Gauss-Hermite resolves slowly: for Tanh with pre-activation
// variances above ~1 pass a larger deg (128: 7e-7 / 1.4e-5 at q <= 4; 256: 6e-10 / 3e-8 at q <= 4 and
// 1e-6 / 2e-5 at q <= 9). The cost is 2 deg^2 evaluations of phi (and of phi') per kernel entry.
Net Tanh(int deg) {
  return Numerical(
      "Tanh", deg,
      [](const double* x, int64_t n, double* y) {
        for (int64_t i = 0; i < n; ++i) y[i] = std::tanh(x[i]);
      },
      [](const double* x, int64_t n, double* y) {
        for (int64_t i = 0; i < n; ++i) {
          const double th = std::tanh(x[i]);
          y[i] = 1 - th * th;
        }
      });
}
Net Softplus(int deg) {
  return Numerical(
      "Softplus", deg,
      [](const double* x, int64_t n, double* y) {
        // log(1 + e^x) = max(x, 0) + log1p(e^-|x|).
        for (int64_t i = 0; i < n; ++i) y[i] = std::max(x[i], 0.0) + std::log1p(std::exp(-std::abs(x[i])));
      },
      [](const double* x, int64_t n, double* y) {
        for (int64_t i = 0; i < n; ++i) y[i] = Sigmoid(x[i]);
      });
}
Net Swish(int deg) {
  return Numerical(
      "Swish", deg,
      [](const double* x, int64_t n, double* y) {
        for (int64_t i = 0; i < n; ++i) y[i] = x[i] * Sigmoid(x[i]);
      },
      [](const double* x, int64_t n, double* y) {
        for (int64_t i = 0; i < n; ++i) {
          const double s = Sigmoid(x[i]);
          y[i] = s * (1 + x[i] * (1 - s));
        }
      });
}
Net ElementwiseNumerical(const std::string& fn, int deg, std::optional<std::string> df) {
  const std::string name = "ElementwiseNumerical";
  if (absl::Status st = ValidateQuadratureDegree(name, deg); !st.ok()) return Invalid(st, name);
  auto f = Expression::Parse(name, "fn", fn, {"x"});
  if (!f.ok()) return Invalid(f.status(), name);
  ExpressionPtr d;
  if (df) {
    auto parsed = Expression::Parse(name, "df", *df, {"x"});
    if (!parsed.ok()) return Invalid(parsed.status(), name);
    d = *std::move(parsed);
  }
  NumericalActivationLayer::BatchFn phi = [f = *f](const double* x, int64_t n, double* y) {
    f->Eval1(x, n, y);
  };
  NumericalActivationLayer::BatchFn dphi;
  if (d) {
    dphi = [d](const double* x, int64_t n, double* y) { d->Eval1(x, n, y); };
  } else {
    dphi = [f = *f](const double* x, int64_t n, double* y) { f->Diff(0, &x, nullptr, n, y); };
  }
  return Net(std::make_shared<NumericalActivationLayer>(name, std::move(phi), std::move(dphi), deg));
}

Net Elementwise(std::optional<std::string> fn, std::optional<std::string> nngp_fn,
                std::optional<std::string> d_nngp_fn) {
  const std::string name = "Elementwise";
  if (!fn && !nngp_fn) {
    return Invalid(LayerError(name, "fn", "fn or nngp_fn is required (both are None)"), name);
  }
  ExpressionPtr f, t, dt;
  if (fn) {
    auto e = Expression::Parse(name, "fn", *fn, {"x"});
    if (!e.ok()) return Invalid(e.status(), name);
    f = *std::move(e);
  }
  for (auto [text, field, out] :
       {std::tuple{&nngp_fn, "nngp_fn", &t}, std::tuple{&d_nngp_fn, "d_nngp_fn", &dt}}) {
    if (!*text) continue;
    auto e = Expression::Parse(name, field, **text, {"cov12", "var1", "var2"});
    if (!e.ok()) return Invalid(e.status(), name);
    *out = *std::move(e);
  }
  return Net(std::make_shared<ElementwiseExpressionLayer>(std::move(f), std::move(t), std::move(dt)));
}

Net ExpNormalized(double gamma, double shift, bool do_clip) {
  if (absl::Status st = CheckAllFinite("ExpNormalized", {{"gamma", gamma}, {"shift", shift}}); !st.ok()) {
    return Invalid(st, "ExpNormalized");
  }
  return Net(std::make_shared<ExpNormalizedLayer>(gamma, shift, do_clip));
}

Net Invalid(absl::Status status, const std::string& name) {
  return Net(std::make_shared<InvalidLayer>(status, name), status);
}

}  // namespace NT_CORE_NS::stax
