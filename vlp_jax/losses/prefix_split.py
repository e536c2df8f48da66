"""The prefix-LM objective's split of a caption (mPLUG, SimVLM): the part before a random
point is read as context, the decoder predicts the rest.

`split_captions` draws one split per row, uniformly among the points that leave at least
one token on each side, with one jax.random call over the batch, so a step's split depends
only on its RNG and the tokens: the same under jit, on one device or sharded over many, and
again when a resumed run replays the step.
"""
import jax
import jax.numpy as jnp


def split_captions(rng, tokens, pad_id=0):
  """(prefix [B, L], target [B, L], split [B]) of captions `tokens` [B, L] in the
  tokenizer's layout (pieces, EOS, padding).

  Row i of length n (its non-padding tokens) splits at s in [1, n - 1]: prefix holds
  tokens[:s] then padding, target tokens[s:n] (EOS last) moved to the front, then padding.
  A row of one token keeps it as prefix with an empty target (nothing to predict).
  """
  tokens = jnp.asarray(tokens, jnp.int32)
  b, length = tokens.shape
  n = jnp.sum(tokens != pad_id, axis=1)
  split = jax.random.randint(rng, (b,), 1, jnp.maximum(n, 2))
  split = jnp.minimum(split, n)
  j = jnp.arange(length)[None, :]
  prefix = jnp.where(j < split[:, None], tokens, pad_id)
  shifted = jnp.take_along_axis(tokens, jnp.minimum(j + split[:, None], length - 1), axis=1)
  target = jnp.where(j + split[:, None] < n[:, None], shifted, pad_id)
  return prefix, target, split
