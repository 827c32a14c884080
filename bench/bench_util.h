// Shared pieces of the benchmarks.
#ifndef NT_BENCH_BENCH_UTIL_H_
#define NT_BENCH_BENCH_UTIL_H_

#include <string>

#include "benchmark/benchmark.h"
#include "core/stax.h"

namespace NT_CORE_NS::bench {

// Times kernel_fn(x, None, ('nngp', 'ntk')) once per iteration; a failure ends the benchmark with its
// message.
inline void TimeKernel(benchmark::State& state, const stax::Net& net, const Array& x) {
  for (auto _ : state) {
    auto k = net.kernel_fn(x, nullptr, {"nngp", "ntk"});
    if (!k.ok()) {
      state.SkipWithError(std::string(k.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(k->arrays.front().second.data());
  }
}

}  // namespace NT_CORE_NS::bench

#endif  // NT_BENCH_BENCH_UTIL_H_
