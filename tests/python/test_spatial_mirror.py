"""Mirrored tiles of spatial kernels, assembled with KernelHeader.diagonal_spatial (tensors.TileAssembler).

With x2 = None the server sends each off-diagonal tile once (mirror = true); the client writes its
transpose at the mirrored position, swapping every (s, s') axis pair in the full-spatial layout and no
trailing axis in the diagonal one. The header says which layout it is, so shapes that are ambiguous, e.g.
(N, N, 3, 3) = 1-D full spatial or 2-D diagonal spatial with H = W, are mirrored right away.
"""

import unittest

import numpy as np

import server_fixture
from ntclient import _proto
from ntclient import stax
from ntclient import tensors

W1, B1, W2, B2 = 1.2, 0.3, 0.9, 0.1


def _relu(k12, k11, k22):
  """Arc-cosine (ReLU) nngp and Kdot for covariances k12 with variances k11 (rows), k22 (columns)."""
  norms = np.sqrt(k11 * k22)
  theta = np.arccos(np.clip(k12 / norms, -1.0, 1.0))
  return (norms * np.sin(theta) + (np.pi - theta) * k12) / (2 * np.pi), (np.pi - theta) / (2 * np.pi)


def reference(x, diagonal_spatial, get=('nngp', 'ntk')):
  """serial(Dense(., W1, B1), Relu(), Dense(1, W2, B2)) on x (N, *spatial, C), x2 = None; natural order."""
  n, spatial, c = x.shape[0], x.shape[1:-1], x.shape[-1]
  f = x.reshape(n, -1, c)
  q = np.einsum('apc,bqc->abpq', f, f) / c            # (N, N, P, P)
  k1 = W1 ** 2 * q + B1 ** 2
  var = np.einsum('aapp->ap', k1)                     # (N, P)
  k2, kdot = _relu(k1, var[:, None, :, None], var[None, :, None, :])
  nngp = W2 ** 2 * k2 + B2 ** 2
  ntk = nngp + W2 ** 2 * k1 * kdot
  out = {}
  for name, a in (('nngp', nngp), ('ntk', ntk)):
    if diagonal_spatial:
      a = np.einsum('abpp->abp', a).reshape((n, n) + spatial)
    else:
      a = a.reshape((n, n) + spatial + spatial)
      s = len(spatial)
      a = a.transpose([0, 1] + [i for d in range(s) for i in (2 + d, 2 + s + d)])
    out[name] = a
  return tuple(out[g] for g in get)


class SpatialMirrorServerTest(server_fixture.ServerTestCase):

  def _kernel_fn(self):
    return stax.serial(stax.Dense(16, W_std=W1, b_std=B1), stax.Relu(),
                       stax.Dense(1, W_std=W2, b_std=B2)).kernel_fn

  def test_layouts(self):
    rng = np.random.default_rng(11)
    cases = [
        ('1d_full', rng.standard_normal((7, 3, 2)), False, (7, 7, 3, 3)),
        ('2d_diagonal_square', rng.standard_normal((7, 3, 3, 2)), True, (7, 7, 3, 3)),  # Ambiguous shape.
        ('2d_full', rng.standard_normal((5, 3, 2, 2)), False, (5, 5, 3, 3, 2, 2)),
        ('2d_full_square', rng.standard_normal((5, 2, 2, 3)), False, (5, 5, 2, 2, 2, 2)),
        ('1d_diagonal', rng.standard_normal((6, 4, 3)), True, (6, 6, 4)),
    ]
    kernel_fn = self._kernel_fn()
    for name, x, diagonal_spatial, shape in cases:
      with self.subTest(case=name):
        responses = list(self.stub.ComputeKernel(
            stax.kernel_request(kernel_fn, x, None, ('nngp', 'ntk'), diagonal_spatial=diagonal_spatial,
                                tile_size=2), timeout=30))
        header = responses[0].header
        self.assertEqual(responses[0].WhichOneof('payload'), 'header')
        self.assertEqual(header.diagonal_spatial, diagonal_spatial)
        self.assertEqual(responses[-1].summary.diagonal_spatial, diagonal_spatial)
        self.assertTrue(any(r.tile.mirror for r in responses if r.WhichOneof('payload') == 'tile'))
        k = kernel_fn(x, None, ('nngp', 'ntk'), diagonal_spatial=diagonal_spatial, tile_size=2,
                      connection=self.conn, timeout=30)
        nngp, ntk = reference(x, diagonal_spatial)
        self.assertEqual(k.nngp.shape, shape)
        self.assertEqual(k.ntk.shape, shape)
        np.testing.assert_allclose(k.nngp, nngp, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(k.ntk, ntk, rtol=1e-7, atol=1e-14)  # arccos near cos = 1.

  def test_same_with_one_tile(self):
    # One tile (no mirroring at all) gives exactly what the mirrored assembly gives.
    x = np.random.default_rng(12).standard_normal((6, 3, 3, 2))
    kernel_fn = self._kernel_fn()
    for diagonal_spatial in (False, True):
      with self.subTest(diagonal_spatial=diagonal_spatial):
        tiled = kernel_fn(x, None, 'nngp', diagonal_spatial=diagonal_spatial, tile_size=2,
                          connection=self.conn, timeout=30)
        whole = kernel_fn(x, None, 'nngp', diagonal_spatial=diagonal_spatial, tile_size=6,
                          connection=self.conn, timeout=30)
        np.testing.assert_allclose(tiled, whole, rtol=1e-14, atol=0)


class HeaderDecidesMirrorTest(unittest.TestCase):
  """No server: the header alone decides the mirror transform; the summary comes too late to matter."""

  def _stream(self, a, tile, header_diagonal_spatial, summary_diagonal_spatial):
    svc = _proto.service_pb2
    info = svc.ArrayInfo(name='nngp', shape=a.shape, tiled_axes=2)
    tiles = [svc.KernelTile(name='nngp', row_offset=r, col_offset=c, mirror=c > r,
                            block=tensors.to_tensor(a[r:r + tile, c:c + tile]))
             for r in range(0, a.shape[0], tile) for c in range(r, a.shape[1], tile)]
    yield svc.KernelResponse(header=svc.KernelHeader(arrays=[info], dtype=_proto.DType.FLOAT64,
                                                     num_tiles=len(tiles),
                                                     diagonal_spatial=header_diagonal_spatial))
    for t in tiles:
      yield svc.KernelResponse(tile=t)
    yield svc.KernelResponse(summary=svc.KernelSummary(arrays=[info],
                                                       diagonal_spatial=summary_diagonal_spatial))

  def test_header_decides(self):
    f = np.random.default_rng(0).standard_normal((5, 3, 3, 2))
    full_1d = np.einsum('ahwc,bgwc->abhg', f, f)   # (N, N, H, H): swap the pair when mirroring.
    diag_2d = np.einsum('ahwc,bhwc->abhw', f, f)   # (N, N, H, W): no swap.
    for expected, diagonal_spatial in ((full_1d, False), (diag_2d, True)):
      with self.subTest(diagonal_spatial=diagonal_spatial):
        got = tensors.TileAssembler().consume(
            self._stream(expected, 2, diagonal_spatial, not diagonal_spatial))
        np.testing.assert_array_equal(got['nngp'], expected)

  def test_mirrors_before_the_summary(self):
    f = np.random.default_rng(1).standard_normal((4, 2, 3))
    full = np.einsum('ahc,bgc->abhg', f, f)
    assembler = tensors.TileAssembler()
    stream = list(self._stream(full, 2, False, False))
    with self.assertRaisesRegex(RuntimeError, 'without a summary'):
      assembler.consume(stream[:-1])
    np.testing.assert_array_equal(assembler.arrays['nngp'], full)


if __name__ == '__main__':
  unittest.main()
