"""CatLIP: multi-hot synset labels, the BCE train step on 1 and 8 devices, zero-shot by the
head, and a run that trains, evaluates by head and probes the image tower."""
import json
import os

import jax
import numpy as np
import pytest

from tests.helpers import tiny_config
from tests.test_train_step import assert_same
from vlp_jax import families
from vlp_jax.data import synsets
from vlp_jax.parallel import mesh as mesh_lib
from vlp_jax.train import optimizer, state as state_lib
from vlp_jax.train.step import make_train_step

needs_wordnet = pytest.mark.skipif(bool(synsets.available()),
                                   reason=f"WordNet: {synsets.available()}")
VOCABULARY = ["red.n.01", "square.n.01", "circle.n.01", "blue.n.01", "dog.n.01"]


def catlip_config(**overrides):
  return tiny_config(**{"model.name": "catlip", "model.vocab_size": 8, **overrides})


def _batch(config, seed):
  rng = np.random.default_rng(seed)
  b, m = config.train.batch_size, config.model
  return {"image": rng.normal(size=(b, m.image_size, m.image_size, 3)).astype(np.float32),
          "labels": (rng.random((b, m.vocab_size)) < 0.3).astype(np.uint8)}


def _run(config, devices, steps=2):
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  family = families.get_family(config)
  tx, lr_fn = optimizer.make(config)
  state, shardings = state_lib.create(family, tx, config.seed, mesh)
  step_fn = make_train_step(family, tx, lr_fn, config, mesh, shardings)
  losses = []
  for i in range(steps):
    state, metrics = step_fn(state, _batch(config, i))
    losses.append(float(metrics["loss"]))
  return np.array(losses), jax.tree.map(np.asarray, state.params), family, state


def test_loss_is_the_float64_bce_and_eight_devices_match_one():
  config = catlip_config(**{"mesh.data": 1})
  losses, params, family, _ = _run(config, jax.devices()[:1], steps=1)
  # The first step's loss from the initial parameters, in float64 numpy.
  fresh, _ = state_lib.create(family, *optimizer.make(config)[:1], config.seed,
                              mesh_lib.make_mesh(config.mesh, jax.devices()[:1]))
  batch = _batch(config, 0)
  logits = family.module.apply({"params": fresh.params}, batch["image"])
  x, y = np.asarray(logits, np.float64), batch["labels"].astype(np.float64)
  bce = -(y * np.log(1 / (1 + np.exp(-x))) + (1 - y) * np.log(1 / (1 + np.exp(x))))
  np.testing.assert_allclose(losses[0], bce.sum(axis=1).mean(), rtol=1e-5)
  eight = _run(catlip_config(), jax.devices())
  assert_same(_run(config, jax.devices()[:1])[:2], eight[:2])
  del params


@needs_wordnet
def test_host_batch_is_the_multi_hot_of_the_caption_synsets():
  family = families.get_family(catlip_config())
  family.vocabulary = VOCABULARY
  raw = {"image": np.zeros((2, 16, 16, 3), np.float32),
         "caption": ["two red squares", "a blue circle and a cat"], "key": ["a", "b"]}
  labels = family.host_batch(raw, None)["labels"]
  assert labels.dtype == np.uint8 and labels.shape == (2, 8)
  np.testing.assert_array_equal(labels[:, :5], [[1, 1, 0, 0, 0], [0, 0, 1, 1, 0]])
  assert not labels[:, 5:].any()  # head rows beyond the vocabulary never fire


@needs_wordnet
def test_zero_shot_by_head_scores_classes_by_their_rows_and_never_guesses():
  from vlp_jax.data.sources import ZeroShotTask  # pylint: disable=g-import-not-at-top
  from vlp_jax.evaluate import runner  # pylint: disable=g-import-not-at-top
  family = families.get_family(catlip_config())
  family.vocabulary = VOCABULARY

  class Encoder:  # what head_scores reads of runner.Encoder
    pass
  encoder = Encoder()
  encoder.family = family
  logits = np.array([[5.0, 0.0, 1.0, -1.0, 9.0, 0, 0, 0],
                     [0.0, 2.0, 3.0, 4.0, 0.0, 0, 0, 0]], np.float32)
  task = ZeroShotTask(["red", "circle", "unicorn", "n02084071"], ["{}"])  # the last: dog
  scores, covered = runner.head_scores(encoder, logits, task)
  np.testing.assert_array_equal(scores[:, [0, 1, 3]], [[5.0, 1.0, 9.0], [0.0, 3.0, 0.0]])
  assert np.all(scores[:, 2] == -np.inf) and covered == pytest.approx(3 / 4)


@needs_wordnet
def test_a_run_trains_evaluates_by_head_and_probes(tmp_path):
  """Labelled scenes (the colour of a one-shape scene): zero-shot by the head and the probe
  of the image tower both run, and both beat chance after a short run."""
  import main  # pylint: disable=g-import-not-at-top
  from vlp_jax.data import jsonl_writer, scenes  # pylint: disable=g-import-not-at-top
  rows, i = [], 0
  while len(rows) < 320:  # one-shape scenes, labelled with their colour
    scene = scenes.make_scene(11, i)
    if scene["num_shapes"] == 1:
      rows.append((f"{i:04d}.png", scene["png"], scene["caption"]))
    i += 1
  folder = tmp_path / "data"
  jsonl_writer.write_jsonl_folder(str(folder), rows)
  with open(folder / "captions.jsonl") as f:
    lines = [json.loads(line) for line in f]
  with open(folder / "captions.jsonl", "w") as f:
    for line in lines:  # "a large red square": the colour is the third word
      f.write(json.dumps(dict(line, label=line["caption"].split()[2])) + "\n")
  c = catlip_config(**{
      "data.train": f"jsonl:{folder}:train", "data.eval": f"jsonl:{folder}:test",
      "data.probe": f"jsonl:{folder}:train=>jsonl:{folder}:test", "data.holdout_percent": 25,
      "data.synset_min_count": 3, "model.vocab_size": 32, "model.image_size": 32,
      "train.steps": 60, "train.batch_size": 32, "train.checkpoint_every": 60,
      "optim.lr": 3e-3, "optim.warmup_steps": 5, "eval.batch_size": 64})
  workdir = str(tmp_path / "work")
  result = main.run(c, "train", workdir)
  assert os.path.exists(os.path.join(workdir, "synsets.txt"))
  assert not os.path.exists(os.path.join(workdir, "tokenizer.model"))  # no text is read
  assert result["zeroshot/data_label/covered"] == 1.0
  assert result["zeroshot/data_label/top1"] > result["zeroshot/data_label/chance"]
  assert result["probe/data/top1"] > result["probe/data/chance"]
  assert "retrieval/data/t2i_r1" not in result  # no text tower: no retrieval
  evaluated = main.run(c, "eval", workdir)
  assert evaluated["zeroshot/data_label/top1"] == result["zeroshot/data_label/top1"]
