"""The CLIP train step: 1 device vs 8 simulated devices (data, fsdp and tensor parallel),
and accumulation vs full batch."""
import jax
import numpy as np
import pytest

from tests.helpers import random_batch, tiny_config
from vlp_jax import families
from vlp_jax.parallel import mesh as mesh_lib
from vlp_jax.train import optimizer, state as state_lib
from vlp_jax.train.step import make_train_step


def run_steps(config, devices, steps=2, batch_fn=random_batch):
  """Losses of `steps` steps and the final params (numpy), on a mesh over `devices`;
  step i reads batch_fn(config, seed=i)."""
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  family = families.get_family(config, eos_id=1)
  tx, lr_fn = optimizer.make(config)
  state, shardings = state_lib.create(family, tx, config.seed, mesh)
  step_fn = make_train_step(family, tx, lr_fn, config, mesh, shardings)
  losses = []
  for i in range(steps):
    state, metrics = step_fn(state, batch_fn(config, seed=i))
    losses.append(float(metrics["loss"]))
  return np.array(losses), jax.tree.map(np.asarray, state.params)


@pytest.fixture(scope="module")
def one_device():
  config = tiny_config(**{"mesh.data": 1})
  return run_steps(config, jax.devices()[:1])


def assert_same(a, b, rtol=1e-5):
  """Losses to rtol; parameters to rtol of themselves or of the largest parameter.

  The absolute part is needed because Adam divides by sqrt(v): where a gradient is zero
  in exact arithmetic (e.g. the key bias, which shifts every score of a query equally),
  the update is float32 noise / (noise + eps), so its bits depend on summation order. Such
  elements move by ~1e-7; a sharding bug moves whole arrays by O(lr) = 1e-3.
  """
  losses_a, params_a = a
  losses_b, params_b = b
  np.testing.assert_allclose(losses_a, losses_b, rtol=rtol)
  scale = max(np.abs(x).max() for x in jax.tree.leaves(params_b))
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * scale),
               params_a, params_b)


@pytest.mark.parametrize("mesh", [dict(data=8, fsdp=1), dict(data=2, fsdp=4)],
                         ids=["data8", "data2_fsdp4"])
def test_eight_devices_match_one(one_device, mesh):
  config = tiny_config(**{f"mesh.{k}": v for k, v in mesh.items()})
  assert_same(run_steps(config, jax.devices()), one_device)


def test_tensor_parallel_matches_one_device(one_device):
  """model=2 splits heads, MLP units and the vocabulary (token embeddings) over two
  devices, fsdp=4 the rest: the same step as one device."""
  config = tiny_config(**{"mesh.data": 1, "mesh.fsdp": 4, "mesh.model": 2})
  assert_same(run_steps(config, jax.devices()), one_device)


def test_ring_loss_step_on_eight_devices_matches_allgather_on_one(one_device):
  config = tiny_config(**{"mesh.data": 2, "mesh.fsdp": 4, "loss.contrastive": "ring"})
  assert_same(run_steps(config, jax.devices()), one_device)


def test_siglip_ring_on_eight_devices_matches_allgather_on_one():
  siglip = {"model.name": "siglip", "model.logit_scale_init": 10.0,
            "model.logit_scale_max": 0.0, "model.image_pool": "map",
            "model.text_causal": False, "model.text_pool": "last"}
  reference = run_steps(tiny_config(**siglip, **{"mesh.data": 1}), jax.devices()[:1])
  ring = run_steps(tiny_config(**siglip, **{"mesh.data": 8, "loss.contrastive": "ring"}),
                   jax.devices())
  assert_same(ring, reference)


def test_params_really_change(one_device):
  """Guards the equivalence test: a step that did nothing would pass it vacuously."""
  config = tiny_config(**{"mesh.data": 1, "train.steps": 1})
  _, params0 = run_steps(config, jax.devices()[:1], steps=0)
  _, params2 = one_device
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), params0, params2))
  assert min(moved) > 0


def test_four_micro_batches_equal_one_full_batch(one_device):
  config = tiny_config(**{"mesh.data": 2, "mesh.fsdp": 4, "train.accum_steps": 4})
  assert_same(run_steps(config, jax.devices()), one_device)


def test_bf16_scan_remat_train_with_float32_params():
  options = dict(dtype="bfloat16", scan=True, remat=True)
  config = tiny_config(**{"mesh.data": 2, "mesh.fsdp": 4,
                          **{f"model.{k}": v for k, v in options.items()}})
  losses, params = run_steps(config, jax.devices(), steps=3)
  assert np.all(np.isfinite(losses))
  assert all(p.dtype == np.float32 for p in jax.tree.leaves(params))
