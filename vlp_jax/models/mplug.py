"""mPLUG (Li et al. 2022): a ViT, a BERT-style text encoder, the cross-modal skip-connected
fusion network and a decoder (sec. 3.2).

N blocks, each S asymmetric co-attention layers, which update the text only (self-
attention, cross-attention to the image tokens, MLP), then one connected-attention layer,
self-attention and MLP over the image and text tokens together, which updates both. The
image tokens skip the S asymmetric layers of every block, which is where the speed on long
visual sequences comes from: only N of the N * (S + 1) layers run over them.

Both kinds are the post-LayerNorm BERT layers of models/fusion.py (`TextLayer`): the
asymmetric layer with cross-attention, the connected one over [image; text]. Image and
text tokens must have the same width: a ViT wider than the text is projected first (a
linear layer and LayerNorm, as the released code does for ViT-L).

The decoder (its own embeddings and BERT layers with causal self-attention) cross-attends
to the fusion network's image and text outputs together, padding masked: for the prefix
LM the text is a caption's beginning, for VQA the question, for captioning [CLS] alone.
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlp_jax.models import albef
from vlp_jax.models import fusion
from vlp_jax.models import layers


class SkipConnectedFusion(nn.Module):
  """(image tokens [B, N_img, W], text tokens [B, T, W]) after `num_blocks` blocks of
  `asymmetric_layers` text-only layers and one connected layer."""
  num_blocks: int
  asymmetric_layers: int
  num_heads: int
  mlp_dim: int
  activation: str = "gelu"
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  remat_policy: str = "full"

  @nn.compact
  def __call__(self, image, text, ids, deterministic=True):
    """`ids` [B, T]: the text's token ids (padding 0 is never attended)."""
    layer = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, activation=self.activation,
                 dropout_rate=self.dropout_rate, deterministic=deterministic, dtype=self.dtype)
    text_layer = fusion.TextLayer
    if self.remat:
      text_layer = nn.remat(fusion.TextLayer, policy=layers.remat_policy(self.remat_policy))
    text_mask = fusion.padding_mask(ids)
    n = image.shape[1]
    joint_mask = context_mask(image, ids)
    for block in range(self.num_blocks):
      for i in range(self.asymmetric_layers):
        text, _ = text_layer(cross_attention=True, name=f"block_{block}_asymmetric_{i}",
                             **layer)(text, text_mask, image)
      x, _ = text_layer(name=f"block_{block}_connected", **layer)(
          jnp.concatenate([image, text], axis=1), joint_mask)
      image, text = x[:, :n], x[:, n:]
    return image, text


def context_mask(image, ids):
  """[B, 1, 1, N + T] keys of [image; text] that may be attended: every image token, the
  text's non-padding (the connected layer's self-attention, the decoder's context)."""
  keys = jnp.concatenate([jnp.ones(image.shape[:2], bool), ids != fusion.PAD_ID], axis=1)
  return keys[:, None, None, :]


class Mplug(albef.TextEncoderHeads, fusion.AlignFuseModel):
  """ITC on the unimodal [CLS] outputs; ITM and MLM on the fusion network's text outputs
  (ALBEF's heads); the prefix LM and answers from the decoder over the fusion outputs."""
  fusion_s: int = 1
  fusion_n: int = 2
  decoder_depth: int = 2
  decode: bool = False

  def setup(self):
    self.setup_shared()
    text = {k: v for k, v in self.text.items() if k not in ("scan", "decode")}
    self.text_layers = fusion.TextStack(self.text_depth, **self.text)
    if self.vision["width"] != self.text_width:
      self.image_to_text = nn.Dense(self.text_width, dtype=self.dtype,
                                    kernel_init=layers.dense_init(("embed", "mlp")),
                                    bias_init=layers.zeros_init(("mlp",)))
      self.image_to_text_ln = layers.layer_norm(self.dtype, epsilon=fusion.BERT_EPS)
    self.fusion = SkipConnectedFusion(
        self.fusion_n, self.fusion_s, text["num_heads"], text["mlp_dim"],
        text["activation"], text["dropout_rate"], self.dtype, text["remat"],
        text["remat_policy"])
    self.mlm_head = fusion.VocabularyHead(self.vocab_size, text["activation"], self.tied,
                                          dtype=self.dtype)
    self.decoder_embed = fusion.TextEmbedding(self.vocab_size, self.context_length,
                                              self.text_width, self.dropout_rate, self.dtype)
    self.decoder = fusion.TextStack(self.decoder_depth, cross_attention=True,
                                    self_attention=("causal",), **self.text)
    self.lm_head = fusion.VocabularyHead(self.vocab_size, text["activation"], self.tied,
                                         dtype=self.dtype)

  # ---- fusion (ITM, MLM) and the decoder's context ----------------------------------------

  def fuse(self, hidden, tokens, image_tokens, deterministic=True):
    """(image outputs [B, N, W], text outputs [B, T, W]) of the skip-connected network over
    the text encoder's `hidden` of `tokens` and the ViT's `image_tokens`."""
    image = image_tokens
    if self.vision["width"] != self.text_width:
      image = self.image_to_text_ln(self.image_to_text(image))
    return self.fusion(image, hidden, tokens, deterministic=deterministic)

  def context(self, tokens, images, deterministic=True):
    """(decoder context [B, N + T, W], its mask) of [CLS]-first `tokens` about `images`."""
    image_tokens = self.image_tokens(images)
    hidden = self.text_hidden(tokens, deterministic)
    image_out, text_out = self.fuse(hidden, tokens, image_tokens, deterministic)
    return jnp.concatenate([image_out, text_out], 1), context_mask(image_out, tokens)

  # ---- decoder (prefix LM, captions, answers) ----------------------------------------------

  def decoder_hidden(self, ids, context, mask, deterministic=True):
    """The LM head's input [B, L, W] for [DEC]-first ids reading `context` where `mask`."""
    x = self.decoder_embed(ids, deterministic=deterministic)
    x = self.decoder(x, fusion.padding_mask(ids), context, mode="causal",
                     deterministic=deterministic, context_mask=mask)
    return self.lm_head(x)

  def lm_output(self):
    """(kernel [W, V], bias [V]) of the decoder's output projection."""
    return self.lm_head.output(self.decoder_embed.token_embedding)

  def lm_logits(self, ids, context, mask):
    """[B, L, V] next-token logits (evaluation and tests; training uses the fused loss)."""
    return self.vocabulary_logits(self.decoder_hidden(ids, context, mask), *self.lm_output())

  def decode_step(self, ids, position, context=None, mask=None):
    """Decode mode: logits [B, T, V] of `ids` at `position`...; the first call (context
    and its mask given, full length) sizes the caches and stores the context's keys."""
    x = self.decoder_embed(ids, position)
    x = self.decoder(x, None, context, mode="causal", context_mask=mask)
    return self.vocabulary_logits(self.lm_head(x), *self.lm_output())

  def init_all(self, images, tokens):
    """Touches every parameter once (initialisation)."""
    image_tokens = self.image_tokens(images)
    hidden = self.text_hidden(tokens)
    image_out, text_out = self.fuse(hidden, tokens, image_tokens)
    context = jnp.concatenate([image_out, text_out], 1)
    return (self.image_embedding(image_tokens), self.text_embedding(hidden),
            self.itm_logits(text_out), self.mlm_head_io(text_out),
            self.lm_logits(tokens, context, context_mask(image_out, tokens)),
            self.logit_scale())


def from_config(m, decode=False):
  """Mplug from `config.model`: text_depth encoder layers, fusion_n blocks of fusion_s
  asymmetric + 1 connected layer and decoder_depth decoder layers, all of width
  text_width; the ViT in the fusion families' layout. decode=True: KV caches (decoding)."""
  return Mplug(fusion_s=m.fusion_s, fusion_n=m.fusion_n, decoder_depth=m.decoder_depth,
               decode=decode, **fusion.shared_fields(m, decode))
