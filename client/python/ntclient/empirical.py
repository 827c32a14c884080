"""Finite-width kernels computed by the server: upstream's nt.empirical_kernel_fn, empirical_nngp_fn,
empirical_ntk_fn and nt.monte_carlo_kernel_fn, for networks built with ntclient.stax.

The network runs on the server (EmpiricalKernel and MonteCarloKernel RPCs): the NTK J(x1) J(x2)^T is
computed by reverse mode through the server's layers, in float64.

  init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(1))
  _, params = init_fn(0, x1.shape)
  ntk = ntclient.empirical_ntk_fn(apply_fn)(x1, x2, params)
  mc = ntclient.monte_carlo_kernel_fn(init_fn, apply_fn, key=1, n_samples=128)(x1, x2, 'ntk')
"""

import collections
import functools
import numbers

from ntclient import _proto
from ntclient import connection as connection_lib
from ntclient import stax
from ntclient import tensors

EMPIRICAL_GET = ('nngp', 'ntk')
# upstream's NtkImplementation: AUTO, JACOBIAN_CONTRACTION, NTK_VECTOR_PRODUCTS, STRUCTURED_DERIVATIVES.
# They are equal by contract; the server computes explicit Jacobians by reverse mode for all of them.
IMPLEMENTATIONS = (0, 1, 2, 3)

EmpiricalKernel = collections.namedtuple('EmpiricalKernel', EMPIRICAL_GET)
MonteCarloKernel = collections.namedtuple('MonteCarloKernel', EMPIRICAL_GET)


@functools.lru_cache(maxsize=None)
def _kernel_type(kind, names):
  return collections.namedtuple(kind, names)


def _layer_proto(fn, what):
  proto = getattr(fn, 'layer_proto', None)
  if proto is None:
    raise TypeError(f'{what} must come from ntclient.stax (the server runs the network), got {fn!r}')
  return proto


def _parse_get(get):
  """(names to request, names to return, whether a bare array is returned); None means both."""
  if get is None:
    return list(EMPIRICAL_GET), list(EMPIRICAL_GET), False
  return stax._parse_get(get, EMPIRICAL_GET)  # pylint: disable=protected-access


def _axes(axes, field):
  if isinstance(axes, numbers.Integral):
    return [int(axes)]
  try:
    return [int(a) for a in axes]
  except TypeError:
    raise TypeError(f'{field}: expected an int or a sequence of ints, got {axes!r}') from None


def _fill_options(o, trace_axes, diagonal_axes, vmap_axes, mask_constant, pattern):
  o.trace_axes.SetInParent()
  o.trace_axes.axes.extend(_axes(trace_axes, 'trace_axes'))
  o.diagonal_axes.SetInParent()
  o.diagonal_axes.axes.extend(_axes(diagonal_axes, 'diagonal_axes'))
  if vmap_axes is not None:
    if isinstance(vmap_axes, numbers.Integral):
      in_axis = out_axis = int(vmap_axes)
    else:
      in_axis, out_axis = vmap_axes[0], vmap_axes[1]
      if not isinstance(in_axis, numbers.Integral) or not isinstance(out_axis, numbers.Integral):
        raise NotImplementedError('vmap_axes: only a single input and output axis are supported')
    o.vmap_axes.in_axis = int(in_axis)
    o.vmap_axes.out_axis = int(out_axis)
  if mask_constant is not None:
    o.mask_constant = float(mask_constant)
  if pattern is not None:
    p1, p2 = pattern if isinstance(pattern, tuple) else (pattern, pattern)
    if p1 is not None:
      tensors.fill_tensor(o.pattern1, p1, tensors.auto_dtype(p1))
    if p2 is not None:
      tensors.fill_tensor(o.pattern2, p2, tensors.auto_dtype(p2))


def _check_implementation(implementation):
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f'implementation: expected one of {IMPLEMENTATIONS}, got {implementation!r}')


def _result(kind, names, single, nngp_msg, ntk_msg, has):
  values = {'nngp': tensors.from_tensor(nngp_msg) if has('nngp') else None,
            'ntk': tensors.from_tensor(ntk_msg) if has('ntk') else None}
  if single:
    return values[names[0]]
  return _kernel_type(kind, tuple(names))(*(values[n] for n in names))


def empirical_kernel_fn(f, trace_axes=(-1,), diagonal_axes=(), vmap_axes=None, implementation=1, **_):
  """kernel_fn(x1, x2=None, get=None, params=None, **kwargs) of the finite network `f` (an apply_fn).

  kwargs: mask_constant, pattern (Aggregate; an array or a pair for x1 and x2), rng (Dropout's key; x2
  gets fold_in(rng, 1) unless x2 is x1), output_dtype, connection, timeout.
  """
  layer = _layer_proto(f, 'f')
  _check_implementation(implementation)

  def kernel_fn(x1, x2=None, get=None, params=None, *, mask_constant=None, pattern=None, rng=None,
                output_dtype=None, connection=None, timeout=None, **unused):
    if unused:
      raise TypeError(f'unexpected keyword arguments {sorted(unused)}')
    if params is None:
      raise ValueError('params: the parameters of the finite network are required (from init_fn)')
    request_names, names, single = _parse_get(get)
    request = _proto.service_pb2.EmpiricalKernelRequest(architecture=layer, get=request_names,
                                                        output_dtype=tensors.wire_dtype(output_dtype))
    stax._params_to_proto(params, request.params)  # pylint: disable=protected-access
    tensors.fill_tensor(request.x1, x1)
    if x2 is not None:
      tensors.fill_tensor(request.x2, x2)
    _fill_options(request.options, trace_axes, diagonal_axes, vmap_axes, mask_constant, pattern)
    if rng is not None:
      request.rng_seed = stax._seed(rng)  # pylint: disable=protected-access
    conn = connection or connection_lib.default_connection()
    response = conn.empirical_kernel(request, timeout=timeout)
    return _result('EmpiricalKernel', names, single, response.nngp, response.ntk, response.HasField)

  return kernel_fn


def empirical_nngp_fn(f, trace_axes=(-1,), diagonal_axes=()):
  """nngp_fn(x1, x2, params, **kwargs): f(x1) f(x2)^T contracted over trace_axes."""
  k = empirical_kernel_fn(f, trace_axes, diagonal_axes)
  return lambda x1, x2, params, **kw: k(x1, x2, 'nngp', params, **kw)


def empirical_ntk_fn(f, trace_axes=(-1,), diagonal_axes=(), vmap_axes=None, implementation=1, **_):
  """ntk_fn(x1, x2, params, **kwargs): J(x1) J(x2)^T contracted over parameters and trace_axes."""
  k = empirical_kernel_fn(f, trace_axes, diagonal_axes, vmap_axes, implementation)
  return lambda x1, x2, params, **kw: k(x1, x2, 'ntk', params, **kw)


def _sample_counts(n_samples):
  if isinstance(n_samples, numbers.Integral):
    if n_samples <= 0:
      raise ValueError(f'n_samples must be positive, got {n_samples}')
    return [int(n_samples)], True
  try:
    counts = set(n_samples)
  except TypeError:
    raise TypeError(f'n_samples must be an int or an iterable of ints, got {n_samples!r}') from None
  if not counts or not all(isinstance(n, numbers.Integral) and n > 0 for n in counts):
    raise ValueError(f'n_samples must be positive ints, got {n_samples!r}')
  return sorted(int(n) for n in counts), False


def monte_carlo_kernel_fn(init_fn, apply_fn, key, n_samples, batch_size=0, device_count=-1,
                          store_on_device=True, trace_axes=(-1,), diagonal_axes=(), vmap_axes=None,
                          implementation=1, **_):
  """kernel_fn(x1, x2=None, get=None, **kwargs): the mean of empirical kernels over networks drawn by init_fn.

  Sample n uses the n-th split of `key` (an int seed or a jax-style key) for its parameters and Dropout
  key, so an int n_samples returns the estimate at n, and an iterable returns a generator of the estimates
  at each requested count in increasing order (equal to separate calls). batch_size, device_count and
  store_on_device are accepted for upstream compatibility: the server schedules the work itself.
  kwargs: mask_constant, pattern, output_dtype, progress (called with (samples done, total)), connection,
  timeout.
  """
  layer = _layer_proto(apply_fn, 'apply_fn')
  if _layer_proto(init_fn, 'init_fn') != layer:
    raise ValueError('init_fn and apply_fn must come from the same network')
  _check_implementation(implementation)
  counts, single_count = _sample_counts(n_samples)
  seed = stax._seed(key)  # pylint: disable=protected-access
  del batch_size, device_count, store_on_device

  def stream(x1, x2, get, mask_constant, pattern, output_dtype, progress, connection, timeout):
    request_names, names, single = _parse_get(get)
    request = _proto.service_pb2.MonteCarloKernelRequest(
        architecture=layer, get=request_names, seed=seed, n_samples=counts,
        output_dtype=tensors.wire_dtype(output_dtype))
    tensors.fill_tensor(request.x1, x1)
    if x2 is not None:
      tensors.fill_tensor(request.x2, x2)
    _fill_options(request.options, trace_axes, diagonal_axes, vmap_axes, mask_constant, pattern)
    conn = connection or connection_lib.default_connection()
    for response in conn.monte_carlo_kernel(request, timeout=timeout):
      if response.HasField('progress'):
        if progress is not None:
          progress(response.progress.samples_done, response.progress.samples_total)
        continue
      e = response.estimate
      yield _result('MonteCarloKernel', names, single, e.nngp, e.ntk, e.HasField)

  def kernel_fn(x1, x2=None, get=None, *, mask_constant=None, pattern=None, output_dtype=None,
                progress=None, connection=None, timeout=None, **unused):
    if unused:
      raise TypeError(f'unexpected keyword arguments {sorted(unused)}')
    gen = stream(x1, x2, get, mask_constant, pattern, output_dtype, progress, connection, timeout)
    if single_count:
      return next(gen)
    return gen

  return kernel_fn
