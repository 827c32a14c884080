// libFuzzer: bytes -> nt.v1.DescribeRequest -> KernelServiceImpl::Describe (architecture validation and
// planning for arbitrary shapes, no data), called directly: Describe does not use its ServerContext.
// Shapes are free here, so huge or overflowing shapes must be refused, never allocated.
#include <cstddef>
#include <cstdint>

#include "nt/v1/service.pb.h"
#include "server/kernel_service.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nt::v1::DescribeRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return 0;
  static auto* service = [] {
    nt::server::ServerOptions options;
    options.worker_threads = 2;
    return new nt::server::KernelServiceImpl(options);
  }();
  nt::v1::DescribeResponse resp;
  (void)service->Describe(nullptr, &req, &resp);
  return 0;
}
