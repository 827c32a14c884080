"""Tests of ntclient's JSON <-> Layer conversion, stax constructors and tile assembly (no server needed).

Run from the repository root after building (the stubs come from build/python, or NTCLIENT_PROTO_PATH):
  /usr/bin/python3 -m unittest discover -s tests/python
Golden cases: $NT_GOLDEN_DIR, default <repo>/../shared/golden/cases.
"""

import glob
import json
import os
import sys
import unittest

import numpy as np

_REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, os.path.join(_REPO, 'client', 'python'))

from ntclient import _proto  # pylint: disable=g-import-not-at-top,wrong-import-position
from ntclient import arch_json  # pylint: disable=g-import-not-at-top,wrong-import-position
from ntclient import stax  # pylint: disable=g-import-not-at-top,wrong-import-position
from ntclient import tensors  # pylint: disable=g-import-not-at-top,wrong-import-position

_GOLDEN_DIR = os.environ.get('NT_GOLDEN_DIR') or os.path.join(
    _REPO, '..', 'shared', 'golden', 'cases')

# Every layer of shared/seed/stax.txt, plus the combinators and the ready-made numerical activations.
_STAX_LAYERS = (
    'Aggregate AvgPool Conv ConvLocal ConvTranspose Dense DotGeneral Dropout FanInConcat FanInProd '
    'FanInSum FanOut Flatten GlobalAvgPool GlobalSelfAttention GlobalSumPool Identity ImageResize Index '
    'LayerNorm SumPool ABRelu Abs Cos Elementwise ElementwiseNumerical Erf Exp ExpNormalized Gabor '
    'Gaussian Gelu Hermite LeakyRelu Monomial Polynomial Rbf RectifiedMonomial Relu Sigmoid_like Sign Sin '
    'Tanh Softplus Swish serial parallel repeat').split()


def _round_trip(test, layer):
  """proto -> JSON (through text) -> proto must give the same proto and the same JSON."""
  as_json = arch_json.layer_to_json(layer)
  again = arch_json.layer_from_json(json.loads(json.dumps(as_json)))
  test.assertEqual(layer, again)
  test.assertEqual(as_json, arch_json.layer_to_json(again))


class GoldenArchitecturesTest(unittest.TestCase):

  def test_every_golden_architecture_round_trips(self):
    paths = sorted(glob.glob(os.path.join(_GOLDEN_DIR, '*.json')))
    self.assertTrue(paths, f'no golden cases in {_GOLDEN_DIR}')
    for path in paths:
      with self.subTest(case=os.path.basename(path)):
        with open(path, encoding='utf-8') as f:
          case = json.load(f)
        layer = arch_json.layer_from_json(case['architecture'])
        _round_trip(self, layer)
        self.assertEqual(layer, arch_json.load(path))  # A case file is accepted as a whole.


class ConversionTest(unittest.TestCase):

  def test_all_layers_present(self):
    self.assertCountEqual(arch_json.layer_names(), _STAX_LAYERS)
    for name in _STAX_LAYERS:
      self.assertTrue(callable(getattr(stax, name)), name)

  def test_unset_means_default(self):
    layer = arch_json.layer_from_json({'layer': 'Dense', 'args': {'out_dim': 4, 'b_std': None}})
    self.assertEqual(layer.dense.out_dim, 4)
    self.assertFalse(layer.dense.HasField('W_std'))
    self.assertFalse(layer.dense.HasField('b_std'))
    layer = arch_json.layer_from_json({'layer': 'Dense', 'args': {'out_dim': 4, 'b_std': 0.0}})
    self.assertTrue(layer.dense.HasField('b_std'))  # b_std=0 is not b_std=None.

  def test_argument_only_layer_kinds_are_set(self):
    for name in ('Relu', 'Identity', 'FanInSum', 'Sigmoid_like'):
      layer = arch_json.layer_from_json({'layer': name})
      self.assertIsNotNone(layer.WhichOneof('kind'), name)
      _round_trip(self, layer)

  def test_special_cases(self):
    layer = arch_json.layer_from_json({'layer': 'serial', 'layers': [
        {'layer': 'Conv', 'args': {'out_chan': 3, 'filter_shape': [2, 2], 'padding': 'circular',
                                   'dimension_numbers': ['NCHW', 'OIHW', 'NHWC']}},
        {'layer': 'LayerNorm', 'args': {'axis': -1}},
        {'layer': 'Aggregate', 'args': {'aggregate_axis': 1, 'implementation': 'sparse'}},
        {'layer': 'Aggregate', 'args': {'aggregate_axis': []}},
        {'layer': 'Aggregate', 'args': {'aggregate_axis': None}},
        {'layer': 'Index', 'args': {'idx': [{'slice': [None, 5, -1]}, 0, '...']}},
        {'layer': 'DotGeneral', 'args': {'rhs': {'shape': [2, 1], 'data': [1.5, 2.0]},
                                         'dimension_numbers': [[[1], [0]], [[], []]]}},
        {'layer': 'GlobalSelfAttention', 'args': {
            'n_chan_out': 4, 'n_chan_key': 4, 'n_chan_val': 4, 'n_heads': 2,
            'attention_mechanism': 'relu', 'pos_emb_type': 'CONCAT', 'pos_emb_decay_fn': 'exp(-d)'}},
        {'layer': 'Elementwise', 'args': {'fn': 'sin(x)', 'nngp_fn': 'cov12', 'd_nngp_fn': '1'}},
        {'layer': 'repeat', 'args': {'n': 2}, 'layers': [{'layer': 'Relu'}]},
    ]})
    sub = layer.serial.layers
    self.assertEqual(sub[0].conv.padding, _proto.architecture_pb2.CIRCULAR)
    self.assertEqual(sub[0].conv.dimension_numbers.rhs_spec, 'OIHW')
    self.assertEqual(list(sub[1].layer_norm.axis), [-1])
    self.assertEqual(list(sub[2].aggregate.aggregate_axis.axes), [1])
    self.assertEqual(sub[2].aggregate.implementation, _proto.architecture_pb2.SPARSE)
    self.assertTrue(sub[3].aggregate.HasField('aggregate_axis'))  # () aggregates no axes ...
    self.assertFalse(sub[4].aggregate.HasField('aggregate_axis'))  # ... None all spatial axes.
    idx = sub[5].index.idx
    self.assertFalse(idx[0].slice.HasField('start'))
    self.assertEqual((idx[0].slice.stop, idx[0].slice.step, idx[1].index), (5, -1, 0))
    self.assertTrue(idx[2].ellipsis)
    rhs = tensors.from_tensor(sub[6].dot_general.rhs)
    np.testing.assert_array_equal(rhs, [[1.5], [2.0]])
    self.assertEqual(list(sub[6].dot_general.dimension_numbers.lhs_contracting), [1])
    self.assertEqual(sub[7].global_self_attention.attention_mechanism, _proto.architecture_pb2.RELU)
    self.assertEqual(sub[9].repeat.n, 2)
    _round_trip(self, layer)

  def test_errors(self):
    cases = {
        'unknown layer': {'layer': 'MaxPool', 'args': {}},
        'unknown arg': {'layer': 'Dense', 'args': {'out_dim': 1, 'w_std': 1.0}},
        'bad enum': {'layer': 'AvgPool', 'args': {'window_shape': [2], 'padding': 'FULL'}},
        'bad type': {'layer': 'Dense', 'args': {'out_dim': 'wide'}},
        'non-integer int': {'layer': 'FanOut', 'args': {'num': 1.5}},
        'bad index item': {'layer': 'Index', 'args': {'idx': [{'slice': [0.5, None, None]}]}},
        'bad dimension numbers': {'layer': 'DotGeneral', 'args': {'dimension_numbers': [1, 2, 3]}},
        'repeat of two': {'layer': 'repeat', 'args': {'n': 1}, 'layers': [{'layer': 'Relu'}] * 2},
        'args on serial': {'layer': 'serial', 'args': {'n': 1}, 'layers': []},
        'layers on a layer': {'layer': 'Relu', 'layers': [{'layer': 'Relu'}]},
        'not a layer': {'args': {}},
    }
    for what, obj in cases.items():
      with self.subTest(what):
        with self.assertRaises(ValueError):
          arch_json.layer_from_json(obj)
    with self.assertRaisesRegex(ValueError, r"Dense.*'w_std'"):
      arch_json.layer_from_json(cases['unknown arg'])
    with self.assertRaisesRegex(ValueError, 'MaxPool'):
      arch_json.layer_from_json(cases['unknown layer'])


class StaxTest(unittest.TestCase):

  def test_triple_and_proto(self):
    init_fn, apply_fn, kernel_fn = stax.serial(
        stax.Dense(8, W_std=1.5, b_std=0.1), stax.Relu(),
        stax.parallel(stax.Identity(), stax.Erf(a=2.0)),
        stax.repeat(stax.Conv(4, (3,), padding=stax.Padding.SAME), 2),
        stax.Index(stax.Slice[:, 1:5:2, ...]),
        stax.DotGeneral(rhs=np.ones((2, 3)), dimension_numbers=(((1,), (0,)), ((), ()))),
        stax.LayerNorm(axis=(-1,)), stax.Flatten(), stax.Dense(1, s=(1, 2)))
    layer = kernel_fn.layer_proto
    self.assertEqual(len(layer.serial.layers), 9)
    dense = layer.serial.layers[0].dense
    self.assertEqual((dense.out_dim, dense.W_std, dense.b_std), (8, 1.5, 0.1))
    self.assertFalse(dense.HasField('parameterization'))  # Not passed: the server's default.
    self.assertEqual(layer.serial.layers[3].repeat.layer.conv.padding, _proto.architecture_pb2.SAME)
    idx = layer.serial.layers[4].index.idx
    self.assertEqual([i.WhichOneof('item') for i in idx], ['slice', 'slice', 'ellipsis'])
    _round_trip(self, layer)
    self.assertEqual(stax.from_json(stax.to_json(kernel_fn)).layer_proto, layer)
    # init_fn / apply_fn carry the same architecture (they run on the server: test_finite_network.py).
    self.assertEqual(init_fn.layer_proto, layer)
    self.assertEqual(apply_fn.layer_proto, layer)
    with self.assertRaisesRegex(TypeError, 'rng'):
      init_fn(None, (1, 2))

  def test_constructor_errors(self):
    with self.assertRaises(TypeError):
      stax.Dense()  # out_dim is required, as upstream.
    with self.assertRaises(TypeError):
      stax.Elementwise(fn=np.sin, nngp_fn=lambda c, v1, v2: c)  # Callables cannot cross the wire.
    with self.assertRaises(ValueError):
      stax.Conv(4, (3,), padding='FULL')


class TileAssemblerTest(unittest.TestCase):
  """Mirrored tiles of symmetric kernels (x2 = None) in the FC and spatial layouts, and malformed streams."""

  def _stream(self, arrays, tile, diagonal_spatial, num_tiles=None):
    svc = _proto.service_pb2
    infos = [svc.ArrayInfo(name=n, shape=a.shape, tiled_axes=t) for n, (a, t) in arrays.items()]
    tiles = []
    for name, (a, tiled) in arrays.items():
      for r in range(0, a.shape[0], tile):
        if tiled == 1:
          tiles.append(svc.KernelTile(name=name, row_offset=r, block=tensors.to_tensor(a[r:r + tile])))
          continue
        for c in range(r, a.shape[1], tile):  # Upper triangle only; the rest is mirrored.
          tiles.append(svc.KernelTile(name=name, row_offset=r, col_offset=c, mirror=c > r,
                                      block=tensors.to_tensor(a[r:r + tile, c:c + tile])))
    yield svc.KernelResponse(header=svc.KernelHeader(
        arrays=infos, dtype=_proto.DType.FLOAT64, diagonal_spatial=diagonal_spatial,
        num_tiles=len(tiles) if num_tiles is None else num_tiles))
    for t in tiles:
      yield svc.KernelResponse(tile=t)
    yield svc.KernelResponse(summary=svc.KernelSummary(arrays=infos, diagonal_spatial=diagonal_spatial))

  def test_mirror(self):
    rng = np.random.default_rng(0)
    f = rng.standard_normal((7, 3, 4, 2))  # (N, H, W, C)
    full = np.einsum('ahwc,bgvc->abhgwv', f, f)   # (N, N, H, H, W, W)
    fc = np.einsum('ahwc,bhwc->ab', f, f)
    one_d = np.einsum('ahwc,bgwc->abhg', f, f)    # (N, N, H, H): ambiguous with diagonal 2-D.
    diag = np.einsum('ahwc,bhwc->abhw', f[:, :, :3], f[:, :, :3])  # (N, N, 3, 3) diagonal.
    diag_1d = np.einsum('ahwc,bhwc->abh', f, f)   # (N, N, H)
    for arrays, diagonal_spatial in [
        ({'nngp': (fc, 2), 'cov1': (np.diag(fc).copy(), 1)}, False),
        ({'nngp': (full, 2)}, False), ({'nngp': (one_d, 2)}, False), ({'nngp': (diag, 2)}, True),
        ({'nngp': (diag_1d, 2)}, True)]:
      with self.subTest(shape=arrays['nngp'][0].shape, diagonal_spatial=diagonal_spatial):
        got = tensors.TileAssembler().consume(self._stream(arrays, 3, diagonal_spatial))
        for name, (expected, _) in arrays.items():
          np.testing.assert_array_equal(got[name], expected)

  def test_malformed_streams(self):
    fc = np.arange(16.0).reshape(4, 4)
    fc = fc + fc.T
    with self.assertRaisesRegex(RuntimeError, '3 tiles, the header announced 4'):
      tensors.TileAssembler().consume(self._stream({'nngp': (fc, 2)}, 2, False, num_tiles=4))
    stream = list(self._stream({'nngp': (fc, 2)}, 2, False))
    stream[1].tile.name = 'ntk'
    with self.assertRaisesRegex(RuntimeError, "unannounced array 'ntk'"):
      tensors.TileAssembler().consume(stream)
    stream = list(self._stream({'cov1': (np.diag(fc).copy(), 1)}, 2, False))
    stream[1].tile.mirror = True
    with self.assertRaisesRegex(RuntimeError, 'mirrored tile of .cov1., which has 1 tiled axes'):
      tensors.TileAssembler().consume(stream)
    # (N, N, 3, 2) has no (s, s') pairs, so it cannot be mirrored in the full-spatial layout.
    odd = np.zeros((4, 4, 3, 2))
    with self.assertRaisesRegex(RuntimeError, 'no .s, s.. axis pairs'):
      tensors.TileAssembler().consume(self._stream({'nngp': (odd, 2)}, 2, False))
    stream = list(self._stream({'nngp': (fc, 2)}, 2, False))
    with self.assertRaisesRegex(RuntimeError, 'without a summary'):
      tensors.TileAssembler().consume(stream[:-1])


if __name__ == '__main__':
  unittest.main()
