"""The two layouts of a layer stack's parameters, and the conversion between them.

Unrolled (`model.scan=False`), layers.Transformer names its layers `block_0`, `block_1`,
... and fusion.TextStack `layer_0`, `layer_1`, .... Scanned, the same weights sit under one
name with a leading layer axis [L, ...]: `blocks` (Transformer) and `layers` (TextStack). A
Transformer that computes only its pooled row keeps its last layer out of the scan as
`last_block` (unstacked) and scans `blocks` over the others.

The unrolled paths are the canonical names of the weights: they do not depend on
`model.scan`, so checkpoints are matched, mapped and reported in them (train/init_from.py,
models/import_hf_blip.py). Trees here are flat: {path tuple: array}, where an array may
also be shape-only (jax.ShapeDtypeStruct, orbax metadata) to plan before reading anything.
"""
import re

import jax
import numpy as np

# Scanned name -> unrolled name pattern.
STACKS = {"blocks": "block_{}", "layers": "layer_{}"}
LAST = "last_block"  # the pooled-only Transformer's unscanned last layer (after `blocks`)
_UNROLLED = re.compile(r"^(block|layer)_(\d+)$")


def _is_shape(value):
  return not isinstance(value, (np.ndarray, np.generic, jax.Array))


def _stack_at(path):
  """Index of the scanned-stack name in `path` (the first one), or None."""
  for k, name in enumerate(path[:-1]):
    if name in STACKS or name == LAST:
      return k
  return None


def _depths(flat):
  """{prefix: layers in its `blocks` scan} of every scanned Transformer in `flat`."""
  depths = {}
  for path, value in flat.items():
    k = _stack_at(path)
    if k is not None and path[k] == "blocks":
      depths[path[:k]] = value.shape[0]
  return depths


def origins(flat):
  """{unrolled path: (path in `flat`, layer index or None)}: where each per-layer weight
  of `unrolled(flat)` lives in `flat` (to read only what is wanted from a checkpoint)."""
  depths = _depths(flat)
  out = {}
  for path, value in flat.items():
    k = _stack_at(path)
    if k is None:
      out[path] = (path, None)
    elif path[k] == LAST:
      out[path[:k] + ("block_" + str(depths.get(path[:k], 0)),) + path[k + 1:]] = (path, None)
    else:
      for i in range(value.shape[0]):
        out[path[:k] + (STACKS[path[k]].format(i),) + path[k + 1:]] = (path, i)
  return out


def _take(value, i):
  if i is None:
    return value
  if _is_shape(value):
    return jax.ShapeDtypeStruct(tuple(value.shape[1:]), value.dtype)
  return value[i]


def unrolled(flat):
  """`flat` with every scanned stack split into per-layer entries, named as an unrolled
  model names them; values are per-layer slices (numpy views) or shapes."""
  return {path: _take(flat[src], i) for path, (src, i) in origins(flat).items()}


def _stack(values):
  if all(_is_shape(v) for v in values):
    return jax.ShapeDtypeStruct((len(values),) + tuple(values[0].shape), values[0].dtype)
  return np.stack([np.asarray(v) for v in values])


def layers_of(path, abstract_flat, depths=None):
  """The unrolled paths whose values make up `abstract_flat`'s `path`, in stack order."""
  depths = _depths(abstract_flat) if depths is None else depths
  k = _stack_at(path)
  if k is None:
    return [path]
  prefix, rest = path[:k], path[k + 1:]
  if path[k] == LAST:
    return [prefix + ("block_" + str(depths.get(prefix, 0)),) + rest]
  pattern = STACKS[path[k]]
  return [prefix + (pattern.format(i),) + rest for i in range(abstract_flat[path].shape[0])]


def to_layout(unrolled_flat, abstract_flat):
  """`unrolled_flat`'s weights arranged as `abstract_flat` (a model's flat tree, scanned or
  not) has them: per-layer arrays stacked where it scans. Only paths of `abstract_flat`
  whose every layer is in `unrolled_flat` are returned, so a partial tree gives a partial
  result. Shapes are not checked here."""
  depths = _depths(abstract_flat)
  out = {}
  for path in abstract_flat:
    parts = layers_of(path, abstract_flat, depths)
    if all(p in unrolled_flat for p in parts):
      k = _stack_at(path)
      scanned = k is not None and path[k] != LAST
      out[path] = _stack([unrolled_flat[p] for p in parts]) if scanned else unrolled_flat[parts[0]]
  return out


def layer_index(path):
  """(prefix, kind, index) of the first unrolled layer name in `path` ('block' or 'layer'),
  or None: where a stack deeper than a model's would put it."""
  for k, name in enumerate(path):
    match = _UNROLLED.match(name)
    if match:
      return path[:k], match.group(1), int(match.group(2))
  return None
