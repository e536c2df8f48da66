"""Vision Transformer image tower (OpenAI CLIP layout: class token, ln_pre, ln_post, proj)."""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from vlp_jax.models import layers


class VisionTransformer(nn.Module):
  """Patchify, add positions, encode; return (pooled, tokens).

  `pool="cls"`: a class token is prepended and pooled (OpenAI CLIP); `pool="map"`: no class
  token, an attention-pooling head over the patch tokens (SigLIP); `pool="none"`: no class
  token and pooled is None (CoCa pools the tokens itself). pooled is projected to
  `embed_dim` when it is set; tokens are all output tokens after ln_post.

  `proj=False`: pooled is the pooling's output even with `embed_dim` set (HF SigLIP: the
  MAP head's output is the image embedding; embed_dim must then equal width).

  `pooled_only` (pool="cls"): tokens is None and the last layer computes the class token
  alone, skipping work whose outputs pooling would drop (about 1/depth of the tower's
  FLOPs, in unrolled stacks).
  """
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  embed_dim: Optional[int] = None
  activation: str = "gelu"
  pool: str = "cls"
  dtype: Any = jnp.float32
  remat: bool = False
  remat_policy: str = "full"
  scan: bool = False
  pooled_only: bool = False
  # OpenAI CLIP: a bias-free patch projection and a LayerNorm before the encoder; DeiT/BLIP
  # ViTs (ALBEF, BLIP) have a patch bias and no such LayerNorm.
  patch_bias: bool = False
  pre_norm: bool = True
  # False: tokens come out of the last block as they are (BLIP-2 reads a CLIP tower's
  # second-to-last layer and normalises it with a LayerNorm of its own).
  final_norm: bool = True
  proj: bool = True
  layer_norm_eps: float = 1e-5  # every LayerNorm of the tower (HF SigLIP: 1e-6)

  @nn.compact
  def __call__(self, images):
    p = self.patch_size
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", use_bias=self.patch_bias,
                dtype=self.dtype, name="patch_embed",
                kernel_init=layers.dense_init((None, None, None, "embed")),
                bias_init=layers.zeros_init(("embed",)))(images.astype(self.dtype))
    batch, h, w, _ = x.shape
    x = x.reshape(batch, h * w, self.width)
    if self.pool == "cls":
      cls = layers.param(self, "cls", ("act_embed",), nn.initializers.normal(self.width ** -0.5),
                         (self.width,))
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (batch, 1, self.width)), x],
                          axis=1)
    pos = layers.param(self, "pos_embedding", (None, "act_embed"),
                       nn.initializers.normal(self.width ** -0.5), (x.shape[1], self.width))
    x = x + pos.astype(x.dtype)
    if self.pre_norm:
      x = layers.layer_norm(self.dtype, "ln_pre", self.layer_norm_eps)(x)
    pooled_only = self.pooled_only and self.pool == "cls"
    rows = jnp.zeros((batch,), jnp.int32) if pooled_only else None
    x = layers.Transformer(self.depth, self.num_heads, self.mlp_dim, activation=self.activation,
                           dtype=self.dtype, remat=self.remat,
                           remat_policy=self.remat_policy, scan=self.scan,
                           layer_norm_eps=self.layer_norm_eps, name="encoder")(
                               x, output_rows=rows)
    if self.final_norm:
      x = layers.layer_norm(self.dtype, "ln_post", self.layer_norm_eps)(x)
    if self.pool == "none":
      return None, x
    if self.pool == "cls":
      pooled = x[:, 0]
    elif self.pool == "map":
      pooled = layers.AttentionPool(self.num_heads, self.mlp_dim, activation=self.activation,
                                    dtype=self.dtype, layer_norm_eps=self.layer_norm_eps,
                                    name="map_head")(x)[:, 0]
    else:
      raise ValueError(f"Unknown image pooling {self.pool!r} (cls or map)")
    if self.embed_dim is not None and self.proj:
      pooled = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype, name="proj",
                        kernel_init=layers.dense_init(("embed", "joint"), self.width ** -0.5))(pooled)
    return pooled, None if pooled_only else x


def feature_encoder(m):
  """The image tower of a CLIP/SigLIP/CoCa-style run as a token encoder, from
  `config.model`, for models that read its tokens (BLIP-2, prefix captioning).

  `model.vision_feature_layer` -1 keeps every block and ln_post; -2 (BLIP-2) stops after
  the second-to-last block, unnormalised. `model.image_pool` says whether the run's tower
  has a class token (cls) or not (map: SigLIP, none: CoCa); no pooling head is built, so
  the parameter tree is the run's tower minus what is not read (model.init_from).
  """
  depth = m.vision_depth + m.vision_feature_layer + 1
  return VisionTransformer(
      patch_size=m.patch_size, width=m.vision_width, depth=depth, num_heads=m.vision_heads,
      mlp_dim=int(m.vision_width * m.vision_mlp_ratio), activation=m.activation,
      pool="cls" if m.image_pool == "cls" else "none", dtype=jnp.dtype(m.dtype),
      remat=m.remat, remat_policy=m.remat_policy, scan=m.scan,
      final_norm=m.vision_feature_layer == -1, patch_bias=m.vision_patch_bias,
      pre_norm=m.vision_pre_norm, layer_norm_eps=m.layer_norm_eps)
