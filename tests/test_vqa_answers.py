"""VQA as generation (answer_features / answer of the decoder families): the answer-only
loss against float64 references of each family's full logits on the packed question +
answer, what the loss reads and scores, per-row question prompts in KV-cached greedy
decoding against uncached argmax decoding, the fused loss's gradient."""
import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import random_batch, tiny_config
from vlp_jax import families
from vlp_jax.models import decoding, layers

EOS = 1
# Questions of 3, 1 and 5 pieces (the third fills its row but for EOS), answers of 2-4 tokens.
QUESTIONS = np.array([[5, 6, 7, 1, 0, 0], [9, 1, 0, 0, 0, 0], [11, 12, 13, 14, 15, 1]], np.int32)
ANSWERS = np.array([[20, 21, 1, 0], [22, 1, 0, 0], [23, 24, 25, 1]], np.int32)
MAX_LEN = 4  # as wide as ANSWERS: the reference logits compile once

CONFIGS = {
    "coca": {"model.num_decoder_queries": 4, "model.multimodal_depth": 1},
    "blip": {"model.fusion_depth": 1, "loss.queue_size": 0},
    "prefix_lm": {"model.num_queries": 4, "model.lm.width": 32, "model.lm.depth": 1,
                  "model.lm.heads": 2, "model.lm.positions": 20, "model.mapper_depth": 1},
}


def _sharpened(name, params):
  """Peaked next-token distributions, EOS less likely: answers run long and well apart."""
  if name == "coca":
    head = params["text_decoder"]["output"]
    head["kernel"] = head["kernel"] * 4.0
    head["bias"] = head["bias"].at[EOS].add(-3.0)
  elif name == "blip":
    params["lm_head"]["ln"]["scale"] = params["lm_head"]["ln"]["scale"] * 30.0
  else:
    params["lm"]["ln_final"]["scale"] = params["lm"]["ln_final"]["scale"] * 30.0
  return params


def _full_logits(name, family):
  """(params, images, tokens [b, T]) -> [b, T, V] logits predicting `tokens` after the start
  symbol, from the family's uncached, unfused forward (the ones existing tests check)."""
  m = family.module
  if name == "coca":
    return lambda p, images, tokens: m.apply({"params": p}, images, tokens, method=m.logits)
  if name == "blip":
    def blip(p, images, tokens):
      context = m.apply({"params": p}, images, method=m.image_tokens)
      ids = layers.shift_right(tokens, family.start_id)
      return m.apply({"params": p}, ids, context, method=m.lm_logits)
    return blip

  def soft_prompt(p, images, tokens):
    prompt = m.apply({"params": p}, images, method=m.prefix)

    def run(mdl):
      ids = mdl.lm.shift(tokens, family.start_id)
      return mdl.lm.logits(mdl.lm.hidden(mdl.lm.embed(ids, prefix=prompt))[:, prompt.shape[1]:])
    return m.apply({"params": p}, method=run)
  return soft_prompt


class Model(NamedTuple):
  name: str
  family: object
  params: dict
  images: jax.Array  # [3, S, S, 3]
  logits: object  # jitted _full_logits
  features: object  # jitted answer_features
  answer: object  # jitted answer


@functools.lru_cache(maxsize=None)
def _build(name):
  """A tiny `name` with its functions compiled once for every test."""
  config = tiny_config(**{"model.name": name, "model.context_length": 16,
                          "train.batch_size": 4, **CONFIGS[name]})
  family = families.get_family(config, eos_id=EOS)
  batch = random_batch(config, eos_id=EOS)
  params = jax.jit(lambda b: nn.meta.unbox(family.init(jax.random.PRNGKey(0), b)))(batch)
  return Model(name, family, _sharpened(name, params), jnp.asarray(batch["image"][:3]),
               jax.jit(_full_logits(name, family)), jax.jit(family.answer_features),
               jax.jit(family.answer, static_argnums=3))


@pytest.fixture(params=sorted(CONFIGS))
def model(request):
  return _build(request.param)


def _packed(questions, answers):
  """numpy: each row's question pieces then its answer, right-padded; (tokens, first answer
  column, answer length) per row."""
  rows, starts, lengths = [], [], []
  for q, a in zip(questions, answers):
    pieces, answer = q[(q != 0) & (q != EOS)], a[a != 0]
    rows.append(np.concatenate([pieces, answer]))
    starts.append(len(pieces))
    lengths.append(len(answer))
  tokens = np.zeros((len(rows), questions.shape[1] + answers.shape[1]), np.int32)
  for r, row in enumerate(rows):
    tokens[r, :len(row)] = row
  return tokens, starts, lengths


def _answer_weights(tokens, starts, lengths):
  weights = np.zeros(tokens.shape)
  for r, (s, n) in enumerate(zip(starts, lengths)):
    weights[r, s:s + n] = 1.0
  return weights


def _log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  return logp - np.log(np.exp(logp).sum(-1, keepdims=True))


def test_answer_features_match_float64_reference(model):
  m = model
  got = m.features(m.params, m.images, QUESTIONS, ANSWERS)
  tokens, starts, lengths = _packed(QUESTIONS, ANSWERS)
  logits = np.asarray(m.logits(m.params, m.images, tokens))
  nll = -np.take_along_axis(_log_softmax(logits), tokens[..., None], -1)[..., 0]
  weights = _answer_weights(tokens, starts, lengths)
  np.testing.assert_allclose(got["lm_nll_sum"], np.sum(nll * weights, 1), rtol=2e-5)
  np.testing.assert_array_equal(got["lm_tokens"], lengths)
  np.testing.assert_array_equal(got["lm_correct"],
                                np.sum((logits.argmax(-1) == tokens) * weights, 1))


def test_the_question_is_read_and_only_the_answer_scored(model):
  m = model
  run = lambda q, a: {k: np.asarray(v) for k, v in m.features(m.params, m.images, q, a).items()}
  base = run(QUESTIONS, ANSWERS)

  def changed(questions, answers, rows):
    got = run(questions, answers)
    np.testing.assert_array_equal(got["lm_tokens"], base["lm_tokens"])
    same = np.setdiff1d(np.arange(3), rows)
    np.testing.assert_allclose(got["lm_nll_sum"][same], base["lm_nll_sum"][same], rtol=1e-6)
    if len(rows):
      assert np.abs(got["lm_nll_sum"][rows] - base["lm_nll_sum"][rows]).min() > 1e-3

  pad = lambda x: np.pad(x, ((0, 0), (0, 2)))
  changed(pad(QUESTIONS), pad(ANSWERS), [])  # more padding after the answer: nothing moves
  answers, questions = ANSWERS.copy(), QUESTIONS.copy()
  answers[0, 0] = 30
  changed(QUESTIONS, answers, [0])  # row 0's answer: its loss only
  questions[2, 1] = 31
  changed(questions, ANSWERS, [2])  # row 2's question: its answer's loss, no new tokens


def _uncached_answers(m):
  """Greedy answers by the full forward on each question + answer so far, each step."""
  tokens, starts, _ = _packed(QUESTIONS, np.zeros((3, MAX_LEN), np.int32))
  done = np.zeros(3, bool)
  out = np.zeros((3, MAX_LEN), np.int32)
  for k in range(MAX_LEN):
    logits = np.array(m.logits(m.params, m.images, tokens), np.float32)
    for r in np.flatnonzero(~done):
      step = logits[r, starts[r] + k]
      step[0] = -np.inf
      out[r, k] = tokens[r, starts[r] + k] = step.argmax()
      done[r] = out[r, k] == EOS
  return out


def test_answer_equals_uncached_argmax_per_row(model):
  """Rows with questions of 3, 1 and 5 pieces decode in one batch as each does alone."""
  m = model
  got = np.asarray(m.answer(m.params, m.images, QUESTIONS, MAX_LEN))
  np.testing.assert_array_equal(got, _uncached_answers(m))
  assert len(np.unique(got)) > 3, "a degenerate model would test little"
  flipped = np.asarray(m.answer(m.params, m.images[::-1], QUESTIONS[::-1], MAX_LEN))
  np.testing.assert_array_equal(flipped, got[::-1])  # a row's answer is its own


def test_question_and_answer_beyond_the_positions_are_refused(model):
  m = model
  field = "model.lm.positions" if m.name == "prefix_lm" else "model.context_length"
  long_answers = np.zeros((3, 11), np.int32)  # 6 + 11 > 16 positions
  with pytest.raises(ValueError, match=field):
    m.family.answer_features(m.params, m.images, QUESTIONS, long_answers)
  with pytest.raises(ValueError, match=field):
    m.family.answer(m.params, m.images, QUESTIONS, 11)
  jax.eval_shape(m.family.answer_features, m.params, m.images, QUESTIONS,
                 long_answers[:, :10])  # 16 fit


def test_gradient_of_the_mean_answer_loss_equals_the_reference():
  """The fused loss's gradient, spread over the rows (FusionFamily.lm_features), is that of
  the mean answer nll over the batch: the float64 gradient with respect to the full logits
  (softmax - onehot on answer positions, / tokens) carried back through their forward."""
  m = _build("coca")

  def loss(p):
    f = m.family.answer_features(p, m.images, QUESTIONS, ANSWERS)
    return jnp.sum(f["lm_nll_sum"]) / jnp.sum(f["lm_tokens"])
  got = jax.jit(jax.grad(loss))(m.params)

  tokens, starts, lengths = _packed(QUESTIONS, ANSWERS)
  weights = _answer_weights(tokens, starts, lengths)
  d_logits = np.exp(_log_softmax(m.logits(m.params, m.images, tokens)))
  d_logits[np.arange(3)[:, None], np.arange(tokens.shape[1]), tokens] -= 1.0
  d_logits *= weights[..., None] / weights.sum()
  back = jax.jit(lambda p, cotangent: jax.vjp(lambda q: m.logits(q, m.images, tokens), p)[1](
      cotangent))
  (want,) = back(m.params, jnp.asarray(d_logits, jnp.float32))
  flat_want = dict(jax.tree_util.tree_leaves_with_path(want))
  moved = 0
  for path, g in jax.tree_util.tree_leaves_with_path(got):
    w = np.asarray(flat_want[path])
    np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-3 * np.abs(w).max(),
                               err_msg=jax.tree_util.keystr(path))
    moved += np.abs(w).max() > 0
  assert moved > len(flat_want) // 2  # the image tower, poolers and decoder all get one


def test_forced_prefix_decoding_records_after_each_rows_prompt():
  """A toy decoder that writes last + 1 (EOS after 9): row r reads the start symbol and
  its forced[r, :forced_len[r]], then its own tokens, recorded from column 0; a row stops
  at EOS or after max_len tokens, the others go on."""
  vocab = 16

  def step(cache, ids, position):
    del position
    following = jnp.where(ids == 9, EOS, ids + 1)
    return jax.nn.one_hot(following, vocab) * 10.0, cache + 1

  forced = jnp.array([[5, 6, 0], [7, 0, 0], [2, 3, 4]], jnp.int32)
  lengths = jnp.array([2, 1, 0], jnp.int32)
  out = jax.jit(lambda f, n: decoding.greedy(step, jnp.int32(0), 3, 4, 3, EOS, f, n))(
      forced, lengths)
  np.testing.assert_array_equal(out, [[7, 8, 9, EOS], [8, 9, EOS, 0], [4, 5, 6, 7]])
  plain = decoding.greedy(step, jnp.int32(0), 3, 4, 3, EOS)
  np.testing.assert_array_equal(plain, [[4, 5, 6, 7]] * 3)
