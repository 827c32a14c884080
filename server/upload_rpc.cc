// UploadTensor / ReleaseTensor: tensors larger than one message arrive in chunks and stay on the server
// under a handle (server/tensor_store.h).
#include <limits>

#include "absl/strings/str_cat.h"
#include "server/call_util.h"
#include "server/kernel_service.h"
#include "server/metrics.h"
#include "server/status_util.h"

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
  nt::v1::Tensor tensor;
  int64_t expected = -1;
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
      if (!tensor_store_.Fits(expected + 1024)) {
        return Exhausted(absl::StrCat("shape: the tensor has ", expected, " bytes, more than the server's upload "
                                      "budget of ", options_.upload_budget_bytes, " bytes"));
      }
      if (!Reserve(expected)) return BudgetTaken(expected);
      reservation.bytes = expected;
      *tensor.mutable_shape() = chunk.shape();
      tensor.set_dtype(chunk.dtype() == nt::v1::DTYPE_UNSPECIFIED ? nt::v1::FLOAT64 : chunk.dtype());
      tensor.mutable_data()->reserve(static_cast<size_t>(expected));
    } else if (chunk.shape_size() > 0 || chunk.dtype() != nt::v1::DTYPE_UNSPECIFIED) {
      return Invalid("shape, dtype: belong in the first chunk only");
    }
    const int64_t have = static_cast<int64_t>(tensor.data().size());
    if (chunk.offset() != have) {
      return Invalid(absl::StrCat("offset: chunk starts at byte ", chunk.offset(), " but ", have,
                                  " bytes were received (chunks lost or out of order)"));
    }
    if (have + static_cast<int64_t>(chunk.data().size()) > expected) {
      return Invalid(absl::StrCat("data: more bytes than the shape needs (", expected, ")"));
    }
    tensor.mutable_data()->append(chunk.data());
  }
  if (expected < 0) return Invalid("chunks: the upload had none (the first must give shape and dtype)");
  if (static_cast<int64_t>(tensor.data().size()) != expected) {
    return Invalid(absl::StrCat("data: received ", tensor.data().size(), " of ", expected, " bytes"));
  }
  auto handle = tensor_store_.Put(std::move(tensor));
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
