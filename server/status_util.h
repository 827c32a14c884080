// The one place where absl::Status becomes grpc::Status.
#ifndef NT_SERVER_STATUS_UTIL_H_
#define NT_SERVER_STATUS_UTIL_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace nt::server {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace nt::server

#endif  // NT_SERVER_STATUS_UTIL_H_
