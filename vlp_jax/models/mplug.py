"""mPLUG's cross-modal skip-connected fusion (Li et al. 2022, "mPLUG", sec. 3.2).

N blocks, each S asymmetric co-attention layers, which update the text only (self-
attention, cross-attention to the image tokens, MLP), then one connected-attention layer,
self-attention and MLP over the image and text tokens together, which updates both. The
image tokens skip the S asymmetric layers of every block, which is where the speed on long
visual sequences comes from: only N of the N * (S + 1) layers run over them.

Both kinds are the post-LayerNorm BERT layers of models/fusion.py (`TextLayer`): the
asymmetric layer with cross-attention, the connected one over [image; text]. Image and
text tokens must have the same width (the family projects the image tokens first).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vlp_jax.models import fusion


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

  @nn.compact
  def __call__(self, image, text, ids, deterministic=True):
    """`ids` [B, T]: the text's token ids (padding 0 is never attended)."""
    layer = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, activation=self.activation,
                 dropout_rate=self.dropout_rate, deterministic=deterministic, dtype=self.dtype)
    text_mask = fusion.padding_mask(ids)
    n = image.shape[1]
    keys = jnp.concatenate([jnp.ones(image.shape[:2], bool), ids != fusion.PAD_ID], axis=1)
    joint_mask = keys[:, None, None, :]
    for block in range(self.num_blocks):
      for i in range(self.asymmetric_layers):
        text, _ = fusion.TextLayer(cross_attention=True, name=f"block_{block}_asymmetric_{i}",
                                   **layer)(text, text_mask, image)
      x, _ = fusion.TextLayer(name=f"block_{block}_connected", **layer)(
          jnp.concatenate([image, text], axis=1), joint_mask)
      image, text = x[:, :n], x[:, n:]
    return image, text
