"""One kernel over several servers (tile ranges, retries), chunked uploads by handle, .npy output.

Every result is compared bit for bit with one server's: each server computes its tiles exactly as in a
whole request, with the same tile grid.
"""
import os
import signal
import tempfile
import threading
import unittest

import grpc
import numpy as np

import ntclient
from ntclient import _proto
from ntclient import connection as connection_lib
from ntclient import stax
from ntclient import tiling

import server_fixture


def _fc():
  return stax.serial(stax.Dense(256, W_std=1.5, b_std=0.1), stax.Relu(), stax.Dense(256, W_std=1.5, b_std=0.1),
                     stax.Erf(), stax.Dense(1))


def _cnn():
  return stax.serial(stax.Conv(16, (3, 3), padding='SAME', W_std=1.4, b_std=0.1), stax.Relu(),
                     stax.AvgPool((2, 2)), stax.Conv(16, (2, 2), W_std=1.4), stax.Relu(),
                     stax.Dense(1))


class Servers:
  """n servers with one engine thread each."""

  def __init__(self, n, extra_args=()):
    self.servers = []
    try:
      for _ in range(n):
        self.servers.append(server_fixture.ServerProcess(['--threads=1'] + list(extra_args)))
    except BaseException:
      self.close()
      raise

  @property
  def addresses(self):
    return [s.address for s in self.servers]

  def close(self):
    for s in self.servers:
      s.cleanup()


class DistributedKernelTest(unittest.TestCase):

  @classmethod
  def setUpClass(cls):
    cls.cluster = Servers(3)
    cls.one = ntclient.Connection(cls.cluster.addresses[0])
    cls.many = ntclient.Connection(','.join(cls.cluster.addresses))

  @classmethod
  def tearDownClass(cls):
    cls.one.close()
    cls.many.close()
    cls.cluster.close()

  def _check_identical(self, kernel_fn, x1, x2, get, **kwargs):
    single = kernel_fn(x1, x2, get, connection=self.one, **kwargs)
    stats = {}
    spread = kernel_fn(x1, x2, get, connection=self.many, stats=stats, **kwargs)
    for name in get:
      np.testing.assert_array_equal(getattr(single, name), getattr(spread, name), err_msg=name)
    # Every server computed some of it.
    self.assertTrue(all(n > 0 for n in stats['tiles'].values()), stats)
    self.assertEqual(stats['retries'], 0)
    return stats

  def test_fully_connected_same_and_other_inputs(self):
    _, _, kernel_fn = _fc()
    rng = np.random.default_rng(1)
    x1, x2 = rng.standard_normal((150, 24)), rng.standard_normal((70, 24))
    stats = self._check_identical(kernel_fn, x1, None, ('nngp', 'ntk', 'cov1'), tile_size=16)
    self.assertEqual(stats['total_tiles'], 10 * 11 // 2)  # Only tiles on and above the diagonal.
    self._check_identical(kernel_fn, x1, x2, ('nngp', 'ntk', 'cov1', 'cov2'), tile_size=16)
    # The server's own tile size, and full-batch covariances.
    self._check_identical(kernel_fn, x1, x2, ('nngp', 'cov1', 'cov2'), diagonal_batch=False)

  def test_cnn_full_spatial_layout_with_mirrored_tiles(self):
    _, _, kernel_fn = _cnn()
    rng = np.random.default_rng(2)
    x1 = rng.standard_normal((9, 6, 6, 2))
    self._check_identical(kernel_fn, x1, None, ('nngp', 'ntk'), tile_size=2)
    self._check_identical(kernel_fn, x1, rng.standard_normal((5, 6, 6, 2)), ('nngp', 'cov1', 'cov2'),
                          tile_size=3)

  def test_float32_output_and_masks(self):
    _, _, kernel_fn = _fc()
    rng = np.random.default_rng(3)
    x1 = rng.standard_normal((40, 8))
    x1[3, 2] = x1[7, 0] = -7.0
    self._check_identical(kernel_fn, x1, None, ('nngp', 'ntk'), tile_size=8, output_dtype='float32',
                          mask_constant=-7.0)

  def test_errors_are_not_retried(self):
    _, _, kernel_fn = stax.serial(stax.Dense(0))
    with self.assertRaises(grpc.RpcError) as e:
      kernel_fn(np.ones((4, 3)), None, 'nngp', connection=self.many)
    self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
    self.assertIn('out_dim', e.exception.details())

  def test_tile_range_is_validated(self):
    _, _, kernel_fn = _fc()
    request = stax.kernel_request(kernel_fn, np.ones((8, 3)), None, 'nngp', tile_size=4)
    request.tile_begin, request.tile_end = 2, 9  # 3 tiles exist.
    with self.assertRaises(grpc.RpcError) as e:
      list(self.one.compute_kernel(request))
    self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
    self.assertIn('tile_begin, tile_end', e.exception.details())
    self.assertIn('3 tiles', e.exception.details())

  def test_dns_name_stands_for_every_address(self):
    port = self.cluster.addresses[0].rsplit(':', 1)[1]
    resolved = connection_lib.resolve_addresses(f'dns:///localhost:{port},127.0.0.1:1')
    self.assertIn((f'127.0.0.1:{port}', 'localhost'), resolved)
    self.assertEqual(resolved[-1], ('127.0.0.1:1', None))
    with self.assertRaises(ValueError):
      connection_lib.resolve_addresses('dns:///localhost')


class FaultTest(unittest.TestCase):
  """One of three servers killed in the middle of a kernel: the client finishes, with the same result."""

  def test_server_killed_mid_kernel(self):
    cluster = Servers(3)
    try:
      _, _, kernel_fn = _fc()
      rng = np.random.default_rng(4)
      x1 = rng.standard_normal((480, 64))
      get = ('nngp', 'ntk')
      with ntclient.Connection(cluster.addresses[1]) as one:
        expected = kernel_fn(x1, None, get, tile_size=32, connection=one)
      victim = cluster.servers[0]
      killed = threading.Event()

      def progress(address, done, total):
        # Kill the victim as soon as it has delivered a tile: its range is then half done.
        if address == victim.address and not killed.is_set():
          killed.set()
          victim.proc.send_signal(signal.SIGKILL)

      stats = {}
      with ntclient.Connection(','.join(cluster.addresses)) as many:
        got = kernel_fn(x1, None, get, tile_size=32, connection=many, progress=progress, stats=stats)
      self.assertTrue(killed.is_set())
      victim.proc.wait(timeout=10)
      self.assertEqual(victim.proc.returncode, -signal.SIGKILL)
      for name in get:
        np.testing.assert_array_equal(getattr(expected, name), getattr(got, name), err_msg=name)
      self.assertEqual(stats['given_up'], [victim.address], stats)
      self.assertGreaterEqual(stats['retries'], 1, stats)
      print(f'\nfault test: {stats["total_tiles"]} tiles in {stats["ranges"]} ranges, server killed after '
            f'{stats["tiles"][victim.address]} tile messages, {stats["retries"]} range(s) retried, '
            'kernel identical to one server\'s')
    finally:
      cluster.close()

  def test_every_server_down_is_an_error(self):
    cluster = Servers(2)
    addresses = cluster.addresses
    cluster.close()
    _, _, kernel_fn = _fc()
    with ntclient.Connection(','.join(addresses)) as conn:
      with self.assertRaises(grpc.RpcError) as e:
        kernel_fn(np.ones((6, 3)), None, 'nngp', connection=conn, timeout=20)
    self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)


class UploadTest(server_fixture.ServerTestCase):
  """Inputs larger than a message travel in chunks (UploadTensor) and are used by handle."""

  server_args = ['--max_message_bytes=1048576', '--upload_budget_mb=64', '--threads=1']

  def test_inputs_larger_than_a_message(self):
    _, _, kernel_fn = _fc()
    rng = np.random.default_rng(5)
    x1 = rng.standard_normal((1200, 400))  # 3.8 MB, more than the server's 1 MiB messages.
    x2 = rng.standard_normal((64, 400))
    got = kernel_fn(x1, x2, ('nngp', 'ntk'), connection=self.conn)
    # The same kernel, blocks of inputs sent inline.
    for lo in range(0, 1200, 300):
      part = kernel_fn(x1[lo:lo + 300], x2, ('nngp', 'ntk'), connection=self.conn)
      np.testing.assert_allclose(got.nngp[lo:lo + 300], part.nngp, rtol=1e-13, atol=0)
      np.testing.assert_allclose(got.ntk[lo:lo + 300], part.ntk, rtol=1e-13, atol=0)
    # Uploads are released after the call.
    self.assertHealthy()

  def test_upload_handle_release(self):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3000, 100))
    handle = self.conn.upload(x, chunk_bytes=100_000)
    self.assertTrue(handle.handle)
    _, _, kernel_fn = _fc()
    request = stax.kernel_request(kernel_fn, x[:2], None, 'nngp')
    request.x1.CopyFrom(handle)
    request.tile_begin, request.tile_end = 0, 1
    arrays = ntclient.tensors.TileAssembler()
    arrays.consume(self.conn.compute_kernel(request))
    direct = kernel_fn(x[:200], None, 'nngp', connection=self.conn)
    block = arrays.arrays['nngp']
    t = arrays.header.tile_size
    np.testing.assert_allclose(block[:t, :t][:200, :200], direct[:t, :t], rtol=1e-13)
    self.assertTrue(self.conn.release(handle))
    self.assertFalse(self.conn.release(handle))
    with self.assertRaises(grpc.RpcError) as e:
      list(self.conn.compute_kernel(request))
    self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
    self.assertIn('x1.handle', e.exception.details())

  def test_uploads_keep_their_dtype_rules_and_values(self):
    # Uploads are kept converted to float64; the dtype they came as still decides where they may go.
    _, _, kernel_fn = _fc()
    x = np.random.default_rng(10).standard_normal((50, 7))
    as_float32 = self.conn.upload(x, dtype='float32', chunk_bytes=1000)
    request = stax.kernel_request(kernel_fn, x[:1], None, 'nngp')
    request.x1.CopyFrom(as_float32)
    got = ntclient.tensors.TileAssembler().consume(self.conn.compute_kernel(request))['nngp']
    np.testing.assert_allclose(got, kernel_fn(x.astype(np.float32).astype(np.float64), None, 'nngp',
                                              connection=self.conn), rtol=1e-13)
    # Chunks that split float64 values between them.
    request.x1.CopyFrom(self.conn.upload(x, chunk_bytes=1001))
    got = ntclient.tensors.TileAssembler().consume(self.conn.compute_kernel(request))['nngp']
    np.testing.assert_array_equal(got, kernel_fn(x, None, 'nngp', connection=self.conn))
    request.x1.CopyFrom(self.conn.upload(np.arange(14).reshape(2, 7)))
    with self.assertRaises(grpc.RpcError) as e:
      list(self.conn.compute_kernel(request))
    self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
    self.assertIn('x1.dtype: must be FLOAT64 or FLOAT32, got INT64', e.exception.details())

  def _upload(self, chunks):
    return self.stub.UploadTensor(iter(chunks), timeout=30)

  def test_bad_uploads_are_refused_with_the_field(self):
    Chunk = _proto.service_pb2.TensorChunk
    cases = [
        ([Chunk(shape=[2, 2], data=b'\0' * 16, offset=0), Chunk(data=b'\0' * 16, offset=8)],
         grpc.StatusCode.INVALID_ARGUMENT, 'offset'),
        ([Chunk(shape=[2, 2], data=b'\0' * 40, offset=0)], grpc.StatusCode.INVALID_ARGUMENT, 'data'),
        ([Chunk(shape=[2, 2], data=b'\0' * 8, offset=0)], grpc.StatusCode.INVALID_ARGUMENT,
         'received 8 of 32'),
        ([Chunk(shape=[2, 2], data=b'\0' * 16), Chunk(shape=[1], data=b'\0' * 16, offset=16)],
         grpc.StatusCode.INVALID_ARGUMENT, 'first chunk only'),
        ([Chunk(shape=[2, -2])], grpc.StatusCode.INVALID_ARGUMENT, 'shape'),
        ([Chunk(shape=[2], dtype=99)], grpc.StatusCode.INVALID_ARGUMENT, 'dtype'),
        ([Chunk(shape=[10_000, 10_000])], grpc.StatusCode.RESOURCE_EXHAUSTED, 'upload budget'),
        ([], grpc.StatusCode.INVALID_ARGUMENT, 'chunks'),
    ]
    for chunks, code, text in cases:
      with self.subTest(text=text):
        with self.assertRaises(grpc.RpcError) as e:
          self._upload(chunks)
        self.assertEqual(e.exception.code(), code, e.exception.details())
        self.assertIn(text, e.exception.details())
    # A handle with data, and an unknown handle.
    _, _, kernel_fn = _fc()
    request = stax.kernel_request(kernel_fn, np.ones((2, 2)), None, 'nngp')
    request.x1.handle = 'nope'
    with self.assertRaises(grpc.RpcError) as e:
      list(self.conn.compute_kernel(request))
    self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
    self.assertIn('either a handle', e.exception.details())
    request.x1.Clear()
    request.x1.handle = 'nope'
    with self.assertRaises(grpc.RpcError) as e:
      list(self.conn.compute_kernel(request))
    self.assertEqual(e.exception.code(), grpc.StatusCode.NOT_FOUND)
    self.assertHealthy()

  def test_predict_and_apply_take_handles(self):
    rng = np.random.default_rng(7)
    x_train, y_train = rng.standard_normal((20, 5)), rng.standard_normal((20, 1))
    x_test = rng.standard_normal((4, 5))
    init_fn, apply_fn, kernel_fn = _fc()
    request = _proto.service_pb2.PredictRequest(architecture=stax.layer_proto(kernel_fn), get=['nngp'],
                                                diag_reg=1e-3)
    request.x_train.CopyFrom(self.conn.upload(x_train))
    request.y_train.CopyFrom(self.conn.upload(y_train))
    request.x_test.CopyFrom(self.conn.upload(x_test))
    by_handle = [r.block for r in self.conn.predict(request) if r.WhichOneof('payload') == 'block']
    direct = ntclient.predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, diag_reg=1e-3,
                                                            connection=self.conn)(x_test=x_test, get='nngp')
    np.testing.assert_array_equal(ntclient.tensors.from_tensor(by_handle[0].mean), direct)


class NpyOutputTest(server_fixture.ServerTestCase):
  """A kernel written to disk tile by tile, as for kernels larger than the client's memory."""

  def test_kernel_to_npy_files(self):
    _, _, kernel_fn = _cnn()
    rng = np.random.default_rng(8)
    x1 = rng.standard_normal((7, 5, 5, 2))
    expected = kernel_fn(x1, None, ('nngp', 'ntk', 'cov1'), tile_size=2, connection=self.conn)
    with tempfile.TemporaryDirectory() as d:
      got = kernel_fn(x1, None, ('nngp', 'ntk', 'cov1'), tile_size=2, connection=self.conn,
                      out=os.path.join(d, 'k.npy'))
      self.assertEqual(sorted(os.listdir(d)), ['k.cov1.npy', 'k.nngp.npy', 'k.ntk.npy'])
      for name in ('nngp', 'ntk', 'cov1'):
        self.assertIsInstance(getattr(got, name), np.memmap)
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
        np.testing.assert_array_equal(np.load(os.path.join(d, f'k.{name}.npy')), getattr(expected, name))
      single = kernel_fn(x1, None, 'nngp', tile_size=2, connection=self.conn, out=os.path.join(d, 'one.npy'))
      np.testing.assert_array_equal(single, kernel_fn(x1, None, 'nngp', tile_size=2, connection=self.conn))

  def test_npy_output_holds_one_block_at_a_time(self):
    # The writer pwrite()s rows of each block: a kernel assembled this way matches the in-memory one,
    # and only the file holds the whole kernel.
    _, _, kernel_fn = _fc()
    x1 = np.random.default_rng(9).standard_normal((900, 16))
    with tempfile.TemporaryDirectory() as d:
      path = os.path.join(d, 'big.npy')
      got = kernel_fn(x1, None, 'nngp', tile_size=128, connection=self.conn, out=path)
      self.assertEqual(os.path.getsize(path), 128 + 900 * 900 * 8)
      np.testing.assert_array_equal(got, kernel_fn(x1, None, 'nngp', tile_size=128, connection=self.conn))


if __name__ == '__main__':
  unittest.main()
