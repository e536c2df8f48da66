"""Logical-axis rules and the shardings of parameters, optimizer state and batches.

One table maps the logical names that models give their weights to mesh axes: fsdp shards
the "embed" dimension of every weight and, through the same specs, its optimizer moments
(ZeRO-3 style); the model axis shards attention heads and MLP hidden units (tensor
parallelism). A dimension that a mesh axis does not divide stays replicated, so any mesh
runs any model; `describe` reports the resulting bytes per device.
"""
import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vlp_jax.parallel.mesh import BATCH_AXES

RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("joint", None),
    ("layers", None),
    ("length", None),
    ("act_embed", None),
    ("act_mlp", "model"),
)
MIN_FSDP_SIZE = 4096


def _mesh_axes(logical, rules=RULES):
  table = dict(rules)
  out = []
  for name in logical:
    axes = table.get(name) if name is not None else None
    out.append(axes)
  return out


def spec_for(shape, logical, mesh_shape):
  """PartitionSpec for one array: each mesh axis used once, only where it divides the dim."""
  used = set()
  spec = []
  for dim, axes in zip(shape, _mesh_axes(logical)):
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    axes = tuple(a for a in axes if a not in used and mesh_shape.get(a, 1) > 1)
    size = math.prod(mesh_shape[a] for a in axes)
    if not axes or dim % size:
      spec.append(None)
      continue
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  fsdp = mesh_shape.get("fsdp", 1)
  if fsdp > 1 and "fsdp" not in used and math.prod(shape) >= MIN_FSDP_SIZE:
    # ZeRO-3 shards all it can: give fsdp to the largest free dimension it divides
    # (position embeddings, biases of scanned layers); tiny arrays are not worth a gather.
    free = [i for i, (d, a) in enumerate(zip(shape, spec)) if a is None and d % fsdp == 0]
    if free:
      spec[max(free, key=lambda i: shape[i])] = "fsdp"
  return P(*spec)


def logical_specs(boxed_tree):
  """Logical axis names of every leaf of a tree of (possibly abstract) boxed variables."""
  return nn.get_partition_spec(boxed_tree)


def tree_specs(abstract_tree, logical_tree, mesh_shape):
  """PartitionSpecs for a tree of ShapeDtypeStructs given a matching tree of logical specs."""
  return jax.tree.map(lambda x, names: spec_for(x.shape, tuple(names), mesh_shape),
                      abstract_tree, logical_tree,
                      is_leaf=lambda x: isinstance(x, P))


def named(mesh, spec_tree):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), spec_tree,
                      is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh):
  """Leading (batch) dimension split over data x fsdp; everything else replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def process_rows(batch_sharding_, global_batch):
  """Rows [0, global_batch) of a batch-sharded array that this process feeds, ascending.

  `jax.make_array_from_process_local_data` fills this process's devices from its local rows
  in this order. Which rows a process owns is decided by the mesh's device order, which on
  TPU need not be contiguous blocks, so input pipelines ask here instead of assuming
  process p owns rows [p * b, (p + 1) * b).
  """
  shape = (global_batch,)
  rows = set()
  for index in batch_sharding_.addressable_devices_indices_map(shape).values():
    rows.update(range(*index[0].indices(global_batch)[:2]))
  return np.array(sorted(rows), np.int64)


def replicated(mesh):
  return NamedSharding(mesh, P())


def bytes_per_device(abstract_tree, spec_tree, mesh_shape):
  """Bytes one device holds for a sharded tree; works for meshes larger than this host."""
  def leaf_bytes(x, spec):
    shard = list(x.shape)
    for i, axes in enumerate(spec):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else axes
      shard[i] //= math.prod(mesh_shape[a] for a in axes)
    return int(np.prod(shard)) * np.dtype(x.dtype).itemsize
  leaves = jax.tree.leaves(jax.tree.map(leaf_bytes, abstract_tree, spec_tree,
                                        is_leaf=lambda x: isinstance(x, P)))
  return int(sum(leaves))


def rules_context():
  """Activates the rules for `nn.with_logical_constraint` inside models while tracing."""
  return nn.logical_axis_rules(RULES)
