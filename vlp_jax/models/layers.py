"""Transformer building blocks shared by every tower of every family.

Weights carry logical axis names ("embed", "mlp", "heads", ...) at creation; the mesh rules
that map them to devices live in vlp_jax/parallel/sharding.py, so no model mentions devices.
Activations are constrained to ("batch", "length", "act_embed") at block boundaries so
XLA keeps the batch split over the data axes even when weights are sharded over fsdp.
"""
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def activation_fn(name):
  """OpenAI CLIP uses QuickGELU; most later models the exact or tanh GELU."""
  if name == "gelu":
    return functools.partial(jax.nn.gelu, approximate=False)
  if name == "gelu_tanh":
    return functools.partial(jax.nn.gelu, approximate=True)
  if name == "quick_gelu":
    return lambda x: x * jax.nn.sigmoid(1.702 * x)
  raise ValueError(f"Unknown activation {name!r}")


def dense_init(names, stddev=None):
  init = nn.initializers.xavier_uniform() if stddev is None else nn.initializers.normal(stddev)
  return nn.with_logical_partitioning(init, names)


def zeros_init(names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def constrain(x, names):
  return nn.with_logical_constraint(x, names)


def layer_norm(dtype=jnp.float32, name=None):
  """LayerNorm with logically named scale and bias (flax keeps its statistics in float32)."""
  return nn.LayerNorm(
      epsilon=1e-5, dtype=dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("act_embed",)),
      bias_init=zeros_init(("act_embed",)))


class Attention(nn.Module):
  """Multi-head attention with a fused QKV projection (one matmul, as OpenAI CLIP's in_proj).

  `kv` is the sequence to attend to (cross-attention) or None (self-attention).
  `mask` is a boolean [batch or 1, 1, q_len, kv_len] array, True where attention is allowed.
  Kernels keep heads as their own dimension so the model axis can shard them.
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  causal: bool = False

  def _project(self, name, x, n, width, head_dim):
    kernel = param(self, f"{name}_kernel", ("embed", None, "heads", "kv"),
                   nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2, 3)),
                   (width, n, self.num_heads, head_dim))
    bias = param(self, f"{name}_bias", (None, "heads", "kv"), nn.initializers.zeros_init(),
                 (n, self.num_heads, head_dim))
    y = jnp.einsum("btd,dnhk->btnhk", x, kernel.astype(self.dtype)) + bias.astype(self.dtype)
    return [y[:, :, i] for i in range(n)]

  @nn.compact
  def __call__(self, x, kv=None, mask=None):
    width = x.shape[-1]
    head_dim = width // self.num_heads
    if kv is None:
      q, k, v = self._project("qkv", x, 3, width, head_dim)
    else:
      (q,) = self._project("q", x, 1, width, head_dim)
      k, v = self._project("kv", kv, 2, kv.shape[-1], head_dim)
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=self.causal)
    out_kernel = param(self, "out_kernel", ("heads", "kv", "embed"),
                       nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2),
                       (self.num_heads, head_dim, width))
    out_bias = param(self, "out_bias", ("embed",), nn.initializers.zeros_init(), (width,))
    return (jnp.einsum("bthk,hkd->btd", out, out_kernel.astype(self.dtype))
            + out_bias.astype(self.dtype))


class Mlp(nn.Module):
  hidden: int
  activation: str = "gelu"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    h = nn.Dense(self.hidden, dtype=self.dtype, name="fc1",
                 kernel_init=dense_init(("embed", "mlp")), bias_init=zeros_init(("mlp",)))(x)
    h = constrain(activation_fn(self.activation)(h), ("batch", "length", "act_mlp"))
    return nn.Dense(width, dtype=self.dtype, name="fc2",
                    kernel_init=dense_init(("mlp", "embed")), bias_init=zeros_init(("embed",)))(h)


class Block(nn.Module):
  """Pre-LayerNorm transformer block: self-attention, optional cross-attention, MLP.

  Returns (x, None) so that the same module can be the body of `nn.scan`.
  """
  num_heads: int
  mlp_dim: int
  causal: bool = False
  cross_attention: bool = False
  activation: str = "gelu"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context=None):
    x = constrain(x, ("batch", "length", "act_embed"))
    y = layer_norm(self.dtype, "ln_attn")(x)
    x = x + Attention(self.num_heads, self.dtype, self.causal, name="attn")(y)
    if self.cross_attention:
      y = layer_norm(self.dtype, "ln_cross")(x)
      x = x + Attention(self.num_heads, self.dtype, name="cross_attn")(y, kv=context)
    y = layer_norm(self.dtype, "ln_mlp")(x)
    x = x + Mlp(self.mlp_dim, self.activation, self.dtype, name="mlp")(y)
    return constrain(x, ("batch", "length", "act_embed")), None


class Transformer(nn.Module):
  """A stack of `depth` blocks, unrolled or under `nn.scan`, each optionally rematerialised.

  Scan makes compile time flat in depth (parameters get a leading "layers" axis); remat
  trades one extra forward for activation memory. Both win on TPU at depth; on CPU they
  cost about 10% each, so configs choose them per size.
  """
  depth: int
  num_heads: int
  mlp_dim: int
  causal: bool = False
  cross_attention: bool = False
  activation: str = "gelu"
  dtype: Dtype = jnp.float32
  remat: bool = False
  scan: bool = False

  @nn.compact
  def __call__(self, x, context=None):
    block_cls = Block
    if self.remat:
      block_cls = nn.remat(Block, prevent_cse=not self.scan)
    kwargs = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, causal=self.causal,
                  cross_attention=self.cross_attention, activation=self.activation,
                  dtype=self.dtype)
    if self.scan:
      stack = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                      in_axes=nn.broadcast, length=self.depth,
                      metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = stack(name="blocks", **kwargs)(x, context)
    else:
      for i in range(self.depth):
        x, _ = block_cls(name=f"block_{i}", **kwargs)(x, context)
    return x


def param(module: nn.Module, name: str, names, init: Callable, shape, dtype=jnp.float32):
  """A logically named parameter (embeddings, tokens, scalars)."""
  return module.param(name, nn.with_logical_partitioning(init, names), shape, dtype)



class AttentionPool(nn.Module):
  """Learned queries attending to a token sequence (big_vision's MAP head; CoCa's poolers).

  Returns [batch, num_queries, width]: each query's cross-attention output plus an MLP
  residual, as in the "multihead attention pooling" of SigLIP.
  """
  num_heads: int
  mlp_dim: int
  num_queries: int = 1
  activation: str = "gelu"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    width = tokens.shape[-1]
    probe = param(self, "probe", (None, "act_embed"), nn.initializers.xavier_uniform(),
                  (self.num_queries, width))
    queries = jnp.broadcast_to(probe.astype(self.dtype), (tokens.shape[0],) + probe.shape)
    x = Attention(self.num_heads, self.dtype, name="attn")(queries, kv=tokens)
    y = layer_norm(self.dtype, "ln")(x)
    return x + Mlp(self.mlp_dim, self.activation, self.dtype, name="mlp")(y)
