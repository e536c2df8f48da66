"""A non-finite step never reaches the parameters, and a diverged run keeps its last good
checkpoint (train.nonfinite = stop | skip)."""
import json
import os
import subprocess
import sys

import jax
import numpy as np

from tests.conftest import REPO
from tests.helpers import random_batch, tiny_config, tiny_run_args, write_scene_folder
from vlp_jax import families
from vlp_jax.parallel import mesh as mesh_lib
from vlp_jax.train import optimizer, state as state_lib
from vlp_jax.train.step import make_train_step


def _steps(mode, bad_steps, steps=4):
  """Runs `steps` steps on one device, the batches of `bad_steps` (1-based) poisoned with a
  NaN pixel; returns the states' params and counters after each step."""
  c = tiny_config(**{"mesh.data": 1, "train.nonfinite": mode})
  mesh = mesh_lib.make_mesh(c.mesh, jax.devices()[:1])
  family = families.get_family(c)
  tx, lr_fn = optimizer.make(c)
  state, shardings = state_lib.create(family, tx, c.seed, mesh)
  step_fn = make_train_step(family, tx, lr_fn, c, mesh, shardings)
  out = []
  for i in range(1, steps + 1):
    batch = random_batch(c, seed=i)
    if i in bad_steps:
      batch["image"][0, 0, 0, 0] = np.nan
    state, metrics = step_fn(state, batch)
    out.append((jax.tree.map(np.asarray, state.params), jax.tree.map(np.asarray, state.opt_state),
                {k: int(getattr(state, k)) for k in
                 ("step", "skipped_nonfinite", "nonfinite_streak", "nonfinite_step")},
                float(metrics["loss"])))
  return out


def _same(a, b):
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_skip_leaves_the_state_untouched_and_counts():
  runs = _steps("skip", bad_steps={2})
  (p1, o1, _, _), (p2, o2, c2, loss2), (p3, _, c3, _) = runs[:3]
  assert np.isnan(loss2)
  assert _same(p1, p2) and _same(o1, o2)  # the poisoned step changed nothing
  assert not _same(p2, p3)  # and training goes on
  assert c2 == dict(step=2, skipped_nonfinite=1, nonfinite_streak=1, nonfinite_step=2)
  assert c3 == dict(step=3, skipped_nonfinite=1, nonfinite_streak=0, nonfinite_step=2)
  assert all(np.all(np.isfinite(x)) for p, *_ in runs for x in jax.tree.leaves(p))


def test_stop_freezes_the_state_at_the_last_good_step():
  runs = _steps("stop", bad_steps={2})
  p1 = runs[0][0]
  for params, _, counters, _ in runs[1:]:
    assert _same(p1, params)  # later finite steps do not apply either: the run must stop
  assert runs[-1][2] == dict(step=4, skipped_nonfinite=3, nonfinite_streak=3, nonfinite_step=2)


def _cli(workdir, *args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run([sys.executable, "main.py", f"--workdir={workdir}", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)


DIVERGING = {"train.steps": 8, "train.checkpoint_every": 1, "optim.lr": 1e6,
             "optim.warmup_steps": 0, "optim.schedule": "constant", "data.eval": ""}


def _checkpoint_steps(workdir):
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if '"loss"' in line]  # strict JSON: NaN is null


def test_a_diverging_run_stops_and_its_last_good_checkpoint_evaluates(tmp_path):
  """lr 1e6 blows up within a few steps: the run ends in one line naming the first bad
  step, the step before it stays the latest checkpoint, and that checkpoint evaluates."""
  data = write_scene_folder(tmp_path / "data", count=48)
  workdir = tmp_path / "work"
  result = _cli(workdir, *tiny_run_args(data, **DIVERGING))
  assert result.returncode == 2, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  rows = _rows(workdir)
  bad = rows[-1]["step"]
  assert rows[-1]["loss"] is None and all(r["loss"] is not None for r in rows[:-1])
  assert 2 <= bad < DIVERGING["train.steps"], rows
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: step {bad}: ") and f"(step {bad - 1}) is the last good" in last
  assert _checkpoint_steps(workdir)[-1] == bad - 1
  evaluated = _cli(workdir, *tiny_run_args(data, **dict(DIVERGING, **{"data.eval":
                                                                       f"jsonl:{data}:test"})),
                   "--mode=eval")
  assert evaluated.returncode == 0, evaluated.stderr[-2000:]
  metrics = json.loads(evaluated.stdout.strip().splitlines()[-1])
  assert metrics["step"] == bad - 1
  assert all(v is not None and np.isfinite(v) for v in metrics.values())


def test_skip_mode_counts_skipped_steps_and_saves_only_finite_states(tmp_path):
  import main  # pylint: disable=g-import-not-at-top
  from vlp_jax.train import loop  # pylint: disable=g-import-not-at-top
  data = write_scene_folder(tmp_path / "data", count=48)
  c = tiny_config(**{"data.train": f"jsonl:{data}:train", "data.holdout_percent": 20,
                     "model.context_length": 24, "train.nonfinite": "skip",
                     "train.max_nonfinite": 2, "train.log_every": 1, **DIVERGING})
  workdir = str(tmp_path / "work")
  try:
    main.run(c, "train", workdir)
  except loop.NonFiniteError as e:  # the bad steps came in a row
    assert "2 non-finite steps in a row (train.max_nonfinite=2)" in str(e)
  rows = _rows(workdir)
  skipped = np.cumsum([r["loss"] is None for r in rows])
  assert skipped[-1] >= 1
  assert [r["train/skipped_nonfinite"] for r in rows] == list(skipped)
  s = loop.setup(c, workdir, reading=True)
  for step in _checkpoint_steps(workdir):
    state, _ = s.checkpointer.restore(s.abstract_state, s.shardings, step)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.params)), step
