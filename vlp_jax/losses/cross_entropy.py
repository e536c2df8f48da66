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

On a mesh (the one `jax.set_mesh` makes current, as the train step does) the loop runs
inside `shard_map`: each device walks its own rows (the batch axes), and its vocabulary
slice when the kernel is split over `model` on V (Megatron's vocabulary-parallel
cross-entropy). Nothing in the loop talks to other devices except, with V split, one
all-gather per chunk of each slice's (max, sum of exp, label logit) over `model`, 3 x chunk
floats, from which every device forms the full logsumexp. d_kernel [D, V/model] and d_bias
are per-device partial sums carried through the loop and reduced once, after it (a
reduce-scatter over fsdp onto the kernel's D sharding, an all-reduce over data); d_hidden,
partial over the vocabulary slices, is all-reduced over `model` once. Without the
shard_map, XLA would reduce the replicated d_kernel carry across the batch's devices
inside the loop, [D, V] floats per chunk (XLA:CPU does; XLA:GPU may hoist it). Without a
mesh, or a batch the batch axes do not divide, the same loop runs on the whole arrays.

With `teacher` (ALBEF's masked-language-model loss distilled from its momentum model,
whose soft predictions also credit the plausible words a one-hot label marks wrong) the
target is t = (1 - alpha) * onehot(label) + alpha * softmax(teacher logits), teacher
logits = teacher_hidden @ teacher_kernel + teacher_bias over the same V, so
nll = logsumexp(logits) - sum_v t_v * logits_v and d total / d logits = w * (softmax - t).
Each chunk computes the teacher's logits beside the student's (one more matmul, one more
chunk of logits); the teacher gets no gradient. With V split, each slice's teacher (max,
sum of exp, sum of exp * student logit) join the student's stats in the same all-gather.

Per-device memory: O(chunk*V/model) for one chunk's logits and their gradient, a float32
[D, V/model] accumulator, and the residuals d_hidden [b, L, D], d_kernel, d_bias (in the
inputs' dtypes), instead of the plain loss's O(b*L*V) logits, softmax and gradient.
"""
import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")  # parallel/mesh.py's; the kernel's D is on fsdp, V on model
EMBED_AXIS, VOCAB_AXIS = "fsdp", "model"


# chunk=None: a memory budget per chunk, in logits per group: rows = CHUNK_ELEMENTS // V
# (128 rows of a 32,768-word vocabulary, 16 MiB of float32 logits); a small vocabulary's
# positions then fit in one chunk, which runs without the loop or the packing. Not the
# default: BLIP tiny's 128-word head (1,472 positions, 40% padding) ran its decoder + loss
# ~10% slower in one chunk than in 128-row chunks that skip the padding
# (bench/compare_blip.py --profile --spec=blip_tiny, 2026-12-02).
CHUNK_ELEMENTS = 1 << 22


def chunk_rows(vocab_size, chunk=None):
  """Rows per chunk: `chunk` when given, else CHUNK_ELEMENTS // vocab_size (at least 1)."""
  if chunk is None:
    return max(1, CHUNK_ELEMENTS // int(vocab_size))
  if int(chunk) < 1:
    raise ValueError(f"chunk must be a positive integer, got {chunk}")
  return int(chunk)


def fused_cross_entropy(hidden, kernel, bias, labels, weights, chunk=128, groups=1, mesh=None,
                        *, teacher=None, teacher_weight=0.0):
  """Softmax cross-entropy of hidden @ kernel + bias vs labels, `chunk` rows at a time.

  Args:
    hidden: [B, L, D], any float dtype; the matmuls run in it (float32 accumulation).
    kernel: [D, V]; cast to hidden's dtype for the matmuls, its gradient in its own dtype.
    bias: [V] or None.
    labels: [B, L] int in [0, V); one outside is clipped into it (give it weight 0).
    weights: [B, L] float, 0 to ignore a position (padding); gets no gradient.
    chunk: positions per group per step; logits are [groups, chunk, V] at most. Smaller
      skips padding more finely; larger makes bigger matmuls. None: CHUNK_ELEMENTS // V
      rows (a memory budget per chunk; V is the whole vocabulary). When one chunk holds
      all of a group's positions, they are neither packed nor looped over.
    groups: the rows (each device's on a mesh, else the whole batch) are cut into this many
      contiguous groups (gcd with the rows' examples is used), each packed on its own.
      Without a mesh, the batch's shards over devices or a multiple keep packing local.
    mesh: the mesh whose batch axes (data, fsdp) split B and whose `model` axis splits V;
      None: the current one (`jax.sharding.get_abstract_mesh()`), if any.
    teacher: None, or (teacher_hidden [B, L, D_t], teacher_kernel [D_t, V], teacher_bias [V]
      or None), a distillation teacher (e.g. a momentum model) over the same positions and
      vocabulary; constants: stop-gradient, never differentiated. Its matmul runs in
      teacher_hidden's dtype.
    teacher_weight: alpha in [0, 1], a Python float or a traced scalar (ALBEF ramps it); the
      target is (1 - alpha) * onehot(label) + alpha * softmax(teacher logits). 0 ignores
      the teacher (not computed); nonzero needs one.
  Returns:
    (total, nll, correct): total, a float32 scalar sum(weights * nll), the only
    differentiable output; nll [B, L] float32 per-position -log softmax(logits)[label]
    (with a teacher: (1 - alpha) times that plus alpha times the cross-entropy to the
    teacher's softmax) and correct [B, L] float32, 1.0 where the label's logit is the
    largest (a tie counts), both stop-gradient and 0.0 at the weight-0 positions of
    skipped steps.
  """
  chunk = chunk_rows(kernel.shape[1], chunk)
  if int(groups) < 1:
    raise ValueError(f"groups must be a positive integer, got {groups}")
  if isinstance(teacher_weight, (int, float)):
    if not 0.0 <= teacher_weight <= 1.0:
      raise ValueError(f"teacher_weight must be in [0, 1], got {teacher_weight}")
    if teacher is None and teacher_weight:
      raise ValueError(f"teacher_weight={teacher_weight} needs a teacher")
    if not teacher_weight:
      teacher = None  # its term is 0 * a finite number: the plain loss, one matmul fewer
  if teacher is not None:
    teacher = _check_teacher(teacher, hidden.shape, kernel.shape) + (
        jnp.asarray(teacher_weight, jnp.float32),)
  labels = jnp.clip(labels, 0, kernel.shape[1] - 1)  # nll, correct and gradient agree
  plan = _plan(jax.sharding.get_abstract_mesh() if mesh is None else mesh, hidden.shape,
               kernel.shape, int(groups), int(chunk))
  total, nll, correct = _fused(hidden, kernel, bias, labels, weights, teacher, plan)
  # The custom_vjp ignores their cotangents, so differentiating them would be silently wrong.
  return total, jax.lax.stop_gradient(nll), jax.lax.stop_gradient(correct)


def _check_teacher(teacher, hidden_shape, kernel_shape):
  """(teacher_hidden, teacher_kernel, teacher_bias) stop-gradient, after checking shapes."""
  if not isinstance(teacher, (tuple, list)) or len(teacher) != 3:
    raise ValueError("teacher must be (teacher_hidden, teacher_kernel, teacher_bias or None)")
  t_hidden, t_kernel, t_bias = teacher
  if (len(t_hidden.shape) != 3 or tuple(t_hidden.shape[:2]) != tuple(hidden_shape[:2])
      or tuple(t_kernel.shape) != (t_hidden.shape[2], kernel_shape[1])
      or (t_bias is not None and tuple(t_bias.shape) != (kernel_shape[1],))):
    raise ValueError(
        f"teacher shapes {t_hidden.shape}, {t_kernel.shape}, "
        f"{None if t_bias is None else t_bias.shape} do not fit hidden {hidden_shape} and "
        f"kernel {kernel_shape}: want [B, L, D_t], [D_t, V], [V] or None")
  return jax.tree.map(jax.lax.stop_gradient, (t_hidden, t_kernel, t_bias))


class _Plan:
  """How the loss is laid out on devices (hashable: a custom_vjp static argument).

  mesh None: one loop over the whole arrays. Otherwise shard_map over `mesh`: rows split
  over `batch` (the batch axes of size > 1), V over `vocab` (None: V replicated), and
  d_kernel's D reduce-scattered over `embed` (None: all-reduced).
  """

  def __init__(self, groups, chunk, mesh=None, batch=(), vocab=None, embed=None):
    self.groups, self.chunk, self.mesh = groups, chunk, mesh
    self.batch, self.vocab, self.embed = batch, vocab, embed
    self._key = (groups, chunk, mesh, batch, vocab, embed)

  def __hash__(self):
    return hash(self._key)

  def __eq__(self, other):
    return isinstance(other, _Plan) and self._key == other._key

  def reduce_batch(self, x):
    return jax.lax.psum(x, self.batch) if self.batch else x


def _plan(mesh, hidden_shape, kernel_shape, groups, chunk):
  sizes = dict(mesh.shape) if mesh is not None and not mesh.empty else {}
  batch = tuple(a for a in BATCH_AXES if sizes.get(a, 1) > 1)
  shards = math.prod(sizes[a] for a in batch)
  d, v = kernel_shape
  vocab = VOCAB_AXIS if sizes.get(VOCAB_AXIS, 1) > 1 and v % sizes[VOCAB_AXIS] == 0 else None
  if (not batch and not vocab) or hidden_shape[0] % shards:
    return _Plan(math.gcd(groups, hidden_shape[0]), chunk)
  embed = EMBED_AXIS if EMBED_AXIS in batch and d % sizes[EMBED_AXIS] == 0 else None
  return _Plan(math.gcd(groups, hidden_shape[0] // shards), chunk, mesh, batch, vocab, embed)


def _logits(h, kernel, bias):
  logits = jnp.einsum("gcd,dv->gcv", h, kernel.astype(h.dtype),
                      preferred_element_type=jnp.float32)
  return logits if bias is None else logits + bias.astype(jnp.float32)


def _chunk_stats(h, kernel, bias, labels, vocab_axis, teacher=None):
  """One chunk's float32 logits [G, c, V'] (V' = this device's slice of V), their
  logsumexp, nll and correct [G, c] over the whole V, and the target distribution over V':
  the labels' one-hot, or with `teacher` (its hidden chunk, kernel, bias) the one-hot mixed
  with the teacher's softmax, alpha of it (teacher: hidden chunk, kernel, bias, alpha)."""
  logits = _logits(h, kernel, bias)
  v = logits.shape[-1]
  if vocab_axis is not None:
    labels = labels - jax.lax.axis_index(vocab_axis) * v  # out of [0, v): another slice's
  mine = (labels >= 0) & (labels < v)
  onehot = jax.nn.one_hot(labels, v, dtype=jnp.float32)  # all zero off this slice
  top = jax.lax.stop_gradient(jnp.max(logits, axis=-1))
  total = jnp.sum(jnp.exp(logits - top[..., None]), axis=-1)
  target = jnp.where(mine, jnp.take_along_axis(logits, jnp.clip(labels, 0, v - 1)[..., None],
                                               axis=-1)[..., 0], 0.0)
  if teacher is not None:
    alpha = teacher[3]
    t_logits = _logits(*teacher[:3])
    t_top_mine = jnp.max(t_logits, axis=-1)
    t_exp = jnp.exp(t_logits - t_top_mine[..., None])
    # This slice's teacher (max, sum of exp, sum of exp * student logit): scaled by the
    # global max and sum, the last is E_teacher[student logit], the soft target's term.
    t_top, t_total, t_dot = t_top_mine, jnp.sum(t_exp, axis=-1), jnp.sum(t_exp * logits, -1)
  if vocab_axis is not None and teacher is None:
    # One small gather, not a max then a sum over `model`; the label's logit is on one slice.
    top_s, total_s, target_s = jax.lax.all_gather(jnp.stack([top, total, target]),
                                                  vocab_axis, axis=1)
    top = jnp.max(top_s, axis=0)
    total = jnp.sum(total_s * jnp.exp(top_s - top), axis=0)
    target = jnp.sum(target_s, axis=0)
  elif vocab_axis is not None:  # the teacher's stats ride in the same gather
    top_s, total_s, target_s, t_top_s, t_total_s, t_dot_s = jax.lax.all_gather(
        jnp.stack([top, total, target, t_top, t_total, t_dot]), vocab_axis, axis=1)
    top = jnp.max(top_s, axis=0)
    total = jnp.sum(total_s * jnp.exp(top_s - top), axis=0)
    target = jnp.sum(target_s, axis=0)
    t_top = jnp.max(t_top_s, axis=0)
    t_scale = jnp.exp(t_top_s - t_top)
    t_total, t_dot = jnp.sum(t_total_s * t_scale, axis=0), jnp.sum(t_dot_s * t_scale, axis=0)
  lse = top + jnp.log(total)
  # The label's logit is the largest (ties count as correct): no argmax pass over V.
  correct = (target >= top).astype(jnp.float32)
  if teacher is None:
    return logits, lse, lse - target, correct, onehot
  # softmax(teacher) on this slice, from the exps already taken: exp(t - t_lse).
  probs = t_exp * (jnp.exp(t_top_mine - t_top) / t_total)[..., None]
  nll = lse - ((1.0 - alpha) * target + alpha * (t_dot / t_total))
  return logits, lse, nll, correct, (1.0 - alpha) * onehot + alpha * probs


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
    groups = math.gcd(groups, batch)
    self.shape, self.groups, self.per_group = (batch, length), groups, batch // groups * length
    self.n = -(-self.per_group // chunk)
    self.c = -(-self.per_group // self.n)
    if self.n == 1:  # one chunk: nothing to skip, so no packing (and no loop, see scan)
      return
    self.order = jnp.argsort(weights.reshape(groups, self.per_group) == 0, axis=1, stable=True)
    self.inverse = jnp.argsort(self.order, axis=1)  # once, for every output join unpacks

  def split(self, a):
    """[B, L, ...] -> [n, G, c, ...], packed."""
    a = a.reshape(self.groups, self.per_group, *a.shape[2:])
    if self.n == 1:
      return a[None]
    a = jnp.take_along_axis(a, self.order.reshape(self.order.shape + (1,) * (a.ndim - 2)), axis=1)
    a = jnp.pad(a, [(0, 0), (0, self.n * self.c - self.per_group)] + [(0, 0)] * (a.ndim - 2))
    return jnp.moveaxis(a.reshape(self.groups, self.n, self.c, *a.shape[2:]), 1, 0)

  def join(self, y):
    """[n, G, c, ...] -> [B, L, ...], unpacked."""
    y = jnp.moveaxis(y, 0, 1).reshape(self.groups, self.n * self.c, *y.shape[3:])
    y = y[:, :self.per_group]
    if self.n == 1:
      return y.reshape(*self.shape, *y.shape[2:])
    inverse = self.inverse.reshape(self.inverse.shape + (1,) * (y.ndim - 2))
    y = jnp.take_along_axis(y, inverse, axis=1)
    return y.reshape(*self.shape, *y.shape[2:])

  def scan(self, step, carry, weights, *args):
    """lax.scan of step(carry, w, *chunks) -> (carry, outs) over the weighted chunks; the
    others keep the carry and give zeros. One chunk: step runs once, unconditionally."""
    if self.n == 1:
      carry, ys = step(carry, *(self.split(a)[0] for a in (weights,) + args))
      return carry, jax.tree.map(lambda y: self.join(y[None]), ys)

    def body(cr, xs):
      w = xs[0]
      skip = lambda cr, *_: (cr, jax.tree.map(jnp.zeros_like, jax.eval_shape(step, cr, *xs)[1]))
      return jax.lax.cond(jnp.any(w != 0), step, skip, cr, *xs)
    carry, ys = jax.lax.scan(body, carry, tuple(map(self.split, (weights,) + args)))
    return carry, jax.tree.map(self.join, ys)


def _total(weights, nll):
  # Summed once after the loop, not carried through it: no per-chunk reduction over devices.
  return jnp.sum(weights.astype(jnp.float32) * nll)


def _on_mesh(plan, local, out_specs, hidden, kernel, bias, labels, weights, teacher):
  """local(hidden, kernel, bias, labels, weights[, teacher]) on each device's rows and V
  slice; the teacher's hidden, kernel and bias split as the student's."""
  args = (hidden, kernel, bias, labels, weights) + (() if teacher is None else (teacher,))
  if plan.mesh is None:
    return local(*args)
  rows, vocab = P(plan.batch), P(plan.vocab)
  in_specs = (rows, P(None, plan.vocab), vocab, rows, rows)
  if teacher is not None:
    in_specs += ((rows, P(None, plan.vocab), vocab, P()),)
  # The skip test and the carries vary by device: shard_map's replication checks would
  # reject the loop, and nothing here is differentiated through it (custom_vjp).
  return jax.shard_map(local, mesh=plan.mesh, check_vma=False, in_specs=in_specs,
                       out_specs=out_specs)(*args)


def _scan_chunks(rows, step, carry, weights, hidden, labels, teacher):
  """rows.scan of step(carry, w, h, lab, teacher chunk or None), the teacher's hidden
  packed and chunked as the student's, its kernel and bias whole."""
  if teacher is None:
    return rows.scan(lambda cr, w, h, lab: step(cr, w, h, lab, None),
                     carry, weights, hidden, labels)
  t_hidden, t_kernel, t_bias, alpha = teacher
  return rows.scan(lambda cr, w, h, lab, th: step(cr, w, h, lab, (th, t_kernel, t_bias, alpha)),
                   carry, weights, hidden, labels, t_hidden)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _fused(hidden, kernel, bias, labels, weights, teacher, plan):
  """Primal (no gradient wanted, e.g. evaluation): logits, lse, nll and correct per chunk."""
  def local(hidden, kernel, bias, labels, weights, teacher=None):
    rows = _Rows(weights, plan.groups, plan.chunk)

    def step(carry, w, h, lab, t):
      del w
      return carry, _chunk_stats(h, kernel, bias, lab, plan.vocab, t)[2:4]
    _, (nll, correct) = _scan_chunks(rows, step, (), weights, hidden, labels, teacher)
    return plan.reduce_batch(_total(weights, nll)), nll, correct
  rows = P(plan.batch)
  return _on_mesh(plan, local, (P(), rows, rows), hidden, kernel, bias, labels, weights,
                  teacher)


def _fused_fwd(hidden, kernel, bias, labels, weights, teacher, plan):
  """The primal plus, from the same logits, d total / d (hidden, kernel, bias), each
  reduced over devices once."""
  def local(hidden, kernel, bias, labels, weights, teacher=None):
    rows = _Rows(weights, plan.groups, plan.chunk)
    dtype = hidden.dtype
    k = kernel.astype(dtype)
    # With V split, each slice's d_hidden is partial: summed over `model` in float32.
    d_h_dtype = jnp.float32 if plan.vocab else dtype

    def step(carry, w, h, lab, t):
      d_kernel, d_bias = carry
      logits, lse, nll, correct, target = _chunk_stats(h, kernel, bias, lab, plan.vocab, t)
      w = w.astype(jnp.float32)[..., None]
      d_logits = w * (jnp.exp(logits - lse[..., None]) - target)
      d_logits_c = d_logits.astype(dtype)
      d_kernel = d_kernel + jnp.einsum("gcd,gcv->dv", h, d_logits_c,
                                       preferred_element_type=jnp.float32)
      if bias is not None:  # a matvec with ones: a column reduction over [c, V] is slower
        d_bias = d_bias + jnp.einsum("gc,gcv->v", jnp.ones(d_logits.shape[:2]), d_logits)
      d_h = jnp.einsum("gcv,dv->gcd", d_logits_c, k,
                       preferred_element_type=jnp.float32).astype(d_h_dtype)
      return (d_kernel, d_bias), (nll, correct, d_h)

    d, v = kernel.shape
    carry = (jnp.zeros((d, v), jnp.float32), jnp.zeros((v,), jnp.float32))
    (d_kernel, d_bias), (nll, correct, d_hidden) = _scan_chunks(
        rows, step, carry, weights, hidden, labels, teacher)
    if plan.vocab:
      d_hidden = jax.lax.psum(d_hidden, plan.vocab)
    if plan.embed:  # onto the kernel's D shards, then summed over the other batch axes
      d_kernel = jax.lax.psum_scatter(d_kernel, plan.embed, scatter_dimension=0, tiled=True)
    rest = tuple(a for a in plan.batch if a != plan.embed)
    if rest:
      d_kernel = jax.lax.psum(d_kernel, rest)
    # Stored in the inputs' dtypes: the cotangent scaling in _fused_bwd keeps them.
    return (plan.reduce_batch(_total(weights, nll)), nll, correct, d_hidden.astype(dtype),
            d_kernel.astype(kernel.dtype),
            None if bias is None else plan.reduce_batch(d_bias).astype(bias.dtype))

  rows = P(plan.batch)
  total, nll, correct, *residuals = _on_mesh(
      plan, local, (P(), rows, rows, rows, P(plan.embed, plan.vocab), P(plan.vocab)),
      hidden, kernel, bias, labels, weights, teacher)
  return (total, nll, correct), tuple(residuals)


def _fused_bwd(plan, residuals, cotangents):
  """Scales the stored gradients by total's cotangent; nll's and correct's are ignored.
  Labels, weights and the teacher (stop-gradient) get none."""
  del plan
  g = cotangents[0].astype(jnp.float32)
  scale = lambda d: None if d is None else (d.astype(jnp.float32) * g).astype(d.dtype)
  return (*map(scale, residuals), None, None, None)


_fused.defvjp(_fused_fwd, _fused_bwd)
