// The public C++ API, mirroring neural_tangents.stax:
//
//   auto net = nt::stax::serial(nt::stax::Dense(512), nt::stax::Relu(), nt::stax::Dense(1));
//   auto k = net.kernel_fn(x1, &x2, {"nngp", "ntk"});
//
// Every factory returns a Net carrying init_fn, apply_fn and kernel_fn. Invalid arguments do not throw:
// the Net reports the error (naming the layer and argument) from each of its functions.
#ifndef NT_CORE_STAX_H_
#define NT_CORE_STAX_H_

#include <array>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/attention.h"
#include "core/index.h"
#include "core/kernel_fn.h"
#include "core/layer.h"
#include "core/real.h"

namespace NT_CORE_NS::stax {

class Net {
 public:
  explicit Net(LayerPtr layer, absl::Status status = absl::OkStatus())
      : layer_(std::move(layer)), status_(std::move(status)) {}
  const LayerPtr& layer() const { return layer_; }
  // Not OK when the factory's arguments were invalid (every function then returns this error).
  const absl::Status& status() const { return status_; }

  // init_fn(key, input_shape) -> (output_shape, params).
  absl::StatusOr<std::pair<Shape, Params>> init_fn(const RngKey& key, const Shape& input_shape) const;
  // apply_fn(params, x, mask_constant=None). With a mask constant, entries equal to it (NaN: NaN entries)
  // are masked as upstream's supports_masking does, and masked outputs are returned as zeros (its
  // unmask_fn).
  // `kwargs`: upstream's other keyword arguments (Aggregate's pattern, Dropout's rng).
  absl::StatusOr<Array> apply_fn(const Params& params, const Array& x,
                                 std::optional<double> mask_constant = std::nullopt,
                                 const ApplyContext& kwargs = {}) const;
  // kernel_fn(x1, x2=None, get=...); `options.get` is replaced by `get` when that is not empty.
  absl::StatusOr<KernelResult> kernel_fn(const Array& x1, const Array* x2 = nullptr,
                                         std::vector<std::string> get = {}, KernelOptions options = {}) const;
  // kernel_fn on the Kernel path.
  absl::StatusOr<Kernel> kernel_fn(Kernel k, bool compute_ntk = true) const;

 private:
  LayerPtr layer_;
  absl::Status status_;
};

Net serial(std::vector<Net> layers);
Net parallel(std::vector<Net> layers);
template <typename... L>
Net serial(Net first, L... rest) {
  return serial(std::vector<Net>{std::move(first), std::move(rest)...});
}
template <typename... L>
Net parallel(Net first, L... rest) {
  return parallel(std::vector<Net>{std::move(first), std::move(rest)...});
}
Net repeat(Net layer, int n);

Net Identity();
Net FanOut(int num);
Net FanInSum();
Net FanInProd();
Net FanInConcat(int axis = -1);
// LayerNorm over `axis` (must include the channel axis; not the batch axis).
Net LayerNorm(std::vector<int> axis = {-1}, double eps = 1e-12, int batch_axis = 0, int channel_axis = -1);
// GlobalSelfAttention (linear.md 5.7), upstream's keyword arguments as an options struct.
Net GlobalSelfAttention(GlobalSelfAttentionOptions o);
// DotGeneral (linear.md 5.12): contraction with a constant lhs or rhs (at most one; neither: identity).
Net DotGeneral(std::optional<Array> lhs, std::optional<Array> rhs,
               std::array<std::vector<int>, 4> dimension_numbers = {}, int batch_axis = 0,
               int channel_axis = -1);
// Aggregate (linear.md 5.13); aggregate_axis nullopt: every spatial axis. The pattern goes to kernel_fn
// (KernelOptions::pattern1/2) and apply_fn.
Net Aggregate(std::optional<std::vector<int>> aggregate_axis = std::nullopt, int batch_axis = 0,
              int channel_axis = -1, const std::string& implementation = "DENSE");
// Dropout(rate, mode): rate is the keep probability; mode "train" or "test".
Net Dropout(double rate, const std::string& mode = "train");
Net Dense(int64_t out_dim, double W_std = 1.0, std::optional<double> b_std = std::nullopt, int batch_axis = 0,
          int channel_axis = -1, const std::string& parameterization = "ntk",
          std::array<double, 2> s = {1.0, 1.0});
// Convolutions (linear.md 5.3). filter_shape and strides follow rhs_spec's spatial letters; empty strides:
// ones; dimension_numbers (lhs_spec, rhs_spec, out_spec), all empty: NHWC / HWIO / NHWC.
Net Conv(int64_t out_chan, std::vector<int64_t> filter_shape, std::vector<int64_t> strides = {},
         const std::string& padding = "VALID", double W_std = 1.0, std::optional<double> b_std = std::nullopt,
         std::array<std::string, 3> dimension_numbers = {}, const std::string& parameterization = "ntk",
         std::array<double, 2> s = {1.0, 1.0});
Net ConvTranspose(int64_t out_chan, std::vector<int64_t> filter_shape, std::vector<int64_t> strides = {},
                  const std::string& padding = "VALID", double W_std = 1.0,
                  std::optional<double> b_std = std::nullopt,
                  std::array<std::string, 3> dimension_numbers = {},
                  const std::string& parameterization = "ntk", std::array<double, 2> s = {1.0, 1.0});
Net ConvLocal(int64_t out_chan, std::vector<int64_t> filter_shape, std::vector<int64_t> strides = {},
              const std::string& padding = "VALID", double W_std = 1.0,
              std::optional<double> b_std = std::nullopt, std::array<std::string, 3> dimension_numbers = {},
              const std::string& parameterization = "ntk", std::array<double, 2> s = {1.0, 1.0});
// Pooling (linear.md 5.4, 5.5); empty strides: ones (not the window).
Net AvgPool(std::vector<int64_t> window_shape, std::vector<int64_t> strides = {},
            const std::string& padding = "VALID", bool normalize_edges = false, int batch_axis = 0,
            int channel_axis = -1);
Net SumPool(std::vector<int64_t> window_shape, std::vector<int64_t> strides = {},
            const std::string& padding = "VALID", int batch_axis = 0, int channel_axis = -1);
Net GlobalAvgPool(int batch_axis = 0, int channel_axis = -1);
Net GlobalSumPool(int batch_axis = 0, int channel_axis = -1);
Net Flatten(int batch_axis = 0, int batch_axis_out = 0);
// ImageResize (linear.md 5.10): `shape` has one entry per activation axis, -1 keeps it.
Net ImageResize(std::vector<int64_t> shape, const std::string& method, bool antialias = true,
                const std::string& precision = "HIGHEST", int batch_axis = 0, int channel_axis = -1);
// Index (linear.md 5.11), e.g. Slice[:, 0, ...] = Index({IndexItem::Slice(), IndexItem::Int(0),
// IndexItem::Ellipsis()}).
Net Index(std::vector<IndexItem> idx, int batch_axis = 0, int channel_axis = -1);
Net ABRelu(double a, double b, bool do_stabilize = false);
Net Relu(bool do_stabilize = false);
Net LeakyRelu(double alpha, bool do_stabilize = false);
Net Abs(bool do_stabilize = false);
Net Erf(double a = 1.0, double b = 1.0, double c = 0.0);
Net Sigmoid_like();
Net Sin(double a = 1.0, double b = 1.0, double c = 0.0);
Net Cos(double a = 1.0, double b = 1.0, double c = 0.0);  // Sin(a, b, c + pi/2).
Net Exp(double a = 1.0, double b = 1.0);
Net Gaussian(double a = 1.0, double b = -1.0);
Net Rbf(double gamma = 1.0);
Net Gelu(bool approximate = false);
Net Gabor();
Net Monomial(int degree);
Net RectifiedMonomial(int degree);
Net Polynomial(std::vector<double> coef);
Net Hermite(int degree);
Net Sign();
// Activations with the kernel by Gauss-Hermite quadrature of degree `deg` (deg x deg nodes per kernel entry;
// deg in [1, 512]). The default degree's accuracy is documented at the factories in stax.cc.
constexpr int kDefaultQuadratureDegree = 64;
Net Tanh(int deg = kDefaultQuadratureDegree);
Net Softplus(int deg = kDefaultQuadratureDegree);  // log(1 + e^x).
Net Swish(int deg = kDefaultQuadratureDegree);     // x sigmoid(x) (SiLU).
// Text expressions (core/expression.h; muparser syntax). ElementwiseNumerical: fn and df of `x`, the kernel
// by quadrature of degree deg; without df, fn's derivative by finite differences.
Net ElementwiseNumerical(const std::string& fn, int deg, std::optional<std::string> df = std::nullopt);
// Elementwise: fn of `x`; nngp_fn and d_nngp_fn of `cov12`, `var1`, `var2` (fn or nngp_fn required;
// without d_nngp_fn, d nngp_fn / d cov12 by finite differences).
Net Elementwise(std::optional<std::string> fn = std::nullopt,
                std::optional<std::string> nngp_fn = std::nullopt,
                std::optional<std::string> d_nngp_fn = std::nullopt);
// Kernel only: apply_fn reports UNIMPLEMENTED.
Net ExpNormalized(double gamma = 1.0, double shift = -1.0, bool do_clip = false);

// A layer that only reports `status` (used for arguments that failed validation).
Net Invalid(absl::Status status, const std::string& name);

}  // namespace NT_CORE_NS::stax

#endif  // NT_CORE_STAX_H_
