"""The notebooks in notebooks/ run top to bottom (as on Colab, with CI-sized parameters) and
their committed .ipynb copies match the jupytext .py sources.

Each notebook runs in a python3 kernel of this interpreter, its parameters injected after
the cell tagged `parameters` (papermill's convention), on one CPU device; a failing cell
fails the test. The notebooks write their summary to RESULTS, which the tests check
against the files the notebook produced.
"""
import json
import math
import os

import numpy as np
import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
NAMES = ("quick_start", "your_images", "pretrained_weights")
CELL_TIMEOUT = 600  # seconds; a cell that trains on a loaded shared CPU takes < 2 min


def run_notebook(name, **parameters):
  """The executed notebook `name` with `parameters` (python values) injected."""
  nb = jupytext.read(os.path.join(NOTEBOOKS, f"{name}.py"))
  tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
  assert len(tagged) == 1, f"{name}: one cell must be tagged 'parameters'"
  declared = nb.cells[tagged[0]].source
  for key in parameters:  # a misspelt name would be ignored by the notebook
    assert f"\n{key} = " in "\n" + declared, f"{name} has no parameter {key}"
  injected = nbformat.v4.new_code_cell(
      "\n".join(f"{k} = {v!r}" for k, v in parameters.items()),
      metadata={"tags": ["injected-parameters"]})
  nb.cells.insert(tagged[0] + 1, injected)
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             MPLBACKEND="module://matplotlib_inline.backend_inline")
  # One CPU device as a user's runtime has, not the 8 simulated ones of conftest.py.
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if not f.startswith("--xla_force_host_platform_device_count"))
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                   resources={"metadata": {"path": NOTEBOOKS}})
  client.execute(env=env)
  return nb


def outputs_of(nb, kind):
  return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
          if kind in o.get("data", {})]


def test_quick_start_then_your_images(tmp_path):
  """quick_start trains 2 steps on 64 generated scenes and exports; your_images loads that
  export (one test, so that pytest-xdist never runs quick_start twice)."""
  results = tmp_path / "quick_start.json"
  workdir = tmp_path / "run"
  nb = run_notebook("quick_start", STEPS=2, MAX_EXAMPLES=16, SHOW=4, SCENES=64,
                    WORKDIR=str(workdir), RESULTS=str(results))
  r = json.loads(results.read_text())
  assert r["steps"] == 2
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert r["logged_steps"] == [row["step"] for row in rows if "loss" in row] == [1, 2]
  assert math.isfinite(r["final_loss"])
  assert r["final_loss"] == [row for row in rows if "loss" in row][-1]["loss"]
  assert sorted(r["zero_shot_accuracy"]) == ["color", "shape", "size"]
  assert all(0 <= a <= 1 for a in r["zero_shot_accuracy"].values())
  assert len(r["captions"]) == 4 and all(isinstance(c, str) for c in r["captions"])
  assert os.path.exists(os.path.join(r["export"], "manifest.json"))
  assert len(outputs_of(nb, "image/png")) == 2  # the loss curves and the scene grid

  # your_images on that export: labels and rankings agree with the scores it reports.
  results = tmp_path / "your_images.json"
  nb = run_notebook("your_images", EXPORT=r["export"], TOP_K=3,
                    QUERIES=["a large red circle", "a small blue square"],
                    RESULTS=str(results))
  r = json.loads(results.read_text())
  assert r["images"] == [f"scene_{i:02d}.png" for i in range(12)]
  classes = ["circle", "square", "triangle", "cross"]
  assert r["labels"] == [classes[int(np.argmax(s))] for s in r["scores"]]
  assert sorted(r["queries"]) == ["a large red circle", "a small blue square"]
  for names, scores in zip(r["queries"].values(), r["query_scores"]):
    assert len(names) == len(set(names)) == 3
    assert scores == sorted(scores, reverse=True)
  assert len(outputs_of(nb, "image/png")) == 2  # the labelled images and the search grid


def test_pretrained_weights(tmp_path):
  """The offline stand-in: a random tiny CLIP in open_clip's file format, imported, zero-shot
  classified and fine-tuned for 2 steps."""
  from vlp_jax import config_lib  # pylint: disable=g-import-not-at-top
  from vlp_jax.data import clip_bpe  # pylint: disable=g-import-not-at-top
  from vlp_jax.models import import_open_clip  # pylint: disable=g-import-not-at-top
  results = tmp_path / "results.json"
  workdir = tmp_path / "run"
  nb = run_notebook("pretrained_weights", CHECKPOINT="random-tiny", STEPS=2, BATCH_SIZE=16,
                    MAX_EXAMPLES=16, SCENES=64, WORKDIR=str(workdir), RESULTS=str(results))
  r = json.loads(results.read_text())
  weights = r["source"].removeprefix("open_clip:")
  merges = r["tokenizer"].removeprefix("clip_bpe:")
  assert weights.endswith(".safetensors") and merges.endswith(".txt.gz")
  # The file holds exactly OpenAI's keys for the fields the notebook read from it.
  state_dict = import_open_clip.load_state_dict(weights)
  config = config_lib.base_config()
  config.model.update(r["model"])
  assert sorted(state_dict) == sorted(import_open_clip.key_layout(config.model))
  assert (r["model"]["vision_width"], r["model"]["vision_heads"]) == (128, 2)
  # The stand-in vocabulary spells each shapes word as one piece, ending the vocabulary.
  tokenizer = clip_bpe.ClipBpeTokenizer(merges, context_length=32)
  assert tokenizer.vocab_size == r["model"]["vocab_size"] == tokenizer.eos_id + 1
  assert len(tokenizer.encode_ids("a large orange triangle below a small red cross")) == 9
  assert r["logged_steps"] == [1, 2] and math.isfinite(r["final_loss"])
  assert (workdir / "checkpoints" / "2").is_dir()
  for accuracy in (r["zero_shot_before"], r["zero_shot_after"]):
    assert sorted(accuracy) == ["color", "shape", "size"]
    assert all(0 <= a <= 1 for a in accuracy.values())
  assert len(outputs_of(nb, "image/png")) == 1  # the loss and the accuracies


@pytest.mark.parametrize("name", NAMES)
def test_committed_ipynb_matches_py(name):
  """notebooks/NAME.ipynb (what Colab opens) is `jupytext --to ipynb NAME.py`, without
  outputs: regenerate it after editing the .py."""
  source = jupytext.read(os.path.join(NOTEBOOKS, f"{name}.py"))
  committed = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
  cells = lambda nb: [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells]
  assert cells(committed) == cells(source)
  assert not any(c.get("outputs") or c.get("execution_count") for c in committed.cells)
  assert committed.metadata.kernelspec.name == "python3"
