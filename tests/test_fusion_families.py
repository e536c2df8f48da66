"""ALBEF and BLIP: losses against float64 references, queues and momentum against numpy,
1 vs 8 devices, resume with half-full queues, causal masking and shared weights."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import random_batch, tiny_config
from vlp_jax import families
from vlp_jax.losses import momentum as momentum_loss
from vlp_jax.models import fusion
from vlp_jax.parallel import mesh as mesh_lib
from vlp_jax.parallel import sharding
from vlp_jax.train import checkpoint, optimizer, state as state_lib
from vlp_jax.train.step import make_train_step

QUEUE = 40  # batch 16: the queue is 16/40 full after one step and wraps in the third


def _config(name, **overrides):
  return tiny_config(**{"model.name": name, "model.fusion_depth": 1, "loss.queue_size": QUEUE,
                        "loss.distill_ramp_steps": 2, **overrides})


def _normalized(rng, shape):
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ---- ITC with momentum distillation and queues ---------------------------------------------

def _itc_reference(img, txt, img_m, txt_m, iq, tq, count, scale, alpha, teacher_scale=None):
  """Float64 numpy ALBEF ITC: soft cross-entropy, mean over rows, both ways. The targets
  are constants (ALBEF computes them without gradient): `teacher_scale` holds their scale
  fixed when the student's moves."""
  teacher_scale = scale if teacher_scale is None else teacher_scale
  def direction(q, keys, q_m):
    keys = np.concatenate([keys[0], keys[1][:count]])
    logits = scale * q @ keys.T
    teacher = teacher_scale * q_m @ keys.T
    soft = np.exp(teacher - teacher.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    targets = alpha * soft + (1 - alpha) * np.eye(len(q), len(keys))
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    return -np.mean(np.sum(targets * logp, axis=1))
  return (direction(img, (txt_m, tq), img_m) + direction(txt, (img_m, iq), txt_m)) / 2


@pytest.mark.parametrize("alpha,count", [(0.0, 0), (0.4, 5), (0.4, 8)])
def test_momentum_contrastive_matches_float64_reference(alpha, count):
  rng = np.random.default_rng(0)
  b, q, e = 6, 8, 5
  img, txt, img_m, txt_m = (_normalized(rng, (b, e)) for _ in range(4))
  iq, tq = _normalized(rng, (q, e)), _normalized(rng, (q, e))
  scale = 7.0
  f32 = lambda x: jnp.asarray(x, jnp.float32)

  def loss(img, txt, scale):
    return momentum_loss.momentum_contrastive(img, txt, f32(img_m), f32(txt_m), f32(iq),
                                              f32(tq), count, scale, alpha)[0]
  value, grads = jax.value_and_grad(loss, argnums=(0, 1, 2))(f32(img), f32(txt), f32(scale))
  want = _itc_reference(img, txt, img_m, txt_m, iq, tq, count, scale, alpha)
  np.testing.assert_allclose(value, want, rtol=1e-5)
  eps = 1e-6  # central differences of the float64 reference
  for arg, grad in ((0, grads[0]), (1, grads[1])):
    num = np.zeros((b, e))
    for i in range(b):
      for j in range(e):
        args = [img.copy(), txt.copy()]
        args[arg][i, j] += eps
        up = _itc_reference(*args, img_m, txt_m, iq, tq, count, scale, alpha)
        args[arg][i, j] -= 2 * eps
        down = _itc_reference(*args, img_m, txt_m, iq, tq, count, scale, alpha)
        num[i, j] = (up - down) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-3, atol=1e-5)
  at = lambda s: _itc_reference(img, txt, img_m, txt_m, iq, tq, count, s, alpha, scale)
  d_scale = (at(scale + eps) - at(scale - eps)) / (2 * eps)
  np.testing.assert_allclose(grads[2], d_scale, rtol=1e-3)


def test_enqueue_is_a_fifo_with_wraparound():
  rng = np.random.default_rng(1)
  q, b, e = 10, 4, 3
  queue, ptr, count = jnp.zeros((q, e)), jnp.int32(0), jnp.int32(0)
  want, written = np.zeros((q, e)), 0
  for _ in range(6):  # 24 rows through 10 slots: wraps twice, mid-batch
    keys = rng.normal(size=(b, e)).astype(np.float32)
    queue, ptr, count = momentum_loss.enqueue(queue, ptr, count, jnp.asarray(keys))
    for row in keys:
      want[written % q] = row
      written += 1
    np.testing.assert_array_equal(np.asarray(queue), want.astype(np.float32))
    assert int(ptr) == written % q and int(count) == min(written, q)


def test_ramp():
  assert float(momentum_loss.ramp(0.4, jnp.int32(5), 0)) == pytest.approx(0.4)
  assert float(momentum_loss.ramp(0.4, jnp.int32(0), 10)) == 0.0
  assert float(momentum_loss.ramp(0.4, jnp.int32(5), 10)) == pytest.approx(0.2)
  assert float(momentum_loss.ramp(0.4, jnp.int32(50), 10)) == pytest.approx(0.4)


# ---- hard negatives and ITM -------------------------------------------------------------

def test_hard_negatives_follow_the_softmax_and_never_pick_a_positive():
  rng = np.random.default_rng(2)
  scores = jnp.asarray(rng.normal(size=(4, 4)) * 2, jnp.float32)
  tokens = jnp.asarray([[5, 6, 2], [7, 8, 2], [5, 6, 2], [9, 9, 2]], jnp.int32)
  positives = momentum_loss.same_caption(tokens)  # rows 0 and 2 share a caption
  assert np.array_equal(np.asarray(positives)[0], [True, False, True, False])
  n = 40_000
  u = jnp.asarray(rng.uniform(size=n), jnp.float32)
  picks = np.asarray(jax.vmap(lambda x: momentum_loss.draw_negatives(
      scores, positives, jnp.full((4,), x)))(u))  # [n, 4]
  allowed = ~np.asarray(positives)
  for row in range(4):
    p = np.where(allowed[row], np.exp(np.asarray(scores[row], np.float64)), 0.0)
    p /= p.sum()
    freq = np.bincount(picks[:, row], minlength=4) / n
    assert np.all(freq[~allowed[row]] == 0)
    # Binomial standard deviation at n = 40,000 is <= 0.0025: 5 sigma.
    np.testing.assert_allclose(freq, p, atol=0.0125)
  # A row whose every pair is a positive takes the next row.
  all_same = momentum_loss.same_caption(jnp.zeros((3, 2), jnp.int32))
  np.testing.assert_array_equal(
      momentum_loss.draw_negatives(jnp.zeros((3, 3)), all_same, jnp.full((3,), 0.5)), [1, 2, 0])


def test_itm_losses_match_a_reference():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(3, 5, 2))
  nll, correct = momentum_loss.itm_losses(jnp.asarray(logits, jnp.float32))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  labels = np.array([1, 0, 0])
  want = -sum(logp[k, :, labels[k]] for k in range(3))
  np.testing.assert_allclose(nll, want, rtol=1e-5)
  want_correct = sum((logits[k].argmax(-1) == labels[k]) for k in range(3))
  np.testing.assert_array_equal(correct, want_correct)


# ---- BLIP's text stack: causal decoder, shared weights, dropout under scan ---------------

@pytest.fixture(scope="module")
def blip():
  config = _config("blip")
  family = families.get_family(config, eos_id=1)
  batch = {k: jnp.asarray(v) for k, v in random_batch(config).items()}
  params = nn.meta.unbox(jax.jit(family.init)(jax.random.PRNGKey(0), batch))
  return config, family, params, batch


def test_blip_decoder_sees_no_future_and_encoder_sees_everything(blip):
  _, family, params, batch = blip
  m = family.module
  context = m.apply({"params": params}, batch["image"][:2], method=m.image_tokens)
  ids = family.prefixed(batch["tokens"][:2], "dec")
  changed = ids.at[:, 4].set((ids[:, 4] + 1) % 60 + 3)
  run = jax.jit(lambda x: m.apply({"params": params}, x, context, method=m.decoder_hidden))
  before, after = run(ids), run(changed)
  np.testing.assert_array_equal(before[:, :4], after[:, :4])  # positions before 4: untouched
  assert np.abs(before[:, 4:] - after[:, 4:]).max() > 1e-4
  embed = jax.jit(lambda x: m.apply({"params": params}, x, method=m.text_embedding))
  assert np.abs(embed(ids) - embed(changed)).max() > 1e-4  # bidirectional: [CLS] sees it


def test_blip_encoder_and_decoder_share_all_but_self_attention(blip):
  config, family, params, batch = blip
  layer = params["text_layers"]["layer_0"]
  assert sorted(layer) == ["causal_attn", "cross_attn", "ln_causal", "ln_cross", "ln_mlp",
                           "ln_self", "mlp", "self_attn"]
  m = family.module
  context = m.apply({"params": params}, batch["image"], method=m.image_tokens)
  enc, dec = family.prefixed(batch["tokens"], "enc"), family.prefixed(batch["tokens"], "dec")

  def itm(p):
    return jnp.sum(m.apply({"params": p}, enc, context, method=m.itm_logits))

  def lm(p):
    return jnp.sum(m.apply({"params": p}, dec, context, method=m.lm_logits) ** 2)
  g_itm, g_lm = jax.jit(jax.grad(itm))(params), jax.jit(jax.grad(lm))(params)
  norm = lambda g, *path: max(float(jnp.abs(x).max()) for x in jax.tree.leaves(_get(g, path)))
  for shared in (("text_layers", "layer_0", "mlp"), ("text_layers", "layer_0", "cross_attn"),
                 ("embed",)):
    assert norm(g_itm, *shared) > 0 and norm(g_lm, *shared) > 0, shared
  assert norm(g_itm, "text_layers", "layer_0", "causal_attn") == 0
  assert norm(g_lm, "text_layers", "layer_0", "self_attn") == 0
  assert norm(g_lm, "text_layers", "layer_0", "causal_attn") > 0


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def test_dropout_draws_a_mask_per_layer_under_scan():
  stack = fusion.TextStack(2, num_heads=2, mlp_dim=16, dropout_rate=0.5, scan=True)
  x = jnp.ones((1, 3, 8))
  params = jax.jit(stack.init)({"params": jax.random.PRNGKey(0)}, x)
  # Both layers get the same weights, so only their dropout masks tell them apart.
  one = jax.tree.map(lambda p: jnp.broadcast_to(p[:1], p.shape), params)
  run = jax.jit(lambda key, det=False: stack.apply(one, x, deterministic=det,
                                                  rngs={"dropout": key}), static_argnums=1)
  a, a_again, b = run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(2))
  np.testing.assert_array_equal(a, a_again)
  assert np.abs(a - b).max() > 1e-3
  assert np.abs(a - run(jax.random.PRNGKey(1), det=True)).max() > 1e-3
  # split_rngs: the second layer draws a mask of its own. Were it the first layer's mask
  # again, feeding the first layer's output through a 1-layer stack with the same key
  # would reproduce the 2-layer output.
  single = fusion.TextStack(1, num_heads=2, mlp_dim=16, dropout_rate=0.5, scan=True)
  first = jax.tree.map(lambda p: p[:1], params)
  key = jax.random.PRNGKey(1)
  once = jax.jit(lambda h: single.apply(first, h, deterministic=False, rngs={"dropout": key}))
  assert np.abs(once(once(x)) - run(key)).max() > 1e-3


# ---- the train step: devices, momentum, queues, resume ----------------------------------

def _run(config, devices, steps, state=None, step_fn=None):
  """(state, step_fn, [(family state before, params after, metrics)] per step); a given
  state continues with the given step function."""
  if state is None:
    mesh = mesh_lib.make_mesh(config.mesh, devices)
    family = families.get_family(config, eos_id=1)
    tx, lr_fn = optimizer.make(config)
    state, shardings = state_lib.create(family, tx, config.seed, mesh)
    step_fn = make_train_step(family, tx, lr_fn, config, mesh, shardings)
  history = []
  for i in steps:
    before = jax.tree.map(np.asarray, state.family_state)
    state, metrics = step_fn(state, random_batch(config, seed=i))
    history.append((before, jax.tree.map(np.asarray, state.params),
                    {k: float(v) for k, v in metrics.items()}))
  return state, step_fn, history


@pytest.fixture(scope="module", params=["albef", "blip"])
def one_device(request):
  config = _config(request.param, **{"mesh.data": 1})
  state, step_fn, history = _run(config, jax.devices()[:1], range(3))
  return config, state, step_fn, history


def test_eight_devices_match_one(one_device):
  config, state, _, history = one_device
  eight = _config(config.model.name, **{"mesh.data": 2, "mesh.fsdp": 4})
  state8, _, history8 = _run(eight, jax.devices(), range(3))
  for (_, _, m1), (_, _, m8) in zip(history, history8):
    for key in ("loss", "itc_loss", "itm_loss", "lm_loss" if "lm_loss" in m1 else "mlm_loss",
                "itm_accuracy"):
      np.testing.assert_allclose(m8[key], m1[key], rtol=2e-5, err_msg=key)
  scale = max(np.abs(x).max() for x in jax.tree.leaves(history[-1][1]))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * scale),
               history8[-1][1], history[-1][1])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                       rtol=2e-5, atol=2e-5),
               state8.family_state, state.family_state)


def test_momentum_and_queues_follow_numpy(one_device):
  config, state, _, history = one_device
  family = families.get_family(config, eos_id=1)
  m = config.loss.momentum
  batch = config.train.batch_size
  momentum = history[0][0]["momentum"]  # the initial copy of the parameters
  queue = np.zeros((QUEUE, config.model.embed_dim), np.float32)
  for step, (before, params, _) in enumerate(history):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 before["momentum"], momentum)
    # This step's momentum image embeddings went into the queue, oldest first.
    images = random_batch(config, seed=step)["image"]
    keys = np.asarray(family.encode_image(before["momentum"], jnp.asarray(images)))
    for j, row in enumerate(keys):
      queue[(step * batch + j) % QUEUE] = row
    momentum = jax.tree.map(lambda old, new: m * old + (1 - m) * new, momentum,
                            {k: v for k, v in _select_like(params, momentum).items()})
  final = jax.tree.map(np.asarray, state.family_state)
  np.testing.assert_allclose(final["image_queue"], queue, rtol=1e-5, atol=1e-6)
  assert int(final["queue_count"]) == QUEUE and int(final["queue_ptr"]) == 3 * batch % QUEUE
  assert int(final["step"]) == 3
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               final["momentum"], momentum)
  assert history[0][2]["distill_alpha"] == 0.0 and history[2][2]["distill_alpha"] == pytest.approx(0.4)


def _select_like(params, like):
  if isinstance(like, dict):
    return {k: _select_like(params[k], v) for k, v in like.items()}
  return params


def test_resume_with_half_full_queues_equals_a_straight_run(one_device, tmp_path):
  config, straight, step_fn, _ = one_device
  mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
  family = families.get_family(config, eos_id=1)
  tx, _ = optimizer.make(config)
  state, shardings = state_lib.create(family, tx, config.seed, mesh)
  first, _, _ = _run(config, None, range(1), state, step_fn)
  assert int(first.family_state["queue_count"]) == 16  # 16 of 40 slots
  ckpt = checkpoint.Checkpointer(str(tmp_path), 1, 3)
  ckpt.save(1, first, 0)
  ckpt.wait()
  ckpt.close()
  abstract, specs = state_lib.abstract_state(family, tx, config.seed, mesh.shape)
  restored, _ = checkpoint.Checkpointer(str(tmp_path), 1, 3).restore(
      abstract, sharding.named(mesh, specs))
  resumed, _, _ = _run(config, None, range(1, 3), restored, step_fn)
  same = lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  jax.tree.map(same, resumed.family_state, straight.family_state)
  jax.tree.map(same, resumed.params, straight.params)


def test_accumulation_is_refused_with_a_named_field():
  with pytest.raises(ValueError, match="train.accum_steps"):
    _config("albef", **{"train.accum_steps": 2})


def test_blip_captions_with_the_shared_decoders(blip):
  _, family, params, batch = blip
  images = batch["image"][:2]
  greedy = jax.jit(lambda p, x: family.caption(p, x, method="greedy", max_len=6))(params, images)
  # Greedy equals the argmax of the full (non-cached) decoder run on its own output.
  ids = jnp.concatenate([jnp.full((2, 1), family.start_id), greedy[:, :-1]], axis=1)
  m = family.module
  logits = jax.jit(lambda p, ids: m.apply(
      {"params": p}, ids, m.apply({"params": p}, images, method=m.image_tokens),
      method=m.lm_logits))(params, ids)
  want = np.asarray(jnp.argmax(logits, -1))
  got = np.asarray(greedy)
  for row in range(2):
    n = int(np.argmax(got[row] == 1)) + 1 if (got[row] == 1).any() else got.shape[1]
    np.testing.assert_array_equal(got[row, :n], want[row, :n])


def test_itm_with_shared_image_keys_equals_gathered_images(blip):
  """BLIP's ITM projects each image's keys and values once (SharedContext) for its 3B rows:
  the same logits as cross-attending to the gathered images."""
  _, family, params, batch = blip
  m = family.module
  enc = family.prefixed(batch["tokens"], "enc")
  rows = jnp.asarray(np.random.default_rng(4).integers(0, enc.shape[0], enc.shape[0]))

  @jax.jit
  def both(p):
    context = m.apply({"params": p}, batch["image"], method=m.image_tokens)
    shared = m.apply({"params": p}, enc, context, rows, method=m.itm_logits)
    return shared, m.apply({"params": p}, enc, context[rows], method=m.itm_logits)
  shared, gathered = both(params)
  np.testing.assert_allclose(shared, gathered, rtol=1e-5, atol=1e-6)
