"""Text transformer tower: token + position embeddings, causal or bidirectional encoder."""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp

from vlp_jax.models import layers


class TextTransformer(nn.Module):
  """Encode token ids; return (pooled, tokens).

  `pool="eos"`: the output at the first `eos_id` token (CLIP; with a causal mask it has
  seen the whole caption); `pool="argmax"`: the position of the row's largest id (HF CLIP
  configs with eos_token_id 2, where the end-of-text id is the vocabulary's last);
  `pool="last"`: the last position (SigLIP's bidirectional tower). pooled is projected to
  `embed_dim` when it is set, with a bias when `proj_bias` (HF SigLIP's text head).

  `pooled_only`: tokens is None and the last layer computes the pooled position alone
  (in unrolled stacks; about 1/depth of the tower's FLOPs).
  """
  vocab_size: int
  context_length: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  eos_id: int
  embed_dim: Optional[int] = None
  causal: bool = True
  pool: str = "eos"
  activation: str = "gelu"
  dtype: Any = jnp.float32
  remat: bool = False
  remat_policy: str = "full"
  scan: bool = False
  pooled_only: bool = False
  proj_bias: bool = False
  layer_norm_eps: float = 1e-5  # every LayerNorm of the tower (HF SigLIP: 1e-6)

  @nn.compact
  def __call__(self, tokens):
    embed = layers.param(self, "token_embedding", ("vocab", "embed"),
                         nn.initializers.normal(0.02), (self.vocab_size, self.width))
    x = jnp.take(embed, tokens, axis=0).astype(self.dtype)
    pos = layers.param(self, "pos_embedding", (None, "act_embed"), nn.initializers.normal(0.01),
                       (self.context_length, self.width))
    x = x + pos[: tokens.shape[1]].astype(self.dtype)
    if self.pool == "eos":
      pool_index = jnp.argmax(tokens == self.eos_id, axis=-1).astype(jnp.int32)
    elif self.pool == "argmax":  # the first largest id, as torch.argmax
      pool_index = jnp.argmax(tokens, axis=-1).astype(jnp.int32)
    elif self.pool == "last":
      pool_index = jnp.full(tokens.shape[:1], tokens.shape[1] - 1, jnp.int32)
    else:
      raise ValueError(f"Unknown text pooling {self.pool!r} (eos, argmax or last)")
    x = layers.Transformer(self.depth, self.num_heads, self.mlp_dim, causal=self.causal,
                           activation=self.activation, dtype=self.dtype, remat=self.remat,
                           remat_policy=self.remat_policy, scan=self.scan,
                           layer_norm_eps=self.layer_norm_eps, name="encoder")(
                               x, output_rows=pool_index if self.pooled_only else None)
    x = layers.layer_norm(self.dtype, "ln_final", self.layer_norm_eps)(x)
    if self.pooled_only:
      pooled = x[:, 0]
    else:
      pooled = jnp.take_along_axis(x, pool_index[:, None, None], axis=1)[:, 0]
    if self.embed_dim is not None:
      pooled = nn.Dense(self.embed_dim, use_bias=self.proj_bias, dtype=self.dtype, name="proj",
                        kernel_init=layers.dense_init(("embed", "joint"), self.width ** -0.5),
                        bias_init=layers.zeros_init(("joint",)))(pooled)
    return pooled, None if self.pooled_only else x
