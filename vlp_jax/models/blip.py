"""BLIP: a ViT and one BERT-style text stack in three roles (Li et al. 2022).

- unimodal text encoder: [CLS] + caption, bidirectional self-attention, no image: its [CLS]
  output, projected, is the contrastive embedding;
- image-grounded text encoder: [ENC] + caption, bidirectional self-attention and
  cross-attention to the image tokens: its first output feeds the matching (ITM) head;
- image-grounded text decoder: [DEC] + caption, causal self-attention and cross-attention:
  the language-model head predicts the next token.
Every layer holds two self-attentions (bidirectional, causal); the embeddings,
cross-attention and MLP weights are one set of arrays that the encoder and the decoder both
read, as the paper's encoder and decoder share all but the self-attention layers.
"""
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlp_jax.models import fusion
from vlp_jax.models import layers


class Blip(nn.Module):
  vision: dict
  text: dict
  vocab_size: int
  context_length: int
  text_width: int
  text_depth: int
  embed_dim: int
  dropout_rate: float = 0.0
  tied: bool = True
  logit_scale_init: float = 1 / 0.07
  dtype: Any = jnp.float32
  decode: bool = False

  def setup(self):
    self.image = fusion.ImageEncoder(self.vision, self.embed_dim, dtype=self.dtype)
    self.embed = fusion.TextEmbedding(self.vocab_size, self.context_length, self.text_width,
                                      self.dropout_rate, self.dtype)
    self.text_layers = fusion.TextStack(self.text_depth, cross_attention=True,
                                        self_attention=("bidirectional", "causal"),
                                        **self.text)
    self.text_proj = nn.Dense(self.embed_dim, dtype=self.dtype,
                              kernel_init=layers.dense_init(("embed", "joint")),
                              bias_init=layers.zeros_init(("joint",)))
    self.lm_head = fusion.VocabularyHead(self.vocab_size, self.text["activation"], self.tied,
                                         dtype=self.dtype)
    self.itm_head = nn.Dense(2, dtype=self.dtype, kernel_init=layers.dense_init(("embed", None)),
                             bias_init=layers.zeros_init((None,)))
    self.log_logit_scale = self.param(
        "log_logit_scale",
        nn.with_logical_partitioning(nn.initializers.constant(math.log(self.logit_scale_init)),
                                     ()), (), jnp.float32)

  def image_tokens(self, images):
    return self.image.tokens(images)

  def caption_context(self, images):
    """What the decoder cross-attends to: every image token."""
    return self.image.tokens(images)

  def image_embedding(self, tokens):
    return self.image.embedding(tokens)

  def encode_image(self, images):
    return self.image.embedding(self.image.tokens(images))

  def text_embedding(self, tokens, deterministic=True):
    """Unimodal encoder on [CLS]-first tokens -> L2-normalised embedding [B, E]."""
    x = self.embed(tokens, deterministic=deterministic)
    x = self.text_layers(x, fusion.padding_mask(tokens), deterministic=deterministic)
    return fusion.normalize(self.text_proj(x[:, 0]))

  def encode_text(self, tokens):
    return self.text_embedding(tokens)

  def itm_logits(self, tokens, image_tokens, deterministic=True):
    """[B, 2] (no match, match) logits of [ENC]-first tokens grounded in image_tokens."""
    x = self.embed(tokens, deterministic=deterministic)
    x = self.text_layers(x, fusion.padding_mask(tokens), image_tokens,
                         deterministic=deterministic)
    return self.itm_head(x[:, 0]).astype(jnp.float32)

  def decoder_hidden(self, ids, image_tokens, deterministic=True):
    """The LM head's input [B, L, W] for [DEC]-first ids grounded in image_tokens."""
    x = self.embed(ids, deterministic=deterministic)
    x = self.text_layers(x, fusion.padding_mask(ids), image_tokens, mode="causal",
                         deterministic=deterministic)
    return self.lm_head(x)

  def lm_output(self):
    """(kernel [W, V], bias [V]) of the LM head's output projection."""
    return self.lm_head.output(self.embed.token_embedding)

  def lm_logits(self, ids, image_tokens):
    """[B, L, V] next-token logits (evaluation and tests; training uses the fused loss)."""
    hidden = self.decoder_hidden(ids, image_tokens)
    kernel, bias = self.lm_output()
    return (jnp.dot(hidden, kernel.astype(hidden.dtype)) + bias.astype(hidden.dtype)).astype(
        jnp.float32)

  def decode_step(self, ids, position, context=None):
    """Decode mode: logits [B, T, V] of `ids` at `position`...; the first call (context
    given, full length) sizes the caches and stores the image keys/values."""
    x = self.embed(ids, position)
    x = self.text_layers(x, None, context, mode="causal")
    kernel, bias = self.lm_output()
    hidden = self.lm_head(x)
    return (jnp.dot(hidden, kernel.astype(hidden.dtype)) + bias.astype(hidden.dtype)).astype(
        jnp.float32)

  def logit_scale(self):
    return jnp.exp(self.log_logit_scale)

  def init_all(self, images, tokens):
    """Touches every parameter once (initialisation)."""
    image_tokens = self.image_tokens(images)
    return (self.image_embedding(image_tokens), self.text_embedding(tokens),
            self.itm_logits(tokens, image_tokens), self.lm_logits(tokens, image_tokens),
            self.logit_scale())


def from_config(m, decode=False):
  """Blip from `config.model`: one stack of text_depth layers of width text_width; the ViT
  in BLIP's layout (patch bias, no LayerNorm before the encoder). decode=True: the same
  weights with KV caches, for models/decoding.py."""
  return Blip(vision=fusion.vision_dims(m), text=fusion.text_dims(m, decode),
              vocab_size=m.vocab_size, context_length=m.context_length,
              text_width=m.text_width, text_depth=m.text_depth, embed_dim=m.embed_dim,
              dropout_rate=m.dropout, tied=m.tie_word_embeddings,
              logit_scale_init=m.logit_scale_init, dtype=jnp.dtype(m.dtype), decode=decode)
