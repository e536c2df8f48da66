"""ALBEF: a ViT, a BERT-style text encoder and fusion layers over both (Li et al. 2021).

"Align before fuse": the text layers (bidirectional, no image) and the image tower give the
contrastive embeddings (their [CLS] tokens, projected); the fusion layers continue from the
text encoder's outputs with cross-attention to every image token, and feed the matching
(ITM) head and the masked-language-model head. Each method is one piece of the forward
pass, so the family (families/albef.py) runs them on the parameters or on their momentum
copy, and on the hard negatives it pairs across the global batch.
"""
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlp_jax.models import fusion
from vlp_jax.models import layers


class Albef(nn.Module):
  vision: dict
  text: dict
  vocab_size: int
  context_length: int
  text_width: int
  text_depth: int
  fusion_depth: int
  embed_dim: int
  dropout_rate: float = 0.0
  tied: bool = True
  logit_scale_init: float = 1 / 0.07
  dtype: Any = jnp.float32

  def setup(self):
    self.image = fusion.ImageEncoder(self.vision, self.embed_dim, dtype=self.dtype)
    self.embed = fusion.TextEmbedding(self.vocab_size, self.context_length, self.text_width,
                                      self.dropout_rate, self.dtype)
    self.text_layers = fusion.TextStack(self.text_depth, **self.text)
    self.fusion_layers = fusion.TextStack(self.fusion_depth, cross_attention=True, **self.text)
    self.text_proj = nn.Dense(self.embed_dim, dtype=self.dtype,
                              kernel_init=layers.dense_init(("embed", "joint")),
                              bias_init=layers.zeros_init(("joint",)))
    self.mlm_head = fusion.VocabularyHead(self.vocab_size, self.text["activation"], self.tied,
                                          dtype=self.dtype)
    self.itm_head = nn.Dense(2, dtype=self.dtype, kernel_init=layers.dense_init(("embed", None)),
                             bias_init=layers.zeros_init((None,)))
    self.log_logit_scale = self.param(
        "log_logit_scale",
        nn.with_logical_partitioning(nn.initializers.constant(math.log(self.logit_scale_init)),
                                     ()), (), jnp.float32)

  def image_tokens(self, images):
    return self.image.tokens(images)

  def image_embedding(self, tokens):
    return self.image.embedding(tokens)

  def encode_image(self, images):
    return self.image.embedding(self.image.tokens(images))

  def text_hidden(self, tokens, deterministic=True):
    """The text encoder's outputs [B, L, W] ([CLS]-first tokens, padding masked)."""
    x = self.embed(tokens, deterministic=deterministic)
    return self.text_layers(x, fusion.padding_mask(tokens), deterministic=deterministic)

  def text_embedding(self, hidden):
    return fusion.normalize(self.text_proj(hidden[:, 0]))

  def encode_text(self, tokens):
    return self.text_embedding(self.text_hidden(tokens))

  def fuse(self, hidden, tokens, image_tokens, deterministic=True):
    """Fusion layers over text outputs `hidden` of `tokens`, attending to `image_tokens`."""
    return self.fusion_layers(hidden, fusion.padding_mask(tokens), image_tokens,
                              deterministic=deterministic)

  def itm_logits(self, fused):
    """[B, 2] (no match, match) logits of the fusion [CLS] output."""
    return self.itm_head(fused[:, 0]).astype(jnp.float32)

  def mlm_head_io(self, fused):
    """(head hidden [B, L, W], kernel [W, V], bias [V]): what the fused loss reads."""
    kernel, bias = self.mlm_head.output(self.embed.token_embedding)
    return self.mlm_head(fused), kernel, bias

  def mlm_logits(self, fused):
    """[B, L, V] (evaluation and tests; training uses the fused loss)."""
    hidden, kernel, bias = self.mlm_head_io(fused)
    return (jnp.dot(hidden, kernel.astype(hidden.dtype)) + bias.astype(hidden.dtype)).astype(
        jnp.float32)

  def logit_scale(self):
    return jnp.exp(self.log_logit_scale)

  def init_all(self, images, tokens):
    """Touches every parameter once (initialisation)."""
    image_tokens = self.image_tokens(images)
    hidden = self.text_hidden(tokens)
    fused = self.fuse(hidden, tokens, image_tokens)
    return (self.image_embedding(image_tokens), self.text_embedding(hidden),
            self.itm_logits(fused), self.mlm_head_io(fused), self.logit_scale())


def from_config(m):
  """Albef from `config.model`: text_depth text layers and fusion_depth fusion layers of
  width text_width; the ViT in DeiT's layout (patch bias, no LayerNorm before the encoder)."""
  return Albef(vision=fusion.vision_dims(m), text=fusion.text_dims(m),
               vocab_size=m.vocab_size, context_length=m.context_length,
               text_width=m.text_width, text_depth=m.text_depth, fusion_depth=m.fusion_depth,
               embed_dim=m.embed_dim, dropout_rate=m.dropout, tied=m.tie_word_embeddings,
               logit_scale_init=m.logit_scale_init, dtype=jnp.dtype(m.dtype))
