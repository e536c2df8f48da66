"""Captioning with a decoder LM read through a prompt made from the image.

`SoftPromptLM` is what BLIP-2 stage 2 (models/blip2.py QueryPromptedLM), prefix
captioning (`MappedPromptLM`, the Image2Poem idea and ClipCap's transformer mapper) and
keyword prompting (`KeywordPromptLM`, Image2Poem's first version) share: a subclass says
how images become `prefix` embeddings [B, P, W_lm]; the LM reads them at positions 0..P-1
and the caption after them (models/language_model.py), for the loss and for KV-cached
decoding.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax.models import clip, layers
from vlp_jax.models.text import TextTransformer
from vlp_jax.models.vit import VisionTransformer


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

  def weighted_loss(self, images, tokens, weights, start_id, deterministic=True):
    """As __call__ with per-position `weights` [B, L] (VQA: question pieces then the
    answer after the soft prompt, the answer weighed)."""
    return self.lm(tokens, start_id, self.prefix(images, deterministic), weights)

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


class KeywordPromptLM(SoftPromptLM):
  """A frozen CLIP scores `keywords` for each image; the pieces of its `top_k` best, in
  order, EOS-filled to `prompt_length` tokens, are the LM's prompt (the LM is trained to
  write captions after them).

  `keywords`: tuple of K rows of token ids in the CLIP tokenizer's layout (pieces, EOS,
  padding 0; an all-padding row is no keyword): a constant of the module, so the parameter
  tree does not depend on it. The CLIP tokenizer is the LM's (one per run).
  """
  vision: dict = None
  text: dict = None
  embed_dim: int = 0
  keywords: tuple = ()
  top_k: int = 3
  prompt_length: int = 8
  eos_id: int = 1

  def setup(self):
    self.image_tower = VisionTransformer(embed_dim=self.embed_dim, dtype=self.dtype,
                                         **self.vision)
    self.text_tower = TextTransformer(embed_dim=self.embed_dim, dtype=self.dtype, **self.text)
    self.lm = self.language_model.clone()

  def chosen(self, images):
    """[B, top_k] rows of `keywords` with the highest CLIP similarity to each image."""
    table = jnp.asarray(self.keywords, jnp.int32)
    words = clip.normalize(self.text_tower(table)[0])
    img = clip.normalize(self.image_tower(images)[0])
    scores = jnp.where(table[:, 0] != 0, img @ words.T, -jnp.inf)
    return jax.lax.top_k(scores, self.top_k)[1]

  def prompt_ids(self, images):
    """[B, prompt_length]: the chosen keywords' pieces, best first, then EOS."""
    table = jnp.asarray(self.keywords, jnp.int32)
    pieces = table[self.chosen(images)].reshape(images.shape[0], -1)
    keep = (pieces != 0) & (pieces != self.eos_id)
    order = jnp.argsort(~keep, axis=1, stable=True)  # kept pieces first, in order
    ids = jnp.where(jnp.take_along_axis(keep, order, 1),
                    jnp.take_along_axis(pieces, order, 1), self.eos_id)
    width = ids.shape[1]
    if width < self.prompt_length:
      ids = jnp.pad(ids, ((0, 0), (0, self.prompt_length - width)),
                    constant_values=self.eos_id)
    return ids[:, :self.prompt_length]

  def prefix(self, images, deterministic=True):
    del deterministic
    ids = jax.lax.stop_gradient(self.prompt_ids(images))
    return jnp.take(self.lm.token_embedding, ids, axis=0).astype(self.dtype)


def keyword_fields(m, eos_id, keywords):
  """KeywordPromptLM's CLIP towers and keyword options from `config.model`."""
  return dict(vision=clip.image_tower_config(m), text=clip.text_tower_config(m, eos_id),
              embed_dim=m.embed_dim, keywords=keywords, top_k=m.keyword_top_k,
              prompt_length=m.num_queries, eos_id=eos_id)
