"""Finite networks over the service: init_fn / apply_fn through the Init and Apply RPCs.

A CNN's outputs are checked against a numpy forward pass with the returned parameters (upstream's 'ntk'
parameterisation: W_std / sqrt(fan_in) * (x conv W) + b_std * b); the same seed gives the same parameters
and outputs on servers with different thread counts; keyword arguments (mask_constant, Aggregate's
pattern, Dropout's rng) and bad requests.
"""

import unittest

import grpc
import numpy as np

import server_fixture
from ntclient import connection as connection_lib
from ntclient import stax

W1, B1, W2, B2 = 1.5, 0.1, 1.2, 0.05


def cnn():
  return stax.serial(stax.Conv(8, (3, 3), padding='SAME', W_std=W1, b_std=B1), stax.Relu(), stax.Flatten(),
                     stax.Dense(3, W_std=W2, b_std=B2))


def numpy_cnn(params, x):
  (w, b), _, _, (v, c) = params
  n, h, wd, cin = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = np.zeros((n, h, wd, w.shape[-1]))
  for i in range(3):
    for j in range(3):
      y += np.einsum('nhwc,co->nhwo', xp[:, i:i + h, j:j + wd, :], w[i, j])
  y = W1 / np.sqrt(9 * cin) * y + B1 * b.reshape(-1)
  y = np.maximum(y, 0).reshape(n, -1)
  return W2 / np.sqrt(y.shape[1]) * y @ v + B2 * c.reshape(-1)


def flat(params):
  out = []
  for p in params:
    out.extend(flat(p) if isinstance(p, tuple) else [p])
  return out


class FiniteNetworkTest(server_fixture.ServerTestCase):

  def test_cnn_init_and_apply_match_numpy(self):
    init_fn, apply_fn, _ = cnn()
    x = np.random.default_rng(1).standard_normal((4, 6, 5, 2))
    out_shape, params = init_fn(7, x.shape, connection=self.conn, timeout=30)
    self.assertEqual(out_shape, (4, 3))
    self.assertEqual([p.shape for p in flat(params)], [(3, 3, 2, 8), (1, 1, 1, 8), (240, 3), (1, 3)])
    y = apply_fn(params, x, connection=self.conn, timeout=30)
    np.testing.assert_allclose(y, numpy_cnn(params, x), rtol=1e-12, atol=1e-12)
    # Another seed, other parameters; the same seed, the same ones.
    _, other = init_fn(8, x.shape, connection=self.conn, timeout=30)
    self.assertFalse(np.array_equal(flat(other)[0], flat(params)[0]))
    _, again = init_fn(7, x.shape, connection=self.conn, timeout=30)
    for a, b in zip(flat(again), flat(params)):
      np.testing.assert_array_equal(a, b)

  def test_same_seed_same_parameters_and_outputs_on_any_thread_count(self):
    init_fn, apply_fn, _ = stax.serial(cnn(), stax.Erf(), stax.Dense(5, b_std=0.2))
    x = np.random.default_rng(2).standard_normal((3, 6, 5, 2))
    results = []
    for threads in (1, 2):
      with server_fixture.running_server(extra_args=[f'--threads={threads}']) as address:
        with connection_lib.Connection(address) as conn:
          _, params = init_fn(11, x.shape, connection=conn, timeout=30)
          results.append((flat(params), apply_fn(params, x, connection=conn, timeout=30)))
    (p1, y1), (p2, y2) = results
    for a, b in zip(p1, p2):
      np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(y1, y2)

  def test_keyword_arguments(self):
    rng = np.random.default_rng(3)
    # Aggregate's pattern: each vertex becomes the weighted sum of its predecessors.
    init_fn, apply_fn, _ = stax.serial(stax.Dense(4), stax.Aggregate())
    x = rng.standard_normal((2, 5, 3))
    pattern = rng.uniform(size=(2, 5, 5))
    _, params = init_fn(1, x.shape, connection=self.conn, timeout=30)
    plain = apply_fn(params, x, connection=self.conn, timeout=30)
    y = apply_fn(params, x, pattern=pattern, connection=self.conn, timeout=30)
    np.testing.assert_allclose(y, np.einsum('nic,nij->njc', plain, pattern), rtol=1e-12)
    # Dropout in train mode: a key gives a mask, the same key the same mask; without one it is an error.
    init_fn, apply_fn, _ = stax.serial(stax.Dense(64), stax.Dropout(0.5))
    _, params = init_fn(2, (3, 4), connection=self.conn, timeout=30)
    x = rng.standard_normal((3, 4))
    y1 = apply_fn(params, x, rng=5, connection=self.conn, timeout=30)
    y2 = apply_fn(params, x, rng=np.array([0, 5], dtype=np.uint32), connection=self.conn, timeout=30)
    np.testing.assert_array_equal(y1, y2)
    self.assertTrue(0.3 < np.mean(y1 == 0) < 0.7)
    with self.assertRaises(grpc.RpcError) as cm:
      apply_fn(params, x, connection=self.conn, timeout=30)
    self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
    self.assertIn('rng', cm.exception.details())
    # mask_constant: masked inputs enter as zeros; outputs masked over all channels come back as zeros.
    init_fn, apply_fn, _ = stax.serial(stax.Dense(4), stax.Relu())
    _, params = init_fn(3, (3, 4), connection=self.conn, timeout=30)
    x = rng.standard_normal((3, 4))
    x[1] = -9.0
    y = apply_fn(params, x, mask_constant=-9.0, connection=self.conn, timeout=30)
    np.testing.assert_array_equal(y[1], 0.0)

  def test_bad_requests(self):
    init_fn, apply_fn, _ = cnn()
    x = np.zeros((2, 6, 5, 2))
    _, params = init_fn(0, x.shape, connection=self.conn, timeout=30)
    (w, b), relu, flatten, dense = params
    with self.assertRaises(grpc.RpcError) as cm:
      apply_fn(((w[:2], b), relu, flatten, dense), x, connection=self.conn, timeout=30)
    self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
    self.assertIn('Conv', cm.exception.details())
    with self.assertRaises(grpc.RpcError) as cm:
      init_fn(0, (2, 6, 5), connection=self.conn, timeout=30)  # Wrong rank for NHWC.
    self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
    with self.assertRaises(grpc.RpcError) as cm:
      stax.Dense(1 << 20)[0](0, (2, 1 << 12), connection=self.conn, timeout=30)
    self.assertEqual(cm.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
    self.assertIn('parameters', cm.exception.details())
    # A wide hidden layer on many inputs: refused before anything is allocated.
    wide_init, wide_apply, _ = stax.serial(stax.Dense(1 << 15), stax.Relu(), stax.Dense(1))
    _, wide = wide_init(0, (1, 4), connection=self.conn, timeout=30)
    with self.assertRaises(grpc.RpcError) as cm:
      wide_apply(wide, np.zeros((40000, 4)), connection=self.conn, timeout=30)
    self.assertEqual(cm.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
    self.assertIn('memory budget', cm.exception.details())
    with self.assertRaises(grpc.RpcError) as cm:
      apply_fn(params, np.full(x.shape, np.inf), connection=self.conn, timeout=30)
    self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
    self.assertIn('x', cm.exception.details())


if __name__ == '__main__':
  unittest.main()
