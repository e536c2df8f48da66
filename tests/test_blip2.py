"""BLIP-2 (stage 1 and 2), prefix captioning and the LM family: the Q-Former's three masks,
losses against float64 references, frozen parts (bit-identical, no optimizer state, no
gradient computed), stage 2 starting from stage 1's and the LM's runs, 1 vs 8 devices,
KV-cached captions after the soft prompt."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import random_batch, tiny_config
from vlp_jax import families
from vlp_jax.families import blip2 as blip2_family
from vlp_jax.models import qformer
from vlp_jax.parallel import mesh as mesh_lib
from vlp_jax.train import checkpoint, init_from, optimizer, state as state_lib
from vlp_jax.train.step import make_train_step


def _config(name, **overrides):
  fields = {"model.name": name, "model.vision_depth": 2, "model.vision_feature_layer": -2,
            "model.num_queries": 4, "model.text_depth": 1, "model.lm.width": 32,
            "model.lm.depth": 1, "model.lm.heads": 2, "model.lm.positions": 16,
            "model.mapper_depth": 1, "loss.queue_size": 0,
            "optim.warmup_steps": 0}  # so that the first step already moves the parameters
  fields.update(overrides)
  return tiny_config(**fields)


def _run(config, devices, steps, loaded=None):
  """(family, state, [metrics]) after `steps` train steps on random batches."""
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  family = families.get_family(config, eos_id=1)
  tx, lr_fn = optimizer.make(config)
  state, shardings = state_lib.create(family, tx, config.seed, mesh, loaded)
  step_fn = make_train_step(family, tx, lr_fn, config, mesh, shardings)
  history = []
  fields = family.example_batch(1)
  for i in steps:
    batch = {k: v for k, v in random_batch(config, seed=i).items() if k in fields}
    state, metrics = step_fn(state, batch)
    history.append({k: float(v) for k, v in metrics.items()})
  return family, state, history, step_fn


def _numpy(tree):
  return jax.tree.map(np.asarray, tree)


# ---- the Q-Former's masks ---------------------------------------------------------------

@pytest.fixture(scope="module")
def qformer_model():
  m = qformer.QFormer(num_queries=3, width=16, depth=2, num_heads=2, mlp_dim=32, vocab_size=40,
                      context_length=8)
  ids = jnp.array([[3, 9, 10, 11, 12, 1, 0, 0], [3, 20, 21, 1, 0, 0, 0, 0]], jnp.int32)
  image = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 24))
  params = m.init(jax.random.PRNGKey(0), image, ids, qformer.masks(3, ids, "match"))
  run = jax.jit(lambda ids, kind: m.apply(params, image, ids, qformer.masks(3, ids, kind)),
                static_argnums=1)
  return run, ids


def test_generation_mask_hides_later_text_from_queries_and_earlier_text(qformer_model):
  run, ids = qformer_model
  queries, text = run(ids, "generate")
  changed = ids.at[0, 3].set(30)
  queries2, text2 = run(changed, "generate")
  np.testing.assert_array_equal(queries2, queries)  # queries never see the text
  np.testing.assert_array_equal(text2[:, :3], text[:, :3])  # nor do earlier tokens
  assert np.abs(text2[0, 3:] - text[0, 3:]).max() > 1e-3  # this and later ones do
  np.testing.assert_array_equal(text2[1], text[1])


def test_matching_mask_lets_everything_see_everything(qformer_model):
  run, ids = qformer_model
  queries, text = run(ids, "match")
  queries2, text2 = run(ids.at[0, 4].set(30), "match")
  assert np.abs(queries2[0] - queries[0]).max() > 1e-3
  assert np.abs(text2[0, 0] - text[0, 0]).max() > 1e-3  # [CLS] sees later text
  np.testing.assert_array_equal(queries2[1], queries[1])  # rows stay apart


def test_padding_is_never_attended():
  ids = jnp.array([[3, 9, 1, 0]], jnp.int32)
  for kind in ("match", "generate", "text"):
    mask = np.asarray(qformer.masks(2, ids, kind))[0, 0]
    assert not mask[:, -1].any(), kind  # the pad column
  generate = np.asarray(qformer.masks(2, ids, "generate"))[0, 0]
  assert generate[:2, :2].all() and not generate[:2, 2:].any()  # queries: queries only
  np.testing.assert_array_equal(generate[2:5, 2:5], np.tril(np.ones((3, 3), bool)))


# ---- stage 1 losses against float64 ------------------------------------------------------

def test_query_itc_matches_float64_reference():
  rng = np.random.default_rng(0)
  b, q, e, s, smooth = 5, 3, 4, 6.0, 0.1
  img = rng.normal(size=(b, q, e))
  txt = rng.normal(size=(b, e))
  sims = s * np.einsum("iqe,te->itq", img, txt).max(-1)

  def ce(logits):
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    targets = (1 - smooth) * np.eye(b) + smooth / b
    return -np.mean(np.sum(targets * logp, 1))
  want = (ce(sims) + ce(sims.T)) / 2
  got_sims = s * blip2_family.query_similarities(jnp.asarray(img, jnp.float32),
                                                 jnp.asarray(txt, jnp.float32))
  got = (blip2_family.smoothed_cross_entropy(got_sims, smooth)
         + blip2_family.smoothed_cross_entropy(got_sims.T, smooth)) / 2
  np.testing.assert_allclose(got, want, rtol=1e-5)


# ---- frozen parts, devices ----------------------------------------------------------------

@pytest.fixture(scope="module")
def stage1():
  config = _config("blip2", **{"mesh.data": 1})
  family, state, history, _ = _run(config, jax.devices()[:1], range(1))
  return config, family, state, history


def test_stage1_tower_stays_bit_identical_and_has_no_optimizer_state(stage1):
  config, family, state, _ = stage1
  start = state_lib.create(family, optimizer.make(config)[0], config.seed,
                           mesh_lib.make_mesh(config.mesh, jax.devices()[:1]))[0]
  jax.tree.map(np.testing.assert_array_equal, _numpy(state.params["image_tower"]),
               _numpy(start.params["image_tower"]))
  assert np.abs(np.asarray(state.params["qformer"]["query_tokens"])
                - np.asarray(start.params["qformer"]["query_tokens"])).max() > 0
  trainable = sum(x.size for k, sub in state.params.items() if k != "image_tower"
                  for x in jax.tree.leaves(sub))
  # Adam's moments (the step counters are the only other, scalar, leaves).
  adam = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.dtype == jnp.float32)
  assert adam == 2 * trainable  # Adam's two moments of the trained parameters, nothing else


def test_stage1_eight_devices_match_one(stage1):
  config, _, state, history = stage1
  eight = _config("blip2", **{"mesh.data": 2, "mesh.fsdp": 4})
  _, state8, history8, _ = _run(eight, jax.devices(), range(1))
  for m1, m8 in zip(history, history8):
    for key in ("loss", "itc_loss", "itm_loss", "itg_loss"):
      np.testing.assert_allclose(m8[key], m1[key], rtol=2e-5, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               _numpy(state8.params), _numpy(state.params))


def test_frozen_parts_get_no_gradient_computed():
  """The compiled step's FLOPs drop by at least the frozen tower's backward (prefix
  captioning: the tower needs none; the LM only its activations' gradient)."""
  config = _config("prefix_lm", **{"mesh.data": 1, "model.vision_width": 64,
                                   "model.vision_feature_layer": -1, "train.batch_size": 8})

  class Unfrozen(families.PrefixLmFamily):
    def frozen(self, params):
      return None

  def flops(family):
    from vlp_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
    mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
    tx, lr_fn = optimizer.make(config)
    abstract, specs = state_lib.abstract_state(family, tx, config.seed, mesh.shape)
    step = make_train_step(family, tx, lr_fn, config, mesh, sharding.named(mesh, specs))
    batch = family.example_batch(config.train.batch_size)
    return step.lower(abstract, batch).compile().cost_analysis()["flops"]

  frozen, unfrozen = flops(families.PrefixLmFamily(config)), flops(Unfrozen(config))
  m = config.model
  tokens = (m.image_size // m.patch_size) ** 2 + 1
  tower = 2 * config.train.batch_size * tokens * m.vision_depth * 12 * m.vision_width ** 2
  assert unfrozen - frozen > 1.5 * tower, (frozen, unfrozen, tower)


# ---- stage 2 from stage 1 and the LM run, prefix captioning -------------------------------

def _save(workdir, state, step):
  ckpt = checkpoint.Checkpointer(workdir, 1, 3)
  ckpt.save(step, state, 0)
  ckpt.wait()
  ckpt.close()


@pytest.fixture(scope="module")
def stage2(stage1, tmp_path_factory):
  _, _, s1_state, _ = stage1
  s1_dir, lm_dir = (str(tmp_path_factory.mktemp(n)) for n in ("stage1", "lm"))
  _save(s1_dir, s1_state, 1)
  lm_config = _config("lm", **{"mesh.data": 1})
  _, lm_state, _, _ = _run(lm_config, jax.devices()[:1], range(1))
  _save(lm_dir, lm_state, 1)
  config = _config("blip2_lm", **{"mesh.data": 1, "model.init_from": f"{s1_dir};{lm_dir}",
                                  "model.frozen_dtype": "bfloat16"})
  family = families.get_family(config, eos_id=1)
  abstract, _ = state_lib.abstract_state(family, optimizer.make(config)[0], config.seed,
                                         {"data": 1, "fsdp": 1, "model": 1})
  loaded = init_from.load(config.model.init_from, config.model.init_from_map,
                          nn.meta.unbox(abstract.params))
  family, state, history, step_fn = _run(config, jax.devices()[:1], range(2), loaded)
  return config, family, state, history, step_fn, _numpy(s1_state.params), \
      _numpy(lm_state.params)


def test_stage2_starts_from_stage1_and_the_lm_and_keeps_them_frozen(stage2):
  _, _, state, history, _, s1, lm = stage2
  params = _numpy(state.params)
  for name, source in (("image_tower", s1["image_tower"]), ("lm", lm["lm"])):
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(
        a, np.asarray(b).astype(jnp.bfloat16)), params[name], source)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params[name]))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(params["qformer"]))
  assert np.isfinite(history[-1]["lm_loss"])


def dict_get(tree, keys):
  for k in keys:
    tree = tree[k]
  return tree


def test_stage2_initial_qformer_is_stage1s_exactly(stage2):
  config = stage2[0]
  s1 = stage2[5]
  family = families.get_family(config, eos_id=1)
  abstract, _ = state_lib.abstract_state(family, optimizer.make(config)[0], config.seed,
                                         {"data": 1, "fsdp": 1, "model": 1})
  loaded = init_from.load(config.model.init_from, "", nn.meta.unbox(abstract.params))
  qformer_paths = [p for p in loaded if p[0] == "qformer"]
  assert len(qformer_paths) == len(jax.tree.leaves(abstract.params["qformer"])) > 0
  for path in qformer_paths:
    np.testing.assert_array_equal(loaded[path], dict_get(s1, path))


@pytest.mark.parametrize("prompt", [(), (9, 11)])
def test_soft_prompt_greedy_captions_equal_the_uncached_argmax(stage2, prompt):
  _, family, state, _, _, _, _ = stage2
  params = state.params
  images = random_batch(stage2[0])["image"][:2]
  greedy = np.asarray(jax.jit(lambda p, x: family.caption(p, x, method="greedy", max_len=6,
                                                          prompt=prompt))(params, images))
  np.testing.assert_array_equal(greedy[:, :len(prompt)], np.array([prompt] * 2).reshape(2, -1))
  m = family.module
  ids = jnp.concatenate([jnp.full((2, 1), family.start_id), greedy[:, :-1]], axis=1)

  def logits(p, ids):
    prompt = m.apply({"params": p}, images, method=m.prefix)
    def run(mdl):
      x = mdl.lm.hidden(mdl.lm.embed(ids, prefix=prompt))
      return mdl.lm.logits(x[:, prompt.shape[1]:])
    return m.apply({"params": p}, method=run)
  want = np.asarray(jnp.argmax(jax.jit(logits)(params, ids), -1))
  for row in range(2):
    n = int(np.argmax(greedy[row] == 1)) + 1 if (greedy[row] == 1).any() else greedy.shape[1]
    np.testing.assert_array_equal(greedy[row, len(prompt):n], want[row, len(prompt):n])


# ---- the LM family ------------------------------------------------------------------------

def test_lm_loss_matches_float64_and_sees_no_future():
  config = _config("lm")
  family = families.get_family(config, eos_id=1)
  batch = random_batch(config)
  params = nn.meta.unbox(family.init(jax.random.PRNGKey(0), batch))
  m = family.module
  tokens = jnp.asarray(batch["tokens"])

  def logits(tokens):
    def run(mdl):
      return mdl.logits(mdl.hidden(mdl.embed(mdl.shift(tokens, 1))))
    return m.apply({"params": params["lm"]}, method=run)
  full = np.asarray(logits(tokens), np.float64)
  changed = np.asarray(logits(tokens.at[:, 5].set(7)))
  np.testing.assert_array_equal(changed[:, :6], full[:, :6].astype(np.float32))  # input 5 = token 4
  feats = family.features(params, batch, None)
  loss, _ = family.loss(params, feats, None)
  logp = full - full.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  t = np.asarray(tokens)
  nll = -np.take_along_axis(logp, t[..., None], -1)[..., 0]
  want = (nll * (t != 0)).sum() / (t != 0).sum()
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  sums = np.asarray(family.text_nll(params, tokens))  # the perplexity evaluation's
  np.testing.assert_allclose(sums[:, 0], (nll * (t != 0)).sum(1), rtol=1e-5)
  np.testing.assert_array_equal(sums[:, 1], (t != 0).sum(1))


# ---- keyword prompting ---------------------------------------------------------------------

def test_keyword_prompt_is_clips_top_keywords_pieces_in_order():
  config = _config("keyword_lm", **{"model.num_keywords": 6, "model.keyword_top_k": 2,
                                    "model.num_queries": 5, "model.vision_feature_layer": -1})
  family = families.get_family(config, eos_id=1)
  # Keyword rows in the tokenizer's layout (pieces, EOS, padding); the last row is no keyword.
  rows = [[7, 1], [8, 9, 1], [10, 1], [11, 12, 13, 1], [14, 1], []]
  family.keywords = tuple(tuple(r + [0] * (8 - len(r))) for r in rows)
  family.module = family.build(config.model)
  batch = random_batch(config)
  params = nn.meta.unbox(family.init(jax.random.PRNGKey(0), batch))
  m = family.module
  images = batch["image"][:4]
  ids = np.asarray(m.apply({"params": params}, images, method=m.prompt_ids))
  img = np.asarray(m.apply({"params": params}, images,
                           method=lambda mdl, x: mdl.image_tower(x)[0]), np.float64)
  words = np.asarray(m.apply({"params": params}, jnp.asarray(family.keywords),
                             method=lambda mdl, t: mdl.text_tower(t)[0]), np.float64)
  scores = (img / np.linalg.norm(img, axis=1, keepdims=True)) @ (
      words / np.linalg.norm(words, axis=1, keepdims=True)).T
  scores[:, 5] = -np.inf
  for row in range(4):
    best = np.argsort(-scores[row], kind="stable")[:2]
    pieces = [t for k in best for t in rows[k] if t != 1]
    want = (pieces + [1] * 5)[:5]
    np.testing.assert_array_equal(ids[row], want)


def test_keyword_lm_trains_the_lm_and_keeps_clip_frozen():
  config = _config("keyword_lm", **{"mesh.data": 1, "model.num_keywords": 8,
                                    "model.vision_feature_layer": -1})
  family, state, history, _ = _run(config, jax.devices()[:1], range(1))
  start = state_lib.create(family, optimizer.make(config)[0], config.seed,
                           mesh_lib.make_mesh(config.mesh, jax.devices()[:1]))[0]
  for name in ("image_tower", "text_tower"):
    jax.tree.map(np.testing.assert_array_equal, _numpy(state.params[name]),
                 _numpy(start.params[name]))
  assert np.abs(np.asarray(state.params["lm"]["token_embedding"])
                - np.asarray(start.params["lm"]["token_embedding"])).max() > 0
  assert np.isfinite(history[0]["lm_loss"])
