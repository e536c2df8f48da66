"""Multi-label sigmoid BCE (CatLIP) against float64 numpy, on 1 and 8 simulated devices.

The loss goes through a linear head, so the head's gradient is the all-reduce over the
sharded batch that real training needs.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vlp_jax import losses
from vlp_jax.losses import multilabel
from vlp_jax.parallel import mesh as mesh_lib

B, D, V = 16, 8, 24


def reference(feats, kernel, bias, labels, pos_weight, reduction):
  """Loss and its gradients w.r.t. kernel and bias, float64, derived by hand."""
  x = feats @ kernel + bias
  w = 1.0 if pos_weight is None else pos_weight
  # -log s(x) = logaddexp(0, -x), -log(1 - s(x)) = logaddexp(0, x)
  per = w * labels * np.logaddexp(0, -x) + (1 - labels) * np.logaddexp(0, x)
  denom = B * (V if reduction == "mean" else 1)
  s = 1 / (1 + np.exp(-x))
  dx = (w * labels * (s - 1) + (1 - labels) * s) / denom
  return per.sum() / denom, feats.T @ dx, dx.sum(axis=0)


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(B, D))
  kernel = rng.normal(size=(D, V)) * 0.7
  bias = rng.normal(size=V) - 1.0
  labels = (rng.random((B, V)) < 0.2).astype(np.float64)
  pos_weight = rng.uniform(0.5, 3.0, size=V)
  return feats, kernel, bias, labels, pos_weight


MESHES = {"one_device": (dict(data=1, fsdp=1, model=1), 1),
          "data8": (dict(data=8, fsdp=1, model=1), 8),
          "data2_fsdp2_model2": (dict(data=2, fsdp=2, model=2), 8)}


def run_on_mesh(mesh_name, feats, kernel, bias, labels, pos_weight, reduction):
  """Batch split over (data, fsdp); head and labels split over model along V."""
  axes, count = MESHES[mesh_name]
  mesh = mesh_lib.make_mesh(axes, jax.devices()[:count])
  batch, vocab = mesh_lib.BATCH_AXES, "model"
  put = lambda x, spec: jax.device_put(jnp.asarray(x, jnp.float32), NamedSharding(mesh, spec))

  @jax.jit
  def value_and_grad(f, k, b, y, pw):
    loss = lambda k, b: losses.multilabel_bce(f @ k + b, y, pw, reduction=reduction)
    return jax.value_and_grad(loss, argnums=(0, 1))(k, b)

  with jax.set_mesh(mesh):
    pw = None if pos_weight is None else put(pos_weight, P(vocab))
    loss, (dk, db) = value_and_grad(put(feats, P(batch)), put(kernel, P(None, vocab)),
                                    put(bias, P(vocab)), put(labels, P(batch, vocab)), pw)
    assert len(dk.sharding.device_set) == count
    return float(loss), np.asarray(dk), np.asarray(db)


@pytest.mark.parametrize("reduction", ["batch_mean", "mean"])
@pytest.mark.parametrize("weighted", [False, True], ids=["no_pos_weight", "pos_weight"])
@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_loss_and_grads_match_float64(problem, mesh_name, weighted, reduction):
  feats, kernel, bias, labels, pos_weight = problem
  pos_weight = pos_weight if weighted else None
  loss, dk, db = run_on_mesh(mesh_name, feats, kernel, bias, labels, pos_weight, reduction)
  want_loss, want_dk, want_db = reference(feats, kernel, bias, labels, pos_weight, reduction)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
  scale = np.abs(want_dk).max()
  np.testing.assert_allclose(dk, want_dk, rtol=1e-4, atol=1e-5 * scale)
  np.testing.assert_allclose(db, want_db, rtol=1e-4, atol=1e-5 * scale)


def test_one_and_eight_devices_agree(problem):
  one = run_on_mesh("one_device", *problem, "batch_mean")
  eight = run_on_mesh("data8", *problem, "batch_mean")
  for a, b in zip(one, eight):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_extreme_logits_stay_finite_and_exact():
  """Naive log(sigmoid(x)) gives -inf at |x| = 200 in float32; log-sigmoid does not."""
  x = np.array([[200.0, -200.0, 200.0, -200.0, 0.0]])
  y = np.array([[0.0, 1.0, 1.0, 0.0, 1.0]])
  loss, grad = jax.value_and_grad(multilabel.multilabel_bce)(jnp.float32(x), jnp.float32(y))
  per = y * np.logaddexp(0, -x) + (1 - y) * np.logaddexp(0, x)
  np.testing.assert_allclose(float(loss), per.sum(), rtol=1e-6)  # 400 + log 2
  np.testing.assert_allclose(np.asarray(grad), [[1.0, -1.0, 0.0, 0.0, -0.5]], atol=1e-6)


def test_per_example_sums_make_accumulation_exact(problem):
  feats, kernel, bias, labels, _ = problem
  logits = jnp.float32(feats @ kernel + bias)
  y = jnp.float32(labels)
  halves = [multilabel.bce_per_example(logits[s], y[s]).sum() for s in (np.s_[:5], np.s_[5:])]
  np.testing.assert_allclose(float(sum(halves) / B), float(losses.multilabel_bce(logits, y)),
                             rtol=1e-6)


def test_weights_mask_examples(problem):
  feats, kernel, bias, labels, pos_weight = problem
  logits, y = jnp.float32(feats @ kernel + bias), jnp.float32(labels)
  weights = jnp.float32(np.arange(B) < 10)
  for reduction in multilabel.REDUCTIONS:
    masked = losses.multilabel_bce(logits, y, pos_weight, weights, reduction=reduction)
    kept = losses.multilabel_bce(logits[:10], y[:10], pos_weight, reduction=reduction)
    np.testing.assert_allclose(float(masked), float(kept), rtol=1e-6)
  assert float(losses.multilabel_bce(logits, y, weights=jnp.zeros(B))) == 0.0


def test_scalar_pos_weight_and_bfloat16_logits(problem):
  feats, kernel, bias, labels, _ = problem
  x = feats @ kernel + bias
  got = losses.multilabel_bce(jnp.float32(x), jnp.float32(labels), 2.5, reduction="mean")
  np.testing.assert_allclose(
      float(got), reference(feats, kernel, bias, labels, np.full(V, 2.5), "mean")[0], rtol=1e-6)
  low = losses.multilabel_bce(jnp.asarray(x, jnp.bfloat16), jnp.float32(labels))
  assert low.dtype == jnp.float32
  np.testing.assert_allclose(float(low), reference(feats, kernel, bias, labels, None,
                                                   "batch_mean")[0], rtol=1e-2)


def test_unknown_reduction():
  with pytest.raises(ValueError, match="reduction"):
    losses.multilabel_bce(jnp.zeros((2, 3)), jnp.zeros((2, 3)), reduction="sum")
