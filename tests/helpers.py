"""Small configs and batches shared by the tests."""
import numpy as np

from vlp_jax import config_lib


def tiny_config(**overrides):
  """A CLIP small enough to compile in seconds; widths divisible by 8 for fsdp=4 sharding."""
  c = config_lib.base_config()
  c.model.update(dict(image_size=16, patch_size=8, vision_width=32, vision_depth=1,
                      vision_heads=2, text_width=32, text_depth=1, text_heads=2,
                      vocab_size=64, context_length=8, embed_dim=16))
  c.train.batch_size = 16
  c.optim.warmup_steps = 1
  for key, value in overrides.items():
    node = c
    *path, last = key.split(".")
    for p in path:
      node = node[p]
    node[last] = value
  return config_lib.validate(c)


def random_batch(config, seed=0, eos_id=1):
  rng = np.random.default_rng(seed)
  m, b = config.model, config.train.batch_size
  tokens = rng.integers(2, m.vocab_size, size=(b, m.context_length)).astype(np.int32)
  lengths = rng.integers(2, m.context_length, size=b)
  for row, n in enumerate(lengths):
    tokens[row, n] = eos_id
    tokens[row, n + 1:] = 0
  return {"image": rng.normal(size=(b, m.image_size, m.image_size, 3)).astype(np.float32),
          "tokens": tokens}


def write_scene_folder(folder, count=96):
  """A small jsonl: folder of generated scenes (no TFDS preparation needed)."""
  from vlp_jax.data import jsonl_writer, scenes  # pylint: disable=g-import-not-at-top
  examples = []
  for i in range(count):
    scene = scenes.make_scene(7, i)
    examples.append((f"{i:04d}.png", scene["png"], scene["caption"]))
  return jsonl_writer.write_jsonl_folder(str(folder), examples)


def tiny_run_args(data_dir, **overrides):
  """main.py flags for a tiny CLIP run on a jsonl folder; overrides are config fields."""
  fields = {
      "model.image_size": 16, "model.patch_size": 8, "model.vision_width": 32,
      "model.vision_depth": 1, "model.vision_heads": 2, "model.text_width": 32,
      "model.text_depth": 1, "model.text_heads": 2, "model.vocab_size": 64,
      "model.context_length": 12, "model.embed_dim": 16, "train.batch_size": 16,
      "data.train": f"jsonl:{data_dir}:train", "data.eval": f"jsonl:{data_dir}:test",
      "data.shuffle_buffer": 64, "data.holdout_percent": 20, "train.log_every": 1,
      "optim.warmup_steps": 2, "eval.batch_size": 32,
  }
  fields.update(overrides)
  return ["--config=configs/clip_tiny.py"] + [f"--config.{k}={v}" for k, v in fields.items()]


def transformers_models(*names):
  """transformers' model classes `names` (pytest skips without transformers and torch).

  transformers imports torchvision when it is installed, and PyPI's torchvision does not
  load beside a CPU-only torch ("operator torchvision::nms does not exist"); then it is
  hidden while the classes import (they do not use it) and put back afterwards, so that
  open_clip_package() can still stand in for it."""
  import sys  # pylint: disable=g-import-not-at-top
  import pytest  # pylint: disable=g-import-not-at-top
  pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  try:
    import torchvision  # noqa: F401 pylint: disable=unused-import,g-import-not-at-top
  except ImportError:
    pass
  except Exception:  # pylint: disable=broad-except
    for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
      del sys.modules[name]
    sys.modules["torchvision"] = None  # find_spec says absent, import raises ImportError
    try:
      transformers.utils.import_utils.is_torchvision_available.cache_clear()
      return tuple(getattr(transformers, name) for name in names)
    finally:
      del sys.modules["torchvision"]
  return tuple(getattr(transformers, name) for name in names)
