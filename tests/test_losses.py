"""Contrastive losses on 8 simulated devices against an unsharded float64 reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vlp_jax.losses import contrastive
from vlp_jax.parallel import mesh as mesh_lib


def reference_infonce(img, txt, scale):
  """Symmetric InfoNCE in float64 numpy: mean over rows of both directions' NLL."""
  logits = scale * img @ txt.T
  def nll(l):
    m = l.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(l - m).sum(axis=1))
    return lse - np.diag(l)
  return (nll(logits).mean() + nll(logits.T).mean()) / 2


def numeric_grad(f, x, eps=1e-6):
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    d = np.zeros_like(x)
    d[idx] = eps
    g[idx] = (f(x + d) - f(x - d)) / (2 * eps)
  return g


@pytest.fixture(scope="module")
def pairs():
  rng = np.random.default_rng(0)
  b, d = 16, 8
  img = rng.normal(size=(b, d))
  txt = img + 0.8 * rng.normal(size=(b, d))
  img /= np.linalg.norm(img, axis=1, keepdims=True)
  txt /= np.linalg.norm(txt, axis=1, keepdims=True)
  return img, txt, 3.7


@pytest.mark.parametrize("axes", [dict(data=8, fsdp=1, model=1), dict(data=2, fsdp=4, model=1),
                                  dict(data=2, fsdp=2, model=2)])
def test_softmax_allgather_matches_float64_reference(pairs, axes):
  img, txt, scale = pairs
  mesh = mesh_lib.make_mesh(axes)
  loss_fn = contrastive.sharded(contrastive.softmax_allgather, mesh, mesh_lib.BATCH_AXES)
  sh = NamedSharding(mesh, P(mesh_lib.BATCH_AXES))

  @jax.jit
  def value_and_grads(i, t, s):
    return jax.value_and_grad(lambda i, t, s: loss_fn(i, t, s)[0], argnums=(0, 1, 2))(i, t, s)

  with jax.set_mesh(mesh):
    i = jax.device_put(jnp.asarray(img, jnp.float32), sh)
    t = jax.device_put(jnp.asarray(txt, jnp.float32), sh)
    loss, (gi, gt, gs) = value_and_grads(i, t, jnp.float32(scale))

  ref = reference_infonce(img, txt, scale)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(gi), numeric_grad(lambda x: reference_infonce(x, txt, scale), img),
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(gt), numeric_grad(lambda x: reference_infonce(img, x, scale), txt),
                             rtol=1e-4, atol=1e-6)
  gs_ref = (reference_infonce(img, txt, scale + 1e-6) - reference_infonce(img, txt, scale - 1e-6)) / 2e-6
  np.testing.assert_allclose(float(gs), gs_ref, rtol=1e-4)


def test_softmax_allgather_accuracy_metrics(pairs):
  img, txt, scale = pairs
  mesh = mesh_lib.make_mesh(dict(data=8, fsdp=1, model=1))
  loss_fn = jax.jit(contrastive.sharded(contrastive.softmax_allgather, mesh, mesh_lib.BATCH_AXES))
  _, metrics = loss_fn(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32),
                       jnp.float32(scale))
  sims = img @ txt.T
  np.testing.assert_allclose(float(metrics["i2t_top1"]),
                             np.mean(sims.argmax(axis=1) == np.arange(len(img))))
  np.testing.assert_allclose(float(metrics["t2i_top1"]),
                             np.mean(sims.argmax(axis=0) == np.arange(len(img))))
