"""Load: 32 concurrent clients, each with its own channel, make many requests of every kind against one
server: zero errors, every answer equal to a sequential reference, and the server's memory bounded (no
growth from one round to the next)."""
import concurrent.futures
import threading
import time
import unittest

import grpc
import numpy as np

import ntclient
from ntclient import _proto
from ntclient import predict
from ntclient import stax

import server_fixture

CLIENTS = 32
REQUESTS_PER_CLIENT = 25  # Per round; two rounds.


def _rss_bytes(pid):
  with open(f'/proc/{pid}/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) * 1024
  return 0


class LoadTest(server_fixture.ServerTestCase):

  server_args = ['--memory_budget_mb=1024', '--metrics_address=127.0.0.1:0']

  def test_32_concurrent_clients(self):
    init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(128, W_std=1.5, b_std=0.1), stax.Relu(),
                                               stax.Dense(128, W_std=1.5, b_std=0.1), stax.Erf(), stax.Dense(1))
    _, _, cnn_fn = stax.serial(stax.Conv(8, (3, 3), padding='SAME'), stax.Relu(), stax.GlobalAvgPool(),
                               stax.Dense(1))
    rng = np.random.default_rng(0)
    inputs = [(rng.standard_normal((40 + 23 * i, 16)), rng.standard_normal((7 + i, 16)) if i % 2 else None)
              for i in range(6)]
    images = rng.standard_normal((6, 6, 6, 2))
    x_train, y_train = rng.standard_normal((30, 16)), rng.standard_normal((30, 2))
    _, params = init_fn(3, (5, 16), connection=self.conn)

    def kernel(i, conn):
      x1, x2 = inputs[i]
      k = kernel_fn(x1, x2, ('nngp', 'ntk'), tile_size=16, connection=conn, timeout=120)
      return (k.nngp, k.ntk)

    def cnn(conn):
      return (cnn_fn(images, None, 'ntk', tile_size=2, connection=conn, timeout=120),)

    def pred(conn):
      fn = predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, diag_reg=1e-3, connection=conn)
      return (fn(x_test=inputs[0][0], get='ntk'),)

    def apply(conn):
      return (apply_fn(params, inputs[1][0][:5], connection=conn, timeout=60),)

    def describe(conn):
      d = kernel_fn.describe(inputs[2][0].shape, None, 'nngp', connection=conn)
      return (np.array([d.num_tiles, d.tile_size]),)

    jobs = [lambda c, i=i: kernel(i, c) for i in range(len(inputs))] + [cnn, pred, apply, describe]
    reference = [job(self.conn) for job in jobs]

    errors = []
    completed = [0]
    lock = threading.Lock()
    peak = [0]
    stop = threading.Event()

    def sample_memory():
      while not stop.is_set():
        peak[0] = max(peak[0], _rss_bytes(self.server.proc.pid))
        time.sleep(0.02)

    def client(k, round_index):
      with ntclient.Connection(self.address) as conn:
        for r in range(REQUESTS_PER_CLIENT):
          j = (k * 7 + r * 3 + round_index) % len(jobs)
          try:
            got = jobs[j](conn)
            for a, b in zip(got, reference[j]):
              np.testing.assert_array_equal(a, b)
          except (grpc.RpcError, AssertionError) as e:  # Counted, and the test fails below.
            with lock:
              errors.append(f'client {k} request {r} job {j}: {e!r}'[:500])
          else:
            with lock:
              completed[0] += 1

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    peaks = []
    start = time.monotonic()
    try:
      for round_index in range(2):
        peak[0] = 0
        with concurrent.futures.ThreadPoolExecutor(max_workers=CLIENTS) as pool:
          list(pool.map(lambda k: client(k, round_index), range(CLIENTS)))
        peaks.append(peak[0])
    finally:
      stop.set()
      sampler.join()
    seconds = time.monotonic() - start
    total = 2 * CLIENTS * REQUESTS_PER_CLIENT
    print(f'\nload: {CLIENTS} concurrent clients, {total} requests in {seconds:.1f} s, {len(errors)} errors, '
          f'server peak RSS {peaks[0] / 2**20:.0f} MiB then {peaks[1] / 2**20:.0f} MiB')
    self.assertEqual(errors, [])
    self.assertEqual(completed[0], total)
    # Bounded: far below the memory budget, and no growth from one round to the next.
    self.assertLess(max(peaks), 512 * 2**20)
    self.assertLess(peaks[1], peaks[0] * 1.25 + 32 * 2**20)
    self.assertHealthy()


if __name__ == '__main__':
  unittest.main()
