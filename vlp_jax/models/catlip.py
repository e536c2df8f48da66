"""CatLIP: a ViT image tower and one linear head over a vocabulary of WordNet synsets.

No text tower: captions become multi-hot synset labels on the host (data/synsets.py) and
the head is trained with multi-label binary cross-entropy (losses/multilabel.py).
"""
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlp_jax.models import clip
from vlp_jax.models import layers
from vlp_jax.models.vit import VisionTransformer


class Catlip(nn.Module):
  """Head logits [B, V] from the image tower's projected pooled embedding [B, E].

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
    return clip.normalize(self._pooled(images))

  def __call__(self, images):
    """Head logits [B, V] (float32): all training needs."""
    return self.head(self._pooled(images)).astype(jnp.float32)


def from_config(m):
  """Builds Catlip from `config.model` (clip's image tower); the head has model.vocab_size
  rows."""
  return Catlip(vision=clip.image_tower_config(m), embed_dim=m.embed_dim,
                num_classes=m.vocab_size, dtype=jnp.dtype(m.dtype))
