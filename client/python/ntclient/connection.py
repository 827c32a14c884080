"""gRPC channel to the nt-server KernelService."""

import collections
import itertools
import os
import socket

import grpc
import numpy as np

from ntclient import _proto
from ntclient import buffers
from ntclient import wire

DEFAULT_ADDRESS = 'localhost:50051'
# Kernel tiles and inputs can be large; the gRPC default limit is 4 MiB.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
# Inputs larger than this are uploaded in chunks of UPLOAD_CHUNK_BYTES (UploadTensor) and sent by handle,
# so that no message exceeds a server's --max_message_bytes (256 MiB by default).
UPLOAD_THRESHOLD_BYTES = 1024 * 1024
# Each message costs the server a thread hand-off: 100 MB took 0.08 s in 256 KiB chunks and 0.055 s in
# ~1 MiB ones (2-core VM). 960 KiB: a chunk and its header still fit a server limited to 1 MiB messages.
UPLOAD_CHUNK_BYTES = 960 * 1024


def default_address():
  """$NT_SERVER, else localhost:50051."""
  return os.environ.get('NT_SERVER') or DEFAULT_ADDRESS


def resolve_addresses(spec):
  """The endpoint addresses of `spec`: comma-separated host:port items; an item 'dns:///name:port' stands
  for every address the name resolves to (a Kubernetes headless Service gives one per pod).

  Returns a list of (address, tls_name): tls_name is the DNS name to verify TLS certificates against
  when the address is a resolved IP, else None.
  """
  out = []
  for item in str(spec).split(','):
    item = item.strip()
    if not item:
      continue
    if item.startswith('dns:///') or item.startswith('dns:'):
      target = item.split('///', 1)[1] if '///' in item else item[4:]
      host, _, port = target.rpartition(':')
      if not host or not port.isdigit():
        raise ValueError(f'NT_SERVER item {item!r}: expected dns:///name:port')
      infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
      seen = []
      for family, _, _, _, sockaddr in infos:
        ip = sockaddr[0]
        address = f'[{ip}]:{port}' if family == socket.AF_INET6 else f'{ip}:{port}'
        if address not in seen:
          seen.append(address)
      out.extend((a, host) for a in sorted(seen))
    else:
      out.append((item, None))
  if not out:
    raise ValueError(f'no server address in {spec!r}')
  return out


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
  """Adds 'authorization: Bearer <token>' to every call (also on plaintext channels)."""

  def __init__(self, token):
    self._metadata = ('authorization', f'Bearer {token}')

  def _details(self, details):
    metadata = list(details.metadata or []) + [self._metadata]
    return details._replace(metadata=metadata) if hasattr(details, '_replace') else \
        _CallDetails(details.method, details.timeout, metadata, details.credentials,
                     getattr(details, 'wait_for_ready', None), getattr(details, 'compression', None))

  def intercept_unary_unary(self, continuation, details, request):
    return continuation(self._details(details), request)

  def intercept_unary_stream(self, continuation, details, request):
    return continuation(self._details(details), request)

  def intercept_stream_unary(self, continuation, details, request_iterator):
    return continuation(self._details(details), request_iterator)

  def intercept_stream_stream(self, continuation, details, request_iterator):
    return continuation(self._details(details), request_iterator)


class _CallDetails(collections.namedtuple(
    '_CallDetails', ('method', 'timeout', 'metadata', 'credentials', 'wait_for_ready', 'compression')),
                   grpc.ClientCallDetails):
  pass


def _read_pem(value):
  if value is None or isinstance(value, bytes):
    return value
  with open(value, 'rb') as f:
    return f.read()


class Endpoint:
  """One server: its channel and stubs."""

  def __init__(self, address, *, tls_name=None, token=None, root_certificates=None, tls=False,
               private_key=None, certificate_chain=None):
    self.address = address
    options = [
        ('grpc.max_send_message_length', MAX_MESSAGE_BYTES),
        ('grpc.max_receive_message_length', MAX_MESSAGE_BYTES),
    ]
    if tls or root_certificates is not None:
      if tls_name:
        options.append(('grpc.ssl_target_name_override', tls_name))
      credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates,
                                                 private_key=private_key,
                                                 certificate_chain=certificate_chain)
      self.channel = grpc.secure_channel(address, credentials, options=options)
    else:
      self.channel = grpc.insecure_channel(address, options=options)
    if token:
      self.channel = grpc.intercept_channel(self.channel, _BearerToken(token))
    self.stub = _proto.service_pb2_grpc.KernelServiceStub(self.channel)
    # The bulk-byte calls with wire's (de)serializers: tiles read in place, chunks copied once.
    self.compute_kernel_split = self.channel.unary_stream(
        '/nt.v1.KernelService/ComputeKernel',
        request_serializer=_proto.service_pb2.KernelRequest.SerializeToString,
        response_deserializer=wire.split_kernel_response)
    self.upload_serialized = self.channel.stream_unary(
        '/nt.v1.KernelService/UploadTensor', request_serializer=None,
        response_deserializer=_proto.service_pb2.UploadTensorResponse.FromString)

  def close(self):
    self.channel.close()

  def __repr__(self):
    return f'Endpoint({self.address!r})'


class Connection:
  """Channels to one or several servers plus their KernelService and Health stubs.

  `address`: 'host:port', or several comma-separated (also 'dns:///name:port' for every address of a
  name); default $NT_SERVER, else localhost:50051. Kernels are split into tile ranges and spread over all
  endpoints, a failed range retried on another (ntclient.tiling); other calls go to the first endpoint
  that answers. `token` (default $NT_TOKEN) is sent as 'authorization: Bearer <token>';
  `root_certificates` (PEM bytes or a path; default the file named by $NT_TLS_CA) or `tls=True` (system
  roots) selects TLS; `private_key` and `certificate_chain` (PEM bytes or paths) are the client's own, for
  servers that require client certificates (--tls_client_ca_file).
  """

  def __init__(self, address=None, *, token=None, root_certificates=None, tls=None, private_key=None,
               certificate_chain=None):
    buffers.tune_malloc()
    self.address = address or default_address()
    token = token if token is not None else os.environ.get('NT_TOKEN') or None
    if root_certificates is None and os.environ.get('NT_TLS_CA'):
      root_certificates = os.environ['NT_TLS_CA']
    root_certificates = _read_pem(root_certificates)
    tls = bool(tls) or root_certificates is not None
    private_key, certificate_chain = _read_pem(private_key), _read_pem(certificate_chain)
    self.endpoints = [
        Endpoint(a, tls_name=name, token=token, root_certificates=root_certificates, tls=tls,
                 private_key=private_key, certificate_chain=certificate_chain)
        for a, name in resolve_addresses(self.address)
    ]
    self.channel = self.endpoints[0].channel
    self.stub = self.endpoints[0].stub

  def _call(self, method, request, timeout, stream=False):
    """Calls `method` (of the stub, else of the Endpoint) on the first endpoint that is reachable
    (UNAVAILABLE moves to the next)."""
    last = None
    for endpoint in self.endpoints:
      try:
        call = getattr(endpoint.stub, method, None) or getattr(endpoint, method)
        result = call(request, timeout=timeout)
        if not stream:
          return result
        # Streams fail on their first read when the server is down: read it here.
        it = iter(result)
        first = next(it, None)
        return itertools.chain(() if first is None else (first,), it)
      except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.UNAVAILABLE or len(self.endpoints) == 1:
          raise
        last = e
    raise last

  def upload(self, array, dtype=None, endpoint=None, chunk_bytes=UPLOAD_CHUNK_BYTES, timeout=None):
    """Uploads an array in chunks (UploadTensor) to `endpoint` (default the first); returns a Tensor
    message that carries its handle, usable in place of the array in requests to that server."""
    from ntclient import tensors
    dtype = tensors.auto_dtype(array) if dtype is None else tensors.wire_dtype(dtype)
    a = np.ascontiguousarray(np.asarray(array, dtype=tensors.numpy_dtype(dtype)))
    data = memoryview(a.reshape(-1).view(np.uint8)) if a.size else memoryview(b'')

    def chunks():
      yield wire.tensor_chunk(data[:chunk_bytes], shape=a.shape, dtype=dtype, offset=0)
      for start in range(chunk_bytes, len(data), chunk_bytes):
        yield wire.tensor_chunk(data[start:start + chunk_bytes], offset=start)

    response = (endpoint or self.endpoints[0]).upload_serialized(chunks(), timeout=timeout)
    return _proto.Tensor(handle=response.handle)

  def release(self, tensor, endpoint=None, timeout=10.0):
    """Drops an uploaded tensor (a handle string or the Tensor upload() returned)."""
    handle = tensor if isinstance(tensor, str) else tensor.handle
    stub = (endpoint or self.endpoints[0]).stub
    return stub.ReleaseTensor(_proto.service_pb2.ReleaseTensorRequest(handle=handle),
                              timeout=timeout).released

  def compute_kernel(self, request, timeout=None, split_tiles=False):
    """The ComputeKernel response stream (an iterator of KernelResponse) of one endpoint; with
    split_tiles, of wire.SplitResponse (tiles' blocks read in place; tensors.TileAssembler takes both)."""
    return self._call('compute_kernel_split' if split_tiles else 'ComputeKernel', request, timeout,
                      stream=True)

  def predict(self, request, timeout=None):
    """The Predict response stream (an iterator of PredictResponse)."""
    return self._call('Predict', request, timeout, stream=True)

  def describe(self, request, timeout=None):
    return self._call('Describe', request, timeout)

  def init(self, request, timeout=None):
    return self._call('Init', request, timeout)

  def apply(self, request, timeout=None):
    return self._call('Apply', request, timeout)

  def empirical_kernel(self, request, timeout=None):
    return self._call('EmpiricalKernel', request, timeout)

  def monte_carlo_kernel(self, request, timeout=None):
    """A stream of MonteCarloKernelResponse."""
    return self._call('MonteCarloKernel', request, timeout, stream=True)

  def health(self, service='', timeout=10.0):
    """The grpc.health.v1 serving status name, e.g. 'SERVING'."""
    if _proto.health_pb2_grpc is None:
      raise ImportError('ntclient: nt_health.health_pb2_grpc (grpc.health.v1 stubs) is not importable; '
                        'build the project to generate it')
    stub = _proto.health_pb2_grpc.HealthStub(self.channel)
    response = stub.Check(_proto.health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return _proto.health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

  def close(self):
    for endpoint in self.endpoints:
      endpoint.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __repr__(self):
    return f'Connection({self.address!r})'


_default = None


def connect(address=None, **kwargs):
  """Opens a connection (address or $NT_SERVER or localhost:50051; comma-separated for several servers)
  and makes it the default one. kwargs: token, root_certificates, tls (see Connection)."""
  global _default
  _default = Connection(address, **kwargs)
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
