// Shared by the libFuzzer targets of tests/fuzz: quiet logs and a cap on the engine work a fuzz input
// may trigger (validation is what is fuzzed; tiny plans are also computed).
#ifndef NT_TESTS_FUZZ_FUZZ_UTIL_H_
#define NT_TESTS_FUZZ_FUZZ_UTIL_H_

#include <atomic>
#include <cstdint>

#include "absl/status/status.h"
#include "core/kernel_fn.h"
#include "server/tensor_codec.h"

namespace nt::fuzz {

// Plans this small are computed too (ComputeKernelTiles with a sink that encodes and drops the blocks),
// so that the layers' kernel code runs on fuzzed architectures and inputs.
inline bool TinyPlan(const KernelPlan& plan) {
  return plan.estimated_flops < 1e5 && plan.n1 * plan.n2 <= 16 && plan.working_bytes < (64LL << 20) &&
         plan.output_bytes < (16LL << 20);
}

// Runs the plan, encoding each block as the server would; a failure of the engine on a validated plan is
// allowed to be a status (never a crash).
inline absl::Status RunTinyPlan(const Layer& net, const Array& x1, const Array* x2, const KernelPlan& plan,
                                KernelOptions options, nt::v1::DType dtype) {
  std::atomic<bool> cancelled{false};
  options.cancelled = &cancelled;
  return ComputeKernelTiles(net, x1, x2, plan, options, [&](TileBlock&& b) {
    nt::v1::Tensor t;
    nt::server::EncodeTensor(b.block, dtype, &t);
    return absl::OkStatus();
  });
}

}  // namespace nt::fuzz

#endif  // NT_TESTS_FUZZ_FUZZ_UTIL_H_
