"""A run killed at any step and resumed from its workdir loses nothing.

30 steps straight must equal the same run killed (SIGKILL, mid-training), resumed,
stopped with SIGTERM (clean save and exit), and resumed again: every step's loss.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.helpers import tiny_run_args, write_scene_folder

STEPS = 30


def main_cmd(workdir, data_dir):
  return [sys.executable, "main.py", f"--workdir={workdir}"] + tiny_run_args(
      data_dir, **{"train.steps": STEPS, "train.checkpoint_every": 5, "data.eval": ""})


def env():
  e = dict(os.environ)
  e["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  return e


def losses(workdir):
  """step -> loss from metrics.jsonl; a resumed run's lines replace the killed run's."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "loss" in row:
        out[row["step"]] = row["loss"]
  return out


def run_until(cmd, workdir, step, sig):
  """Starts cmd, sends `sig` once `step` is logged; returns (returncode, stdout)."""
  proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path) and max(losses(workdir), default=0) >= step:
      proc.send_signal(sig)
      break
    time.sleep(0.02)
  out, _ = proc.communicate(timeout=300)
  return proc.returncode, out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return write_scene_folder(tmp_path_factory.mktemp("scenes"))


def test_killed_and_resumed_run_equals_straight_run(tmp_path, data_dir):
  straight = tmp_path / "straight"
  subprocess.run(main_cmd(straight, data_dir), cwd=REPO, env=env(), check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  expected = losses(straight)
  assert sorted(expected) == list(range(1, STEPS + 1))

  resumed = tmp_path / "resumed"
  code, _ = run_until(main_cmd(resumed, data_dir), resumed, 8, signal.SIGKILL)
  assert code == -signal.SIGKILL, "the run finished before it could be killed"
  code, out = run_until(main_cmd(resumed, data_dir), resumed, 18, signal.SIGTERM)
  assert code == 0, "SIGTERM must save and exit cleanly"
  final = json.loads(out.strip().splitlines()[-1])
  assert final["stopped"] and final["step"] < STEPS
  assert os.path.isdir(resumed / "checkpoints" / str(final["step"]))
  subprocess.run(main_cmd(resumed, data_dir), cwd=REPO, env=env(), check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  got = losses(resumed)
  assert sorted(got) == sorted(expected)
  for step in expected:
    assert got[step] == pytest.approx(expected[step], rel=1e-6), f"step {step}"
