"""nt.predict over the service: predictions of infinite ensembles of infinitely wide networks.

  from ntclient import predict, stax
  _, _, kernel_fn = stax.serial(stax.Dense(512), stax.Relu(), stax.Dense(1))
  predict_fn = predict.gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, diag_reg=1e-4)
  y_test = predict_fn(x_test=x_test, get='ntk')                  # t = None: infinite time
  g = predict_fn(t=[1., 10.], x_test=x_test, compute_cov=True)   # Gaussians(nngp=..., ntk=...)

The server computes the kernels and keeps the train-train kernels and their factorisations between
calls (keyed by architecture, training set and regulariser), so predict_fn can be called repeatedly with
new test points or times.
"""

import collections
import functools

import numpy as np

from ntclient import _proto
from ntclient import connection as connection_lib
from ntclient import stax as stax_lib
from ntclient import tensors

Gaussian = collections.namedtuple('Gaussian', ['mean', 'covariance'])

_KINDS = ('nngp', 'ntk')


@functools.lru_cache(maxsize=None)
def _gaussians_type(names):
  return collections.namedtuple('Gaussians', names)


def _parse_get(get):
  if get is None:
    return list(_KINDS), False
  if isinstance(get, str):
    names, single = [get], True
  else:
    names, single = list(get), False
  names = [str(n).lower() for n in names]
  for n in names:
    if n not in _KINDS:
      raise NotImplementedError(f'get: {n!r} is not supported; expected nngp and/or ntk')
  if not names or len(set(names)) != len(names):
    raise ValueError(f'get must be non-empty and without duplicates, got {get!r}')
  return names, single


def _trace_axes(trace_axes, y_ndim):
  axes = sorted({int(a) % y_ndim for a in (trace_axes if isinstance(trace_axes, (tuple, list)) else (trace_axes,))})
  if axes != [y_ndim - 1]:
    raise NotImplementedError(f'trace_axes={trace_axes!r}: only the last axis of y_train (-1,) is supported')


def gradient_descent_mse_ensemble(kernel_fn, x_train, y_train, learning_rate=1., diag_reg=0.,
                                  diag_reg_absolute_scale=False, trace_axes=(-1,), *, connection=None,
                                  timeout=None, **kernel_fn_train_train_kwargs):
  """Upstream's nt.predict.gradient_descent_mse_ensemble for an ntclient kernel_fn.

  Returns predict_fn(t=None, x_test=None, get=None, compute_cov=False): for each kind in get (default
  ('nngp', 'ntk')), the mean prediction, or Gaussian(mean, covariance) with compute_cov, at times t
  (None: infinite time; a scalar; or an array, whose shape leads the outputs) on x_test (None: the training
  points). A string get returns that kind alone, otherwise a namedtuple Gaussians.
  """
  if kernel_fn_train_train_kwargs:
    raise NotImplementedError(f'kernel_fn keyword arguments {sorted(kernel_fn_train_train_kwargs)} are not '
                              'supported by predict over the service')
  layer = stax_lib.layer_proto(kernel_fn)
  x_train = np.asarray(x_train, dtype=np.float64)
  y_train = np.asarray(y_train, dtype=np.float64)
  if y_train.ndim != 2:
    raise ValueError(f'y_train must be (N, K), got shape {y_train.shape}')
  _trace_axes(trace_axes, y_train.ndim)
  train = _proto.service_pb2.PredictRequest(
      architecture=layer, learning_rate=float(learning_rate), diag_reg=float(diag_reg),
      diag_reg_absolute_scale=bool(diag_reg_absolute_scale), trace_axes=[-1])
  tensors.fill_tensor(train.x_train, x_train)
  tensors.fill_tensor(train.y_train, y_train)

  def predict_fn(t=None, x_test=None, get=None, compute_cov=False, **kernel_fn_test_test_kwargs):
    if kernel_fn_test_test_kwargs:
      raise NotImplementedError(f'kernel_fn keyword arguments {sorted(kernel_fn_test_test_kwargs)} are not '
                                'supported by predict over the service')
    names, single = _parse_get(get)
    t_shape = None if t is None else np.shape(t)
    times = [float('inf')] if t is None else [float(v) for v in np.ravel(np.asarray(t, dtype=np.float64))]
    request = _proto.service_pb2.PredictRequest()
    request.CopyFrom(train)
    request.t[:] = times
    request.get[:] = names
    request.compute_cov = bool(compute_cov)
    if x_test is not None:
      tensors.fill_tensor(request.x_test, np.asarray(x_test, dtype=np.float64))
    conn = connection or connection_lib.default_connection()
    means, covs, header = {}, {}, None
    for response in conn.predict(request, timeout=timeout):
      kind = response.WhichOneof('payload')
      if kind == 'header':
        header = response.header
        m, k = header.num_points, header.num_outputs
        for n in header.get:
          means[n] = np.empty((len(times), m, k))
          covs[n] = np.empty((len(times), m, m)) if compute_cov else None
      elif kind == 'block':
        b = response.block
        mean = tensors.from_tensor(b.mean, copy=False)
        rows = slice(b.row_offset, b.row_offset + mean.shape[0])
        means[b.get][b.time_index, rows] = mean
        if compute_cov:
          covs[b.get][b.time_index, rows] = tensors.from_tensor(b.cov, copy=False)
    if header is None:
      raise RuntimeError('Predict: the server sent no header')

    def shaped(a):
      return a[0] if t_shape is None else a.reshape(t_shape + a.shape[1:])

    out = []
    for n in names:
      mean = shaped(means[n])
      out.append(Gaussian(mean, shaped(covs[n])) if compute_cov else mean)
    if single:
      return out[0]
    return _gaussians_type(tuple(names))(*out)

  return predict_fn


def max_learning_rate(ntk_train_train, y_train_size=None, momentum=0., eps=1e-12):
  """The largest learning rate for which gradient descent on the MSE converges (upstream's formula)."""
  k = np.asarray(ntk_train_train, dtype=np.float64)
  if k.ndim != 2 or k.shape[0] != k.shape[1]:
    raise ValueError(f'ntk_train_train must be square, got shape {k.shape}')
  m = k.shape[0] if y_train_size is None else y_train_size
  return 2 * (1 + momentum) * m / (np.linalg.eigvalsh(k)[-1] + eps)
