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
from vlp_jax.train import optimizer, state as state_lib


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


def stop_frozen(params, mask):
  """params with the frozen ones (mask True) cut from the gradient."""
  if mask is None:
    return params
  return jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, mask)


def loss_and_grads(family, params, batch, rng, mesh, accum, family_state=None, frozen=None):
  """(loss, metrics, features), grads of the family's loss on the full batch.

  `frozen`: a bool mask like params; those parameters get zero gradients (never computed).
  """
  if accum == 1:
    def total(p):
      p = stop_frozen(p, frozen)
      feats = family.features(p, batch, rng, family_state)
      loss, metrics = family.loss(p, feats, mesh, family_state)
      return loss, (metrics, feats)
    (loss, (metrics, feats)), grads = jax.value_and_grad(total, has_aux=True)(params)
    return (loss, metrics, feats), grads

  micro_sharding = NamedSharding(mesh, P(None, BATCH_AXES))
  micro = jax.lax.with_sharding_constraint(_split_micro(batch, accum), micro_sharding)
  keys = jax.random.split(rng, accum)

  def forward(p, k):
    mb = jax.tree.map(lambda x: x[k], micro)
    return family.features(stop_frozen(p, frozen), mb, keys[k], family_state)

  feats = jax.lax.map(lambda k: forward(jax.lax.stop_gradient(params), k), jnp.arange(accum))
  full = _merge_micro(feats)
  loss_fn = lambda p, f: family.loss(stop_frozen(p, frozen), f, mesh, family_state)
  (loss, metrics), (direct_grads, feat_grads) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(params, full)
  feat_grads = jax.lax.with_sharding_constraint(_split_micro(feat_grads, accum), micro_sharding)

  def pull_back(acc, k):
    _, vjp = jax.vjp(lambda p: forward(p, k), params)
    (g,) = vjp(jax.tree.map(lambda x: x[k], feat_grads))
    return jax.tree.map(jnp.add, acc, g), None

  grads, _ = jax.lax.scan(pull_back, direct_grads, jnp.arange(accum))
  return (loss, metrics, full), grads


def guarded_update(state, params, opt_state, finite, freeze, family_state=None):
  """The state after one step: the update where `finite`, else the old parameters,
  optimizer state and family state with the step counted as skipped. `freeze`
  (train.nonfinite=stop): after the first non-finite step no update applies, so the state
  the loop stops with is the last good one. Either way the step advances, so the input
  stream and the step's RNG stay where an uninterrupted run would have them.

  No host sync: the loop reads the counters only when it logs or saves anyway.
  """
  apply = finite & (state.skipped_nonfinite == 0) if freeze else finite
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(apply, n, o), new, old)
  bad = jnp.logical_not(apply).astype(jnp.int32)
  step = state.step + 1
  starts = (bad > 0) & (state.nonfinite_streak == 0)
  return state.replace(
      step=step, params=keep(params, state.params), opt_state=keep(opt_state, state.opt_state),
      family_state=keep(family_state, state.family_state),
      skipped_nonfinite=state.skipped_nonfinite + bad,
      nonfinite_streak=(state.nonfinite_streak + 1) * bad,
      nonfinite_step=jnp.where(starts, step, state.nonfinite_step))


def make_train_step(family, tx, lr_fn, config, mesh, state_shardings):
  """The train step: one jax.jit with explicit shardings; the old state is donated.

  The family's frozen parameters get no gradient or update, its state is updated after
  the parameters (Family.update_state). A step whose loss, gradient norm or updated
  parameters are not finite leaves the parameters, optimizer and family state untouched
  (guarded_update); config.train.nonfinite says what the loop does about it.
  """
  accum = config.train.accum_steps
  tx = state_lib.optimizer_for(family, tx)

  def step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    frozen = state_lib.frozen_mask(family, state.params)
    (loss, metrics, feats), grads = loss_and_grads(
        family, state.params, batch, rng, mesh, accum, state.family_state, frozen)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = family.constrain(optax.apply_updates(state.params, updates))
    if frozen is not None:  # bit-identical, whatever constrain does
      params = jax.tree.map(lambda new, old, f: old if f else new, params, state.params,
                            frozen)
    family_state = family.update_state(state.family_state, params,
                                       jax.lax.stop_gradient(feats))
    grad_norm, param_norm = optimizer.global_norm(grads), optimizer.global_norm(params)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
    new_state = guarded_update(state, params, opt_state, finite,
                               freeze=config.train.nonfinite == "stop",
                               family_state=family_state)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, param_norm=param_norm,
                   lr=lr_fn(state.step), skipped_nonfinite=new_state.skipped_nonfinite,
                   nonfinite_streak=new_state.nonfinite_streak,
                   nonfinite_step=new_state.nonfinite_step)
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
