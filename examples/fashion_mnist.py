#!/usr/bin/env python3
"""Fashion-MNIST with infinitely wide networks: NNGP and NTK test accuracy of a depth-3 Relu network
(infinite-time gradient descent on the MSE, i.e. GP / kernel regression) for 1k, 5k and 10k training
images, through nt-server's Predict RPC.

  apt-get install dataset-fashion-mnist python3-matplotlib      # data in /usr/share/datasets/fashion-mnist
  PYTHONPATH=client/python:build/python examples/fashion_mnist.py [--sizes 1000 5000 10000]

Uses the server at $NT_SERVER, or starts build/server/nt-server on a free local port. Writes
examples/results/fashion_mnist.md (table) and examples/results/fashion_mnist_accuracy.png (plot).
"""

import argparse
import gzip
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import ntclient
from ntclient import predict
from ntclient import stax

DATA = '/usr/share/datasets/fashion-mnist'
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(kind):
  """(images (n, 784) float64 in [0, 1], labels (n,)) of 'train' or 't10k'."""
  with gzip.open(os.path.join(DATA, f'{kind}-images-idx3-ubyte.gz')) as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)
  with gzip.open(os.path.join(DATA, f'{kind}-labels-idx1-ubyte.gz')) as f:
    labels = np.frombuffer(f.read(), np.uint8, offset=8)
  return images.astype(np.float64) / 255.0, labels.astype(np.int64)


def start_server():
  """A local nt-server on a free port; returns (process, address)."""
  port_file = tempfile.NamedTemporaryFile(delete=False).name
  proc = subprocess.Popen([os.path.join(REPO, 'build/server/nt-server'), '--address=127.0.0.1:0',
                           f'--port_file={port_file}'], stderr=subprocess.DEVNULL)
  for _ in range(200):
    if os.path.getsize(port_file) > 0:
      break
    time.sleep(0.05)
  with open(port_file, encoding='utf-8') as f:
    return proc, f'127.0.0.1:{int(f.read().strip())}'


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--sizes', type=int, nargs='+', default=[1000, 5000, 10000])
  parser.add_argument('--diag_reg', type=float, default=1e-4)
  parser.add_argument('--out', default=os.path.join(REPO, 'examples', 'results'))
  args = parser.parse_args()
  if not os.path.isdir(DATA):
    sys.exit(f'{DATA} is missing: apt-get install dataset-fashion-mnist')

  x_train, labels_train = load('train')
  x_test, labels_test = load('t10k')
  # Standardise with the training pixels' mean and deviation; targets: centred one-hot.
  mean, std = x_train.mean(), x_train.std()
  x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
  y_train = np.eye(10)[labels_train] - 0.1

  server = None
  if not os.environ.get('NT_SERVER'):
    server, address = start_server()
    ntclient.connect(address)
  try:
    _, _, kernel_fn = stax.serial(
        stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(),
        stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(),
        stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(),
        stax.Dense(10, W_std=1.5, b_std=0.05))
    rows = []
    for n in args.sizes:
      start = time.monotonic()
      predict_fn = predict.gradient_descent_mse_ensemble(kernel_fn, x_train[:n], y_train[:n],
                                                         diag_reg=args.diag_reg, timeout=3600)
      g = predict_fn(x_test=x_test, get=('nngp', 'ntk'))
      seconds = time.monotonic() - start
      acc = {k: float(np.mean(np.argmax(getattr(g, k), axis=1) == labels_test)) for k in ('nngp', 'ntk')}
      rows.append((n, acc['nngp'], acc['ntk'], seconds))
      print(f'n_train={n:6d}  NNGP accuracy {acc["nngp"]:.4f}  NTK accuracy {acc["ntk"]:.4f}  ({seconds:.1f} s)',
            flush=True)
  finally:
    if server is not None:
      server.terminate()
      server.wait(timeout=30)

  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'fashion_mnist.md'), 'w', encoding='utf-8') as f:
    f.write('# Fashion-MNIST, depth-3 Relu network (Dense 512, W_std 1.5, b_std 0.05), infinite width\n\n')
    f.write(f'Infinite-time MSE gradient descent (GP / kernel regression), diag_reg {args.diag_reg}, '
            f'{len(labels_test)} test images, training sets are the first n training images.\n\n')
    f.write('| training images | NNGP test accuracy | NTK test accuracy | seconds (kernels + solve) |\n')
    f.write('|---:|---:|---:|---:|\n')
    for n, a_nngp, a_ntk, s in rows:
      f.write(f'| {n} | {a_nngp:.4f} | {a_ntk:.4f} | {s:.1f} |\n')
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(5, 3.5))
  sizes = [r[0] for r in rows]
  ax.plot(sizes, [r[1] for r in rows], 'o-', label='NNGP')
  ax.plot(sizes, [r[2] for r in rows], 's--', label='NTK')
  ax.set_xscale('log')
  ax.set_xlabel('training images')
  ax.set_ylabel('test accuracy')
  ax.set_title('Fashion-MNIST, infinite depth-3 Relu network')
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, 'fashion_mnist_accuracy.png'), dpi=120)
  print(f'wrote {args.out}/fashion_mnist.md and fashion_mnist_accuracy.png')


if __name__ == '__main__':
  main()
