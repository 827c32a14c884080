// UploadTensor / ReleaseTensor: tensors larger than one message arrive in chunks and stay on the server
// under a handle (server/tensor_store.h).
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "server/call_util.h"
#include "server/kernel_service.h"
#include "server/metrics.h"
#include "server/status_util.h"
#include "server/tensor_codec.h"

namespace nt::server {

namespace {

// Bytes per element of an uploadable dtype; 0 for anything else.
int64_t Width(nt::v1::DType dtype) {
  switch (dtype) {
    case nt::v1::DTYPE_UNSPECIFIED:
    case nt::v1::FLOAT64:
    case nt::v1::INT64:
      return 8;
    case nt::v1::FLOAT32:
      return 4;
    case nt::v1::BOOL:
      return 1;
    default:
      return 0;
  }
}

}  // namespace

grpc::Status KernelServiceImpl::UploadTensorImpl(grpc::ServerContext* context,
                                             grpc::ServerReader<nt::v1::TensorChunk>* reader,
                                             nt::v1::UploadTensorResponse* response) {
  nt::v1::TensorChunk chunk;
  // FLOAT64 bytes go straight into the stored array; other dtypes are gathered here and converted at
  // the end.
  StoredTensor stored;
  nt::v1::Tensor other;
  int64_t expected = -1, have = 0;
  Reservation reservation{[this](int64_t b) { Release(b); }, 0};
  while (reader->Read(&chunk)) {
    if (Stopped(context)) return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled");
    if (expected < 0) {
      const int64_t width = Width(chunk.dtype());
      if (width == 0) {
        return Invalid(absl::StrCat("dtype: must be FLOAT64, FLOAT32, INT64 or BOOL, got ",
                                    nt::v1::DType_Name(chunk.dtype())));
      }
      int64_t n = 1;
      for (int64_t d : chunk.shape()) {
        if (d < 0) return Invalid(absl::StrCat("shape: negative dimension ", d));
        if (d != 0 && n > std::numeric_limits<int64_t>::max() / 8 / d) return Invalid("shape: is too large");
        n *= d;
      }
      expected = n * width;
      const int64_t held = TensorStore::StoredBytes(n);
      if (!tensor_store_.Fits(held)) {
        return Exhausted(absl::StrCat("shape: the tensor takes ", held, " bytes as float64, more than the "
                                      "server's upload budget of ", options_.upload_budget_bytes, " bytes"));
      }
      stored.dtype = chunk.dtype() == nt::v1::DTYPE_UNSPECIFIED ? nt::v1::FLOAT64 : chunk.dtype();
      // Other dtypes are held twice for a moment: as received and converted.
      const int64_t needed = held + (stored.dtype == nt::v1::FLOAT64 ? 0 : expected);
      if (!Reserve(needed)) return BudgetTaken(needed);
      reservation.bytes = needed;
      const Shape shape(chunk.shape().begin(), chunk.shape().end());
      if (stored.dtype == nt::v1::FLOAT64) {
        stored.values = Array::Uninitialized(shape);
      } else {
        *other.mutable_shape() = chunk.shape();
        other.set_dtype(stored.dtype);
        other.mutable_data()->reserve(static_cast<size_t>(expected));
      }
    } else if (chunk.shape_size() > 0 || chunk.dtype() != nt::v1::DTYPE_UNSPECIFIED) {
      return Invalid("shape, dtype: belong in the first chunk only");
    }
    if (chunk.offset() != have) {
      return Invalid(absl::StrCat("offset: chunk starts at byte ", chunk.offset(), " but ", have,
                                  " bytes were received (chunks lost or out of order)"));
    }
    const int64_t size = static_cast<int64_t>(chunk.data().size());
    if (have + size > expected) {
      return Invalid(absl::StrCat("data: more bytes than the shape needs (", expected, ")"));
    }
    if (size > 0) {
      if (stored.dtype == nt::v1::FLOAT64) {
        std::memcpy(reinterpret_cast<char*>(stored.values.data()) + have, chunk.data().data(), size);
      } else {
        other.mutable_data()->append(chunk.data());
      }
    }
    have += size;
  }
  if (expected < 0) return Invalid("chunks: the upload had none (the first must give shape and dtype)");
  if (have != expected) return Invalid(absl::StrCat("data: received ", have, " of ", expected, " bytes"));
  if (stored.dtype != nt::v1::FLOAT64) {
    auto values = DecodeTensor(other, "data", /*allow_integers=*/true);
    if (!values.ok()) return ToGrpcStatus(values.status());
    stored.values = *std::move(values);
  }
  auto handle = tensor_store_.Put(std::move(stored));
  if (!handle.ok()) return ToGrpcStatus(handle.status());
  if (metrics_) {
    metrics_->uploads.Increment();
    metrics_->request_bytes.Increment(double(expected));
  }
  response->set_handle(*handle);
  response->set_bytes(expected);
  response->set_ttl_seconds(tensor_store_.ttl().count());
  return grpc::Status::OK;
}

grpc::Status KernelServiceImpl::ReleaseTensorImpl(grpc::ServerContext*, const nt::v1::ReleaseTensorRequest* request,
                                              nt::v1::ReleaseTensorResponse* response) {
  if (request->handle().empty()) return Invalid("handle: is required");
  response->set_released(tensor_store_.Release(request->handle()));
  return grpc::Status::OK;
}

}  // namespace nt::server
