"""gRPC channel to the nt-server KernelService."""

import os

import grpc

from ntclient import _proto

DEFAULT_ADDRESS = 'localhost:50051'
# Kernel tiles and inputs can be large; the gRPC default limit is 4 MiB.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def default_address():
  """$NT_SERVER, else localhost:50051."""
  return os.environ.get('NT_SERVER') or DEFAULT_ADDRESS


class Connection:
  """An insecure channel plus the KernelService and Health stubs."""

  def __init__(self, address=None):
    self.address = address or default_address()
    self.channel = grpc.insecure_channel(
        self.address,
        options=[
            ('grpc.max_send_message_length', MAX_MESSAGE_BYTES),
            ('grpc.max_receive_message_length', MAX_MESSAGE_BYTES),
        ])
    self.stub = _proto.service_pb2_grpc.KernelServiceStub(self.channel)

  def compute_kernel(self, request, timeout=None):
    """The ComputeKernel response stream (an iterator of KernelResponse)."""
    return self.stub.ComputeKernel(request, timeout=timeout)

  def predict(self, request, timeout=None):
    """The Predict response stream (an iterator of PredictResponse)."""
    return self.stub.Predict(request, timeout=timeout)

  def describe(self, request, timeout=None):
    return self.stub.Describe(request, timeout=timeout)

  def init(self, request, timeout=None):
    return self.stub.Init(request, timeout=timeout)

  def apply(self, request, timeout=None):
    return self.stub.Apply(request, timeout=timeout)

  def empirical_kernel(self, request, timeout=None):
    return self.stub.EmpiricalKernel(request, timeout=timeout)

  def monte_carlo_kernel(self, request, timeout=None):
    """A stream of MonteCarloKernelResponse."""
    return self.stub.MonteCarloKernel(request, timeout=timeout)

  def health(self, service='', timeout=10.0):
    """The grpc.health.v1 serving status name, e.g. 'SERVING'."""
    if _proto.health_pb2_grpc is None:
      raise ImportError('ntclient: nt_health.health_pb2_grpc (grpc.health.v1 stubs) is not importable; '
                        'build the project to generate it')
    stub = _proto.health_pb2_grpc.HealthStub(self.channel)
    response = stub.Check(_proto.health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return _proto.health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

  def close(self):
    self.channel.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __repr__(self):
    return f'Connection({self.address!r})'


_default = None


def connect(address=None):
  """Opens a connection (address or $NT_SERVER or localhost:50051) and makes it the default one."""
  global _default
  _default = Connection(address)
  return _default


def default_connection():
  """The default connection, opened on first use."""
  if _default is None:
    connect()
  return _default


def health(address=None, service='', timeout=10.0):
  """Serving status name of the server at `address` (default: the default connection)."""
  if address is None:
    return default_connection().health(service, timeout)
  with Connection(address) as conn:
    return conn.health(service, timeout)
