"""Fused, chunked softmax cross-entropy over a large vocabulary (CoCa's captioning loss).

With logits = hidden @ kernel + bias over V classes,
  nll[b, l] = logsumexp_v(logits[b, l, v]) - logits[b, l, labels[b, l]],
  total = sum_{b,l} weights[b, l] * nll[b, l].
The full [B, L, V] logits are never materialised: each group of examples (a device's
rows) packs its weighted positions to the front and walks them `chunk` rows at a time,
skipping the steps that hold only padding (about 40% of a captioning batch). Differentiating
`total` computes each chunk's gradient pieces in the same pass as its logits (custom_vjp),
so forward plus backward cost the same three matmuls as the plain loss, with no
recomputation, on the weighted positions only.

Per-device memory: O(chunk*V) for one chunk's logits and their gradient, a float32
[D, V] accumulator, and the residuals d_hidden [b, L, D], d_kernel [D, V], d_bias [V] (in
the inputs' dtypes), instead of the plain loss's O(b*L*V) logits, softmax and gradient.
With the batch sharded, each chunk's d_kernel is a partial sum over devices: XLA:GPU's
while-loop all-reduce code motion sinks that all-reduce out of the loop so it runs once;
XLA:CPU keeps one per chunk.
"""
import functools
import math

import jax
import jax.numpy as jnp


def fused_cross_entropy(hidden, kernel, bias, labels, weights, chunk=128, groups=1):
  """Softmax cross-entropy of hidden @ kernel + bias vs labels, `chunk` rows at a time.

  Args:
    hidden: [B, L, D], any float dtype; the matmuls run in it (float32 accumulation).
    kernel: [D, V]; cast to hidden's dtype for the matmuls, its gradient in its own dtype.
    bias: [V] or None.
    labels: [B, L] int in [0, V); one outside is clipped into it (give it weight 0).
    weights: [B, L] float, 0 to ignore a position (padding); gets no gradient.
    chunk: positions per group per step; logits are [groups, chunk, V] at most. Smaller
      skips padding more finely; larger makes bigger matmuls.
    groups: the batch is cut into this many contiguous groups (gcd with B is used), each
      packed on its own; its shards over devices, or a multiple, keep every step local.
  Returns:
    (total, nll, correct): total, a float32 scalar sum(weights * nll), the only
    differentiable output; nll [B, L] float32 per-position -log softmax(logits)[label] and
    correct [B, L] float32, 1.0 where the label's logit is the largest (a tie counts),
    both stop-gradient and 0.0 at the weight-0 positions of skipped steps.
  """
  if int(chunk) < 1:
    raise ValueError(f"chunk must be a positive integer, got {chunk}")
  if int(groups) < 1:
    raise ValueError(f"groups must be a positive integer, got {groups}")
  labels = jnp.clip(labels, 0, kernel.shape[1] - 1)  # nll, correct and gradient agree
  packing = (math.gcd(int(groups), hidden.shape[0]), int(chunk))
  total, nll, correct = _fused(hidden, kernel, bias, labels, weights, packing)
  # The custom_vjp ignores their cotangents, so differentiating them would be silently wrong.
  return total, jax.lax.stop_gradient(nll), jax.lax.stop_gradient(correct)


def _chunk_stats(h, kernel, bias, labels):
  """One chunk's float32 logits [G, c, V], their logsumexp, nll and correct [G, c]."""
  logits = jnp.einsum("gcd,dv->gcv", h, kernel.astype(h.dtype),
                      preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  top = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
  lse = top + jnp.log(jnp.sum(jnp.exp(logits - top[..., None]), axis=-1))
  target = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  # The label's logit is the largest (ties count as correct): no argmax pass over V.
  correct = (target >= top).astype(jnp.float32)
  return logits, lse, lse - target, correct


class _Rows:
  """The order in which positions are visited: packed, then cut into equal chunks.

  Each of G groups (B/G contiguous examples, N = B/G*L positions) puts its weighted
  positions first (a stable sort, so local to the group's devices), and the N positions
  split into n = ceil(N / R) chunks of c = ceil(N / n) <= R = `chunk` rows, zero-padded
  by n*c - N < n rows of weight 0. A chunk with no weight in any group is skipped: with
  captions padded to a fixed length, those are the padding's share of the vocabulary
  matmuls (about 40% of them for captions of 5-29 tokens in 32).
  """

  def __init__(self, weights, groups, chunk):
    batch, length = weights.shape
    self.shape, self.groups, self.per_group = (batch, length), groups, batch // groups * length
    self.order = jnp.argsort(weights.reshape(groups, self.per_group) == 0, axis=1, stable=True)
    self.inverse = jnp.argsort(self.order, axis=1)  # once, for every output join unpacks
    self.n = -(-self.per_group // chunk)
    self.c = -(-self.per_group // self.n)

  def split(self, a):
    """[B, L, ...] -> [n, G, c, ...], packed."""
    a = a.reshape(self.groups, self.per_group, *a.shape[2:])
    a = jnp.take_along_axis(a, self.order.reshape(self.order.shape + (1,) * (a.ndim - 2)), axis=1)
    a = jnp.pad(a, [(0, 0), (0, self.n * self.c - self.per_group)] + [(0, 0)] * (a.ndim - 2))
    return jnp.moveaxis(a.reshape(self.groups, self.n, self.c, *a.shape[2:]), 1, 0)

  def join(self, y):
    """[n, G, c, ...] -> [B, L, ...], unpacked."""
    y = jnp.moveaxis(y, 0, 1).reshape(self.groups, self.n * self.c, *y.shape[3:])
    y = y[:, :self.per_group]
    inverse = self.inverse.reshape(self.inverse.shape + (1,) * (y.ndim - 2))
    y = jnp.take_along_axis(y, inverse, axis=1)
    return y.reshape(*self.shape, *y.shape[2:])

  def scan(self, step, carry, weights, *args):
    """lax.scan of step(carry, w, *chunks) -> (carry, outs) over the weighted chunks; the
    others keep the carry and give zeros."""
    def body(cr, xs):
      w = xs[0]
      skip = lambda cr, *_: (cr, jax.tree.map(jnp.zeros_like, jax.eval_shape(step, cr, *xs)[1]))
      return jax.lax.cond(jnp.any(w != 0), step, skip, cr, *xs)
    carry, ys = jax.lax.scan(body, carry, tuple(map(self.split, (weights,) + args)))
    return carry, jax.tree.map(self.join, ys)


def _total(weights, nll):
  # Summed once after the loop, not carried through it: no per-chunk reduction over devices.
  return jnp.sum(weights.astype(jnp.float32) * nll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _fused(hidden, kernel, bias, labels, weights, packing):
  """Primal (no gradient wanted, e.g. evaluation): logits, lse, nll and correct per chunk."""
  rows = _Rows(weights, *packing)

  def step(carry, w, h, lab):
    del w
    return carry, _chunk_stats(h, kernel, bias, lab)[2:]
  _, (nll, correct) = rows.scan(step, (), weights, hidden, labels)
  return _total(weights, nll), nll, correct


def _fused_fwd(hidden, kernel, bias, labels, weights, packing):
  """The primal plus, from the same logits, d total / d (hidden, kernel, bias)."""
  rows = _Rows(weights, *packing)
  dtype = hidden.dtype
  k = kernel.astype(dtype)

  def step(carry, w, h, lab):
    d_kernel, d_bias = carry
    logits, lse, nll, correct = _chunk_stats(h, kernel, bias, lab)
    onehot = jax.nn.one_hot(lab, logits.shape[-1], dtype=jnp.float32)
    w = w.astype(jnp.float32)[..., None]
    d_logits = w * (jnp.exp(logits - lse[..., None]) - onehot)
    d_logits_c = d_logits.astype(dtype)
    d_kernel = d_kernel + jnp.einsum("gcd,gcv->dv", h, d_logits_c,
                                     preferred_element_type=jnp.float32)
    if bias is not None:  # a matvec with ones: a column reduction over [c, V] is slower
      d_bias = d_bias + jnp.einsum("gc,gcv->v", jnp.ones(d_logits.shape[:2]), d_logits)
    d_h = jnp.einsum("gcv,dv->gcd", d_logits_c, k,
                     preferred_element_type=jnp.float32).astype(dtype)
    return (d_kernel, d_bias), (nll, correct, d_h)

  d, v = kernel.shape
  carry = (jnp.zeros((d, v), jnp.float32), jnp.zeros((v,), jnp.float32))
  (d_kernel, d_bias), (nll, correct, d_hidden) = rows.scan(
      step, carry, weights, hidden, labels)
  # Stored in the inputs' dtypes: the cotangent scaling below keeps them.
  residuals = (d_hidden, d_kernel.astype(kernel.dtype),
               None if bias is None else d_bias.astype(bias.dtype))
  return (_total(weights, nll), nll, correct), residuals


def _fused_bwd(packing, residuals, cotangents):
  """Scales the stored gradients by total's cotangent; nll's and correct's are ignored."""
  del packing
  g = cotangents[0].astype(jnp.float32)
  scale = lambda d: None if d is None else (d.astype(jnp.float32) * g).astype(d.dtype)
  return (*map(scale, residuals), None, None)


_fused.defvjp(_fused_fwd, _fused_bwd)
