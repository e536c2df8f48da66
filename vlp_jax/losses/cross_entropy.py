"""Fused, chunked softmax cross-entropy over a large vocabulary (CoCa's captioning loss).

With logits = hidden @ kernel + bias over V classes,
  nll[b, l] = logsumexp_v(logits[b, l, v]) - logits[b, l, labels[b, l]],
  total = sum_{b,l} weights[b, l] * nll[b, l].
The full [B, L, V] logits are never materialised: the sequence axis is walked `chunk`
positions at a time (the batch axis, sharded over devices, stays whole in every chunk, so no
data moves). Differentiating `total` computes each chunk's gradient pieces in the same pass
as its logits (custom_vjp), so forward plus backward cost the same three matmuls as the plain
loss, with no recomputation.

Per-device memory: O(b*chunk*V) for one chunk's logits and their gradient, a float32
[D, V] accumulator, and the residuals d_hidden [b, L, D], d_kernel [D, V], d_bias [V] (in
the inputs' dtypes), instead of the plain loss's O(b*L*V) logits, softmax and gradient.
With the batch sharded, each chunk's d_kernel is a partial sum over devices: XLA:GPU's
while-loop all-reduce code motion sinks that all-reduce out of the loop so it runs once;
XLA:CPU keeps one per chunk.
"""
import functools

import jax
import jax.numpy as jnp


def fused_cross_entropy(hidden, kernel, bias, labels, weights, chunk=8):
  """Softmax cross-entropy of hidden @ kernel + bias vs labels, `chunk` positions at a time.

  Args:
    hidden: [B, L, D], any float dtype; the matmuls run in it (float32 accumulation).
    kernel: [D, V]; cast to hidden's dtype for the matmuls, its gradient in its own dtype.
    bias: [V] or None.
    labels: [B, L] int in [0, V); one outside is clipped into it (give it weight 0).
    weights: [B, L] float, 0 to ignore a position (padding); gets no gradient.
    chunk: most sequence positions per step; logits are [B, chunk, V] at most.
  Returns:
    (total, nll, correct): total, a float32 scalar sum(weights * nll), the only
    differentiable output; nll [B, L] float32 per-position -log softmax(logits)[label] and
    correct [B, L] float32, 1.0 where argmax(logits) == label, both stop-gradient.
  """
  if int(chunk) < 1:
    raise ValueError(f"chunk must be a positive integer, got {chunk}")
  labels = jnp.clip(labels, 0, kernel.shape[1] - 1)  # nll, correct and gradient agree
  total, nll, correct = _fused(hidden, kernel, bias, labels, weights, int(chunk))
  # The custom_vjp ignores their cotangents, so differentiating them would be silently wrong.
  return total, jax.lax.stop_gradient(nll), jax.lax.stop_gradient(correct)


def _chunk_stats(h, kernel, bias, labels):
  """One chunk's float32 logits [B, c, V], their logsumexp, nll and correct [B, c]."""
  logits = jnp.einsum("bcd,dv->bcv", h, kernel.astype(h.dtype),
                      preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  target = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return logits, lse, lse - target, correct


def _over_chunks(step, carry, chunk, *seq_args):
  """Runs step(carry, *chunk_slices) -> (carry, outs) with lax.scan over the sequence axis.

  The L positions split into n = ceil(L / chunk) equal chunks of c = ceil(L / n) <= chunk,
  the inputs zero-padded by n*c - L < n positions (zero weight, so no loss or gradient): one
  loop body, so peak memory is one chunk's, at the cost of those few padded rows. The
  per-chunk outputs [B, c, ...] are joined back to [B, L, ...].
  """
  length = seq_args[0].shape[1]
  n = -(-length // chunk)
  c = -(-length // n)

  def split(a):  # [B, L, ...] -> [n, B, c, ...]: the batch axis stays whole in every chunk.
    a = jnp.pad(a, [(0, 0), (0, n * c - length)] + [(0, 0)] * (a.ndim - 2))
    return jnp.moveaxis(a.reshape(a.shape[0], n, c, *a.shape[2:]), 1, 0)

  def join(y):  # [n, B, c, ...] -> [B, L, ...]
    y = jnp.moveaxis(y, 0, 1)
    return y.reshape(y.shape[0], n * c, *y.shape[3:])[:, :length]

  carry, ys = jax.lax.scan(lambda cr, xs: step(cr, *xs), carry, tuple(map(split, seq_args)))
  return carry, jax.tree.map(join, ys)


def _total(weights, nll):
  # Summed once after the loop, not carried through it: no per-chunk reduction over devices.
  return jnp.sum(weights.astype(jnp.float32) * nll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _fused(hidden, kernel, bias, labels, weights, chunk):
  """Primal (no gradient wanted, e.g. evaluation): logits, lse, nll and correct per chunk."""
  def step(carry, h, lab):
    return carry, _chunk_stats(h, kernel, bias, lab)[2:]
  _, (nll, correct) = _over_chunks(step, (), chunk, hidden, labels)
  return _total(weights, nll), nll, correct


def _fused_fwd(hidden, kernel, bias, labels, weights, chunk):
  """The primal plus, from the same logits, d total / d (hidden, kernel, bias)."""
  dtype = hidden.dtype
  k = kernel.astype(dtype)

  def step(carry, h, lab, w):
    d_kernel, d_bias = carry
    logits, lse, nll, correct = _chunk_stats(h, kernel, bias, lab)
    onehot = jax.nn.one_hot(lab, logits.shape[-1], dtype=jnp.float32)
    w = w.astype(jnp.float32)[..., None]
    d_logits = w * (jnp.exp(logits - lse[..., None]) - onehot)
    d_logits_c = d_logits.astype(dtype)
    d_kernel = d_kernel + jnp.einsum("bcd,bcv->dv", h, d_logits_c,
                                     preferred_element_type=jnp.float32)
    d_bias = d_bias + jnp.sum(d_logits, axis=(0, 1))
    d_h = jnp.einsum("bcv,dv->bcd", d_logits_c, k,
                     preferred_element_type=jnp.float32).astype(dtype)
    return (d_kernel, d_bias), (nll, correct, d_h)

  d, v = kernel.shape
  carry = (jnp.zeros((d, v), jnp.float32), jnp.zeros((v,), jnp.float32))
  (d_kernel, d_bias), (nll, correct, d_hidden) = _over_chunks(
      step, carry, chunk, hidden, labels, weights)
  # Stored in the inputs' dtypes: the cotangent scaling below keeps them.
  residuals = (d_hidden, d_kernel.astype(kernel.dtype),
               None if bias is None else d_bias.astype(bias.dtype))
  return (_total(weights, nll), nll, correct), residuals


def _fused_bwd(chunk, residuals, cotangents):
  """Scales the stored gradients by total's cotangent; nll's and correct's are ignored."""
  del chunk
  g = cotangents[0].astype(jnp.float32)
  scale = lambda d: None if d is None else (d.astype(jnp.float32) * g).astype(d.dtype)
  return (*map(scale, residuals), None, None)


_fused.defvjp(_fused_fwd, _fused_bwd)
