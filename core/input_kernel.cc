#include "core/input_kernel.h"

#include <cmath>

#include "Eigen/Core"
#include "absl/strings/str_cat.h"

namespace NT_CORE_NS {

namespace {

using RowMat = Eigen::Matrix<Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// (r, c, P, P) with P = prod(spatial) -> zipped (r, c, s1, s1', s2, s2', ...).
Array ZipSpatial(Array a, const Shape& spatial) {
  const int s = static_cast<int>(spatial.size());
  if (s <= 1) {
    Shape shape{a.dim(0), a.dim(1)};
    for (int64_t d : spatial) {
      shape.push_back(d);
      shape.push_back(d);
    }
    return std::move(a).Reshaped(shape);
  }
  Shape unzipped{a.dim(0), a.dim(1)};
  for (int k = 0; k < 2; ++k) unzipped.insert(unzipped.end(), spatial.begin(), spatial.end());
  std::vector<int> perm{0, 1};
  for (int d = 0; d < s; ++d) {
    perm.push_back(2 + d);
    perm.push_back(2 + s + d);
  }
  return Transpose(std::move(a).Reshaped(unzipped), perm);
}

}  // namespace

absl::StatusOr<CanonicalInput> Canonicalize(const Array& x, int batch_axis, int channel_axis, bool flatten,
                                            const std::string& field, bool check_finite) {
  const int rank = x.rank();
  if (rank < 2) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": inputs need a batch and a channel dimension, got shape ", ShapeToString(x.shape())));
  }
  if (check_finite) {
    for (int64_t i = 0; i < x.size(); ++i) {
      if (!std::isfinite(x[i])) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ": contains a non-finite value (", x[i], ") at flat index ", i));
      }
    }
  }
  auto canon = [&](int axis, const char* name) -> absl::StatusOr<int> {
    if (axis < -rank || axis >= rank) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": ", name, " ", axis, " is out of range for inputs of rank ", rank));
    }
    return axis < 0 ? axis + rank : axis;
  };
  auto b = canon(batch_axis, "batch_axis");
  if (!b.ok()) return b.status();
  CanonicalInput out;
  out.n_ = x.dim(*b);
  if (out.n_ == 0) return absl::InvalidArgumentError(absl::StrCat(field, ": batch is empty"));
  std::vector<int> perm{*b};
  if (flatten) {
    for (int i = 0; i < rank; ++i) {
      if (i != *b) perm.push_back(i);
    }
    out.c_ = x.size() / out.n_;
    out.shape = {out.n_, out.c_};
    out.batch_axis = 0;
    out.channel_axis = 1;
  } else {
    auto ch = canon(channel_axis, "channel_axis");
    if (!ch.ok()) return ch.status();
    if (*ch == *b)
      return absl::InvalidArgumentError(absl::StrCat(field, ": batch and channel axes coincide"));
    for (int i = 0; i < rank; ++i) {
      if (i != *b && i != *ch) {
        perm.push_back(i);
        out.spatial.push_back(x.dim(i));
      }
    }
    perm.push_back(*ch);
    out.c_ = x.dim(*ch);
    if (out.c_ == 0) return absl::InvalidArgumentError(absl::StrCat(field, ": has no channels"));
    out.p_ = NumElements(out.spatial);
    out.shape = x.shape();
    out.batch_axis = *b;
    out.channel_axis = *ch;
  }
  bool in_order = true;
  for (int i = 0; i < rank; ++i) in_order = in_order && perm[i] == i;
  if (in_order) {
    out.external_ = x.data();
  } else {
    out.storage_ = Transpose(x, perm);
    out.owned_ = true;
  }
  return out;
}

Array InputNngp(const CanonicalInput& a, int64_t r0, int64_t r1, const CanonicalInput& b, int64_t c0,
                int64_t c1, bool diagonal_spatial) {
  const int64_t r = r1 - r0, c = c1 - c0, p = a.p(), ch = a.c();
  const Real inv = 1.0 / static_cast<Real>(ch);
  if (p == 1 || diagonal_spatial) {
    // One (r x C) x (C x c) product per position (one position: the full layout has the same entries).
    Shape shape{r, c};
    for (int64_t d : a.spatial) {
      shape.push_back(d);
      if (!diagonal_spatial) shape.push_back(d);
    }
    Array out = Array::Uninitialized(shape);
    RowMat tmp(r, c);
    for (int64_t q = 0; q < p; ++q) {
      Eigen::Map<const RowMat, 0, Eigen::OuterStride<>> xa(a.data() + (r0 * p + q) * ch, r, ch,
                                                           Eigen::OuterStride<>(p * ch));
      Eigen::Map<const RowMat, 0, Eigen::OuterStride<>> xb(b.data() + (c0 * p + q) * ch, c, ch,
                                                           Eigen::OuterStride<>(p * ch));
      if (p == 1) {
        Eigen::Map<RowMat> o(out.data(), r, c);
        o.noalias() = inv * (xa * xb.transpose());
      } else {
        tmp.noalias() = inv * (xa * xb.transpose());
        for (int64_t i = 0; i < r; ++i) {
          for (int64_t j = 0; j < c; ++j) out[(i * c + j) * p + q] = tmp(i, j);
        }
      }
    }
    return out;
  }
  // Full spatial: (rP x C) x (C x cP) -> (r, P, c, P) -> (r, c, P, P) -> zipped.
  Eigen::Map<const RowMat> xa(a.data() + r0 * p * ch, r * p, ch);
  Eigen::Map<const RowMat> xb(b.data() + c0 * p * ch, c * p, ch);
  Array g = Array::Uninitialized({r, p, c, p});
  Eigen::Map<RowMat> gm(g.data(), r * p, c * p);
  gm.noalias() = inv * (xa * xb.transpose());
  return ZipSpatial(Transpose(g, std::vector<int>{0, 2, 1, 3}), a.spatial);
}

Array InputCovDiag(const CanonicalInput& a, int64_t r0, int64_t r1, bool diagonal_spatial) {
  const int64_t r = r1 - r0, p = a.p(), ch = a.c();
  const Real inv = 1.0 / static_cast<Real>(ch);
  Shape shape{r};
  for (int64_t d : a.spatial) {
    shape.push_back(d);
    if (!diagonal_spatial) shape.push_back(d);
  }
  if (p == 1 || diagonal_spatial) {
    Array out = Array::Uninitialized(shape);
    for (int64_t i = 0; i < r; ++i) {
      for (int64_t q = 0; q < p; ++q) {
        // Eigen's vectorised reduction: a plain loop is one dependent chain of adds (9% of FC time).
        Eigen::Map<const Eigen::Matrix<Real, Eigen::Dynamic, 1>> v(a.data() + ((r0 + i) * p + q) * ch, ch);
        out[i * p + q] = v.squaredNorm() * inv;
      }
    }
    return out;
  }
  Array g = Array::Uninitialized({r, 1, p, p});
  for (int64_t i = 0; i < r; ++i) {
    Eigen::Map<const RowMat> xa(a.data() + (r0 + i) * p * ch, p, ch);
    Eigen::Map<RowMat> gm(g.data() + i * p * p, p, p);
    gm.noalias() = inv * (xa * xa.transpose());
  }
  return ZipSpatial(std::move(g), a.spatial).Reshaped(shape);
}

bool SameInputs(const Array& a, const Array& b, Real eps) {
  if (a.shape() != b.shape()) return false;
  for (int64_t i = 0; i < a.size(); ++i) {
    if (!(std::abs(a[i] - b[i]) < eps)) return false;
  }
  return true;
}

}  // namespace NT_CORE_NS
