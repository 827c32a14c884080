"""Concurrent clients get exactly the kernels that sequential requests get."""
import concurrent.futures
import unittest

import numpy as np

from ntclient import stax

import server_fixture


class ConcurrencyTest(server_fixture.ServerTestCase):

  def test_concurrent_requests_match_sequential_ones(self):
    _, _, kernel_fn = stax.serial(stax.Dense(64, W_std=1.3, b_std=0.1), stax.Relu(),
                                  stax.Dense(64, W_std=1.3, b_std=0.1), stax.Erf(), stax.Dense(1))
    rng = np.random.default_rng(11)
    inputs = [(rng.standard_normal((150 + 17 * i, 12)), rng.standard_normal((40 + i, 12)) if i % 2 else None)
              for i in range(12)]

    def run(args):
      x1, x2 = args
      return kernel_fn(x1, x2, ('nngp', 'ntk'), tile_size=32, connection=self.conn, timeout=60)

    sequential = [run(a) for a in inputs]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
      concurrent_results = list(pool.map(run, inputs))
    for i, (s, c) in enumerate(zip(sequential, concurrent_results)):
      with self.subTest(request=i):
        np.testing.assert_array_equal(s.nngp, c.nngp)
        np.testing.assert_array_equal(s.ntk, c.ntk)
    self.assertHealthy()


if __name__ == '__main__':
  unittest.main()
