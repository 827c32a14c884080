"""numpy <-> nt.v1.Tensor, and assembly of streamed kernel tiles into arrays."""

import numpy as np

from ntclient import _proto

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
  a = np.asarray(array, dtype=numpy_dtype(dtype))
  if not a.flags.c_contiguous:
    a = np.ascontiguousarray(a)  # Never on 0-d arrays, which it would make 1-d.
  tensor.shape[:] = a.shape
  tensor.dtype = dtype
  tensor.data = a.tobytes()
  return tensor


def to_tensor(array, dtype=DType.FLOAT64):
  """Converts an array-like to a new Tensor (float64 unless `dtype` says otherwise)."""
  return fill_tensor(_proto.Tensor(), array, dtype)


def from_tensor(tensor, copy=True):
  """Converts a Tensor to a numpy array; copy=False returns a read-only view of the message bytes."""
  np_dtype = numpy_dtype(tensor.dtype)
  shape = tuple(tensor.shape)
  expected = int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize
  if len(tensor.data) != expected:
    raise ValueError(
        f'Tensor of shape {shape} and dtype {DType.Name(tensor.dtype)} needs {expected} bytes, '
        f'got {len(tensor.data)}')
  a = np.frombuffer(tensor.data, dtype=np_dtype).reshape(shape)
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


class TileAssembler:
  """Builds the full arrays from a ComputeKernel response stream (header, tiles, summary).

  A mirrored tile is also written at the transposed position as soon as it arrives: the header's
  diagonal_spatial says whether the trailing axes come in (s, s') pairs that the transpose swaps.
  """

  def __init__(self):
    self.header = None
    self.summary = None
    self.arrays = {}   # name -> np.ndarray, in header order.
    self._infos = {}
    self._num_tiles = 0

  def consume(self, responses):
    """Reads the whole stream; returns the dict name -> array. gRPC errors propagate."""
    for response in responses:
      kind = response.WhichOneof('payload')
      if kind == 'header':
        self._on_header(response.header)
      elif kind == 'tile':
        self._on_tile(response.tile)
      elif kind == 'summary':
        self.summary = response.summary
    if self.header is None:
      raise RuntimeError('ComputeKernel stream ended without a header')
    if self.summary is None:
      raise RuntimeError('ComputeKernel stream ended without a summary')
    if self.header.num_tiles and self._num_tiles != self.header.num_tiles:
      raise RuntimeError(
          f'ComputeKernel sent {self._num_tiles} tiles, the header announced {self.header.num_tiles}')
    return self.arrays

  def _on_header(self, header):
    if self.header is not None:
      raise RuntimeError('ComputeKernel stream has two headers')
    self.header = header
    dtype = numpy_dtype(header.dtype)
    for info in header.arrays:
      self._infos[info.name] = info
      self.arrays[info.name] = np.empty(tuple(info.shape), dtype=dtype)

  def _on_tile(self, tile):
    if self.header is None:
      raise RuntimeError('ComputeKernel sent a tile before the header')
    out = self.arrays.get(tile.name)
    if out is None:
      raise RuntimeError(f'ComputeKernel sent a tile of unannounced array {tile.name!r}')
    tiled = self._infos[tile.name].tiled_axes
    if tile.mirror and tiled != 2:
      raise RuntimeError(f'ComputeKernel sent a mirrored tile of {tile.name!r}, which has {tiled} '
                         'tiled axes')
    self._num_tiles += 1
    block = from_tensor(tile.block, copy=False)
    r, c = tile.row_offset, tile.col_offset
    if tiled == 0:
      out[...] = block
    elif tiled == 1:
      out[r:r + block.shape[0]] = block
    else:
      out[r:r + block.shape[0], c:c + block.shape[1]] = block
      if tile.mirror:
        perm = _mirror_perm(tile.name, out.shape, self.header.diagonal_spatial)
        out[c:c + block.shape[1], r:r + block.shape[0]] = block.transpose(perm)
