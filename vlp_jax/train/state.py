"""The train state and its creation directly in sharded form."""
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

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


def _init_fn(family, tx, seed):
  def init():
    batch = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), family.example_batch(1))
    params = family.init(jax.random.PRNGKey(seed), batch)
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, opt_state=tx.init(params),
                      rng=jax.random.fold_in(jax.random.PRNGKey(seed), 1),
                      skipped_nonfinite=zero, nonfinite_streak=zero, nonfinite_step=zero)
  return init


def abstract_state(family, tx, seed, mesh_shape):
  """(shapes, partition specs) of the state, without allocating anything."""
  boxed = jax.eval_shape(_init_fn(family, tx, seed))
  abstract = nn.meta.unbox(boxed)
  specs = sharding.tree_specs(abstract, nn.get_partition_spec(boxed), dict(mesh_shape))
  return abstract, specs


def create(family, tx, seed, mesh):
  """Initialises the state with every array born on its own shards (no host copy)."""
  _, specs = abstract_state(family, tx, seed, mesh.shape)
  shardings = sharding.named(mesh, specs)
  init = _init_fn(family, tx, seed)
  with sharding.rules_context():
    return jax.jit(lambda: nn.meta.unbox(init()), out_shardings=shardings)(), shardings
