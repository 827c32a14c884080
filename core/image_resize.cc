#include "core/image_resize.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace NT_CORE_NS {

namespace {

constexpr double kPi = 3.14159265358979323846;

// Python's `a % n` (non-negative for n > 0).
int PyMod(int a, int n) { return n > 0 ? ((a % n) + n) % n : a; }

// The interpolation kernels of jax/_src/image/scale.py, for |x| (x >= 0).
double Triangle(double x) { return std::max(0.0, 1.0 - x); }

double KeysCubic(double x) {
  // Keys (1981) with a = -0.5.
  if (x >= 2.0) return 0.0;
  if (x >= 1.0) return ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0;
  return ((1.5 * x - 2.5) * x) * x + 1.0;
}

double Lanczos(double radius, double x) {
  if (x > radius) return 0.0;
  if (x <= 1e-3) return 1.0;
  return radius * std::sin(kPi * x) * std::sin(kPi * x / radius) / (kPi * kPi * x * x);
}

// Precision names lax.Precision accepts (case-insensitive).
bool KnownPrecision(const std::string& p) {
  const std::string v = absl::AsciiStrToLower(p);
  for (const char* name :
       {"", "default", "high", "highest", "fastest", "bfloat16", "bfloat16_3x", "tensorfloat32", "float32"}) {
    if (v == name) return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<ResizeMethod> ParseResizeMethod(const std::string& layer, const std::string& method) {
  if (method == "nearest") return ResizeMethod::kNearest;
  if (method == "linear" || method == "bilinear" || method == "trilinear" || method == "triangle") {
    return ResizeMethod::kLinear;
  }
  if (method == "cubic" || method == "bicubic" || method == "tricubic") return ResizeMethod::kCubic;
  if (method == "lanczos3") return ResizeMethod::kLanczos3;
  if (method == "lanczos5") return ResizeMethod::kLanczos5;
  return LayerError(layer, "method",
                    absl::StrCat("unknown resize method '", method,
                                 "' (expected one of 'nearest', 'linear', 'bilinear', 'trilinear', "
                                 "'triangle', 'cubic', 'bicubic', 'tricubic', 'lanczos3', 'lanczos5')"));
}

const char* ResizeMethodName(ResizeMethod m) {
  switch (m) {
    case ResizeMethod::kNearest:
      return "nearest";
    case ResizeMethod::kLinear:
      return "linear";
    case ResizeMethod::kCubic:
      return "cubic";
    case ResizeMethod::kLanczos3:
      return "lanczos3";
    case ResizeMethod::kLanczos5:
      return "lanczos5";
  }
  return "?";
}

AxisMatrix ResizeMatrix(ResizeMethod method, int64_t n_in, int64_t n_out, bool antialias) {
  AxisMatrix m{n_in, n_out, {}};
  m.rows.resize(n_out);
  if (method == ResizeMethod::kNearest) {
    // floor((j + 0.5) * n_in / n_out), evaluated in float32 as jax does.
    for (int64_t j = 0; j < n_out; ++j) {
      const float off = (static_cast<float>(j) + 0.5f) * static_cast<float>(n_in) / static_cast<float>(n_out);
      const int64_t i = std::clamp<int64_t>(static_cast<int64_t>(std::floor(off)), 0, n_in - 1);
      m.rows[j].emplace_back(i, 1.0);
    }
    return m;
  }
  const double scale = static_cast<double>(n_out) / static_cast<double>(n_in);
  const double inv_scale = 1.0 / scale;
  // Downsampling widens the kernel (a low-pass filter) when antialiasing.
  const double kernel_scale = antialias ? std::max(inv_scale, 1.0) : 1.0;
  const double eps_f32 = 1.1920928955078125e-07;
  std::vector<double> w(n_in);
  for (int64_t j = 0; j < n_out; ++j) {
    const double sample = (static_cast<double>(j) + 0.5) * inv_scale - 0.5;
    // Samples entirely outside the input contribute nothing.
    if (sample < -0.5 || sample > static_cast<double>(n_in) - 0.5) continue;
    double total = 0;
    for (int64_t i = 0; i < n_in; ++i) {
      const double x = std::abs(sample - static_cast<double>(i)) / kernel_scale;
      switch (method) {
        case ResizeMethod::kLinear:
          w[i] = Triangle(x);
          break;
        case ResizeMethod::kCubic:
          w[i] = KeysCubic(x);
          break;
        case ResizeMethod::kLanczos3:
          w[i] = Lanczos(3.0, x);
          break;
        default:
          w[i] = Lanczos(5.0, x);
          break;
      }
      total += w[i];
    }
    if (!(std::abs(total) > 1000.0 * eps_f32)) continue;
    for (int64_t i = 0; i < n_in; ++i) {
      if (w[i] != 0.0) m.rows[j].emplace_back(i, w[i] / total);
    }
  }
  return m;
}

ImageResizeLayer::ImageResizeLayer(ImageResizeOptions o)
    : o_(std::move(o)), method_(ParseResizeMethod("ImageResize", o_.method)) {
  const int n = static_cast<int>(o_.shape.size());
  batch_axis_ = PyMod(o_.batch_axis, n);
  channel_axis_ = PyMod(o_.channel_axis, n);
}

absl::Status ImageResizeLayer::Validate(const ImageResizeOptions& o) {
  if (o.shape.empty()) return LayerError("ImageResize", "shape", "must have one entry per axis, got none");
  for (size_t i = 0; i < o.shape.size(); ++i) {
    if (o.shape[i] != -1 && o.shape[i] <= 0) {
      return LayerError(
          "ImageResize", "shape",
          absl::StrCat("entries must be positive or -1 (keep), got ", o.shape[i], " at axis ", i));
    }
  }
  if (auto m = ParseResizeMethod("ImageResize", o.method); !m.ok()) return m.status();
  if (!KnownPrecision(o.precision)) {
    return LayerError("ImageResize", "precision",
                      absl::StrCat("unknown lax.Precision '", o.precision,
                                   "' (expected DEFAULT, HIGH, HIGHEST or a name such as 'float32')"));
  }
  return absl::OkStatus();
}

Requirements ImageResizeLayer::requirements() const {
  Requirements r;
  r.batch_axis = batch_axis_;
  r.channel_axis = channel_axis_;
  const int n = static_cast<int>(o_.shape.size());
  r.diagonal_batch = n == 0 || o_.shape[batch_axis_] == -1;
  bool spatial_set = false;
  for (int i = 0; i < n; ++i) {
    if (i != batch_axis_ && i != channel_axis_ && o_.shape[i] != -1) spatial_set = true;
  }
  r.diagonal_spatial = Diagonal{spatial_set ? Bool::kNo : Bool::kYes, Bool::kNo};
  return r;
}

Shape ImageResizeLayer::Target(const Shape& in) const {
  Shape out = in;
  for (size_t i = 0; i < out.size(); ++i) {
    if (o_.shape[i] != -1) out[i] = o_.shape[i];
  }
  return out;
}

std::vector<std::pair<int, AxisMatrix>> ImageResizeLayer::Maps(const Shape& in, const Shape& target) const {
  std::vector<std::pair<int, AxisMatrix>> maps;
  for (size_t a = 0; a < in.size(); ++a) {
    if (in[a] == target[a]) continue;  // Unchanged axes are untouched (jax skips them too).
    maps.emplace_back(static_cast<int>(a), ResizeMatrix(*method_, in[a], target[a], o_.antialias));
  }
  return maps;
}

Array ImageResizeLayer::Resize(const Array& x, const Shape& target) const {
  Array y = x;
  for (const auto& [axis, m] : Maps(x.shape(), target)) y = ApplyAlongAxis(y, axis, m);
  return y;
}

absl::StatusOr<ShapeFlow> ImageResizeLayer::OutputShape(const ShapeFlow& in) const {
  if (absl::Status st = ExpectSingle(name(), in.is_list, in.items.size()); !st.ok()) return st;
  const Shape& s = in.single();
  if (s.size() != o_.shape.size()) {
    return LayerError(name(), "shape",
                      absl::StrCat("has ", o_.shape.size(), " entries but the input ", ShapeToString(s),
                                   " has rank ", s.size(), " (one entry per axis, -1 = keep)"));
  }
  return ShapeFlow::Single(Target(s));
}

absl::StatusOr<ArrayFlow> ImageResizeLayer::Apply(const Params&, const ArrayFlow& xf) const {
  if (!method_.ok()) return method_.status();
  if (absl::Status st = ExpectSingle(name(), xf.is_list, xf.items.size()); !st.ok()) return st;
  auto out = OutputShape(ShapeFlow::Single(xf.single().shape()));
  if (!out.ok()) return out.status();
  return ArrayFlow::Single(Resize(xf.single(), out->single()));
}

absl::StatusOr<Layer::Linearized> ImageResizeLayer::Linearize(const Params& params,
                                                              const ArrayFlow& xf) const {
  auto y = Apply(params, xf);
  if (!y.ok()) return y.status();
  const Shape& in = xf.single().shape();
  // Transposes of the per-axis maps, applied in reverse order (they commute anyway: distinct axes).
  auto adjoints = std::make_shared<std::vector<std::pair<int, AxisMatrix>>>();
  for (const auto& [axis, m] : Maps(in, y->single().shape())) {
    AxisMatrix t{m.n_out, m.n_in, {}};
    t.rows.resize(m.n_in);
    for (int64_t j = 0; j < m.n_out; ++j) {
      for (const auto& [i, w] : m.rows[j]) t.rows[i].emplace_back(j, w);
    }
    adjoints->emplace(adjoints->begin(), axis, std::move(t));
  }
  Pullback pullback = [layer = name(), adjoints,
                       out = y->single().shape()](const ArrayFlow& dy) -> absl::StatusOr<Cotangents> {
    if (dy.is_list || dy.items.size() != 1 || dy.single().shape() != out) {
      return LayerError(layer, "",
                        absl::StrCat("the pullback expects one cotangent of shape ", ShapeToString(out)));
    }
    Array dx = dy.single();
    for (const auto& [axis, m] : *adjoints) dx = ApplyAlongAxis(dx, axis, m);
    return Cotangents{ArrayFlow::Single(std::move(dx)), Params{}};
  };
  return Linearized{*std::move(y), std::move(pullback)};
}

absl::StatusOr<MaskFlow> ImageResizeLayer::MaskFn(const MaskFlow& masks, const ShapeFlow&) const {
  if (!method_.ok()) return method_.status();
  MaskFlow out = masks;
  for (std::optional<Array>& m : out.items) {
    if (!m) continue;
    if (static_cast<size_t>(m->rank()) != o_.shape.size()) {
      return LayerError(name(), "shape",
                        absl::StrCat("has ", o_.shape.size(), " entries but the mask has rank ", m->rank()));
    }
    // Resize the "unmasked" indicator; any non-zero contribution keeps a position unmasked.
    Array keep(m->shape());
    for (int64_t i = 0; i < keep.size(); ++i) keep[i] = (*m)[i] != 0.0 ? 0.0 : 1.0;
    Array resized = Resize(keep, Target(m->shape()));
    for (auto& v : resized.vec()) v = v != 0 ? 0 : 1;
    m = std::move(resized);
  }
  return out;
}

absl::Status ImageResizeLayer::TransformKernel(KernelFlow* kf, const KernelContext&) const {
  if (!method_.ok()) return method_.status();
  if (*method_ != ResizeMethod::kLinear && *method_ != ResizeMethod::kNearest) {
    return LayerUnimplemented(
        name(), absl::StrCat("method '", o_.method,
                             "' is only supported by apply_fn; kernel_fn supports 'linear' (also 'bilinear', "
                             "'trilinear', 'triangle') and 'nearest'"));
  }
  if (o_.shape[channel_axis_] != -1) {
    return LayerError(name(), "shape",
                      absl::StrCat("resizing the channel axis ", channel_axis_,
                                   " is not well-defined in the infinite-width limit; set shape[",
                                   channel_axis_, "] = -1"));
  }
  Kernel& k = kf->single();
  const int rank = static_cast<int>(k.shape1.size());
  if (rank != static_cast<int>(o_.shape.size())) {
    return LayerError(name(), "shape",
                      absl::StrCat("has ", o_.shape.size(), " entries but the activations have rank ", rank));
  }
  NaturalOrder(&k);
  const Shape out1 = Target(k.shape1), out2 = Target(k.shape2);
  // The map of one activation axis: from `from` entries to `to` (none when the size is unchanged).
  auto map = [&](int64_t from, int64_t to) -> std::optional<AxisMatrix> {
    if (from == to) return std::nullopt;
    return ResizeMatrix(*method_, from, to, o_.antialias);
  };
  const std::vector<int> spatial = SpatialAxes(rank, k.batch_axis, k.channel_axis);
  for (int a : spatial) {
    if (k.diagonal_spatial && k.shape1[a] != out1[a]) {
      return LayerError(name(), "diagonal_spatial",
                        "resizing a spatial axis needs the full spatial covariance; recompute with "
                        "diagonal_spatial=False");
    }
  }
  // Resamples one kernel array whose leading axes are batch axes of `left` and `right` batches
  // (`batch_axes` of them), then the spatial axis copies in kernel layout.
  auto resample = [&](Array* t, int batch_axes, const Shape& in_l, const Shape& out_l, const Shape& in_r,
                      const Shape& out_r) {
    std::vector<std::pair<int, std::optional<AxisMatrix>>> maps;
    const int b = k.batch_axis;
    maps.emplace_back(0, map(in_l[b], out_l[b]));
    if (batch_axes == 2) maps.emplace_back(1, map(in_r[b], out_r[b]));
    for (size_t s = 0; s < spatial.size(); ++s) {
      const int a = spatial[s];
      if (k.diagonal_spatial) continue;  // Sizes unchanged (checked above).
      maps.emplace_back(batch_axes + 2 * s, map(in_l[a], out_l[a]));
      maps.emplace_back(batch_axes + 2 * s + 1, map(in_r[a], out_r[a]));
    }
    for (const auto& [axis, m] : maps) {
      if (m) *t = ApplyAlongAxis(*t, axis, *m);
    }
  };
  const int cb = CovBatchAxes(k);
  if (k.diagonal_batch && k.shape1[k.batch_axis] != out1[k.batch_axis]) {
    return LayerError(name(), "diagonal_batch",
                      "resizing the batch axis needs the full batch covariance; recompute with "
                      "diagonal_batch=False");
  }
  resample(&k.nngp, 2, k.shape1, out1, k.shape2, out2);
  if (k.ntk && k.ntk->rank() > 0) resample(&*k.ntk, 2, k.shape1, out1, k.shape2, out2);
  resample(&k.cov1, cb, k.shape1, out1, k.shape1, out1);
  if (k.cov2) resample(&*k.cov2, cb, k.shape2, out2, k.shape2, out2);
  return absl::OkStatus();
}

}  // namespace NT_CORE_NS
