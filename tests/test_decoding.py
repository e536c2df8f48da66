"""Decoding with KV caches: greedy equals decoding without the cache, beam search equals
exhaustive search where its beam holds every prefix, sampling filters match numpy."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers import random_batch, tiny_config
from vlp_jax import families
from vlp_jax.models import decoding

EOS = 1


def make_model(**overrides):
  """A tiny CoCa (eos 1) with its output projection scaled up, so that next-token
  distributions are peaked and the best sequences are well separated, and EOS made less
  likely, so that the best hypotheses run long and exercise the caches."""
  config = tiny_config(**{"model.name": "coca", "model.num_decoder_queries": 4,
                          "model.multimodal_depth": 1, "train.batch_size": 8, **overrides})
  family = families.get_family(config, eos_id=EOS)
  batch = random_batch(config, eos_id=EOS)
  params = jax.jit(lambda b: nn.meta.unbox(family.init(jax.random.PRNGKey(0), b)))(batch)
  params["text_decoder"]["output"]["kernel"] *= 4.0
  params["text_decoder"]["output"]["bias"] = params["text_decoder"]["output"]["bias"].at[EOS].add(-3.0)
  forward = jax.jit(lambda p, images, tokens: family.module.apply(
      {"params": p}, images, tokens, method=family.module.logits))
  return family, params, jnp.asarray(batch["image"][:3]), forward


@pytest.fixture(scope="module")
def wide():
  """Vocabulary 64, unrolled layers."""
  return make_model()


@pytest.fixture(scope="module")
def narrow():
  """Vocabulary 6 (5 tokens that can be generated), 3 positions, scanned layers."""
  return make_model(**{"model.vocab_size": 6, "model.context_length": 3, "model.scan": True})


def greedy_without_cache(family, params, images, forward):
  """Greedy decoding by re-running the teacher-forced model on the whole prefix each step."""
  length = family.config.model.context_length
  tokens = np.zeros((images.shape[0], length), np.int32)
  done = np.zeros(images.shape[0], bool)
  for t in range(length):
    logits = np.array(forward(params, images, tokens)[:, t], np.float32)
    logits[:, 0] = -np.inf
    token = np.where(done, 0, logits.argmax(axis=-1))
    tokens[:, t] = token
    done |= token == EOS
  return tokens


@pytest.mark.parametrize("model", ["wide", "narrow"])
def test_greedy_with_cache_equals_greedy_without(model, request):
  family, params, images, forward = request.getfixturevalue(model)
  cached = jax.jit(lambda p, im: family.caption(p, im, method="greedy"))(params, images)
  np.testing.assert_array_equal(cached, greedy_without_cache(family, params, images, forward))
  if model == "wide":
    assert len(np.unique(np.asarray(cached))) > 3, "a degenerate model would test little"


def exhaustive_search(family, params, images, forward, max_len, alpha):
  """Every hypothesis (ends at EOS or after max_len tokens, never padding), scored by the
  teacher-forced model in float64: [(score, tokens)] per image, best first."""
  vocab, length = family.config.model.vocab_size, family.config.model.context_length
  hyps = []

  def extend(prefix):
    for token in range(1, vocab):
      seq = prefix + [token]
      (hyps.append if token == EOS or len(seq) == max_len else extend)(seq)
  extend([])
  tokens = np.zeros((len(hyps), length), np.int32)
  for i, seq in enumerate(hyps):
    tokens[i, :len(seq)] = seq
  results = []
  for image in images:
    logits = np.asarray(forward(params, jnp.repeat(image[None], len(hyps), 0), tokens),
                        np.float64)
    logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    scored = []
    for i, seq in enumerate(hyps):
      total = sum(logp[i, t, token] for t, token in enumerate(seq))
      scored.append((total / decoding.length_penalty(len(seq), alpha), tokens[i, :max_len]))
    results.append(sorted(scored, key=lambda s: -s[0]))
  return results


@pytest.mark.parametrize("max_len,beam", [(2, 6), (3, 36)], ids=["len2_beam_vocab",
                                                                "len3_beam_vocab2"])
def test_beam_search_finds_the_exhaustive_best(narrow, max_len, beam):
  """With beam >= the number of unfinished prefixes, nothing is pruned, so the beam's K
  best must be the exhaustive K best: beam = vocabulary size for 2 tokens (5 first tokens),
  vocabulary size squared for 3 (16 two-token prefixes). Scanned layers: the cache
  reordering must move the batch axis of stacked caches."""
  family, params, images, forward = narrow

  @jax.jit
  def search(p, im, alpha):
    cache = family.init_cache(p, im, beam, max_len)
    return decoding.beam_search(family.step_fn(p), cache, im.shape[0], beam, max_len, EOS, EOS,
                                alpha)
  for alpha in (0.0, 0.6):
    tokens, scores = search(params, images, jnp.float32(alpha))
    for b, best in enumerate(exhaustive_search(family, params, images, forward, max_len, alpha)):
      top = best[:5]
      assert all(x[0] - y[0] > 1e-4 for x, y in zip(top, best[1:6])), "ties make it ambiguous"
      assert sum(len(np.flatnonzero(t)) == max_len for _, t in top) >= 2
      np.testing.assert_array_equal(tokens[b, :5], np.stack([t for _, t in top]))
      np.testing.assert_allclose(scores[b, :5], [s for s, _ in top], rtol=1e-5, atol=1e-6)


def test_beam_search_output_layout(wide):
  family, params, images, _ = wide
  tokens = np.asarray(jax.jit(lambda p, im: family.caption(p, im, method="beam", beam_size=3))(
      params, images))
  for row in tokens:
    ends = np.flatnonzero(row == EOS)
    stop = ends[0] + 1 if len(ends) else len(row)
    assert np.all(row[:stop] != 0) and np.all(row[stop:] == 0)


def _reference_filter(logits, top_k, top_p):
  keep = np.ones_like(logits, bool)
  for i, row in enumerate(logits):
    order = np.argsort(-row)
    if top_k:
      keep[i, order[top_k:]] = False
    kept = row[order[:top_k or len(row)]]
    probs = np.exp(kept - kept.max())
    probs /= probs.sum()
    cutoff = np.searchsorted(np.cumsum(probs), top_p) + 1  # fewest reaching top_p
    keep[i, order[cutoff:]] = False
  return keep


@pytest.mark.parametrize("top_k,top_p", [(3, 1.0), (0, 0.5), (5, 0.7), (0, 0.95)])
def test_filter_logits_matches_numpy(top_k, top_p):
  logits = np.random.default_rng(0).normal(size=(6, 20)).astype(np.float32) * 2
  kept = np.asarray(decoding.filter_logits(jnp.asarray(logits), top_k, top_p)) > -1e8
  np.testing.assert_array_equal(kept, _reference_filter(logits, top_k, top_p))


def test_sampling(wide):
  """top_k=1 and a tiny nucleus are greedy; full sampling varies with the key and keeps
  the layout (no padding before EOS, only padding after)."""
  family, params, images, _ = wide
  run = jax.jit(lambda p, im, rng, k, top_p: family.caption(p, im, rng, method="sample",
                                                            top_k=k, top_p=top_p),
                static_argnums=(3, 4))
  greedy = jax.jit(lambda p, im: family.caption(p, im, method="greedy"))(params, images)
  key = jax.random.PRNGKey(3)
  np.testing.assert_array_equal(run(params, images, key, 1, 1.0), greedy)
  np.testing.assert_array_equal(run(params, images, key, 0, 1e-6), greedy)
  draws = [np.asarray(run(params, images, jax.random.PRNGKey(s), 0, 1.0)) for s in range(3)]
  assert not all(np.array_equal(draws[0], d) for d in draws[1:])
  for row in np.concatenate(draws):
    ends = np.flatnonzero(row == EOS)
    stop = ends[0] + 1 if len(ends) else len(row)
    assert np.all(row[:stop] != 0) and np.all(row[stop:] == 0)
