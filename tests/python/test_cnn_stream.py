"""A CNN kernel with global average pooling (full spatial covariance) of 64 inputs of shape 32x32x3,
streamed from a live server into numpy, checked entry by entry against an independent numpy evaluation
of the same recursion (linear.md 5.3 and 5.5, elementwise.md's Relu):

  input      T[h, h', w, w'] = x1[h, w, :] . x2[h', w', :] / C
  Conv 3x3   T'[h, h', w, w'] = W^2 / 9 sum_{a, b} T[h + a, h' + a, w + b, w' + b] + b^2  (zero padded)
             ntk' = W^2 / 9 sum_{a, b} (ntk + T)[...] + b^2
  Relu       arc-cosine map with the variances on the spatial diagonal
  GAP        mean over h, h', w, w'
"""

import sys
import time
import unittest

import numpy as np

import server_fixture
from ntclient import stax

N, S, C = 64, 32, 3
W_STD, B_STD = 1.5, 0.1


def conv_same_3x3(t):
  """Shared 3x3 SAME convolution of a full-layout kernel t (H, H', W, W'), filter-averaged."""
  h, w = t.shape[0], t.shape[2]
  p = np.pad(t, 1)
  out = np.zeros_like(t)
  for a in range(3):
    for b in range(3):
      out += p[a:a + h, a:a + h, b:b + w, b:b + w]
  return out / 9


def relu_map(q12, q11, q22):
  norms = np.sqrt(q11 * q22)
  cos = np.clip(q12 / norms, -1.0, 1.0)
  theta = np.arccos(cos)
  k = (norms * np.sin(theta) + (np.pi - theta) * q12) / (2 * np.pi)
  kdot = (np.pi - theta) / (2 * np.pi)
  return k, kdot


def reference_entry(xi, xj):
  """nngp and ntk of serial(Conv, Relu, Conv, Relu, GlobalAvgPool) between two inputs (S, S, C)."""
  def gram(a, b):
    return np.einsum('hwc,gvc->hgwv', a, b) / C
  t12, t11, t22 = gram(xi, xj), gram(xi, xi), gram(xj, xj)
  ntk = np.zeros_like(t12)
  for _ in range(2):
    ntk = W_STD**2 * conv_same_3x3(ntk + t12) + B_STD**2
    t12, t11, t22 = [W_STD**2 * conv_same_3x3(t) + B_STD**2 for t in (t12, t11, t22)]
    d11 = np.einsum('hhww->hw', t11)
    d22 = np.einsum('hhww->hw', t22)
    q11 = d11[:, None, :, None]
    q22 = d22[None, :, None, :]
    k12, kdot = relu_map(t12, q11, q22)
    ntk = ntk * kdot
    t12 = k12
    t11 = relu_map(t11, d11[:, None, :, None], d11[None, :, None, :])[0]
    t22 = relu_map(t22, d22[:, None, :, None], d22[None, :, None, :])[0]
  return t12.mean(), ntk.mean()


class CnnStreamTest(server_fixture.ServerTestCase):

  def test_cnn_global_avg_pool_64_inputs(self):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, S, S, C))
    _, _, kernel_fn = stax.serial(
        stax.Conv(16, (3, 3), padding='SAME', W_std=W_STD, b_std=B_STD), stax.Relu(),
        stax.Conv(16, (3, 3), padding='SAME', W_std=W_STD, b_std=B_STD), stax.Relu(),
        stax.GlobalAvgPool())
    described = kernel_fn.describe(x.shape, None, ('nngp', 'ntk'), connection=self.conn, timeout=30)
    start = time.monotonic()
    k = kernel_fn(x, None, ('nngp', 'ntk'), connection=self.conn, timeout=600)
    elapsed = time.monotonic() - start
    print(f'\n[cnn_stream] {N} inputs of {S}x{S}x{C}, Conv-Relu x2 + GlobalAvgPool, nngp + ntk: '
          f'{elapsed:.1f} s, {described.num_tiles} tiles of {described.tile_size} ({described.layout})',
          file=sys.stderr)
    for name in ('nngp', 'ntk'):
      a = getattr(k, name)
      self.assertEqual(a.shape, (N, N))
      self.assertTrue(np.all(np.isfinite(a)))
      np.testing.assert_allclose(a, a.T, rtol=1e-13, atol=0)
    for i, j in [(0, 0), (0, 63), (63, 0), (17, 42), (40, 40)]:
      nngp, ntk = reference_entry(x[i], x[j])
      with self.subTest(entry=(i, j)):
        np.testing.assert_allclose(k.nngp[i, j], nngp, rtol=1e-10)
        np.testing.assert_allclose(k.ntk[i, j], ntk, rtol=1e-8)


if __name__ == '__main__':
  unittest.main()
