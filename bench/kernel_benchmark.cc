// Fully-connected kernel vs the GEMM floor, measured in the same process:
//   depth-10 Relu network, NNGP + NTK, N = 4096 inputs of d = 3072 (x2 = x1), float64,
//   next to one GEMM computing the same input Gram matrix x x^T / d.
// Sizes can be changed with --n and --d (defaults are the issue's).
#include <cstdlib>
#include <string>
#include <thread>

#include "Eigen/Core"
#include "bench/bench_util.h"
#include "benchmark/benchmark.h"
#include "core/kernel_fn.h"
#include "core/stax.h"

extern "C" void openblas_set_num_threads(int num_threads);

namespace {

int64_t g_n = 4096;
int64_t g_d = 3072;

const nt::Array& Inputs() {
  static const nt::Array* x = [] {
    auto* a = new nt::Array(nt::RngKey(42).Normal({g_n, g_d}));
    return a;
  }();
  return *x;
}

nt::stax::Net DeepRelu(int depth) {
  std::vector<nt::stax::Net> layers;
  for (int i = 0; i < depth; ++i) {
    layers.push_back(nt::stax::Dense(512, 1.4, 0.1));
    layers.push_back(nt::stax::Relu());
  }
  layers.push_back(nt::stax::Dense(1, 1.4, 0.1));
  return nt::stax::serial(std::move(layers));
}

// The floor: x x^T / d with OpenBLAS on all cores (what a user would call directly).
void BM_GramGemm(benchmark::State& state) {
  const nt::Array& x = Inputs();
  using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<const RowMat> xm(x.data(), g_n, g_d);
  RowMat g(g_n, g_n);
  openblas_set_num_threads(static_cast<int>(std::thread::hardware_concurrency()));
  g.noalias() = (1.0 / g_d) * (xm * xm.transpose());  // Warm-up (bench_util.h).
  for (auto _ : state) {
    g.noalias() = (1.0 / g_d) * (xm * xm.transpose());
    benchmark::DoNotOptimize(g.data());
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * g_n * g_n * g_d * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}

void BM_DeepReluKernel(benchmark::State& state) {
  const nt::Array& x = Inputs();
  const nt::stax::Net net = DeepRelu(static_cast<int>(state.range(0)));
  nt::bench::TimeKernel(state, net, x);
  state.counters["entries/s"] =
      benchmark::Counter(double(g_n) * g_n * state.iterations(), benchmark::Counter::kIsRate);
}

BENCHMARK(BM_GramGemm)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();
BENCHMARK(BM_DeepReluKernel)->Arg(10)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  return NT_CORE_NS::bench::BenchmarkMain(argc, argv,
                                          {{"--n=", [](const char* v) { g_n = std::atoll(v); }},
                                           {"--d=", [](const char* v) { g_d = std::atoll(v); }}},
                                          [] {
                                            return std::vector<std::pair<std::string, std::string>>{
                                                {"N", std::to_string(g_n)}, {"d", std::to_string(g_d)}};
                                          });
}
