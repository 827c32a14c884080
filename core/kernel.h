// The Kernel record: NNGP/NTK and covariances of one layer's outputs, plus layout metadata.
#ifndef NT_CORE_KERNEL_H_
#define NT_CORE_KERNEL_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "core/array.h"
#include "core/real.h"

namespace NT_CORE_NS {

// Field names and order follow upstream's Kernel (core.md section 1).
//
// Layouts (Sp = (s1, s1', s2, s2', ...) full spatial or (s1, s2, ...) diagonal spatial):
//   nngp, ntk: (N1, N2) + Sp
//   cov1: (N1,) + Sp with diagonal_batch, (N1, N1) + Sp otherwise; cov2 likewise for x2.
// `ntk` is a rank-0 zero at the input and stays rank-0 until a layer with parameters; absent = not
// requested. `cov2` is absent iff x2 was None (then cov1 stands for it).
struct Kernel {
  Array nngp;
  std::optional<Array> ntk;
  Array cov1;
  std::optional<Array> cov2;
  bool x1_is_x2 = false;
  bool is_gaussian = false;
  bool is_reversed = false;
  bool is_input = false;
  bool diagonal_batch = true;
  bool diagonal_spatial = false;
  // Engine-internal: cov1/cov2 hold only their spatial diagonal ((N,) + (s1, ..., sS)) while nngp/ntk are
  // in the full layout. Set when nothing downstream reads the covariances' off-diagonal entries (see
  // Layer::cov_use); saves the per-tile work on them, which is as large as the nngp's for 1 x 1 tiles.
  bool cov_diagonal_only = false;
  Shape shape1;
  Shape shape2;
  int batch_axis = 0;
  int channel_axis = 1;
  // 1.0 = masked; absent = no masking. Same rank as shape1/shape2.
  std::optional<Array> mask1;
  std::optional<Array> mask2;

  const Array& cov2_or_cov1() const { return cov2 ? *cov2 : cov1; }
  // Number of spatial dimensions described (rank of the activation minus batch and channel).
  int num_spatial() const { return static_cast<int>(shape1.size()) - 2; }
  // Reverses the order of the spatial axis pairs of every array and toggles is_reversed.
  void Reverse();
  // Multiplies nngp, ntk, cov1, cov2 by f (upstream's `k * a` with f = a^2).
  void Scale(Real f);
};

// Whether cov1/cov2 are in the diagonal spatial layout (diagonal_spatial or cov_diagonal_only).
inline bool CovDiagonalSpatial(const Kernel& k) { return k.diagonal_spatial || k.cov_diagonal_only; }

// Number of leading batch axes of a covariance array in this kernel's layout.
inline int CovBatchAxes(const Kernel& k) { return k.diagonal_batch ? 1 : 2; }

// Extracts per-sample, per-location variances (N, s1, ..., sS) from a covariance array.
Array GetDiagonal(const Array& cov, int batch_axes, bool diagonal_spatial, int num_spatial);

// For each entry of the trailing (spatial) axes of a kernel array, the flat positions in (s1..sS) of
// its left and right member: interleaved pairs (s1, s1', ...) when full, single axes when diagonal.
void PairOffsets(const Shape& sizes, bool diagonal_spatial, std::vector<int64_t>* left,
                 std::vector<int64_t>* right);

// PairOffsets memoised per thread (a network's layers reuse a few layouts).
struct PairOffsetTable {
  std::vector<int64_t> left, right;
  // The entries come in runs of `run` (dividing their count) along which right grows by 1 and left by
  // left_step (0: the full layout's last axis; 1: the diagonal layout, one run). run 1: no such runs.
  int64_t run = 1;
  int64_t left_step = 0;
  std::vector<int64_t> run_left, run_right;  // left and right at each run's start (when run > 1).
};
std::shared_ptr<const PairOffsetTable> PairOffsetsFor(const Shape& sizes, bool diagonal_spatial);

// Per-position masks (N, s1, ..., sS) of an activation mask (1 = masked) whose channel size is 1, in the
// kernel's spatial order (reversed when is_reversed).
absl::StatusOr<Array> PositionMask(const Array& mask, const Kernel& k);

// upstream's Kernel.mask(m1, m2): zeroes every entry of nngp, ntk, cov1, cov2 whose left or right
// position is masked, then stores the masks. m2 absent: m1 stands for it.
absl::Status MaskKernel(const std::optional<Array>& m1, const std::optional<Array>& m2, Kernel* k);

}  // namespace NT_CORE_NS

#endif  // NT_CORE_KERNEL_H_
