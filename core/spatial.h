// Shared machinery of the spatial layers (convolutions, pooling, resizing): padding geometry, per-axis
// tap tables and linear maps, and their application to kernel arrays.
#ifndef NT_CORE_SPATIAL_H_
#define NT_CORE_SPATIAL_H_

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/array.h"
#include "core/kernel.h"
#include "core/real.h"

namespace NT_CORE_NS {

enum class Padding { kValid, kSame, kCircular };

// Upstream's Padding(str): 'VALID', 'SAME', 'CIRCULAR' (case-sensitive).
absl::StatusOr<Padding> ParsePadding(const std::string& layer, const std::string& value);
const char* PaddingName(Padding p);

// Forward windowed op along one axis of length n, window k, stride s (linear.md 4.1): output length and
// low pad (CIRCULAR: SAME's).
struct AxisGeometry {
  int64_t out = 0;
  int64_t lo = 0;
};
AxisGeometry ForwardGeometry(Padding p, int64_t n, int64_t k, int64_t s);
// Transposed op: output length (CIRCULAR: n * s, after the fold) and the low pad `a`.
AxisGeometry TransposeGeometry(Padding p, int64_t n, int64_t k, int64_t s);

// For every output index j and tap f of one axis, the input index it reads, or -1 (zero padding).
struct AxisTaps {
  int64_t n_in = 0;
  int64_t n_out = 0;
  int64_t k = 0;
  std::vector<int64_t> index;  // n_out * k, row-major (j, f).
  int64_t at(int64_t j, int64_t f) const { return index[j * k + f]; }
};
// Cross-correlation taps: input s * j + f - lo, zero (SAME, VALID) or wrapped (CIRCULAR) outside.
AxisTaps ForwardTaps(Padding p, int64_t n, int64_t k, int64_t s);
// Transposed-convolution taps of lax's lhs-dilated form: input i with j + f - a == s * i. CIRCULAR gives
// the VALID taps (length n s + max(k - s, 0)); fold them with FoldMatrix afterwards.
AxisTaps TransposeTaps(Padding p, int64_t n, int64_t k, int64_t s);

// A sparse linear map along one axis: out[j] = sum over rows[j] of weight * in[col].
struct AxisMatrix {
  int64_t n_in = 0;
  int64_t n_out = 0;
  std::vector<std::vector<std::pair<int64_t, Real>>> rows;
};
// sum_f weight(j) * in[taps(j, f)] (padded taps skipped).
AxisMatrix TapsMatrix(const AxisTaps& taps, const std::vector<Real>& row_weight);
AxisMatrix TapsMatrix(const AxisTaps& taps, Real weight);
// The adjoint of wrap padding (linear.md 4.1): length lz -> l.
AxisMatrix FoldMatrix(int64_t lz, int64_t l);
// The transpose of m (its pullback): out[i] = sum over j of m[j, i] in[j].
AxisMatrix Adjoint(const AxisMatrix& m);
// b after a.
AxisMatrix Then(const AxisMatrix& a, const AxisMatrix& b);
// Dense (n_out x n_in) row-major matrix, dropping near-zero weights.
AxisMatrix DenseAxisMatrix(int64_t n_out, int64_t n_in, const std::vector<Real>& m);

// `t` with axis `axis` replaced by m applied along it.
Array ApplyAlongAxis(const Array& t, int axis, const AxisMatrix& m);
// scale * (ms applied along axes first, first + 1, ... in turn) of t (+ plus, same shape) + shift, one
// entry of the leading axes at a time (its intermediates stay in cache), in parallel over those entries.
Array ApplyAlongAxes(const Array& t, int first, const std::vector<AxisMatrix>& ms, Real scale, Real shift,
                     const Array* plus);
// Shared-weight convolution of every full-layout spatial axis pair after `lead` leading axes (pair d of
// length taps[d].n_in): out[.., j_d, j_d', ..] = scale * sum over taps f of t[.., taps_d(j_d, f_d),
// taps_d(j_d', f_d), ..] (the same tap on both sides of a pair). Runs block-wise so that the work on
// the inner pairs stays in cache, in parallel over the outer pair. The result is scale * (that) + shift;
// with `plus` (same shape as t), t + plus is convolved without forming the sum.
Array ConvolvePairs(const Array& t, int lead, const std::vector<AxisTaps>& taps, Real scale, Real shift = 0.0,
                    const Array* plus = nullptr);

// Offsets of the entries (q, q) of one full-layout block (s1, s1', ..., sS, sS'), in row-major order of
// q; in the diagonal layout (`diagonal`) simply 0 .. P-1.
std::vector<int64_t> DiagonalOffsets(const std::vector<int64_t>& sizes, bool diagonal = false);

// Calls fn(array, leading batch axes) for nngp, ntk (unless it is the rank-0 input value), cov1 and
// cov2 (when present).
void ForEachKernelArray(Kernel* k, const std::function<void(Array*, int)>& fn);

// Puts the kernel's spatial axes in natural order (spatial layers work in that order only).
inline void NaturalOrder(Kernel* k) {
  if (k->is_reversed) k->Reverse();
}

// batch_axis and channel_axis resolved against an activation rank (distinct, non-negative).
absl::StatusOr<std::pair<int, int>> BatchAndChannelAxes(const std::string& layer, int batch_axis,
                                                        int channel_axis, int rank);

// Axes of the activation other than batch and channel, in order.
std::vector<int> SpatialAxes(int rank, int batch_axis, int channel_axis);

// Reads a list of per-spatial-axis integers: empty -> `fill` repeated; otherwise exactly `n` positive.
absl::StatusOr<std::vector<int64_t>> PerAxis(const std::string& layer, const std::string& field,
                                             const std::vector<int64_t>& v, size_t n, int64_t fill);

}  // namespace NT_CORE_NS

#endif  // NT_CORE_SPATIAL_H_
