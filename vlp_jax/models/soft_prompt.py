"""Captioning with a frozen decoder LM read through a soft prompt made from the image.

`SoftPromptLM` is what BLIP-2 stage 2 (models/blip2.py QueryPromptedLM) and prefix
captioning (`MappedPromptLM`, the Image2Poem idea and ClipCap's transformer mapper) share:
a subclass says how images become `prefix` embeddings [B, P, W_lm]; the LM reads them at
positions 0..P-1 and the caption after them (models/language_model.py), for the loss and
for KV-cached decoding.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlp_jax.models import layers


class SoftPromptLM(nn.Module):
  """Base: subclasses define `lm` (a clone of `language_model`) in setup and `prefix`."""
  language_model: Any = None  # a configured language_model.DecoderLM (template)
  dtype: Any = jnp.float32

  def prefix(self, images, deterministic=True):
    """[B, P, W_lm]: the soft prompt of each image."""
    raise NotImplementedError

  def __call__(self, images, tokens, start_id, deterministic=True):
    """(sum of nll, nll [B, L], correct [B, L]) of the caption `tokens` after the prompt."""
    return self.lm(tokens, start_id, prefix=self.prefix(images, deterministic))

  def decode_step(self, ids, position, prefix=None):
    """Decode mode: see DecoderLM.step (positions count from the prompt's start)."""
    return self.lm.step(ids, position, prefix)

  def init_all(self, images, tokens, start_id):
    return self(images, tokens, start_id)


class PromptMapper(nn.Module):
  """`num_queries` learned queries of the LM's width read the image tokens through
  `depth` pre-LN blocks with cross-attention (any image width); LayerNorm on the way out."""
  num_queries: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  activation: str = "gelu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image_tokens):
    queries = layers.param(self, "queries", (None, "act_embed"), nn.initializers.normal(0.02),
                           (self.num_queries, self.width))
    x = jnp.broadcast_to(queries.astype(self.dtype), (image_tokens.shape[0],) + queries.shape)
    x = layers.Transformer(self.depth, self.num_heads, self.mlp_dim, cross_attention=True,
                           activation=self.activation, dtype=self.dtype, name="blocks")(
                               x, context=image_tokens)
    return layers.layer_norm(self.dtype, "ln_out")(x)


class MappedPromptLM(SoftPromptLM):
  """Prefix captioning: frozen tower -> PromptMapper (trained) -> frozen LM."""
  vision: Any = None
  mapper: dict = None

  def setup(self):
    self.image_tower = self.vision.clone()
    self.prompt_mapper = PromptMapper(width=self.language_model.width, dtype=self.dtype,
                                      **self.mapper)
    self.lm = self.language_model.clone()

  def prefix(self, images, deterministic=True):
    del deterministic  # no dropout
    return self.prompt_mapper(self.image_tower(images)[1])
