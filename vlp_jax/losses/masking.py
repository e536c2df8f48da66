"""BERT-style token masking for masked language modelling (ALBEF, BLIP), run on device.

`mask_tokens` selects each maskable position with probability `prob` (independent
Bernoulli draws, as ALBEF, rather than exactly `prob` of each row); a selected position
becomes [MASK] with probability 0.8, a uniformly random non-special id with 0.1 and keeps
its token with 0.1. The labels are the original tokens, weighted 1 at selected positions.

Every draw is one jax.random call over the whole [B, L] array, so the result depends only on
`rng` and the tokens: the same under jit, on one device or sharded over many.
"""
import jax
import jax.numpy as jnp
import numpy as np

MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the selected positions; the rest stay unchanged


def _nth_allowed(index, excluded):
  """The index-th (0-based) integer >= 0 not in `excluded` (a sorted list of distinct ints).

  Walking the exclusions in ascending order and stepping past each one at or below the
  running value maps [0, n - len(excluded)) one-to-one onto [0, n) minus the exclusions,
  without a table of the allowed ids: len(excluded) elementwise ops.
  """
  for e in excluded:
    index = index + (index >= e).astype(index.dtype)
  return index


def mask_tokens(rng, tokens, mask_id, vocab_size, special_ids, prob=0.15, pad_id=0):
  """Masks `tokens` [B, L] int as BERT does; returns (inputs [B, L] int32, weights [B, L] f32).

  Args:
    rng: a jax.random key.
    tokens: [B, L] integer ids; the labels of a masked-LM loss are these, unchanged.
    mask_id: id of [MASK] (`Tokenizer.special_id("mask")`).
    vocab_size: random replacements are drawn from [0, vocab_size); pass the tokenizer's
      vocab_size (ids above it, up to config.model.vocab_size, never occur in captions).
    special_ids: static ids never selected nor drawn as replacements
      (`Tokenizer.special_ids()`: pad, unk, eos, [CLS], [MASK], [ENC], [DEC]). `pad_id` and
      `mask_id` are added to them in any case.
    prob: probability that a maskable position is selected.
    pad_id: padding id, never selected.

  Returns:
    inputs: the tokens with selected positions replaced ([MASK] 80%, random non-special id
      10%, unchanged 10%); unselected positions are identical to `tokens`.
    weights: 1.0 at selected positions, else 0.0 (the masked-LM loss weights).

  The random id is uniform over the vocab_size - len(specials) non-special ids: an index
  drawn uniformly from [0, that count) is mapped onto them by `_nth_allowed` (it may equal
  the original token, as in BERT).
  """
  excluded = sorted({int(i) for i in special_ids} | {int(pad_id), int(mask_id)})
  allowed = int(vocab_size) - sum(1 for e in excluded if 0 <= e < vocab_size)
  if allowed <= 0:
    raise ValueError(f"vocab_size={vocab_size} leaves no non-special id to draw")
  tokens = jnp.asarray(tokens).astype(jnp.int32)
  shape = tokens.shape
  k_select, k_branch, k_random = jax.random.split(rng, 3)
  maskable = ~jnp.isin(tokens, jnp.asarray(np.array(excluded, np.int32)))
  selected = jax.random.bernoulli(k_select, prob, shape) & maskable
  branch = jax.random.uniform(k_branch, shape)
  random_ids = _nth_allowed(jax.random.randint(k_random, shape, 0, allowed, jnp.int32),
                            [e for e in excluded if e >= 0])
  replaced = jnp.where(branch < MASK_SHARE, jnp.int32(mask_id),
                       jnp.where(branch < MASK_SHARE + RANDOM_SHARE, random_ids, tokens))
  inputs = jnp.where(selected, replaced, tokens)
  return inputs, selected.astype(jnp.float32)
