"""Contrastive losses on 8 simulated devices against unsharded float64 references.

Every implementation (all-gather and ring; softmax and sigmoid) must give the reference's
loss and gradients with respect to both embeddings and the scalars, on several meshes.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vlp_jax import losses
from vlp_jax.losses import contrastive
from vlp_jax.parallel import mesh as mesh_lib


def reference_softmax(img, txt, scale):
  """Symmetric InfoNCE in float64 numpy: mean over rows of both directions' NLL."""
  logits = scale * img @ txt.T
  def nll(l):
    m = l.max(axis=1, keepdims=True)
    return m[:, 0] + np.log(np.exp(l - m).sum(axis=1)) - np.diag(l)
  return (nll(logits).mean() + nll(logits.T).mean()) / 2


def reference_sigmoid(img, txt, scale, bias):
  """SigLIP in float64 numpy: -1/B sum_ij log sigmoid(z_ij (t x_i.y_j + b))."""
  logits = scale * img @ txt.T + bias
  z = 2 * np.eye(len(img)) - 1
  return np.sum(np.logaddexp(0, -z * logits)) / len(img)


def numeric_grads(f, args, eps=1e-6):
  """Central differences of f with respect to every element of every argument."""
  grads = []
  for a, x in enumerate(args):
    x = np.asarray(x, np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
      d = np.zeros_like(x)
      d[idx] = eps
      hi = list(args); hi[a] = x + d
      lo = list(args); lo[a] = x - d
      g[idx] = (f(*hi) - f(*lo)) / (2 * eps)
    grads.append(g)
  return grads


@pytest.fixture(scope="module")
def pairs():
  rng = np.random.default_rng(0)
  b, d = 16, 8
  img = rng.normal(size=(b, d))
  txt = img + 0.8 * rng.normal(size=(b, d))
  img /= np.linalg.norm(img, axis=1, keepdims=True)
  txt /= np.linalg.norm(txt, axis=1, keepdims=True)
  return img, txt


CASES = [("softmax", impl, reference_softmax, (3.7,)) for impl in ("allgather", "ring")] + [
    ("sigmoid", impl, reference_sigmoid, (10.0, -4.0)) for impl in ("allgather", "ring")]
MESHES = [dict(data=8, fsdp=1, model=1), dict(data=2, fsdp=4, model=1),
          dict(data=2, fsdp=2, model=2)]


def sharded_value_and_grads(kind, impl, mesh_axes, img, txt, scalars):
  mesh = mesh_lib.make_mesh(mesh_axes)
  table = losses.SOFTMAX if kind == "softmax" else losses.SIGMOID
  loss_fn = contrastive.sharded(table[impl], mesh, mesh_lib.BATCH_AXES, len(scalars))
  sh = NamedSharding(mesh, P(mesh_lib.BATCH_AXES))
  argnums = tuple(range(2 + len(scalars)))

  @jax.jit
  def run(*args):
    (loss, metrics), grads = jax.value_and_grad(lambda *a: loss_fn(*a), argnums, has_aux=True)(*args)
    return loss, metrics, grads

  with jax.set_mesh(mesh):
    args = [jax.device_put(jnp.asarray(x, jnp.float32), sh) for x in (img, txt)]
    args += [jnp.float32(s) for s in scalars]
    return run(*args)


@pytest.mark.parametrize("mesh_axes", MESHES, ids=["data8", "data2_fsdp4", "data2_fsdp2_model2"])
@pytest.mark.parametrize("kind,impl,reference,scalars", CASES,
                         ids=[f"{k}_{i}" for k, i, _, _ in CASES])
def test_loss_and_grads_match_float64_reference(pairs, mesh_axes, kind, impl, reference, scalars):
  img, txt = pairs
  loss, _, grads = sharded_value_and_grads(kind, impl, mesh_axes, img, txt, scalars)
  np.testing.assert_allclose(float(loss), reference(img, txt, *scalars), rtol=1e-5)
  expected = numeric_grads(reference, [img, txt, *scalars])
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind,impl,reference,scalars", CASES,
                         ids=[f"{k}_{i}" for k, i, _, _ in CASES])
def test_in_batch_accuracy_metrics(pairs, kind, impl, reference, scalars):
  img, txt = pairs
  _, metrics, _ = sharded_value_and_grads(kind, impl, MESHES[1], img, txt, scalars)
  sims = img @ txt.T
  np.testing.assert_allclose(float(metrics["i2t_top1"]),
                             np.mean(sims.argmax(axis=1) == np.arange(len(img))))
  np.testing.assert_allclose(float(metrics["t2i_top1"]),
                             np.mean(sims.argmax(axis=0) == np.arange(len(img))))


@pytest.mark.parametrize("kind,impl", [(k, i) for k in ("softmax", "sigmoid")
                                       for i in ("allgather", "ring")])
def test_describe_memory_estimate_matches_aot_compilation(kind, impl):
  """The model `--mode=describe` uses stays within 15% of what XLA actually allocates."""
  n, b, dim = 8, 128, 768
  mesh = jax.make_mesh((n,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
  table = losses.SOFTMAX if kind == "softmax" else losses.SIGMOID
  num_scalars = 1 if kind == "softmax" else 2
  loss_fn = contrastive.sharded(table[impl], mesh, ("batch",), num_scalars)
  grad_fn = jax.jit(jax.value_and_grad(lambda *a: loss_fn(*a)[0], tuple(range(2 + num_scalars))))
  emb = jax.ShapeDtypeStruct((n * b, dim), jnp.float32, sharding=NamedSharding(mesh, P("batch")))
  scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
  compiled = grad_fn.lower(emb, emb, *([scalar] * num_scalars)).compile()
  measured = compiled.memory_analysis().temp_size_in_bytes
  estimate = losses.memory_estimate(impl, kind, b, n, dim)
  assert abs(estimate - measured) / measured < 0.15, (estimate, measured)
