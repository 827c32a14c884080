// kernel_fn(x1, x2=None, get=..., diagonal_batch=..., diagonal_spatial=...) on raw inputs: requirement
// resolution, planning, and tiled parallel evaluation.
#ifndef NT_CORE_KERNEL_FN_H_
#define NT_CORE_KERNEL_FN_H_

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/kernel.h"
#include "core/layer.h"
#include "core/real.h"

namespace NT_CORE_NS {

struct KernelOptions {
  // Subset of nngp, ntk, cov1, cov2 (case-insensitive). Empty: all of them.
  std::vector<std::string> get;
  std::optional<bool> diagonal_batch;
  std::optional<bool> diagonal_spatial;
  std::optional<double> mask_constant;
  // Rows/columns per tile; 0 picks a size from the layout.
  int64_t tile_size = 0;
  // Computes only tiles [tile_begin, tile_end) of the plan's tile order (tile_end < 0: to the last). Each
  // tile is computed exactly as in a whole request, so clients can spread one kernel over several
  // servers and assemble a result identical to one server's (with the same explicit tile_size).
  int64_t tile_begin = 0;
  int64_t tile_end = -1;
  // Set to true from another thread to stop promptly (tiles not yet started are skipped).
  const std::atomic<bool>* cancelled = nullptr;
  // Aggregate's pattern kwarg, one entry per sample along the leading axis: pattern1 for x1, pattern2 for
  // x2 (both or neither; without x2, pattern1 serves both sides and pattern2 is absent or equal to it).
  std::shared_ptr<const Array> pattern1;
  std::shared_ptr<const Array> pattern2;
};

struct ArraySpec {
  std::string name;
  Shape shape;
  int tiled_axes = 2;  // Leading axes cut into tiles: 2 (rows, cols), 1 (rows) or 0 (rank-0 ntk).
};

// Everything decided before any heavy work: layouts, shapes, tiles, cost.
// Inputs with mask_constant applied: masked entries zeroed, and the masks (1 = masked) in the
// activation layout (flattened like the inputs when the network starts with Flatten).
struct MaskedInputs {
  Array x[2];
  Array mask[2];
};

struct KernelPlan {
  std::vector<std::string> get;  // Canonical, in request order.
  // Set when mask_constant was given; the tiles read these instead of the caller's inputs.
  std::shared_ptr<const MaskedInputs> masked;
  // Aggregate's patterns for x1 and x2 (pattern[1] is pattern[0] without x2); null: None.
  std::shared_ptr<const Array> pattern[2];
  bool compute_ntk = true;
  bool x2_given = false;
  bool x1_is_x2 = false;
  bool diagonal_batch = true;
  bool diagonal_spatial = false;
  bool flatten_input = false;
  // Tiles carry cov1/cov2 as their spatial diagonal only (Kernel::cov_diagonal_only).
  bool cov_diagonal_only = false;
  int batch_axis = 0;
  int channel_axis = -1;
  std::vector<ArraySpec> arrays;  // Requested arrays with their full (natural-order) shapes.
  Kernel meta;             // Output metadata with the real batch sizes in shape1/2 (arrays: a 1 x 1 sample).
  int64_t n1 = 0, n2 = 0;  // Input batch sizes (tiles cut these).
  int64_t out_n1 = 0, out_n2 = 0;  // Batch sizes of the output arrays (differ after Index on the batch).
  // Evaluate all samples in one tile: the network selects samples (Requirements::selects_batch).
  bool whole_batch = false;
  int64_t tile_size = 0;
  int64_t num_tiles = 0;                 // Tile computations (mirrored tiles once), of the whole kernel.
  int64_t tile_begin = 0, tile_end = 0;  // The tiles this plan computes (KernelOptions' range).
  int64_t num_tile_messages = 0;         // Blocks emitted by the tiles in [tile_begin, tile_end).
  double estimated_flops = 0;
  int64_t output_bytes = 0;   // The assembled requested arrays.
  int64_t working_bytes = 0;  // Peak per-tile working set times concurrency, plus inputs.
  std::string layout;
  // Cost model inputs.
  int64_t cells_per_entry = 1;      // Doubles per (i, j) batch entry in the largest layer array.
  double gram_flops_per_entry = 0;  // Input Gram flops per (i, j).
  int64_t num_layers = 1;
  int64_t input_elements = 0;
};

// One block of one output array, in natural spatial order.
struct TileBlock {
  std::string name;
  int64_t row = 0, col = 0;
  int tiled_axes = 2;
  bool mirror = false;  // Also fills the mirrored block (x2 is x1).
  Array block;
};

// Called concurrently from worker threads; a non-OK status stops the computation.
using TileSink = std::function<absl::Status(TileBlock&&)>;

// Validates inputs and network and plans the computation (runs the network on a 1 x 1 sample).
absl::StatusOr<KernelPlan> PlanKernel(const Layer& net, const Array& x1, const Array* x2,
                                      const KernelOptions& options, int concurrency = 1);
// Plans from shapes only (no data): used to describe a request before inputs arrive.
absl::StatusOr<KernelPlan> PlanKernelForShapes(const Layer& net, const Shape& x1_shape, const Shape* x2_shape,
                                               const KernelOptions& options, int concurrency = 1);

// Computes every tile of the plan in parallel (TBB) and hands blocks to `sink`. `plan` must come from
// PlanKernel for the same inputs (which validated them).
absl::Status ComputeKernelTiles(const Layer& net, const Array& x1, const Array* x2, const KernelPlan& plan,
                                const KernelOptions& options, const TileSink& sink);

// The assembled result: requested arrays plus metadata.
struct KernelResult {
  std::vector<std::pair<std::string, Array>> arrays;  // In request order.
  Kernel meta;
  const Array* Find(const std::string& name) const;
  // Moves array `name` out (nullopt when absent): hands large kernels on without copying them.
  std::optional<Array> Take(const std::string& name);
};

// kernel_fn in one call: plan, tiles, assembly.
absl::StatusOr<KernelResult> ComputeKernel(const Layer& net, const Array& x1, const Array* x2,
                                           const KernelOptions& options);

// The Kernel path: applies the network to an existing Kernel.
absl::Status ApplyToKernel(const Layer& net, Kernel* k, bool compute_ntk);
absl::Status ApplyToKernel(const Layer& net, Kernel* k, const KernelContext& ctx);

}  // namespace NT_CORE_NS

#endif  // NT_CORE_KERNEL_FN_H_
