"""BLIP-2 (Li et al. 2023): a Q-Former between a frozen image encoder and a frozen LM.

Stage 1 (`QFormerPretrainer`): the Q-Former learns to read the frozen image tokens with
three objectives over one set of weights (models/qformer.py masks): ITC between the
projected query outputs and the text [CLS] output, ITM on the query outputs with text and
queries seeing each other, ITG predicting the caption from the queries. Stage 2
(`QueryPromptedLM`): the Q-Former's query outputs, projected to the LM's width, are a soft
prompt in front of a frozen decoder LM (models/soft_prompt.py).

Both hold the frozen tower as `image_tower` (the tree of a CLIP, SigLIP or CoCa run's
tower, so `model.init_from` finds it by path) and the Q-Former as `qformer`, so stage 2
starts from stage 1's run the same way.
"""
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlp_jax.models import fusion, layers, qformer, soft_prompt, vit
from vlp_jax.models import language_model


class QFormerPretrainer(nn.Module):
  """Stage 1: frozen tower, LayerNorm, Q-Former, projections, ITM and ITG heads."""
  vision: Any  # a configured vit.VisionTransformer (a template, cloned as image_tower)
  qformer_args: dict
  embed_dim: int
  activation: str = "gelu"
  logit_scale_init: float = 1 / 0.07
  dtype: Any = jnp.float32

  def setup(self):
    self.image_tower = self.vision.clone()
    self.ln_vision = layers.layer_norm(self.dtype)
    self.qformer = qformer.QFormer(dtype=self.dtype, **self.qformer_args)
    joint = dict(dtype=self.dtype, kernel_init=layers.dense_init(("embed", "joint")),
                 bias_init=layers.zeros_init(("joint",)))
    self.vision_proj = nn.Dense(self.embed_dim, **joint)
    self.text_proj = nn.Dense(self.embed_dim, **joint)
    self.itm_head = nn.Dense(2, dtype=self.dtype, kernel_init=layers.dense_init(("embed", None)),
                             bias_init=layers.zeros_init((None,)))
    self.lm_head = fusion.VocabularyHead(self.qformer_args["vocab_size"], self.activation,
                                         dtype=self.dtype)
    self.log_logit_scale = self.param(
        "log_logit_scale",
        nn.with_logical_partitioning(nn.initializers.constant(math.log(self.logit_scale_init)),
                                     ()), (), jnp.float32)

  @property
  def num_queries(self):
    return self.qformer_args["num_queries"]

  def image_tokens(self, images):
    """The frozen tower's tokens [B, N, Wv], normalised by the trained ln_vision."""
    return self.ln_vision(self.image_tower(images)[1])

  def image_embeddings(self, image_tokens, deterministic=True):
    """[B, Q, E] L2-normalised projected query outputs: one embedding per query."""
    queries, _ = self.qformer(image=image_tokens, deterministic=deterministic)
    return fusion.normalize(self.vision_proj(queries))

  def encode_image(self, images):
    return self.image_embeddings(self.image_tokens(images))

  def text_embedding(self, ids, deterministic=True):
    """[B, E] L2-normalised projected [CLS] output of the text alone."""
    _, text = self.qformer(ids=ids, mask=qformer.masks(0, ids, "text"),
                                 deterministic=deterministic)
    return fusion.normalize(self.text_proj(text[:, 0]))

  def encode_text(self, ids):
    return self.text_embedding(ids)

  def itm_logits(self, ids, image_tokens, deterministic=True):
    """[B, 2] (no match, match): the ITM head on each query output, averaged."""
    queries, _ = self.qformer(image=image_tokens, ids=ids,
                                    mask=qformer.masks(self.num_queries, ids, "match"),
                                    deterministic=deterministic)
    return jnp.mean(self.itm_head(queries).astype(jnp.float32), axis=1)

  def generation_io(self, ids, image_tokens, deterministic=True):
    """(head hidden [B, T, W], kernel, bias) of ITG: the text rows of the queries-then-
    causal-text pass, for the fused vocabulary loss."""
    _, text = self.qformer(image=image_tokens, ids=ids,
                                 mask=qformer.masks(self.num_queries, ids, "generate"),
                                 deterministic=deterministic)
    kernel, bias = self.lm_head.output(self.qformer.token_embedding())
    return self.lm_head(text), kernel, bias

  def generation_logits(self, ids, image_tokens):
    """[B, T, V] ITG logits (evaluation and tests; training uses the fused loss)."""
    hidden, kernel, bias = self.generation_io(ids, image_tokens)
    return (jnp.dot(hidden, kernel.astype(hidden.dtype)) + bias).astype(jnp.float32)

  def logit_scale(self):
    return jnp.exp(self.log_logit_scale)

  def init_all(self, images, ids):
    """Touches every parameter once (initialisation)."""
    image_tokens = self.image_tokens(images)
    return (self.image_embeddings(image_tokens), self.text_embedding(ids),
            self.itm_logits(ids, image_tokens), self.generation_io(ids, image_tokens),
            self.logit_scale())


class QueryPromptedLM(soft_prompt.SoftPromptLM):
  """Stage 2: frozen tower -> ln_vision -> Q-Former queries -> linear -> frozen LM."""
  vision: Any = None
  qformer_args: dict = None

  def setup(self):
    self.image_tower = self.vision.clone()
    self.ln_vision = layers.layer_norm(self.dtype)
    self.qformer = qformer.QFormer(dtype=self.dtype, **self.qformer_args)
    self.lm_proj = nn.Dense(self.language_model.width, dtype=self.dtype,
                            kernel_init=layers.dense_init(("joint", "embed")),
                            bias_init=layers.zeros_init(("embed",)))
    self.lm = self.language_model.clone()

  def prefix(self, images, deterministic=True):
    tokens = self.ln_vision(self.image_tower(images)[1])
    queries, _ = self.qformer(image=tokens, deterministic=deterministic)
    return self.lm_proj(queries)


def qformer_fields(m):
  """QFormer arguments from `config.model` (text_* size, num_queries, dropout)."""
  return dict(num_queries=m.num_queries, width=m.text_width, depth=m.text_depth,
              num_heads=m.text_heads, mlp_dim=int(m.text_width * m.text_mlp_ratio),
              vocab_size=m.vocab_size, context_length=m.context_length,
              cross_every=m.cross_attention_every, activation=m.activation,
              dropout_rate=m.dropout)


def stage1_from_config(m):
  return QFormerPretrainer(vision=vit.feature_encoder(m), qformer_args=qformer_fields(m),
                           embed_dim=m.embed_dim, activation=m.activation,
                           logit_scale_init=m.logit_scale_init, dtype=jnp.dtype(m.dtype))


def stage2_from_config(m, decode=False):
  return QueryPromptedLM(vision=vit.feature_encoder(m), qformer_args=qformer_fields(m),
                         language_model=language_model.from_config(m, decode),
                         dtype=jnp.dtype(m.dtype))
