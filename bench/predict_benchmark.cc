// Predict at t = infinity vs LAPACK, measured in the same process (issue 9, target 5):
//   BM_CholeskySolve: dpotrf + dpotrs (OpenBLAS, all cores) of the regularised train-train NTK of N = 8192
//     points and K = 10 outputs: the floor of any exact GP / infinite-time prediction.
//   BM_PredictInfinity: what the server's Predict does for a first request (nothing cached): the
//     train-train NNGP + NTK and the test-train kernels of a Dense-Relu-Dense network, the ensemble, and
//     the NTK mean at t = infinity. A fresh ensemble per iteration, so the factorisation is never reused.
//
//   predict_benchmark --n=8192 --d=256 --m=256
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>

#include "bench/bench_util.h"
#include "benchmark/benchmark.h"
#include "core/kernel_fn.h"
#include "core/predict.h"
#include "core/stax.h"

extern "C" {
void openblas_set_num_threads(int num_threads);
void dpotrf_(const char* uplo, const int* n, double* a, const int* lda, int* info);
void dpotrs_(const char* uplo, const int* n, const int* nrhs, const double* a, const int* lda, double* b,
             const int* ldb, int* info);
}

namespace {

int64_t g_n = 8192;
int64_t g_d = 256;
int64_t g_m = 256;
constexpr int64_t kOutputs = 10;
constexpr double kDiagReg = 1e-4;

nt::stax::Net Network() {
  return nt::stax::serial(
      {nt::stax::Dense(512, 1.5, 0.05), nt::stax::Relu(), nt::stax::Dense(10, 1.5, 0.05)});
}

struct Data {
  nt::Array x_train, y_train, x_test;
};

const Data& Inputs() {
  static const Data* d = [] {
    nt::RngKey key(7);
    auto keys = key.Split(3);
    return new Data{keys[0].Normal({g_n, g_d}), keys[1].Normal({g_n, kOutputs}), keys[2].Normal({g_m, g_d})};
  }();
  return *d;
}

void BM_CholeskySolve(benchmark::State& state) {
  const Data& in = Inputs();
  auto k = Network().kernel_fn(in.x_train, nullptr, {"ntk"});
  if (!k.ok()) {
    state.SkipWithError(std::string(k.status().message()).c_str());
    return;
  }
  nt::Array ntk = *k->Find("ntk");
  double trace = 0;
  for (int64_t i = 0; i < g_n; ++i) trace += ntk[i * g_n + i];
  for (int64_t i = 0; i < g_n; ++i) ntk[i * g_n + i] += kDiagReg * trace / double(g_n);
  openblas_set_num_threads(static_cast<int>(std::thread::hardware_concurrency()));
  const int n = static_cast<int>(g_n), nrhs = static_cast<int>(kOutputs);
  nt::Array a = ntk;
  nt::Array b({kOutputs, g_n});
  // Returns false (and ends the benchmark) on a LAPACK failure.
  auto run = [&](bool timed) {
    if (timed) state.PauseTiming();
    a = ntk;
    // dpotrs takes column-major right-hand sides: y^T in row-major is y in column-major.
    for (int64_t i = 0; i < g_n; ++i) {
      for (int64_t j = 0; j < kOutputs; ++j) b[j * g_n + i] = in.y_train[i * kOutputs + j];
    }
    if (timed) state.ResumeTiming();
    int info = 0;
    dpotrf_("L", &n, a.data(), &n, &info);
    if (info == 0) dpotrs_("L", &n, &nrhs, a.data(), &n, b.data(), &n, &info);
    if (info != 0) {
      state.SkipWithError(("LAPACK info " + std::to_string(info)).c_str());
      return false;
    }
    benchmark::DoNotOptimize(b.data());
    return true;
  };
  if (!run(false)) return;  // Warm-up (bench_util.h).
  for (auto _ : state) {
    if (!run(true)) return;
  }
}

// The t = inf ensemble of the train-train kernels, then the NTK mean on the test-train kernels `td`; a
// failure ends the benchmark with its message.
bool PredictMean(benchmark::State& state, const Data& in, std::optional<nt::Array> nngp,
                 std::optional<nt::Array> ntk, const nt::KernelResult& td) {
  auto ens = nt::predict::MseEnsemble::Create(std::move(nngp), std::move(ntk), in.y_train,
                                              nt::predict::MseOptions{1.0, kDiagReg, false});
  auto p = ens.ok() ? (*ens)->Predict(nt::predict::Kind::kNtk, std::nullopt,
                                      nt::predict::TestKernels{td.Find("ntk"), td.Find("nngp"), nullptr},
                                      /*compute_cov=*/false)
                    : ens.status();
  if (!p.ok()) {
    state.SkipWithError(std::string(p.status().message()).c_str());
    return false;
  }
  benchmark::DoNotOptimize(p->mean.data());
  return true;
}

void BM_PredictInfinity(benchmark::State& state) {
  const Data& in = Inputs();
  const nt::stax::Net net = Network();
  auto run = [&] {
    auto dd = net.kernel_fn(in.x_train, nullptr, {"nngp", "ntk"});
    auto td = dd.ok() ? net.kernel_fn(in.x_test, &in.x_train, {"nngp", "ntk"}) : dd.status();
    if (!td.ok()) {
      state.SkipWithError(std::string(td.status().message()).c_str());
      return false;
    }
    return PredictMean(state, in, dd->Take("nngp"), dd->Take("ntk"), *td);
  };
  if (!run()) return;  // Warm-up (bench_util.h): a fresh ensemble each run, nothing reused but memory.
  for (auto _ : state) {
    if (!run()) return;
  }
}

// The same Predict given the kernels (as upstream's gradient_descent_mse with k_train_train): what the
// LAPACK floor is given. The ensemble gets a copy of the train-train kernels each run (untimed).
void BM_PredictInfinityFromKernels(benchmark::State& state) {
  const Data& in = Inputs();
  const nt::stax::Net net = Network();
  auto dd = net.kernel_fn(in.x_train, nullptr, {"nngp", "ntk"});
  auto td = dd.ok() ? net.kernel_fn(in.x_test, &in.x_train, {"nngp", "ntk"}) : dd.status();
  if (!td.ok()) {
    state.SkipWithError(std::string(td.status().message()).c_str());
    return;
  }
  std::optional<nt::Array> nngp, ntk;
  auto run = [&](bool timed) {
    if (timed) state.PauseTiming();
    nngp = *dd->Find("nngp");
    ntk = *dd->Find("ntk");
    if (timed) state.ResumeTiming();
    return PredictMean(state, in, std::move(nngp), std::move(ntk), *td);
  };
  if (!run(false)) return;  // Warm-up (bench_util.h).
  for (auto _ : state) {
    if (!run(true)) return;
  }
}

BENCHMARK(BM_CholeskySolve)->Unit(benchmark::kMillisecond)->Iterations(2)->UseRealTime();
BENCHMARK(BM_PredictInfinity)->Unit(benchmark::kMillisecond)->Iterations(2)->UseRealTime();
BENCHMARK(BM_PredictInfinityFromKernels)->Unit(benchmark::kMillisecond)->Iterations(2)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  return nt::bench::BenchmarkMain(
      argc, argv,
      {{"--n=", [](const char* v) { g_n = std::atoll(v); }},
       {"--d=", [](const char* v) { g_d = std::atoll(v); }},
       {"--m=", [](const char* v) { g_m = std::atoll(v); }}},
      [] {
        return std::vector<std::pair<std::string, std::string>>{
            {"N", std::to_string(g_n)}, {"d", std::to_string(g_d)}, {"M", std::to_string(g_m)}};
      });
}
