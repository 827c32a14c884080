"""One kernel over several servers: tile ranges spread over endpoints, retried elsewhere on failure.

The server computes any range of a kernel's tiles exactly as in a whole request (KernelRequest.tile_begin
/ tile_end with one explicit tile_size), so the assembled result is identical to one server's. Inputs
larger than UPLOAD_THRESHOLD_BYTES are uploaded once per endpoint in chunks and sent by handle.
"""

import queue
import threading
import time

import grpc
from ntclient import _proto
from ntclient import connection as connection_lib
from ntclient import tensors

# Errors after which a range is worth retrying on another endpoint (the server went away or is busy).
RETRYABLE = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.ABORTED,
})
# An endpoint that failed this many times in a row is given up.
MAX_CONSECUTIVE_FAILURES = 3


def _tensor_fields(request):
  """(field name, Tensor message) of the request's inputs that may be sent by handle."""
  out = [('x1', request.x1)]
  for name in ('x2', 'pattern1', 'pattern2'):
    if request.HasField(name):
      out.append((name, getattr(request, name)))
  return out


class _Inputs:
  """The request's large tensors, uploaded lazily to each endpoint (again after NOT_FOUND)."""

  def __init__(self, conn, request, threshold, large=None):
    self.conn = conn
    # Inputs the caller kept out of the request (name -> array; the request has their shape and dtype).
    large = large or {}
    self.arrays = dict(large)
    self.dtypes = {name: getattr(request, name).dtype for name in large}
    # When the whole request would be too large, every input but tiny ones goes by handle.
    cutoff = threshold if request.ByteSize() <= threshold else min(threshold, 64 * 1024)
    for name, t in _tensor_fields(request):
      if name not in large and t.ByteSize() > cutoff:
        self.arrays[name] = tensors.from_tensor(t, copy=False)
        self.dtypes[name] = t.dtype
    self.large = list(self.arrays)
    self.handles = {}  # endpoint address -> {name: Tensor with handle}
    self.lock = threading.Lock()

  def request_for(self, endpoint, base, timeout):
    """A copy of `base` whose large tensors are handles on `endpoint` (uploading them if needed)."""
    if not self.large:
      request = _proto.service_pb2.KernelRequest()
      request.CopyFrom(base)
      return request
    with self.lock:
      have = self.handles.get(endpoint.address)
    if have is None:
      have = {name: self.conn.upload(self.arrays[name], self.dtypes[name], endpoint=endpoint,
                                     timeout=timeout)
              for name in self.large}
      with self.lock:
        self.handles[endpoint.address] = have
    request = _proto.service_pb2.KernelRequest()
    request.CopyFrom(base)
    for name, t in have.items():
      getattr(request, name).CopyFrom(t)
    return request

  def forget(self, endpoint):
    with self.lock:
      self.handles.pop(endpoint.address, None)

  def release_all(self):
    for address, have in list(self.handles.items()):
      endpoint = next((e for e in self.conn.endpoints if e.address == address), None)
      for t in have.values():
        try:
          self.conn.release(t, endpoint=endpoint, timeout=5.0)
        except grpc.RpcError:
          pass  # The server went away or dropped it already.


def distributed_kernel(conn, request, *, out=None, ranges_per_endpoint=None, progress=None, stats=None,
                       timeout=None, upload_threshold=None, large=None):
  """Computes the KernelRequest `request` over every endpoint of `conn`.

  `large`: inputs kept out of the request (name -> array, see stax.kernel_request), uploaded as they are.
  `ranges_per_endpoint`: tile ranges per endpoint, for balancing and retries (default 4 with several
  endpoints; 1 with one, where more ranges only add requests run one after the other).

  Returns the dict name -> array (numpy arrays; read-only memory maps of .npy files when `out` names a
  file, see tensors.NpyTargets). progress(address, tiles_done, tiles_total) is called after each tile;
  `stats` (a dict) receives ranges, retries, tiles per endpoint and the endpoints given up.
  """
  upload_threshold = (connection_lib.UPLOAD_THRESHOLD_BYTES if upload_threshold is None
                      else upload_threshold)
  endpoints = list(conn.endpoints)
  describe = _proto.service_pb2.DescribeRequest(
      architecture=request.architecture, get=request.get, tile_size=request.tile_size,
      x1_shape=list(request.x1.shape))
  if request.HasField('x2'):
    describe.x2_shape[:] = list(request.x2.shape)
  for field in ('diagonal_batch', 'diagonal_spatial'):
    if request.HasField(field):
      setattr(describe, field, getattr(request, field))
  plan = conn.describe(describe, timeout=timeout)
  base = _proto.service_pb2.KernelRequest()
  base.CopyFrom(request)
  base.tile_size = plan.tile_size  # One tile grid on every server.
  inputs = _Inputs(conn, base, upload_threshold, large)
  for name in inputs.large:
    base.ClearField(name)
    getattr(base, name).handle = 'pending'  # Replaced per endpoint.

  total = int(plan.num_tiles)
  if ranges_per_endpoint is None:
    ranges_per_endpoint = 4 if len(endpoints) > 1 else 1
  n_ranges = max(1, min(total, ranges_per_endpoint * len(endpoints)))
  bounds = [round(i * total / n_ranges) for i in range(n_ranges + 1)]
  work = queue.Queue()
  for lo, hi in zip(bounds[:-1], bounds[1:]):
    if hi > lo:
      work.put((lo, hi))
  pending = [work.qsize()]
  assembler = tensors.TileAssembler(tensors.NpyTargets(out) if out is not None else None)
  lock = threading.Lock()
  done = threading.Event()
  errors = []  # A non-retryable error ends the whole computation.
  stats = stats if stats is not None else {}
  stats.update(ranges=pending[0], retries=0, tiles={e.address: 0 for e in endpoints}, given_up=[],
               tile_size=int(plan.tile_size), total_tiles=total)
  live = [len(endpoints)]
  tiles_done = [0]

  def worker(endpoint):
    failures = 0
    while not done.is_set():
      try:
        lo, hi = work.get(timeout=0.05)
      except queue.Empty:
        continue
      try:
        req = inputs.request_for(endpoint, base, timeout)
        req.tile_begin, req.tile_end = lo, hi

        def on_tile(tile, address=endpoint.address):
          with lock:
            stats['tiles'][address] += 1
            tiles_done[0] += 1
            n = tiles_done[0]
          if progress is not None:
            progress(address, n, None)

        assembler.consume(endpoint.compute_kernel_split(req, timeout=timeout), on_tile=on_tile)
        failures = 0
        with lock:
          pending[0] -= 1
          if pending[0] == 0:
            done.set()
      except grpc.RpcError as e:
        code = e.code()
        if code == grpc.StatusCode.NOT_FOUND and 'handle' in (e.details() or ''):
          inputs.forget(endpoint)  # Evicted or expired upload: upload again.
          work.put((lo, hi))
          continue
        if code not in RETRYABLE:
          with lock:
            errors.append(e)
          done.set()
          return
        failures += 1
        with lock:
          stats['retries'] += 1
        work.put((lo, hi))  # Another endpoint (or this one, later) takes the range.
        if code == grpc.StatusCode.UNAVAILABLE or failures >= MAX_CONSECUTIVE_FAILURES:
          with lock:
            stats['given_up'].append(endpoint.address)
            live[0] -= 1
            if live[0] == 0:
              errors.append(e)
              done.set()
          return
        time.sleep(min(2.0, 0.1 * 2 ** failures))  # Busy: back off before the next range.
      except Exception as e:  # pylint: disable=broad-except
        with lock:
          errors.append(e)
        done.set()
        return

  threads = [threading.Thread(target=worker, args=(e,), daemon=True) for e in endpoints]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  inputs.release_all()
  if errors:
    if isinstance(assembler.targets, tensors.NpyTargets):
      assembler.targets.close()
    raise errors[0]
  if assembler.header is None:  # A kernel with no tiles at all cannot happen; keep the error clear.
    raise RuntimeError('ComputeKernel: no tile was computed')
  return assembler.result()


def needs_distribution(conn, request, out, upload_threshold=None):
  """Whether a kernel call should go through distributed_kernel rather than one plain request."""
  threshold = (connection_lib.UPLOAD_THRESHOLD_BYTES if upload_threshold is None else upload_threshold)
  return out is not None or len(conn.endpoints) > 1 or request.ByteSize() > threshold
