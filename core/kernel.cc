#include "core/kernel.h"

namespace nt {

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

void Kernel::Scale(double f) {
  auto scale = [f](Array& a) {
    for (double& v : a.vec()) v *= f;
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

const std::vector<std::string>& KernelFieldNames() {
  static const auto* names = new std::vector<std::string>{
      "nngp",        "ntk",         "cov1",       "cov2",           "x1_is_x2",
      "is_gaussian", "is_reversed", "is_input",   "diagonal_batch", "diagonal_spatial",
      "shape1",      "shape2",      "batch_axis", "channel_axis",   "mask1",
      "mask2"};
  return *names;
}

}  // namespace nt
