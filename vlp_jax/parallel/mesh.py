"""The device mesh (data, fsdp, model) built from `config.mesh`, and multi-host start-up."""
import math
import os

import jax
from absl import logging
from jax.sharding import AxisType

AXES = ("data", "fsdp", "model")
# The batch is split over both data-parallel axes; fsdp additionally shards weights.
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_config, num_devices):
  """Resolves -1 entries; raises ValueError naming mesh.* when the sizes cannot fit."""
  sizes = {axis: int(mesh_config[axis]) for axis in AXES}
  unknown = [a for a, s in sizes.items() if s == -1]
  if len(unknown) > 1:
    raise ValueError(f"Config mesh: at most one axis may be -1, got {unknown}")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  described = " x ".join(f"{a}={s}" for a, s in sizes.items())
  if unknown:
    if num_devices % fixed:
      raise ValueError(f"Config mesh ({described}): the fixed axes multiply to {fixed}, "
                       f"which does not divide the {num_devices} devices")
    sizes[unknown[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(f"Config mesh ({described}) needs {fixed} devices, "
                     f"but {num_devices} are available")
  return tuple(sizes[a] for a in AXES)


def make_mesh(mesh_config, devices=None):
  """A mesh with Auto axes: shardings are annotations and XLA propagates them.

  We choose compiler-propagated sharding (not jax's Explicit sharding-in-types) so that
  models stay device-agnostic; explicit collectives live only in the losses (shard_map).
  """
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def batch_size_per_shard(global_batch, mesh, field="train.batch_size"):
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if global_batch % shards:
    raise ValueError(f"Config field {field!r}: {global_batch} is not divisible by the "
                     f"{shards} batch shards (mesh data x fsdp)")
  return global_batch // shards


def initialize_distributed():
  """Joins the other hosts when launched on several; a no-op on a single machine.

  jax finds its peers itself on Cloud TPU pods, SLURM, Open MPI and Kubernetes; elsewhere
  set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID on every host.
  """
  address = os.environ.get("JAX_COORDINATOR_ADDRESS")
  if address:
    jax.distributed.initialize(address, int(os.environ["JAX_NUM_PROCESSES"]),
                               int(os.environ["JAX_PROCESS_ID"]))
  else:
    try:
      jax.distributed.initialize()
    except ValueError as e:  # no cluster environment detected: a single process
      logging.info("single process (%s)", e)
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def write_once(path, write, what):
  """Process 0 calls write() when the file `path` is missing; every process returns once it
  exists. For run files made from the data (tokenizer, label vocabulary): one host does the
  work and all hosts read the same file."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from vlp_jax.data.tf_setup import tf  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0 and not tf.io.gfile.exists(path):
    write()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"{what} written")


def describe(mesh):
  return " x ".join(f"{a}={n}" for a, n in mesh.shape.items())

