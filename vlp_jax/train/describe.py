"""`--mode=describe`: sizes, FLOPs and per-device memory of a config, without allocating it.

Everything comes from jax.eval_shape and jax.make_jaxpr on abstract values, so describing
a pod-sized config takes seconds on a laptop.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from vlp_jax import config_lib, families, losses
from vlp_jax.parallel import mesh as mesh_lib
from vlp_jax.parallel import sharding
from vlp_jax.train import optimizer, state as state_lib
from vlp_jax.train import step as step_lib


def _dot_flops(eqn):
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  out = eqn.outvars[0].aval.shape
  contracted = math.prod(lhs[d] for d in lhs_contract)
  return 2 * math.prod(out) * contracted


def _sub_jaxprs(eqn):
  for value in eqn.params.values():
    for item in value if isinstance(value, (list, tuple)) else (value,):
      if isinstance(item, jex_core.ClosedJaxpr):
        yield item.jaxpr
      elif isinstance(item, jex_core.Jaxpr):
        yield item


def matmul_flops(jaxpr):
  """FLOPs of every dot and convolution in a jaxpr (2 per multiply-add), loops unrolled."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_flops(eqn)
    elif name == "conv_general_dilated":
      # Our convs are patch embeddings (NHWC, HWIO): out elements x kernel volume x in-channels.
      rhs = eqn.invars[1].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs[:-1])
    else:
      inner = sum(matmul_flops(j) for j in _sub_jaxprs(eqn))
      total += inner * (eqn.params.get("length", 1) if name == "scan" else 1)
  return total


def forward_flops_per_example(family, params, family_state=None):
  batch = family.example_batch(1)
  jaxpr = jax.make_jaxpr(lambda p, b, s: family.features(p, b, jax.random.PRNGKey(0), s))(
      params, batch, family_state)
  return matmul_flops(jaxpr.jaxpr)


def train_flops_per_example(family, params, family_state=None):
  """Matmul FLOPs of one example's forward and backward pass as the train step runs them:
  frozen parameters get no weight gradient (and a frozen tower whose input needs none, no
  backward at all), state such as a momentum model is only read forward."""
  batch = family.example_batch(1)
  frozen = state_lib.frozen_mask(family, params)

  def forward_backward(p, b, s):
    features = lambda q: family.features(step_lib.stop_frozen(q, frozen), b,
                                         jax.random.PRNGKey(0), s)
    out, pull = jax.vjp(features, p)
    return pull(jax.tree.map(jnp.ones_like, out))
  jaxpr = jax.make_jaxpr(forward_backward)(params, batch, family_state)
  return matmul_flops(jaxpr.jaxpr)


def _without_remat(config):
  config = config.copy_and_resolve_references()
  config.model.remat = False
  return config


def _param_counts(params):
  counts = {name: int(sum(np.prod(x.shape) for x in jax.tree.leaves(sub)))
            for name, sub in params.items()}
  counts["total"] = int(sum(counts.values()))
  return counts


def describe(config, num_devices=None):
  """The summary dict printed by --mode=describe."""
  config_lib.validate(config)
  num_devices = num_devices or jax.device_count()
  shape = mesh_lib.mesh_shape(config.mesh, num_devices)
  mesh_shape = dict(zip(mesh_lib.AXES, shape))
  shards = mesh_shape["data"] * mesh_shape["fsdp"]
  micro = config.train.batch_size // config.train.accum_steps
  if micro % shards:
    raise ValueError(f"Config field 'train.batch_size': {micro} examples per step (batch_size "
                     f"/ accum_steps) do not divide the {shards} batch shards (mesh data x "
                     f"fsdp on {num_devices} devices)")
  family = families.get_family(config)
  tx, _ = optimizer.make(config)
  abstract, specs = state_lib.abstract_state(family, tx, config.seed, mesh_shape)
  counts = _param_counts(abstract.params)
  forward = forward_flops_per_example(family, abstract.params, abstract.family_state)
  result = {
      "model": config.model.name,
      "mesh": mesh_shape,
      "num_devices": num_devices,
      "params_total": counts["total"],
      **{f"params/{k}": v for k, v in counts.items() if k != "total"},
      # forward + backward matmul FLOPs (backward: about 2x forward where all is trained),
      # without rematerialisation's recomputation: the model's FLOPs, as MFU counts them
      "flops_per_example": train_flops_per_example(families.get_family(_without_remat(config)),
                                                   abstract.params, abstract.family_state),
      "forward_flops_per_example": forward,
      "bytes_per_device/params": sharding.bytes_per_device(abstract.params, specs.params,
                                                           mesh_shape),
      "bytes_per_device/opt_state": sharding.bytes_per_device(abstract.opt_state,
                                                              specs.opt_state, mesh_shape),
      "global_batch": config.train.batch_size,
  }
  result["flops_per_step"] = result["flops_per_example"] * config.train.batch_size
  frozen = state_lib.frozen_mask(family, abstract.params)
  if frozen is not None:  # they have no optimizer state (state_lib.optimizer_for)
    leaves = list(zip(jax.tree.leaves(abstract.params), jax.tree.leaves(frozen)))
    result["params_frozen"] = int(sum(np.prod(x.shape) for x, f in leaves if f))
    result["bytes/params_frozen"] = int(sum(x.size * x.dtype.itemsize for x, f in leaves if f))
  result["params_trainable"] = counts["total"] - result.get("params_frozen", 0)
  result["bytes/opt_state"] = int(sum(x.size * x.dtype.itemsize
                                      for x in jax.tree.leaves(abstract.opt_state)))
  if family.CONTRASTIVE_KIND:
    result["bytes_per_device/loss"] = losses.memory_estimate(
        config.loss.contrastive, family.CONTRASTIVE_KIND,
        max(config.train.batch_size // shards, 1), shards, config.model.embed_dim)
  return result

