// Linear maps over the spatial positions of kernel arrays: out = L t R^T for each pair of positions, with
// the left map chosen by the first batch index and the right one by the second. Aggregate (per-sample
// adjacency matrices) and DotGeneral (one constant) are both such maps.
#ifndef NT_CORE_POSITION_MAP_H_
#define NT_CORE_POSITION_MAP_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "Eigen/Core"
#include "core/array.h"
#include "core/real.h"

namespace NT_CORE_NS {

// (positions out) x (positions in), row-major over the positions' axes.
using PositionMatrix = Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// The matrix applied on one side for a batch index.
using PositionMatrixFn = std::function<const PositionMatrix&(int64_t batch_index)>;

// Full spatial layout: `t` is (lead axes..., s1, s1', ..., sS, sS') with `sizes` = (s1, ..., sS); lead is 1
// (a diagonal-batch covariance: both sides use the one batch index) or 2 (both sides use their own). The
// spatial axes `axes` (sorted) are mapped: their positions (row-major over them) p, p' become
// out[.., q, q'] = sum_{p,p'} left(n1)[q, p] t[.., p, p'] right(n2)[q', p']. Other spatial axes pass through.
// When out_sizes.size() == axes.size(), output axis axes[i] has size out_sizes[i] and keeps its place;
// otherwise `axes` must be every spatial axis and the output's spatial axes are out_sizes.
Array MapPositionPairs(const Array& t, int lead, const Shape& sizes, const std::vector<int>& axes,
                       const Shape& out_sizes, const PositionMatrixFn& left, const PositionMatrixFn& right);

// Diagonal spatial layout, for a map with at most one input position per output position: `t` is
// (lead axes..., s1, ..., sS); out[.., q] = sum_p m[q, p]^2 t[.., p] with output spatial axes out_sizes.
Array MapPositionsDiagonal(const Array& t, int lead, const Shape& sizes, const Shape& out_sizes,
                           const PositionMatrix& m);

}  // namespace NT_CORE_NS

#endif  // NT_CORE_POSITION_MAP_H_
