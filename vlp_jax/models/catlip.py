"""CatLIP: a ViT image tower and one linear head over a vocabulary of WordNet synsets.

No text tower: captions become multi-hot synset labels on the host (data/synsets.py) and
the head is trained with multi-label binary cross-entropy (losses/multilabel.py).
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax.models import layers
from vlp_jax.models.vit import VisionTransformer


class Catlip(nn.Module):
  """(L2-normalised image embedding [B, E], head logits [B, V]).

  The head reads the projected, unnormalised pooled embedding. Its bias starts at the log
  odds of a label being present, 1 / num_classes, so the first steps are not spent
  learning that most labels are absent (the BCE summed over V labels would otherwise start
  near V log 2).
  """
  vision: dict
  embed_dim: int
  num_classes: int
  dtype: Any = jnp.float32

  def setup(self):
    self.image_tower = VisionTransformer(embed_dim=self.embed_dim, dtype=self.dtype,
                                         **self.vision)
    prior = 1.0 / max(self.num_classes, 2)
    self.head = nn.Dense(
        self.num_classes, dtype=self.dtype, name="head",
        kernel_init=layers.dense_init(("joint", "vocab"), self.embed_dim ** -0.5),
        bias_init=nn.with_logical_partitioning(
            nn.initializers.constant(math.log(prior / (1 - prior))), ("vocab",)))

  def _pooled(self, images):
    return self.image_tower(images)[0]

  def encode_image(self, images):
    x = self._pooled(images).astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)

  def classify(self, images):
    return self.head(self._pooled(images)).astype(jnp.float32)

  def __call__(self, images):
    pooled = self._pooled(images)
    x = pooled.astype(jnp.float32)
    embedding = x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)
    return embedding, self.head(pooled).astype(jnp.float32)


def from_config(m):
  """Builds Catlip from `config.model`; the head has model.vocab_size rows."""
  vision = dict(patch_size=m.patch_size, width=m.vision_width, depth=m.vision_depth,
                num_heads=m.vision_heads, mlp_dim=int(m.vision_width * m.vision_mlp_ratio),
                pool=m.image_pool, activation=m.activation, remat=m.remat,
                remat_policy=m.remat_policy, scan=m.scan, pooled_only=True)
  return Catlip(vision=vision, embed_dim=m.embed_dim, num_classes=m.vocab_size,
                dtype=jnp.dtype(m.dtype))
