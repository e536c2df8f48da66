"""Two real processes (jax.distributed on localhost, 4 CPU devices each) == one with 8.

The step test runs the CLIP train step on a global 8-device mesh, each process feeding only
its half of every batch (jax.make_array_from_process_local_data), and compares losses and
parameters with the single-process run. The main.py test trains through the real entry
point as two processes on wds shards (each reads its own shards), with orbax saving jointly.
Run as a script, this file is the worker: `python -m tests.test_multihost PORT ID OUT`.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np

# Not imported from conftest: that would give the worker processes 8 devices each.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MESH = {"mesh.data": 2, "mesh.fsdp": 4}


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(**extra):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", **extra)
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _run_pair(make_cmd, env_for, timeout=420):
  """Starts both processes, waits for both; returns their (returncode, output)."""
  procs = [subprocess.Popen(make_cmd(i), cwd=REPO, env=env_for(i), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=timeout)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return [(p.returncode, out) for p, out in zip(procs, outs)]


def worker(port, process_id, out):
  """Two CLIP steps on the global mesh, this process feeding its rows of each batch."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(f"127.0.0.1:{port}", 2, process_id)
  from tests.helpers import random_batch, tiny_config  # pylint: disable=g-import-not-at-top
  from vlp_jax import families  # pylint: disable=g-import-not-at-top
  from vlp_jax.parallel import mesh as mesh_lib, sharding  # pylint: disable=g-import-not-at-top
  from vlp_jax.train import optimizer, state as state_lib  # pylint: disable=g-import-not-at-top
  from vlp_jax.train.step import make_train_step  # pylint: disable=g-import-not-at-top
  assert (jax.process_count(), jax.device_count()) == (2, 8), (jax.process_count(), jax.devices())
  config = tiny_config(**MESH)
  mesh = mesh_lib.make_mesh(config.mesh)
  family = families.get_family(config, eos_id=1)
  tx, lr_fn = optimizer.make(config)
  state, shardings = state_lib.create(family, tx, config.seed, mesh)
  step_fn = make_train_step(family, tx, lr_fn, config, mesh, shardings)
  target = sharding.batch_sharding(mesh)
  losses = []
  for i in range(2):
    batch = random_batch(config, seed=i)
    shape = batch["image"].shape
    rows = sorted({idx[0].indices(shape[0])[:2] for idx in
                   target.addressable_devices_indices_map(shape).values()})
    lo, hi = rows[0][0], rows[-1][1]
    assert hi - lo == shape[0] // 2, rows  # this process holds one contiguous half
    local = {k: jax.make_array_from_process_local_data(target, v[lo:hi], v.shape)
             for k, v in batch.items()}
    state, metrics = step_fn(state, local)
    losses.append(float(metrics["loss"]))
  params = jax.tree.map(np.asarray, multihost_utils.process_allgather(
      state.params, tiled=True))
  if process_id == 0:
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(out, losses=np.array(losses), **flat)
  jax.distributed.shutdown()


def test_two_processes_match_one_with_eight_devices(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from tests.helpers import tiny_config  # pylint: disable=g-import-not-at-top
  from tests.test_train_step import assert_same, run_steps  # pylint: disable=g-import-not-at-top
  port, out = _free_port(), str(tmp_path / "two.npz")
  results = _run_pair(lambda i: [sys.executable, "-m", "tests.test_multihost", str(port),
                                 str(i), out], lambda i: _env())
  for code, text in results:
    assert code == 0, text[-3000:]
  two = np.load(out)
  losses, params = run_steps(tiny_config(**MESH), jax.devices(), steps=2)
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
          for path, v in jax.tree_util.tree_leaves_with_path(params)}
  assert set(flat) == set(two.files) - {"losses"}
  assert_same((two["losses"], {k: two[k] for k in flat}), (losses, flat))


def test_main_trains_and_checkpoints_as_two_processes(tmp_path):
  from tests.helpers import tiny_run_args  # pylint: disable=g-import-not-at-top
  from tests.test_data_wds import _good  # pylint: disable=g-import-not-at-top
  from vlp_jax.data import wds_writer  # pylint: disable=g-import-not-at-top
  wds_writer.write_shards(str(tmp_path / "shards"), [_good(i) for i in range(64)], 16)
  port, workdir = _free_port(), tmp_path / "work"
  args = tiny_run_args(str(tmp_path), **{
      "data.train": f"wds:{tmp_path}/shards/*.tar", "data.eval": "", "train.steps": 6,
      "train.checkpoint_every": 3, "mesh.data": 2, "mesh.fsdp": 4})

  def run(steps):
    cmd = [sys.executable, "main.py", f"--workdir={workdir}", *args,
           f"--config.train.steps={steps}"]
    env = lambda i: _env(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_run.port}",
                         JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i))
    _run.port = _free_port()
    return _run_pair(lambda i: cmd, env)

  _run = run
  first = run(3)
  for code, text in first:
    assert code == 0, text[-3000:]
  assert os.path.isdir(workdir / "checkpoints" / "3")
  second = run(6)
  for code, text in second:
    assert code == 0, text[-3000:]
  final = json.loads(second[0][1].strip().splitlines()[-1])
  assert final["step"] == 6 and np.isfinite(final["loss"])
  assert "restored checkpoint at step 3" in second[0][1] + second[1][1]


if __name__ == "__main__":
  worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
