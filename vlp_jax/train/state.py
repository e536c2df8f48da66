"""The train state and its creation directly in sharded form."""
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vlp_jax.parallel import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # raw uint32[2] key, so checkpoints need no typed-key support
  # Non-finite steps (train/step.py): how many were skipped in all, how many in a row up
  # to the last step, and the step that began the current run of them.
  skipped_nonfinite: jax.Array = None
  nonfinite_streak: jax.Array = None
  nonfinite_step: jax.Array = None
  # The family's non-trainable state (Family.init_state; None for most families).
  family_state: Any = None


def frozen_mask(family, params):
  """The family's frozen-parameter mask (a bool pytree like params), or None."""
  mask = family.frozen(nn.meta.unbox(params))
  if mask is None or not any(bool(m) for m in jax.tree.leaves(mask)):
    return None
  return mask


def optimizer_for(family, tx):
  """`tx` for the family's trainable parameters only: frozen ones get zero updates and no
  optimizer state (optax.multi_transform with set_to_zero, as big_vision's schedule=None).
  Families with nothing frozen keep `tx` itself, so their optimizer state is unchanged."""
  def labels(params):
    return jax.tree.map(lambda f: "frozen" if f else "train", frozen_mask(family, params))

  masked = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
  pick = lambda params: tx if frozen_mask(family, params) is None else masked

  def init(params):
    return pick(params).init(params)

  def update(updates, state, params=None):
    return pick(params).update(updates, state, params)
  return optax.GradientTransformation(init, update)


def _init_fn(family, tx, seed, loaded=None):
  """The state's initialiser; `loaded`: {param path tuple: array} replacing initial values
  (model.init_from)."""
  def init():
    batch = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), family.example_batch(1))
    params = family.init(jax.random.PRNGKey(seed), batch)
    if loaded:
      params = _replace(params, loaded)
    params = _store_frozen(family, params)
    zero = jnp.zeros((), jnp.int32)
    # Boxed parameters in, so the optimizer and family state inherit their axis names.
    return TrainState(step=zero, params=params,
                      opt_state=optimizer_for(family, tx).init(params),
                      rng=jax.random.fold_in(jax.random.PRNGKey(seed), 1),
                      skipped_nonfinite=zero, nonfinite_streak=zero, nonfinite_step=zero,
                      family_state=family.init_state(params))
  return init


def _store_frozen(family, params):
  """params with the frozen ones cast to model.frozen_dtype (boxes keep their names)."""
  dtype = jnp.dtype(family.config.model.frozen_dtype)
  mask = frozen_mask(family, params)
  if mask is None or dtype == jnp.float32:
    return params
  cast = lambda p, f: p.replace_boxed(nn.meta.unbox(p).astype(dtype)) if f else p
  boxed = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree.map(cast, params, mask, is_leaf=boxed)


def _replace(params, loaded):
  """params with the leaves at `loaded`'s paths replaced (boxes keep their axis names)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  for path, value in loaded.items():
    old = flat[path]
    value = jnp.asarray(value, nn.meta.unbox(old).dtype)
    flat[path] = old.replace_boxed(value) if isinstance(old, nn.meta.AxisMetadata) else value
  return flax.traverse_util.unflatten_dict(flat)


def abstract_state(family, tx, seed, mesh_shape):
  """(shapes, partition specs) of the state, without allocating anything."""
  boxed = jax.eval_shape(_init_fn(family, tx, seed))
  abstract = nn.meta.unbox(boxed)
  specs = sharding.tree_specs(abstract, nn.get_partition_spec(boxed), dict(mesh_shape))
  return abstract, specs


def create(family, tx, seed, mesh, loaded=None):
  """Initialises the state with every array born on its own shards (no host copy).

  `loaded`: {param path tuple: host array} to start from instead of the initial values
  (init_from.load); the optimizer and family state are initialised from the result.
  """
  _, specs = abstract_state(family, tx, seed, mesh.shape)
  shardings = sharding.named(mesh, specs)
  paths = sorted(loaded or {})
  init = lambda values: nn.meta.unbox(_init_fn(family, tx, seed, dict(zip(paths, values)))())
  values = [loaded[p] for p in paths]
  with sharding.rules_context():
    return jax.jit(init, out_shardings=shardings)(values), shardings
