"""A large streamed kernel (4096 x 4096 NNGP + NTK, x2 = None: mirrored tiles) and float32 output.

The reference is the closed-form arc-cosine kernel of serial(Dense(512), Relu(), Dense(1)), W_std = 1, no
bias, NTK parameterisation:
  q = x x^T / d                                   (Dense: nngp; its NTK is q too, the input NTK being 0)
  theta = arccos(q12 / sqrt(q11 q22))
  K_relu = (sqrt(q11 q22 - q12^2) + (pi - theta) q12) / (2 pi),   Kdot_relu = (pi - theta) / (2 pi)
  nngp = K_relu                                   (last Dense, W_std = 1)
  ntk  = K_relu + q * Kdot_relu                   (Theta = K + W^2 * Theta_prev * Kdot)
"""

import sys
import time
import unittest

import numpy as np

import server_fixture
from ntclient import stax

N, D = 4096, 64


def relu_net_kernels(x1, x2, diag1=None, diag2=None):
  """Closed-form nngp and ntk of serial(Dense(.), Relu(), Dense(1)) between the rows of x1 and x2."""
  d = x1.shape[1]
  q12 = x1 @ x2.T / d
  q11 = np.sum(x1 * x1, axis=1) / d if diag1 is None else diag1
  q22 = np.sum(x2 * x2, axis=1) / d if diag2 is None else diag2
  norms = np.sqrt(np.outer(q11, q22))
  cos = np.clip(q12 / norms, -1.0, 1.0)
  theta = np.arccos(cos)
  k_relu = (norms * np.sin(theta) + (np.pi - theta) * q12) / (2 * np.pi)
  kdot = (np.pi - theta) / (2 * np.pi)
  return k_relu, k_relu + q12 * kdot


class StreamLargeTest(server_fixture.ServerTestCase):

  def test_4096_nngp_ntk_streamed(self):
    rng = np.random.default_rng(42)
    x = rng.standard_normal((N, D))
    _, _, kernel_fn = stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(1))
    described = kernel_fn.describe(x.shape, None, ('nngp', 'ntk'), connection=self.conn, timeout=30)
    start = time.monotonic()
    k = kernel_fn(x, None, ('nngp', 'ntk'), connection=self.conn, timeout=300)
    elapsed = time.monotonic() - start
    print(f'\n[stream_large] {N} x {N} nngp + ntk: {elapsed:.2f} s, {described.num_tiles} tiles of '
          f'{described.tile_size} (Describe), {2 * N * N * 8 / 2**20:.0f} MiB received',
          file=sys.stderr)

    self.assertEqual(k._fields, ('nngp', 'ntk'))
    for name in k._fields:
      a = getattr(k, name)
      with self.subTest(array=name):
        self.assertEqual(a.shape, (N, N))
        self.assertEqual(a.dtype, np.float64)
        self.assertTrue(np.all(np.isfinite(a)), f'{name} has non-finite entries')
        # Off-diagonal tiles are sent once and mirrored by the client; diagonal tiles are computed whole.
        np.testing.assert_allclose(a, a.T, rtol=1e-13, atol=0)
        self.assertTrue(np.all(np.diag(a) > 0))

    # Spot checks: a few single entries (corners, tile boundaries, both triangles), then whole rows.
    tile = described.tile_size
    entries = [(0, 0), (0, N - 1), (N - 1, 0), (N - 1, N - 1), (tile - 1, tile), (tile, tile - 1),
               (17, 3001), (3001, 17), (2048, 2048), (1234, 4000)]
    # The NTK's Kdot = (pi - theta) / (2 pi) is ill-conditioned where cos(theta) = 1 (x against itself):
    # one rounding of q12 moves theta by ~sqrt(2 * 2^-52) ~ 2e-8, on the server and in numpy alike, so the
    # NTK is compared to 1e-8 relative (the golden cases' tolerance is 1e-6); the NNGP is flat there.
    rows, cols = np.array(entries).T
    nngp_ref, ntk_ref = relu_net_kernels(x[rows], x[cols])
    np.testing.assert_allclose(k.nngp[rows, cols], np.diag(nngp_ref), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(k.ntk[rows, cols], np.diag(ntk_ref), rtol=1e-8, atol=1e-14)
    q = np.sum(x * x, axis=1) / D  # Diagonal: theta = 0, nngp = q / 2, ntk = q / 2 + q / 2.
    np.testing.assert_allclose(np.diag(k.nngp), q / 2, rtol=1e-12)
    np.testing.assert_allclose(np.diag(k.ntk), q, rtol=1e-8)
    rows = np.sort(rng.choice(N, size=24, replace=False))
    nngp_ref, ntk_ref = relu_net_kernels(x[rows], x)
    np.testing.assert_allclose(k.nngp[rows], nngp_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(k.ntk[rows], ntk_ref, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(k.nngp[:, rows], nngp_ref.T, rtol=1e-12, atol=1e-14)
    off = np.ones(ntk_ref.shape, dtype=bool)
    off[np.arange(len(rows)), rows] = False  # Away from the diagonal the NTK is well-conditioned.
    np.testing.assert_allclose(k.ntk[rows][off], ntk_ref[off], rtol=1e-11, atol=1e-14)

  def test_float32_output(self):
    rng = np.random.default_rng(7)
    x1, x2 = rng.standard_normal((9, 5)), rng.standard_normal((6, 5))
    _, _, kernel_fn = stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(1))
    get = ('nngp', 'ntk', 'cov1', 'cov2')
    k32 = kernel_fn(x1, x2, get, output_dtype='float32', tile_size=4, connection=self.conn, timeout=30)
    k64 = kernel_fn(x1, x2, get, tile_size=4, connection=self.conn, timeout=30)
    nngp_ref, ntk_ref = relu_net_kernels(x1, x2)
    for name in get:
      a32, a64 = getattr(k32, name), getattr(k64, name)
      with self.subTest(array=name):
        self.assertEqual(a32.dtype, np.float32)
        self.assertEqual(a64.dtype, np.float64)
        self.assertEqual(a32.shape, a64.shape)
        # Computed in float64, rounded once to float32.
        np.testing.assert_array_equal(a32, a64.astype(np.float32))
    np.testing.assert_allclose(k64.nngp, nngp_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(k64.ntk, ntk_ref, rtol=1e-11, atol=1e-14)  # x1 != x2: no cos = 1.
    np.testing.assert_allclose(k64.cov1, np.diag(relu_net_kernels(x1, x1)[0]), rtol=1e-12)
    np.testing.assert_allclose(k64.cov2, np.diag(relu_net_kernels(x2, x2)[0]), rtol=1e-12)
    # x2 = None in float32: mirrored tiles are float32 too.
    sym = kernel_fn(x1, None, 'ntk', output_dtype=np.float32, tile_size=2, connection=self.conn, timeout=30)
    self.assertEqual(sym.dtype, np.float32)
    np.testing.assert_array_equal(sym, sym.T)
    np.testing.assert_allclose(sym, relu_net_kernels(x1, x1)[1], rtol=1e-6)


if __name__ == '__main__':
  unittest.main()
