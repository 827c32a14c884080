// Index (upstream's Index / Slice): numpy basic indexing of activations with ints, slices and one
// Ellipsis; the kernel is indexed alike on both batch axes and both copies of each spatial axis
// (linear.md 5.11).
#ifndef NT_CORE_INDEX_H_
#define NT_CORE_INDEX_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/layer.h"
#include "core/real.h"

namespace NT_CORE_NS {

// One item of an index: a slice start:stop:step (unset = Python's None), an int (removes the axis),
// or `...`.
struct IndexItem {
  enum Kind { kSlice, kInt, kEllipsis };
  Kind kind = kSlice;
  std::optional<int64_t> start, stop, step;
  int64_t index = 0;

  static IndexItem Slice(std::optional<int64_t> start = std::nullopt,
                         std::optional<int64_t> stop = std::nullopt,
                         std::optional<int64_t> step = std::nullopt);
  static IndexItem Int(int64_t i);
  static IndexItem Ellipsis();
  // Exactly `:` (slice(None)); `::1` or `0:` are not.
  bool is_full_slice() const { return kind == kSlice && !start && !stop && !step; }
  // Takes every entry of any axis in order (`:`, `0:`, `::1`, ...).
  bool takes_all() const {
    return kind == kSlice && start.value_or(0) == 0 && !stop && step.value_or(1) == 1;
  }
  std::string ToString() const;
};

// What an item selects on an axis of length n: the taken positions in order, and whether the axis
// is removed (an int item).
struct AxisSelection {
  std::vector<int64_t> take;
  bool drop = false;
  bool identity = false;  // Takes 0..n-1 in order.
};

// numpy's rules: slice.indices(n) (negative steps, clamping, empty results); ints in [-n, n).
absl::StatusOr<AxisSelection> SelectAxis(const std::string& layer, const IndexItem& item, int64_t n,
                                         int axis);

// upstream's canonicalize_idx: the Ellipsis expanded with `:`, trailing `:` appended; exactly `rank`
// items, none of them an Ellipsis.
absl::StatusOr<std::vector<IndexItem>> CanonicalIndex(const std::string& layer,
                                                      const std::vector<IndexItem>& idx, int rank);

struct IndexOptions {
  std::vector<IndexItem> idx;
  int batch_axis = 0;
  int channel_axis = -1;
};

class IndexLayer : public Layer {
 public:
  explicit IndexLayer(IndexOptions o) : o_(std::move(o)) {}
  // Argument checks: at most one Ellipsis, no zero steps.
  static absl::Status Validate(const IndexOptions& o);

  std::string name() const override { return "Index"; }
  // Declares selects_batch when the batch item may select samples (for some rank: requirements do not
  // know it): the tiled engine then evaluates the whole batch in one tile.
  Requirements requirements() const override;
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override;
  absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const override;
  // A gather: the pullback scatter-adds into zeros of the input's shape.
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;
  // mask[idx]; axes where the mask is broadcast (size 1) keep size 1 under slices.
  absl::StatusOr<MaskFlow> MaskFn(const MaskFlow& masks, const ShapeFlow& shapes) const override;
  bool remask_kernel() const override { return false; }

  // Whether the batch item may keep other than all samples in order, for some activation rank.
  bool SelectsBatch() const;

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;

 private:
  // Per-axis selections of `idx` for an activation of shape `s`.
  absl::StatusOr<std::vector<AxisSelection>> Select(const Shape& s) const;
  IndexOptions o_;
};

// a[ix_(take...)] with dropped axes removed: one selection per axis of `a`.
Array GatherAxes(const Array& a, const std::vector<AxisSelection>& sel);
// The adjoint of GatherAxes: zeros of `shape` with `g` added at the gathered positions.
Array ScatterAxes(const Array& g, const std::vector<AxisSelection>& sel, const Shape& shape);

}  // namespace NT_CORE_NS

#endif  // NT_CORE_INDEX_H_
