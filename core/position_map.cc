#include "core/position_map.h"

#include <algorithm>

#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"

namespace NT_CORE_NS {
namespace {

using RowMat = PositionMatrix;

int64_t Product(const Shape& s) {
  int64_t p = 1;
  for (int64_t d : s) p *= d;
  return p;
}

}  // namespace

Array MapPositionPairs(const Array& t, int lead, const Shape& sizes, const std::vector<int>& axes,
                       const Shape& out_sizes, const PositionMatrixFn& left, const PositionMatrixFn& right) {
  const int s = static_cast<int>(sizes.size());
  std::vector<bool> mapped(s, false);
  for (int a : axes) mapped[a] = true;
  std::vector<int> others;
  for (int d = 0; d < s; ++d) {
    if (!mapped[d]) others.push_back(d);
  }
  // Bring the mapped axes to the end: (lead, other pairs, mapped lefts, mapped rights).
  std::vector<int> perm;
  for (int i = 0; i < lead; ++i) perm.push_back(i);
  for (int d : others) {
    perm.push_back(lead + 2 * d);
    perm.push_back(lead + 2 * d + 1);
  }
  for (int d : axes) perm.push_back(lead + 2 * d);
  for (int d : axes) perm.push_back(lead + 2 * d + 1);
  const Array tp = Transpose(t, perm);

  Shape mapped_sizes;
  for (int d : axes) mapped_sizes.push_back(sizes[d]);
  const int64_t v_in = Product(mapped_sizes);
  const int64_t v_out = Product(out_sizes);
  const int64_t n1 = t.dim(0);
  const int64_t n2 = lead == 2 ? t.dim(1) : 1;
  int64_t blocks = 1;  // Entries of the passing-through pairs.
  for (int d : others) blocks *= sizes[d] * sizes[d];

  Shape mid{};
  for (int i = 0; i < lead; ++i) mid.push_back(t.dim(i));
  for (int d : others) {
    mid.push_back(sizes[d]);
    mid.push_back(sizes[d]);
  }
  for (int64_t d : out_sizes) mid.push_back(d);
  for (int64_t d : out_sizes) mid.push_back(d);
  Array out = Array::Uninitialized(mid);
  // In parallel over sample pairs (a tile's pairs, or all of them in a whole-batch evaluation).
  tbb::parallel_for(tbb::blocked_range<int64_t>(0, n1 * n2), [&](const tbb::blocked_range<int64_t>& range) {
    RowMat tmp(v_out, v_in);
    for (int64_t pair = range.begin(); pair < range.end(); ++pair) {
      const int64_t i = pair / n2, j = pair % n2;
      const RowMat& l = left(i);
      const RowMat& r = right(lead == 2 ? j : i);
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t block = pair * blocks + b;
        Eigen::Map<const RowMat> x(tp.data() + block * v_in * v_in, v_in, v_in);
        Eigen::Map<RowMat> y(out.data() + block * v_out * v_out, v_out, v_out);
        tmp.noalias() = l * x;
        y.noalias() = tmp * r.transpose();
      }
    }
  });

  // Back to interleaved pairs in output-axis order.
  const int k_out = static_cast<int>(out_sizes.size());
  const bool in_place = out_sizes.size() == axes.size();
  const int s_out = in_place ? s : k_out;
  std::vector<int> back;
  for (int i = 0; i < lead; ++i) back.push_back(i);
  const int first_mapped = lead + 2 * static_cast<int>(others.size());
  for (int e = 0; e < s_out; ++e) {
    int left_pos, right_pos;
    if (!in_place) {
      left_pos = first_mapped + e;
      right_pos = first_mapped + k_out + e;
    } else if (mapped[e]) {
      const int k = static_cast<int>(std::find(axes.begin(), axes.end(), e) - axes.begin());
      left_pos = first_mapped + k;
      right_pos = first_mapped + k_out + k;
    } else {
      const int o = static_cast<int>(std::find(others.begin(), others.end(), e) - others.begin());
      left_pos = lead + 2 * o;
      right_pos = lead + 2 * o + 1;
    }
    back.push_back(left_pos);
    back.push_back(right_pos);
  }
  return Transpose(out, back);
}

Array MapPositionsDiagonal(const Array& t, int lead, const Shape& sizes, const Shape& out_sizes,
                           const PositionMatrix& m) {
  const int64_t p_in = Product(sizes);
  const int64_t p_out = Product(out_sizes);
  Shape shape;
  int64_t rows = 1;
  for (int i = 0; i < lead; ++i) {
    shape.push_back(t.dim(i));
    rows *= t.dim(i);
  }
  shape.insert(shape.end(), out_sizes.begin(), out_sizes.end());
  Array out(shape);
  const RowMat squared = m.cwiseAbs2();
  Eigen::Map<const RowMat> x(t.data(), rows, p_in);
  Eigen::Map<RowMat> y(out.data(), rows, p_out);
  y.noalias() = x * squared.transpose();
  return out;
}

}  // namespace NT_CORE_NS
