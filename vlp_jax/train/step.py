"""The jitted train step, shared by every family, with contrastive-exact gradient accumulation.

Accumulating micro-batch gradients naively would change a contrastive loss (each
micro-batch would only see its own negatives). Instead, as in GradCache / open_clip's
accum-freq: (1) run every micro-batch forward without keeping activations, (2) evaluate
the family's global loss on the concatenated per-example features and take its gradient
with respect to them, (3) run every micro-batch forward again and pull that feature
gradient back to the parameters. The result equals one step on the full batch, for any
family whose loss depends on the batch only through per-example features; it costs one
extra forward pass and per-micro-batch activation memory.
"""
import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from vlp_jax.parallel import sharding
from vlp_jax.parallel.mesh import BATCH_AXES
from vlp_jax.train import optimizer


def _split_micro(tree, accum):
  """[B, ...] -> [accum, B/accum, ...], micro-batch k = rows k, k+accum, ... so every
  device keeps an equal share of each micro-batch (no data moves between devices)."""
  def split(x):
    x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, tree)


def _merge_micro(tree):
  def merge(x):
    x = jnp.swapaxes(x, 0, 1)
    return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])
  return jax.tree.map(merge, tree)


def loss_and_grads(family, params, batch, rng, mesh, accum):
  """(loss, metrics), grads of the family's loss on the full batch."""
  if accum == 1:
    def total(p):
      return family.loss(p, family.features(p, batch, rng), mesh)
    return jax.value_and_grad(total, has_aux=True)(params)

  micro_sharding = NamedSharding(mesh, P(None, BATCH_AXES))
  micro = jax.lax.with_sharding_constraint(_split_micro(batch, accum), micro_sharding)
  keys = jax.random.split(rng, accum)

  def forward(p, k):
    mb = jax.tree.map(lambda x: x[k], micro)
    return family.features(p, mb, keys[k])

  feats = jax.lax.map(lambda k: forward(jax.lax.stop_gradient(params), k), jnp.arange(accum))
  full = _merge_micro(feats)
  (loss, metrics), (direct_grads, feat_grads) = jax.value_and_grad(
      family.loss, argnums=(0, 1), has_aux=True)(params, full, mesh)
  feat_grads = jax.lax.with_sharding_constraint(_split_micro(feat_grads, accum), micro_sharding)

  def pull_back(acc, k):
    _, vjp = jax.vjp(lambda p: forward(p, k), params)
    (g,) = vjp(jax.tree.map(lambda x: x[k], feat_grads))
    return jax.tree.map(jnp.add, acc, g), None

  grads, _ = jax.lax.scan(pull_back, direct_grads, jnp.arange(accum))
  return (loss, metrics), grads


def make_train_step(family, tx, lr_fn, config, mesh, state_shardings):
  """The train step: one jax.jit with explicit shardings; the old state is donated."""
  accum = config.train.accum_steps

  def step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, metrics), grads = loss_and_grads(family, state.params, batch, rng, mesh, accum)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optimizer.global_norm(grads),
                   param_norm=optimizer.global_norm(params), lr=lr_fn(state.step))
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)

  batch_shardings = jax.tree.map(lambda _: sharding.batch_sharding(mesh),
                                 family.example_batch(1))
  jitted = jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, sharding.replicated(mesh)),
                   donate_argnums=(0,))

  @functools.wraps(step)
  def run(state, batch):
    with sharding.rules_context(), jax.set_mesh(mesh):
      return jitted(state, batch)

  def lower(state, batch):
    """The step lowered for these (abstract or concrete) arguments: `.compile()` it for AOT
    compile times, memory and cost analysis."""
    with sharding.rules_context(), jax.set_mesh(mesh):
      return jitted.lower(state, batch)
  run.lower = lower
  return run
