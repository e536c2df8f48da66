"""VQA data specs (vqa:PATH, builtin:shapes_vqa): questions with their answers and types,
row-aligned, through the training iterator (global shuffle, exact resume) and eval sets;
skipped lines counted; the built-in set written once, atomically."""
import json
import os

import numpy as np
import pytest

from vlp_jax import config_lib
from vlp_jax import data
from vlp_jax.data import eval_set
from vlp_jax.data import shapes_vqa
from vlp_jax.data import sources
from vlp_jax.data import vqa_source


class Recorder:
  """A family whose host batch is the raw batch the iterator hands it."""

  def host_batch(self, raw, tokenizer):
    del tokenizer
    return raw


def _config(spec, batch_size=4, **data_fields):
  c = config_lib.base_config()
  c.data.train = spec
  c.data.update(data_fields)
  c.model.image_size = 32
  c.model.context_length = 12
  c.model.vocab_size = 64
  c.train.batch_size = batch_size
  c.eval.batch_size = 8
  return c


def _lines(folder):
  """key -> (question, answers, question_type) straight from vqa.jsonl (key: image#line)."""
  out = {}
  with open(os.path.join(folder, "vqa.jsonl"), "rb") as f:
    for number, raw in enumerate(f, 1):
      try:
        obj = json.loads(raw)
      except ValueError:
        continue
      if os.path.isfile(os.path.join(folder, obj["image"])):
        out[f"{obj['image']}#{number}"] = (obj["question"], obj["answers"],
                                           obj.get("question_type", ""))
  return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("vqa") / "tiny_vqa")
  shapes_vqa.write_jsonl_folder(path, "test", 24)
  return path


@pytest.fixture
def flawed(tmp_path, folder):
  """The tiny folder plus a malformed line and a question about a missing image."""
  path = str(tmp_path / "flawed")
  os.makedirs(os.path.join(path, "images"))
  for name in os.listdir(os.path.join(folder, "images")):
    os.link(os.path.join(folder, "images", name), os.path.join(path, "images", name))
  with open(os.path.join(folder, "vqa.jsonl")) as f:
    lines = f.readlines()
  lines[3:3] = ['{"image": "images/test_000000.png", "question": \n',
                json.dumps({"image": "images/gone.png", "question": "is there a cat?",
                            "answers": ["no"], "question_type": "exists"}) + "\n"]
  with open(os.path.join(path, "vqa.jsonl"), "w") as f:
    f.writelines(lines)
  return path


def _batches(config, count, position=0):
  it = data.TrainIterator(config, None, position=position, family=Recorder())
  out = []
  for _ in range(count):
    out.append(next(it))
  return out, it


@pytest.fixture(scope="module")
def trained(folder):
  """Nine batches of 4 (one and a half epochs) of the tiny folder, and the config."""
  config = _config(f"vqa:{folder}", augment="crop", crop_min_scale=0.3)
  batches, it = _batches(config, 9)
  return config, batches, it


def test_training_batches_carry_questions_answers_and_types(folder, trained):
  expected = _lines(folder)
  assert len(expected) == 24
  _, batches, it = trained
  assert it.source.name == "tiny_vqa" and it.source.num_records == 24
  keys = []
  for raw in batches:
    assert set(raw) == {"image", "caption", "key", "answers", "question_type"}
    assert raw["image"].shape == (4, 32, 32, 3)
    for key, question, answers, qtype in zip(raw["key"], raw["caption"], raw["answers"],
                                             raw["question_type"]):
      assert (question, answers, qtype) == expected[key], key
    keys += raw["key"]
  assert sorted(keys[:24]) == sorted(expected)  # one epoch: each question once
  assert keys[:24] != sorted(expected, key=lambda k: int(k.split("#")[1]))  # shuffled
  types = {t for raw in batches for t in raw["question_type"]}
  assert len(types) > 2 and all(t in shapes_vqa.TYPES for t in types)


def test_resume_gives_the_same_next_batches(trained):
  config, full, it = trained
  assert it.position == 36
  resumed, _ = _batches(config, 4, position=20)  # the rest of epoch 0, then epoch 1
  assert full[5]["key"] != full[6]["key"]
  for a, b in zip(resumed, full[5:]):
    assert (a["key"], a["caption"], a["answers"], a["question_type"]) == (
        b["key"], b["caption"], b["answers"], b["question_type"])
    np.testing.assert_array_equal(a["image"], b["image"])


def test_bad_line_and_missing_image_are_skipped_and_counted(flawed):
  batches, it = _batches(_config(f"vqa:{flawed}", batch_size=8), 3)
  source = it.source
  assert source.num_records == 24
  assert {k: v for k, v in source.skipped.items() if v} == {"bad_json": 1, "missing_file": 1}
  assert not any(k.startswith("images/gone.png") for k in source.arrays()["key"].astype(str))
  expected = _lines(flawed)
  assert sorted(k for raw in batches for k in raw["key"]) == sorted(expected)


def test_eval_set_aligns_answers_and_types_with_questions(flawed):
  config = _config(f"vqa:{flawed}")
  source = sources.from_config(config.data.train, config.data)
  texts = source.captions()
  assert "yes" in texts and "is there a cat?" not in texts
  assert texts.index(source.examples[0]["question"]) == 0
  tok = data.Tokenizer(data.train_tokenizer(texts * 4, 64, os.path.join(flawed, "t.model")),
                       12)
  ev = eval_set.from_source(source, config, tok)
  expected = _lines(flawed)
  assert ev.retrieval is False and ev.num_images == 24 and len(ev.keys) == 24
  assert ev.images.shape == (24, 32, 32, 3)
  for key, question, answers, qtype in zip(ev.keys, ev.captions, ev.answers,
                                           ev.question_types):
    assert (question, answers, qtype) == expected[key], key
  np.testing.assert_array_equal(ev.tokens, tok.encode(ev.captions))
  assert ev.skipped["missing_file"] == 1


def test_caption_sources_give_no_vqa_fields(tmp_path):
  from helpers import write_scene_folder  # pylint: disable=g-import-not-at-top
  jsonl = write_scene_folder(tmp_path / "captions", count=4)
  (raw,), _ = _batches(_config("jsonl:" + jsonl), 1)
  assert set(raw) == {"image", "caption", "key"}
  ev = data.load_eval_set("jsonl:" + jsonl, _config("jsonl:" + jsonl), None)
  assert ev.answers is None and ev.question_types is None and ev.retrieval is True


def test_split_by_image_and_unknown_split(folder):
  train = data.get_source(f"vqa:{folder}:train", holdout_percent=30)
  test = data.get_source(f"vqa:{folder}:test", holdout_percent=30)
  images = lambda s: {ex["image"] for ex in s.examples}
  assert images(train) and images(test) and not images(train) & images(test)
  assert train.num_records + test.num_records == 24
  for spec in (f"vqa:{folder}:valid", "builtin:shapes_vqa:valid", "builtin:shapes_vqa"):
    with pytest.raises(ValueError, match="unknown split|needs a split") as info:
      data.get_source(spec)
    assert spec in str(info.value)
  with pytest.raises(ValueError, match="zeroshot"):
    data.get_source(f"zeroshot:vqa:{folder}")


def test_builtin_is_written_once_atomically(tmp_path, monkeypatch):
  monkeypatch.setattr(vqa_source, "BUILTIN_SIZES", {"train": (30, 3), "test": (12, 3)})
  root = str(tmp_path / "tfds")
  parent = os.path.join(root, "vlp_shapes_vqa", vqa_source.BUILTIN_VERSION)
  write = shapes_vqa.write_jsonl_folder

  def killed(path, *args):
    write(path, *args)
    with open(os.path.join(path, "vqa.jsonl"), "w") as f:
      f.write("{half a line")
    raise KeyboardInterrupt  # killed before the rename
  monkeypatch.setattr(shapes_vqa, "write_jsonl_folder", killed)
  with pytest.raises(KeyboardInterrupt):
    data.get_source("builtin:shapes_vqa:test", data_dir=root)
  assert os.listdir(parent) == []  # nothing that a later run could take as complete

  calls = []
  monkeypatch.setattr(shapes_vqa, "write_jsonl_folder",
                      lambda *args: calls.append(args) or write(*args))
  source = data.get_source("builtin:shapes_vqa:test", data_dir=root)
  assert source.name == "shapes_vqa" and source.num_records == 12 and len(calls) == 1
  assert os.listdir(parent) == ["test_12_3"]
  built = [ex["question"] for ex in shapes_vqa.examples("test", 12)]
  assert [ex["question"] for ex in source.examples] == built
  arrays = source.arrays()
  assert arrays["caption"][0] == built[0].encode()
  assert arrays["answers"][0] == "\n".join([source.examples[0]["answers"][0]] * 10).encode()
  assert source.retrieval is False and source.classify is False
  assert source.zeroshot_tasks == {}

  config = _config("builtin:shapes_vqa:test", data_dir=root)
  again = sources.from_config(config.data.train, config.data)
  assert len(calls) == 1 and [ex["key"] for ex in again.examples] == [
      ex["key"] for ex in source.examples]
  # No data_dir: TFDS's default data dir, as builtin:shapes.
  from tensorflow_datasets.core import constants  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(constants, "DATA_DIR", root)
  assert vqa_source.materialise("train") == os.path.join(parent, "train_30_3")
  assert len(calls) == 2 and sorted(os.listdir(parent)) == ["test_12_3", "train_30_3"]


def test_answers_keep_one_line_each():
  assert vqa_source.join_answers(["two\nlines", "x"]) == "two lines\nx"
