#!/usr/bin/env bash
# Builds and runs the fully-connected benchmark, then prints the kernel time next to the GEMM floor.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C build kernel_benchmark >/dev/null
out=$(mktemp)
./build/bench/kernel_benchmark --benchmark_format=json "$@" >"$out"
/usr/bin/python3 - "$out" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
t = {b['name'].split('/')[0]: b['real_time'] for b in d['benchmarks'] if b.get('run_type') == 'iteration'}
gemm, ker = t['BM_GramGemm'], t['BM_DeepReluKernel']
ctx = d['context']
print('N=%s d=%s, %s CPUs, float64' % (ctx.get('N'), ctx.get('d'), ctx.get('num_cpus')))
print('%-48s %10.1f ms' % ('GEMM of the input Gram matrix (OpenBLAS)', gemm))
print('%-48s %10.1f ms' % ('depth-10 Relu NNGP+NTK kernel (nt-server core)', ker))
print('%-48s %10.2f x' % ('ratio kernel / GEMM', ker / gemm))
PY
rm -f "$out"
