"""BLIP-2's Q-Former: learned queries and text in one BERT-style transformer.

Li et al. 2023 ("BLIP-2"): `num_queries` learned query embeddings and the text share every
self-attention layer; the queries alone cross-attend to the (frozen) image encoder's tokens,
every `cross_every`-th layer from the first, and have their own MLP; the text has BERT's.
What a query or a text token may see is said by the self-attention mask alone, so one set
of weights serves the three stage-1 objectives (`masks`): contrastive (queries and text
apart), matching (everything sees everything) and image-grounded generation (queries see
queries; text sees the queries and earlier text).

Post-LayerNorm sublayers with BERT's epsilon, as the BERT-base weights the paper starts
from (models/fusion.py). The queries get a LayerNorm and dropout of their own where the
text gets BERT's embedding LayerNorm (LAVIS shares one; both start as the identity), and
flax makes parameters on first use, so a Q-Former that only ever reads queries (stage 2)
holds no text weights at all.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlp_jax.models import fusion, layers


class QFormerLayer(nn.Module):
  """Shared self-attention over [queries; text], the queries' cross-attention (when
  `cross_attention`) and MLP, the text's MLP. Either part may be None."""
  num_heads: int
  mlp_dim: int
  cross_attention: bool
  activation: str = "gelu"
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, queries, text, mask, image, deterministic=True):
    parts = [x for x in (queries, text) if x is not None]
    x = jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
    x = layers.constrain(x, ("batch", "length", "act_embed"))
    y = layers.Attention(self.num_heads, self.dtype, name="self_attn")(x, mask=mask)
    x = self._add_norm(x, y, "ln_self", deterministic)
    n = 0 if queries is None else queries.shape[1]
    queries = None if queries is None else x[:, :n]
    text = None if text is None else x[:, n:]
    if queries is not None:
      if self.cross_attention:
        y = layers.Attention(self.num_heads, self.dtype, cross=True, name="cross_attn")(
            queries, kv=image)
        queries = self._add_norm(queries, y, "ln_cross", deterministic)
      y = layers.Mlp(self.mlp_dim, self.activation, self.dtype, name="query_mlp")(queries)
      queries = self._add_norm(queries, y, "ln_query_mlp", deterministic)
    if text is not None:
      y = layers.Mlp(self.mlp_dim, self.activation, self.dtype, name="mlp")(text)
      text = self._add_norm(text, y, "ln_mlp", deterministic)
    return queries, text

  def _add_norm(self, x, y, name, deterministic):
    y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    return layers.layer_norm(self.dtype, name, fusion.BERT_EPS)(x + y)


class QFormer(nn.Module):
  """(query outputs [B, Q, W] or None, text outputs [B, T, W] or None).

  `image` [B, N, Wv] (its own width): the queries take part and cross-attend to it; None:
  text only. `ids` [B, T]: text takes part. `mask` [B or 1, 1, Q + T, Q + T] from `masks`.
  """
  num_queries: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  vocab_size: int
  context_length: int
  cross_every: int = 2
  activation: str = "gelu"
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    self.query_tokens = layers.param(self, "query_tokens", (None, "act_embed"),
                                     nn.initializers.normal(0.02),
                                     (self.num_queries, self.width))
    self.ln_query = layers.layer_norm(self.dtype, epsilon=fusion.BERT_EPS)
    self.query_dropout = nn.Dropout(self.dropout_rate)
    self.embed = fusion.TextEmbedding(self.vocab_size, self.context_length, self.width,
                                      self.dropout_rate, self.dtype)
    for i in range(self.depth):  # named as unrolled stacks elsewhere (models/stacking.py)
      setattr(self, f"layer_{i}", QFormerLayer(
          self.num_heads, self.mlp_dim, cross_attention=i % self.cross_every == 0,
          activation=self.activation, dropout_rate=self.dropout_rate, dtype=self.dtype))

  def __call__(self, image=None, ids=None, mask=None, deterministic=True):
    queries = text = None
    if image is not None:
      q = self.query_tokens.astype(self.dtype)
      q = self.ln_query(jnp.broadcast_to(q, (image.shape[0],) + q.shape))
      queries = self.query_dropout(q, deterministic=deterministic)
    if ids is not None:
      text = self.embed(ids, deterministic=deterministic)
    for i in range(self.depth):
      queries, text = getattr(self, f"layer_{i}")(queries, text, mask, image, deterministic)
    return queries, text

  def token_embedding(self):
    """[V, W]: what a tied vocabulary head projects onto."""
    return self.embed.token_embedding


def masks(num_queries, ids, kind):
  """[B, 1, Q + T, Q + T] self-attention mask over [queries; text] of `kind`:

  "match" (ITM): every row sees every query and non-padding token;
  "generate" (ITG): query rows see the queries only; text row t sees the queries and the
  non-padding text rows <= t;
  "text" ([B, 1, T, T], no queries; ITC's text side): text rows see non-padding text.
  """
  b, t = ids.shape
  valid = ids != fusion.PAD_ID
  if kind == "text":
    return jnp.broadcast_to(valid[:, None, None, :], (b, 1, t, t))
  q = num_queries
  keys = jnp.concatenate([jnp.ones((b, q), bool), valid], axis=1)[:, None, None, :]
  if kind == "match":
    return jnp.broadcast_to(keys, (b, 1, q + t, q + t))
  if kind != "generate":
    raise ValueError(f"Unknown Q-Former mask {kind!r} (match, generate or text)")
  row = jnp.arange(q + t)[:, None]
  col = jnp.arange(q + t)[None, :]
  seen = jnp.where(row < q, col < q, (col < q) | (col <= row))
  return keys & seen[None, None]
