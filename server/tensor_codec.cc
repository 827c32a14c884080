#include "server/tensor_codec.h"

#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"

namespace nt::server {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the wire format is little-endian");

namespace {

absl::Status DTypeError(const std::string& field, bool allow_integers, nt::v1::DType dtype) {
  return absl::InvalidArgumentError(absl::StrCat(field, ".dtype: must be FLOAT64 or FLOAT32",
                                                 allow_integers ? ", INT64 or BOOL" : "", ", got ",
                                                 nt::v1::DType_Name(dtype)));
}

// The uploaded tensor a handle field names, with the field's checks.
absl::StatusOr<std::shared_ptr<const StoredTensor>> StoredFor(const nt::v1::Tensor& t,
                                                              const std::string& field, bool allow_integers,
                                                              TensorStore* store) {
  if (!store) return absl::InvalidArgumentError(absl::StrCat(field, ".handle: this field takes no uploads"));
  if (t.shape_size() > 0 || t.dtype() != nt::v1::DTYPE_UNSPECIFIED || !t.data().empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": give either a handle or shape, dtype and data, not both"));
  }
  auto stored = store->Get(t.handle());
  if (!stored.ok()) return absl::NotFoundError(absl::StrCat(field, ".handle: ", stored.status().message()));
  const nt::v1::DType dtype = (*stored)->dtype;
  if (!allow_integers && dtype != nt::v1::FLOAT64 && dtype != nt::v1::FLOAT32) {
    return DTypeError(field, allow_integers, dtype);
  }
  return *std::move(stored);
}

}  // namespace

absl::StatusOr<std::shared_ptr<const Array>> DecodeSharedTensor(const nt::v1::Tensor& t,
                                                                const std::string& field, bool allow_integers,
                                                                TensorStore* store) {
  if (!t.handle().empty()) {
    auto stored = StoredFor(t, field, allow_integers, store);
    if (!stored.ok()) return stored.status();
    return std::shared_ptr<const Array>(*stored, &(*stored)->values);  // Aliasing: owns the stored tensor.
  }
  auto a = DecodeTensor(t, field, allow_integers, store);
  if (!a.ok()) return a.status();
  return std::make_shared<const Array>(*std::move(a));
}

absl::StatusOr<Array> DecodeTensor(const nt::v1::Tensor& t, const std::string& field, bool allow_integers,
                                   TensorStore* store) {
  if (!t.handle().empty()) {
    auto stored = StoredFor(t, field, allow_integers, store);
    if (!stored.ok()) return stored.status();
    return (*stored)->values;
  }
  Shape shape(t.shape().begin(), t.shape().end());
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".shape: negative dimension in ", ShapeToString(shape)));
    }
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / 8 / d) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ".shape: ", ShapeToString(shape), " is too large"));
    }
    n *= d;
  }
  size_t width;
  switch (t.dtype()) {
    case nt::v1::DTYPE_UNSPECIFIED:
    case nt::v1::FLOAT64:
      width = 8;
      break;
    case nt::v1::FLOAT32:
      width = 4;
      break;
    case nt::v1::INT64:
    case nt::v1::BOOL:
      if (allow_integers) {
        width = t.dtype() == nt::v1::INT64 ? 8 : 1;
        break;
      }
      [[fallthrough]];
    default:
      return DTypeError(field, allow_integers, t.dtype());
  }
  if (t.data().size() != static_cast<size_t>(n) * width) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".data: has ", t.data().size(), " bytes but shape ", ShapeToString(shape), " of ",
                     nt::v1::DType_Name(t.dtype() ? t.dtype() : nt::v1::FLOAT64), " needs ", n * width));
  }
  Array a(shape);
  const char* src = t.data().data();
  if (t.dtype() == nt::v1::INT64) {
    for (int64_t i = 0; i < n; ++i) {
      int64_t v;
      std::memcpy(&v, src + 8 * i, 8);
      a[i] = static_cast<double>(v);
    }
  } else if (t.dtype() == nt::v1::BOOL) {
    for (int64_t i = 0; i < n; ++i) a[i] = src[i] != 0 ? 1.0 : 0.0;
  } else if (width == 8) {
    if (n > 0) std::memcpy(a.data(), src, n * 8);  // An empty Array's data() may be null.
  } else {
    for (int64_t i = 0; i < n; ++i) {
      float f;
      std::memcpy(&f, src + 4 * i, 4);
      a[i] = f;
    }
  }
  return a;
}

void EncodeTensor(const Array& a, nt::v1::DType dtype, nt::v1::Tensor* out) {
  out->clear_shape();
  for (int64_t d : a.shape()) out->add_shape(d);
  std::string* data = out->mutable_data();
  if (dtype == nt::v1::FLOAT32) {
    out->set_dtype(nt::v1::FLOAT32);
    data->resize(a.size() * 4);
    for (int64_t i = 0; i < a.size(); ++i) {
      const float f = static_cast<float>(a[i]);
      std::memcpy(data->data() + 4 * i, &f, 4);
    }
  } else {
    out->set_dtype(nt::v1::FLOAT64);
    // assign, not resize + memcpy: no zero-filling pass over every tile's bytes.
    data->assign(reinterpret_cast<const char*>(a.data()), a.size() * 8);
  }
}

}  // namespace nt::server
