"""CapFilt (vlp_jax/tools/capfilt.py) with a BLIP run trained for two steps: what it keeps,
what it writes (read back by the jsonl and wds sources), its counts, and its flag errors."""
import json
import os
import subprocess
import sys

import pytest

import main
from tests.conftest import REPO
from tests.helpers import tiny_config, write_scene_folder
from vlp_jax import data
from vlp_jax.data import jsonl_writer, scenes, sources
from vlp_jax.tools import capfilt

IMAGES = 8


def blip_overrides(train_folder):
  return {"model.name": "blip", "model.context_length": 16, "loss.queue_size": 8,
          "data.train": f"jsonl:{train_folder}", "data.eval": "", "train.steps": 2,
          "train.batch_size": 8, "data.shuffle_buffer": 64, "eval.batch_size": 8}


def write_config(path, config):
  """`config` as a config file for the command line; it imports no jax or TF (validating
  would: the tool validates), so flag errors come fast."""
  with open(path, "w") as f:
    f.write(f"import json\n\nimport ml_collections\n\nFIELDS = {config.to_json()!r}\n\n\n"
            "def get_config():\n  return ml_collections.ConfigDict(json.loads(FIELDS))\n")
  return str(path)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A BLIP workdir (the real trainer, 2 steps) and a CapFilt input: 8 images, one with a
  second web caption, and a corrupt record."""
  root = tmp_path_factory.mktemp("capfilt")
  train_folder = write_scene_folder(root / "train", count=16)
  config = tiny_config(**blip_overrides(train_folder))
  workdir = str(root / "blip")
  main.run(config, "train", workdir)
  examples = []
  for i in range(IMAGES):
    scene = scenes.make_scene(11, i)
    examples.append((f"{i:02d}.png", scene["png"], scene["caption"]))
  examples.append(("00.png", examples[0][1], "another caption of the first image"))
  examples.append(("zz_corrupt.png", b"not an image", "a caption of nothing"))
  web = jsonl_writer.write_jsonl_folder(str(root / "web"), examples)
  return dict(config=config, workdir=workdir, web=web, root=root,
              captions=[caption for _, _, caption in examples[:-1]])


def check_counts(summary):
  s = summary
  assert s["records_read"] == IMAGES + 2 and s["records_skipped"] == 1
  assert s["skipped"] == {"not_an_image": 1}
  assert s["images_read"] == IMAGES and s["web_captions"] == IMAGES + 1
  assert s["web_kept"] + s["web_dropped"] == s["web_captions"]
  assert s["synthetic_kept"] + s["synthetic_dropped"] == s["synthetic_captions"]
  assert s["images_kept"] + s["images_dropped"] == s["images_read"]
  assert s["pairs_written"] == s["web_kept"] + s["synthetic_kept"]


def test_threshold_zero_keeps_every_caption_and_training_reads_it(run):
  out = str(run["root"] / "all")
  summary = capfilt.run(run["config"], run["workdir"], f"jsonl:{run['web']}", out,
                        threshold=0.0, batch_size=8)
  check_counts(summary)
  assert summary["step"] == 2 and summary["workdir"] == run["workdir"]
  assert summary["synthetic_captions"] == IMAGES and summary["synthetic_empty"] == 0
  assert summary["web_kept"] == IMAGES + 1 and summary["synthetic_kept"] == IMAGES
  assert summary["images_dropped"] == 0 and summary["pairs_written"] == 2 * IMAGES + 1
  with open(os.path.join(out, capfilt.SUMMARY)) as f:
    assert json.load(f) == summary

  source = sources.get_source(f"jsonl:{out}")
  assert source.num_records == 2 * IMAGES + 1
  assert len(set(source.keys)) == IMAGES  # each image once, beside each of its captions
  written = [c.decode() for c in source.raw_captions]
  assert sum(c in run["captions"] for c in written) == IMAGES + 1
  # The trainer's reader decodes every record: the images are copied into the folder.
  ev = data.load_eval_set(f"jsonl:{out}", run["config"], None)
  assert ev.num_images == 2 * IMAGES + 1 and not any(ev.skipped.values())
  sources.get_source(f"jsonl:{out}:train")  # the training spec needs no extra flag

  with open(os.path.join(out, capfilt.SCORES)) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == IMAGES and all(r["image"].startswith("images/") for r in rows)
  assert all(0 <= c["p"] <= 1 and c["kept"] for r in rows for c in r["captions"])
  assert [c["origin"] for c in rows[0]["captions"]] == ["web", "web", "synthetic"]


def test_threshold_one_keeps_nothing(run):
  out = str(run["root"] / "none")
  summary = capfilt.run(run["config"], run["workdir"], f"jsonl:{run['web']}", out,
                        threshold=1.0, batch_size=8)
  check_counts(summary)
  assert summary["web_kept"] == summary["synthetic_kept"] == summary["pairs_written"] == 0
  assert summary["images_dropped"] == IMAGES
  with open(os.path.join(out, "captions.jsonl")) as f:
    assert not f.read()


def test_keep_web_as_shards(run):
  out = str(run["root"] / "shards")
  summary = capfilt.run(run["config"], run["workdir"], f"jsonl:{run['web']}", out,
                        keep=["web"], threshold=0.0, fmt="wds", per_shard=4, batch_size=8)
  check_counts(summary)
  assert summary["keep"] == ["web"] and summary["synthetic_captions"] == 0
  assert summary["pairs_written"] == summary["web_kept"] == IMAGES + 1
  assert sorted(os.listdir(out)) == ["00000.tar", "00001.tar", "00002.tar", capfilt.SCORES,
                                     capfilt.SUMMARY]
  source = sources.get_source(f"wds:{out}/*.tar")
  captions = [r["caption"].decode() for r in source.records().as_numpy_iterator()]
  assert sorted(captions) == sorted(run["captions"])  # the web captions, no synthetic one


def cli(*args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  return subprocess.run([sys.executable, "-m", "vlp_jax.tools.capfilt", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)


def test_bad_flags_exit_2_with_one_line_naming_the_flag(run):
  clip = write_config(run["root"] / "clip_config.py", tiny_config())
  blip = write_config(run["root"] / "blip_config2.py", run["config"])
  common = [f"--data=jsonl:{run['web']}", f"--out={run['root'] / 'never'}"]
  cases = [
      ("--workdir", [f"--config={blip}", f"--workdir={run['root'] / 'missing'}"]),
      ("--workdir", [f"--config={blip}"]),
      ("--config", [f"--config={clip}", f"--workdir={run['workdir']}"]),  # a CLIP run
      ("--threshold", [f"--config={blip}", f"--workdir={run['workdir']}", "--threshold=1.5"]),
  ]
  for flag, args in cases:
    result = cli(*args, *common)
    lines = result.stderr.strip().splitlines()  # TF's start-up lines may come first
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert [line for line in lines if line.startswith("error")] == lines[-1:], lines
    assert lines[-1].startswith(f"error: {flag}"), lines
  assert not os.path.exists(run["root"] / "never")
