"""numpy <-> nt.v1.Tensor, and assembly of streamed kernel tiles into arrays."""

import numpy as np

from ntclient import _proto
from ntclient import buffers
from ntclient import wire

DType = _proto.DType

# Wire element types: little-endian, row-major. DTYPE_UNSPECIFIED is read as FLOAT64.
_NP_DTYPE = {
    DType.DTYPE_UNSPECIFIED: np.dtype('<f8'),
    DType.FLOAT64: np.dtype('<f8'),
    DType.FLOAT32: np.dtype('<f4'),
    DType.BOOL: np.dtype('?'),
    DType.INT64: np.dtype('<i8'),
}


def numpy_dtype(dtype):
  """The numpy dtype of a wire DType."""
  try:
    return _NP_DTYPE[dtype]
  except KeyError:
    raise ValueError(f'unknown Tensor dtype {dtype}') from None


def wire_dtype(dtype):
  """A DType from None / 'float32' / np.float32 / np.dtype / DType value; None -> FLOAT64."""
  if dtype is None:
    return DType.FLOAT64
  if isinstance(dtype, str) and dtype.upper() in DType.keys():
    return DType.Value(dtype.upper())
  if isinstance(dtype, int) and not isinstance(dtype, bool) and dtype in DType.values():
    return dtype
  np_dtype = np.dtype(dtype)
  if np_dtype == np.float64:
    return DType.FLOAT64
  if np_dtype == np.float32:
    return DType.FLOAT32
  raise ValueError(f'unsupported dtype {dtype!r}: use float32 or float64')


def auto_dtype(array):
  """FLOAT64 for float data, INT64 for integers and BOOL for booleans (e.g. Aggregate patterns)."""
  kind = np.asarray(array).dtype.kind
  if kind == 'b':
    return DType.BOOL
  if kind in 'iu':
    return DType.INT64
  return DType.FLOAT64


def fill_tensor(tensor, array, dtype=DType.FLOAT64):
  """Writes an array-like into the Tensor message `tensor` in place (float64 unless `dtype` says otherwise).

  In place because copying a finished Tensor into a request (CopyFrom) copies its bytes again, which
  costs seconds for inputs of hundreds of MB.
  """
  a = wire_array(array, dtype)
  tensor.shape[:] = a.shape
  tensor.dtype = dtype
  tensor.data = a.tobytes()
  return tensor


def wire_array(array, dtype=DType.FLOAT64):
  """The array as its wire bytes will hold it: C-contiguous, of `dtype` (no copy when it already is)."""
  a = np.asarray(array, dtype=numpy_dtype(dtype))
  if not a.flags.c_contiguous:
    a = np.ascontiguousarray(a)  # Never on 0-d arrays, which it would make 1-d.
  return a


def to_tensor(array, dtype=DType.FLOAT64):
  """Converts an array-like to a new Tensor (float64 unless `dtype` says otherwise)."""
  return fill_tensor(_proto.Tensor(), array, dtype)


def from_tensor(tensor, copy=True, data=None):
  """Converts a Tensor to a numpy array; copy=False returns a read-only view of the message bytes.

  `data`: the tensor's bytes when they were read off the wire apart from it (wire.SplitResponse).
  """
  np_dtype = numpy_dtype(tensor.dtype)
  shape = tuple(tensor.shape)
  expected = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
  if data is None:
    data = tensor.data  # Each read of a bytes field copies it: read it once.
  if len(data) != expected:
    raise ValueError(
        f'Tensor of shape {shape} and dtype {DType.Name(tensor.dtype)} needs {expected} bytes, '
        f'got {len(data)}')
  a = np.frombuffer(data, dtype=np_dtype).reshape(shape)
  return a.copy() if copy else a


def _mirror_perm(name, shape, diagonal_spatial):
  """Axis permutation that turns a block at (rows, cols) into the block at (cols, rows).

  Batch axes 0 and 1 swap; in the full-spatial layout (s1, s1, s2, s2, ...) each spatial pair swaps too.
  """
  perm = [1, 0]
  trailing = shape[2:]
  if diagonal_spatial:
    return perm + list(range(2, len(shape)))
  if len(trailing) % 2 or any(trailing[k] != trailing[k + 1] for k in range(0, len(trailing), 2)):
    raise RuntimeError(f'mirrored array {name!r} of shape {shape} has no (s, s\') axis pairs '
                       '(full-spatial layout)')
  for k in range(2, len(shape), 2):
    perm += [k + 1, k]
  return perm


_STRIP = 32


class MemoryTargets:
  """Assembled arrays held in memory (numpy arrays; large ones reuse dropped ones' memory, see
  ntclient.buffers)."""

  def __init__(self):
    self.arrays = {}

  def create(self, name, shape, dtype):
    self.arrays[name] = buffers.empty(shape, dtype)

  def write(self, name, index, block):
    """Writes `block` at the basic-slice `index` (a tuple of slices) of array `name`."""
    if block.ndim == 2 and block.flags.f_contiguous and not block.flags.c_contiguous:
      target = self.arrays[name][index]
      # A mirrored (transposed) block: numpy copies it element by element across rows; strips of
      # _STRIP columns keep the reads in cache (31 -> 20 ms per 4096^2 NNGP+NTK pair).
      for c in range(0, block.shape[1], _STRIP):
        target[:, c:c + _STRIP] = block[:, c:c + _STRIP]
    else:
      self.arrays[name][index] = block

  def result(self):
    return self.arrays


class NpyTargets:
  """Assembled arrays written block by block into .npy files, so that kernels larger than the client's
  memory can be computed: only one block is held at a time.

  `path` names the file; with several arrays, '{name}' in it is replaced by the array's name (else
  '.{name}' goes before the extension). result() returns read-only memory maps of the files.
  """

  def __init__(self, path):
    self.path = str(path)
    self.paths = {}
    self._files = {}  # name -> (fd, data offset, shape, dtype)

  def path_of(self, name, several):
    if '{name}' in self.path:
      return self.path.format(name=name)
    if not several:
      return self.path
    stem, dot, ext = self.path.rpartition('.')
    return f'{stem}.{name}.{ext}' if dot and '/' not in ext else f'{self.path}.{name}'

  def create(self, name, shape, dtype, several=True):
    import os
    path = self.path_of(name, several)
    header = {'descr': np.lib.format.dtype_to_descr(np.dtype(dtype)), 'fortran_order': False,
              'shape': tuple(shape)}
    with open(path, 'wb') as f:
      np.lib.format.write_array_header_1_0(f, header) if _header_fits_v1(header) else \
          np.lib.format.write_array_header_2_0(f, header)
      offset = f.tell()
      f.truncate(offset + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    self.paths[name] = path
    self._files[name] = (os.open(path, os.O_WRONLY), offset, tuple(shape), np.dtype(dtype))

  def write(self, name, index, block):
    """pwrite()s each contiguous row segment of the block at `index` (slices of the leading axes)."""
    import os
    fd, offset, shape, dtype = self._files[name]
    block = np.ascontiguousarray(block, dtype=dtype)
    lead = len(index)
    trailing = int(np.prod(shape[lead:], dtype=np.int64)) if lead < len(shape) else 1
    if lead == 0:
      os.pwrite(fd, block.tobytes(), offset)
      return
    starts = [sl.start or 0 for sl in index]
    if lead == 1:
      os.pwrite(fd, block.tobytes(), offset + starts[0] * trailing * dtype.itemsize)
      return
    row_elems = shape[1] * trailing
    for i in range(block.shape[0]):
      pos = (starts[0] + i) * row_elems + starts[1] * trailing
      os.pwrite(fd, block[i].tobytes(), offset + pos * dtype.itemsize)

  def close(self):
    import os
    for fd, *_ in self._files.values():
      os.close(fd)
    self._files = {}

  def result(self):
    self.close()
    return {name: np.load(path, mmap_mode='r') for name, path in self.paths.items()}


def _header_fits_v1(header):
  return len(repr(header)) < 65000


class TileAssembler:
  """Builds the full arrays from ComputeKernel response streams (header, tiles, summary).

  A mirrored tile is also written at the transposed position as soon as it arrives: the header's
  diagonal_spatial says whether the trailing axes come in (s, s') pairs that the transpose swaps.
  `targets` holds the arrays (MemoryTargets by default, NpyTargets for files). Several streams of one
  kernel (tile ranges of it, from several servers) may be consumed into one assembler, from several
  threads: their headers must agree.
  """

  def __init__(self, targets=None):
    import threading
    self.targets = targets if targets is not None else MemoryTargets()
    self.header = None
    self.summary = None
    self._infos = {}
    self._lock = threading.Lock()

  @property
  def arrays(self):
    return self.targets.result() if isinstance(self.targets, MemoryTargets) else self.targets.arrays

  def consume(self, responses, on_tile=None):
    """Reads one whole stream of KernelResponse messages or wire.SplitResponse items (whose tiles'
    blocks are read where gRPC received them); returns the dict name -> array. gRPC errors propagate.

    on_tile(tile) is called after each tile is placed (a KernelTile; of a SplitResponse, without its
    block's bytes).
    """
    header = summary = None
    tiles = 0
    for response in responses:
      data = None
      if isinstance(response, wire.SplitResponse):
        response, data = response.message, response.data
      kind = response.WhichOneof('payload')
      if kind == 'header':
        if header is not None:
          raise RuntimeError('ComputeKernel stream has two headers')
        header = response.header
        self._on_header(header)
      elif kind == 'tile':
        if header is None:
          raise RuntimeError('ComputeKernel sent a tile before the header')
        self._on_tile(response.tile, data)
        tiles += 1
        if on_tile is not None:
          on_tile(response.tile)
      elif kind == 'summary':
        summary = response.summary
    if header is None:
      raise RuntimeError('ComputeKernel stream ended without a header')
    if summary is None:
      raise RuntimeError('ComputeKernel stream ended without a summary')
    if header.num_tiles and tiles != header.num_tiles:
      raise RuntimeError(f'ComputeKernel sent {tiles} tiles, the header announced {header.num_tiles}')
    self.summary = summary
    return self.targets.result() if isinstance(self.targets, MemoryTargets) else None

  def result(self):
    return self.targets.result()

  def _on_header(self, header):
    with self._lock:
      if self.header is not None:
        same = ([(i.name, tuple(i.shape), i.tiled_axes) for i in header.arrays] ==
                [(i.name, tuple(i.shape), i.tiled_axes) for i in self.header.arrays] and
                header.dtype == self.header.dtype and
                header.diagonal_spatial == self.header.diagonal_spatial)
        if not same:
          raise RuntimeError('ComputeKernel streams of one kernel disagree on its arrays')
        return
      self.header = header
      dtype = numpy_dtype(header.dtype)
      for info in header.arrays:
        self._infos[info.name] = info
        if isinstance(self.targets, NpyTargets):
          self.targets.create(info.name, tuple(info.shape), dtype, several=len(header.arrays) > 1)
        else:
          self.targets.create(info.name, tuple(info.shape), dtype)

  def _on_tile(self, tile, data=None):
    info = self._infos.get(tile.name)
    if info is None:
      raise RuntimeError(f'ComputeKernel sent a tile of unannounced array {tile.name!r}')
    tiled = info.tiled_axes
    if tile.mirror and tiled != 2:
      raise RuntimeError(f'ComputeKernel sent a mirrored tile of {tile.name!r}, which has {tiled} '
                         'tiled axes')
    block = from_tensor(tile.block, copy=False, data=data)
    r, c = tile.row_offset, tile.col_offset
    if tiled == 0:
      self.targets.write(tile.name, (), block)
    elif tiled == 1:
      self.targets.write(tile.name, (slice(r, r + block.shape[0]),), block)
    else:
      self.targets.write(tile.name, (slice(r, r + block.shape[0]), slice(c, c + block.shape[1])), block)
      if tile.mirror:
        perm = _mirror_perm(tile.name, tuple(info.shape), self.header.diagonal_spatial)
        self.targets.write(tile.name, (slice(c, c + block.shape[1]), slice(r, r + block.shape[0])),
                           block.transpose(perm))
