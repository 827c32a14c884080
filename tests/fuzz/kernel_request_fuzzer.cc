// libFuzzer: bytes -> nt.v1.KernelRequest -> the server's decoding and validation (DecodeKernelRequest:
// architecture, tensors, options, plan; what ComputeKernel does before any heavy work), without gRPC.
// Valid tiny plans are also computed. Any crash, sanitizer report, leak, or allocation past
// -malloc_limit_mb is a finding: bad requests must be refused with a status.
#include <chrono>
#include <cstddef>
#include <cstdint>

#include "nt/v1/service.pb.h"
#include "server/kernel_request.h"
#include "server/tensor_store.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nt::v1::KernelRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return 0;
  // Handles are looked up (NOT_FOUND) in a small store of its own.
  static auto* store = new nt::server::TensorStore(1 << 20, std::chrono::seconds(0));
  auto d = nt::server::DecodeKernelRequest(req, store, /*concurrency=*/2, /*max_message_bytes=*/256LL << 20);
  if (!d.ok()) return 0;
  if (nt::fuzz::TinyPlan(d->plan)) {
    (void)nt::fuzz::RunTinyPlan(*d->net, *d->x1, d->x2.get(), d->plan, d->options, d->dtype);
  }
  return 0;
}
