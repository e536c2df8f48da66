"""mPLUG's family: the prefix LM against a float64 reference, the decoder's masks, the split
per example, the shared LM term, and answers from the KV-cached decoder over a padded
question (the cross-attention mask kept in the cache)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import random_batch, tiny_config
from tests.test_train_step import assert_same, run_steps
from vlp_jax import families
from vlp_jax.losses import prefix_split
from vlp_jax.models import mplug as mplug_model


@pytest.fixture(scope="module")
def mplug():
  config = tiny_config(**{"model.name": "mplug", "loss.queue_size": 40, "model.fusion_s": 1,
                          "model.fusion_n": 2, "model.decoder_depth": 1,
                          "model.context_length": 10})
  family = families.get_family(config, eos_id=1)
  batch = {k: jnp.asarray(v) for k, v in random_batch(config).items()}
  params = nn.meta.unbox(jax.jit(family.init)(jax.random.PRNGKey(0), batch))
  return config, family, params, batch


def _context(family, params, images, tokens):
  m = family.module
  return jax.jit(lambda p, x, t: m.apply({"params": p}, family.prefixed(t, "cls"), x,
                                         method=m.context))(params, images, tokens)


def _log_softmax64(logits):
  x = np.asarray(logits, np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_fusion_layers_follow_fusion_s_and_fusion_n(mplug):
  _, _, params, _ = mplug
  assert sorted(params["fusion"]) == [
      "block_0_asymmetric_0", "block_0_connected", "block_1_asymmetric_0",
      "block_1_connected"]
  assert "cross_attn" in params["fusion"]["block_0_asymmetric_0"]
  assert "cross_attn" not in params["fusion"]["block_0_connected"]


def test_decoder_loss_matches_float64_reference(mplug):
  _, family, params, batch = mplug
  images, tokens = batch["image"][:4], batch["tokens"][:4]
  context, mask = _context(family, params, images, tokens)
  target = batch["tokens"][4:8]
  got = jax.jit(family._decoder_loss)(params, context, mask, target)  # pylint: disable=protected-access
  m = family.module
  ids = family.prefixed(target, "dec")
  logits = jax.jit(lambda p: m.apply({"params": p}, ids, context, mask,
                                     method=m.lm_logits))(params)
  logp = _log_softmax64(logits[:, :-1])
  labels = np.asarray(ids[:, 1:])
  weights = labels != 0
  nll = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
  np.testing.assert_allclose(got["lm_nll_sum"], (nll * weights).sum(1), rtol=2e-5)
  np.testing.assert_array_equal(got["lm_tokens"], weights.sum(1))
  correct = (logp.argmax(-1) == labels) & weights
  np.testing.assert_array_equal(got["lm_correct"], correct.sum(1))


def test_decoder_sees_no_future_and_no_padded_context(mplug):
  _, family, params, batch = mplug
  m = family.module
  images = batch["image"][:2]
  tokens = batch["tokens"][:2].at[:, 4].set(1).at[:, 5:].set(0)  # padded after EOS
  context, mask = _context(family, params, images, tokens)
  run = jax.jit(lambda ids, c: m.apply({"params": params}, ids, c, mask,
                                       method=m.decoder_hidden))
  ids = family.prefixed(batch["tokens"][2:4], "dec")
  base = run(ids, context)
  later = ids.at[:, 4].set((ids[:, 4] + 1) % 60 + 3)
  changed = run(later, context)
  np.testing.assert_array_equal(base[:, :4], changed[:, :4])
  assert np.abs(base[:, 4:] - changed[:, 4:]).max() > 1e-4
  keys = np.asarray(mask[:, 0, 0])
  noise = jax.random.normal(jax.random.PRNGKey(3), context.shape)
  padded = jnp.where(keys[..., None], context, noise)  # only masked positions change
  assert (~keys).any()
  np.testing.assert_allclose(run(ids, padded), base, atol=1e-6)
  seen = jnp.where(keys[..., None], noise, context)  # the positions it reads change
  assert np.abs(run(ids, seen) - base).max() > 1e-3


def test_prefix_lm_split_is_drawn_per_example_reproducibly(mplug):
  config, family, params, batch = mplug
  state = nn.meta.unbox(family.init_state(params))
  run = jax.jit(family.features)
  rng = jax.random.PRNGKey(5)
  feats = run(params, batch, rng, state)
  # The split the family draws: the 7th of the step's 9 keys (families/mplug.py).
  _, target, split = prefix_split.split_captions(jax.random.split(rng, 9)[6], batch["tokens"])
  lengths = np.asarray((batch["tokens"] != 0).sum(1))
  np.testing.assert_array_equal(feats["prefix_lm_tokens"], lengths - np.asarray(split))
  assert len(set(np.asarray(split).tolist())) > 1  # rows split at different points
  again = run(params, batch, rng, state)
  np.testing.assert_array_equal(again["prefix_lm_nll"], feats["prefix_lm_nll"])
  other = run(params, batch, jax.random.PRNGKey(6), state)
  assert not np.array_equal(other["prefix_lm_tokens"], feats["prefix_lm_tokens"])
  loss, metrics = family.loss(params, feats, None, state)
  np.testing.assert_allclose(metrics["lm_loss"],
                             (metrics["mlm_loss"] + metrics["prefix_lm_loss"]) / 2, rtol=1e-6)
  w = config.loss
  np.testing.assert_allclose(loss, w.itc_weight * metrics["itc_loss"] + w.itm_weight *
                             metrics["itm_loss"] + w.lm_weight * metrics["lm_loss"], rtol=1e-6)
  del target


def test_answers_equal_uncached_argmax_whatever_the_question_padding(mplug):
  _, family, params, batch = mplug
  images = batch["image"][:3]
  questions = np.zeros((3, 10), np.int32)
  for row, n in enumerate((2, 5, 7)):  # questions of different lengths, EOS (1) last
    questions[row, :n] = np.arange(3, 3 + n) + row
    questions[row, n] = 1
  answer = jax.jit(lambda p, x, q: family.answer(p, x, q, 5))
  got = np.asarray(answer(params, images, jnp.asarray(questions)))
  m = family.module
  context, mask = _context(family, params, images, jnp.asarray(questions))
  logits = jax.jit(lambda ids: m.apply({"params": params}, ids, context, mask,
                                       method=m.lm_logits))
  ids = np.full((3, 1), family.start_id, np.int32)
  for _ in range(5):
    step = np.array(logits(jnp.asarray(ids))[:, -1])
    step[:, 0] = -np.inf  # padding is never generated
    ids = np.concatenate([ids, step.argmax(-1)[:, None].astype(np.int32)], 1)
  for row in range(3):
    n = int(np.argmax(got[row] == 1)) + 1 if (got[row] == 1).any() else 5
    np.testing.assert_array_equal(got[row, :n], ids[row, 1:n + 1])
  # The same questions with one padding column less: no answer changes (the mask kept in
  # the decode cache hides the padded context; without it the extra key would count).
  narrower = jnp.asarray(questions[:, :9])
  np.testing.assert_array_equal(np.asarray(answer(params, images, narrower)), got)


def test_answer_loss_covers_the_answer_only(mplug):
  _, family, params, batch = mplug
  images, questions = batch["image"][:4], batch["tokens"][:4]
  answers = batch["tokens"][4:8]
  run = jax.jit(family.answer_features)
  base = run(params, images, questions, answers)
  np.testing.assert_array_equal(base["lm_tokens"], np.asarray((answers != 0).sum(1)))
  other_question = questions.at[:, 0].set((questions[:, 0] + 1) % 60 + 3)
  assert np.abs(run(params, images, other_question, answers)["lm_nll_sum"] -
                base["lm_nll_sum"]).min() > 0  # the question conditions every row


def test_fusion_config_fields_are_checked():
  for field in ("fusion_s", "fusion_n", "decoder_depth"):
    with pytest.raises(ValueError, match=f"model.{field}"):
      tiny_config(**{"model.name": "mplug", "loss.queue_size": 40, f"model.{field}": 0})


def test_context_mask_reads_every_image_token_and_the_unpadded_text():
  image = jnp.zeros((2, 3, 4))
  ids = jnp.array([[5, 6, 1, 0], [5, 1, 0, 0]])
  np.testing.assert_array_equal(mplug_model.context_mask(image, ids)[:, 0, 0],
                                [[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]])


def _vqa_batch(config, seed):
  """A VQA batch: random_batch's images, its captions cut as questions, one-piece answers."""
  raw = random_batch(config, seed=seed)
  answers = np.zeros((len(raw["tokens"]), config.vqa.answer_length), np.int32)
  answers[:, 0] = raw["tokens"][:, 0]
  answers[:, 1] = 1  # EOS
  length = config.model.context_length - config.vqa.answer_length
  return {"image": raw["image"], "answer": answers, "question": raw["tokens"][:, :length]}


def test_vqa_step_of_mplug_on_eight_devices_matches_one():
  """mPLUG's question through encoder and fusion, the answer from the decoder over the
  masked context, the vocabulary loss packed per device: the same step on 1 and on 2 x 4
  devices. (ITC, ITM and MLM are ALBEF's code, run on 8 devices in test_fusion_families.)"""
  overrides = {"model.name": "vqa", "vqa.family": "mplug", "vqa.answer_length": 3,
               "loss.queue_size": 40, "model.fusion_n": 1, "model.decoder_depth": 1}
  one = run_steps(tiny_config(**overrides, **{"mesh.data": 1}), jax.devices()[:1], 1,
                  _vqa_batch)
  eight = run_steps(tiny_config(**overrides, **{"mesh.data": 2, "mesh.fsdp": 4}),
                    jax.devices(), 1, _vqa_batch)
  assert_same(eight, one, rtol=2e-5)
