// A dense row-major N-d array of doubles: the storage of every Kernel field.
#ifndef NT_CORE_ARRAY_H_
#define NT_CORE_ARRAY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/types/span.h"

namespace nt {

using Shape = std::vector<int64_t>;

int64_t NumElements(absl::Span<const int64_t> shape);
std::string ShapeToString(absl::Span<const int64_t> shape);

class Array {
 public:
  // A rank-0 array holding 0.
  Array() : data_(1, 0.0) {}
  explicit Array(Shape shape, double fill = 0.0)
      : shape_(std::move(shape)), data_(NumElements(shape_), fill) {}
  Array(Shape shape, std::vector<double> data);

  static Array Scalar(double v) { return Array(Shape{}, v); }

  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_[i]; }
  int64_t size() const { return static_cast<int64_t>(data_.size()); }
  double* data() { return data_.data(); }
  const double* data() const { return data_.data(); }
  double& operator[](int64_t i) { return data_[i]; }
  double operator[](int64_t i) const { return data_[i]; }
  std::vector<double>& vec() { return data_; }
  const std::vector<double>& vec() const { return data_; }

  // Same data, new shape of equal size.
  Array Reshaped(Shape shape) const;

 private:
  Shape shape_;
  std::vector<double> data_;
};

// numpy.transpose(a, perm).
Array Transpose(const Array& a, absl::Span<const int> perm);

// Writes `block` (shape (r, c, rest...) when tiled_axes == 2, (r, rest...) when 1) into `full` at
// [row, col]. With `mirror`, writes the mirrored block instead: batch axes swapped and every trailing
// axis pair swapped when `full_spatial` (the symmetric counterpart of a full-layout kernel tile).
void PlaceBlock(const Array& block, int tiled_axes, int64_t row, int64_t col, bool mirror, bool full_spatial,
                Array* full);

// The permutation that mirrors a tile: swaps axes 0,1 and, when `pair_trailing`, each trailing pair.
std::vector<int> MirrorPermutation(int rank, bool pair_trailing);

}  // namespace nt

#endif  // NT_CORE_ARRAY_H_
