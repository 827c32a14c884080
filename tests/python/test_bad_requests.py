"""A catalogue of bad requests against a live nt-server: exact status codes and messages naming the culprit.

Requests are built with the raw stubs (nt.v1.service_pb2 / service_pb2_grpc) so that the client cannot
validate them first; a few go through ntclient. After the catalogue the server must still be healthy and
compute a Dense-only kernel that matches numpy.
"""

import math
import re
import time
import unittest

import grpc
import numpy as np

import server_fixture
from ntclient import _proto
from ntclient import arch_json
from ntclient import stax
from ntclient import tensors

svc = _proto.service_pb2
DType = _proto.DType
INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNIMPLEMENTED = grpc.StatusCode.UNIMPLEMENTED
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED

_CANCELLED_LOG = r'ComputeKernel cancelled by the client after \d+ tiles'
_X = np.random.default_rng(0).standard_normal((4, 3))


def _layer(obj):
  return arch_json.layer_from_json(obj)


def _good_arch():
  return _layer({'layer': 'serial', 'layers': [
      {'layer': 'Dense', 'args': {'out_dim': 8}}, {'layer': 'Relu'},
      {'layer': 'Dense', 'args': {'out_dim': 1}}]})


def _tensor(a):
  return a if isinstance(a, _proto.Tensor) else tensors.to_tensor(a)


def _request(arch='good', x1=_X, x2=None, **kwargs):
  """A KernelRequest; arch / x1 = None leave the field unset."""
  r = svc.KernelRequest(**kwargs)
  if arch is not None:
    r.architecture.CopyFrom(_good_arch() if arch == 'good' else arch)
  if x1 is not None:
    r.x1.CopyFrom(_tensor(x1))
  if x2 is not None:
    r.x2.CopyFrom(_tensor(x2))
  return r


def _describe(arch='good', x1_shape=(4, 3), **kwargs):
  r = svc.DescribeRequest(x1_shape=list(x1_shape), **kwargs)
  if arch is not None:
    r.architecture.CopyFrom(_good_arch() if arch == 'good' else arch)
  return r


def _with(x, index, value):
  x = np.array(x, dtype=np.float64)
  x[index] = value
  return x


def _serial(*layers):
  return _layer({'layer': 'serial', 'layers': list(layers)})


def _dense_without_out_dim():
  layer = _proto.Layer()
  layer.dense.W_std = 1.5
  return layer


def _dense_w_std_nan():
  layer = _layer({'layer': 'Dense', 'args': {'out_dim': 3}})
  layer.dense.W_std = math.nan
  return layer


def _abrelu_without_a():
  layer = _proto.Layer()
  layer.ab_relu.b = 1.0
  return _serial({'layer': 'Dense', 'args': {'out_dim': 4}}, arch_json.layer_to_json(layer))


def _leaky_relu_without_alpha():
  layer = _proto.Layer()
  layer.leaky_relu.do_stabilize = True
  return _serial({'layer': 'Dense', 'args': {'out_dim': 4}}, arch_json.layer_to_json(layer))


def _repeat_without_n():
  layer = _proto.Layer()
  layer.repeat.layer.CopyFrom(_layer({'layer': 'Dense', 'args': {'out_dim': 4}}))
  return layer


def _layer_with_empty_child():
  layer = _proto.Layer()
  layer.serial.layers.add().CopyFrom(_layer({'layer': 'Dense', 'args': {'out_dim': 4}}))
  layer.serial.layers.add()  # No kind set.
  return layer


_DENSE4 = {'layer': 'Dense', 'args': {'out_dim': 4}}


def _polynomial_with_nan():
  # Built on the proto: the JSON converter already refuses NaN, the server must refuse it too.
  layer = _proto.Layer()
  layer.serial.layers.add().CopyFrom(_layer(_DENSE4))
  layer.serial.layers.add().polynomial.coef.extend([1.0, float('nan')])
  return layer


def _after_dense(layer):
  return _request(_serial(_DENSE4, layer))

# (name, rpc, request factory, status code, substrings the message must contain).
CATALOGUE = [
    ('missing_architecture', 'kernel', lambda: _request(arch=None), INVALID, ['architecture', 'required']),
    ('missing_x1', 'kernel', lambda: _request(x1=None), INVALID, ['x1', 'required']),
    ('layer_without_kind', 'kernel', lambda: _request(_proto.Layer()), INVALID,
     ['architecture', 'no kind']),
    ('nested_layer_without_kind', 'kernel', lambda: _request(_layer_with_empty_child()), INVALID,
     ['architecture.layers[1]', 'no kind']),
    ('dense_without_out_dim', 'kernel', lambda: _request(_dense_without_out_dim()), INVALID,
     ['Dense', 'out_dim', 'required']),
    ('dense_out_dim_zero', 'kernel',
     lambda: _request(_layer({'layer': 'Dense', 'args': {'out_dim': 0}})), INVALID,
     ['Dense', 'out_dim', 'got 0']),
    ('dense_out_dim_negative', 'kernel',
     lambda: _request(_layer({'layer': 'Dense', 'args': {'out_dim': -3}})), INVALID,
     ['Dense', 'out_dim', '-3']),
    ('dense_parameterization_bogus', 'kernel',
     lambda: _request(_layer({'layer': 'Dense', 'args': {'out_dim': 3, 'parameterization': 'bogus'}})),
     INVALID, ['Dense', 'parameterization', 'bogus']),
    ('dense_W_std_nan', 'kernel', lambda: _request(_dense_w_std_nan()), INVALID, ['Dense', 'W_std', 'finite']),
    ('abrelu_without_a', 'kernel', lambda: _request(_abrelu_without_a()), INVALID,
     ['architecture.layers[1]', 'ABRelu', '.a:', 'required']),
    ('leaky_relu_without_alpha', 'kernel', lambda: _request(_leaky_relu_without_alpha()), INVALID,
     ['LeakyRelu', 'alpha', 'required']),
    ('fanout_num_zero', 'kernel',
     lambda: _request(_serial({'layer': 'FanOut', 'args': {'num': 0}}, {'layer': 'FanInSum'})), INVALID,
     ['FanOut', 'num', 'got 0']),
    ('repeat_without_n', 'kernel', lambda: _request(_repeat_without_n()), INVALID, ['repeat', '.n:', 'required']),
    ('repeat_negative_n', 'kernel',
     lambda: _request(_layer({'layer': 'repeat', 'args': {'n': -1}, 'layers': [_DENSE4]})), INVALID,
     ['repeat', '.n:', '-1']),
    ('parallel_without_branches', 'kernel', lambda: _request(_layer({'layer': 'parallel', 'layers': []})),
     INVALID, ['parallel', 'branch']),
    ('parallel_wrong_arity', 'kernel',
     lambda: _request(_serial({'layer': 'FanOut', 'args': {'num': 3}},
                              {'layer': 'parallel', 'layers': [_DENSE4, _DENSE4]}, {'layer': 'FanInSum'})),
     INVALID, ['parallel', '2 branches', '3']),
    ('fanin_without_fanout', 'kernel', lambda: _request(_serial(_DENSE4, {'layer': 'FanInSum'})), INVALID,
     ['FanInSum', 'list of inputs']),
    ('fanout_without_fanin', 'kernel',
     lambda: _request(_serial(_DENSE4, {'layer': 'FanOut', 'args': {'num': 2}})), UNIMPLEMENTED,
     ['list of 2 outputs', 'FanIn']),
    ('activation_first', 'kernel', lambda: _request(_serial({'layer': 'Relu'}, _DENSE4)), INVALID,
     ['Relu', 'Gaussian']),
    ('nan_in_x1', 'kernel', lambda: _request(x1=_with(_X, (1, 2), np.nan)), INVALID,
     ['x1', 'non-finite', 'nan', 'index 5']),
    ('inf_in_x2', 'kernel', lambda: _request(x2=_with(_X[:2], (0, 0), -np.inf)), INVALID,
     ['x2', 'non-finite', 'inf']),
    ('x1_rank_1', 'kernel', lambda: _request(x1=np.ones(3)), INVALID, ['x1', '(3,)']),
    ('x2_feature_size_mismatch', 'kernel', lambda: _request(x2=np.ones((2, 5))), INVALID,
     ['x2', '(2, 5)', '(4, 3)', 'axis 1']),
    ('x2_rank_mismatch', 'kernel', lambda: _request(x2=np.ones((2, 3, 1))), INVALID, ['x2', 'rank 3']),
    ('tensor_bytes_mismatch', 'kernel',
     lambda: _request(x1=_proto.Tensor(shape=[4, 3], dtype=DType.FLOAT64, data=b'\0' * 88)), INVALID,
     ['x1.data', '88 bytes', '96']),
    ('float32_bytes_mismatch', 'kernel',
     lambda: _request(x2=_proto.Tensor(shape=[2, 3], dtype=DType.FLOAT32, data=b'\0' * 48)), INVALID,
     ['x2.data', '48 bytes', 'FLOAT32', '24']),
    ('x1_dtype_bool', 'kernel',
     lambda: _request(x1=_proto.Tensor(shape=[2, 2], dtype=DType.BOOL, data=b'\1\0\1\1')), INVALID,
     ['x1.dtype', 'BOOL']),
    ('x2_dtype_int64', 'kernel',
     lambda: _request(x2=_proto.Tensor(shape=[1, 3], dtype=DType.INT64, data=b'\0' * 24)), INVALID,
     ['x2.dtype', 'INT64']),
    ('negative_dim', 'kernel',
     lambda: _request(x1=_proto.Tensor(shape=[-2, 3], dtype=DType.FLOAT64, data=b'')), INVALID,
     ['x1.shape', 'negative', '(-2, 3)']),
    ('empty_batch', 'kernel',
     lambda: _request(x1=_proto.Tensor(shape=[0, 3], dtype=DType.FLOAT64, data=b'')), INVALID,
     ['x1', 'batch is empty']),
    ('get_unknown_name', 'kernel', lambda: _request(get=['nngp', 'foo']), INVALID, ['get', "'foo'"]),
    ('get_duplicate', 'kernel', lambda: _request(get=['nngp', 'NNGP']), INVALID, ['get', 'nngp', 'twice']),
    ('get_empty_name', 'kernel', lambda: _request(get=['']), INVALID, ['get', 'empty']),
    ('output_dtype_bool', 'kernel', lambda: _request(output_dtype=DType.BOOL), INVALID, ['output_dtype']),
    ('negative_tile_size', 'kernel', lambda: _request(tile_size=-1), INVALID, ['tile_size', '>= 0']),
    ('attention_softmax_without_linear_scaling', 'kernel',
     lambda: _request(_layer({'layer': 'GlobalSelfAttention',
                              'args': {'n_chan_out': 4, 'n_chan_key': 4, 'n_chan_val': 4, 'n_heads': 1,
                                       'linear_scaling': False}}),
                      x1=np.ones((2, 5, 3))),
     UNIMPLEMENTED, ['GlobalSelfAttention', 'linear_scaling']),
    ('conv_filter_zero', 'kernel',
     lambda: _request(_layer({'layer': 'Conv', 'args': {'out_chan': 4, 'filter_shape': [0]}}),
                      x1=np.ones((2, 5, 3))),
     INVALID, ['architecture (Conv)', 'filter_shape', 'got 0']),
    ('conv_filter_exceeds_valid_input', 'kernel',
     lambda: _request(_layer({'layer': 'Conv', 'args': {'out_chan': 4, 'filter_shape': [9]}}),
                      x1=np.ones((2, 5, 3))),
     INVALID, ['Conv', 'filter_shape', '9', 'VALID']),
    ('conv_strides_length', 'kernel',
     lambda: _request(_layer({'layer': 'Conv', 'args': {'out_chan': 4, 'filter_shape': [3], 'strides': [1, 1]}}),
                      x1=np.ones((2, 5, 3))),
     INVALID, ['Conv', 'strides', 'one entry per filter dimension']),
    ('conv_transpose_rank_mismatch', 'kernel',
     lambda: _request(_layer({'layer': 'ConvTranspose', 'args': {'out_chan': 4, 'filter_shape': [3, 3]}}),
                      x1=np.ones((2, 5, 3))),
     INVALID, ['x1', 'channel_axis 3', 'rank 3']),
    ('avgpool_window_zero', 'kernel',
     lambda: _request(_serial({'layer': 'Conv', 'args': {'out_chan': 4, 'filter_shape': [3]}},
                              {'layer': 'AvgPool', 'args': {'window_shape': [0]}}), x1=np.ones((2, 5, 3))),
     INVALID, ['layers[1] (AvgPool)', 'window_shape']),
    ('index_channel_axis', 'kernel',
     lambda: _request(_serial({'layer': 'Conv', 'args': {'out_chan': 4, 'filter_shape': [3]}},
                              {'layer': 'Index', 'args': {'idx': ['...', 0]}}), x1=np.ones((2, 5, 3))),
     UNIMPLEMENTED, ['Index', 'channel']),
    ('resize_cubic_kernel', 'kernel',
     lambda: _request(_serial({'layer': 'Conv', 'args': {'out_chan': 4, 'filter_shape': [3]}},
                              {'layer': 'ImageResize', 'args': {'shape': [-1, 6, -1], 'method': 'cubic'}}),
                      x1=np.ones((2, 5, 3))),
     UNIMPLEMENTED, ['ImageResize', 'cubic']),
    ('pooling_readout_with_diagonal_spatial', 'kernel',
     lambda: _request(_serial({'layer': 'Conv', 'args': {'out_chan': 4, 'filter_shape': [3]}}, {'layer': 'Relu'},
                              {'layer': 'GlobalAvgPool'}), x1=np.ones((2, 5, 3)), diagonal_spatial=True),
     INVALID, ['diagonal_spatial']),
    ('flatten_batch_axis_out', 'kernel',
     lambda: _request(_serial({'layer': 'Flatten', 'args': {'batch_axis_out': 3}}, _DENSE4), x1=np.ones((2, 5, 3))),
     INVALID, ['Flatten', 'batch_axis_out']),
    ('aggregate_to_dense_expression', 'kernel',
     lambda: _request(_serial(_DENSE4, {'layer': 'Relu'}, {'layer': 'Aggregate', 'args': {'to_dense': '2 * p'}},
                              _DENSE4)),
     UNIMPLEMENTED, ['architecture.layers[2]', 'Aggregate', 'to_dense']),
    ('aggregate_pattern_batch', 'kernel', lambda: _request(pattern1=tensors.to_tensor(np.ones((3, 1, 1)))),
     INVALID, ['pattern1', 'one leading entry per sample of x1 (4)']),
    ('aggregate_pattern2_without_x2', 'kernel',
     lambda: _request(pattern1=tensors.to_tensor(np.ones((4, 1, 1))), pattern2=tensors.to_tensor(np.zeros((4, 1, 1)))),
     INVALID, ['pattern2', 'differs from pattern1 without x2']),
    ('aggregate_pattern_shape', 'kernel',
     lambda: _request(_serial({'layer': 'Conv', 'args': {'out_chan': 4, 'filter_shape': [3]}},
                              {'layer': 'Aggregate'}), x1=np.ones((2, 5, 3)),
                      pattern1=tensors.to_tensor(np.ones((2, 4, 4)))),
     INVALID, ['Aggregate', 'pattern1', '(batch, 3, 3)', '(batch, 4, 4)']),
    ('dot_general_channel_contracted', 'kernel',
     lambda: _request(_serial(_DENSE4, {'layer': 'DotGeneral', 'args': {
         'rhs': {'shape': [4], 'data': [1, 2, 3, 4]}, 'dimension_numbers': [[[1], [0]], [[], []]]}})),
     INVALID, ['DotGeneral', 'channel axis']),
    ('monomial_negative_degree', 'kernel', lambda: _after_dense({'layer': 'Monomial', 'args': {'degree': -1}}),
     INVALID, ['layers[1] (Monomial)', 'degree', '-1']),
    ('hermite_negative_degree', 'kernel', lambda: _after_dense({'layer': 'Hermite', 'args': {'degree': -2}}),
     INVALID, ['layers[1] (Hermite)', 'degree', '-2']),
    ('polynomial_nan_coefficient', 'kernel', lambda: _request(_polynomial_with_nan()), INVALID,
     ['Polynomial', 'coef']),
    ('sin_infinite_a', 'kernel', lambda: _after_dense({'layer': 'Sin', 'args': {'a': 'inf'}}), INVALID,
     ['Sin', '.a:', 'finite']),
    ('expression_does_not_parse', 'kernel',
     lambda: _after_dense({'layer': 'ElementwiseNumerical', 'args': {'fn': 'sin(x', 'deg': 8}}), INVALID,
     ['ElementwiseNumerical', '.fn:', 'sin(x']),
    ('expression_unknown_variable', 'kernel',
     lambda: _after_dense({'layer': 'Elementwise', 'args': {'fn': 'x', 'nngp_fn': 'cov13'}}), INVALID,
     ['Elementwise', 'nngp_fn', 'cov13', 'cov12, var1, var2']),
    ('quadrature_degree_zero', 'kernel',
     lambda: _after_dense({'layer': 'ElementwiseNumerical', 'args': {'fn': 'sin(x)', 'deg': 0}}), INVALID,
     ['ElementwiseNumerical', 'deg', 'got 0']),
    ('tanh_degree_zero', 'kernel', lambda: _after_dense({'layer': 'Tanh', 'args': {'deg': 0}}), INVALID,
     ['Tanh', 'deg', 'got 0']),
    ('describe_missing_architecture', 'describe', lambda: _describe(arch=None), INVALID, ['architecture']),
    ('describe_empty_x1_shape', 'describe', lambda: _describe(x1_shape=()), INVALID, ['x1_shape', 'required']),
    ('describe_negative_dim', 'describe', lambda: _describe(x1_shape=(3, -1)), INVALID,
     ['x1_shape', 'positive', '(3, -1)']),
    ('describe_zero_dim_x2', 'describe', lambda: _describe(x2_shape=[0, 3]), INVALID,
     ['x2_shape', 'positive']),
    ('describe_batch_contraction', 'describe',
     lambda: _describe(_serial(_DENSE4, {'layer': 'DotGeneral', 'args': {
         'rhs': {'shape': [2], 'data': [1, 2]}, 'dimension_numbers': [[[0], [0]], [[], []]]}}), x1_shape=(2, 5, 3)),
     UNIMPLEMENTED, ['DotGeneral', 'batch axis', 'diagonal_batch=False']),
    ('layernorm_without_channel_axis', 'kernel',
     lambda: _request(_serial(_DENSE4, {'layer': 'LayerNorm', 'args': {'axis': [0]}})), INVALID,
     ['LayerNorm', 'axis', 'channel axis']),
    ('layernorm_over_batch', 'kernel',
     lambda: _request(_serial(_DENSE4, {'layer': 'LayerNorm', 'args': {'axis': [0, 1]}})), UNIMPLEMENTED,
     ['LayerNorm', 'batch axis']),
    ('dropout_rate_above_one', 'kernel',
     lambda: _request(_serial(_DENSE4, {'layer': 'Dropout', 'args': {'rate': 1.5}})), INVALID,
     ['layers[1] (Dropout)', 'rate', '1.5']),
    ('dropout_bad_mode', 'kernel',
     lambda: _request(_serial(_DENSE4, {'layer': 'Dropout', 'args': {'rate': 0.5, 'mode': 'eval'}})), INVALID,
     ['Dropout', 'mode', "'eval'"]),
    ('describe_unknown_get', 'describe', lambda: _describe(get=['ntk', 'bogus']), INVALID, ['get', 'bogus']),
]


def _check_error(test, err, code, needles):
  test.assertIsInstance(err, grpc.RpcError)
  test.assertEqual(err.code(), code, f'wrong status: {err.code().name}: {err.details()}')
  details = err.details() or ''
  for needle in needles:
    test.assertIn(needle, details, f'message does not name {needle!r}: {details!r}')


class BadRequestsTest(server_fixture.ServerTestCase):
  """The catalogue; one generated test per entry (test_bad_<name>), then a health + correctness check."""

  def call(self, rpc, request, timeout=30):
    """The grpc.RpcError raised by the call (fails the test if the call succeeds)."""
    try:
      if rpc == 'describe':
        self.stub.Describe(request, timeout=timeout)
      else:
        for _ in self.stub.ComputeKernel(request, timeout=timeout):
          pass
    except grpc.RpcError as e:
      return e
    self.fail(f'{rpc} succeeded but should have failed: {request}')
    return None

  def test_catalogue_is_big_and_distinct(self):
    self.assertGreaterEqual(len(CATALOGUE), 18)
    self.assertEqual(len({entry[0] for entry in CATALOGUE}), len(CATALOGUE))
    requests = {(entry[1], entry[2]().SerializeToString(deterministic=True)) for entry in CATALOGUE}
    self.assertEqual(len(requests), len(CATALOGUE), 'two catalogue entries send the same request')

  # Through ntclient: same errors, raised as grpc.RpcError from kernel_fn / describe.
  def test_ntclient_unimplemented_mode(self):
    _, _, kernel_fn = stax.serial(stax.Dense(4), stax.DotGeneral(rhs=np.ones(2),
                                                                 dimension_numbers=(((0,), (0,)), ((), ()))))
    with self.assertRaises(grpc.RpcError) as cm:
      kernel_fn(np.ones((2, 5, 3)), None, 'nngp', connection=self.conn, timeout=30)
    _check_error(self, cm.exception, UNIMPLEMENTED, ['DotGeneral', 'batch axis'])
    with self.assertRaises(grpc.RpcError) as cm:
      kernel_fn.describe((2, 5, 3), connection=self.conn, timeout=30)
    _check_error(self, cm.exception, UNIMPLEMENTED, ['DotGeneral', 'batch axis'])

  def test_ntclient_bad_inputs(self):
    _, _, kernel_fn = stax.serial(stax.Dense(4), stax.Erf())
    with self.assertRaises(grpc.RpcError) as cm:
      kernel_fn(_X, np.ones((2, 4)), 'ntk', connection=self.conn, timeout=30)
    _check_error(self, cm.exception, INVALID, ['x2', 'axis 1'])
    with self.assertRaises(grpc.RpcError) as cm:
      kernel_fn(_with(_X, (1, 2), np.inf), None, 'nngp', mask_constant=np.nan, connection=self.conn, timeout=30)
    _check_error(self, cm.exception, INVALID, ['x1', 'non-finite', 'inf'])  # Only NaN is masked.
    # Bad `get` names are refused by ntclient before anything is sent.
    with self.assertRaises(ValueError):
      kernel_fn(_X, None, ('nngp', 'bogus'), connection=self.conn)
    with self.assertRaises(ValueError):
      kernel_fn(_X, None, ('nngp', 'nngp'), connection=self.conn)

  def test_diagonal_spatial_true_without_spatial_axes(self):
    # Upstream accepts diagonal_spatial=True for fully-connected inputs (there is no spatial axis to make
    # diagonal); so does the server: same result as the default, and the header says diagonal_spatial.
    request = _request(diagonal_spatial=True, get=['nngp'])
    responses = list(self.stub.ComputeKernel(request, timeout=30))
    self.assertEqual(responses[0].WhichOneof('payload'), 'header')
    self.assertTrue(responses[0].header.diagonal_spatial)
    _, _, kernel_fn = stax.from_json(arch_json.layer_to_json(_good_arch()))
    a = kernel_fn(_X, None, 'nngp', diagonal_spatial=True, connection=self.conn, timeout=30)
    b = kernel_fn(_X, None, 'nngp', connection=self.conn, timeout=30)
    np.testing.assert_allclose(a, b, rtol=1e-15, atol=0)

  def test_deadline_exceeded_then_healthy(self):
    _, _, kernel_fn = stax.serial(stax.repeat(stax.serial(stax.Dense(64), stax.Relu()), 50), stax.Dense(1))
    x = np.random.default_rng(1).standard_normal((3000, 16))
    cancelled_before = self._log_count(_CANCELLED_LOG)
    start = time.monotonic()
    with self.assertRaises(grpc.RpcError) as cm:
      kernel_fn(x, None, ('nngp', 'ntk'), connection=self.conn, timeout=0.05)
    self.assertEqual(cm.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED, cm.exception.details())
    self.assertLess(time.monotonic() - start, 5.0)
    # The server notices and stops the engine (it logs the cancellation) ...
    self._wait_for_log(_CANCELLED_LOG, 10.0, cancelled_before)
    # ... and is healthy and quick afterwards.
    self.assertHealthy()
    start = time.monotonic()
    self._check_dense_kernel()
    self.assertLess(time.monotonic() - start, 2.0)

  def test_client_cancels_stream_midway(self):
    _, _, kernel_fn = stax.serial(stax.repeat(stax.serial(stax.Dense(64), stax.Relu()), 20), stax.Dense(1))
    x = np.random.default_rng(2).standard_normal((3000, 16))
    request = stax.kernel_request(kernel_fn, x, None, ('nngp', 'ntk'))
    cancelled_before = self._log_count(_CANCELLED_LOG)
    call = self.stub.ComputeKernel(request, timeout=120)
    received = []
    with self.assertRaises(grpc.RpcError) as cm:
      for response in call:
        received.append(response.WhichOneof('payload'))
        if len(received) == 4:
          call.cancel()
    self.assertEqual(cm.exception.code(), grpc.StatusCode.CANCELLED)
    self.assertEqual(received[0], 'header')
    self.assertEqual(received[1:4], ['tile'] * 3)
    self.assertNotIn('summary', received)
    self._wait_for_log(_CANCELLED_LOG, 10.0, cancelled_before)
    self.assertHealthy()
    self._check_dense_kernel()

  def test_zz_healthy_and_correct_after_catalogue(self):
    # Named to run last (unittest sorts test methods by name).
    self.assertHealthy()
    self._check_dense_kernel()

  def _log_count(self, pattern):
    return len(re.findall(pattern, self.server.log()))

  def _wait_for_log(self, pattern, timeout, more_than=0):
    """Waits until the server log has more than `more_than` lines matching `pattern`."""
    deadline = time.monotonic() + timeout
    while True:
      log = self.server.log()
      if len(re.findall(pattern, log)) > more_than:
        return
      if time.monotonic() > deadline:
        self.fail(f'no log line matching {pattern!r} within {timeout} s; log:\n{log}')
      time.sleep(0.05)

  def _check_dense_kernel(self):
    """serial(Dense(5, 1.3, 0.2), Dense(1, 0.7, 0.1)) against numpy (NTK parameterisation)."""
    rng = np.random.default_rng(3)
    x1, x2 = rng.standard_normal((6, 4)), rng.standard_normal((3, 4))
    w1, b1, w2, b2 = 1.3, 0.2, 0.7, 0.1
    _, _, kernel_fn = stax.serial(stax.Dense(5, W_std=w1, b_std=b1), stax.Dense(1, W_std=w2, b_std=b2))
    k = kernel_fn(x1, x2, ('nngp', 'ntk', 'cov1', 'cov2'), connection=self.conn, timeout=30)
    d = x1.shape[1]

    def nngp(a, b):
      k1 = w1 ** 2 * a @ b.T / d + b1 ** 2
      return k1, w2 ** 2 * k1 + b2 ** 2

    k1, k2 = nngp(x1, x2)
    ntk = k2 + w2 ** 2 * k1  # Theta_1 = K_1 (input NTK 0); Theta_2 = K_2 + W_2^2 Theta_1.
    np.testing.assert_allclose(k.nngp, k2, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(k.ntk, ntk, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(k.cov1, np.diag(nngp(x1, x1)[1]), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(k.cov2, np.diag(nngp(x2, x2)[1]), rtol=1e-12, atol=1e-14)


def _make_catalogue_test(rpc, factory, code, needles):
  def test(self):
    _check_error(self, self.call(rpc, factory()), code, needles)
  return test


for _name, _rpc, _factory, _code, _needles in CATALOGUE:
  _test = _make_catalogue_test(_rpc, _factory, _code, _needles)
  _test.__name__ = f'test_bad_{_name}'
  _test.__doc__ = f'{_name}: {_rpc} -> {_code.name} naming {_needles}'
  setattr(BadRequestsTest, _test.__name__, _test)


class ServerLimitsTest(server_fixture.ServerTestCase):
  """A second server with a 1 MiB memory budget and 4 MiB messages."""

  server_args = ('--memory_budget_mb=1', '--max_message_bytes=4194304')

  def _error(self, request):
    with self.assertRaises(grpc.RpcError) as cm:
      for _ in self.stub.ComputeKernel(request, timeout=30):
        pass
    return cm.exception

  def test_kernel_over_memory_budget(self):
    # 20000 x 8 zeros: 1.3 MB to decode, but a 20000 x 20000 plan with 256-row tiles is far over 1 MiB.
    err = self._error(_request(x1=np.zeros((20000, 8))))
    _check_error(self, err, RESOURCE_EXHAUSTED, ['MiB', 'budget of 1 MiB', 'tile_size'])

  def test_tile_over_max_message(self):
    # Tiles never exceed the batch, so the batch must be large enough for a 1024-row tile (8 MiB).
    err = self._error(_request(x1=np.ones((2048, 3)), tile_size=1024))
    _check_error(self, err, RESOURCE_EXHAUSTED, ['tile_size', '1024', 'maximum message size of 4194304'])

  def test_request_over_max_message(self):
    err = self._error(_request(x1=np.zeros((80000, 8))))  # 5.1 MB > 4 MiB.
    self.assertEqual(err.code(), RESOURCE_EXHAUSTED, err.details())
    self.assertIn('larger than max', err.details())

  def test_small_tiles_fit_the_budget(self):
    _, _, kernel_fn = stax.serial(stax.Dense(3, W_std=1.5), stax.Relu(), stax.Dense(1))
    nngp = kernel_fn(_X, None, 'nngp', tile_size=2, connection=self.conn, timeout=30)
    self.assertEqual(nngp.shape, (4, 4))
    np.testing.assert_allclose(nngp, nngp.T, rtol=0, atol=0)
    self.assertHealthy()


if __name__ == '__main__':
  unittest.main()
