// Shared pieces of the benchmarks.
#ifndef NT_BENCH_BENCH_UTIL_H_
#define NT_BENCH_BENCH_UTIL_H_

#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "benchmark/benchmark.h"
#include "core/stax.h"
#include "tbb/global_control.h"

namespace NT_CORE_NS::bench {

// Times kernel_fn(x, None, ('nngp', 'ntk')) once per iteration, after one untimed run; a failure ends
// the benchmark with its message. Every benchmark here, floors included, times the steady state after
// such a warm-up: a first run also pays the first touch of its memory (page faults cost ~11 us per
// 4 KiB on these VMs), which a service computing request after request does not.
inline void TimeKernel(benchmark::State& state, const stax::Net& net, const Array& x) {
  auto run = [&] {
    auto k = net.kernel_fn(x, nullptr, {"nngp", "ntk"});
    if (!k.ok()) {
      state.SkipWithError(std::string(k.status().message()).c_str());
      return false;
    }
    benchmark::DoNotOptimize(k->arrays.front().second.data());
    return true;
  };
  if (!run()) return;
  for (auto _ : state) {
    if (!run()) return;
  }
}

// Google Benchmark's main, with our own flags taken out first: `flags` maps a prefix such as "--n=" to a
// setter of its value; `context` (called after parsing) adds key / value lines to the report. Every
// benchmark also takes --threads=K: the engine's TBB threads (default: all cores; GEMM floors always use
// all cores).
using FlagSetter = std::function<void(const char*)>;
inline int BenchmarkMain(int argc, char** argv, const std::vector<std::pair<std::string, FlagSetter>>& flags,
                         const std::function<std::vector<std::pair<std::string, std::string>>()>& context) {
  std::vector<char*> rest;
  int threads = 0;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0) {
      threads = std::atoi(argv[i] + 10);
      continue;
    }
    bool ours = false;
    for (const auto& [prefix, set] : flags) {
      if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) {
        set(argv[i] + prefix.size());
        ours = true;
      }
    }
    if (!ours) rest.push_back(argv[i]);
  }
  std::unique_ptr<tbb::global_control> limit;
  if (threads > 0) {
    limit = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism, threads);
  }
  int rc = static_cast<int>(rest.size());
  benchmark::Initialize(&rc, rest.data());
  for (const auto& [key, value] : context()) benchmark::AddCustomContext(key, value);
  benchmark::AddCustomContext(
      "engine_threads",
      std::to_string(tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism)));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace NT_CORE_NS::bench

#endif  // NT_BENCH_BENCH_UTIL_H_
