#!/usr/bin/env python3
"""The six performance targets of issue 9, each measured next to its floor or reference in this run.

Run through bench/run (which builds what this needs). Targets, float64 unless stated:
  1. depth-10 Relu NNGP+NTK, N=4096, d=3072, x2 = x1: kernel time <= 1.3 x one GEMM of the input Gram
     matrix (OpenBLAS through Eigen, all cores; kernel_benchmark).
  2. upstream's README CNN (21 x [Conv 3x3 SAME + Relu], 32x32x3) + GlobalAvgPool: <= 130 ms per NTK entry
     in float64 and <= 55 ms in float32 (upstream CPU: 258.55 / 112.9 ms).
  3. the same network + Flatten: <= 0.05 ms per NTK entry (upstream CPU: 0.3414 ms).
  4. target 1's kernel through the service into numpy (Python client, x uploaded by the call):
     <= 1.15 x the in-process time. Also shown, not counted: the same kernel from an already uploaded x,
     and the floor of any transport on this machine: the in-process time plus the CPU seconds a bare
     loopback socket (no protocol) takes to carry x in and the kernel tiles out, over the cores (the
     engine keeps them all busy), and the floor of gRPC itself: the same upload and kernel stream by a
     C++ client that builds its chunks ready-made and drains the tiles without parsing or placing them
     (bench/grpc_floor.cc), i.e. what any gRPC client in any language costs at least against this server.
  5. Predict at t = infinity (NTK mean) for 8192 training points, nothing cached: <= 1.2 x dpotrf + dpotrs
     (OpenBLAS, all cores) of the same regularised train-train NTK. Counted: Predict given that matrix (and
     the test-train kernel), as the floor is (predict_benchmark, same process). Shown, not counted: the
     same from inputs (the train-train kernel computed first: target 1's subject), in-process and through
     the service (a first request: fresh training inputs).
  6. 2 engine threads instead of 1 on targets 1 and 2: >= 1.85 x faster on both (each side the best of 5
     runs, taken alternately).
Every benchmark, floors included, times the steady state after one untimed warm-up run (bench_util.h);
service figures are the best of two requests after a warm-up request; target 4 takes the best of 3 rounds,
each running the in-process benchmark and then the service.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(REPO, 'build')
sys.path[:0] = [os.path.join(REPO, 'client', 'python'), os.path.join(BUILD, 'python')]

import ntclient  # noqa: E402  pylint: disable=wrong-import-position
from ntclient import predict  # noqa: E402  pylint: disable=wrong-import-position
from ntclient import stax  # noqa: E402  pylint: disable=wrong-import-position
from ntclient import tensors  # noqa: E402  pylint: disable=wrong-import-position

ROWS = []


def row(target, name, measured, unit, reference, ref_name, limit, higher_is_better=False, counted=True):
  """One line of the table: ratio = measured / reference (or reference / measured for speed-ups).
  Rows that are not `counted` are shown for information and do not decide the target."""
  ratio = reference / measured if higher_is_better else measured / reference
  ok = ratio >= limit if higher_is_better else ratio <= limit
  ROWS.append(dict(target=target, name=name, measured=measured, unit=unit, reference=reference,
                   ref_name=ref_name, ratio=ratio, limit=limit, higher=higher_is_better, ok=ok,
                   counted=counted))
  print(f'  [{target}] {name}: {measured:.4g} {unit}, {ref_name} {reference:.4g}, ratio {ratio:.3f}', flush=True)


def bench(binary, *args):
  """Runs a Google Benchmark binary; returns {benchmark name: entry} and its context."""
  out = subprocess.run([os.path.join(BUILD, 'bench', binary), '--benchmark_format=json', *args], check=True,
                       stdout=subprocess.PIPE).stdout
  d = json.loads(out)
  runs = {b['name'].split('/')[0]: b for b in d['benchmarks'] if b.get('run_type') == 'iteration'}
  for b in runs.values():
    if b.get('error_occurred'):
      raise RuntimeError(f'{binary}: {b.get("error_message")}')
  return runs, d['context']


def fc_kernel(threads=0, gemm=True):
  args = [] if gemm else ['--benchmark_filter=BM_DeepReluKernel']
  if threads:
    args.append(f'--threads={threads}')
  runs, _ = bench('kernel_benchmark', *args)
  return (runs['BM_GramGemm']['real_time'] / 1e3 if gemm else None), runs['BM_DeepReluKernel']['real_time'] / 1e3


def cnn(binary, top, n, threads=0):
  args = [f'--top={top}', f'--n={n}'] + ([f'--threads={threads}'] if threads else [])
  runs, _ = bench(binary, *args)
  return runs['BM_CnnKernel']['real_time'] / (n * n)  # ms per entry (real_time in ms).


def deep_relu(depth=10):
  layers = []
  for _ in range(depth):
    layers += [stax.Dense(512, 1.4, 0.1), stax.Relu()]
  return stax.serial(*layers, stax.Dense(1, 1.4, 0.1))


class Server:
  """A local nt-server on a free loopback port."""

  def __enter__(self):
    self.port_file = tempfile.NamedTemporaryFile(delete=False).name
    self.proc = subprocess.Popen([os.path.join(BUILD, 'server', 'nt-server'), '--address=127.0.0.1:0',
                                  f'--port_file={self.port_file}', '--memory_budget_mb=16384'],
                                 stderr=subprocess.DEVNULL)
    for _ in range(400):
      if os.path.getsize(self.port_file) > 0:
        break
      time.sleep(0.05)
    with open(self.port_file, encoding='utf-8') as f:
      self.address = f'127.0.0.1:{int(f.read().strip())}'
    ntclient.connect(self.address)
    return self

  def kernel(self, request):
    """A ComputeKernel request assembled into numpy arrays."""
    stream = ntclient.default_connection().compute_kernel(request, split_tiles=True)
    return tensors.TileAssembler().consume(stream)

  def __exit__(self, *exc):
    self.proc.terminate()
    self.proc.wait(timeout=60)
    os.unlink(self.port_file)


_SOCKET_SENDER = r"""
import os, socket, sys
import numpy as np
port, nbytes, rounds = (int(a) for a in sys.argv[1:])
data = memoryview(np.ones(nbytes, np.uint8))  # Touched: the sender's pages are warm.
c = socket.create_connection(('127.0.0.1', port))
cpu = []
for _ in range(rounds):
  t = os.times()
  c.sendall(data)
  c.recv(1)  # The receiver has it all.
  u = os.times()
  cpu.append(u.user + u.system - t.user - t.system)
c.sendall(' '.join(str(v) for v in cpu).encode())
c.close()
"""


def socket_cpu_seconds(nbytes, rounds=3):
  """CPU seconds (sender + receiver, best of `rounds`) to move nbytes through a bare loopback TCP socket
  between two processes into an already touched buffer: no protocol, no copies besides the kernel's."""
  import resource
  import socket
  srv = socket.socket()
  srv.bind(('127.0.0.1', 0))
  srv.listen(1)
  sender = subprocess.Popen([sys.executable, '-c', _SOCKET_SENDER, str(srv.getsockname()[1]), str(nbytes),
                             str(rounds)])
  srv.settimeout(60)
  conn, _ = srv.accept()
  conn.settimeout(60)
  view = memoryview(np.ones(nbytes, np.uint8))
  receiver_cpu = []
  with conn:
    for _ in range(rounds):
      r0 = resource.getrusage(resource.RUSAGE_SELF)
      got = 0
      while got < nbytes:
        n = conn.recv_into(view[got:], nbytes - got)
        if n == 0:
          raise RuntimeError(f'socket floor: the sender stopped after {got} of {nbytes} bytes')
        got += n
      r1 = resource.getrusage(resource.RUSAGE_SELF)
      receiver_cpu.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
      conn.sendall(b'k')
    tail = b''
    while chunk := conn.recv(4096):
      tail += chunk
  sender.wait(timeout=60)
  srv.close()
  return min(r + float(s) for r, s in zip(receiver_cpu, tail.split()))


def grpc_floor(address, kernel_fn, x):
  """Target 4 done by the least any gRPC client can do (bench/grpc_floor.cc: x uploaded as ready-made
  chunks, the tile stream drained without parsing or placing anything); best of 2 runs, in seconds."""
  large = {}
  request = stax.kernel_request(kernel_fn, x, None, ('nngp', 'ntk'), large=large)  # x1: shape only.
  with tempfile.TemporaryDirectory() as tmp:
    with open(os.path.join(tmp, 'request.bin'), 'wb') as f:
      f.write(request.SerializeToString())
    np.ascontiguousarray(x, dtype='<f8').tofile(os.path.join(tmp, 'x.bin'))
    out = subprocess.run([os.path.join(BUILD, 'bench', 'grpc_floor'), f'--server={address}',
                          f'--request={tmp}/request.bin', f'--x={tmp}/x.bin', f'--rows={x.shape[0]}',
                          f'--cols={x.shape[1]}', '--runs=2'], check=True, stdout=subprocess.PIPE,
                         timeout=600).stdout
  return json.loads(out)


def best_of(k, fn):
  """The shortest of k timed calls of fn, after an untimed warm-up call."""
  fn()
  times = []
  for _ in range(k):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def main():
  parser = argparse.ArgumentParser(description='nt-server performance targets')
  parser.add_argument('--only', default='1,2,3,4,5,6', help='comma-separated targets to run')
  parser.add_argument('--json', help='also write the rows to this file')
  args = parser.parse_args()
  only = {int(t) for t in args.only.split(',')}
  print(f'nt-server performance targets on {os.cpu_count()} CPUs, {time.strftime("%Y-%m-%d %H:%M")}',
        flush=True)

  if 1 in only:
    gemm, fc_in_process = fc_kernel()
    row(1, 'FC depth-10 Relu NNGP+NTK 4096x3072', fc_in_process, 's', gemm, 'Gram GEMM', 1.3)
  if 2 in only:
    row(2, 'CNN+GAP float64 per NTK entry', cnn('cnn_benchmark', 'gap', 4), 'ms', 130.0, 'target ms', 1.0)
    row(2, 'CNN+GAP float32 per NTK entry', cnn('cnn_benchmark_f32', 'gap', 4), 'ms', 55.0, 'target ms', 1.0)
  if 3 in only:
    row(3, 'CNN+Flatten float64 per NTK entry', cnn('cnn_benchmark', 'flatten', 256), 'ms', 0.05, 'target ms',
        1.0)
  if 5 in only:
    runs, _ = bench('predict_benchmark')
    lapack = runs['BM_CholeskySolve']['real_time'] / 1e3
    row(5, 'Predict t=inf NTK, 8192 train, from kernels', runs['BM_PredictInfinityFromKernels']['real_time'] / 1e3,
        's', lapack, 'dpotrf+dpotrs', 1.2)
    row(5, '  the same from inputs, in-process (not counted)', runs['BM_PredictInfinity']['real_time'] / 1e3, 's',
        lapack, 'dpotrf+dpotrs', 1.2, counted=False)
  if 4 in only or 5 in only:
    with Server() as server:
      rng = np.random.default_rng(0)
      if 4 in only:
        x = rng.normal(size=(4096, 3072))
        _, _, kernel_fn = deep_relu()
        handle = ntclient.default_connection().upload(x)
        request = stax.kernel_request(kernel_fn, x[:1], None, ('nngp', 'ntk'))
        request.x1.CopyFrom(handle)
        # Every figure is the best of 3 rounds, each round running the in-process benchmark and then the
        # service: a slow phase of the VM (another tenant) then falls on both sides alike, as it would
        # not with the in-process time taken once.
        rounds = {'in-process': [], 'service': [], 'by handle': [], 'gRPC': [], 'gRPC by handle': []}
        for _ in range(3):
          rounds['in-process'].append(fc_kernel(gemm=False)[1])
          rounds['service'].append(best_of(2, lambda: kernel_fn(x, None, ('nngp', 'ntk'))))
          rounds['by handle'].append(best_of(2, lambda: server.kernel(request)))
          grpc = grpc_floor(server.address, kernel_fn, x)
          rounds['gRPC'].append(grpc['with_upload'])
          rounds['gRPC by handle'].append(grpc['by_handle'])
          stream_bytes = grpc['bytes']  # The kernel's whole response stream, as the server sent it.
        print('  [4] rounds: ' + '; '.join(f'{k} ' + ' '.join(f'{v:.3f}' for v in vs) for k, vs in rounds.items()),
              flush=True)
        fc_in_process = min(rounds['in-process'])
        row(4, 'FC kernel through the service into numpy', min(rounds['service']), 's', fc_in_process,
            'in-process', 1.15)
        row(4, '  the same from an uploaded x (not counted)', min(rounds['by handle']), 's', fc_in_process,
            'in-process', 1.15, counted=False)
        # The bound on this machine: the engine keeps every core busy, so moving x in and the tiles out
        # (one triangle; the client mirrors the other) adds at least (CPU seconds of a bare socket
        # carrying those bytes) / cores to the in-process time.
        moved = x.nbytes + stream_bytes
        floor = fc_in_process + socket_cpu_seconds(moved) / os.cpu_count()
        row(4, '  floor: + a bare socket moving the bytes (info)', floor, 's', fc_in_process, 'in-process', 1.15,
            counted=False)
        row(4, '  floor: gRPC itself, C++ raw client (info)', min(rounds['gRPC']), 's', fc_in_process,
            'in-process', 1.15, counted=False)
        row(4, '  floor: gRPC itself, from an uploaded x (info)', min(rounds['gRPC by handle']), 's',
            fc_in_process, 'in-process', 1.15, counted=False)
      if 5 in only:
        n, d = 8192, 256
        _, _, kernel_fn = stax.serial(stax.Dense(512, 1.5, 0.05), stax.Relu(), stax.Dense(10, 1.5, 0.05))
        y_train, x_test = rng.normal(size=(n, 10)), rng.normal(size=(256, d))

        def first_request():
          # Fresh training inputs each time: the server's train-side cache never answers.
          x_train = rng.normal(size=(n, d))
          predict_fn = predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, diag_reg=1e-4,
                                                             timeout=3600)
          start = time.perf_counter()
          predict_fn(x_test=x_test, get='ntk')
          return time.perf_counter() - start

        first_request()  # Warm-up.
        service = min(first_request() for _ in range(2))
        row(5, '  the same from inputs, service (not counted)', service, 's', lapack, 'dpotrf+dpotrs', 1.2,
            counted=False)
  if 6 in only:
    # A speed-up divides two timings, so each side is the best of 5 runs taken alternately: one slow run
    # (another tenant of the VM taking a core) would otherwise decide the ratio.
    def speedup(time_with):
      times = {1: [], 2: []}
      for _ in range(5):
        for threads in (1, 2):
          times[threads].append(time_with(threads))
      return min(times[2]), min(times[1])

    fc2, fc1 = speedup(lambda threads: fc_kernel(threads=threads, gemm=False)[1])
    row(6, 'FC kernel, 2 threads vs 1', fc2, 's', fc1, '1 thread', 1.85, higher_is_better=True)
    cnn2, cnn1 = speedup(lambda threads: cnn('cnn_benchmark', 'gap', 4, threads=threads))
    row(6, 'CNN+GAP, 2 threads vs 1', cnn2, 'ms', cnn1, '1 thread', 1.85, higher_is_better=True)

  print()
  print(f'{"target":<7}{"measurement":<48}{"measured":>12}{"floor/reference":>34}{"ratio":>8}{"limit":>9}'
        f'{"":>3}result')
  for r in ROWS:
    limit = ('>= ' if r['higher'] else '<= ') + f'{r["limit"]:g}'
    ref = f'{r["ref_name"]} {r["reference"]:.4g} {r["unit"]}'
    print(f'{r["target"]:<7}{r["name"]:<48}{r["measured"]:>9.4g} {r["unit"]:<2}{ref:>34}{r["ratio"]:>8.3f}'
          f'{limit:>9}   {("pass" if r["ok"] else "FAIL") if r["counted"] else "info"}')
  targets = sorted({r['target'] for r in ROWS})
  met = sum(all(r['ok'] for r in ROWS if r['target'] == t and r['counted']) for t in targets)
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(ROWS, f, indent=1)
  print(f'targets met: {met} of {len(targets)}')


if __name__ == '__main__':
  main()
