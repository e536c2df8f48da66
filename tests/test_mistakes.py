"""A user's mistakes end in one line with exit status 2 and never touch a trained run."""
import json
import os
import subprocess
import sys

import pytest

import main
from tests.conftest import REPO
from tests.helpers import tiny_config, tiny_run_args, write_scene_folder


def _cli(*args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def _one_line_error(result, *fragments):
  assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: "), last
  for fragment in fragments:
    assert fragment in last, last
  return last


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A finished 4-step run (checkpoints 2 and 4) and the config and flags that made it."""
  root = tmp_path_factory.mktemp("run")
  data = write_scene_folder(root / "data", count=48)
  fields = {"train.steps": 4, "train.checkpoint_every": 2, "data.eval": f"jsonl:{data}:test"}
  args = tiny_run_args(data, **fields)
  c = tiny_config(**{"data.train": f"jsonl:{data}:train", "data.holdout_percent": 20,
                     "model.context_length": 12, "data.eval": f"jsonl:{data}:test",
                     "train.steps": 4, "train.checkpoint_every": 2, "train.log_every": 1,
                     "eval.batch_size": 32})
  workdir = str(root / "work")
  main.run(c, "train", workdir)
  return dict(config=c, args=args, workdir=workdir, root=root)


@pytest.mark.parametrize("field,value,message", [
    ("optim.lr", -1e-3, "'optim.lr'"), ("optim.lr", float("nan"), "'optim.lr'"),
    ("optim.warmup_steps", -1, "'optim.warmup_steps'"), ("optim.b1", 1.5, "'optim.b1'"),
    ("train.log_every", 0, "'train.log_every'"),
    ("train.keep_checkpoints", 0, "'train.keep_checkpoints'"),
    ("train.checkpoint_every", 0, "'train.checkpoint_every'"),
    ("train.nonfinite", "ignore", "'train.nonfinite'"),
    ("optim.weight_decay_mode", "adamw", "'optim.weight_decay_mode'"),
    ("data.eval_resize", "stretch", "'data.eval_resize'"),
])
def test_numeric_and_enum_fields_are_checked(field, value, message):
  with pytest.raises(ValueError, match=message):
    tiny_config(**{field: value})


def test_describe_rejects_a_batch_that_does_not_divide_the_devices():
  with pytest.raises(ValueError, match="'train.batch_size'.*7 batch shards"):
    main.run(tiny_config(), "describe", None, devices=7)


def test_config_file_mistakes_are_one_line(tmp_path):
  (tmp_path / "broken.py").write_text("def get_config(:\n")
  (tmp_path / "raises.py").write_text("def get_config():\n  return {}['model']\n")
  _one_line_error(_cli("--config=configs/nosuch.py", "--mode=describe"), "nosuch.py",
                  "No such file")
  _one_line_error(_cli(f"--config={tmp_path}/broken.py", "--mode=describe"), "SyntaxError",
                  "line 1")
  _one_line_error(_cli(f"--config={tmp_path}/raises.py", "--mode=describe"), "KeyError",
                  "line 2")


def test_workdir_mistakes_are_one_line(tmp_path, run):
  afile = tmp_path / "afile"
  afile.write_text("")
  _one_line_error(_cli(*run["args"], f"--workdir={afile}"), "is a file")
  # /proc takes no new directories, even from root.
  _one_line_error(_cli(*run["args"], "--workdir=/proc/vlp_jax_work"), "not writable")


def test_eval_of_a_missing_step_is_one_line(run):
  last = _one_line_error(_cli(*run["args"], f"--workdir={run['workdir']}", "--mode=eval",
                              "--step=999"), "999")
  assert "2" in last and "4" in last  # the steps there are


def test_eval_needs_the_runs_tokenizer_and_writes_nothing(tmp_path, run):
  with pytest.raises(ValueError, match="does not exist"):
    main.run(run["config"], "eval", str(tmp_path / "nowhere"))
  assert not (tmp_path / "nowhere").exists()
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match="No checkpoint"):
    main.run(run["config"], "eval", str(empty))
  assert not os.listdir(empty)
  copy = tmp_path / "copy"
  subprocess.run(["cp", "-r", run["workdir"], str(copy)], check=True)
  os.remove(copy / "tokenizer.model")
  before = sorted(p for p, _, _ in os.walk(copy))
  with pytest.raises(ValueError, match="tokenizer.model is missing"):
    main.run(run["config"], "eval", str(copy))
  assert not (copy / "tokenizer.model").exists()
  assert sorted(p for p, _, _ in os.walk(copy)) == before


def test_a_resumed_run_logs_each_step_once(tmp_path, run):
  """A run killed after its last checkpoint logged steps that the resumed run logs again."""
  copy = tmp_path / "copy"
  subprocess.run(["cp", "-r", run["workdir"], str(copy)], check=True)
  with open(copy / "metrics.jsonl", "a") as f:  # steps 5, 6 logged, then killed before a save
    for step in (5, 6):
      f.write(json.dumps({"step": step, "loss": 9.0}) + "\n")
  c = run["config"].copy_and_resolve_references()
  c.train.steps = 6
  main.run(c, "train", str(copy))
  with open(copy / "metrics.jsonl") as f:
    steps = [json.loads(line)["step"] for line in f if '"loss"' in line]
  assert steps == [1, 2, 3, 4, 5, 6]
