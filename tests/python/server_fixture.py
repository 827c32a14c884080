"""A real nt-server for the Python tests: started on a free loopback port, stopped with SIGTERM.

  from server_fixture import ServerTestCase

  class MyTest(ServerTestCase):
    server_args = ['--memory_budget_mb=64']   # optional extra flags
    def test_x(self):
      kernel_fn(x1, x2, 'nngp', connection=self.conn)

The binary is $NT_SERVER_BIN, default <repo>/build/server/nt-server. One server per test class (started in
setUpClass, stopped in tearDownClass, which asserts exit code 0 within 15 s of SIGTERM). `running_server()`
is the same as a context manager yielding the address.
"""

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
for _d in (os.path.join(REPO, 'build', 'python'), os.path.join(REPO, 'client', 'python')):
  if _d not in sys.path:
    sys.path.insert(0, _d)

import grpc  # pylint: disable=g-import-not-at-top,wrong-import-position

import ntclient  # pylint: disable=g-import-not-at-top,wrong-import-position
from ntclient import _proto  # pylint: disable=g-import-not-at-top,wrong-import-position

SERVER_BIN = os.environ.get('NT_SERVER_BIN') or os.path.join(REPO, 'build', 'server', 'nt-server')
CLI_BIN = os.environ.get('NT_CLI_BIN') or os.path.join(REPO, 'build', 'client', 'nt')
GOLDEN_DIR = os.environ.get('NT_GOLDEN_DIR') or os.path.abspath(
    os.path.join(REPO, '..', 'shared', 'golden', 'cases'))
STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_TIMEOUT_S = 15.0


class ServerProcess:
  """One nt-server process on 127.0.0.1 with a port picked by the kernel (--address=...:0)."""

  def __init__(self, extra_args=(), connection_kwargs=None):
    if not os.access(SERVER_BIN, os.X_OK):
      # The server is what these tests test: a missing binary is an error, not a skip.
      raise RuntimeError(f'nt-server binary not found at {SERVER_BIN} (ninja -C build nt-server, or set '
                         'NT_SERVER_BIN)')
    self._dir = tempfile.TemporaryDirectory(prefix='nt-server-test-')
    self.port_file = os.path.join(self._dir.name, 'port')
    self.log_path = os.path.join(self._dir.name, 'server.log')
    self._log = open(self.log_path, 'wb')
    self.args = [SERVER_BIN, '--address=127.0.0.1:0', f'--port_file={self.port_file}'] + list(extra_args)
    self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
    self.address = None
    # How to reach it (e.g. root_certificates for a TLS server); the health check needs no token.
    self.connection_kwargs = dict(connection_kwargs or {})
    try:
      self._wait_serving()
    except BaseException:
      self._kill()
      raise

  def log(self):
    if not self._log.closed:
      self._log.flush()
    with open(self.log_path, 'rb') as f:
      return f.read().decode('utf-8', 'replace')

  def _fail(self, what):
    raise RuntimeError(f'nt-server {what}; command {self.args}; log:\n{self.log()}')

  def _wait_serving(self):
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    port = None
    while port is None:
      if self.proc.poll() is not None:
        self._fail(f'exited with code {self.proc.returncode} before writing its port')
      if time.monotonic() > deadline:
        self._fail(f'wrote no port to {self.port_file} within {STARTUP_TIMEOUT_S} s')
      try:
        with open(self.port_file, encoding='ascii') as f:
          text = f.read()
        if text.endswith('\n'):  # Written in one go, but do not read a half-written file.
          port = int(text)
      except (OSError, ValueError):
        pass
      if port is None:
        time.sleep(0.02)
    self.address = f'127.0.0.1:{port}'
    last = None
    with ntclient.Connection(self.address, **self.connection_kwargs) as conn:
      while True:
        if self.proc.poll() is not None:
          self._fail(f'exited with code {self.proc.returncode} while starting')
        try:
          last = conn.health(timeout=1.0)
          if last == 'SERVING':
            return
        except grpc.RpcError as e:
          last = f'{e.code().name}: {e.details()}'
        if time.monotonic() > deadline:
          self._fail(f'not SERVING within {STARTUP_TIMEOUT_S} s (last health: {last})')
        time.sleep(0.05)

  def alive(self):
    return self.proc.poll() is None

  def stop(self, timeout=SHUTDOWN_TIMEOUT_S):
    """SIGTERM, then the exit code (None if it did not exit in time: then it is killed)."""
    try:
      if self.proc.poll() is None:
        self.proc.send_signal(signal.SIGTERM)
      try:
        return self.proc.wait(timeout=timeout)
      except subprocess.TimeoutExpired:
        self._kill()
        return None
    finally:
      self._log.close()

  def _kill(self):
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()

  def cleanup(self):
    self._kill()
    if not self._log.closed:
      self._log.close()
    self._dir.cleanup()


@contextlib.contextmanager
def running_server(extra_args=(), test=None):
  """Yields the address of a fresh server; on exit SIGTERMs it and checks that it exits with 0 in 15 s."""
  server = ServerProcess(extra_args)
  try:
    yield server.address
  finally:
    code = server.stop()
    log = server.log()
    server.cleanup()
  _check_exit(code, log, test)


def _check_exit(code, log, test=None):
  message = (f'nt-server did not exit cleanly after SIGTERM (exit code {code}; None = still running after '
             f'{SHUTDOWN_TIMEOUT_S} s); log:\n{log}')
  if test is not None:
    test.assertEqual(code, 0, message)
  elif code != 0:
    raise AssertionError(message)


class ServerTestCase(unittest.TestCase):
  """Starts one server for the class; `cls.address`, `cls.conn` (an ntclient.Connection), `cls.stub`."""

  server_args = ()

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.server = ServerProcess(cls.server_args)
    cls.address = cls.server.address
    cls.conn = ntclient.Connection(cls.address)
    cls.stub = _proto.service_pb2_grpc.KernelServiceStub(cls.conn.channel)

  @classmethod
  def tearDownClass(cls):
    try:
      cls.conn.close()
      code = cls.server.stop()
      log = cls.server.log()
      cls.server.cleanup()
      _check_exit(code, log)
    finally:
      super().tearDownClass()

  def assertHealthy(self, timeout=5.0):
    self.assertTrue(self.server.alive(), f'nt-server died; log:\n{self.server.log()}')
    self.assertEqual(self.conn.health(timeout=timeout), 'SERVING')
