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
  """Accepts (-1,) and (): infinite-width kernels have no output axes, so a kernel without trace axes is
  Theta x I over the outputs and both give the same predictions (core.md 6.1)."""
  axes = sorted({int(a) % y_ndim for a in (trace_axes if isinstance(trace_axes, (tuple, list)) else (trace_axes,))})
  if axes not in ([], [y_ndim - 1]):
    raise NotImplementedError(f'trace_axes={trace_axes!r}: only (-1,) (the outputs axis of y_train) or () are '
                              'supported')


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


# ---------------------------------------------------------------------------------------------------
# Predictions from kernels the caller already holds (upstream's gp_inference and gradient_descent_mse).
# These are small dense linear algebra on the caller's arrays, so they run here with numpy (LAPACK)
# rather than shipping N x N kernels back to the server; the conventions match core/predict.cc.


def _regularised(k, diag_reg, diag_reg_absolute_scale):
  k = np.asarray(k, dtype=np.float64)
  if k.ndim != 2 or k.shape[0] != k.shape[1]:
    raise ValueError(f'k_train_train must be (N, N) (trace_axes=(-1,)), got shape {k.shape}')
  lam = diag_reg if diag_reg_absolute_scale else diag_reg * np.trace(k) / k.shape[0]
  return k + lam * np.eye(k.shape[0])


def _cho_solve(k_reg, b):
  try:
    c = np.linalg.cholesky(k_reg)
  except np.linalg.LinAlgError:
    raise np.linalg.LinAlgError('k_train_train (+ diag_reg) is not positive definite; pass a larger diag_reg '
                                '(such as 1e-6) to regularise it') from None
  return np.linalg.solve(c.T, np.linalg.solve(c, b))


def _kind(kernel, name):
  """The `name` kernel of an array (used for every kind), a namedtuple / object with attributes, or a dict."""
  if kernel is None or isinstance(kernel, np.ndarray):
    return kernel
  if isinstance(kernel, dict):
    return None if kernel.get(name) is None else np.asarray(kernel[name], dtype=np.float64)
  value = getattr(kernel, name, None)
  if value is None and not hasattr(kernel, '_fields') and not hasattr(kernel, 'nngp'):
    return np.asarray(kernel, dtype=np.float64)  # A plain array-like.
  return None if value is None else np.asarray(value, dtype=np.float64)


def gp_inference(k_train_train, y_train, diag_reg=0., diag_reg_absolute_scale=False, trace_axes=(-1,)):
  """Upstream's nt.predict.gp_inference: exact GP posterior (infinite-time MSE) from kernels.

  Returns predict_fn(get=None, k_test_train=None, k_test_test=None). Kernels are arrays (used for every kind),
  or records with .nngp / .ntk (e.g. kernel_fn(..., ('nngp', 'ntk'))). get: 'nngp', 'ntk', 'ntkgp' or a
  tuple (default ('nngp', 'ntk')). Returns the mean, or Gaussian(mean, covariance) with k_test_test.
  """
  y = np.asarray(y_train, dtype=np.float64)
  if y.ndim != 2:
    raise ValueError(f'y_train must be (N, K), got shape {y.shape}')
  _trace_axes(trace_axes, y.ndim)

  def predict_fn(get=None, k_test_train=None, k_test_test=None):
    if get is None:
      names, single = ['nngp', 'ntk'], False
    else:
      names = [get] if isinstance(get, str) else list(get)
      single = isinstance(get, str)
      names = [n.lower() for n in names]
      for n in names:
        if n not in ('nngp', 'ntk', 'ntkgp'):
          raise ValueError(f'get: {n!r}; expected nngp, ntk or ntkgp')
    out = []
    for g in names:
      k = 'ntk' if g == 'ntkgp' else g
      k_dd = _kind(k_train_train, k)
      if k_dd is None:
        raise ValueError(f'{g}: k_train_train has no {k}')
      k_reg = _regularised(k_dd, diag_reg, diag_reg_absolute_scale)
      if k_test_train is None:
        mean = y.copy()
        cov = None if k_test_test is None else np.zeros_like(k_dd)
      else:
        k_td = _kind(k_test_train, k)
        mean = k_td @ _cho_solve(k_reg, y)
        cov = None
        if k_test_test is not None:
          if g in ('nngp', 'ntkgp'):
            k_tt = _kind(k_test_test, k)
            if k_tt is None:
              raise ValueError(f'{g}: k_test_test has no {k}')
            cov = k_tt - k_td @ _cho_solve(k_reg, k_td.T)
          else:
            nngp_dd, nngp_td = _kind(k_train_train, 'nngp'), _kind(k_test_train, 'nngp')
            if nngp_dd is None or nngp_td is None:
              raise ValueError('ntk: the covariance needs the nngp of k_train_train and k_test_train')
            a = _cho_solve(k_reg, k_td.T)
            cross = nngp_td @ a
            cov = _kind(k_test_test, 'nngp') + a.T @ nngp_dd @ a - (cross + cross.T)
      out.append(mean if cov is None else Gaussian(mean, cov))
    return out[0] if single else _gaussians_type(tuple(names))(*out)

  return predict_fn


def gradient_descent_mse(k_train_train, y_train, learning_rate=1., diag_reg=0., diag_reg_absolute_scale=False,
                         trace_axes=(-1,)):
  """Upstream's nt.predict.gradient_descent_mse: outputs of a network trained by MSE gradient flow in its
  linearised (kernel) regime, from one kernel (the NTK, or any PSD kernel).

  Returns predict_fn(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None): (f_train, f_test), f_train
  alone (fx_test_0 None) or f_test alone (fx_train_0 None), at times t (None: infinite time; an array adds
  its shape as leading axes).
  """
  y = np.asarray(y_train, dtype=np.float64)
  if y.ndim != 2:
    raise ValueError(f'y_train must be (N, K), got shape {y.shape}')
  _trace_axes(trace_axes, y.ndim)
  k_reg = _regularised(k_train_train, diag_reg, diag_reg_absolute_scale)
  n = y.size  # MSE normalised by y_train.size.
  cache = {}

  def eig():
    if 'eig' not in cache:
      cache['eig'] = np.linalg.eigh(k_reg)
    return cache['eig']

  def predict_fn(t=None, fx_train_0=0., fx_test_0=None, k_test_train=None):
    if fx_train_0 is None and fx_test_0 is None:
      raise ValueError('fx_train_0 and fx_test_0 cannot both be None')
    if fx_test_0 is not None and k_test_train is None:
      raise ValueError('k_test_train is needed with fx_test_0')
    f0 = None if fx_train_0 is None else np.broadcast_to(np.asarray(fx_train_0, dtype=np.float64), y.shape)
    r = -y if f0 is None else f0 - y
    k_td = None if k_test_train is None else np.asarray(k_test_train, dtype=np.float64)
    ft0 = None
    if fx_test_0 is not None:
      ft0 = np.broadcast_to(np.asarray(fx_test_0, dtype=np.float64), (k_td.shape[0], y.shape[1]))
    if t is None:
      f_train = None if f0 is None else y.copy()
      f_test = None if ft0 is None else ft0 - k_td @ _cho_solve(k_reg, r)
    else:
      lam, v = eig()
      taus = learning_rate * np.ravel(np.asarray(t, dtype=np.float64))
      lam_c = np.maximum(lam, 0)
      vt_r = v.T @ r
      f_train, f_test = [], []
      for tau in taus:
        e = np.expm1(-lam_c * tau / n)
        inv = np.where(lam > 0, e / np.where(lam > 0, lam, 1), -tau / n)  # Its limit where lambda <= 0.
        if f0 is not None:
          f_train.append(f0 + v @ (e[:, None] * vt_r))
        if ft0 is not None:
          f_test.append(ft0 + k_td @ (v @ (inv[:, None] * vt_r)))
      shape = np.shape(t)
      f_train = None if f0 is None else np.reshape(f_train, shape + y.shape)
      f_test = None if ft0 is None else np.reshape(f_test, shape + ft0.shape)
    if f_train is not None and f_test is not None:
      return f_train, f_test
    return f_train if f_test is None else f_test

  return predict_fn


# ---------------------------------------------------------------------------------------------------
# gradient_descent: function-space gradient flow with an arbitrary loss and optional momentum, integrated
# with an adaptive Dormand-Prince RK45 (rtol = atol = 1.4e-8, JAX odeint's defaults).

ODEState = collections.namedtuple('ODEState', ['fx_train', 'fx_test', 'qx_train', 'qx_test'],
                                  defaults=(None, None, None, None))


def _softmax(f):
  e = np.exp(f - f.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


# Gradients dL/df of the catalogue's losses (no autodiff here): 'mse' is 0.5 * mean((f - y)^2) and
# 'cross_entropy' is -mean over rows of sum(y * log_softmax(f)).
LOSS_GRADIENTS = {
    'mse': lambda f, y: (f - y) / y.size,
    'cross_entropy': lambda f, y: (_softmax(f) - y) / y.shape[0],
}

# Dormand-Prince 5(4) tableau.
_DP_C = np.array([0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1])
_DP_A = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
         [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
         [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
         [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]]
_DP_B5 = np.array([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0])
_DP_B4 = np.array([5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40])


def _odeint(fun, y0, times, rtol=1.4e-8, atol=1.4e-8, max_steps=200000):
  """y(t) for each t of the increasing `times` (np.inf: until the state stops moving) from y(0) = y0."""
  y, t, out = y0.copy(), 0.0, []
  f = fun(y)
  h = 1e-3
  steps = 0
  for target in times:
    while t < target:
      if steps > max_steps:
        raise RuntimeError(f'gradient_descent: the ODE did not reach t={target} in {max_steps} steps')
      steps += 1
      # Infinite time: stop once a step moves the state by no more than the tolerance (about 1e-6 of the
      # scale: an explicit solver at its stability limit keeps errors of that size alive in stiff modes).
      if np.isinf(target) and steps > 1 and np.max(np.abs(f)) * max(h, 1.0) <= 10 * (atol + rtol * np.max(np.abs(y))):
        break
      step = h if np.isinf(target) else min(h, target - t)
      ks = [f]
      for i in range(1, 7):
        ks.append(fun(y + step * sum(a * k for a, k in zip(_DP_A[i], ks))))
      y5 = y + step * sum(b * k for b, k in zip(_DP_B5, ks))
      y4 = y + step * sum(b * k for b, k in zip(_DP_B4, ks))
      scale = atol + rtol * np.maximum(np.abs(y), np.abs(y5))
      err = np.sqrt(np.mean(((y5 - y4) / scale) ** 2))
      if err <= 1:
        t, y, f = t + step, y5, ks[6]  # FSAL: the last stage is f(y5).
      h = step * min(10.0, max(0.2, 0.9 * (1.0 / max(err, 1e-16)) ** 0.2))
    out.append(y.copy())
  return out


def gradient_descent(loss, k_train_train, y_train, learning_rate=1., momentum=None, trace_axes=(-1,)):
  """Upstream's nt.predict.gradient_descent: gradient flow of a network's outputs in its linearised
  (kernel) regime under `loss`, with optional momentum.

  `loss` is a name of LOSS_GRADIENTS ('mse', 'cross_entropy') or a callable grad(fx_train, y_train)
  returning dL/dfx_train (upstream differentiates a loss with JAX; there is no autodiff here). Returns
  predict_fn(t=None, fx_train_or_state_0=0., fx_test_0=None, k_test_train=None) with upstream's return
  conventions; t must increase (None: infinite time, integrated until the outputs stop moving).
  """
  grad = LOSS_GRADIENTS[loss] if isinstance(loss, str) else loss
  y = np.asarray(y_train, dtype=np.float64)
  if y.ndim != 2:
    raise ValueError(f'y_train must be (N, K), got shape {y.shape}')
  _trace_axes(trace_axes, y.ndim)
  k_dd = np.asarray(k_train_train, dtype=np.float64)
  lr = float(learning_rate)
  mu = None
  if momentum is not None:
    mu = (float(momentum) - 1.0) / np.sqrt(lr)
    lr = np.sqrt(lr)

  def predict_fn(t=None, fx_train_or_state_0=0., fx_test_0=None, k_test_train=None):
    state_in = isinstance(fx_train_or_state_0, ODEState)
    if state_in:
      if fx_test_0 is not None:
        raise ValueError('fx_test_0 must be None when an ODEState is given')
      s0 = fx_train_or_state_0
      fx_train_0, fx_test_0, q_train_0, q_test_0 = s0.fx_train, s0.fx_test, s0.qx_train, s0.qx_test
      if momentum is None and (q_train_0 is not None or q_test_0 is not None):
        raise ValueError('qx_train / qx_test need momentum')
    else:
      fx_train_0, q_train_0, q_test_0 = fx_train_or_state_0, None, None
    if fx_test_0 is not None and k_test_train is None:
      raise ValueError('k_test_train is needed with fx_test_0')
    f_train0 = np.broadcast_to(np.asarray(0. if fx_train_0 is None else fx_train_0, dtype=np.float64), y.shape)
    k_td = None if k_test_train is None else np.asarray(k_test_train, dtype=np.float64)
    test = fx_test_0 is not None
    m = k_td.shape[0] if test else 0
    f_test0 = np.broadcast_to(np.asarray(fx_test_0, dtype=np.float64), (m, y.shape[1])) if test else None
    times = np.ravel(np.asarray(np.inf if t is None else t, dtype=np.float64))
    if np.any(np.diff(times) <= 0) or np.any(times < 0):
      raise ValueError(f't must be non-negative and strictly increasing, got {t!r}')
    parts = [f_train0] + ([f_test0] if test else [])
    if momentum is not None:
      parts += [np.zeros(y.shape) if q_train_0 is None else np.asarray(q_train_0, dtype=np.float64)]
      if test:
        parts += [np.zeros((m, y.shape[1])) if q_test_0 is None else np.asarray(q_test_0, dtype=np.float64)]
    sizes = [p.size for p in parts]
    split = np.cumsum(sizes)[:-1]

    def unpack(z):
      return [p.reshape(-1, y.shape[1]) for p in np.split(z, split)]

    def fun(z):
      ps = unpack(z)
      g = grad(ps[0], y)
      d_train = -k_dd @ g
      d_test = -k_td @ g if test else None
      if momentum is None:
        return np.concatenate([d_train.ravel()] + ([d_test.ravel()] if test else []))
      q_train = ps[2 if test else 1]
      q_test = ps[3] if test else None
      out = [q_train.ravel()] + ([q_test.ravel()] if test else [])
      out += [(d_train + mu * q_train).ravel()] + ([(d_test + mu * q_test).ravel()] if test else [])
      return np.concatenate(out)

    z0 = np.concatenate([p.ravel() for p in parts])
    zs = _odeint(fun, z0, lr * times)
    shape = () if t is None else np.shape(t)
    cols = [unpack(z) for z in zs]
    stack = lambda i: np.reshape([c[i] for c in cols], shape + cols[0][i].shape)  # noqa: E731
    f_train = stack(0)
    f_test = stack(1) if test else None
    if state_in:
      q_idx = 2 if test else 1
      return ODEState(f_train, f_test, stack(q_idx) if momentum is not None else None,
                      stack(q_idx + 1) if momentum is not None and test else None)
    if fx_train_0 is not None and test:
      return f_train, f_test
    return f_test if fx_train_0 is None else f_train

  return predict_fn
