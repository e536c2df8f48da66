"""CLIP: a ViT and a causal text transformer projected into one space, with a learned temperature."""
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax.models.text import TextTransformer
from vlp_jax.models.vit import VisionTransformer


class Clip(nn.Module):
  """Two towers: L2-normalised image and text embeddings and the learned logit scale.

  The temperature is stored as log(scale), initialised to log(logit_scale_init) (CLIP:
  1/0.07; SigLIP: 10); the loss uses exp(log_scale), and the trainer clamps the parameter
  at log(model.logit_scale_max) after each update (CLIP: 100; 0: no cap). SigLIP adds a
  learned logit bias (init -10).
  """
  vision: dict
  text: dict
  embed_dim: int
  logit_scale_init: float = 1 / 0.07
  logit_bias_init: Optional[float] = None
  dtype: Any = jnp.float32

  def setup(self):
    self.image_tower = VisionTransformer(embed_dim=self.embed_dim, dtype=self.dtype,
                                         **self.vision)
    self.text_tower = TextTransformer(embed_dim=self.embed_dim, dtype=self.dtype, **self.text)
    self.log_logit_scale = self.param(
        "log_logit_scale",
        nn.with_logical_partitioning(nn.initializers.constant(math.log(self.logit_scale_init)),
                                     ()), (), jnp.float32)
    if self.logit_bias_init is not None:
      self.logit_bias = self.param(
          "logit_bias", nn.with_logical_partitioning(
              nn.initializers.constant(self.logit_bias_init), ()), (), jnp.float32)

  def encode_image(self, images):
    return normalize(self.image_tower(images)[0])

  def encode_text(self, tokens):
    return normalize(self.text_tower(tokens)[0])

  def logit_scale(self):
    # Not capped here: a cap in the forward pass zeroes the gradient above it, and Adam's
    # momentum then pushes the parameter on for good. The family clamps the parameter
    # after each update instead (families/clip.py clamp_logit_scale), as OpenAI does.
    return jnp.exp(self.log_logit_scale)

  def scalars(self):
    """(scale,) or (scale, bias): the loss's learned scalars."""
    if self.logit_bias_init is None:
      return (self.logit_scale(),)
    return self.logit_scale(), self.logit_bias

  def __call__(self, images, tokens):
    return self.encode_image(images), self.encode_text(tokens), self.scalars()


def normalize(x):
  """L2-normalised in float32 (the embedding every family's evaluators compare)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)


def _tower_options(m):
  # Only the pooled outputs are used: the last layer of each tower computes nothing else.
  return dict(activation=m.activation, remat=m.remat, remat_policy=m.remat_policy,
              scan=m.scan, pooled_only=True, layer_norm_eps=m.layer_norm_eps)


def image_tower_config(m):
  """VisionTransformer fields of a pooled image tower from `config.model` (CLIP, CatLIP)."""
  return dict(patch_size=m.patch_size, width=m.vision_width, depth=m.vision_depth,
              num_heads=m.vision_heads, mlp_dim=int(m.vision_width * m.vision_mlp_ratio),
              pool=m.image_pool, patch_bias=m.vision_patch_bias, pre_norm=m.vision_pre_norm,
              proj=m.vision_proj, **_tower_options(m))


def text_tower_config(m, eos_id):
  """TextTransformer fields of a pooled text tower from `config.model`."""
  return dict(vocab_size=m.vocab_size, context_length=m.context_length, width=m.text_width,
              depth=m.text_depth, num_heads=m.text_heads,
              mlp_dim=int(m.text_width * m.text_mlp_ratio), eos_id=eos_id,
              causal=m.text_causal, pool=m.text_pool, proj_bias=m.text_proj_bias,
              **_tower_options(m))


def from_config(m, eos_id, logit_bias=False):
  """Builds Clip from `config.model`; `logit_bias`: SigLIP's learned bias (the family's
  choice), initialised at model.logit_bias_init."""
  vision = image_tower_config(m)
  text = text_tower_config(m, eos_id)
  bias = m.logit_bias_init if logit_bias else None
  return Clip(vision=vision, text=text, embed_dim=m.embed_dim,
              logit_scale_init=m.logit_scale_init,
              logit_bias_init=bias, dtype=jnp.dtype(m.dtype))
