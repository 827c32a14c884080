// A dense row-major N-d array of doubles: the storage of every Kernel field.
#ifndef NT_CORE_ARRAY_H_
#define NT_CORE_ARRAY_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/types/span.h"
#include "core/real.h"

namespace NT_CORE_NS {

using Shape = std::vector<int64_t>;

// Large blocks (kernel arrays of a few MB, allocated and freed per layer by every tile) come from a
// small per-thread cache: fresh memory from the system costs a page fault per 4 KiB on first touch,
// which took 15-30% of CNN kernel time with glibc's allocator. Small blocks go to operator new.
// Blocks over 32 MiB (outputs, inputs, Predict's matrices) go to one cache shared by all threads, of
// capacity min(2 GiB, RAM / 8) unless set; its blocks may be reclaimed by the system under pressure.
void* AllocateBlock(size_t bytes);
void FreeBlock(void* p, size_t bytes);
size_t DefaultSharedBlockCacheBytes();
void SetSharedBlockCacheBytes(size_t bytes);

// Leaves doubles uninitialised on resize: large outputs are written tile by tile by worker threads,
// so zero-filling them first (single-threaded, touching every page) would only cost time.
template <typename T>
struct DefaultInitAllocator : std::allocator<T> {
  using value_type = T;
  T* allocate(size_t n) { return static_cast<T*>(AllocateBlock(n * sizeof(T))); }
  void deallocate(T* p, size_t n) noexcept { FreeBlock(p, n * sizeof(T)); }
  template <typename U>
  struct rebind {
    using other = DefaultInitAllocator<U>;
  };
  DefaultInitAllocator() = default;
  template <typename U>
  DefaultInitAllocator(const DefaultInitAllocator<U>&) noexcept {}
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
using Storage = std::vector<Real, DefaultInitAllocator<Real>>;

int64_t NumElements(absl::Span<const int64_t> shape);
std::string ShapeToString(absl::Span<const int64_t> shape);

class Array {
 public:
  // A rank-0 array holding 0.
  Array() : data_(1, 0.0) {}
  explicit Array(Shape shape, Real fill = 0.0) : shape_(std::move(shape)), data_(NumElements(shape_), fill) {}
  Array(Shape shape, Storage data);
  Array(Shape shape, const std::vector<Real>& data);

  static Array Scalar(Real v) { return Array(Shape{}, v); }
  // Contents unspecified: for arrays that are entirely overwritten.
  static Array Uninitialized(Shape shape);

  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_[i]; }
  int64_t size() const { return static_cast<int64_t>(data_.size()); }
  Real* data() { return data_.data(); }
  const Real* data() const { return data_.data(); }
  Real& operator[](int64_t i) { return data_[i]; }
  Real operator[](int64_t i) const { return data_[i]; }
  Storage& vec() { return data_; }
  const Storage& vec() const { return data_; }

  // Same data, new shape of equal size (moved out of an rvalue, copied otherwise).
  Array Reshaped(Shape shape) const&;
  Array Reshaped(Shape shape) &&;

 private:
  Shape shape_;
  Storage data_;
};

// numpy.all(a != 0, axis, keepdims=True) as 0/1 doubles (reduces masks over an axis).
Array AllAlongAxis(const Array& a, int axis);

// Sets entries of `x` to 0 where `mask` (same rank; each axis equal or 1, broadcast) is non-zero.
void ZeroWhereMasked(const Array& mask, Array* x);

// apply_fn's mask_constant: 1 where x equals `c` (NaN: where x is NaN), 0 elsewhere; none without `c`.
std::optional<Array> MaskOfConstant(const Array& x, std::optional<double> c);

// a[..., begin:end, ...] along `axis`.
Array SliceAxis(const Array& a, int axis, int64_t begin, int64_t end);

// numpy.transpose(a, perm).
Array Transpose(const Array& a, absl::Span<const int> perm);

// Writes `block` (shape (r, c, rest...) when tiled_axes == 2, (r, rest...) when 1) into `full` at
// [row, col]. With `mirror`, writes the mirrored block instead: batch axes swapped and every trailing
// axis pair swapped when `full_spatial` (the symmetric counterpart of a full-layout kernel tile).
void PlaceBlock(const Array& block, int tiled_axes, int64_t row, int64_t col, bool mirror, bool full_spatial,
                Array* full);

// The permutation that mirrors a tile: swaps axes 0,1 and, when `pair_trailing`, each trailing pair.
std::vector<int> MirrorPermutation(int rank, bool pair_trailing);

}  // namespace NT_CORE_NS

#endif  // NT_CORE_ARRAY_H_
