"""The built-in `vlp_shapes` TFDS set and the builtin: source, prepared once per test session."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vlp_jax import config_lib
from vlp_jax import data
from vlp_jax.data import scenes
from vlp_jax.data import shapes


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  shapes.prepare(data_dir)
  return data_dir


def _examples(data_dir, split):
  ds = shapes.prepare(data_dir).as_dataset(
      split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
  return {ex["key"]: ex for ex in tfds.as_numpy(ds)}


def test_preparation_is_deterministic(shapes_dir, tmp_path):
  first = _examples(shapes_dir, "test")
  second = _examples(str(tmp_path), "test")  # a second, independent preparation
  assert len(first) == 1000 and first.keys() == second.keys()
  for key, ex in first.items():
    for field in ("image", "caption", "num_shapes", "color", "shape", "size"):
      assert ex[field] == second[key][field], (key, field)


def test_single_shape_captions_match_labels(shapes_dir):
  examples = _examples(shapes_dir, "test")
  singles = [ex for ex in examples.values() if ex["num_shapes"] == 1]
  assert 300 < len(singles) < 500
  for ex in examples.values():
    if ex["num_shapes"] == 1:
      words = (scenes.SIZE_NAMES[ex["size"]], scenes.COLOR_NAMES[ex["color"]],
               scenes.SHAPES[ex["shape"]])
      assert ex["caption"].decode() == scenes.phrase(*words)
    else:
      assert ex["color"] == ex["shape"] == ex["size"] == -1


def test_scenes_draw_what_they_say():
  for index in range(300):
    scene = scenes.make_scene(3, index)
    boxes = scene["boxes"]
    for i, a in enumerate(boxes):
      for b in boxes[i + 1:]:
        assert scenes._apart(a, b)  # pylint: disable=protected-access
    assert len(boxes) == scene["num_shapes"]
    for y, x, side in boxes:
      patch = scene["image"][y:y + side, x:x + side].reshape(-1, 3)
      colors = {tuple(c) for c in patch} & set(scenes.COLORS.values())
      assert len(colors) == 1
    for i in range(1, len(boxes)):
      assert scenes.relation(boxes[i - 1], boxes[i]) in scene["caption"]


def test_builtin_source(shapes_dir):
  source = data.get_source("builtin:shapes:test", data_dir=shapes_dir)
  assert source.name == "shapes" and source.num_records == 1000
  assert set(source.zeroshot_tasks) == {"color", "shape", "size"}
  vocabulary = {w.strip(",") for c in source.captions() for w in c.split()}
  for task in source.zeroshot_tasks.values():
    assert isinstance(task, data.ZeroShotTask)
    for template in task.templates:
      assert template.count("{}") == 1
      for name in task.classnames:
        assert set(template.format(name).split()) <= vocabulary


def test_builtin_train_and_eval(shapes_dir, tmp_path):
  c = config_lib.base_config()
  c.data.data_dir = shapes_dir
  c.data.train = "builtin:shapes:test"  # the small split keeps tokenizer training quick
  c.model.context_length = 24
  c.train.batch_size = 16
  c.eval.max_examples = 200
  tok = data.get_tokenizer(c, str(tmp_path))
  it = data.TrainIterator(c, tok)
  batch = next(it)
  assert batch["image"].shape == (16, 32, 32, 3) and it.position == 16
  ev = data.load_eval_set("builtin:shapes:test", c, tok, data_dir=shapes_dir)
  assert ev.images.shape == (200, 32, 32, 3)
  assert (ev.tokens[:, -1] == 0).all()  # context 24 holds the longest caption
  for task, labels in ev.labels.items():
    names = ev.zeroshot_tasks[task].classnames
    for caption, label in zip(ev.captions, labels):
      if label >= 0:
        assert names[label] in caption.split()
  # The images are what the pipeline decoded from the stored PNGs.
  first = _examples(shapes_dir, "test")
  assert any(ex["caption"].decode() == ev.captions[0] for ex in first.values())
  assert ev.images.dtype == np.uint8 and ev.images.min() < ev.images.max()  # normalised on device
