#!/usr/bin/env bash
# Upstream's README CNN benchmark (21 x [Conv(3x3, SAME) + Relu] on 32x32x3 inputs, NNGP + NTK of x
# against itself), topped by GlobalAvgPool and by Flatten, in float64 (engine nt_core) and float32
# (nt_core_f32): time per NTK entry on this machine, next to upstream's published CPU figures
# (spec/anchors.md 2.1) and to a floor measured in the same process (the network's additions at the rate
# of a BLAS GEMM of the same precision on all cores).
#
#   bench/run_cnn.sh              # N=4 with GlobalAvgPool, N=256 with Flatten
#   NT_GAP_N=8 NT_FLATTEN_N=512 bench/run_cnn.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CCACHE_BASEDIR="$PWD"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build cnn_benchmark cnn_benchmark_f32 >/dev/null
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
for bin in cnn_benchmark cnn_benchmark_f32; do
  ./build/bench/$bin --top=gap --n="${NT_GAP_N:-4}" --benchmark_format=json >"$dir/$bin.gap.json"
  ./build/bench/$bin --top=flatten --n="${NT_FLATTEN_N:-256}" --benchmark_format=json >"$dir/$bin.flatten.json"
done
/usr/bin/python3 - "$dir" <<'PY'
import json, os, sys
d = sys.argv[1]
def load(bin, top):
  return json.load(open(os.path.join(d, f'{bin}.{top}.json')))
def run(r, name):
  return next(b for b in r['benchmarks'] if b['name'].startswith(name) and b.get('run_type') == 'iteration')
upstream = {('gap', 'float64'): 258.55, ('gap', 'float32'): 112.90,
            ('flatten', 'float64'): 0.3414, ('flatten', 'float32'): 0.12013}
label = {'gap': '21x[Conv+Relu]+GlobalAvgPool', 'flatten': '21x[Conv+Relu]+Flatten'}
ctx = load('cnn_benchmark', 'gap')['context']
print(f"nt-server core on {ctx.get('num_cpus')} CPUs; NNGP + NTK of x against itself, ms per NTK entry "
      f"(time / N^2)")
print(f"{'network':<30}{'precision':>10}{'N':>6}{'ms/entry':>11}{'GEMM GF/s':>11}{'floor ms':>10}"
      f"{'x floor':>9}{'upstream CPU':>14}{'x upstream':>12}")
for top in ('gap', 'flatten'):
  for bin in ('cnn_benchmark', 'cnn_benchmark_f32'):
    r = load(bin, top)
    prec = r['context']['precision']
    n = int(r['context']['N'])
    ms = run(r, 'BM_CnnKernel')['real_time'] / (n * n)  # real_time in ms (Unit ms).
    rate = run(r, 'BM_GemmRate')['GFLOP/s']
    floor = float(r['context']['flops_per_entry']) / (rate * 1e9) * 1e3
    up = upstream[(top, prec)]
    print(f"{label[top]:<30}{prec:>10}{n:>6}{ms:>11.4f}{rate:>11.1f}{floor:>10.4f}{ms / floor:>9.1f}"
          f"{up:>14.4f}{ms / up:>12.2f}")
print("floor: the convolutions' additions on the NNGP and NTK (3 taps x 2 axis pairs per layer, full layout;"
      " 9 taps, diagonal layout) at the GEMM rate")
print("upstream: neural-tangents v0.2.1 README, CPU with >56 cores; ours: this machine, same run")
PY
