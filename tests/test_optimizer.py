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
