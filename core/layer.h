// The layer abstraction: every layer provides init_fn, apply_fn and kernel_fn (as upstream's stax),
// plus shape propagation and its requirements.
#ifndef NT_CORE_LAYER_H_
#define NT_CORE_LAYER_H_

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/array.h"
#include "core/kernel.h"
#include "core/real.h"
#include "core/requirements.h"
#include "core/rng.h"

namespace NT_CORE_NS {

// What flows between layers: one item, or a list of items (after FanOut, into parallel / fan-in).
template <typename T>
struct Flow {
  std::vector<T> items;
  bool is_list = false;

  static Flow Single(T t) {
    Flow f;
    f.items.push_back(std::move(t));
    return f;
  }
  static Flow List(std::vector<T> ts) {
    Flow f;
    f.items = std::move(ts);
    f.is_list = true;
    return f;
  }
  T& single() { return items.front(); }
  const T& single() const { return items.front(); }
};

using KernelFlow = Flow<Kernel>;
using ShapeFlow = Flow<Shape>;
using ArrayFlow = Flow<Array>;
// Activation masks (1 = masked), one per flowing item; absent = nothing masked.
using MaskFlow = Flow<std::optional<Array>>;

// Parameters of a finite network: a layer's own arrays, and one child per sub-layer of a combinator.
struct Params {
  std::vector<Array> arrays;
  std::vector<Params> children;
};

// Per-call options of kernel_fn threaded through every layer.
struct KernelContext {
  bool compute_ntk = true;
  // Aggregate's pattern kwarg: the rows of pattern1 / pattern2 for the samples of this kernel's x1 / x2
  // (null: None).
  const Array* pattern1 = nullptr;
  const Array* pattern2 = nullptr;
};

// Per-call keyword arguments of apply_fn threaded through every layer.
struct ApplyContext {
  const Array* pattern = nullptr;  // Aggregate's pattern (null: None).
  // Dropout's random key (upstream's rng); combinators split it among their sub-layers as upstream does.
  std::optional<RngKey> rng;
};

// Reverse mode (jax.vjp of apply_fn): cotangents of a forward pass's inputs and parameters, with the same
// structure and shapes as the inputs and params (a layer without parameters gives an empty Params).
struct Cotangents {
  ArrayFlow dx;
  Params dparams;
};
// Maps cotangents of the outputs (same structure and shapes as the outputs) to Cotangents. It owns what
// it needs of the forward pass, may be called any number of times, and concurrently.
using Pullback = std::function<absl::StatusOr<Cotangents>(const ArrayFlow& dy)>;

class Layer {
 public:
  virtual ~Layer() = default;

  // Upstream's layer name, e.g. "Dense".
  virtual std::string name() const = 0;
  virtual Requirements requirements() const { return {}; }
  // Number of non-combinator layers (for cost estimates).
  virtual int64_t NumLayers() const { return 1; }

  // Output shape(s) of the finite network for input shape(s); errors name the layer and field.
  virtual absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const = 0;

  // init_fn: draws parameters for `in` from `key`.
  virtual absl::StatusOr<Params> Init(const RngKey& key, const ShapeFlow& in) const;
  // How many numbers Init draws for `in` (known before anything is allocated; default: none).
  virtual absl::StatusOr<double> NumParams(const ShapeFlow& in) const;
  // A bound on the activation entries alive at once while apply_fn runs on `in` (default: its inputs
  // plus its outputs).
  virtual absl::StatusOr<double> PeakActivations(const ShapeFlow& in) const;
  // supports_masking: output masks for input masks of activations of `shapes` (default: unchanged).
  virtual absl::StatusOr<MaskFlow> MaskFn(const MaskFlow& masks, const ShapeFlow& shapes) const;
  // Whether entries at masked positions are zeroed after this layer's kernel transform.
  virtual bool remask_kernel() const { return false; }

  // How the layer uses the covariances cov1/cov2 of a full spatial layout: kDiagonal = the spatial
  // diagonal of its output covariances depends only on that of its input ones, and it accepts kernels with
  // cov_diagonal_only; kReadout = also accepts them, but its output covariances are then undefined (set to
  // NaN), so it may only end a network whose covariances are not requested; kFull = needs them whole.
  enum class CovUse { kFull, kDiagonal, kReadout };
  virtual CovUse cov_use() const { return CovUse::kFull; }

  // apply_fn: the finite network's forward pass.
  virtual absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const = 0;

  // apply_fn with masks (upstream's supports_masking, apply side): masked input entries are zeroed, the
  // layer runs, and the output masks come from MaskFn. Combinators thread the masks through their
  // sub-layers.
  struct Masked {
    ArrayFlow values;
    MaskFlow masks;
  };
  virtual absl::StatusOr<Masked> ApplyMasked(const Params& params, const ArrayFlow& x,
                                             const MaskFlow& masks) const;
  // The same with apply_fn's keyword arguments: the entry point. Combinators pass `ctx` on; layers that
  // read no keyword argument override the form above instead.
  virtual absl::StatusOr<Masked> ApplyMasked(const Params& params, const ArrayFlow& x, const MaskFlow& masks,
                                             const ApplyContext& ctx) const {
    return ApplyMasked(params, x, masks);
  }

  // Reverse mode. The unmasked forward pass with its pullback; the default refuses (UNIMPLEMENTED).
  struct Linearized {
    ArrayFlow y;
    Pullback pullback;
  };
  virtual absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const;
  // The entry point, as ApplyMasked with keyword arguments: the default zeroes masked inputs, runs
  // Linearize, takes output masks from MaskFn, and zeroes the input cotangents at masked entries (their
  // values never reach the output). Layers that override ApplyMasked override this too.
  struct LinearizedMasked {
    Masked out;
    Pullback pullback;
  };
  virtual absl::StatusOr<LinearizedMasked> LinearizeMasked(const Params& params, const ArrayFlow& x,
                                                           const MaskFlow& masks,
                                                           const ApplyContext& ctx) const;

  // kernel_fn on the Kernel path: checks this layer's requirements against the incoming kernel, runs
  // the transform, then recomputes shape1/shape2 from OutputShape and the masks from MaskFn (zeroing
  // masked entries when remask_kernel()).
  absl::Status ApplyKernel(KernelFlow* k, const KernelContext& ctx) const;

 protected:
  // The kernel transform proper.
  virtual absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const = 0;
  // Combinators check requirements and shapes inside their sub-layers instead.
  virtual bool is_combinator() const { return false; }
};

using LayerPtr = std::shared_ptr<const Layer>;

// Error helpers: messages always name the layer (and the field when there is one).
absl::Status LayerError(const std::string& layer, const std::string& field, const std::string& msg);
absl::Status LayerUnimplemented(const std::string& layer, const std::string& msg);

// Prefixes an error from sub-layer `where` (e.g. "layers[2]") so messages carry the layer's path,
// e.g. "layers[1].layers[0]: Relu: ...".
absl::Status AtChild(const absl::Status& status, const std::string& where);

// Requires exactly one input for a single-input layer.
absl::Status ExpectSingle(const std::string& layer, bool is_list, size_t n);

// Masks reduced with `all` over the channel axis (keep dims): the output masks of layers that mix channels.
absl::StatusOr<MaskFlow> AllOverChannels(const std::string& layer, int channel_axis, const MaskFlow& masks);

// Normalises an axis against a rank (Python-style negative axes).
absl::StatusOr<int> CanonicalAxis(const std::string& layer, const std::string& field, int axis, int rank);

}  // namespace NT_CORE_NS

#endif  // NT_CORE_LAYER_H_
