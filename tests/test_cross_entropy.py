"""Fused chunked cross-entropy against a float64 reference, the plain loss, and itself.

Chunks of 3 rows (B*L = 28 as ten chunks of 3, the last padded), 1, 2, 7 and 100, and 1,
2 or 4 groups, must give the reference's loss and gradients, under jit on 1 and 8 devices
(also on a current mesh, each device on its rows and vocabulary slice), inside lax.map and
jax.vjp, while compiling to far less temporary memory than the [B, L, V] logits and
skipping the steps that hold only weight-0 positions.
"""
import contextlib
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vlp_jax.losses.cross_entropy import fused_cross_entropy

B, L, D, V = 4, 7, 16, 50


def make_inputs(b=B, seed=0):
  """float32 hidden, kernel, bias; labels; 0/1 weights with a fully-masked row."""
  rng = np.random.default_rng(seed)
  hidden = rng.normal(size=(b, L, D)).astype(np.float32)
  kernel = (0.3 * rng.normal(size=(D, V))).astype(np.float32)
  bias = rng.normal(size=(V,)).astype(np.float32)
  labels = rng.integers(0, V, size=(b, L)).astype(np.int32)
  weights = (rng.random((b, L)) > 0.3).astype(np.float32)
  weights[1] = 0.0
  return hidden, kernel, bias, labels, weights


def reference(hidden, kernel, bias, labels, weights):
  """float64 numpy: (total, nll, correct) and the analytic gradients of total."""
  h, k = hidden.astype(np.float64), kernel.astype(np.float64)
  logits = h @ k + (0.0 if bias is None else bias.astype(np.float64))
  m = logits.max(axis=-1, keepdims=True)
  lse = m[..., 0] + np.log(np.exp(logits - m).sum(axis=-1))
  nll = lse - np.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  correct = (logits.argmax(axis=-1) == labels).astype(np.float64)
  onehot = np.eye(V)[labels]
  d_logits = weights[..., None] * (np.exp(logits - lse[..., None]) - onehot)
  grads = (d_logits @ k.T, np.einsum("bld,blv->dv", h, d_logits), d_logits.sum(axis=(0, 1)))
  return np.sum(weights * nll), nll, correct, grads


def plain_total(hidden, kernel, bias, labels, weights):
  """The unfused float32 loss: all [B, L, V] logits at once."""
  logits = (hidden @ kernel + bias).astype(jnp.float32)
  nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(
      logits, labels[..., None], axis=-1)[..., 0]
  return jnp.sum(weights * nll)


def fused_total(chunk, groups=1):
  return lambda h, k, b, labels, w: fused_cross_entropy(h, k, b, labels, w, chunk, groups)[0]


def assert_weighted_close(got, want, weights, **tol):
  """nll or correct: equal where weighted; at weight 0, equal or 0 (a skipped step)."""
  got, want = np.asarray(got), np.asarray(want)
  on = np.asarray(weights) != 0
  np.testing.assert_allclose(got[on], want[on], **tol)
  off = got[~on]
  assert np.all((off == 0) | np.isclose(off, want[~on], **tol))


def value_and_grads(fn, args):
  return jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))(*args)


@pytest.mark.parametrize("with_bias", [True, False])
def test_values_and_gradients_match_float64_reference(with_bias):
  h, k, b, labels, w = make_inputs()
  b = b if with_bias else None
  total, nll, correct = jax.jit(fused_cross_entropy, static_argnums=5)(h, k, b, labels, w, 3)
  ref_total, ref_nll, ref_correct, ref_grads = reference(h, k, b, labels, w)
  assert total.dtype == nll.dtype == correct.dtype == jnp.float32
  assert nll.shape == correct.shape == (B, L)
  np.testing.assert_allclose(total, ref_total, rtol=1e-5)
  assert_weighted_close(nll, ref_nll, w, rtol=1e-5, atol=1e-6)
  assert_weighted_close(correct, ref_correct, w, rtol=0, atol=0)
  assert 0 < (ref_correct * w).sum() < w.sum()  # both branches of correct are exercised

  fused = lambda h, k, b: fused_cross_entropy(h, k, b, labels, w, 3)[0]
  grads = jax.jit(jax.grad(fused, argnums=(0, 1, 2)))(h, k, b)
  assert (grads[2] is None) == (not with_bias)
  for g, ref in zip(grads, ref_grads):
    if g is not None:
      np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-6)
  assert not np.any(grads[0][1])  # a fully-masked row gets no gradient


def test_gradients_match_plain_float32_loss():
  args = make_inputs()
  total, grads = value_and_grads(fused_total(3), args)
  plain, plain_grads = value_and_grads(plain_total, args)
  np.testing.assert_allclose(total, plain, rtol=1e-6)
  for g, ref in zip(grads, plain_grads):
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)


def test_non_unit_cotangent_is_exact():
  h, k, b, labels, w = make_inputs()
  grad = lambda fn: jax.jit(jax.grad(fn, argnums=(0, 1, 2)))(h, k, b)

  def outer(total_fn):  # total's cotangent is 0.04 * total + 3.7, not 1
    def fn(h, k, b):
      t = total_fn(h, k, b, labels, w)
      return 0.02 * t ** 2 + 3.7 * t + jnp.sum(jnp.sin(h))
    return fn

  for g, ref in zip(grad(outer(fused_total(3))), grad(outer(plain_total))):
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5)
  # nll and correct are stop-gradient: their cotangents never reach the inputs.
  @jax.jit
  def d_hidden(h):
    _, vjp = jax.vjp(lambda h: fused_cross_entropy(h, k, b, labels, w, 3), h)
    return vjp((jnp.float32(2.5), jnp.ones((B, L)), jnp.ones((B, L))))[0]
  d_h = d_hidden(h)
  np.testing.assert_allclose(d_h, 2.5 * reference(h, k, b, labels, w)[3][0], rtol=1e-4,
                             atol=1e-6)


def test_inside_lax_map_and_vjp_like_gradient_accumulation():
  h, k, b, labels, w = make_inputs()
  micro = lambda a: a.reshape(2, B // 2, *a.shape[1:])

  @functools.partial(jax.jit, static_argnums=5)
  def accumulated(h, k, b, labels, w, fused):
    total_fn = fused_total(3) if fused else plain_total
    def one(xs):
      mh, ml, mw = xs
      loss, vjp = jax.vjp(lambda mh, kk, bb: total_fn(mh, kk, bb, ml, mw), mh, k, b)
      return loss, vjp(jnp.float32(0.5))
    losses, grads = jax.lax.map(one, (micro(h), micro(labels), micro(w)))
    return jnp.sum(losses), grads

  got = accumulated(h, k, b, labels, w, True)
  want = accumulated(h, k, b, labels, w, False)
  for g, ref in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("groups", [8, 1])
def test_sharded_batch_on_8_devices_matches_one_device(groups):
  """One group per device packs locally: rows stay put and nothing is gathered. One group
  for the whole batch is still right, at the price of moving rows between devices."""
  assert jax.device_count() == 8
  h, k, b, labels, w = make_inputs(b=8, seed=1)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  rows = NamedSharding(mesh, P("data"))
  sharded = (jax.device_put(h, rows), k, b, jax.device_put(labels, rows),
             jax.device_put(w, rows))
  fn = jax.jit(lambda *a: (fused_cross_entropy(*a, chunk=3, groups=groups),
                           jax.grad(fused_total(3, groups), argnums=(0, 1, 2))(*a)))
  got = fn(*sharded)
  if groups == 8:
    assert got[1][0].sharding.spec == P("data")  # d_hidden stays with its rows
    assert "all-gather" not in fn.lower(*sharded).compile().as_text()
  want = fn(h, k, b, labels, w)
  for g, ref in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6)


def _mesh(shape):
  return jax.make_mesh(shape, ("data", "fsdp", "model"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)


@pytest.mark.parametrize("mesh_shape,with_bias,batch", [
    ((2, 2, 2), True, 8), ((1, 4, 2), False, 8), ((2, 1, 4), True, 8), ((2, 2, 2), True, 6)],
                         ids=["data2_fsdp2_model2", "fsdp4_model2_nobias", "data2_model4",
                              "batch6_not_split"])
def test_on_a_mesh_matches_float64_reference(mesh_shape, with_bias, batch):
  """On a current (data, fsdp, model) mesh each device walks its own rows and vocabulary
  slice (V = 50 split over model=2; model=4 does not divide it: V stays whole) and reduces
  d_kernel once: loss, nll, correct and gradients are the float64 reference's, d_kernel
  comes out on the kernel's (fsdp, model) shards and d_hidden on the rows' devices. A
  batch the batch axes do not divide takes the mesh-less loop."""
  h, k, b, labels, w = make_inputs(b=batch, seed=1)
  b = b if with_bias else None
  mesh = _mesh(mesh_shape)
  fn = jax.jit(lambda *a: (fused_cross_entropy(*a, chunk=3),
                           jax.grad(fused_total(3), argnums=(0, 1, 2))(*a)))
  with jax.set_mesh(mesh):
    (total, nll, correct), grads = fn(h, k, b, labels, w)
  ref_total, ref_nll, ref_correct, ref_grads = reference(h, k, b, labels, w)
  np.testing.assert_allclose(total, ref_total, rtol=1e-5)
  assert_weighted_close(nll, ref_nll, w, rtol=1e-5, atol=1e-6)
  assert_weighted_close(correct, ref_correct, w, rtol=0, atol=0)
  for g, ref in zip(grads, ref_grads):
    if g is not None:
      np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-6)
  assert (grads[2] is None) == (not with_bias)
  if batch == 6:
    return
  data, fsdp, model = mesh_shape
  same = lambda x, *spec: x.sharding.is_equivalent_to(NamedSharding(mesh, P(*spec)), x.ndim)
  assert same(grads[0], tuple(a for a, n in (("data", data), ("fsdp", fsdp)) if n > 1))
  assert same(grads[1], "fsdp" if fsdp > 1 else None, "model" if V % model == 0 else None)


@pytest.mark.parametrize("mesh_shape", [None, (2, 2, 2)], ids=["no_mesh", "data2_fsdp2_model2"])
def test_bfloat16_inputs(mesh_shape):
  h, k, b, labels, w = make_inputs()
  hb, kb = jnp.asarray(h, jnp.bfloat16), jnp.asarray(k, jnp.bfloat16)
  with contextlib.nullcontext() if mesh_shape is None else jax.set_mesh(_mesh(mesh_shape)):
    total, grads = value_and_grads(fused_total(3), (hb, kb, b, labels, w))
  assert total.dtype == jnp.float32
  assert [g.dtype for g in grads] == [jnp.bfloat16, jnp.bfloat16, jnp.float32]
  # Reference on the bfloat16-rounded inputs.
  ref_total, _, _, ref_grads = reference(np.asarray(hb, np.float32), np.asarray(kb, np.float32),
                                         b, labels, w)
  # Products of bfloat16 values are exact in float32: only the gradients' matmuls round.
  np.testing.assert_allclose(total, ref_total, rtol=1e-5)
  for g, ref in zip(grads[:2], ref_grads[:2]):
    np.testing.assert_allclose(np.asarray(g, np.float32), ref, rtol=2e-2, atol=1e-2)
  np.testing.assert_allclose(grads[2], ref_grads[2], rtol=1e-5, atol=1e-6)


def test_chunk_sizes_and_groups_agree():
  args = make_inputs()
  w = args[4]

  def run(chunk, groups=1):
    (total, nll, correct), grads = jax.jit(lambda *a: (
        fused_cross_entropy(*a, chunk=chunk, groups=groups),
        jax.grad(fused_total(chunk, groups), (0, 1, 2))(*a)))(*args)
    return total, grads, np.where(w != 0, nll, 0), np.where(w != 0, correct, 0)

  want = jax.tree.leaves(run(3))
  # one row, one padded, a row's L, more than B*L; groups of 2 and 1 examples, and 3
  # groups, which do not divide the batch (gcd: one group).
  for chunk, groups in ((1, 1), (2, 1), (7, 1), (100, 1), (3, 2), (1, 4), (3, 3)):
    for g, ref in zip(jax.tree.leaves(run(chunk, groups)), want):
      np.testing.assert_allclose(g, ref, rtol=1e-6, atol=1e-6)


def test_weighted_positions_are_packed_and_empty_steps_skipped():
  """Padding at the end of each row, as captions have it: B*2 weighted positions of B*L.

  Packed, they fill the first steps of each group; the other steps compute nothing (nll
  exactly 0 there), and loss and gradients are still the reference's."""
  h, k, b, labels, _ = make_inputs()
  w = np.zeros((B, L), np.float32)
  w[:, :2] = 1.0
  for groups in (1, 2):
    chunk = B // groups  # each group's 2 * chunk weighted rows fill exactly two steps
    total, nll, _ = jax.jit(fused_cross_entropy, static_argnums=(5, 6))(h, k, b, labels, w,
                                                                       chunk, groups)
    assert np.count_nonzero(nll) == 2 * B
    ref_total, ref_nll, _, ref_grads = reference(h, k, b, labels, w)
    np.testing.assert_allclose(total, ref_total, rtol=1e-5)
    np.testing.assert_allclose(nll[:, :2], ref_nll[:, :2], rtol=1e-5)
    grads = jax.jit(jax.grad(fused_total(chunk, groups), (0, 1, 2)))(h, k, b, labels, w)
    for g, ref in zip(grads, ref_grads):
      np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-6)


def test_three_matmuls_and_none_without_gradient():
  spec = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in make_inputs()]
  count = lambda fn: str(jax.make_jaxpr(fn)(*spec)).count("dot_general")
  assert count(lambda *a: fused_cross_entropy(*a, chunk=3)) == 1  # evaluation: logits only
  grad = jax.value_and_grad(fused_total(3), argnums=(0, 1, 2))
  assert count(grad) == 4  # no recompute: logits, d_hidden, d_kernel, d_bias (a matvec)
  no_bias = lambda h, k, b, *rest: grad(h, k, None, *rest)
  assert count(no_bias) == 3


def test_temporary_memory_is_a_chunk_not_the_logits():
  b, d, v = 8, 64, 32000
  def temp_bytes(fn, length):
    spec = [jax.ShapeDtypeStruct(s, t) for s, t in [
        ((b, length, d), jnp.float32), ((d, v), jnp.float32), ((v,), jnp.float32),
        ((b, length), jnp.int32), ((b, length), jnp.float32)]]
    compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2))).lower(*spec).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  logits_bytes = b * 64 * v * 4
  fused, plain = temp_bytes(fused_total(64), 64), temp_bytes(plain_total, 64)
  # Measured on XLA:CPU: fused 0.38x, plain 2.0x the logits.
  assert fused < 0.5 * logits_bytes < logits_bytes < plain
  # Doubling L adds only L-sized buffers, no more logits.
  assert temp_bytes(fused_total(64), 128) - fused < 0.05 * logits_bytes


# --- Distillation: a soft target mixed in from a teacher (ALBEF's momentum-model MLM). ---

DT = 12  # the teacher's width differs from the student's D


def make_teacher(b=B, seed=7):
  rng = np.random.default_rng(seed)
  return ((rng.normal(size=(b, L, DT))).astype(np.float32),
          (0.4 * rng.normal(size=(DT, V))).astype(np.float32),
          rng.normal(size=(V,)).astype(np.float32))


def distill_reference(hidden, kernel, bias, labels, weights, teacher, alpha):
  """float64 numpy: target t = (1 - alpha) onehot + alpha softmax(teacher); (total, nll,
  correct) and the gradients of total, w * (softmax - t) through the logits."""
  h, k = hidden.astype(np.float64), kernel.astype(np.float64)
  logits = h @ k + (0.0 if bias is None else bias.astype(np.float64))
  th, tk, tb = (np.asarray(a, np.float64) for a in teacher)
  t_logits = th @ tk + tb
  t_probs = np.exp(t_logits - t_logits.max(-1, keepdims=True))
  t_probs /= t_probs.sum(-1, keepdims=True)
  target = (1 - alpha) * np.eye(V)[labels] + alpha * t_probs
  m = logits.max(axis=-1, keepdims=True)
  lse = m[..., 0] + np.log(np.exp(logits - m).sum(axis=-1))
  nll = lse - np.sum(target * logits, axis=-1)
  correct = (logits.argmax(axis=-1) == labels).astype(np.float64)
  d_logits = weights[..., None] * (np.exp(logits - lse[..., None]) - target)
  grads = (d_logits @ k.T, np.einsum("bld,blv->dv", h, d_logits), d_logits.sum(axis=(0, 1)))
  return np.sum(weights * nll), nll, correct, grads


def distill_fn(chunk, alpha, teacher_given=True):
  """jit of (total, nll, correct) and d total / d (hidden, kernel, bias)."""
  def fn(h, k, b, labels, w, teacher):
    kw = dict(teacher=teacher, teacher_weight=alpha) if teacher_given else {}
    total_fn = lambda h, k, b: fused_cross_entropy(h, k, b, labels, w, chunk, **kw)[0]
    return (fused_cross_entropy(h, k, b, labels, w, chunk, **kw),
            jax.grad(total_fn, argnums=(0, 1, 2))(h, k, b))
  return jax.jit(fn)


def padded_inputs(b=B, seed=0):
  """make_inputs with trailing padding in each row too, so that chunks of 3 give several
  steps of which the last hold only weight-0 positions (skipped)."""
  h, k, b_, labels, w = make_inputs(b, seed)
  w[:, L - 3:] = 0.0
  return h, k, b_, labels, w


@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_distillation_matches_float64_reference(alpha):
  h, k, b, labels, w = padded_inputs()
  teacher = make_teacher()
  (total, nll, correct), grads = distill_fn(3, alpha)(h, k, b, labels, w, teacher)
  # B*L = 28 positions in ten steps of 3, packed: at least one step holds only padding and
  # is skipped (its nll exactly 0), at least two are computed.
  assert np.sum(np.asarray(nll)[w == 0] == 0) >= 3 and np.count_nonzero(w) > 3
  ref_total, ref_nll, ref_correct, ref_grads = distill_reference(h, k, b, labels, w, teacher,
                                                                 alpha)
  np.testing.assert_allclose(total, ref_total, rtol=1e-5)
  assert_weighted_close(nll, ref_nll, w, rtol=1e-5, atol=1e-5)
  assert_weighted_close(correct, ref_correct, w, rtol=0, atol=0)
  for g, ref in zip(grads, ref_grads):
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5)
  assert not np.any(grads[0][1])  # a fully-masked row gets no gradient
  if alpha == 0.0:  # exactly the loss without a teacher
    want = distill_fn(3, alpha, teacher_given=False)(h, k, b, labels, w, teacher)
    for g, ref in zip(jax.tree.leaves(((total, nll, correct), grads)), jax.tree.leaves(want)):
      np.testing.assert_array_equal(g, ref)


def test_distillation_teacher_gets_no_gradient_and_no_matmul():
  h, k, b, labels, w = padded_inputs()
  teacher = make_teacher()
  t_bias_none = teacher[:2] + (None,)

  def total(h, k, b, th, tk, tb):
    return fused_cross_entropy(h, k, b, labels, w, 3, teacher=(th, tk, tb),
                               teacher_weight=0.4)[0]
  grads = jax.jit(jax.grad(total, argnums=(0, 1, 2, 3, 4, 5)))(h, k, b, *teacher)
  assert all(np.any(g) for g in grads[:3])
  assert not any(np.any(g) for g in grads[3:])
  # Logits, teacher logits, d_hidden, d_kernel, d_bias: no matmul differentiates the teacher.
  spec = [jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype)
          for a in (h, k, b) + teacher]
  jaxpr = str(jax.make_jaxpr(jax.value_and_grad(total, argnums=(0, 1, 2, 3, 4, 5)))(*spec))
  assert jaxpr.count("dot_general") == 5
  # A teacher without bias, and one whose shapes do not fit, or alpha outside [0, 1].
  fused_cross_entropy(h, k, b, labels, w, 3, teacher=t_bias_none, teacher_weight=0.5)
  with pytest.raises(ValueError, match="do not fit"):
    fused_cross_entropy(h, k, b, labels, w, 3, teacher=(teacher[0], teacher[1][:, :-1], None),
                        teacher_weight=0.5)
  with pytest.raises(ValueError, match="in \\[0, 1\\]"):
    fused_cross_entropy(h, k, b, labels, w, 3, teacher=teacher, teacher_weight=1.5)
  with pytest.raises(ValueError, match="needs a teacher"):
    fused_cross_entropy(h, k, b, labels, w, 3, teacher_weight=0.5)
  # alpha traced (ALBEF ramps it every step): one compile, the Python float's values.
  traced = jax.jit(lambda a: jax.value_and_grad(
      lambda h: fused_cross_entropy(h, k, b, labels, w, 3, teacher=teacher,
                                    teacher_weight=a)[0])(h))
  for alpha in (0.25, 0.4):
    want = jax.value_and_grad(lambda h: fused_cross_entropy(
        h, k, b, labels, w, 3, teacher=teacher, teacher_weight=alpha)[0])(h)
    for got, ref in zip(jax.tree.leaves(traced(jnp.float32(alpha))), jax.tree.leaves(want)):
      np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (8, 1, 1)],
                         ids=["data2_fsdp2_model2", "data8"])
def test_distillation_on_a_mesh_matches_one_device(mesh_shape):
  """On a current (data, fsdp, model) mesh, rows over the batch axes and, with model=2, V
  split (the teacher's logsumexp formed over both slices): the mesh-less result."""
  h, k, b, labels, w = padded_inputs(b=8, seed=1)
  teacher = make_teacher(b=8, seed=2)
  fn = distill_fn(3, 0.4)
  want = fn(h, k, b, labels, w, teacher)
  with jax.set_mesh(_mesh(mesh_shape)):
    got = fn(h, k, b, labels, w, teacher)
  on = w != 0  # weight-0 positions: computed or skipped (0) depending on the packing
  for g, ref in zip(jax.tree.leaves(got[0][1:]), jax.tree.leaves(want[0][1:])):
    np.testing.assert_allclose(np.asarray(g)[on], np.asarray(ref)[on], rtol=1e-5, atol=1e-5)
  for g, ref in zip(jax.tree.leaves((got[0][0], got[1])), jax.tree.leaves((want[0][0], want[1]))):
    np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5)
  ref_total = distill_reference(h, k, b, labels, w, teacher, 0.4)[0]
  np.testing.assert_allclose(got[0][0], ref_total, rtol=1e-5)


def test_chunk_none_follows_a_memory_budget():
  """chunk=None: CHUNK_ELEMENTS // V rows per chunk. A small vocabulary takes every
  position in one chunk, computed without a loop (no scan, no packing sort), and gives the
  reference's loss and gradients; a large one is walked in chunks."""
  from vlp_jax.losses import cross_entropy
  assert cross_entropy.chunk_rows(32000) == cross_entropy.CHUNK_ELEMENTS // 32000
  assert cross_entropy.chunk_rows(10 ** 9) == 1
  assert cross_entropy.chunk_rows(V, 3) == 3
  with pytest.raises(ValueError):
    cross_entropy.chunk_rows(V, 0)
  args = make_inputs()
  spec = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in args]
  grad = jax.value_and_grad(fused_total(None), argnums=(0, 1, 2))
  jaxpr = str(jax.make_jaxpr(grad)(*spec))
  loops = re.compile(r"\b(scan|while|sort)\[")
  assert not loops.search(jaxpr)
  assert loops.search(str(jax.make_jaxpr(jax.value_and_grad(fused_total(3), argnums=(0, 1, 2)))(
      *spec)))
  total, grads = value_and_grads(fused_total(None), args)
  ref_total, _, _, ref_grads = reference(*args)
  np.testing.assert_allclose(total, ref_total, rtol=1e-5)
  for g, ref in zip(grads, ref_grads):
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-6)
  _, nll, correct = jax.jit(fused_cross_entropy)(*args)
  _, ref_nll, ref_correct, _ = reference(*args)
  assert_weighted_close(nll, ref_nll, args[4], rtol=1e-5)
  assert_weighted_close(correct, ref_correct, args[4])
