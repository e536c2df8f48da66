"""Bad input fails fast with one clear line naming the culprit; bad records are skipped."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import main
from tests.conftest import REPO
from tests.helpers import tiny_config, write_scene_folder
from vlp_jax import config_lib
from vlp_jax.parallel import mesh as mesh_lib


def run_cli(*args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_unknown_config_field_on_the_command_line():
  result = run_cli("--config=configs/clip_tiny.py", "--mode=describe", "--config.model.widht=3")
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "error: unknown config field 'widht' in --config.model.widht")


def test_unknown_config_field_in_a_config_file():
  c = tiny_config()
  c.unlock()
  c.train.batchsize = 3
  with pytest.raises(ValueError, match="Unknown config field 'train.batchsize'"):
    config_lib.validate(c)


def test_bad_config_value_names_the_field():
  with pytest.raises(ValueError, match="'model.dtype'"):
    tiny_config(**{"model.dtype": "float16"})
  with pytest.raises(ValueError, match="'train.accum_steps'"):
    tiny_config(**{"train.accum_steps": 3})
  with pytest.raises(ValueError, match="'model.remat_policy'.*'dot'"):
    tiny_config(**{"model.remat_policy": "dot"})


def test_remat_policy_names_match_the_models():
  from vlp_jax.models import layers  # pylint: disable=import-outside-toplevel
  assert tuple(layers.REMAT_POLICIES) == config_lib.REMAT_POLICIES
  with pytest.raises(ValueError, match="model.remat_policy='dot'"):
    layers.remat_policy("dot")


def test_mesh_that_does_not_divide_the_devices():
  with pytest.raises(ValueError, match=r"mesh \(data=3 x fsdp=-1.*does not divide the 8 devices"):
    mesh_lib.make_mesh(dict(data=3, fsdp=-1, model=1))
  with pytest.raises(ValueError, match=r"needs 4 devices, but 8 are available"):
    mesh_lib.make_mesh(dict(data=2, fsdp=2, model=1))


def test_batch_that_does_not_split_over_the_mesh(tmp_path):
  c = tiny_config(**{"train.batch_size": 12, "data.train": "jsonl:/nowhere"})
  with pytest.raises(ValueError, match="'train.batch_size / train.accum_steps'.*8 batch shards"):
    main.run(c, "train", str(tmp_path))


def test_missing_dataset_is_one_line_on_the_cli(tmp_path):
  result = run_cli("--config=configs/clip_tiny.py", f"--workdir={tmp_path}",
                   "--config.data.train=jsonl:/no/such/folder")
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "/no/such/folder" in last
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize("spec", ["builtin:nosuch:train", "jsonl:/no/such/folder:train",
                                  "webdataset:/x"])
def test_missing_or_unknown_dataset(tmp_path, spec):
  c = tiny_config(**{"data.train": spec, "mesh.data": -1})
  with pytest.raises(ValueError, match=spec.split(":")[1] if "nosuch" in spec else "no/such|webdataset"):
    main.run(c, "train", str(tmp_path))


def test_empty_caption_file(tmp_path):
  (tmp_path / "data").mkdir()
  (tmp_path / "data" / "captions.jsonl").write_text("")
  c = tiny_config(**{"data.train": f"jsonl:{tmp_path / 'data'}"})
  with pytest.raises(ValueError, match="captions.jsonl"):
    main.run(c, "train", str(tmp_path / "work"))


def test_unreadable_image_files(tmp_path):
  folder = write_scene_folder(tmp_path / "data", count=4)
  for name in os.listdir(os.path.join(folder, "images")):
    os.remove(os.path.join(folder, "images", name))
  c = tiny_config(**{"data.train": f"jsonl:{folder}", "data.eval": ""})
  with pytest.raises(ValueError, match="0000.png"):
    main.run(c, "train", str(tmp_path / "work"))


def test_corrupt_records_are_skipped_counted_and_the_run_evaluates(tmp_path):
  folder = write_scene_folder(tmp_path / "data", count=48)
  with open(os.path.join(folder, "images", "0003.png"), "wb") as f:
    f.write(b"this is not an image")
  with open(os.path.join(folder, "images", "0005.png"), "wb") as f:
    f.write(b"")
  c = tiny_config(**{"data.train": f"jsonl:{folder}", "data.eval": f"jsonl:{folder}",
                     "train.steps": 4, "train.batch_size": 8, "train.checkpoint_every": 2,
                     "model.context_length": 24, "data.shuffle_buffer": 64})
  workdir = str(tmp_path / "work")
  result = main.run(c, "train", workdir)
  assert result["data/skipped/not_an_image"] >= 1
  assert result["data/skipped/empty_file"] >= 1
  assert np.isfinite(result["loss"])
  evaluated = main.run(c, "eval", workdir)
  assert evaluated["step"] == 4
  assert evaluated["retrieval/data/count"] == 46  # 48 records, two unreadable
  assert evaluated["retrieval/data/t2i_r10"] == result["retrieval/data/t2i_r10"]
  json.dumps(evaluated)  # the CLI prints it as JSON
