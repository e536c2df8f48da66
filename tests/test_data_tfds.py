"""tfds: sources on tiny TFDS sets built here (no download): several captions per image,
class labels for zero-shot sets; and jsonl: zero-shot sets."""
import inspect
import json
import os

from etils import epath
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

from tests.helpers import tiny_config
from vlp_jax import data
from vlp_jax.data import jsonl_writer
from vlp_jax.data import scenes
from vlp_jax.data import sources
from vlp_jax.data import templates
from vlp_jax.data import train_iterator
from vlp_jax.evaluate import metrics

COLORS = ["red", "green", "blue"]


class _Local(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version("1.0.0")

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls):  # as in vlp_jax/data/shapes.py
    return epath.Path(inspect.getfile(cls))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(24), "val": self._generate_examples(6)}


class TinyCaptions(_Local):
  """coco_captions' layout: an image and a Sequence of {id, text} captions."""

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
        "captions": tfds.features.Sequence({"id": np.int64, "text": tfds.features.Text()}),
    }))

  def _generate_examples(self, count):
    for i in range(count):
      texts = [f"scene {i} caption {j}" for j in range(3 + i % 3)]
      yield i, {"image": scenes.make_scene(9, i)["png"],
                "captions": [{"id": j, "text": t} for j, t in enumerate(texts)]}


class TinyClasses(_Local):
  """An image-classification set: image + ClassLabel."""

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
        "label": tfds.features.ClassLabel(names=[f"dark_{c}" for c in COLORS]),
    }))

  def _generate_examples(self, count):
    for i in range(count):
      yield i, {"image": scenes.make_scene(4, i)["png"], "label": i % 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("tfds"))
  for builder in (TinyCaptions, TinyClasses):
    builder(data_dir=folder).download_and_prepare()
  return folder


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  words = [f"scene {i} caption {j}" for i in range(30) for j in range(5)]
  path = str(tmp_path_factory.mktemp("tok") / "t.model")
  return data.Tokenizer(data.train_tokenizer(words + ["a photo of dark red"], 64, path), 8)


def _config(spec, data_dir, **fields):
  c = tiny_config(**{"train.batch_size": 4, "data.train": spec, "data.data_dir": data_dir,
                     "data.shuffle_buffer": 8})
  c.data.update(fields)
  return c


def _batches(config, tok, count, position=0):
  it = data.TrainIterator(config, tok, position=position)
  out = []
  for _ in range(count):
    texts = tok.decode(next(it)["tokens"])
    out.append(list(zip(it.keys, texts)))
  return out, it.position


def test_training_draws_one_caption_per_visit_and_resumes_exactly(data_dir, tok):
  config = _config("tfds:tiny_captions:train", data_dir)
  full, _ = _batches(config, tok, 18)  # three epochs of 24
  per_key = {}
  for key, text in (pair for batch in full for pair in batch):
    index = int(text.split()[1])
    assert text.startswith(f"scene {index} caption ")
    per_key.setdefault(key, set()).add(text)
  assert len(per_key) == 24
  assert any(len(texts) > 1 for texts in per_key.values())  # captions vary between visits
  _, position = _batches(config, tok, 7)
  resumed, _ = _batches(config, tok, 11, position=position)
  assert resumed == full[7:]


def test_eval_keeps_every_caption_for_retrieval(data_dir, tok):
  config = _config("tfds:tiny_captions:train", data_dir)
  ev = data.load_eval_set("tfds:tiny_captions:val", config, tok, data_dir=data_dir)
  assert ev.name == "tiny_captions" and ev.images.shape[0] == 6 and ev.retrieval
  assert len(ev.captions) == sum(3 + i % 3 for i in range(6)) == len(ev.tokens)
  scene_of = {}
  for text, image in zip(ev.captions, ev.text_image):
    assert scene_of.setdefault(image, text.split()[1]) == text.split()[1]
  assert len(set(scene_of.values())) == 6
  # Perfect embeddings (text = its image's one-hot) give recall 1 both ways.
  image_emb = np.eye(6)
  text_emb = image_emb[ev.text_image]
  result = metrics.retrieval(image_emb, text_emb, ev.captions, text_image=ev.text_image)
  assert result["t2i_r1"] == result["i2t_r1"] == 1.0
  assert result["i2t_r1_chance"] == pytest.approx(np.mean([(3 + i % 3) / 24 for i in range(6)]))


@pytest.mark.parametrize("choice", ["short", "clip80"])
def test_classification_set_is_a_zero_shot_task(data_dir, tok, choice):
  config = _config("tfds:tiny_captions:train", data_dir, zeroshot_templates=choice)
  ev = data.load_eval_set("tfds:tiny_classes:val", config, tok, data_dir=data_dir)
  assert not ev.retrieval
  task = ev.zeroshot_tasks["label"]
  assert task.classnames == [f"dark {c}" for c in COLORS]
  assert task.templates == templates.get(choice) and len(task.templates) in (5, 80)
  np.testing.assert_array_equal(np.bincount(ev.labels["label"]), [2, 2, 2])  # i % 3


def test_jsonl_zero_shot_sets(tmp_path, tok):
  png = scenes.make_scene(0, 0)["png"]
  folder = jsonl_writer.write_jsonl_folder(str(tmp_path / "labelled"), [
      (f"{i}.png", png, f"picture {i}") for i in range(6)])
  lines = [json.loads(l) for l in open(os.path.join(folder, "captions.jsonl"))]
  with open(os.path.join(folder, "captions.jsonl"), "w") as f:
    for i, line in enumerate(lines):
      f.write(json.dumps(dict(line, label=COLORS[i % 3])) + "\n")
  config = _config("jsonl:" + folder, "")
  ev = data.load_eval_set("jsonl:" + folder, config, tok)
  assert ev.zeroshot_tasks["label"].classnames == sorted(COLORS) and ev.retrieval
  assert [sorted(COLORS)[l] for l in ev.labels["label"]] == [COLORS[i % 3] for i in range(6)]
  by_caption = data.load_eval_set("zeroshot:jsonl:" + str(tmp_path / "labelled"), config, tok)
  assert not by_caption.retrieval
  plain = jsonl_writer.write_jsonl_folder(str(tmp_path / "plain"), [
      (f"{i}.png", png, COLORS[i % 3]) for i in range(6)])
  ev = data.load_eval_set("zeroshot:jsonl:" + plain, config, tok)
  assert ev.zeroshot_tasks["label"].classnames == sorted(COLORS)


def test_errors_name_the_culprit(data_dir, tmp_path):
  with pytest.raises(ValueError, match="not prepared.*tfds build tiny_captions"):
    data.get_source("tfds:tiny_captions:train", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="no TFDS data set 'no_such_set'"):
    data.get_source("tfds:no_such_set:train", data_dir=data_dir)
  with pytest.raises(ValueError, match="bad split 'nope'"):
    data.get_source("tfds:tiny_captions:nope", data_dir=data_dir)
  with pytest.raises(ValueError, match="data.text_key='caption'"):
    data.get_source("tfds:tiny_captions:train", data_dir=data_dir, text_key="caption")
  with pytest.raises(ValueError, match="needs a name and a split"):
    data.get_source("tfds:tiny_captions", data_dir=data_dir)
  with pytest.raises(ValueError, match="zeroshot_templates"):
    data.get_source("tfds:tiny_classes:val", data_dir=data_dir, zeroshot_templates="many")


def test_per_host_reading_is_logged_and_draws_differ_between_hosts(data_dir, caplog,
                                                                   monkeypatch):
  """TFRecord sets have no random access: each host reads its part (said once in a warning);
  the crop and caption draws of its k-th record still differ from other hosts'."""
  monkeypatch.setattr(train_iterator, "_WARNED", set())
  config = _config("tfds:tiny_captions:train", data_dir)
  source = sources.from_config(config.data.train, config.data)
  draws = []
  for host in range(2):
    stream, _ = train_iterator.record_stream(
        source, seed=0, shuffle_buffer=8, position=0, process_index=host, process_count=2)
    draws.append({int(r["draw"]) for r in stream.take(12).as_numpy_iterator()})
  assert len(draws[0]) == len(draws[1]) == 12 and not draws[0] & draws[1]
  warnings = [r for r in caplog.records if "has no random access" in r.getMessage()]
  assert len(warnings) == 1 and "tiny_captions" in warnings[0].getMessage()
