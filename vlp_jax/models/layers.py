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
  if name == "relu":  # OPT
    return jax.nn.relu
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


def layer_norm(dtype=jnp.float32, name=None, epsilon=1e-5):
  """LayerNorm with logically named scale and bias (flax keeps its statistics in float32).

  BERT-style text layers use epsilon 1e-12, the towers here 1e-5 (PyTorch's default)."""
  return nn.LayerNorm(
      epsilon=epsilon, dtype=dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("act_embed",)),
      bias_init=zeros_init(("act_embed",)))


class Attention(nn.Module):
  """Multi-head attention with a fused QKV projection (one matmul, as OpenAI CLIP's in_proj).

  `kv` is the sequence to attend to (cross-attention) or None (self-attention).
  `mask` is a boolean [batch or 1, 1, q_len, kv_len] array, True where attention is allowed.
  Kernels keep heads as their own dimension so the model axis can shard them.

  `decode=True` keeps a KV cache in the "cache" collection for autoregressive decoding
  (models/decoding.py). Self-attention: the first call (full length, usually zeros) sizes
  an empty cache; later calls append their keys and values at `cache_index` and attend to
  every cached position so far. Cross-attention (`cross=True`): a call with `kv` stores
  its projected keys and values, a call with kv=None reuses them, so the image tokens are
  projected once per caption rather than once per generated token.
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  causal: bool = False
  decode: bool = False
  cross: bool = False

  def _project(self, name, x, n, width, head_dim):
    """The n projections of the fused kernel `name` applied to x (a list of n)."""
    return _apply_fused(x, *self._fused(name, n, width, head_dim), self.dtype)

  def _fused(self, name, n, width, head_dim):
    kernel = param(self, f"{name}_kernel", ("embed", None, "heads", "kv"),
                   nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2, 3)),
                   (width, n, self.num_heads, head_dim))
    bias = param(self, f"{name}_bias", (None, "heads", "kv"), nn.initializers.zeros_init(),
                 (n, self.num_heads, head_dim))
    return kernel, bias

  @nn.compact
  def __call__(self, x, kv=None, mask=None, query_rows=None, kv_rows=None):
    """`query_rows` [B] (self-attention only): return only the output at that row of each
    sequence; keys and values still cover every row. `kv_rows` [B] (cross-attention): row
    i attends to kv[kv_rows[i]], kv's keys and values projected once per kv row (BLIP's
    matching head reads each image with up to three captions)."""
    width = x.shape[-1]
    head_dim = width // self.num_heads
    causal = self.causal
    if query_rows is not None:
      kernel, bias = self._fused("qkv", 3, width, head_dim)
      k, v = _apply_fused(x, kernel[:, 1:], bias[1:], self.dtype)
      (q,) = _apply_fused(_rows(x, query_rows), kernel[:, :1], bias[:1], self.dtype)
      if causal:  # the query at row r sees rows <= r
        seen = jnp.arange(x.shape[1])[None, :] <= query_rows[:, None]
        mask = seen[:, None, None, :] if mask is None else mask & seen[:, None, None, :]
        causal = False
    elif self.cross or kv is not None:
      (q,) = self._project("q", x, 1, width, head_dim)
      k = v = None
      if kv is not None:
        k, v = self._project("kv", kv, 2, kv.shape[-1], head_dim)
        if kv_rows is not None:
          k, v = jnp.take(k, kv_rows, axis=0), jnp.take(v, kv_rows, axis=0)
      if self.decode:
        k, v, mask = self._cross_cache(k, v, mask)
    else:
      q, k, v = self._project("qkv", x, 3, width, head_dim)
      if self.decode:
        k, v, step_mask = self._self_cache(k, v)
        if step_mask is not None:
          mask, causal = step_mask, False
    out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)
    out_kernel = param(self, "out_kernel", ("heads", "kv", "embed"),
                       nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2),
                       (self.num_heads, head_dim, width))
    out_bias = param(self, "out_bias", ("embed",), nn.initializers.zeros_init(), (width,))
    return (jnp.einsum("bthk,hkd->btd", out, out_kernel.astype(self.dtype))
            + out_bias.astype(self.dtype))


  def _self_cache(self, k, v):
    """Appends this call's keys/values to the cache; returns them with the step's mask.

    On the call that creates the cache (its length is this call's length) attention is
    the ordinary causal one and the mask is None.
    """
    ready = self.has_variable("cache", "cached_key")
    cached_k = self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
    index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    if not ready:
      return k, v, None
    i = index.value
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype),
                                                  (0, i, 0, 0))
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype),
                                                  (0, i, 0, 0))
    index.value = i + k.shape[1]
    length = cached_k.value.shape[1]
    # Query j of this call sits at position i + j and sees cached positions <= i + j.
    mask = (jnp.arange(length)[None, :] <= i + jnp.arange(k.shape[1])[:, None])[None, None]
    return cached_k.value, cached_v.value, mask

  def _cross_cache(self, k, v, mask):
    """Stores projected context keys/values and the context's key mask (k given), or
    returns the stored ones (k None): a padded context stays masked at every step."""
    if k is not None:
      self.variable("cache", "cross_key", lambda: k).value = k
      self.variable("cache", "cross_value", lambda: v).value = v
      if mask is not None:
        self.variable("cache", "cross_mask", lambda: mask).value = mask
      return k, v, mask
    if self.has_variable("cache", "cross_mask"):
      mask = self.get_variable("cache", "cross_mask")
    return (self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value"),
            mask)


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

  Returns (x, None) so that the same module can be the body of `nn.scan`. `mask` (self-
  attention, on top of `causal`) and `decode` (KV caches) are as in Attention; in decode
  mode a cross-attention call with context=None uses the cached context.

  `cross_layout` orders a cross-attention layer: "paper" (self-attention, cross-attention,
  MLP: CoCa's multimodal layer) or "open_clip" (self-attention, MLP, then cross-attention
  to LayerNormed context and a second MLP: open_clip's MultimodalTransformer, whose CoCa
  weights then map one to one).
  """
  num_heads: int
  mlp_dim: int
  causal: bool = False
  cross_attention: bool = False
  cross_layout: str = "paper"
  activation: str = "gelu"
  dtype: Dtype = jnp.float32
  decode: bool = False
  layer_norm_eps: float = 1e-5  # HF SigLIP: 1e-6

  @nn.compact
  def __call__(self, x, context=None, mask=None, query_rows=None):
    """`query_rows` [B]: compute only the output at that row of each sequence, [B, 1, W]
    (the pooled token of a tower's last layer)."""
    x = constrain(x, ("batch", "length", "act_embed"))
    y = layer_norm(self.dtype, "ln_attn", self.layer_norm_eps)(x)
    if query_rows is not None:
      x = _rows(x, query_rows)
    x = x + Attention(self.num_heads, self.dtype, self.causal, self.decode, name="attn")(
        y, mask=mask, query_rows=query_rows)
    if self.cross_attention and self.cross_layout == "open_clip":
      x = self._mlp(x, "ln_mlp", "mlp")
      if context is not None:
        context = layer_norm(self.dtype, "ln_context", self.layer_norm_eps)(context)
      x = self._cross(x, context)
      x = self._mlp(x, "ln_cross_mlp", "cross_mlp")
    else:
      if self.cross_attention:
        x = self._cross(x, context)
      x = self._mlp(x, "ln_mlp", "mlp")
    return constrain(x, ("batch", "length", "act_embed")), None

  def _cross(self, x, context):
    y = layer_norm(self.dtype, "ln_cross", self.layer_norm_eps)(x)
    return x + Attention(self.num_heads, self.dtype, decode=self.decode, cross=True,
                         name="cross_attn")(y, kv=context)

  def _mlp(self, x, norm_name, name):
    y = layer_norm(self.dtype, norm_name, self.layer_norm_eps)(x)
    return x + Mlp(self.mlp_dim, self.activation, self.dtype, name=name)(y)


class Transformer(nn.Module):
  """A stack of `depth` blocks, unrolled or under `nn.scan`, each optionally rematerialised.

  Scan makes compile time flat in depth (parameters get a leading "layers" axis); remat
  recomputes in the backward pass what `remat_policy` does not save (REMAT_POLICIES),
  trading compute for activation memory. XLA:CPU hoists an unrolled stack's recomputation
  back into the forward pass (measured: same temp memory, more FLOPs), so on CPU remat
  only pays under scan; there, "dots" saves half the memory and is faster than keeping
  everything (bench/step_profile.py). Configs choose per size.
  """
  depth: int
  num_heads: int
  mlp_dim: int
  causal: bool = False
  cross_attention: bool = False
  cross_layout: str = "paper"
  activation: str = "gelu"
  dtype: Dtype = jnp.float32
  remat: bool = False
  remat_policy: str = "full"
  scan: bool = False
  decode: bool = False
  layer_norm_eps: float = 1e-5

  @nn.compact
  def __call__(self, x, context=None, mask=None, output_rows=None):
    """x [B, T, W] -> [B, T, W]; with `output_rows` [B], [B, 1, W]: only that row of each
    sequence, the last block computing queries, attention output and MLP for it alone (a
    pooled tower needs nothing else from its last layer)."""
    block_cls = Block
    if self.remat:
      block_cls = nn.remat(Block, prevent_cse=not self.scan,
                           policy=remat_policy(self.remat_policy))
    kwargs = dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, causal=self.causal,
                  cross_attention=self.cross_attention, cross_layout=self.cross_layout,
                  activation=self.activation,
                  dtype=self.dtype, decode=self.decode, layer_norm_eps=self.layer_norm_eps)
    if self.scan:
      # KV caches (decode mode) are stacked over layers like the parameters. With
      # output_rows the last block stays out of the scan ("last_block") to run pruned.
      scanned = self.depth - (output_rows is not None)
      if scanned:
        stack = nn.scan(block_cls, variable_axes={"params": 0, "cache": 0},
                        split_rngs={"params": True}, in_axes=nn.broadcast, length=scanned,
                        metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = stack(name="blocks", **kwargs)(x, context, mask)
      if output_rows is not None:
        x, _ = Block(name="last_block", **kwargs)(x, context, mask, output_rows)
    else:
      for i in range(self.depth):
        rows = output_rows if i == self.depth - 1 else None
        x, _ = block_cls(name=f"block_{i}", **kwargs)(x, context, mask, rows)
    return x


REMAT_POLICIES = {
    "full": None,  # save each block's input only: least memory, one more forward
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # keep weight matmuls
    "dots_and_attention": jax.checkpoint_policies.dots_saveable,  # ... and attention's
}


def remat_policy(name):
  if name not in REMAT_POLICIES:
    raise ValueError(f"model.remat_policy={name!r}: expected one of {sorted(REMAT_POLICIES)}")
  return REMAT_POLICIES[name]


def _apply_fused(x, kernel, bias, dtype):
  """x [B, T, D] @ kernel [D, n, H, K] + bias [n, H, K] -> n arrays [B, T, H, K]."""
  y = jnp.einsum("btd,dnhk->btnhk", x, kernel.astype(dtype)) + bias.astype(dtype)
  return [y[:, :, i] for i in range(y.shape[2])]


def _rows(x, rows):
  """x[b, rows[b]] for each b, as [B, 1, ...]."""
  return jnp.take_along_axis(x, rows.reshape((-1, 1) + (1,) * (x.ndim - 2)), axis=1)


def param(module: nn.Module, name: str, names, init: Callable, shape, dtype=jnp.float32):
  """A logically named parameter (embeddings, tokens, scalars)."""
  return module.param(name, nn.with_logical_partitioning(init, names), shape, dtype)


def decoder_embeddings(module, vocab_size, width, positions):
  """(token table [V, W], position table [positions, W]) of a text decoder (CoCa's, the
  decoder LM's), created in `module`'s setup as "token_embedding" and "pos_embedding"."""
  tokens = param(module, "token_embedding", ("vocab", "embed"), nn.initializers.normal(0.02),
                 (vocab_size, width))
  pos = param(module, "pos_embedding", (None, "act_embed"), nn.initializers.normal(0.01),
              (positions, width))
  return tokens, pos


def shift_right(tokens, start_id):
  """A decoder's input for predicting `tokens` [B, L]: the start symbol, then all of them
  but the last."""
  start = jnp.full((tokens.shape[0], 1), start_id, tokens.dtype)
  return jnp.concatenate([start, tokens[:, :-1]], axis=1)



class AttentionPool(nn.Module):
  """Learned queries attending to a token sequence (big_vision's MAP head; CoCa's poolers).

  Returns [batch, num_queries, width]: each query's cross-attention output plus an MLP
  residual, as in the "multihead attention pooling" of SigLIP; mlp_dim=0 leaves out the
  MLP (CoCa's poolers are one attention layer).
  """
  num_heads: int
  mlp_dim: int
  num_queries: int = 1
  activation: str = "gelu"
  dtype: Dtype = jnp.float32
  layer_norm_eps: float = 1e-5

  @nn.compact
  def __call__(self, tokens):
    width = tokens.shape[-1]
    probe = param(self, "probe", (None, "act_embed"), nn.initializers.xavier_uniform(),
                  (self.num_queries, width))
    queries = jnp.broadcast_to(probe.astype(self.dtype), (tokens.shape[0],) + probe.shape)
    x = Attention(self.num_heads, self.dtype, name="attn")(queries, kv=tokens)
    if not self.mlp_dim:
      return x
    y = layer_norm(self.dtype, "ln", self.layer_norm_eps)(x)
    return x + Mlp(self.mlp_dim, self.activation, self.dtype, name="mlp")(y)
