#!/usr/bin/env bash
# Upstream's README CNN benchmark (21 x [Conv(3x3, SAME) + Relu] on 32x32x3 inputs, NNGP + NTK of x
# against itself), topped by GlobalAvgPool and by Flatten: time per NTK entry on this machine, next to
# upstream's published CPU figures (spec/anchors.md 2.1) and to a floor measured in the same run (the
# network's additions at the rate of a BLAS GEMM on all cores).
#
#   bench/run_cnn.sh              # N=4 with GlobalAvgPool, N=256 with Flatten
#   NT_GAP_N=8 NT_FLATTEN_N=512 bench/run_cnn.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CCACHE_BASEDIR="$PWD"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build cnn_benchmark >/dev/null
gap=$(mktemp)
flat=$(mktemp)
trap 'rm -f "$gap" "$flat"' EXIT
./build/bench/cnn_benchmark --top=gap --n="${NT_GAP_N:-4}" --benchmark_format=json >"$gap"
./build/bench/cnn_benchmark --top=flatten --n="${NT_FLATTEN_N:-256}" --benchmark_filter=Cnn \
  --benchmark_format=json >"$flat"
/usr/bin/python3 - "$gap" "$flat" <<'PY'
import json, sys
gap, flat = (json.load(open(p)) for p in sys.argv[1:3])
def run(d, name):
  return next(b for b in d['benchmarks'] if b['name'].startswith(name) and b.get('run_type') == 'iteration')
rate = run(gap, 'BM_GemmRate')['GFLOP/s']  # GFLOP per second.
ctx = gap['context']
print(f"nt-server core, float64, {ctx.get('num_cpus')} CPUs; GEMM rate {rate:.1f} GFLOP/s (OpenBLAS, all cores)")
print(f"{'network':<28}{'N':>6}{'ms/entry':>12}{'floor ms':>10}{'x floor':>9}"
      f"{'upstream CPU fp64':>19}{'upstream CPU fp32':>19}")
upstream = {'gap': (258.55, 112.90), 'flatten': (0.3414, 0.12013)}
for d, top, label in ((gap, 'gap', '21x[Conv+Relu]+GlobalAvgPool'), (flat, 'flatten', '21x[Conv+Relu]+Flatten')):
  b = run(d, 'BM_CnnKernel')
  n = int(d['context']['N'])
  ms = b['real_time'] / (n * n)  # real_time is in ms (Unit ms); x against itself, N^2 entries.
  floor = float(d['context']['flops_per_entry']) / (rate * 1e9) * 1e3
  f64, f32 = upstream[top]
  print(f"{label:<28}{n:>6}{ms:>12.4f}{floor:>10.4f}{ms / floor:>9.1f}{f64:>19.4f}{f32:>19.4f}")
print("float32: not measured; the engine computes in float64 only (float32 is an output encoding).")
print("upstream figures: >56-core CPU, neural-tangents v0.2.1 README; ours: this machine, same run.")
PY
