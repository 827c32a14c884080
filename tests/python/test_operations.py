"""Security and operations: TLS (also mutual), bearer tokens, Prometheus metrics, per-request limits."""
import os
import re
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

import grpc
import numpy as np

import ntclient
from ntclient import _proto
from ntclient import stax

import server_fixture


def _openssl(*args, cwd):
  subprocess.run(['openssl', *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def make_pki(directory):
  """A CA, a server certificate for localhost / 127.0.0.1 and a client certificate, signed by the CA."""
  _openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=nt-test-ca',
           '-keyout', 'ca.key', '-out', 'ca.pem', cwd=directory)
  with open(os.path.join(directory, 'ext.cnf'), 'w') as f:
    f.write('subjectAltName=DNS:localhost,IP:127.0.0.1\n')
  for name in ('server', 'client'):
    _openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', f'/CN={name}', '-keyout', f'{name}.key',
             '-out', f'{name}.csr', cwd=directory)
    _openssl('x509', '-req', '-in', f'{name}.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
             '-days', '2', '-extfile', 'ext.cnf', '-out', f'{name}.pem', cwd=directory)
  return {k: os.path.join(directory, f'{k}') for k in
          ('ca.pem', 'server.pem', 'server.key', 'client.pem', 'client.key')}


def _kernel_fn():
  return stax.serial(stax.Dense(64, W_std=1.5, b_std=0.1), stax.Relu(), stax.Dense(1))[2]


class TlsAndTokenTest(unittest.TestCase):

  @classmethod
  def setUpClass(cls):
    cls.dir = tempfile.TemporaryDirectory()
    cls.pki = make_pki(cls.dir.name)
    cls.token_file = os.path.join(cls.dir.name, 'tokens')
    with open(cls.token_file, 'w') as f:
      f.write('# tokens of nt-server\n  s3cret-one  \n\nsecond-token\n')

  @classmethod
  def tearDownClass(cls):
    cls.dir.cleanup()

  def _server(self, args, **connection_kwargs):
    server = server_fixture.ServerProcess(['--threads=1'] + args, connection_kwargs=connection_kwargs)
    self.addCleanup(server.cleanup)
    return server

  def test_tls_with_token(self):
    server = self._server([f'--tls_cert_file={self.pki["server.pem"]}',
                           f'--tls_key_file={self.pki["server.key"]}', f'--auth_token_file={self.token_file}'],
                          root_certificates=self.pki['ca.pem'])
    x = np.random.default_rng(1).standard_normal((5, 3))
    kernel_fn = _kernel_fn()
    with ntclient.Connection(server.address, root_certificates=self.pki['ca.pem'], token='second-token') as c:
      self.assertEqual(c.health(), 'SERVING')
      nngp = kernel_fn(x, None, 'nngp', connection=c)
      self.assertEqual(nngp.shape, (5, 5))
    # The same server by its DNS name (certificate checked against 'localhost').
    port = server.address.rsplit(':', 1)[1]
    with ntclient.Connection(f'dns:///localhost:{port}', root_certificates=self.pki['ca.pem'],
                             token='s3cret-one') as c:
      np.testing.assert_array_equal(kernel_fn(x, None, 'nngp', connection=c, timeout=20), nngp)
    with ntclient.Connection(server.address, root_certificates=self.pki['ca.pem'], token='wrong') as c:
      with self.assertRaises(grpc.RpcError) as e:
        kernel_fn(x, None, 'nngp', connection=c)
      self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
      self.assertNotIn('wrong', e.exception.details())
    # Plaintext to a TLS port never gets through.
    with ntclient.Connection(server.address, token='s3cret-one') as c:
      with self.assertRaises(grpc.RpcError) as e:
        c.health(timeout=3)
      self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)
    # A certificate from another CA is refused.
    other = tempfile.TemporaryDirectory()
    self.addCleanup(other.cleanup)
    other_pki = make_pki(other.name)
    with ntclient.Connection(server.address, root_certificates=other_pki['ca.pem'], token='s3cret-one') as c:
      with self.assertRaises(grpc.RpcError) as e:
        c.health(timeout=3)
      self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)

  def test_token_on_plaintext(self):
    server = self._server([f'--auth_token_file={self.token_file}'])
    x = np.ones((3, 2))
    kernel_fn = _kernel_fn()
    with ntclient.Connection(server.address) as c:
      self.assertEqual(c.health(), 'SERVING')  # Probes need no token.
      with self.assertRaises(grpc.RpcError) as e:
        kernel_fn(x, None, 'nngp', connection=c)
      self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
      self.assertIn('Bearer', e.exception.details())
      with self.assertRaises(grpc.RpcError) as e:
        c.upload(x)
      self.assertEqual(e.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
    old = os.environ.get('NT_TOKEN')
    os.environ['NT_TOKEN'] = 's3cret-one'
    try:
      with ntclient.Connection(server.address) as c:
        self.assertEqual(kernel_fn(x, None, 'nngp', connection=c).shape, (3, 3))
    finally:
      if old is None:
        del os.environ['NT_TOKEN']
      else:
        os.environ['NT_TOKEN'] = old

  def test_mutual_tls(self):
    server = self._server([f'--tls_cert_file={self.pki["server.pem"]}', f'--tls_key_file={self.pki["server.key"]}',
                           f'--tls_client_ca_file={self.pki["ca.pem"]}'],
                          root_certificates=self.pki['ca.pem'], private_key=self.pki['client.key'],
                          certificate_chain=self.pki['client.pem'])
    with ntclient.Connection(server.address, root_certificates=self.pki['ca.pem'],
                             private_key=self.pki['client.key'], certificate_chain=self.pki['client.pem']) as c:
      self.assertEqual(_kernel_fn()(np.ones((2, 2)), None, 'nngp', connection=c).shape, (2, 2))
    with ntclient.Connection(server.address, root_certificates=self.pki['ca.pem']) as c:
      with self.assertRaises(grpc.RpcError) as e:
        c.health(timeout=3)
      self.assertEqual(e.exception.code(), grpc.StatusCode.UNAVAILABLE)

  def test_bad_security_flags_stop_the_server(self):
    for args, text in ((['--tls_cert_file=/nonexistent.pem', '--tls_key_file=/nonexistent.key'], 'cannot read'),
                       ([f'--tls_cert_file={self.pki["server.pem"]}'], 'together'),
                       (['--auth_token_file=/nonexistent'], 'auth_token_file')):
      with self.subTest(args=args):
        p = subprocess.run([server_fixture.SERVER_BIN, '--address=127.0.0.1:0'] + args, capture_output=True,
                           timeout=30, text=True)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(text, p.stderr)


def _metrics_port(server):
  deadline = time.monotonic() + 10
  while time.monotonic() < deadline:
    m = re.search(r'/metrics \(port (\d+)\)', server.log())
    if m:
      return int(m.group(1))
    time.sleep(0.05)
  raise AssertionError(f'no metrics port in the log:\n{server.log()}')


def scrape(port):
  with urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=10) as r:
    return r.read().decode()


def metric(text, name, labels=''):
  """The value of one sample, e.g. metric(t, 'nt_requests_total', 'code="OK",method="Describe"')."""
  for line in text.splitlines():
    if line.startswith(name + ('{' + labels + '}' if labels else ' ')) or (
        labels and line.startswith(name + '{') and all(p in line for p in labels.split(','))):
      return float(line.rsplit(' ', 1)[1])
  return None


class MetricsTest(server_fixture.ServerTestCase):

  server_args = ['--metrics_address=127.0.0.1:0', '--memory_budget_mb=512', '--threads=1']

  def test_requests_tiles_bytes_latency(self):
    port = _metrics_port(self.server)
    before = scrape(port)
    self.assertEqual(metric(before, 'nt_memory_budget_bytes'), 512 * 2**20)
    self.assertIn('# TYPE nt_request_duration_seconds histogram', before)
    self.assertGreater(metric(before, 'process_resident_memory_bytes'), 1e6)
    kernel_fn = _kernel_fn()
    x = np.random.default_rng(2).standard_normal((20, 4))
    tiles = 0
    for _ in range(3):
      assembler = ntclient.tensors.TileAssembler()
      assembler.consume(self.conn.compute_kernel(stax.kernel_request(kernel_fn, x, None, ('nngp', 'ntk'),
                                                                     tile_size=8)))
      tiles += assembler.header.num_tiles
    with self.assertRaises(grpc.RpcError):
      stax.serial(stax.Dense(0))[2](x, None, 'nngp', connection=self.conn)
    handle = self.conn.upload(x)
    after = scrape(port)
    self.assertEqual(metric(after, 'nt_requests_total', 'method="ComputeKernel",code="OK"'), 3, after)
    self.assertEqual(metric(after, 'nt_requests_total', 'method="ComputeKernel",code="INVALID_ARGUMENT"'), 1)
    self.assertEqual(metric(after, 'nt_requests_total', 'method="UploadTensor",code="OK"'), 1)
    self.assertEqual(metric(after, 'nt_tiles_total'), tiles)
    # Upper-triangle tiles only (x2 = None): at least half of nngp and ntk each time.
    self.assertGreater(metric(after, 'nt_response_bytes_total'), 3 * 20 * 20 * 8)
    self.assertGreater(metric(after, 'nt_request_bytes_total'), 3 * 20 * 4 * 8)
    self.assertEqual(metric(after, 'nt_request_duration_seconds_count', 'method="ComputeKernel"'), 4)
    self.assertEqual(metric(after, 'nt_upload_store_tensors'), 1)
    self.assertEqual(metric(after, 'nt_upload_store_bytes') > 20 * 4 * 8, True)
    self.assertEqual(metric(after, 'nt_tile_queue_depth'), 0)
    self.assertEqual(metric(after, 'nt_memory_reserved_bytes'), 0)
    self.assertEqual(metric(after, 'nt_requests_in_flight', 'method="ComputeKernel"'), 0)
    self.conn.release(handle)
    self.assertEqual(metric(scrape(port), 'nt_upload_store_tensors'), 0)
    with self.assertRaises(urllib.error.HTTPError) as e:
      urllib.request.urlopen(f'http://127.0.0.1:{port}/nothing', timeout=10)
    self.assertEqual(e.exception.code, 404)


def _slow_request(n=2500):
  kernel_fn = stax.serial(*[stax.Dense(64, W_std=1.5, b_std=0.1), stax.Relu()] * 6)[2]
  return stax.kernel_request(kernel_fn, np.random.default_rng(3).standard_normal((n, 64)), None,
                             ('nngp', 'ntk'), tile_size=64)


class LimitsTest(unittest.TestCase):

  def test_request_time_limit(self):
    server = server_fixture.ServerProcess(['--threads=1', '--max_request_seconds=0.3'])
    self.addCleanup(server.cleanup)
    with ntclient.Connection(server.address) as c:
      start = time.monotonic()
      with self.assertRaises(grpc.RpcError) as e:
        ntclient.tensors.TileAssembler().consume(c.compute_kernel(_slow_request()))
      self.assertLess(time.monotonic() - start, 20)
      self.assertEqual(e.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
      self.assertIn('--max_request_seconds', e.exception.details())
      self.assertEqual(c.health(), 'SERVING')
      # Short requests are unaffected.
      self.assertEqual(_kernel_fn()(np.ones((3, 2)), None, 'nngp', connection=c).shape, (3, 3))

  def test_concurrent_request_limit(self):
    server = server_fixture.ServerProcess(['--threads=1', '--max_concurrent_requests=1'])
    self.addCleanup(server.cleanup)
    with ntclient.Connection(server.address) as c:
      stream = c.stub.ComputeKernel(_slow_request(4000))
      self.assertEqual(next(stream).WhichOneof('payload'), 'header')  # In flight now.
      with self.assertRaises(grpc.RpcError) as e:
        c.describe(_proto.service_pb2.DescribeRequest(architecture=stax.layer_proto(_kernel_fn()),
                                                      x1_shape=[2, 2]))
      self.assertEqual(e.exception.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
      self.assertIn('--max_concurrent_requests', e.exception.details())
      stream.cancel()
      deadline = time.monotonic() + 20
      while True:  # The cancelled call ends between tiles; then requests are admitted again.
        try:
          c.describe(_proto.service_pb2.DescribeRequest(architecture=stax.layer_proto(_kernel_fn()),
                                                        x1_shape=[2, 2]))
          break
        except grpc.RpcError as e:
          if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
            raise
          time.sleep(0.05)


if __name__ == '__main__':
  unittest.main()
