"""Export (`--mode=export`) and the Python API (`vlp_jax.load`): an exported run, loaded in
a new process or on other devices, gives what the run itself gives."""
import json
import os
import subprocess
import sys

import flax
import jax
import numpy as np
import pytest

import main
import vlp_jax
from vlp_jax import config_lib
from tests.conftest import REPO
from tests.helpers import tiny_config, write_scene_folder
from vlp_jax.parallel import sharding
from vlp_jax.train import export, init_from, loop

LOAD_SCRIPT = """
import json, sys
import numpy as np
import vlp_jax
model = vlp_jax.load(sys.argv[1], batch_size=16)  # eval.batch_size: the same programs
folder = sys.argv[2]
ev = model.eval_set("zeroshot:jsonl:" + folder)
task = ev.zeroshot_tasks["label"]
result = model.zero_shot(ev.images, task.classnames, task.templates, task.ensemble)
scenes = model.eval_set("jsonl:" + folder)
print(json.dumps(dict(
    top1=float(np.mean(result.indices == ev.labels["label"])),
    captions=model.caption(scenes.images, method="greedy"),
    devices=len(model.mesh.devices.flat))))
"""


@pytest.fixture(scope="module")
def coca(tmp_path_factory):
  """A CoCa trained for 2 steps, its eval and captions, and its export."""
  tmp = tmp_path_factory.mktemp("coca")
  folder = write_scene_folder(tmp / "data", count=24)
  c = tiny_config(**{"model.name": "coca", "model.num_decoder_queries": 4,
                     "model.multimodal_depth": 1, "model.context_length": 24,
                     "data.train": f"jsonl:{folder}", "data.eval": f"zeroshot:jsonl:{folder}",
                     "train.steps": 2, "train.batch_size": 8, "data.shuffle_buffer": 64,
                     "eval.batch_size": 16, "decode.method": "greedy", "decode.show": 0})
  workdir, out = str(tmp / "run"), str(tmp / "export")
  quiet = c.copy_and_resolve_references()
  quiet.data.eval = ""  # no end-of-training evaluation: --mode=eval below is the reference
  main.run(quiet, "train", workdir)
  evaluated = main.run(c, "eval", workdir)
  main.run(c, "caption", workdir, caption_data=f"jsonl:{folder}")
  with open(os.path.join(workdir, "captions", "data_step2.jsonl")) as f:
    captions = [json.loads(line)["caption"] for line in f]
  manifest = main.run(c, "export", workdir, out=out)
  return dict(config=c, folder=folder, workdir=workdir, out=out, evaluated=evaluated,
              captions=captions, manifest=manifest)


def test_export_in_a_new_process_gives_eval_accuracy_and_captions(coca):
  m = coca["manifest"]
  assert (m["family"], m["step"], m["dtype"], m["family_state"]) == ("coca", 2, "float32", False)
  assert sorted(os.listdir(coca["out"])) == ["checkpoints", "config.json", "manifest.json",
                                            "tokenizer.model"]
  with open(os.path.join(coca["out"], "config.json")) as f:
    saved = json.load(f)
  assert saved["model"]["scan"] is False and saved["model"]["name"] == "coca"
  *_, params, manager = init_from._checkpoint_params(coca["out"], None)
  manager.close()
  assert m["parameters"] == sum(int(np.prod(s.shape)) for s in params.values())

  # A new process; it may read the programs this one compiled from the run's cache.
  env = dict(os.environ, PYTHONPATH=REPO,
             JAX_COMPILATION_CACHE_DIR=os.path.join(coca["workdir"], "compile_cache"))
  done = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, coca["out"], coca["folder"]],
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  loaded = json.loads(done.stdout.strip().splitlines()[-1])
  assert loaded["top1"] == pytest.approx(coca["evaluated"]["zeroshot/data_label/top1"], abs=1e-9)
  assert loaded["captions"] == coca["captions"]


def test_a_run_and_its_export_load_to_the_same_outputs_on_other_devices(coca):
  images = np.random.default_rng(0).integers(0, 256, (5, 20, 24, 3), np.uint8)
  texts = ["a small red circle", "two shapes", ""]
  run = vlp_jax.load(coca["workdir"])  # 8 devices
  export = vlp_jax.load(coca["out"], devices=jax.devices()[:1])
  assert len(run.mesh.devices.flat) == 8 and len(export.mesh.devices.flat) == 1
  for method, inputs in (("encode_images", images), ("encode_texts", texts)):
    np.testing.assert_allclose(getattr(export, method)(inputs), getattr(run, method)(inputs),
                               rtol=1e-5, atol=1e-6, err_msg=method)
  assert export.caption(images) == run.caption(images)
  # Inputs: a path, a PIL image and an array of the same picture are the same input.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = os.path.join(coca["folder"], "images", "0000.png")
  as_pil = Image.open(path)
  arrays = export.images([path, as_pil, np.asarray(as_pil.convert("RGB"))])
  np.testing.assert_array_equal(arrays[0], arrays[1])
  np.testing.assert_array_equal(arrays[0], arrays[2])
  hits = export.retrieve(texts, images, top_k=2)
  scores = export.encode_texts(texts) @ export.encode_images(images).T
  np.testing.assert_array_equal(hits.indices, np.argsort(-scores, axis=1, kind="stable")[:, :2])
  # What a family cannot do names the families that can; bad inputs name themselves.
  export.family.EVALUATIONS = frozenset({"retrieval"})  # this loaded instance only
  with pytest.raises(ValueError, match=r"cannot caption; the families that can: .*coca"):
    export.caption(images)
  with pytest.raises(ValueError, match="uint8"):
    export.encode_images(np.zeros((1, 8, 8, 3), np.float32))
  with pytest.raises(ValueError, match="does not exist"):
    export.encode_images("no/such/file.png")


def test_export_of_an_fsdp_run_loads_on_one_device(tmp_path):
  """Trained on 8 devices with fsdp=8 (every weight sharded) and scanned layers, exported
  from the shards in the unrolled layout."""
  folder = write_scene_folder(tmp_path / "data", count=24)
  c = tiny_config(**{"mesh.fsdp": 8, "model.scan": True, "model.vision_depth": 2,
                     "data.train": f"jsonl:{folder}", "data.eval": "", "train.steps": 1,
                     "data.shuffle_buffer": 32})
  workdir = str(tmp_path / "run")
  main.run(c, "train", workdir)
  out = str(tmp_path / "export")
  main.run(c, "export", workdir, out=out)
  *_, params, manager = init_from._checkpoint_params(out, None)
  manager.close()
  assert ("image_tower", "encoder", "block_1", "attn", "qkv_kernel") in params
  assert not any("blocks" in p or "last_block" in p for p in params)
  # Each device converts what it holds: no all-gather in the compiled conversion.
  setup, state = loop.restore_for_reading(c, workdir)
  setup.checkpointer.close()
  convert = export.converter(export.canonical_config(c), setup.family.eos_id, setup.tx,
                             setup.mesh)
  with sharding.rules_context(), jax.set_mesh(setup.mesh):
    hlo = convert.lower({"params": state.params}).compile().as_text()
  assert "all-gather" not in hlo and "all-reduce" not in hlo
  images = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), np.uint8)
  ours = vlp_jax.load(out, devices=jax.devices()[:1]).encode_images(images)
  theirs = vlp_jax.load(workdir).encode_images(images)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
  # bfloat16: every weight rounded once, nothing else changed.
  c16 = c.copy_and_resolve_references()
  c16.export.dtype = "bfloat16"
  half = str(tmp_path / "export16")
  assert main.run(c16, "export", workdir, out=half)["dtype"] == "bfloat16"
  a = init_from.load(f"export:{half}", "", _abstract(c))
  b = init_from.load(f"export:{out}", "", _abstract(c))
  assert a.keys() == b.keys()
  for path in a:
    assert a[path].dtype == jax.numpy.bfloat16, path
    np.testing.assert_array_equal(np.asarray(a[path], np.float32),
                                  np.asarray(np.asarray(b[path]).astype(jax.numpy.bfloat16),
                                             np.float32))
  # Nothing is overwritten.
  with pytest.raises(ValueError, match="exists and is not empty"):
    main.run(c, "export", workdir, out=out)


def _abstract(config):
  from vlp_jax import families  # pylint: disable=g-import-not-at-top
  from vlp_jax.train import optimizer, state  # pylint: disable=g-import-not-at-top
  family = families.get_family(config)
  abstract, _ = state.abstract_state(family, optimizer.make(config)[0], 0, {"data": 1})
  return abstract.params


def test_export_from_the_command_line_reads_the_runs_config(coca, tmp_path):
  out = str(tmp_path / "export")
  command = [sys.executable, "main.py", "--mode=export", f"--workdir={coca['workdir']}",
             f"--out={out}", "--step=2", "--config.export.dtype=bfloat16"]
  env = dict(os.environ, XLA_FLAGS="")
  done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.loads(done.stdout.strip().splitlines()[-1])["dtype"] == "bfloat16"
  # init_from=export:DIR starts a run from the exported parameters.
  loaded = init_from.load(f"export:{out}", "", _abstract(coca["config"]))
  assert loaded.keys() == flax.traverse_util.flatten_dict(_abstract(coca["config"])).keys()


def test_reading_modes_without_config_need_the_runs_config_json(tmp_path, capsys):
  argv = ["main.py", "--mode=export", f"--workdir={tmp_path}", "--config.export.dtype=bfloat16"]
  with pytest.raises(SystemExit) as stop:
    main.with_run_config(argv)
  assert stop.value.code == 2
  assert "config.json is missing" in capsys.readouterr().err
  (tmp_path / "config.json").write_text(config_lib.to_json(tiny_config()))
  assert main.with_run_config(argv)[1].endswith(f"run_config.py:{tmp_path}")
  with pytest.raises(SystemExit):
    main.with_run_config(["main.py", "--mode=train", f"--workdir={tmp_path}"])
