// Decoding and validation of a KernelRequest, without gRPC: everything ComputeKernel checks before any
// heavy work (also the entry point of the request fuzzer).
#ifndef NT_SERVER_KERNEL_REQUEST_H_
#define NT_SERVER_KERNEL_REQUEST_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "core/kernel_fn.h"
#include "core/layer.h"
#include "nt/v1/service.pb.h"
#include "server/tensor_store.h"

namespace nt::server {

struct DecodedKernelRequest {
  LayerPtr net;
  // Shared with the tensor store when given by handle (never copied); x2 null when absent.
  std::shared_ptr<const Array> x1, x2;
  KernelOptions options;
  KernelPlan plan;
  nt::v1::DType dtype = nt::v1::FLOAT64;
  double largest_block_bytes = 0;  // The largest tile message's block, encoded.
};

// KernelOptions from the fields DescribeRequest and KernelRequest share.
KernelOptions KernelOptionsFrom(const google::protobuf::RepeatedPtrField<std::string>& get, bool has_db, bool db,
                                bool has_ds, bool ds, int64_t tile_size);

// Validates and decodes `req` (tensors by handle from `store`, which may be null) and plans the kernel.
// Errors name the offending field: INVALID_ARGUMENT, NOT_FOUND (a handle), RESOURCE_EXHAUSTED (a tile
// larger than `max_message_bytes`), UNIMPLEMENTED (a mode the engine cannot compute).
absl::StatusOr<DecodedKernelRequest> DecodeKernelRequest(const nt::v1::KernelRequest& req, TensorStore* store,
                                                         int concurrency, int64_t max_message_bytes);

}  // namespace nt::server

#endif  // NT_SERVER_KERNEL_REQUEST_H_
