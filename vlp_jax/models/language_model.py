"""A GPT-style decoder-only language model, and reading it with a soft prompt in front.

Pre-LayerNorm causal transformer (layers.Transformer), learned positions, a final
LayerNorm and an output projection tied to the token embedding by default: the layout of
GPT-2 and OPT, whose checkpoints map one to one (models/import_hf_lm.py), and what
`model.name='lm'` pretrains on text alone.

The frozen language model of BLIP-2 stage 2 and of prefix captioning reads `prefix`
embeddings [B, P, W] (a soft prompt made from the image) before the text: they take
positions 0..P-1, the text P onwards, as inputs_embeds do in GPT-2 and OPT.

Start symbol: the decoder reads [EOS, t_1, ..., t_{L-1}] and predicts the caption as the
tokenizer writes it [t_1, ..., t_L] (models/coca.py explains why EOS can start: GPT-2's
<|endoftext|> and OPT's </s> are both their models' begin and end of text).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax.losses import cross_entropy
from vlp_jax.models import layers

PAD_ID = 0


class DecoderLM(nn.Module):
  """Token + position embeddings, `depth` causal pre-LN blocks, final LayerNorm, head.

  `position_offset`: rows of the position table before position 0 (OPT keeps 2 there).
  `tied`: the output projection is the token embedding's transpose (GPT-2, OPT); else
  its own kernel. The head has no bias. `decode=True`: the same weights with KV caches.
  """
  vocab_size: int
  context_length: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  activation: str = "gelu_tanh"
  position_offset: int = 0
  tied: bool = True
  dtype: Any = jnp.float32
  remat: bool = False
  remat_policy: str = "full"
  scan: bool = False
  decode: bool = False

  def setup(self):
    w = self.width
    self.token_embedding, self.pos_embedding = layers.decoder_embeddings(
        self, self.vocab_size, w, self.context_length + self.position_offset)
    self.decoder = layers.Transformer(
        self.depth, self.num_heads, self.mlp_dim, causal=True, activation=self.activation,
        dtype=self.dtype, remat=self.remat and not self.decode, remat_policy=self.remat_policy,
        scan=self.scan, decode=self.decode)
    self.ln_final = layers.layer_norm(self.dtype)
    if not self.tied:
      self.head = layers.param(self, "head", ("embed", "vocab"), nn.initializers.normal(0.02),
                               (w, self.vocab_size))

  def shift(self, tokens, start_id):
    """Decoder input: the start symbol, then the text without its last token."""
    return layers.shift_right(tokens, start_id)

  def embed(self, ids, position=0, prefix=None):
    """[B, P + T, W]: `prefix` embeddings [B, P, W] (or none), then those of `ids`
    [B, T], with the positions from `position` on added to both."""
    x = jnp.take(self.token_embedding, ids, axis=0).astype(self.dtype)
    if prefix is not None:
      x = jnp.concatenate([prefix.astype(self.dtype), x], axis=1)
    pos = jax.lax.dynamic_slice_in_dim(self.pos_embedding, position + self.position_offset,
                                       x.shape[1])
    return x + pos.astype(self.dtype)

  def hidden(self, x, mask=None):
    """What the head reads [B, T, W], from embeddings [B, T, W]; `mask` [B or 1, 1, T, T]
    is applied on top of the causal one."""
    return self.ln_final(self.decoder(x, mask=mask))

  def output(self):
    """(kernel [W, V], bias [V]) of the output projection (the bias is zero)."""
    kernel = self.token_embedding.T if self.tied else self.head
    return kernel, jnp.zeros((self.vocab_size,), kernel.dtype)

  def logits(self, hidden):
    kernel, _ = self.output()
    return jnp.dot(hidden, kernel.astype(hidden.dtype)).astype(jnp.float32)

  def loss(self, hidden, labels, weights):
    """cross_entropy.fused_cross_entropy of the head on `hidden`: (sum of weights * nll,
    nll [B, T], correct [B, T]); only the sum has a gradient. Logits are never whole."""
    kernel, bias = self.output()
    dtype = hidden.dtype
    return cross_entropy.fused_cross_entropy(hidden, kernel.astype(dtype), bias.astype(dtype),
                                             labels, weights)

  def __call__(self, tokens, start_id, prefix=None, weights=None):
    """(sum of nll, nll [B, L], correct [B, L]) of predicting `tokens` after `prefix`
    embeddings [B, P, W] (or none): the language-model loss, weighted per position by
    `weights` [B, L] (default: 1 on every non-padding token)."""
    x = self.hidden(self.embed(self.shift(tokens, start_id), prefix=prefix))
    if prefix is not None:
      x = x[:, prefix.shape[1]:]
    if weights is None:
      weights = (tokens != PAD_ID).astype(jnp.float32)
    return self.loss(x, tokens, weights)

  def step(self, ids, position, prefix=None):
    """Decode mode: logits [B, T, V] of `ids` at `position`..., appended to the caches.

    The first call (ids the cache length, usually zeros) sizes the caches; a call with
    `prefix` [B, P, W] stores the prefix at positions 0..P-1 (ids [B, 0]); each later call
    appends one position. `position` counts from the cache's start.
    """
    return self.logits(self.hidden(self.embed(ids, position, prefix)))


def from_config(m, decode=False):
  """DecoderLM from `config.model`: the `model.lm` group, vocab_size, dtype and remat/scan."""
  lm = m.lm
  return DecoderLM(vocab_size=m.vocab_size, context_length=lm.positions, width=lm.width,
                   depth=lm.depth, num_heads=lm.heads, mlp_dim=int(lm.width * lm.mlp_ratio),
                   activation=lm.activation, position_offset=lm.position_offset, tied=lm.tied,
                   dtype=jnp.dtype(m.dtype), remat=m.remat, remat_policy=m.remat_policy,
                   scan=m.scan, decode=decode)
