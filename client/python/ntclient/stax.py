"""neural_tangents.stax-shaped API whose kernel_fn runs on nt-server.

Every layer returns a triple (init_fn, apply_fn, kernel_fn) that tuple-unpacks like upstream's and also
carries its nt.v1.Layer proto (`triple.layer_proto`, `kernel_fn.layer_proto`):

  from ntclient import stax
  init_fn, apply_fn, kernel_fn = stax.serial(stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(),
                                             stax.Dense(1))
  k = kernel_fn(x1, x2, ('nngp', 'ntk'))   # AnalyticKernel(nngp=..., ntk=...)

Arguments are upstream's. Callables (Elementwise fn / nngp_fn / d_nngp_fn, ElementwiseNumerical fn / df,
GlobalSelfAttention pos_emb_decay_fn, Aggregate to_dense) are text expressions evaluated by the server;
see nt/v1/architecture.proto for their variables.
"""

import collections
import enum
import functools
import inspect

import numpy as np

from ntclient import _proto
from ntclient import arch_json
from ntclient import connection as connection_lib
from ntclient import tensors
from ntclient import tiling

GET_NAMES = ('nngp', 'ntk', 'cov1', 'cov2')


# ---------------------------------------------------------------------------------------------------
# Helper enums (strings are accepted in their place, as upstream).


class Padding(enum.Enum):
  CIRCULAR = 'CIRCULAR'
  SAME = 'SAME'
  VALID = 'VALID'


class AttentionMechanism(enum.Enum):
  SOFTMAX = 'SOFTMAX'
  IDENTITY = 'IDENTITY'
  ABS = 'ABS'
  RELU = 'RELU'


class PositionalEmbedding(enum.Enum):
  NONE = 'NONE'
  SUM = 'SUM'
  CONCAT = 'CONCAT'


class AggregateImplementation(enum.Enum):
  DENSE = 'DENSE'
  SPARSE = 'SPARSE'


class _Slice:
  """`Slice[1:10, :, ::-1]` returns the index itself, for Index(idx=...)."""

  def __getitem__(self, idx):
    return idx


Slice = _Slice()


# ---------------------------------------------------------------------------------------------------
# The triple.


def _seed(rng):
  """A uint64 seed from an int or a jax-style key (two uint32 words, high word first)."""
  key = np.asarray(rng)
  if key.shape == (2,):
    return (int(key[0]) & 0xFFFFFFFF) << 32 | (int(key[1]) & 0xFFFFFFFF)
  if key.shape == () and key.dtype.kind in 'iu':
    return int(key) & 0xFFFFFFFFFFFFFFFF
  raise TypeError(f'rng: expected an int seed or a key of two uint32 words, got {rng!r}')


def _params_from_proto(p):
  """nt.v1.Params -> upstream's nesting: a layer's arrays as a tuple, a combinator's children as a tuple."""
  if p.children:
    return tuple(_params_from_proto(c) for c in p.children)
  return tuple(tensors.from_tensor(a) for a in p.arrays)


def _params_to_proto(params, out):
  for item in params:
    if isinstance(item, (tuple, list)):
      _params_to_proto(item, out.children.add())
    else:
      tensors.fill_tensor(out.arrays.add(), item)
  return out


class InitFn:
  """init_fn(rng, input_shape) -> (output_shape, params), drawn by the server (Init RPC).

  rng: an int seed or a jax-style key of two uint32 words; the same seed gives the same parameters on any
  server. params nest like upstream's: a layer's arrays as a tuple, a combinator's children as a tuple.
  """

  def __init__(self, layer_proto):
    self.layer_proto = layer_proto

  def __call__(self, rng, input_shape, *, connection=None, timeout=None):
    request = _proto.service_pb2.InitRequest(architecture=self.layer_proto, seed=_seed(rng),
                                             input_shape=[int(d) for d in input_shape])
    conn = connection or connection_lib.default_connection()
    response = conn.init(request, timeout=timeout)
    return tuple(response.output_shape), _params_from_proto(response.params)


class ApplyFn:
  """apply_fn(params, inputs, **kwargs): the finite network's forward pass on the server (Apply RPC).

  kwargs: mask_constant, pattern (Aggregate), rng (Dropout in mode 'train'; an int seed or key).
  """

  def __init__(self, layer_proto):
    self.layer_proto = layer_proto

  def __call__(self, params, inputs, *, mask_constant=None, pattern=None, rng=None, output_dtype=None,
               connection=None, timeout=None):
    request = _proto.service_pb2.ApplyRequest(architecture=self.layer_proto,
                                              output_dtype=tensors.wire_dtype(output_dtype))
    _params_to_proto(params, request.params)
    tensors.fill_tensor(request.x, inputs)
    if mask_constant is not None:
      request.mask_constant = float(mask_constant)
    if pattern is not None:
      tensors.fill_tensor(request.pattern, pattern, tensors.auto_dtype(pattern))
    if rng is not None:
      request.rng_seed = _seed(rng)
    conn = connection or connection_lib.default_connection()
    return tensors.from_tensor(conn.apply(request, timeout=timeout).y)


class KernelFn:
  """kernel_fn(x1, x2=None, get=None, **kwargs) computed by ComputeKernel."""

  def __init__(self, layer_proto):
    self.layer_proto = layer_proto

  def __call__(self, x1, x2=None, get=None, *, diagonal_batch=None, diagonal_spatial=None,
               mask_constant=None, pattern=None, output_dtype=None, tile_size=0, connection=None,
               timeout=None, out=None, progress=None, stats=None):
    return compute_kernel(self.layer_proto, x1, x2, get, diagonal_batch=diagonal_batch,
                          diagonal_spatial=diagonal_spatial, mask_constant=mask_constant,
                          pattern=pattern, output_dtype=output_dtype, tile_size=tile_size,
                          connection=connection, timeout=timeout, out=out, progress=progress,
                          stats=stats)

  def describe(self, x1_shape, x2_shape=None, get=None, **kwargs):
    return describe(self.layer_proto, x1_shape, x2_shape, get, **kwargs)

  def __repr__(self):
    return f'KernelFn({arch_json.dumps(self.layer_proto)})'


class Triple(collections.namedtuple('Triple', ['init_fn', 'apply_fn', 'kernel_fn'])):
  """(init_fn, apply_fn, kernel_fn), plus the Layer proto."""
  __slots__ = ()

  @property
  def layer_proto(self):
    return self.kernel_fn.layer_proto

  def to_json(self):
    return arch_json.layer_to_json(self.layer_proto)


def _triple(layer):
  return Triple(InitFn(layer), ApplyFn(layer), KernelFn(layer))


def layer_proto(layer):
  """The Layer proto of a triple, a kernel_fn, a Layer proto or a JSON-form dict."""
  if isinstance(layer, _proto.Layer):
    return layer
  if isinstance(layer, Triple):
    return layer.layer_proto
  if isinstance(layer, KernelFn):
    return layer.layer_proto
  if isinstance(layer, tuple) and len(layer) == 3 and isinstance(layer[2], KernelFn):
    return layer[2].layer_proto
  if isinstance(layer, dict):
    return arch_json.layer_from_json(layer)
  raise TypeError(f'expected an ntclient layer (init_fn, apply_fn, kernel_fn), got {type(layer)!r}')


def from_json(source):
  """The triple of a JSON-form architecture (dict, JSON text or path to a .json file)."""
  return _triple(arch_json.load(source))


def to_json(layer):
  """The JSON form (dict) of a layer."""
  return arch_json.layer_to_json(layer_proto(layer))


# ---------------------------------------------------------------------------------------------------
# Calls to the service.


@functools.lru_cache(maxsize=None)
def _analytic_kernel_type(names):
  return collections.namedtuple('AnalyticKernel', names)


def _parse_get(get, allowed=GET_NAMES):
  """(names sent in the request, names returned or None for "all", whether a bare array is returned)."""
  if get is None:
    return [], None, False
  if isinstance(get, str):
    names, single = [get], True
  elif isinstance(get, (tuple, list)):
    names, single = list(get), False
  else:
    raise TypeError(f'get must be None, a string or a tuple of strings, got {get!r}')
  if not names:
    raise ValueError('get must not be empty')
  for name in names:
    if not isinstance(name, str):
      raise TypeError(f'get entries must be strings, got {name!r}')
  names = [name.lower() for name in names]
  unknown = [name for name in names if name not in allowed]
  if unknown:
    raise ValueError(f'get: unknown {unknown}; expected a subset of {allowed}')
  if len(set(names)) != len(names):
    raise ValueError(f'get has duplicates: {get!r}')
  return names, names, single


def kernel_request(layer, x1, x2=None, get=None, *, diagonal_batch=None, diagonal_spatial=None,
                   mask_constant=None, pattern=None, output_dtype=None, tile_size=0, large=None):
  """The KernelRequest of a kernel_fn call.

  With `large` (a dict), inputs x1 and x2 of more than UPLOAD_THRESHOLD_BYTES are not copied into the
  request: it holds their shape and dtype only, and `large` receives name -> array (to be uploaded).
  """
  names, _, _ = _parse_get(get)
  request = _proto.service_pb2.KernelRequest(
      architecture=layer_proto(layer), get=names, output_dtype=tensors.wire_dtype(output_dtype),
      tile_size=int(tile_size))
  for name, x in (('x1', x1), ('x2', x2)):
    if x is None:
      continue
    a = tensors.wire_array(x)
    if large is not None and a.nbytes > connection_lib.UPLOAD_THRESHOLD_BYTES:
      large[name] = a
      getattr(request, name).shape[:] = a.shape
      getattr(request, name).dtype = tensors.DType.FLOAT64
    else:
      tensors.fill_tensor(getattr(request, name), a)
  if diagonal_batch is not None:
    request.diagonal_batch = bool(diagonal_batch)
  if diagonal_spatial is not None:
    request.diagonal_spatial = bool(diagonal_spatial)
  if mask_constant is not None:
    request.mask_constant = float(mask_constant)
  if pattern is not None:
    # Upstream passes (pattern1, pattern2); a single array is pattern1 alone.
    pattern1, pattern2 = pattern if isinstance(pattern, tuple) else (pattern, None)
    for p, target in ((pattern1, request.pattern1), (pattern2, request.pattern2)):
      if p is not None:
        tensors.fill_tensor(target, p, tensors.auto_dtype(p))
  return request


def compute_kernel(layer, x1, x2=None, get=None, *, diagonal_batch=None, diagonal_spatial=None,
                   mask_constant=None, pattern=None, output_dtype=None, tile_size=0, connection=None,
                   timeout=None, out=None, progress=None, stats=None):
  """kernel_fn(x1, x2, get, ...) of `layer` on the server.

  With several servers (a comma-separated NT_SERVER or connect() address), inputs larger than a message
  or `out` (a .npy path: the arrays are written to disk tile by tile and come back as read-only memory
  maps, for kernels larger than memory), the kernel is cut into tile ranges spread over the servers, a
  failed range is retried on another, and the result is identical to one server's (ntclient.tiling).

  Returns a bare array when `get` is a string, else a namedtuple AnalyticKernel (of the requested arrays in
  request order, or of every returned array when get is None). A requested array the server does not
  return (cov2 when x2 is None) is None. Server errors raise grpc.RpcError.
  """
  _, names, single = _parse_get(get)
  large = {}
  request = kernel_request(layer, x1, x2, get, diagonal_batch=diagonal_batch,
                           diagonal_spatial=diagonal_spatial, mask_constant=mask_constant,
                           pattern=pattern, output_dtype=output_dtype, tile_size=tile_size, large=large)
  conn = connection or connection_lib.default_connection()
  if large or tiling.needs_distribution(conn, request, out):
    arrays = tiling.distributed_kernel(conn, request, out=out, progress=progress, stats=stats,
                                       timeout=timeout, large=large)
  else:
    stream = conn.compute_kernel(request, timeout=timeout, split_tiles=True)
    arrays = tensors.TileAssembler().consume(stream)
  if names is None:
    names = [n for n in GET_NAMES if n in arrays] + [n for n in arrays if n not in GET_NAMES]
  if single:
    return arrays.get(names[0])
  return _analytic_kernel_type(tuple(names))(*(arrays.get(n) for n in names))


def describe(layer, x1_shape, x2_shape=None, get=None, *, diagonal_batch=None, diagonal_spatial=None,
             tile_size=0, connection=None, timeout=None):
  """DescribeResponse: what ComputeKernel would do for these input shapes (nothing is computed)."""
  names, _, _ = _parse_get(get)
  request = _proto.service_pb2.DescribeRequest(
      architecture=layer_proto(layer), x1_shape=[int(d) for d in x1_shape], get=names,
      tile_size=int(tile_size))
  if x2_shape is not None:
    request.x2_shape[:] = [int(d) for d in x2_shape]
  if diagonal_batch is not None:
    request.diagonal_batch = bool(diagonal_batch)
  if diagonal_spatial is not None:
    request.diagonal_spatial = bool(diagonal_spatial)
  conn = connection or connection_lib.default_connection()
  return conn.describe(request, timeout=timeout)


# ---------------------------------------------------------------------------------------------------
# Combinators.


def serial(*layers):
  """Combinator for composing layers in serial."""
  layer = _proto.Layer()
  layer.serial.SetInParent()
  for sub in layers:
    layer.serial.layers.add().CopyFrom(layer_proto(sub))
  return _triple(layer)


def parallel(*layers):
  """Combinator for composing layers in parallel."""
  layer = _proto.Layer()
  layer.parallel.SetInParent()
  for sub in layers:
    layer.parallel.layers.add().CopyFrom(layer_proto(sub))
  return _triple(layer)


def repeat(layer, n):
  """`layer` composed with itself `n` times (n = 0: Identity)."""
  out = _proto.Layer()
  out.repeat.layer.CopyFrom(layer_proto(layer))
  out.repeat.n = int(n)
  return _triple(out)


# ---------------------------------------------------------------------------------------------------
# Layers. Signatures (and defaults) are upstream's; only the arguments actually passed are put in the
# proto, so "not passed" stays "upstream default" on the server.


def _layer(fn):
  signature = inspect.signature(fn)

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    bound = signature.bind(*args, **kwargs)  # TypeError for missing / unexpected arguments.
    return _triple(arch_json.layer_from_json({'layer': fn.__name__, 'args': dict(bound.arguments)}))
  return wrapper


# pylint: disable=invalid-name,unused-argument
# Branching.


@_layer
def FanOut(num):
  """Fan-out: `num` copies of the input."""


@_layer
def FanInSum():
  """Fan-in sum."""


@_layer
def FanInProd():
  """Fan-in product."""


@_layer
def FanInConcat(axis=-1):
  """Fan-in concatenation."""


# Linear parametric.


@_layer
def Dense(out_dim, W_std=1.0, b_std=None, batch_axis=0, channel_axis=-1, parameterization='ntk',
          s=(1, 1)):
  """Dense (fully-connected, matrix product)."""


@_layer
def Conv(out_chan, filter_shape, strides=None, padding=Padding.VALID.name, W_std=1.0, b_std=None,
         dimension_numbers=None, parameterization='ntk', s=(1, 1)):
  """General convolution."""


@_layer
def ConvTranspose(out_chan, filter_shape, strides=None, padding=Padding.VALID.name, W_std=1.0,
                  b_std=None, dimension_numbers=None, parameterization='ntk', s=(1, 1)):
  """General transpose convolution."""


@_layer
def ConvLocal(out_chan, filter_shape, strides=None, padding=Padding.VALID.name, W_std=1.0, b_std=None,
              dimension_numbers=None, parameterization='ntk', s=(1, 1)):
  """General unshared convolution."""


@_layer
def GlobalSelfAttention(n_chan_out, n_chan_key, n_chan_val, n_heads, linear_scaling=True,
                        W_key_std=1.0, W_value_std=1.0, W_query_std=1.0, W_out_std=1.0, b_std=None,
                        attention_mechanism=AttentionMechanism.SOFTMAX.name,
                        pos_emb_type=PositionalEmbedding.NONE.name, pos_emb_p_norm=2,
                        pos_emb_decay_fn=None, n_chan_pos_emb=None, W_pos_emb_std=1.0,
                        val_pos_emb=False, batch_axis=0, channel_axis=-1):
  """Global scaled dot-product self-attention. pos_emb_decay_fn: text expression of `d`."""


# Linear nonparametric.


@_layer
def Identity():
  """Identity (no-op)."""


@_layer
def Aggregate(aggregate_axis=None, batch_axis=0, channel_axis=-1, to_dense=None,
              implementation=AggregateImplementation.DENSE.value):
  """Aggregation operator (graph neural network); the pattern goes to kernel_fn(pattern=...).

  to_dense: only the identity is supported (None or the expression "p").
  """


@_layer
def AvgPool(window_shape, strides=None, padding=Padding.VALID.name, normalize_edges=False,
            batch_axis=0, channel_axis=-1):
  """Average pooling."""


@_layer
def SumPool(window_shape, strides=None, padding=Padding.VALID.name, batch_axis=0, channel_axis=-1):
  """Sum pooling."""


@_layer
def GlobalAvgPool(batch_axis=0, channel_axis=-1):
  """Global average pooling."""


@_layer
def GlobalSumPool(batch_axis=0, channel_axis=-1):
  """Global sum pooling."""


@_layer
def Flatten(batch_axis=0, batch_axis_out=0):
  """Flattening all non-batch dimensions."""


@_layer
def LayerNorm(axis=-1, eps=1e-12, batch_axis=0, channel_axis=-1):
  """Layer normalisation."""


@_layer
def Dropout(rate, mode='train'):
  """Dropout; `rate` is the keep probability."""


@_layer
def ImageResize(shape, method, antialias=True, precision='HIGHEST', batch_axis=0, channel_axis=-1):
  """Image resize mimicking jax.image.resize."""


@_layer
def Index(idx, batch_axis=0, channel_axis=-1):
  """Index into the array mimicking numpy indexing, e.g. Index(Slice[:, 0, ...])."""


@_layer
def DotGeneral(*, lhs=None, rhs=None, dimension_numbers=(((), ()), ((), ())), precision=None,
               batch_axis=0, channel_axis=-1):
  """Constant (non-trainable) rhs/lhs dot general."""


# Elementwise nonlinear.


@_layer
def Relu(do_stabilize=False):
  """ReLU nonlinearity."""


@_layer
def ABRelu(a, b, do_stabilize=False):
  """a * min(x, 0) + b * max(x, 0)."""


@_layer
def LeakyRelu(alpha, do_stabilize=False):
  """alpha * min(x, 0) + max(x, 0)."""


@_layer
def Abs(do_stabilize=False):
  """Absolute value nonlinearity."""


@_layer
def Sign():
  """Sign function."""


@_layer
def Erf(a=1.0, b=1.0, c=0.0):
  """a * erf(b * x) + c."""


@_layer
def Sigmoid_like():
  """0.5 * erf(x / 2.4020563531719796) + 0.5."""


@_layer
def Gelu(approximate=False):
  """Gelu function."""


@_layer
def Sin(a=1.0, b=1.0, c=0.0):
  """a * sin(b * x + c)."""


@_layer
def Cos(a=1.0, b=1.0, c=0.0):
  """a * cos(b * x + c)."""


@_layer
def Gabor():
  """exp(-x^2) * sin(x)."""


@_layer
def Exp(a=1.0, b=1.0):
  """a * exp(b * x)."""


@_layer
def Gaussian(a=1.0, b=-1.0):
  """a * exp(b * x^2)."""


@_layer
def ExpNormalized(gamma=1.0, shift=-1.0, do_clip=False):
  """The "Gaussian normalized kernel"."""


@_layer
def Rbf(gamma=1.0):
  """Dual activation of the normalized RBF kernel."""


@_layer
def Hermite(degree):
  """Normalized Hermite polynomial."""


@_layer
def Monomial(degree):
  """x^degree."""


@_layer
def RectifiedMonomial(degree):
  """(x >= 0) * x^degree."""


@_layer
def Polynomial(coef):
  """coef[0] + coef[1] * x + ... + coef[n] * x^n."""


@_layer
def Elementwise(fn=None, nngp_fn=None, d_nngp_fn=None):
  """Elementwise fn with a given dual: text expressions (fn of x; nngp_fn, d_nngp_fn of cov12, var1, var2)."""


@_layer
def ElementwiseNumerical(fn, deg, df=None):
  """Elementwise fn with the kernel by Gauss-Hermite quadrature; fn, df: text expressions of x."""


# Ready-made numerical activations (not upstream layers).


@_layer
def Tanh(deg=None):
  """tanh(x), kernel by quadrature of degree `deg` (None: server default)."""


@_layer
def Softplus(deg=None):
  """log(1 + exp(x)), kernel by quadrature."""


@_layer
def Swish(deg=None):
  """x * sigmoid(x), kernel by quadrature."""


# pylint: enable=invalid-name,unused-argument
