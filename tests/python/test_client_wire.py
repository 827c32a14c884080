"""ntclient's bulk-byte paths: tiles read in place (wire.split_kernel_response), upload chunks built in one
copy (wire.tensor_chunk), result memory reused (buffers) and mirrored blocks written in strips."""

import gc
import threading
import time
import unittest

import numpy as np

from ntclient import _proto
from ntclient import buffers
from ntclient import stax
from ntclient import tensors
from ntclient import wire

import server_fixture

KernelResponse = _proto.service_pb2.KernelResponse


def _tile_response(block, name='ntk', row=256, col=512, mirror=True):
  r = KernelResponse()
  r.tile.name = name
  r.tile.row_offset = row
  r.tile.col_offset = col
  r.tile.mirror = mirror
  tensors.fill_tensor(r.tile.block, block)
  return r


class SplitKernelResponseTest(unittest.TestCase):

  def test_a_tile_splits_into_its_fields_and_a_view_of_its_block(self):
    block = np.arange(12.0).reshape(3, 4)
    raw = _tile_response(block).SerializeToString()
    split = wire.split_kernel_response(raw)
    self.assertEqual(split.nbytes, len(raw))
    self.assertEqual(split.message.tile.name, 'ntk')
    self.assertEqual((split.message.tile.row_offset, split.message.tile.col_offset), (256, 512))
    self.assertTrue(split.message.tile.mirror)
    self.assertEqual(list(split.message.tile.block.shape), [3, 4])
    self.assertEqual(split.message.tile.block.dtype, tensors.DType.FLOAT64)
    self.assertEqual(split.message.tile.block.data, b'')
    self.assertTrue(split.data.readonly)
    np.testing.assert_array_equal(tensors.from_tensor(split.message.tile.block, data=split.data), block)
    # Everything but the bytes equals protobuf's own parse.
    plain = KernelResponse.FromString(raw)
    plain.tile.block.data = b''
    self.assertEqual(split.message, plain)

  def test_headers_summaries_and_empty_blocks_parse_as_usual(self):
    header = KernelResponse()
    header.header.num_tiles = 7
    header.header.arrays.add(name='nngp', shape=[4, 4], tiled_axes=2)
    summary = KernelResponse()
    summary.summary.num_tiles = 7
    summary.summary.compute_seconds = 0.25
    empty_block = _tile_response(np.zeros((0, 3)))
    for message in (header, summary, empty_block, KernelResponse()):
      split = wire.split_kernel_response(message.SerializeToString())
      self.assertEqual(split.message, message)
      self.assertIsNone(split.data)

  def test_fields_in_any_order_and_unknown_fields_parse(self):
    block = np.array([[1.5, -2.0]])
    tile = _tile_response(block).tile
    # The block first, then the other fields, then an unknown varint field (number 99) in the tile.
    raw_tile = (_field(4, tile.block.SerializeToString()) + _field(1, b'nngp') + bytes([0x10, 0x05]) +
                _varint((99 << 3) | 0) + _varint(3))
    raw = _field(2, raw_tile)
    split = wire.split_kernel_response(raw)
    self.assertEqual(split.message.tile.name, 'nngp')
    self.assertEqual(split.message.tile.row_offset, 5)
    np.testing.assert_array_equal(tensors.from_tensor(split.message.tile.block, data=split.data), block)

  def test_a_repeated_block_field_is_left_to_protobuf(self):
    # Protobuf merges repeated occurrences of a message field: the second block's data wins.
    first = _tile_response(np.array([[1.0]])).tile.block.SerializeToString()
    second = _tile_response(np.array([[2.0]])).tile.block.SerializeToString()
    raw = _field(2, _field(1, b'ntk') + _field(4, first) + _field(4, second))
    split = wire.split_kernel_response(raw)
    self.assertIsNone(split.data)
    self.assertEqual(split.message, KernelResponse.FromString(raw))
    self.assertEqual(split.message.tile.block.data, np.array([2.0]).tobytes())

  def test_malformed_framing_raises(self):
    raw = _tile_response(np.ones((2, 2))).SerializeToString()
    for bad in (raw[:-3], b'\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01', b'\x13'):
      with self.assertRaises(Exception):
        wire.split_kernel_response(bad)

  def test_agrees_with_protobuf_on_mutated_messages(self):
    # Random byte edits, insertions and truncations of tile messages: either both parses fail, or both
    # give the same message and block bytes.
    rng = np.random.default_rng(3)
    seeds = [_tile_response(rng.normal(size=(3, 5))).SerializeToString(),
             _tile_response(np.ones((1, 2)), name='nngp', row=0, col=0, mirror=False).SerializeToString()]
    seeds.append(seeds[0] + seeds[1])  # Two tile fields: protobuf merges them.
    header = KernelResponse()
    header.header.num_tiles = 3
    seeds.append(seeds[0] + header.SerializeToString())  # The header after the tile takes the oneof.
    agreed = 0
    for trial in range(3000):
      raw = bytearray(seeds[trial % len(seeds)])
      for _ in range(int(rng.integers(0, 3))):
        if not raw:
          break
        where = int(rng.integers(0, len(raw)))
        choice = int(rng.integers(0, 3))
        if choice < 2 and _in_a_name(raw, where):
          continue  # Invalid UTF-8 in a string field: both fail, but libprotobuf logs each time.
        if choice == 0:
          raw[where] = int(rng.integers(0, 256))
        elif choice == 1:
          raw.insert(where, int(rng.integers(0, 256)))
        else:
          del raw[where:]
      raw = bytes(raw)
      try:
        plain = KernelResponse.FromString(raw)
      except Exception:  # pylint: disable=broad-except
        plain = None
      try:
        split = wire.split_kernel_response(raw)
      except Exception:  # pylint: disable=broad-except
        split = None
      self.assertEqual(plain is None, split is None, raw)
      if plain is None:
        continue
      got = KernelResponse()
      got.CopyFrom(split.message)
      if split.data is not None:
        self.assertEqual(got.tile.block.data, b'')
        got.tile.block.data = bytes(split.data)
      self.assertEqual(got, plain, raw)
      agreed += 1
    self.assertGreater(agreed, 1000)


def _in_a_name(raw, where):
  return any(raw[i:i + len(name)] == name and i <= where < i + len(name)
             for name in (b'ntk', b'nngp') for i in range(max(0, where - 3), where + 1))


def _varint(value):
  out = bytearray()
  while True:
    byte, value = value & 0x7F, value >> 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field(number, payload):
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


class TensorChunkTest(unittest.TestCase):

  def test_equals_protobufs_serialization(self):
    data = np.arange(1000, dtype=np.float64)
    view = memoryview(data.view(np.uint8))
    for fields in (dict(shape=[10, 100], dtype=tensors.DType.FLOAT64, offset=0), dict(offset=4096), {}):
      raw = wire.tensor_chunk(view[4096:], **fields)
      parsed = _proto.service_pb2.TensorChunk.FromString(raw)
      self.assertEqual(parsed, _proto.service_pb2.TensorChunk(data=bytes(view[4096:]), **fields))
    self.assertEqual(_proto.service_pb2.TensorChunk.FromString(wire.tensor_chunk(b'', offset=0)).data, b'')


class BuffersTest(unittest.TestCase):

  def setUp(self):
    self.capacity = buffers._cache.capacity  # pylint: disable=protected-access
    buffers.set_capacity(1 << 30)

  def tearDown(self):
    buffers.set_capacity(self.capacity)

  def test_small_arrays_are_plain(self):
    a = buffers.empty((10, 10))
    self.assertTrue(a.flags.owndata)
    self.assertEqual(a.dtype, np.float64)

  def test_a_dropped_arrays_memory_is_reused_and_views_keep_it(self):
    shape = (2048, 2048)  # 32 MiB.
    a = buffers.empty(shape)
    self.assertEqual(a.shape, shape)
    self.assertTrue(a.flags.writeable and a.flags.c_contiguous)
    address = a.__array_interface__['data'][0]
    view = a[5:7]
    a[:] = 3.0
    del a
    gc.collect()
    b = buffers.empty(shape)  # The view still holds the first block: b must not share it.
    self.assertNotEqual(b.__array_interface__['data'][0], address)
    b[:] = 4.0
    np.testing.assert_array_equal(view, 3.0)
    del view
    gc.collect()
    cached = buffers.cached_bytes()
    self.assertGreaterEqual(cached, 32 << 20)
    c = buffers.empty((4096, 1024))  # Same size, another shape: reuses the block.
    self.assertEqual(c.__array_interface__['data'][0], address)
    self.assertEqual(buffers.cached_bytes(), cached - (32 << 20))
    np.testing.assert_array_equal(b, 4.0)

  def test_capacity_bounds_what_is_kept(self):
    arrays = [buffers.empty((4096, 1024)) for _ in range(3)]
    buffers.set_capacity(64 << 20)
    del arrays
    gc.collect()
    self.assertEqual(buffers.cached_bytes(), 64 << 20)
    buffers.set_capacity(0)
    self.assertEqual(buffers.cached_bytes(), 0)
    a = buffers.empty((4096, 1024))
    self.assertTrue(a.flags.owndata)  # Off: plain numpy memory.

  def test_arrays_dropped_while_the_cache_is_busy_are_settled_after(self):
    a = buffers.empty((4096, 1024))
    before = buffers.cached_bytes()
    cache = buffers._cache  # pylint: disable=protected-access
    with cache.lock:  # As if the collection happened inside the cache's own critical section.
      del a
      gc.collect()
      self.assertEqual(len(cache.returned), 1)
    self.assertEqual(buffers.cached_bytes(), before + (32 << 20))

  def test_threads_never_share_a_live_block(self):
    errors = []

    def work(value):
      try:
        for _ in range(4):
          a = buffers.empty((4096, 1024))
          a.fill(value)
          time.sleep(0.001)
          if not (a[0, 0] == value and a[-1, -1] == value and float(a[::512].min()) == value):
            errors.append(f'block of thread {value} was overwritten')
          del a
      except Exception as e:  # pylint: disable=broad-except
        errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(float(v),)) for v in range(4)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    self.assertEqual(errors, [])

  def test_float32_and_odd_sizes(self):
    a = buffers.empty((3001, 4001), np.float32)
    self.assertEqual((a.shape, a.dtype), ((3001, 4001), np.float32))
    a[:] = 1.5
    self.assertEqual(float(a.sum(dtype=np.float64)), 1.5 * 3001 * 4001)


class MirroredWriteTest(unittest.TestCase):

  def test_transposed_blocks_land_transposed(self):
    rng = np.random.default_rng(1)
    targets = tensors.MemoryTargets()
    targets.create('k', (300, 300), np.float64)
    block = rng.normal(size=(100, 70))  # Not a multiple of the strip width.
    targets.write('k', (slice(200, 270), slice(10, 110)), block.T)
    targets.write('k', (slice(10, 110), slice(200, 270)), block)
    k = targets.result()['k']
    np.testing.assert_array_equal(k[200:270, 10:110], block.T)
    np.testing.assert_array_equal(k[10:110, 200:270], block)


class SplitStreamTest(server_fixture.ServerTestCase):
  """Through a live server: both ways of reading a stream give the same arrays."""

  def test_split_and_plain_streams_agree(self):
    conn = self.conn
    rng = np.random.default_rng(2)
    cases = [
        (stax.serial(stax.Dense(64, 1.3, 0.2), stax.Relu(), stax.Dense(1)), rng.normal(size=(70, 9)), None),
        (stax.serial(stax.Conv(4, (3, 3), padding='SAME'), stax.Relu()), rng.normal(size=(9, 5, 4, 2)),
         rng.normal(size=(6, 5, 4, 2))),
    ]
    for (_, _, kernel_fn), x1, x2 in cases:
      request = stax.kernel_request(kernel_fn, x1, x2, ('nngp', 'ntk'), tile_size=4)
      plain = tensors.TileAssembler().consume(conn.compute_kernel(request))
      tiles = []
      split = tensors.TileAssembler().consume(conn.compute_kernel(request, split_tiles=True),
                                               on_tile=lambda tile: tiles.append(tile.block.data))
      self.assertTrue(tiles)
      self.assertTrue(all(data == b'' for data in tiles))
      self.assertEqual(sorted(plain), sorted(split))
      for name in plain:
        np.testing.assert_array_equal(split[name], plain[name])


if __name__ == '__main__':
  unittest.main()
