// Upstream's README CNN benchmark (spec/anchors.md 2.1): 21 x [Conv(1, (3, 3), (1, 1), 'SAME'), Relu] on
// 32x32x3 inputs, topped by GlobalAvgPool (full spatial covariance) or by Flatten (diagonal layout),
// NNGP + NTK of x1 against itself, in float64 (cnn_benchmark, engine nt_core) or float32
// (cnn_benchmark_f32, the same source built against nt_core_f32). Reported per NTK entry (time / N^2), next
// to a floor measured in the same process: the network's additions and multiplications at the rate of this
// machine's GEMM.
//
//   cnn_benchmark --n=8 --top=gap        (--top=flatten|gap|none, --depth=21, --size=32)
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

int64_t g_n = 4;
int64_t g_size = 32;
int g_depth = 21;
std::string g_top = "gap";

NT_CORE_NS::stax::Net Network() {
  std::vector<NT_CORE_NS::stax::Net> layers;
  for (int i = 0; i < g_depth; ++i) {
    layers.push_back(NT_CORE_NS::stax::Conv(1, {3, 3}, {1, 1}, "SAME"));
    layers.push_back(NT_CORE_NS::stax::Relu());
  }
  if (g_top == "gap") layers.push_back(NT_CORE_NS::stax::GlobalAvgPool());
  if (g_top == "flatten") layers.push_back(NT_CORE_NS::stax::Flatten());
  return NT_CORE_NS::stax::serial(std::move(layers));
}

// Arithmetic of one NTK entry (x1 row i against x2 row j), counting only the unavoidable part: each
// Conv reads its 3 taps on each of the two spatial axis pairs of the nngp and the ntk (full layout), or
// the 9 taps of the diagonal (diagonal layout); the Relu maps and pooling are not counted.
double FlopsPerEntry() {
  const double p = double(g_size) * double(g_size);
  const double per_array = g_top == "flatten" ? 2.0 * 9.0 * p : 2.0 * 2.0 * 3.0 * p * p;
  return g_depth * 2.0 * per_array;
}


// The machine rate: a large double GEMM on all cores.
void BM_GemmRate(benchmark::State& state) {
  const int64_t n = 1536;
  // In the engine's precision: DGEMM for the float64 engine, SGEMM for the float32 one.
  using RowMat = Eigen::Matrix<NT_CORE_NS::Real, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  RowMat a = RowMat::Random(n, n), b = RowMat::Random(n, n), c(n, n);
  openblas_set_num_threads(static_cast<int>(std::thread::hardware_concurrency()));
  c.noalias() = a * b;  // Warm-up (bench_util.h).
  for (auto _ : state) {
    c.noalias() = a * b;
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * n * n * n * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}

void BM_CnnKernel(benchmark::State& state) {
  const NT_CORE_NS::Array x = NT_CORE_NS::RngKey(42).Normal({g_n, g_size, g_size, 3});
  const NT_CORE_NS::stax::Net net = Network();
  NT_CORE_NS::bench::TimeKernel(state, net, x);
  state.counters["ms_per_entry"] =
      benchmark::Counter(double(g_n) * g_n * state.iterations() / 1e3,
                         benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
  state.counters["flops_per_entry"] = FlopsPerEntry();
}

BENCHMARK(BM_GemmRate)->Unit(benchmark::kMillisecond)->Iterations(3)->UseRealTime();
BENCHMARK(BM_CnnKernel)->Unit(benchmark::kMillisecond)->Iterations(1)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  return NT_CORE_NS::bench::BenchmarkMain(
      argc, argv,
      {{"--n=", [](const char* v) { g_n = std::atoll(v); }},
       {"--size=", [](const char* v) { g_size = std::atoll(v); }},
       {"--depth=", [](const char* v) { g_depth = std::atoi(v); }},
       {"--top=", [](const char* v) { g_top = v; }}},
      [] {
        return std::vector<std::pair<std::string, std::string>>{
            {"N", std::to_string(g_n)},
            {"precision", sizeof(NT_CORE_NS::Real) == 4 ? "float32" : "float64"},
            {"top", g_top},
            {"depth", std::to_string(g_depth)},
            {"flops_per_entry", std::to_string(FlopsPerEntry())}};
      });
}
