"""Model facts: causal masking without leaks, end-of-text pooling, sizes of the real configs."""
import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import REPO
from tests.helpers import tiny_config
from vlp_jax import families
from vlp_jax.models.text import TextTransformer
from vlp_jax.train import describe


def load_config(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("scan", [False, True])
def test_causal_text_tower_has_no_future_leak(scan):
  tower = TextTransformer(vocab_size=50, context_length=10, width=32, depth=2, num_heads=4,
                          mlp_dim=64, eos_id=1, scan=scan)
  tokens = jnp.asarray(np.random.default_rng(0).integers(2, 50, size=(2, 10)), jnp.int32)
  params = tower.init(jax.random.PRNGKey(0), tokens)
  _, out = tower.apply(params, tokens)
  for t in range(9):
    changed = tokens.at[:, t + 1].set((tokens[:, t + 1] + 7) % 48 + 2)
    _, out2 = tower.apply(params, changed)
    np.testing.assert_array_equal(out[:, :t + 1], out2[:, :t + 1])
    assert not np.allclose(out[:, t + 1], out2[:, t + 1]), "the change must matter"


def test_text_embedding_pools_at_end_of_text():
  config = tiny_config()
  family = families.get_family(config, eos_id=1)
  tokens = np.array([[5, 6, 7, 1, 0, 0, 0, 0]], np.int32)
  images = np.zeros((1, 16, 16, 3), np.float32)
  params = family.init(jax.random.PRNGKey(0), {"image": images, "tokens": tokens})
  emb = family.encode_text(params, tokens)
  after_eos = tokens.copy()
  after_eos[0, 4:] = [9, 9, 9, 9]
  np.testing.assert_array_equal(emb, family.encode_text(params, after_eos))
  before_eos = tokens.copy()
  before_eos[0, 2] = 9
  assert not np.allclose(emb, family.encode_text(params, before_eos))
  np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_pooled_only_last_layer_equals_the_full_towers(name):
  """Clip's towers compute their last layer for the pooled row alone (unrolled stacks):
  the same embeddings as computing every row, for class-token/EOS pooling (CLIP) and
  MAP-head/last-token bidirectional pooling (SigLIP), with fewer FLOPs."""
  overrides = {"model.name": name}
  if name == "siglip":
    overrides.update({"model.image_pool": "map", "model.text_causal": False,
                      "model.text_pool": "last"})
  family = families.get_family(tiny_config(**overrides), eos_id=1)
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, 60, size=(4, 8)).astype(np.int32)
  tokens[np.arange(4), [7, 3, 5, 1]] = 1  # EOS at different rows
  images = rng.normal(size=(4, 16, 16, 3)).astype(np.float32)
  variables = {"params": family.init(jax.random.PRNGKey(0), {"image": images, "tokens": tokens})}
  pruned = family.module
  full = pruned.clone(vision=dict(pruned.vision, pooled_only=False),
                      text=dict(pruned.text, pooled_only=False))
  for a, b in zip(pruned.apply(variables, images, tokens)[:2],
                  full.apply(variables, images, tokens)[:2]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  flops = [describe.matmul_flops(jax.make_jaxpr(m.apply)(variables, images, tokens).jaxpr)
           for m in (pruned, full)]
  assert flops[0] < flops[1]


def test_clip_b16_matches_openai_parameter_count():
  summary = describe.describe(load_config("clip_b16"), num_devices=256)
  assert abs(summary["params_total"] - 149.6e6) / 149.6e6 < 0.01
  assert summary["params/image_tower"] == 86_192_640  # OpenAI ViT-B/16 visual incl. proj
  # Forward FLOPs of one image-text pair, ~41 GFLOPs for ViT-B/16 CLIP.
  assert 38e9 < summary["forward_flops_per_example"] < 44e9
  # Backward: twice the forward but for the gradient of the images (the patch embedding's).
  ratio = summary["flops_per_example"] / summary["forward_flops_per_example"]
  assert 2.95 < ratio < 3.0


@pytest.mark.parametrize("scan", [False, True])
def test_describe_counts_flops_like_the_formula(scan):
  """FLOPs from the jaxpr equal 2*params*tokens + attention for a tower without embeddings,
  the last layer computing keys and values for every token and the rest for the pooled one."""
  c = tiny_config(**{"model.scan": scan})
  m = c.model
  s = describe.describe(c, num_devices=8)
  def tower(width, depth, tokens, mlp_ratio):
    row = 2 * (2 * width * width + 2 * width * int(width * mlp_ratio))  # q, out, MLP
    layer = 2 * 2 * width * width * tokens + row * tokens + 4 * tokens * tokens * width
    last = 2 * 2 * width * width * tokens + row + 4 * tokens * width
    return (depth - 1) * layer + last
  patches = (m.image_size // m.patch_size) ** 2
  expected = (tower(m.vision_width, m.vision_depth, patches + 1, m.vision_mlp_ratio)
              + 2 * patches * m.patch_size ** 2 * 3 * m.vision_width
              + tower(m.text_width, m.text_depth, m.context_length, m.text_mlp_ratio)
              + 2 * (m.vision_width + m.text_width) * m.embed_dim)
  assert s["forward_flops_per_example"] == expected


def test_fsdp_shards_params_and_optimizer_state():
  c = load_config("clip_b16")
  full = describe.describe(c, num_devices=1)
  pod = describe.describe(c, num_devices=256)
  assert pod["bytes_per_device/params"] < full["bytes_per_device/params"] / 200
  assert pod["bytes_per_device/opt_state"] < full["bytes_per_device/opt_state"] / 200


def test_remat_policies_give_the_same_gradients_and_save_memory_under_scan():
  """Every remat policy is exact; under scan (where XLA:CPU honours remat) keeping less
  means less temporary memory: full < dots < no remat. The pooled last block runs outside
  the scan and agrees with the unrolled stack."""
  from vlp_jax.models import layers  # pylint: disable=import-outside-toplevel
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 16, 32))
  rows = jnp.arange(8) % 16

  def grads_and_temp(**kw):
    stack = layers.Transformer(depth=3, num_heads=2, mlp_dim=128, **kw)
    params = nn.meta.unbox(stack.init(jax.random.PRNGKey(1), x, output_rows=rows))
    if kw.get("scan"):  # the same weights as the unrolled stack's block_0..2
      unrolled = nn.meta.unbox(layers.Transformer(depth=3, num_heads=2, mlp_dim=128).init(
          jax.random.PRNGKey(1), x, output_rows=rows))["params"]
      blocks = [unrolled[f"block_{i}"] for i in range(3)]
      params = {"params": {"blocks": jax.tree.map(lambda *b: jnp.stack(b), *blocks[:2]),
                           "last_block": blocks[2]}}
    loss = lambda p, x: jnp.sum(jnp.sin(stack.apply(p, x, output_rows=rows)))
    grad = jax.jit(jax.grad(loss, argnums=1))
    return grad(params, x), grad.lower(params, x).compile().memory_analysis().temp_size_in_bytes

  want, _ = grads_and_temp()
  temps = {}
  for policy in [None, *layers.REMAT_POLICIES]:
    got, temps[policy] = grads_and_temp(scan=True, remat=policy is not None,
                                        **({"remat_policy": policy} if policy else {}))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert temps["full"] < temps["dots"] < temps[None]
