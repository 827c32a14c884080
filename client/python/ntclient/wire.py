"""Bulk bytes on the wire without protobuf's copies: kernel tiles read in place, upload chunks built in one
copy.

A kernel's tiles carry nearly all of its bytes. Parsed as protobuf messages, each tile's block is copied
into the message and again out of it (`.data` makes a new bytes object), each time into fresh memory,
whose first touch is what costs: 0.39 s of client CPU for the 140 MB of a 4096 x 4096 NNGP+NTK kernel on
a 2-core VM, against 0.04 s when the block is read where gRPC put it (split_kernel_response). Likewise an
upload chunk built as a TensorChunk message is copied three times; tensor_chunk() copies it once.

Only the wire format's framing is read here (tags, lengths): every field but the block's bytes is still
parsed by protobuf, and anything unexpected (a repeated field, other fields next to the tile, malformed
framing) goes to protobuf's plain parse.
"""

import collections

from ntclient import _proto

# Field numbers (proto/nt/v1/*.proto): KernelResponse.tile, KernelTile.block, Tensor.data,
# TensorChunk.data.
_RESPONSE_TILE = 2
_TILE_BLOCK = 4
_TENSOR_DATA = 3
_CHUNK_DATA = 3
_LENGTH_DELIMITED = 2


class SplitResponse(collections.namedtuple('SplitResponse', ('message', 'data', 'nbytes'))):
  """A KernelResponse read off the wire. For a tile, `message.tile.block.data` is empty and `data` is a
  read-only memoryview of the block's bytes inside the received buffer; otherwise `data` is None.
  `nbytes` is the serialized size."""


class _Unscannable(Exception):
  """Framing this reader does not take apart (malformed, or groups): left to protobuf's own parse."""


def _varint(buf, i, end):
  value = shift = 0
  while True:
    if i >= end or shift > 63:
      raise _Unscannable()
    byte = buf[i]
    i += 1
    value |= (byte & 0x7F) << shift
    shift += 7
    if byte < 0x80:
      return value, i


def _find(buf, begin, end, number):
  """(tag start, value start, value end) of the one length-delimited field `number` in buf[begin:end];
  None when it is absent or occurs more than once (protobuf merges repeats: left to a plain parse)."""
  found = None
  i = begin
  while i < end:
    tag_start = i
    tag, i = _varint(buf, i, end)
    wire_type = tag & 7
    if wire_type == 0:
      _, i = _varint(buf, i, end)
    elif wire_type == 1:
      i += 8
    elif wire_type == 5:
      i += 4
    elif wire_type == _LENGTH_DELIMITED:
      length, value_start = _varint(buf, i, end)
      i = value_start + length
      if tag >> 3 == number:
        if found is not None:
          return None
        found = (tag_start, value_start, i)
    else:  # Groups (3, 4) are not in our protos.
      raise _Unscannable()
    if i > end:
      raise _Unscannable()
  return found


def split_kernel_response(raw):
  """A serialized KernelResponse -> SplitResponse (a gRPC response deserializer). Equal to protobuf's
  parse in every case: what is not a plain tile message (the tile field alone, its block and the
  block's data once each) is parsed by protobuf, malformed input raising its DecodeError."""
  KernelResponse = _proto.service_pb2.KernelResponse  # pylint: disable=invalid-name
  view = memoryview(raw)
  try:
    tile = _find(view, 0, len(raw), _RESPONSE_TILE)
    # The tile alone at the top: other payload fields would take the oneof depending on their order.
    block = tile and tile[0] == 0 and tile[2] == len(raw) and _find(view, tile[1], tile[2], _TILE_BLOCK)
    data = block and _find(view, block[1], block[2], _TENSOR_DATA)
  except _Unscannable:
    data = None
  if not data:
    return SplitResponse(KernelResponse.FromString(raw), None, len(raw))
  # Everything but the block's bytes: a few dozen bytes of fields, parsed by protobuf (in their order).
  message = KernelResponse()
  message.tile.block.SetInParent()
  message.tile.MergeFromString(bytes(view[tile[1]:block[0]]) + bytes(view[block[2]:tile[2]]))
  message.tile.block.MergeFromString(bytes(view[block[1]:data[0]]) + bytes(view[data[2]:block[2]]))
  return SplitResponse(message, view[data[1]:data[2]].toreadonly(), len(raw))


def _encode_varint(value):
  out = bytearray()
  while True:
    byte = value & 0x7F
    value >>= 7
    if value:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def tensor_chunk(data, **fields):
  """A serialized TensorChunk of `fields` (shape, dtype, offset) and `data` (a bytes-like view), with
  the data copied once: into the returned bytes."""
  head = _proto.service_pb2.TensorChunk(**fields).SerializeToString()
  tag = _encode_varint(_CHUNK_DATA << 3 | _LENGTH_DELIMITED)
  return b''.join((head, tag, _encode_varint(len(data)), data))
