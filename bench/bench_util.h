// Shared pieces of the benchmarks.
#ifndef NT_BENCH_BENCH_UTIL_H_
#define NT_BENCH_BENCH_UTIL_H_

#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

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

// Google Benchmark's main, with our own flags taken out first: `flags` maps a prefix such as "--n=" to a
// setter of its value; `context` (called after parsing) adds key / value lines to the report.
using FlagSetter = std::function<void(const char*)>;
inline int BenchmarkMain(int argc, char** argv, const std::vector<std::pair<std::string, FlagSetter>>& flags,
                         const std::function<std::vector<std::pair<std::string, std::string>>()>& context) {
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    bool ours = false;
    for (const auto& [prefix, set] : flags) {
      if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) {
        set(argv[i] + prefix.size());
        ours = true;
      }
    }
    if (!ours) rest.push_back(argv[i]);
  }
  int rc = static_cast<int>(rest.size());
  benchmark::Initialize(&rc, rest.data());
  for (const auto& [key, value] : context()) benchmark::AddCustomContext(key, value);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace NT_CORE_NS::bench

#endif  // NT_BENCH_BENCH_UTIL_H_
