"""mask_tokens: BERT's 15% / 80-10-10 statistics, exclusions, determinism and sharding."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vlp_jax.losses import masking

PAD, UNK, EOS, CLS, MASK, ENC, DEC = range(7)  # the tokenizer's ids (test_data_tokenizer)
SPECIALS = (PAD, UNK, EOS, CLS, MASK, ENC, DEC)
VOCAB = 1000
B, L = 4096, 32


def caption_batch(seed=0):
  """[CLS], pieces (a few unk), EOS, pad: rows of 2..L tokens like Tokenizer.encode's."""
  r = np.random.default_rng(seed)
  tokens = r.integers(DEC + 1, VOCAB, (B, L)).astype(np.int32)
  tokens[r.random((B, L)) < 0.01] = UNK
  lengths = r.integers(2, L + 1, B)
  tokens[:, 0] = CLS
  tokens[np.arange(B), lengths - 1] = EOS
  tokens[np.arange(L)[None, :] >= lengths[:, None]] = PAD
  return tokens


def tolerance(p, n):
  """5 binomial standard deviations of a share p estimated from n draws. The rng is fixed,
  so the test is deterministic; 5 sigma only says a correct implementation passes for
  essentially any key (two-sided tail 6e-7), while a wrong share (e.g. 0.75 for 0.8, 0.2
  for 0.15) sits tens of sigma away."""
  return 5 * np.sqrt(p * (1 - p) / n)


def test_statistics_and_exclusions():
  tokens = caption_batch()
  inputs, weights = masking.mask_tokens(jax.random.PRNGKey(0), tokens, MASK, VOCAB, SPECIALS)
  assert inputs.shape == weights.shape == (B, L)
  assert inputs.dtype == jnp.int32 and weights.dtype == jnp.float32
  inputs, weights = np.asarray(inputs), np.asarray(weights)
  assert set(np.unique(weights)) <= {0.0, 1.0}
  selected = weights == 1
  maskable = ~np.isin(tokens, SPECIALS)

  # Never select special or padding positions; unselected positions are untouched.
  assert not selected[~maskable].any()
  assert (inputs[~selected] == tokens[~selected]).all()

  # ~61k maskable positions (rows average ~17 tokens, [CLS] and EOS excluded): std of the
  # selected share ~0.0014, tolerance ~0.0072.
  n = maskable.sum()
  share = selected.sum() / n
  assert abs(share - 0.15) < tolerance(0.15, n), share

  # Among the ~9.2k selected: [MASK] 0.8 (tol ~0.021), random 0.1, unchanged 0.1
  # (tol ~0.016). A random draw equals the original token with probability 1/K, K the
  # number of non-special ids, so "changed, not [MASK]" has expectation 0.1 (1 - 1/K).
  k = VOCAB - len(SPECIALS)
  m = selected.sum()
  sel_in, sel_tok = inputs[selected], tokens[selected]
  to_mask = (sel_in == MASK).mean()
  to_random = ((sel_in != MASK) & (sel_in != sel_tok)).mean()
  unchanged = (sel_in == sel_tok).mean()
  assert abs(to_mask - 0.8) < tolerance(0.8, m), to_mask
  assert abs(to_random - 0.1 * (1 - 1 / k)) < tolerance(0.1, m), to_random
  assert abs(unchanged - (0.1 + 0.1 / k)) < tolerance(0.1, m), unchanged

  # Random replacements are never special ids and lie in [0, VOCAB); they spread over
  # the vocabulary (~920 draws over 993 ids: ~600 distinct expected, both ends reached).
  replaced = sel_in[(sel_in != MASK) & (sel_in != sel_tok)]
  assert not np.isin(replaced, SPECIALS).any()
  assert replaced.min() >= DEC + 1 and replaced.max() < VOCAB
  assert len(np.unique(replaced)) > 500 and replaced.min() < 50 and replaced.max() > 950


def test_random_ids_are_exactly_the_non_special_ids():
  """_nth_allowed maps [0, K) one-to-one, in order, onto the ids not excluded."""
  excluded = [0, 1, 2, 4, 7, 9, 10]
  n = 16
  allowed = [i for i in range(n) if i not in excluded]
  got = masking._nth_allowed(jnp.arange(len(allowed), dtype=jnp.int32), excluded)
  assert list(np.asarray(got)) == allowed
  # And through mask_tokens with a tiny vocabulary: every non-special id is drawn, nothing
  # else (specials unsorted, mask_id not among them: it is excluded anyway).
  tokens = np.full((B, L), 11, np.int32)
  inputs, weights = masking.mask_tokens(jax.random.PRNGKey(3), tokens, 4, n, (10, 0, 2, 1, 7, 9),
                                        prob=1.0)
  assert (np.asarray(weights) == 1).all()
  drawn = set(np.unique(np.asarray(inputs))) - {4}
  assert drawn == set(allowed)


def test_deterministic_and_rng_dependent():
  tokens = caption_batch(1)[:256]
  f = lambda key: masking.mask_tokens(key, tokens, MASK, VOCAB, SPECIALS)
  a, wa = f(jax.random.PRNGKey(1))
  b, wb = f(jax.random.PRNGKey(1))
  c, wc = f(jax.random.PRNGKey(2))
  assert (np.asarray(a) == np.asarray(b)).all() and (np.asarray(wa) == np.asarray(wb)).all()
  assert (np.asarray(wa) != np.asarray(wc)).any() and (np.asarray(a) != np.asarray(c)).any()


def test_jit_and_sharding_give_the_same_result():
  tokens = caption_batch(2)[:512]
  key = jax.random.PRNGKey(5)
  eager = masking.mask_tokens(key, tokens, MASK, VOCAB, SPECIALS)
  step = jax.jit(lambda k, t: masking.mask_tokens(k, t, MASK, VOCAB, SPECIALS))
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"))
  sharded = jax.device_put(tokens, NamedSharding(mesh, P("data", "model")))
  for got in (step(key, tokens), step(key, sharded)):
    for x, y in zip(got, eager):
      assert (np.asarray(x) == np.asarray(y)).all()
