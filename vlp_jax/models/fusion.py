"""BERT-style text layers and heads shared by the fusion families (ALBEF, BLIP).

These models read text with a bidirectional encoder and ground it in the image with
cross-attention, in the layout of BERT (Devlin et al. 2019) that their text towers start
from: post-LayerNorm sublayers, x = LN(x + dropout(f(x))), epsilon 1e-12. A `TextLayer`
composes up to three sublayers: self-attention (bidirectional and/or causal, each with its
own weights), cross-attention to image tokens (run only when there is a context) and an
MLP. A `TextStack` runs `depth` of them, unrolled or under nn.scan with the dropout RNG
split per layer. ALBEF stacks text layers without cross-attention under fusion layers with
it; BLIP has one stack whose layers hold a bidirectional (encoder) and a causal (decoder)
self-attention and share every other weight between the two.

Dropout is applied where BERT applies it to hidden states (embeddings, each sublayer's
output); attention probabilities are not dropped (fused attention kernels have no dropout).
"""
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax.losses import cross_entropy
from vlp_jax.models import layers

PAD_ID = 0
BERT_EPS = 1e-12
# Self-attention kinds -> (attention, LayerNorm) parameter names.
SELF_ATTENTION = {"bidirectional": ("self_attn", "ln_self"), "causal": ("causal_attn", "ln_causal")}


def padding_mask(tokens):
  """[B, 1, 1, L] True at the keys a query may attend to (not padding)."""
  return (tokens != PAD_ID)[:, None, None, :]


def normalize(x):
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


class SharedContext(NamedTuple):
  """A cross-attention context of image tokens shared by several text rows: text row i
  attends to tokens[rows[i]], each image's keys and values projected once (BLIP's ITM
  reads each image with its caption, a hard-negative caption and as a negative image)."""
  tokens: Any  # [b, N, W]
  rows: Any  # [B] int in [0, b)


class TextLayer(nn.Module):
  """One post-LayerNorm layer: self-attention of kind `mode`, cross-attention, MLP.

  `self_attention`: the self-attention sublayers this layer holds (their weights exist
  even when another mode runs); `cross_attention`: it holds a cross-attention sublayer,
  which runs when `context` is given (in decode mode, after the first call, from the
  cached image keys and values). Returns (x, None) for nn.scan.
  """
  num_heads: int
  mlp_dim: int
  cross_attention: bool = False
  self_attention: tuple = ("bidirectional",)
  mode: str = "bidirectional"
  activation: str = "gelu"
  dropout_rate: float = 0.0
  deterministic: bool = True
  dtype: Any = jnp.float32
  decode: bool = False
  first_only: bool = False

  @nn.compact
  def __call__(self, x, mask=None, context=None, context_mask=None):
    """`first_only`: every row still serves as a key and value of the self-attention, but
    only the first position is computed onwards (returns [B, 1, W]): what a stack whose
    first output alone is read needs of its last layer. `context_mask` [B, 1, 1, N]: the
    context positions cross-attention may read (None: all; mPLUG's padded text)."""
    if self.mode not in self.self_attention:
      raise ValueError(f"TextLayer has self-attention {self.self_attention}, not {self.mode!r}")
    causal = self.mode == "causal"
    decode = self.decode and causal
    attn, norm = SELF_ATTENTION[self.mode]
    x = layers.constrain(x, ("batch", "length", "act_embed"))
    query_rows = None
    if self.first_only and not decode:
      query_rows = jnp.zeros((x.shape[0],), jnp.int32)
    y = layers.Attention(self.num_heads, self.dtype, causal=causal, decode=decode, name=attn)(
        x, mask=mask, query_rows=query_rows)
    if query_rows is not None:
      x = x[:, :1]
    x = self._add_norm(x, y, norm)
    if self.cross_attention and (context is not None or decode):
      kv, kv_rows = context if isinstance(context, SharedContext) else (context, None)
      y = layers.Attention(self.num_heads, self.dtype, decode=decode, cross=True,
                           name="cross_attn")(x, kv=kv, mask=context_mask, kv_rows=kv_rows)
      x = self._add_norm(x, y, "ln_cross")
    y = layers.Mlp(self.mlp_dim, self.activation, self.dtype, name="mlp")(x)
    x = self._add_norm(x, y, "ln_mlp")
    return layers.constrain(x, ("batch", "length", "act_embed")), None

  def _add_norm(self, x, y, name):
    y = nn.Dropout(self.dropout_rate)(y, deterministic=self.deterministic)
    return layers.layer_norm(self.dtype, name, BERT_EPS)(x + y)


class TextStack(nn.Module):
  """`depth` TextLayers; `mode` picks the self-attention each call runs (see TextLayer).

  Under `scan` the parameters get a leading "layers" axis and each layer draws its own
  dropout mask (split_rngs); KV caches (decode) are stacked like the parameters.
  """
  depth: int
  num_heads: int
  mlp_dim: int
  cross_attention: bool = False
  self_attention: tuple = ("bidirectional",)
  activation: str = "gelu"
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  remat: bool = False
  remat_policy: str = "full"
  scan: bool = False
  decode: bool = False

  @nn.compact
  def __call__(self, x, mask=None, context=None, mode="bidirectional", deterministic=True,
               first_only=False, context_mask=None):
    """[B, L, W]; `first_only`: [B, 1, W], the first position only, whose last layer then
    skips the other positions' queries, cross-attention and MLP (unrolled stacks; a scanned
    one runs every layer in full and returns the first position)."""
    layer_cls = TextLayer
    if self.remat and not self.decode:
      layer_cls = nn.remat(TextLayer, prevent_cse=not self.scan,
                           policy=layers.remat_policy(self.remat_policy))
    kwargs = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                  cross_attention=self.cross_attention, self_attention=self.self_attention,
                  mode=mode, activation=self.activation, dropout_rate=self.dropout_rate,
                  deterministic=deterministic, dtype=self.dtype, decode=self.decode)
    if self.scan:
      stack = nn.scan(layer_cls, variable_axes={"params": 0, "cache": 0},
                      split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast,
                      length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(name="layers", **kwargs)(x, mask, context, context_mask)
      return x[:, :1] if first_only else x
    for i in range(self.depth):
      last = first_only and i == self.depth - 1
      x, _ = layer_cls(name=f"layer_{i}", first_only=last, **kwargs)(x, mask, context,
                                                                     context_mask)
    return x


class TextEmbedding(nn.Module):
  """Token + learned position embeddings, LayerNorm, dropout (BERT without token types)."""
  vocab_size: int
  context_length: int
  width: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    self.token_embedding = layers.param(self, "token_embedding", ("vocab", "embed"),
                                        nn.initializers.normal(0.02),
                                        (self.vocab_size, self.width))
    self.pos_embedding = layers.param(self, "pos_embedding", (None, "act_embed"),
                                      nn.initializers.normal(0.02),
                                      (self.context_length, self.width))
    self.ln = layers.layer_norm(self.dtype, epsilon=BERT_EPS)
    self.dropout = nn.Dropout(self.dropout_rate)

  def __call__(self, ids, position=0, deterministic=True):
    x = jnp.take(self.token_embedding, ids, axis=0).astype(self.dtype)
    pos = jax.lax.dynamic_slice_in_dim(self.pos_embedding, position, ids.shape[1])
    return self.dropout(self.ln(x + pos.astype(self.dtype)), deterministic=deterministic)


class VocabularyHead(nn.Module):
  """BERT's prediction head: dense + activation + LayerNorm, then the output projection
  (the token embedding's transpose when `tied`, else its own kernel) and a bias.

  `loss` never materialises the [B, L, V] logits (losses/cross_entropy.py); a teacher's
  head (momentum distillation) mixes its softmax into the targets.
  """
  vocab_size: int
  activation: str = "gelu"
  tied: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    """The transformed hidden states [B, L, W] that the output projection reads."""
    width = x.shape[-1]
    x = nn.Dense(width, dtype=self.dtype, name="transform",
                 kernel_init=layers.dense_init(("embed", "mlp")),
                 bias_init=layers.zeros_init(("mlp",)))(x)
    x = layers.activation_fn(self.activation)(x)
    return layers.layer_norm(self.dtype, "ln", BERT_EPS)(x)

  @nn.compact
  def output(self, embedding):
    """(kernel [W, V], bias [V]) of the output projection; `embedding` [V, W] when tied."""
    bias = layers.param(self, "bias", ("vocab",), nn.initializers.zeros_init(),
                        (self.vocab_size,))
    if self.tied:
      return embedding.T, bias
    width = embedding.shape[1]
    kernel = layers.param(self, "kernel", ("embed", "vocab"), nn.initializers.normal(0.02),
                          (width, self.vocab_size))
    return kernel, bias


def vocabulary_loss(hidden, kernel, bias, labels, weights, teacher=None, teacher_weight=0.0):
  """(sum of weights * nll, nll [B, L], correct [B, L]) of the head's logits, fused and
  chunked; `teacher` = (hidden, kernel, bias) of a momentum head mixed in at teacher_weight."""
  dtype = hidden.dtype
  return cross_entropy.fused_cross_entropy(hidden, kernel.astype(dtype), bias.astype(dtype),
                                           labels, weights, teacher=teacher,
                                           teacher_weight=teacher_weight)


class ImageEncoder(nn.Module):
  """A ViT with a class token (DeiT/BLIP layout by default) and the projection of its class
  token to the joint space (with bias, as ALBEF and BLIP)."""
  vision: dict
  embed_dim: int
  dtype: Any = jnp.float32

  def setup(self):
    from vlp_jax.models.vit import VisionTransformer  # pylint: disable=g-import-not-at-top
    self.tower = VisionTransformer(pool="cls", dtype=self.dtype, **self.vision)
    self.proj = nn.Dense(self.embed_dim, dtype=self.dtype,
                         kernel_init=layers.dense_init(("embed", "joint")),
                         bias_init=layers.zeros_init(("joint",)))

  def tokens(self, images):
    """All output tokens [B, 1 + N, W], the class token first."""
    return self.tower(images)[1]

  def embedding(self, tokens):
    """L2-normalised joint-space embedding [B, E] from the class token."""
    return normalize(self.proj(tokens[:, 0]))


class AlignFuseModel(nn.Module):
  """What ALBEF and BLIP modules share: the image encoder and its projection, the token
  embedding, the text projection, the ITM head and the logit scale (`setup_shared`, called
  first by each subclass's setup), and the image-side methods."""
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

  def setup_shared(self):
    self.image = ImageEncoder(self.vision, self.embed_dim, dtype=self.dtype)
    self.embed = TextEmbedding(self.vocab_size, self.context_length, self.text_width,
                               self.dropout_rate, self.dtype)
    self.text_proj = nn.Dense(self.embed_dim, dtype=self.dtype,
                              kernel_init=layers.dense_init(("embed", "joint")),
                              bias_init=layers.zeros_init(("joint",)))
    self.itm_head = nn.Dense(2, dtype=self.dtype, kernel_init=layers.dense_init(("embed", None)),
                             bias_init=layers.zeros_init((None,)))
    self.log_logit_scale = self.param(
        "log_logit_scale",
        nn.with_logical_partitioning(nn.initializers.constant(math.log(self.logit_scale_init)),
                                     ()), (), jnp.float32)

  def image_tokens(self, images):
    """All image tokens [B, 1 + N, W]: what fusion and matching attend to."""
    return self.image.tokens(images)

  def image_embedding(self, tokens):
    return self.image.embedding(tokens)

  def encode_image(self, images):
    return self.image.embedding(self.image.tokens(images))

  def logit_scale(self):
    return jnp.exp(self.log_logit_scale)

  def vocabulary_logits(self, hidden, kernel, bias):
    """[B, L, V] float32 logits of a vocabulary head's input (evaluation and tests)."""
    return (jnp.dot(hidden, kernel.astype(hidden.dtype)) + bias.astype(hidden.dtype)).astype(
        jnp.float32)


def with_prefix(tokens, prefix_id, eos_id):
  """[prefix, pieces..., EOS, pad] from the tokenizer's [pieces..., EOS, pad], same length:
  the first id of a BERT-style input says what reads it ([CLS], [ENC], [DEC]). A caption
  that filled the row keeps EOS last."""
  b, length = tokens.shape
  shifted = jnp.concatenate([jnp.full((b, 1), prefix_id, tokens.dtype), tokens[:, :-1]], 1)
  full = tokens[:, -1] != PAD_ID
  last = jnp.where(full, eos_id, shifted[:, -1])
  return shifted.at[:, -1].set(last)


def text_dims(m, decode=False, **extra):
  """TextStack arguments from `config.model` (text_* fields), for the fusion models."""
  return dict(num_heads=m.text_heads, mlp_dim=int(m.text_width * m.text_mlp_ratio),
              activation=m.activation, dropout_rate=m.dropout, dtype=jnp.dtype(m.dtype),
              remat=m.remat and not decode, remat_policy=m.remat_policy, scan=m.scan,
              decode=decode, **extra)


def shared_fields(m, decode=False):
  """AlignFuseModel's fields from `config.model`."""
  return dict(vision=vision_dims(m), text=text_dims(m, decode), vocab_size=m.vocab_size,
              context_length=m.context_length, text_width=m.text_width,
              text_depth=m.text_depth, embed_dim=m.embed_dim, dropout_rate=m.dropout,
              tied=m.tie_word_embeddings, logit_scale_init=m.logit_scale_init,
              dtype=jnp.dtype(m.dtype))


def vision_dims(m):
  """ImageEncoder's `vision` from `config.model` (vision_* fields), DeiT/BLIP layout."""
  return dict(patch_size=m.patch_size, width=m.vision_width, depth=m.vision_depth,
              num_heads=m.vision_heads, mlp_dim=int(m.vision_width * m.vision_mlp_ratio),
              activation=m.activation, remat=m.remat, remat_policy=m.remat_policy,
              scan=m.scan, patch_bias=True, pre_norm=False)

