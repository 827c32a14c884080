"""Memory for large result arrays, reused once the arrays that held it are gone.

numpy takes each large array from the system and gives it back when the array dies, so every kernel
received into fresh arrays pays for first touching its pages (zeroed by the kernel): 0.1-0.2 s per
4096 x 4096 NNGP+NTK pair measured on a 2-core VM, a sixth of the engine's time. The server's core keeps
such blocks in a bounded cache (core/array.h); the client does the same here: arrays of at least
MIN_BYTES are views of anonymous mappings, and when the last view of one is collected its mapping goes to a
free list (at most `capacity` bytes, oldest dropped first) for the next array of the same rounded size.
set_capacity(0) turns this off.

gRPC's own receive buffers come from malloc, and glibc gives freed memory at the top of the heap back to
the system once more than 128 KiB-1 MiB is free: every message then lands in fresh pages again. Like the
server (server/main.cc), the client raises glibc's trim and mmap thresholds (64 / 32 MiB) when its first
connection opens (tune_malloc); NT_CLIENT_MALLOC_TUNING=0 leaves the process's settings alone.
"""

import collections
import ctypes
import mmap
import os
import threading
import weakref

import numpy as np

MIN_BYTES = 32 << 20
_ROUND = 2 << 20  # Huge-page multiples: the mappings are madvise(MADV_HUGEPAGE)d.


def _default_capacity():
  try:
    ram = os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  except (ValueError, OSError, AttributeError):
    ram = 16 << 30
  return min(2 << 30, ram // 8)


class _Cache:

  def __init__(self, capacity):
    self.capacity = capacity
    self.free = collections.OrderedDict()  # id(mapping) -> (size, mapping), oldest first.
    self.cached = 0
    self.lock = threading.Lock()
    # Mappings of collected arrays. A collection can happen inside any allocation, also while this
    # thread holds the lock (e.g. in _take): the callback only appends here, and whoever holds the lock
    # moves them to the free list (_settle) before letting go.
    self.returned = collections.deque()

  def empty(self, shape, dtype):
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dtype.itemsize
    if nbytes < MIN_BYTES or self.capacity <= 0:
      return np.empty(shape, dtype)
    size = -(-nbytes // _ROUND) * _ROUND
    mapping = self._take(size)
    if mapping is None:
      mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
      if hasattr(mmap, 'MADV_HUGEPAGE'):
        mapping.madvise(mmap.MADV_HUGEPAGE)
    flat = np.frombuffer(mapping, dtype=dtype, count=count)
    # `flat` is the base of every view of the result: when it is collected, no view is left.
    weakref.finalize(flat, self._return, size, mapping)
    return flat.reshape(shape)

  def _return(self, size, mapping):
    self.returned.append((size, mapping))
    self._settle()

  def _settle(self):
    """Moves returned mappings to the free list and trims it to the capacity."""
    while self.returned:
      if not self.lock.acquire(blocking=False):
        return  # The holder settles once more after letting go.
      try:
        while self.returned:
          size, mapping = self.returned.popleft()
          self.free[id(mapping)] = (size, mapping)
          self.cached += size
        self._shrink(self.capacity)
      finally:
        self.lock.release()

  def _take(self, size):
    mapping = None
    with self.lock:
      for block_size, candidate in self.free.values():
        if block_size == size:
          mapping = candidate
          break
      if mapping is not None:
        del self.free[id(mapping)]
        self.cached -= size
    self._settle()
    return mapping

  def _shrink(self, limit):
    while self.cached > limit and self.free:
      # Not close(): the collected array's memoryview of the mapping may not be released yet; the
      # mapping is unmapped when its last reference goes.
      _, (size, _) = self.free.popitem(last=False)
      self.cached -= size

  def set_capacity(self, nbytes):
    with self.lock:
      self.capacity = int(nbytes)
      self._shrink(max(self.capacity, 0))
    self._settle()


_cache = _Cache(_default_capacity())


def empty(shape, dtype=np.float64):
  """An uninitialised C-contiguous array (from the cache when it is large)."""
  return _cache.empty(tuple(shape), dtype)


def set_capacity(nbytes):
  """Sets how many bytes of dropped arrays' memory are kept for reuse (0: none, memory goes back to the
  system at once). Default min(2 GiB, RAM / 8)."""
  _cache.set_capacity(nbytes)


def cached_bytes():
  """Bytes held in the free list now."""
  _cache._settle()  # pylint: disable=protected-access
  return _cache.cached


_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h).
_M_MMAP_THRESHOLD = -3
_tuned = []


def tune_malloc():
  """Raises glibc's malloc trim threshold to 64 MiB and mmap threshold to 32 MiB, once per process (not
  on other C libraries, nor with NT_CLIENT_MALLOC_TUNING=0). Returns whether the settings were made."""
  if _tuned:
    return _tuned[0]
  ok = False
  if os.environ.get('NT_CLIENT_MALLOC_TUNING', '1') != '0':
    import platform
    if platform.libc_ver()[0] == 'glibc':
      try:
        mallopt = ctypes.CDLL(None).mallopt
        ok = bool(mallopt(_M_TRIM_THRESHOLD, 64 << 20)) and bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20))
      except (OSError, AttributeError):
        ok = False
  _tuned.append(ok)
  return ok
