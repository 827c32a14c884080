"""JSON form of an architecture <-> nt.v1.Layer.

JSON form (as in the golden cases, see shared/golden/FORMAT.md):
  {"layer": "Dense", "args": {"out_dim": 8, "W_std": 1.5}}
  {"layer": "serial",   "layers": [L1, L2, ...]}
  {"layer": "parallel", "layers": [L1, L2, ...]}
  {"layer": "repeat",   "args": {"n": 3}, "layers": [L]}

Layers are found generically: the Layer oneof field whose message type is named like the layer, and
arguments by field name. Only the arguments whose JSON shape differs from the proto's are special-cased.
The same conversion accepts Python values (tuples, numpy arrays, slices, Ellipsis, enum members), so
ntclient.stax builds its protos through it too.
"""

import enum
import json
import numbers
import os

import numpy as np
from google.protobuf import descriptor
from google.protobuf import json_format

from ntclient import _proto
from ntclient import tensors

_COMBINATORS = ('serial', 'parallel', 'repeat')
_KIND = _proto.Layer.DESCRIPTOR.oneofs_by_name['kind']
# Layer name (= args message name) -> oneof field of Layer.
_LAYER_FIELDS = {f.message_type.name: f for f in _KIND.fields if f.name not in _COMBINATORS}
_REPEATED = descriptor.FieldDescriptor.LABEL_REPEATED


def layer_names():
  """All layer names accepted in the JSON form, combinators included."""
  return sorted(_LAYER_FIELDS) + list(_COMBINATORS)


# ---------------------------------------------------------------------------------------------------
# JSON -> proto.


def layer_from_json(obj):
  """Converts the JSON form of one layer (a dict) to a Layer proto. Raises ValueError on bad input."""
  if not isinstance(obj, dict) or 'layer' not in obj:
    raise ValueError(f'a layer must be a dict with a "layer" key, got {obj!r}')
  name = obj['layer']
  unknown_keys = set(obj) - {'layer', 'args', 'layers'}
  if unknown_keys:
    raise ValueError(f'{name}: unknown keys {sorted(unknown_keys)}')
  args = obj.get('args') or {}
  if not isinstance(args, dict):
    raise ValueError(f'{name}: "args" must be a dict, got {args!r}')
  layer = _proto.Layer()

  if name in ('serial', 'parallel'):
    if args:
      raise ValueError(f'{name}: takes no args, got {sorted(args)}')
    combinator = getattr(layer, name)
    combinator.SetInParent()  # An empty serial is a valid (identity) network.
    for sub in obj.get('layers') or []:
      combinator.layers.add().CopyFrom(layer_from_json(sub))
    return layer

  if name == 'repeat':
    layers = obj.get('layers') or []
    if len(layers) != 1:
      raise ValueError(f'repeat: needs exactly one layer in "layers", got {len(layers)}')
    for key in args:
      if key != 'n':
        raise ValueError(f'repeat: unknown argument {key!r}')
    layer.repeat.layer.CopyFrom(layer_from_json(layers[0]))
    if args.get('n') is not None:
      _set_field(layer.repeat, 'n', args['n'], 'repeat')
    return layer

  field = _LAYER_FIELDS.get(name)
  if field is None:
    raise ValueError(f'unknown layer {name!r}; known layers: {", ".join(layer_names())}')
  if obj.get('layers'):
    raise ValueError(f'{name}: only combinators take "layers"')
  msg = getattr(layer, field.name)
  msg.SetInParent()  # Selects the oneof even when no argument is set.
  for key, value in args.items():
    _set_field(msg, key, value, name)
  return layer


def _set_field(msg, key, value, layer_name):
  """Sets msg.<key> from a JSON / Python value; None leaves it unset (= upstream default)."""
  field = msg.DESCRIPTOR.fields_by_name.get(key)
  if field is None:
    known = ', '.join(f.name for f in msg.DESCRIPTOR.fields) or 'none'
    raise ValueError(f'{layer_name}: unknown argument {key!r} (arguments: {known})')
  if value is None:
    return
  where = f'{layer_name}: argument {key!r}'
  if callable(value) and not isinstance(value, (enum.Enum, np.ndarray)):
    raise TypeError(f'{where}: Python callables cannot cross the service; pass a text expression')
  try:
    if field.message_type is not None:
      _set_message_field(msg, field, value, where)
      return
    if field.enum_type is not None:
      value = _enum_value(field, value, where)
    else:
      value = _plain(value)
      if field.label == _REPEATED and not isinstance(value, list):
        value = [value]  # E.g. LayerNorm(axis=-1) means axis=(-1,).
    json_format.ParseDict({key: value}, msg)
  except json_format.ParseError as e:
    raise ValueError(f'{where}: {e}') from None


def _plain(value):
  """numpy scalars / arrays and tuples -> Python scalars / lists, as json_format expects."""
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def _enum_value(field, value, where):
  """An enum name (any case, or an enum member whose name is the upstream name) -> the proto name."""
  if isinstance(value, enum.Enum):
    value = value.name
  if isinstance(value, str):
    name = value.upper()
    if name in field.enum_type.values_by_name:
      return name
  allowed = [v.name for v in field.enum_type.values if v.number != 0]
  raise ValueError(f'{where}: {value!r} is not one of {allowed}')


def _set_message_field(msg, field, value, where):
  type_name = field.message_type.name
  if type_name == 'Tensor':
    getattr(msg, field.name).CopyFrom(_tensor_from_json(value, where))
  elif type_name == 'Axes':
    axes = _plain(value)
    getattr(msg, field.name).axes[:] = axes if isinstance(axes, list) else [axes]
  elif type_name == 'ConvDimensionNumbers':
    if isinstance(value, dict):
      json_format.ParseDict(value, getattr(msg, field.name))
      return
    if not isinstance(value, (list, tuple)) or len(value) != 3:
      raise ValueError(f'{where}: expected 3 strings (lhs_spec, rhs_spec, out_spec), got {value!r}')
    dn = getattr(msg, field.name)
    dn.lhs_spec, dn.rhs_spec, dn.out_spec = (str(v) for v in value)
  elif type_name == 'DotDimensionNumbers':
    _set_dot_dimension_numbers(getattr(msg, field.name), value, where)
  elif type_name == 'IndexItem':
    items = value if isinstance(value, (list, tuple)) else [value]  # A bare item means (item,).
    container = getattr(msg, field.name)
    del container[:]
    for item in items:
      _set_index_item(container.add(), item, where)
  else:
    raise ValueError(f'{where}: unsupported message type {type_name}')


def _tensor_from_json(value, where):
  if isinstance(value, _proto.Tensor):
    return value
  if isinstance(value, dict):
    if set(value) != {'shape', 'data'}:
      raise ValueError(f'{where}: an array object needs exactly "shape" and "data", got {sorted(value)}')
    try:
      array = np.asarray(value['data'], dtype=np.float64).reshape(value['shape'])
    except ValueError as e:
      raise ValueError(f'{where}: {e}') from None
    return tensors.to_tensor(array)
  if isinstance(value, (numbers.Number, np.ndarray, np.generic, list, tuple)):
    return tensors.to_tensor(np.asarray(value, dtype=np.float64))
  raise ValueError(f'{where}: expected an array, got {value!r}')


def _set_dot_dimension_numbers(dn, value, where):
  if isinstance(value, dict):
    json_format.ParseDict(value, dn)
    return
  value = _plain(value)
  try:
    (lc, rc), (lb, rb) = value
    dn.lhs_contracting[:] = lc
    dn.rhs_contracting[:] = rc
    dn.lhs_batch[:] = lb
    dn.rhs_batch[:] = rb
  except (TypeError, ValueError):
    raise ValueError(
        f'{where}: expected ((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch)), '
        f'got {value!r}') from None


def _set_index_item(item, value, where):
  """One index item: {"slice": [start, stop, step]}, a slice, an int, "..." or Ellipsis."""
  if value is Ellipsis or (isinstance(value, str) and value == '...'):
    item.ellipsis = True
    return
  if isinstance(value, slice):
    value = {'slice': [value.start, value.stop, value.step]}
  if isinstance(value, dict):
    if set(value) == {'slice'} and isinstance(value['slice'], (list, tuple)) and len(value['slice']) <= 3:
      item.slice.SetInParent()
      for name, v in zip(('start', 'stop', 'step'), value['slice']):
        if v is not None:
          setattr(item.slice, name, _index_int(v, where))
      return
    try:  # The proto's own JSON form, e.g. {"index": 2} or {"ellipsis": true}.
      json_format.ParseDict(value, item)
      return
    except json_format.ParseError:
      pass
  elif isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool):
    item.index = int(value)
    return
  raise ValueError(
      f'{where}: index items are {{"slice": [start, stop, step]}}, an integer or "...", got {value!r}')


def _index_int(v, where):
  if isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, bool):
    return int(v)
  raise ValueError(f'{where}: slice entries must be integers or null, got {v!r}')


# ---------------------------------------------------------------------------------------------------
# Proto -> JSON.


def layer_to_json(layer):
  """Converts a Layer proto to the JSON form (plain dicts / lists; only arguments that are set)."""
  kind = layer.WhichOneof('kind')
  if kind is None:
    raise ValueError('Layer has no kind set')
  msg = getattr(layer, kind)
  if kind in ('serial', 'parallel'):
    return {'layer': kind, 'layers': [layer_to_json(sub) for sub in msg.layers]}
  if kind == 'repeat':
    out = {'layer': 'repeat', 'args': {}, 'layers': [layer_to_json(msg.layer)]}
    if msg.HasField('n'):
      out['args']['n'] = msg.n
    return out
  args = {field.name: _field_to_json(field, value) for field, value in msg.ListFields()}
  return {'layer': msg.DESCRIPTOR.name, 'args': args}


def _field_to_json(field, value):
  if field.message_type is not None:
    type_name = field.message_type.name
    if type_name == 'Tensor':
      array = tensors.from_tensor(value)
      return {'shape': list(array.shape), 'data': array.ravel().tolist()}
    if type_name == 'Axes':
      return list(value.axes)
    if type_name == 'ConvDimensionNumbers':
      return [value.lhs_spec, value.rhs_spec, value.out_spec]
    if type_name == 'DotDimensionNumbers':
      return [[list(value.lhs_contracting), list(value.rhs_contracting)],
              [list(value.lhs_batch), list(value.rhs_batch)]]
    if type_name == 'IndexItem':
      return [_index_item_to_json(item) for item in value]
    raise ValueError(f'unsupported message type {type_name}')
  if field.enum_type is not None:
    return field.enum_type.values_by_number[value].name
  if field.label == _REPEATED:
    return list(value)
  return value


def _index_item_to_json(item):
  which = item.WhichOneof('item')
  if which == 'slice':
    s = item.slice
    return {'slice': [s.start if s.HasField('start') else None,
                      s.stop if s.HasField('stop') else None,
                      s.step if s.HasField('step') else None]}
  if which == 'index':
    return item.index
  return '...'


# ---------------------------------------------------------------------------------------------------
# Loading.


def load(source):
  """A Layer from a JSON dict, a JSON string or a path to a JSON file.

  A golden case file (a dict with an "architecture" key) is accepted too.
  """
  if isinstance(source, _proto.Layer):
    return source
  if isinstance(source, (str, os.PathLike)):
    text = str(source) if isinstance(source, str) else None
    if text is not None and text.lstrip().startswith(('{', '[')):
      source = json.loads(text)
    else:
      with open(source, encoding='utf-8') as f:
        source = json.load(f)
  if isinstance(source, dict) and 'layer' not in source and 'architecture' in source:
    source = source['architecture']
  return layer_from_json(source)


def dumps(layer, **kwargs):
  """The JSON text of a Layer."""
  return json.dumps(layer_to_json(layer), **kwargs)
