"""Optimizer: which parameters decay, the schedule's shape, clipping."""
import flax
import jax
import numpy as np
import optax

from tests.helpers import tiny_config
from vlp_jax import families
from vlp_jax.train import optimizer


def test_weight_decay_only_on_matrices():
  c = tiny_config()
  family = families.get_family(c)
  params = jax.eval_shape(lambda: family.init(jax.random.PRNGKey(0), jax.tree.map(
      lambda x: np.zeros(x.shape, x.dtype), family.example_batch(1))))
  mask = flax.traverse_util.flatten_dict(optimizer.decay_mask(flax.linen.meta.unbox(params)))
  decayed = {"/".join(k) for k, v in mask.items() if v}
  kept = {"/".join(k) for k, v in mask.items() if not v}
  assert "image_tower/encoder/block_0/mlp/fc1/kernel" in decayed
  assert "text_tower/proj/kernel" in decayed
  for name in ("log_logit_scale", "text_tower/token_embedding", "text_tower/pos_embedding",
               "image_tower/pos_embedding", "image_tower/cls", "image_tower/ln_pre/scale",
               "image_tower/encoder/block_0/mlp/fc1/bias",
               "image_tower/encoder/block_0/attn/qkv_bias"):
    assert name in kept, name
  # Attention kernels are named *_kernel and are matrices: they decay too.
  assert "image_tower/encoder/block_0/attn/qkv_kernel" in decayed


def test_warmup_then_cosine():
  c = tiny_config(**{"optim.warmup_steps": 10, "train.steps": 110, "optim.lr": 1.0})
  lr = optimizer.schedule(c.optim, c.train.steps)
  assert float(lr(0)) == 0.0 and abs(float(lr(5)) - 0.5) < 1e-6 and float(lr(10)) == 1.0
  assert abs(float(lr(60)) - 0.5) < 1e-6 and float(lr(110)) < 1e-6


def test_global_norm_clipping():
  c = tiny_config(**{"optim.clip_norm": 1.0, "optim.weight_decay": 0.0,
                     "optim.warmup_steps": 0})
  tx, _ = optimizer.make(c)
  params = {"w": {"kernel": np.ones((2, 2), np.float32)}}
  grads = {"w": {"kernel": np.full((2, 2), 100.0, np.float32)}}
  state = tx.init(params)
  clipped = optax.clip_by_global_norm(1.0).update(grads, optax.EmptyState())[0]
  assert abs(float(optax.tree.norm(clipped)) - 1.0) < 1e-5
  updates, _ = tx.update(grads, state, params)
  assert np.all(np.isfinite(updates["w"]["kernel"]))


def _one_step_with_zero_gradient(mode, lr, wd, warmup, step):
  """The factor by which a decayed kernel shrinks at optimizer step `step` (0-based)."""
  c = tiny_config(**{"optim.weight_decay_mode": mode, "optim.lr": lr,
                     "optim.weight_decay": wd, "optim.warmup_steps": warmup,
                     "optim.schedule": "constant", "optim.clip_norm": 0.0})
  tx, lr_fn = optimizer.make(c)
  params = {"dense": {"kernel": np.full((2, 2), 3.0, np.float32),
                      "bias": np.full((2,), 3.0, np.float32)}}
  zero = jax.tree.map(np.zeros_like, params)
  state = tx.init(params)
  for _ in range(step + 1):
    updates, state = tx.update(zero, state, params)
    new = optax.apply_updates(params, updates)
  assert np.all(new["dense"]["bias"] == 3.0)  # biases never decay
  return float(new["dense"]["kernel"][0, 0]) / 3.0, float(lr_fn(step))


def test_weight_decay_modes_decay_by_their_convention():
  # Warmup 4: at step 2 the schedule is at half its peak.
  factor, lr_t = _one_step_with_zero_gradient("decoupled", 1e-3, 1e-4, 4, 2)
  np.testing.assert_allclose(lr_t, 0.5e-3, rtol=1e-6)
  np.testing.assert_allclose(factor, 1 - 1e-4 * 0.5, rtol=0, atol=1e-7)  # wd x schedule(t)
  factor, lr_t = _one_step_with_zero_gradient("lr_coupled", 1e-3, 0.2, 4, 2)
  np.testing.assert_allclose(factor, 1 - 0.5e-3 * 0.2, rtol=0, atol=1e-7)  # lr(t) x wd
  # The same numbers under the other convention differ by the base learning rate.
  factor, _ = _one_step_with_zero_gradient("decoupled", 1e-3, 0.2, 4, 2)
  np.testing.assert_allclose(factor, 1 - 0.2 * 0.5, rtol=1e-6)


def test_shipped_configs_state_their_papers_weight_decay():
  from vlp_jax import config_lib  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  expected = {"siglip_b16": ("decoupled", 1e-4), "coca_base": ("decoupled", 0.01),
              "clip_b16": ("lr_coupled", 0.2)}
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for name, (mode, wd) in expected.items():
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "configs",
                                                                      name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = config_lib.validate(module.get_config())
    assert (c.optim.weight_decay_mode, c.optim.weight_decay) == (mode, wd), name


def test_logit_scale_past_the_cap_is_clamped_and_comes_back_down():
  """The cap is a clamp of the parameter after the update: a forward-pass cap would give
  the parameter zero gradient above it, and it would stay there for good."""
  import math  # pylint: disable=g-import-not-at-top
  from tests.helpers import random_batch  # pylint: disable=g-import-not-at-top
  from vlp_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from vlp_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from vlp_jax.train.step import make_train_step  # pylint: disable=g-import-not-at-top
  c = tiny_config(**{"mesh.data": 1, "optim.warmup_steps": 0, "optim.schedule": "constant",
                     "optim.lr": 0.05, "optim.weight_decay": 0.0})
  mesh = mesh_lib.make_mesh(c.mesh, jax.devices()[:1])
  family = families.get_family(c)
  tx, lr_fn = optimizer.make(c)
  state, shardings = state_lib.create(family, tx, c.seed, mesh)
  cap = math.log(c.model.logit_scale_max)
  state = state.replace(params=dict(state.params, log_logit_scale=jax.numpy.asarray(cap + 1.0)))
  step = make_train_step(family, tx, lr_fn, c, mesh, shardings)
  seen = []
  for i in range(4):
    state, metrics = step(state, random_batch(c, seed=i))
    seen.append(float(state.params["log_logit_scale"]))
  assert seen[0] <= cap + 1e-6, seen  # clamped after the first update
  # Random pairs: a lower temperature lowers the loss, so the gradient brings it down.
  assert seen[-1] < cap - 0.05, seen
  assert float(metrics["logit_scale"]) == np.float32(math.exp(seen[-2]))
