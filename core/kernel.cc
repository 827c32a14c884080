#include "core/kernel.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace NT_CORE_NS {

namespace {

// Permutation reversing the spatial axis pairs (or singles) after `batch_axes` leading axes.
std::vector<int> ReversePermutation(int rank, int batch_axes, int group) {
  std::vector<int> perm;
  for (int i = 0; i < batch_axes; ++i) perm.push_back(i);
  const int groups = (rank - batch_axes) / group;
  for (int g = groups - 1; g >= 0; --g) {
    for (int j = 0; j < group; ++j) perm.push_back(batch_axes + g * group + j);
  }
  return perm;
}

void ReverseArray(Array* a, int batch_axes, int group) {
  if (a->rank() <= batch_axes + group) return;  // Zero or one spatial dimension: nothing to do.
  *a = Transpose(*a, ReversePermutation(a->rank(), batch_axes, group));
}

}  // namespace

void Kernel::Reverse() {
  const int group = diagonal_spatial ? 1 : 2;
  ReverseArray(&nngp, 2, group);
  if (ntk && ntk->rank() > 0) ReverseArray(&*ntk, 2, group);
  ReverseArray(&cov1, CovBatchAxes(*this), group);
  if (cov2) ReverseArray(&*cov2, CovBatchAxes(*this), group);
  is_reversed = !is_reversed;
}

void Kernel::Scale(Real f) {
  auto scale = [f](Array& a) {
    for (Real& v : a.vec()) v *= f;
  };
  scale(nngp);
  if (ntk) scale(*ntk);
  scale(cov1);
  if (cov2) scale(*cov2);
}

Array GetDiagonal(const Array& cov, int batch_axes, bool diagonal_spatial, int num_spatial) {
  const int64_t n = cov.dim(0);
  Shape out_shape{n};
  std::vector<int64_t> sizes;
  for (int d = 0; d < num_spatial; ++d) {
    const int64_t s = cov.dim(batch_axes + (diagonal_spatial ? d : 2 * d));
    sizes.push_back(s);
    out_shape.push_back(s);
  }
  Array out = Array::Uninitialized(out_shape);
  const int64_t p = NumElements(sizes);
  // Strides of cov's axes.
  std::vector<int64_t> stride(cov.rank(), 1);
  for (int i = cov.rank() - 2; i >= 0; --i) stride[i] = stride[i + 1] * cov.dim(i + 1);
  std::vector<int64_t> pos(num_spatial, 0);
  for (int64_t i = 0; i < n; ++i) {
    int64_t base = i * stride[0] + (batch_axes == 2 ? i * stride[1] : 0);
    if (diagonal_spatial) {
      // The positions of one (i, i) block are contiguous in the diagonal layout.
      std::copy(cov.data() + base, cov.data() + base + p, out.data() + i * p);
      continue;
    }
    std::fill(pos.begin(), pos.end(), 0);
    for (int64_t e = 0; e < p; ++e) {
      int64_t off = base;
      for (int d = 0; d < num_spatial; ++d) {
        off += diagonal_spatial ? pos[d] * stride[batch_axes + d]
                                : pos[d] * (stride[batch_axes + 2 * d] + stride[batch_axes + 2 * d + 1]);
      }
      out[i * p + e] = cov[off];
      for (int d = num_spatial - 1; d >= 0; --d) {
        if (++pos[d] < sizes[d]) break;
        pos[d] = 0;
      }
    }
  }
  return out;
}

void PairOffsets(const Shape& sizes, bool diagonal_spatial, std::vector<int64_t>* left,
                 std::vector<int64_t>* right) {
  const int s = static_cast<int>(sizes.size());
  const int64_t p = NumElements(sizes);
  const int64_t inner = diagonal_spatial ? p : p * p;
  left->assign(inner, 0);
  right->assign(inner, 0);
  // Odometer over the trailing axes of the array, most significant first.
  std::vector<int64_t> dims;
  for (int d = 0; d < s; ++d) {
    dims.push_back(sizes[d]);
    if (!diagonal_spatial) dims.push_back(sizes[d]);
  }
  std::vector<int64_t> idx(dims.size(), 0);
  for (int64_t e = 0; e < inner; ++e) {
    int64_t l = 0, r = 0;
    for (int d = 0; d < s; ++d) {
      l = l * sizes[d] + (diagonal_spatial ? idx[d] : idx[2 * d]);
      r = r * sizes[d] + (diagonal_spatial ? idx[d] : idx[2 * d + 1]);
    }
    (*left)[e] = l;
    (*right)[e] = r;
    for (int a = static_cast<int>(dims.size()) - 1; a >= 0; --a) {
      if (++idx[a] < dims[a]) break;
      idx[a] = 0;
    }
  }
}

std::shared_ptr<const PairOffsetTable> PairOffsetsFor(const Shape& sizes, bool diagonal_spatial) {
  struct Entry {
    Shape sizes;
    bool diagonal;
    std::shared_ptr<const PairOffsetTable> table;
  };
  thread_local std::vector<Entry> cache;  // Most recent last; a handful of entries.
  for (const Entry& e : cache) {
    if (e.diagonal == diagonal_spatial && e.sizes == sizes) return e.table;
  }
  auto table = std::make_shared<PairOffsetTable>();
  PairOffsets(sizes, diagonal_spatial, &table->left, &table->right);
  const int64_t inner = static_cast<int64_t>(table->left.size());
  const int64_t run = diagonal_spatial ? inner : (sizes.empty() ? 1 : sizes.back());
  const int64_t step = diagonal_spatial ? 1 : 0;
  bool runs = run > 1 && inner % run == 0;
  for (int64_t e = 0; runs && e < inner; ++e) {
    const int64_t t = e % run;
    runs = table->left[e] == table->left[e - t] + step * t && table->right[e] == table->right[e - t] + t;
  }
  if (runs) {
    table->run = run;
    table->left_step = step;
    for (int64_t e = 0; e < inner; e += run) {
      table->run_left.push_back(table->left[e]);
      table->run_right.push_back(table->right[e]);
    }
  }
  if (cache.size() >= 4) cache.erase(cache.begin());
  cache.push_back(Entry{sizes, diagonal_spatial, table});
  return table;
}

absl::StatusOr<Array> PositionMask(const Array& mask, const Kernel& k) {
  const int rank = mask.rank();
  if (rank != static_cast<int>(k.shape1.size())) {
    return absl::InternalError(
        absl::StrCat("mask of rank ", rank, " for activations of rank ", k.shape1.size()));
  }
  if (mask.dim(k.channel_axis) != 1) {
    return absl::UnimplementedError(
        "masks that differ between channels are not supported (upstream neither): put a Dense/Conv "
        "layer, which reduces the mask over channels, before a layer that re-masks the kernel");
  }
  // Batch first, then the spatial axes in kernel order; the size-1 channel axis goes last.
  std::vector<int> perm{k.batch_axis};
  std::vector<int> spatial;
  for (int i = 0; i < rank; ++i) {
    if (i != k.batch_axis && i != k.channel_axis) spatial.push_back(i);
  }
  if (k.is_reversed) std::reverse(spatial.begin(), spatial.end());
  perm.insert(perm.end(), spatial.begin(), spatial.end());
  perm.push_back(k.channel_axis);
  Array t = Transpose(mask, perm);
  Shape out_shape(t.shape().begin(), t.shape().end() - 1);
  return std::move(t).Reshaped(out_shape);
}

namespace {

// Zeroes the entries of `a` (leading `batch_axes` axes, then the trailing layout) whose left position
// is masked in `left` (rows) or right position in `right` (columns; rows again for one batch axis).
void ZeroMasked(const Array& left, const Array& right, int batch_axes, const std::vector<int64_t>& off_l,
                const std::vector<int64_t>& off_r, int64_t p, Array* a) {
  const int64_t rows = a->dim(0);
  const int64_t cols = batch_axes == 2 ? a->dim(1) : 1;
  const int64_t inner = static_cast<int64_t>(off_l.size());
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t col = batch_axes == 2 ? j : i;
      Real* out = a->data() + (i * cols + j) * inner;
      for (int64_t e = 0; e < inner; ++e) {
        if (left[i * p + off_l[e]] != 0 || right[col * p + off_r[e]] != 0) out[e] = 0.0;
      }
    }
  }
}

}  // namespace

absl::Status MaskKernel(const std::optional<Array>& m1, const std::optional<Array>& m2, Kernel* k) {
  k->mask1 = m1;
  k->mask2 = m2;
  if (!m1 && !m2) return absl::OkStatus();
  // A missing mask masks nothing.
  auto positions = [&](const std::optional<Array>& m, const Shape& shape) -> absl::StatusOr<Array> {
    if (m) return PositionMask(*m, *k);
    Shape s = shape;
    s[k->channel_axis] = 1;
    return PositionMask(Array(s, 0.0), *k);
  };
  auto pm1 = positions(m1, k->shape1);
  if (!pm1.ok()) return pm1.status();
  auto pm2 = m2 ? positions(m2, k->shape2) : pm1;
  if (!pm2.ok()) return pm2.status();
  const Shape sizes(pm1->shape().begin() + 1, pm1->shape().end());
  const int64_t p = NumElements(sizes);
  const auto offsets = PairOffsetsFor(sizes, k->diagonal_spatial);
  const std::vector<int64_t>& off_l = offsets->left;
  const std::vector<int64_t>& off_r = offsets->right;
  ZeroMasked(*pm1, *pm2, 2, off_l, off_r, p, &k->nngp);
  if (k->ntk && k->ntk->rank() > 0) ZeroMasked(*pm1, *pm2, 2, off_l, off_r, p, &*k->ntk);
  const int cb = CovBatchAxes(*k);
  ZeroMasked(*pm1, *pm1, cb, off_l, off_r, p, &k->cov1);
  if (k->cov2) ZeroMasked(*pm2, *pm2, cb, off_l, off_r, p, &*k->cov2);
  return absl::OkStatus();
}

}  // namespace NT_CORE_NS
