"""CoCa: a ViT, two attentional poolers and a text decoder in a unimodal and a multimodal half.

The unimodal half (causal self-attention only) reads the caption with a CLS token appended;
the CLS output, normalised and projected, is the text embedding, so it never sees the
image. The multimodal half continues from the unimodal outputs with causal self-attention
and cross-attention to the captioning pooler's image queries, and predicts the next token.
One pass serves both losses (Yu et al. 2022, "CoCa: Contrastive Captioners").

Start symbol: the tokenizer has no BOS, so the decoder reads [EOS, t_1, ..., t_{L-1}] and
predicts [t_1, ..., t_L], the caption as the tokenizer writes it (pieces, EOS, pad 0). EOS
doubles as the start symbol (as <|endoftext|> does in GPT-2): no id is reserved, and as t_L
is always EOS or padding, the shifted input still holds every piece of the caption.
"""
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax.losses import cross_entropy
from vlp_jax.models import layers
from vlp_jax.models.vit import VisionTransformer

PAD_ID = 0


class Pooler(nn.Module):
  """CoCa's attentional pooler: `num_queries` learned queries attend to the image tokens
  (one attention layer, no MLP), then LayerNorm; projected to `embed_dim` when set."""
  num_heads: int
  num_queries: int
  embed_dim: Optional[int] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    x = layers.AttentionPool(self.num_heads, mlp_dim=0, num_queries=self.num_queries,
                             dtype=self.dtype, name="pool")(tokens)
    x = layers.layer_norm(self.dtype, "ln")(x)
    if self.embed_dim:
      x = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype, name="proj",
                   kernel_init=layers.dense_init(("embed", "joint"), x.shape[-1] ** -0.5))(x)
    return x


class VocabHead(nn.Module):
  """The untied output projection [W, V] (+ bias). `loss` never materialises the [B, L, V]
  logits: with a 32k-64k vocabulary they and their gradient would be the step's largest
  tensors (cross_entropy.fused_cross_entropy computes them a few positions at a time,
  padding skipped, each device on its own rows and vocabulary slice of the current mesh)."""
  width: int
  vocab_size: int
  dtype: Any = jnp.float32

  def setup(self):
    self.kernel = layers.param(self, "kernel", ("embed", "vocab"),
                               nn.initializers.normal(self.width ** -0.5),
                               (self.width, self.vocab_size))
    self.bias = layers.param(self, "bias", ("vocab",), nn.initializers.zeros_init(),
                             (self.vocab_size,))

  def __call__(self, x):
    return jnp.dot(x, self.kernel.astype(self.dtype)) + self.bias.astype(self.dtype)

  def loss(self, x, labels, weights):
    """(sum of weights * nll, nll [B, L], correct [B, L]); only the sum has a gradient."""
    return cross_entropy.fused_cross_entropy(x, self.kernel.astype(self.dtype),
                                             self.bias.astype(self.dtype), labels, weights)


class TextDecoder(nn.Module):
  """Token + position embeddings, unimodal and multimodal transformer halves, untied output.

  `decode=True` builds the same weights with KV caches for `step` (models/decoding.py).
  """
  vocab_size: int
  context_length: int
  width: int
  unimodal_depth: int
  multimodal_depth: int
  num_heads: int
  mlp_dim: int
  start_id: int
  embed_dim: int
  activation: str = "gelu"
  cross_layout: str = "paper"
  dtype: Any = jnp.float32
  remat: bool = False
  remat_policy: str = "full"
  scan: bool = False
  decode: bool = False

  def setup(self):
    w = self.width
    self.token_embedding, self.pos_embedding = layers.decoder_embeddings(
        self, self.vocab_size, w, self.context_length)
    self.cls = layers.param(self, "cls", ("act_embed",), nn.initializers.normal(w ** -0.5), (w,))
    common = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, causal=True,
                  activation=self.activation, dtype=self.dtype, remat=self.remat,
                  remat_policy=self.remat_policy, scan=self.scan, decode=self.decode)
    self.unimodal = layers.Transformer(self.unimodal_depth, **common)
    self.multimodal = layers.Transformer(self.multimodal_depth, cross_attention=True,
                                         cross_layout=self.cross_layout, **common)
    self.ln_cls = layers.layer_norm(self.dtype)
    self.text_proj = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype,
                              kernel_init=layers.dense_init(("embed", "joint"), w ** -0.5))
    self.ln_final = layers.layer_norm(self.dtype)
    self.output = VocabHead(w, self.vocab_size, dtype=self.dtype)

  def shift(self, tokens):
    """Decoder input: the start symbol, then the caption without its last token."""
    return layers.shift_right(tokens, self.start_id)

  def embed(self, ids, position=0):
    x = jnp.take(self.token_embedding, ids, axis=0).astype(self.dtype)
    pos = jax.lax.dynamic_slice_in_dim(self.pos_embedding, position, ids.shape[1])
    return x + pos.astype(self.dtype)

  def unimodal_tokens(self, tokens):
    """[B, L+1, W]: the unimodal half on the shifted caption with a CLS token appended.

    The CLS row attends to every non-padding token (and itself); the other rows are causal
    and, the CLS being last, never see it.
    """
    ids = self.shift(tokens)
    x = self.embed(ids)
    b, length = ids.shape
    cls = jnp.broadcast_to(self.cls.astype(x.dtype), (b, 1, self.width))
    x = jnp.concatenate([x, cls], axis=1)
    valid = jnp.concatenate([ids != PAD_ID, jnp.ones((b, 1), bool)], axis=1)
    cls_row = (jnp.arange(length + 1) == length)[None, :, None]
    mask = jnp.where(cls_row, valid[:, None, :], True)[:, None]
    return self.unimodal(x, mask=mask)

  def text_embedding(self, unimodal):
    """Projected CLS output [B, E] (not normalised)."""
    return self.text_proj(self.ln_cls(unimodal[:, -1]))

  def hidden(self, unimodal, context):
    """[B, T, W]: what the vocabulary head reads, from unimodal outputs (no CLS) and the
    image context."""
    return self.ln_final(self.multimodal(unimodal, context))

  def logits(self, unimodal, context):
    """Next-token logits [B, T, V]."""
    return self.output(self.hidden(unimodal, context))

  def __call__(self, tokens, context):
    """(text embedding [B, E], head input [B, L, W]) from one unimodal pass; the
    captioning loss applies the head chunk by chunk (`caption_loss`)."""
    x = self.unimodal_tokens(tokens)
    return self.text_embedding(x), self.hidden(x[:, :-1], context)

  def caption_loss(self, hidden, tokens):
    """cross_entropy.fused_cross_entropy of the head on `hidden`, padding masked."""
    return self.output.loss(hidden, tokens, (tokens != PAD_ID).astype(jnp.float32))

  def step(self, ids, position, context=None):
    """Decode mode: logits [B, T, V] of `ids` placed at `position`, ... onwards.

    The first call (context given, ids the full length) sizes the caches and stores the
    image keys/values; each later call (context None) appends one position.
    """
    return self.logits(self.unimodal(self.embed(ids, position)), context)


class Coca(nn.Module):
  """Image and text embeddings (L2-normalised), the captioning loss and the logit scale.

  `pooling="attention"` (the paper): a ViT without class token and two attentional
  poolers, 1 query for the contrastive embedding and `num_decoder_queries` for the decoder.
  `pooling="cls"` (open_clip's CoCa without attentional pooling): CLIP's ViT, its class
  token is the contrastive embedding and the decoder attends to the patch tokens.
  """
  vision: dict
  decoder: dict
  embed_dim: int
  num_decoder_queries: int
  pooling: str = "attention"
  logit_scale_init: float = 1 / 0.07
  dtype: Any = jnp.float32
  decode: bool = False

  def setup(self):
    heads = self.vision["num_heads"]
    if self.pooling == "cls":
      self.image_tower = VisionTransformer(pool="cls", embed_dim=self.embed_dim,
                                           dtype=self.dtype, **self.vision)
    elif self.pooling == "attention":
      self.image_tower = VisionTransformer(pool="none", dtype=self.dtype, **self.vision)
      self.contrastive_pooler = Pooler(heads, 1, self.embed_dim, dtype=self.dtype)
      self.caption_pooler = Pooler(heads, self.num_decoder_queries, dtype=self.dtype)
    else:
      raise ValueError(f"Unknown CoCa pooling {self.pooling!r} (attention or cls)")
    self.text_decoder = TextDecoder(embed_dim=self.embed_dim, dtype=self.dtype,
                                    decode=self.decode, **self.decoder)
    self.log_logit_scale = self.param(
        "log_logit_scale",
        nn.with_logical_partitioning(nn.initializers.constant(math.log(self.logit_scale_init)),
                                     ()), (), jnp.float32)

  def image_features(self, images):
    """(contrastive embedding [B, E], not normalised; decoder context [B, N, W]).

    Images [B, H, W, 3]; for a video [B, T, H, W, 3] (attention pooling only) both
    poolers read all T*N space-time tokens, each frame through the same image encoder.
    """
    if self.pooling == "cls":
      if images.ndim == 5:
        raise ValueError("Video input needs model.coca_pooling='attention' (one pooler over "
                         "all frames' tokens); 'cls' has one class token per frame")
      pooled, tokens = self.image_tower(images)
      return pooled, tokens[:, 1:]
    x = self._tokens(images)
    return self.contrastive_pooler(x)[:, 0], self.caption_pooler(x)

  def _tokens(self, images):
    """Attention pooling's input: ViT tokens [B, N, W], or a video's T*N tokens."""
    if images.ndim == 5:
      b, t = images.shape[:2]
      x = self.image_tower(images.reshape((b * t,) + images.shape[2:]))[1]
      return x.reshape(b, t * x.shape[1], x.shape[2])
    return self.image_tower(images)[1]

  def encode_image(self, images):
    """Contrastive embedding of images, or of videos with one pooler over space-time tokens."""
    if self.pooling == "cls":
      return _normalize(self.image_features(images)[0])
    return _normalize(self.contrastive_pooler(self._tokens(images))[:, 0])

  def encode_video_frames(self, videos):
    """Zero-shot video embedding as in the paper's retrieval: the mean of frame embeddings."""
    b, t = videos.shape[:2]
    frames = self.encode_image(videos.reshape((b * t,) + videos.shape[2:]))
    return _normalize(frames.reshape(b, t, -1).mean(axis=1))

  def caption_context(self, images):
    """[B, N, W]: what the multimodal half cross-attends to."""
    if self.pooling == "cls":
      return self.image_features(images)[1]
    return self.caption_pooler(self._tokens(images))

  def encode_text(self, tokens):
    return _normalize(self.text_decoder.text_embedding(self.text_decoder.unimodal_tokens(tokens)))

  def logit_scale(self):
    # Not capped here: a cap in the forward pass zeroes the gradient above it, and Adam's
    # momentum then pushes the parameter on for good. The family clamps the parameter
    # after each update instead (families/clip.py clamp_logit_scale), as OpenAI does.
    return jnp.exp(self.log_logit_scale)

  def decode_step(self, ids, position, context=None):
    return self.text_decoder.step(ids, position, context)

  def logits(self, images, tokens):
    """[B, L, V] next-token logits predicting `tokens` (evaluation and tests; training
    uses the fused loss of __call__)."""
    txt_unimodal = self.text_decoder.unimodal_tokens(tokens)
    hidden = self.text_decoder.hidden(txt_unimodal[:, :-1], self.caption_context(images))
    return self.text_decoder.output(hidden)

  def weighted_loss(self, images, tokens, weights):
    """(sum of weights * nll, nll [B, L], correct [B, L]) of predicting `tokens` with
    per-position weights (VQA: a question then its answer, the answer weighed): the
    decoder alone, no CLS token and no text embedding."""
    decoder = self.text_decoder
    unimodal = decoder.unimodal(decoder.embed(decoder.shift(tokens)))
    hidden = decoder.hidden(unimodal, self.caption_context(images))
    return decoder.output.loss(hidden, tokens, weights)

  def __call__(self, images, tokens):
    """(image embedding, text embedding, caption, logit scale), caption being
    (sum of token nll, nll [B, L], correct [B, L]) of predicting `tokens`, padding masked;
    only the sum carries a gradient."""
    img, context = self.image_features(images)
    txt, hidden = self.text_decoder(tokens, context)
    caption = self.text_decoder.caption_loss(hidden, tokens)
    return _normalize(img), _normalize(txt), caption, self.logit_scale()


def _normalize(x):
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


def from_config(m, eos_id, decode=False):
  """Builds Coca from `config.model`: text_depth unimodal + multimodal_depth multimodal
  layers of width text_width; EOS (`eos_id`) is the decoder's start symbol. `decode=True`:
  the same weights with KV caches and no remat, for models/decoding.py."""
  remat = m.remat and not decode
  vision = dict(patch_size=m.patch_size, width=m.vision_width, depth=m.vision_depth,
                num_heads=m.vision_heads, mlp_dim=int(m.vision_width * m.vision_mlp_ratio),
                activation=m.activation, remat=remat, remat_policy=m.remat_policy,
                scan=m.scan)
  decoder = dict(vocab_size=m.vocab_size, context_length=m.context_length, width=m.text_width,
                 unimodal_depth=m.text_depth, multimodal_depth=m.multimodal_depth,
                 num_heads=m.text_heads, mlp_dim=int(m.text_width * m.text_mlp_ratio),
                 start_id=eos_id, activation=m.activation, cross_layout=m.multimodal_layer,
                 remat=remat, remat_policy=m.remat_policy, scan=m.scan)
  return Coca(vision=vision, decoder=decoder, embed_dim=m.embed_dim,
              num_decoder_queries=m.num_decoder_queries, pooling=m.coca_pooling,
              logit_scale_init=m.logit_scale_init,
              dtype=jnp.dtype(m.dtype), decode=decode)
