// Aggregate(aggregate_axis, implementation): graph message passing, each vertex becomes the weighted sum
// of its direct predecessors (linear.md 5.13). The pattern is a per-call argument (KernelContext /
// ApplyContext), one adjacency per sample.
#ifndef NT_CORE_AGGREGATE_H_
#define NT_CORE_AGGREGATE_H_

#include <optional>
#include <string>
#include <vector>

#include "core/layer.h"
#include "core/position_map.h"
#include "core/real.h"

namespace NT_CORE_NS {

enum class AggregateImplementation { kDense, kSparse };

struct AggregateOptions {
  // Aggregated axes of the activation; nullopt: every spatial axis; empty: none (a per-sample scale).
  std::optional<std::vector<int>> aggregate_axis;
  int batch_axis = 0;
  int channel_axis = -1;
  // kDense: pattern (batch, *agg, *agg) of weights, entry [n, i, j] the arc i -> j. kSparse: integer
  // edges (batch, n_edges, K, 2) (or (batch, n_edges, 2) when K = 1) of (tail, head) coordinates.
  AggregateImplementation implementation = AggregateImplementation::kDense;
};

class AggregateLayer : public Layer {
 public:
  explicit AggregateLayer(AggregateOptions o) : o_(std::move(o)) {}

  std::string name() const override { return "Aggregate"; }
  Requirements requirements() const override;
  absl::StatusOr<ShapeFlow> OutputShape(const ShapeFlow& in) const override;
  // Without a pattern (upstream's None): the identity.
  absl::StatusOr<ArrayFlow> Apply(const Params& params, const ArrayFlow& x) const override;
  using Layer::ApplyMasked;
  absl::StatusOr<Masked> ApplyMasked(const Params& params, const ArrayFlow& x, const MaskFlow& masks,
                                     const ApplyContext& ctx) const override;
  // Linear in x given the pattern: the pullback aggregates along the reversed arcs (A^T).
  absl::StatusOr<Linearized> Linearize(const Params& params, const ArrayFlow& x) const override;
  absl::StatusOr<LinearizedMasked> LinearizeMasked(const Params& params, const ArrayFlow& x,
                                                   const MaskFlow& masks,
                                                   const ApplyContext& ctx) const override;
  bool remask_kernel() const override { return true; }

  // The adjacency matrices A[n] (V x V, arc i -> j at [i, j]) of a pattern for activations of `shape`.
  absl::StatusOr<std::vector<PositionMatrix>> Adjacency(const Array& pattern, const Shape& shape,
                                                        const std::string& field) const;

 protected:
  absl::Status TransformKernel(KernelFlow* k, const KernelContext& ctx) const override;

 private:
  // The aggregated axes of an activation of `shape` (sorted activation axes).
  absl::StatusOr<std::vector<int>> Axes(const Shape& shape) const;
  // apply_fn with a pattern.
  absl::StatusOr<Array> Aggregate(const Array& x, const Array& pattern) const;
  // y_n = x_n A_n (or A_n^T with `transposed`) over the aggregated axes, for the adjacency `mats`.
  static Array AggregateWith(const Array& x, const std::vector<PositionMatrix>& mats,
                             const std::vector<int>& axes, int batch_axis, bool transposed);
  AggregateOptions o_;
};

}  // namespace NT_CORE_NS

#endif  // NT_CORE_AGGREGATE_H_
