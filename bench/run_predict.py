#!/usr/bin/env python3
"""Cost of a first and of a second (cached) Predict request through nt-server, for 4096 training points.

The first request computes the train-train NNGP and NTK, factorises them (Cholesky, t = infinity) and
predicts; the second, with new test points, reuses the cached train side and only computes the
test-train kernel. Printed next to numpy's LAPACK Cholesky + solve of the same train-train matrix.

  bench/run_predict.py [--n 4096] [--d 256] [--m 256]     # starts build/server/nt-server on a free port
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(REPO, 'client', 'python'), os.path.join(REPO, 'build', 'python')]

import ntclient  # noqa: E402  pylint: disable=wrong-import-position
from ntclient import predict  # noqa: E402  pylint: disable=wrong-import-position
from ntclient import stax  # noqa: E402  pylint: disable=wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--n', type=int, default=4096, help='training points')
  parser.add_argument('--d', type=int, default=256, help='input dimension')
  parser.add_argument('--m', type=int, default=256, help='test points per request')
  args = parser.parse_args()
  subprocess.run(['ninja', '-C', os.path.join(REPO, 'build'), 'nt-server', 'nt_proto_py'], check=True,
                 stdout=subprocess.DEVNULL)
  port_file = tempfile.NamedTemporaryFile(delete=False).name
  server = subprocess.Popen([os.path.join(REPO, 'build/server/nt-server'), '--address=127.0.0.1:0',
                             f'--port_file={port_file}'], stderr=subprocess.DEVNULL)
  try:
    for _ in range(200):
      if os.path.getsize(port_file) > 0:
        break
      time.sleep(0.05)
    with open(port_file, encoding='utf-8') as f:
      ntclient.connect(f'127.0.0.1:{int(f.read().strip())}')
    rng = np.random.default_rng(0)
    x_train, y_train = rng.normal(size=(args.n, args.d)), rng.normal(size=(args.n, 10))
    _, _, kernel_fn = stax.serial(stax.Dense(512, 1.5, 0.05), stax.Relu(), stax.Dense(512, 1.5, 0.05),
                                  stax.Relu(), stax.Dense(10, 1.5, 0.05))
    predict_fn = predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, diag_reg=1e-4, timeout=3600)
    times = []
    for _ in range(3):
      x_test = rng.normal(size=(args.m, args.d))
      start = time.monotonic()
      predict_fn(x_test=x_test, get=('nngp', 'ntk'))
      times.append(time.monotonic() - start)
    k = kernel_fn(x_train, None, 'ntk') + 1e-4 * np.eye(args.n)
    start = time.monotonic()
    c = np.linalg.cholesky(k)
    np.linalg.solve(c.T, np.linalg.solve(c, y_train))
    lapack = time.monotonic() - start
  finally:
    server.terminate()
    server.wait(timeout=30)
  print(f'Predict, {args.n} training points (d={args.d}), {args.m} test points, NNGP + NTK, t = infinity, float64')
  print(f'{"first request (kernels, 2 Cholesky factorisations, solves)":<62}{times[0]:>9.3f} s')
  print(f'{"second request (new test points; train side cached)":<62}{times[1]:>9.3f} s')
  print(f'{"third request (cached)":<62}{times[2]:>9.3f} s')
  print(f'{"reference: numpy LAPACK Cholesky + solve of one train kernel":<62}{lapack:>9.3f} s')
  print(f'first / cached: {times[0] / times[1]:.1f}x')


if __name__ == '__main__':
  main()
