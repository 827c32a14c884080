#include "core/array.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

#include "absl/strings/str_join.h"

namespace NT_CORE_NS {

namespace {

constexpr size_t kMinCachedBytes = size_t{1} << 18;   // 256 KiB.
constexpr size_t kMaxThreadBlockBytes = size_t{32} << 20;  // Larger blocks go to the shared cache.
constexpr size_t kMaxCachedBytesPerThread = size_t{192} << 20;
constexpr size_t kHugePageBytes = size_t{2} << 20;

size_t RoundToHugePages(size_t bytes) { return (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes; }

// Blocks of 2 MiB and more are backed by transparent huge pages where the kernel allows them: a 4 KiB
// page fault costs about 11 us on these VMs (a 256 MiB kernel output took 0.7 s to touch, 0.2 s with
// huge pages), and outputs and inputs are touched once. Smaller blocks go to operator new.
void* SystemAllocate(size_t bytes) {
  if (bytes < kHugePageBytes) return ::operator new(bytes);
  const size_t rounded = RoundToHugePages(bytes);
  void* p = std::aligned_alloc(kHugePageBytes, rounded);
  if (p == nullptr) throw std::bad_alloc();
  madvise(p, rounded, MADV_HUGEPAGE);  // Advice only: without THP the pages stay 4 KiB.
  return p;
}

void SystemFree(void* p, size_t bytes) {
  if (bytes < kHugePageBytes) {
    ::operator delete(p);
  } else {
    std::free(p);
  }
}

// Freed blocks, reused for allocations of exactly the same size (a network's layers allocate the same
// few sizes over and over; a service computes the same shapes request after request). The oldest blocks
// are dropped first when a new one would exceed the capacity.
class BlockCache {
 public:
  explicit BlockCache(size_t capacity) : capacity_(capacity) {}
  ~BlockCache() { Shrink(0); }
  void* Take(size_t bytes) {
    for (size_t i = blocks_.size(); i-- > 0;) {
      if (blocks_[i].first == bytes) {
        void* p = blocks_[i].second;
        blocks_.erase(blocks_.begin() + static_cast<std::ptrdiff_t>(i));
        cached_ -= bytes;
        return p;
      }
    }
    return nullptr;
  }
  bool Put(void* p, size_t bytes) {
    if (bytes > capacity_) return false;
    Shrink(capacity_ - bytes);
    blocks_.emplace_back(bytes, p);
    cached_ += bytes;
    return true;
  }
  // Frees the oldest blocks until at most `bytes` stay cached.
  void Shrink(size_t bytes) {
    while (cached_ > bytes && !blocks_.empty()) {
      SystemFree(blocks_.front().second, blocks_.front().first);
      cached_ -= blocks_.front().first;
      blocks_.erase(blocks_.begin());
    }
  }
  void set_capacity(size_t capacity) {
    capacity_ = capacity;
    Shrink(capacity);
  }
  size_t capacity() const { return capacity_; }

 private:
  size_t capacity_;
  std::vector<std::pair<size_t, void*>> blocks_;
  size_t cached_ = 0;
};

BlockCache& ThreadCache() {
  thread_local BlockCache cache(kMaxCachedBytesPerThread);
  return cache;
}

// Blocks above kMaxThreadBlockBytes (kernel outputs, inputs, Predict's matrices: hundreds of MB, freed
// by one thread and allocated again by another) are shared by all threads. Cached blocks are marked
// MADV_FREE: the kernel may reclaim them under memory pressure; otherwise reuse costs no page faults.
struct SharedCache {
  std::mutex mu;
  BlockCache cache{DefaultSharedBlockCacheBytes()};
};

SharedCache& Shared() {
  static auto* shared = new SharedCache;  // Never destroyed: blocks may be freed during exit.
  return *shared;
}

}  // namespace

size_t DefaultSharedBlockCacheBytes() {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  const size_t ram = pages > 0 && page > 0 ? size_t(pages) * size_t(page) : size_t{8} << 30;
  return std::min(size_t{2} << 30, ram / 8);
}

void SetSharedBlockCacheBytes(size_t bytes) {
  SharedCache& shared = Shared();
  std::lock_guard<std::mutex> lock(shared.mu);
  shared.cache.set_capacity(bytes);
}

void* AllocateBlock(size_t bytes) {
  if (bytes > kMaxThreadBlockBytes) {
    SharedCache& shared = Shared();
    std::lock_guard<std::mutex> lock(shared.mu);
    if (void* p = shared.cache.Take(RoundToHugePages(bytes))) return p;
  } else if (bytes >= kMinCachedBytes) {
    if (void* p = ThreadCache().Take(bytes)) return p;
  }
  return SystemAllocate(bytes);
}

void FreeBlock(void* p, size_t bytes) {
  if (p == nullptr) return;
  if (bytes > kMaxThreadBlockBytes) {
    const size_t rounded = RoundToHugePages(bytes);
    madvise(p, rounded, MADV_FREE);
    SharedCache& shared = Shared();
    std::lock_guard<std::mutex> lock(shared.mu);
    if (shared.cache.Put(p, rounded)) return;
  } else if (bytes >= kMinCachedBytes && ThreadCache().Put(p, bytes)) {
    return;
  }
  SystemFree(p, bytes);
}

int64_t NumElements(absl::Span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeToString(absl::Span<const int64_t> shape) {
  return "(" + absl::StrJoin(shape, ", ") + (shape.size() == 1 ? ",)" : ")");
}

Array::Array(Shape shape, Storage data) : shape_(std::move(shape)), data_(std::move(data)) {
  assert(static_cast<int64_t>(data_.size()) == NumElements(shape_));
}

Array::Array(Shape shape, const std::vector<Real>& data)
    : shape_(std::move(shape)), data_(data.begin(), data.end()) {
  assert(static_cast<int64_t>(data_.size()) == NumElements(shape_));
}

Array Array::Uninitialized(Shape shape) {
  Storage data;
  data.resize(NumElements(shape));
  return Array(std::move(shape), std::move(data));
}

Array Array::Reshaped(Shape shape) const& {
  assert(NumElements(shape) == size());
  return Array(std::move(shape), data_);
}

Array Array::Reshaped(Shape shape) && {
  assert(NumElements(shape) == size());
  return Array(std::move(shape), std::move(data_));
}

namespace {

// Sizes before, along and after `axis`.
void Split(const Shape& s, int axis, int64_t* outer, int64_t* n, int64_t* inner) {
  *outer = NumElements(absl::MakeConstSpan(s).subspan(0, axis));
  *n = s[axis];
  *inner = NumElements(absl::MakeConstSpan(s).subspan(axis + 1));
}

}  // namespace

Array AllAlongAxis(const Array& a, int axis) {
  int64_t outer, n, inner;
  Split(a.shape(), axis, &outer, &n, &inner);
  Shape out_shape = a.shape();
  out_shape[axis] = 1;
  Array out(out_shape, 1.0);
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t k = 0; k < n; ++k) {
      for (int64_t i = 0; i < inner; ++i) {
        if (a[(o * n + k) * inner + i] == 0) out[o * inner + i] = 0.0;
      }
    }
  }
  return out;
}

void ZeroWhereMasked(const Array& mask, Array* x) {
  const int r = x->rank();
  // Strides of the mask, 0 along broadcast axes.
  std::vector<int64_t> stride(r, 0);
  int64_t s = 1;
  for (int i = r - 1; i >= 0; --i) {
    stride[i] = mask.dim(i) == 1 ? 0 : s;
    s *= mask.dim(i);
  }
  std::vector<int64_t> idx(r, 0);
  int64_t offset = 0;
  for (int64_t e = 0; e < x->size(); ++e) {
    if (mask[offset] != 0) (*x)[e] = 0.0;
    for (int ax = r - 1; ax >= 0; --ax) {
      if (++idx[ax] < x->dim(ax)) {
        offset += stride[ax];
        break;
      }
      offset -= stride[ax] * (x->dim(ax) - 1);
      idx[ax] = 0;
    }
  }
}

std::optional<Array> MaskOfConstant(const Array& x, std::optional<double> c) {
  if (!c) return std::nullopt;
  Array mask(x.shape(), 0.0);
  for (int64_t i = 0; i < x.size(); ++i) {
    const bool masked = std::isnan(*c) ? std::isnan(x[i]) : x[i] == *c;
    mask[i] = masked ? 1.0 : 0.0;
  }
  return mask;
}

Array SliceAxis(const Array& a, int axis, int64_t begin, int64_t end) {
  int64_t outer, n, inner;
  Split(a.shape(), axis, &outer, &n, &inner);
  Shape out_shape = a.shape();
  out_shape[axis] = end - begin;
  Array out = Array::Uninitialized(out_shape);
  for (int64_t o = 0; o < outer; ++o) {
    std::memcpy(out.data() + o * (end - begin) * inner, a.data() + (o * n + begin) * inner,
                sizeof(Real) * (end - begin) * inner);
  }
  return out;
}

Array Transpose(const Array& a, absl::Span<const int> perm) {
  const int r = a.rank();
  Shape out_shape(r);
  for (int i = 0; i < r; ++i) out_shape[i] = a.dim(perm[i]);
  Array out = Array::Uninitialized(out_shape);
  if (a.size() == 0) return out;
  // Strides of the input, permuted into output axis order.
  std::vector<int64_t> in_stride(r, 1);
  for (int i = r - 2; i >= 0; --i) in_stride[i] = in_stride[i + 1] * a.dim(i + 1);
  std::vector<int64_t> stride(r);
  for (int i = 0; i < r; ++i) stride[i] = in_stride[perm[i]];
  std::vector<int64_t> idx(r, 0);
  const Real* src = a.data();
  Real* dst = out.data();
  const int64_t n = out.size();
  // Innermost axis as a strided loop, outer axes as an odometer.
  const int64_t inner = r ? out_shape[r - 1] : 1;
  const int64_t inner_stride = r ? stride[r - 1] : 0;
  int64_t offset = 0;
  for (int64_t e = 0; e < n; e += inner) {
    for (int64_t k = 0; k < inner; ++k) dst[e + k] = src[offset + k * inner_stride];
    for (int ax = r - 2; ax >= 0; --ax) {
      if (++idx[ax] < out_shape[ax]) {
        offset += stride[ax];
        break;
      }
      offset -= stride[ax] * (out_shape[ax] - 1);
      idx[ax] = 0;
    }
  }
  return out;
}

std::vector<int> MirrorPermutation(int rank, bool pair_trailing) {
  std::vector<int> perm(rank);
  for (int i = 0; i < rank; ++i) perm[i] = i;
  if (rank >= 2) std::swap(perm[0], perm[1]);
  if (pair_trailing) {
    for (int i = 2; i + 1 < rank; i += 2) std::swap(perm[i], perm[i + 1]);
  }
  return perm;
}

void PlaceBlock(const Array& block_in, int tiled_axes, int64_t row, int64_t col, bool mirror,
                bool full_spatial, Array* full) {
  if (block_in.size() == 0) return;  // Empty arrays may have null data (memcpy must not see it).
  const Array* block = &block_in;
  Array mirrored;
  if (mirror) {
    mirrored = Transpose(block_in, MirrorPermutation(block_in.rank(), full_spatial));
    block = &mirrored;
    std::swap(row, col);
  }
  const int64_t rows = block->dim(0);
  if (tiled_axes == 1) {
    const int64_t inner = NumElements(absl::MakeConstSpan(block->shape()).subspan(1));
    std::memcpy(full->data() + row * inner, block->data(), sizeof(Real) * rows * inner);
    return;
  }
  const int64_t cols = block->dim(1);
  const int64_t inner = NumElements(absl::MakeConstSpan(block->shape()).subspan(2));
  const int64_t full_cols = full->dim(1);
  for (int64_t i = 0; i < rows; ++i) {
    std::memcpy(full->data() + ((row + i) * full_cols + col) * inner, block->data() + i * cols * inner,
                sizeof(Real) * cols * inner);
  }
}

}  // namespace NT_CORE_NS
