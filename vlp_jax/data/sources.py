"""Data sources named by spec strings: a deterministic, finite, shardable list of raw records.

A raw record is a dict of tensors: `key` (string), `image` (encoded bytes, or empty when read
from `path`), `path` (file to read, or empty), `missing` (bool: no file to read), optionally
`flaw` (int32 checks code the source already knows, 0 = none), `caption` (raw bytes, not yet
validated) and `label_<task>` (int32, -1 = no label) per zero-shot task; VQA sources
(vqa_source.py) add `answers` (joined with "\n") and `question_type`. Records are cheap
(no file I/O), so resuming can skip them before any reading.

Sources whose raw records fit in host memory (jsonl, vqa, builtin) also offer `arrays()`:
every record's fields as numpy arrays, for random access (the training iterator's global
shuffle).
"""
import dataclasses
import hashlib
import json
import os
import stat

import numpy as np
import tensorflow_datasets as tfds

from vlp_jax.data import checks
from vlp_jax.data import scenes
from vlp_jax.data import shapes
from vlp_jax.data.tf_setup import tf

KINDS = ("builtin", "jsonl", "vqa", "wds", "tfds")
BUILTINS = ("shapes", "shapes_vqa")
SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class ZeroShotTask:
  """Class names and prompt templates (each with one '{}') for zero-shot classification.

  `ensemble` says how a class's prompts combine: "mean" averages their embeddings (CLIP's
  prompt ensembling, for templates that only vary wording); "max" scores an image by its
  best-matching prompt, for templates that enumerate other visible attributes (a mean over
  "a red {}", "a blue {}", ... blurs the class into those attributes).
  """
  classnames: list
  templates: list
  ensemble: str = "mean"


def shard_size(total, index, count):
  """Records that host `index` of `count` takes when taking records index::count."""
  return len(range(index, total, count))


class BuiltinShapes:
  """`builtin:shapes:<split>`: the procedurally generated TFDS set `vlp_shapes`; small, so
  training holds its encoded records in memory (`arrays`) and shuffles them globally."""

  name = "shapes"

  def __init__(self, split, data_dir=""):
    self.split = split
    self.builder = shapes.prepare(data_dir)
    self.zeroshot_tasks = {task: ZeroShotTask(list(scenes.CLASSNAMES[task]), templates, "max")
                           for task, templates in scenes.zeroshot_templates().items()}
    self.num_records = self.builder.info.splits[split].num_examples

  def _read(self):
    return self.builder.as_dataset(
        split=self.split, shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(interleave_cycle_length=1))

  def records(self, index=0, count=1):
    def convert(ex):
      record = dict(key=ex["key"], image=ex["image"], path=tf.constant(""),
                    missing=tf.constant(False), caption=ex["caption"])
      for task in self.zeroshot_tasks:
        record["label_" + task] = ex[task]
      return record
    return self._read().shard(count, index).map(convert)

  def arrays(self):
    """Every raw record in memory (the encoded PNGs are small): random access for training."""
    if getattr(self, "_arrays", None) is None:
      self._arrays = stack_records(self.records())
    return self._arrays

  def captions(self):
    ds = self.builder.as_dataset(split=self.split, shuffle_files=False,
                                 decoders={"image": tfds.decode.SkipDecoding()})
    return [ex["caption"].decode("utf-8") for ex in tfds.as_numpy(ds)]


def stack_records(ds):
  """field -> numpy array over all records of a dataset of scalar-field records."""
  columns = {}
  for record in ds.as_numpy_iterator():
    for name, value in record.items():
      columns.setdefault(name, []).append(value)
  return {name: np.array(values, dtype=object if isinstance(values[0], bytes) else None)
          for name, values in columns.items()}


def _split_of(image_path, holdout_percent):
  """'test' for a stable holdout_percent% of image paths, 'train' for the rest."""
  digest = hashlib.md5(image_path.encode("utf-8", "surrogateescape")).digest()
  return "test" if int.from_bytes(digest[:8], "big") % 100 < holdout_percent else "train"


def _escapes(image):
  """Whether a relative image path leaves its folder (absolute, or up through '..')."""
  if os.path.isabs(image) or os.path.splitdrive(image)[0]:
    return True
  return os.path.normpath(image).split(os.sep)[0] == os.pardir


def _parse_jsonl(path, allow_outside_paths=False):
  """[(image, caption bytes, label or None)] of a captions.jsonl; undecodable bytes survive
  for the pipeline. Image paths that leave the folder are an error unless allowed: a shared
  data folder must not make training read (and log) arbitrary files."""
  items = []
  with open(path, "rb") as f:
    for number, raw in enumerate(f, 1):
      line = raw.decode("utf-8", "surrogateescape").strip()
      if not line:
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{number}: malformed JSON line: {e}") from None
      if not isinstance(obj, dict):
        raise ValueError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
      for field in ("image", "caption"):
        if not isinstance(obj.get(field), str):
          raise ValueError(f"{path}:{number}: field {field!r} is missing or not a string")
      label = obj.get("label")
      if label is not None and not isinstance(label, str):
        raise ValueError(f"{path}:{number}: field 'label' is not a string")
      if not allow_outside_paths and _escapes(obj["image"]):
        raise ValueError(f"{path}:{number}: image path {obj['image']!r} leaves the folder; "
                         f"set config.data.allow_outside_paths=True to allow it")
      items.append((obj["image"], obj["caption"].encode("utf-8", "surrogateescape"), label))
  if not items:
    raise ValueError(f"{path} has no records")
  return items


def _usable(path):
  try:
    return (os.path.isfile(path) and os.path.getsize(path) > 0 and
            os.access(path, os.R_OK))
  except OSError:
    return False


def _file_flaw(path):
  """0 for a regular file, else the skip code: missing_file, or not_a_file for a directory
  (or fifo, device...), which would fail or hang if read."""
  try:
    mode = os.stat(path).st_mode
  except OSError:
    return checks.REASONS.index("missing_file") + 1
  return 0 if stat.S_ISREG(mode) else checks.REASONS.index("not_a_file") + 1


class JsonlFolder:
  """`jsonl:PATH[:split]`: a folder with captions.jsonl of {"image": relpath, "caption": text}.

  Lines with a "label" field (a class name) make it a zero-shot set too, as does
  `classify` (then captions name the classes of lines without a label).
  """

  def __init__(self, folder, split=None, holdout_percent=10, classify=False, templates=(),
               allow_outside_paths=False):
    if not os.path.isdir(folder):
      raise ValueError(f"jsonl data folder {folder!r} does not exist")
    index_path = os.path.join(folder, "captions.jsonl")
    if not os.path.isfile(index_path):
      raise ValueError(f"jsonl data folder {folder!r} has no captions.jsonl")
    items = _parse_jsonl(index_path, allow_outside_paths)
    if split is not None:
      items = [it for it in items if _split_of(it[0], holdout_percent) == split]
      if not items:
        raise ValueError(f"{index_path}: split {split!r} ({holdout_percent}% holdout) is empty")
    self.name = os.path.basename(os.path.normpath(folder))
    self.zeroshot_tasks = {}
    self.classify = classify
    self.labels = None
    if classify or any(label is not None for _, _, label in items):
      names = [label if label is not None else caption.decode("utf-8", "replace").strip()
               for _, caption, label in items]
      classnames = sorted(set(names))
      self.labels = np.array([classnames.index(n) for n in names], np.int32)
      self.zeroshot_tasks["label"] = ZeroShotTask(classnames, list(templates), "mean")
    self.keys = [image for image, _, _ in items]
    self.paths = [os.path.join(folder, image) for image in self.keys]
    self.raw_captions = [caption for _, caption, _ in items]
    self.flaws = np.array([_file_flaw(p) for p in self.paths], np.int32)
    self.missing = self.flaws > 0  # nothing to read; `flaws` says why
    if not any(_usable(p) for p in self.paths):
      raise ValueError(f"{index_path}: no image file of this source can be read; "
                       f"the first is {self.paths[0]!r}")
    self.num_records = len(items)

  def arrays(self):
    """Every raw record's fields (the index is in memory): random access for training."""
    fields = dict(
        key=np.array(self.keys, object),
        image=np.full(self.num_records, b"", object),
        path=np.array(self.paths, object),
        missing=self.missing,
        flaw=self.flaws,
        caption=np.array(self.raw_captions, object))
    if self.labels is not None:
      fields["label_label"] = self.labels
    return fields

  def records(self, index=0, count=1):
    fields = {name: value[index::count] for name, value in self.arrays().items()}
    return tf.data.Dataset.from_tensor_slices(fields)

  def captions(self):
    """Captions that are valid UTF-8 and not blank (the pipeline skips the others)."""
    return checks.usable_captions(self.raw_captions)


def _folder_and_split(spec, kind, rest):
  """(folder, split or None) of a jsonl:/vqa: spec's PATH[:SPLIT]; a word after the last ':'
  of an existing folder that is not a split is an error, not part of a missing path."""
  path, split = rest, None
  head, sep, tail = rest.rpartition(":")
  if sep and tail in SPLITS:
    path, split = head, tail
  elif sep and os.path.isdir(head) and not os.path.isdir(rest):
    raise ValueError(f"Data spec {spec!r}: unknown split {tail!r}; expected "
                     f"{kind}:PATH[:train|:test]")
  if not path:
    raise ValueError(f"Data spec {spec!r} names no folder; expected {kind}:PATH[:train|:test]")
  return path, split


def get_source(spec, holdout_percent=10, data_dir="", shard_cycle=4, image_key="",
               text_key="", label_key="", zeroshot_templates="short",
               allow_outside_paths=False):
  """The source named by `spec`: builtin:NAME:SPLIT, jsonl:PATH[:SPLIT], vqa:PATH[:SPLIT],
  wds:PATTERN, tfds:NAME[/CONFIG][:VERSION]:SPLIT; `zeroshot:` before a jsonl or tfds spec
  makes it a zero-shot classification set (classes from labels, else captions).
  `allow_outside_paths`: jsonl and vqa image paths may leave their folder."""
  classify = spec.startswith("zeroshot:")
  inner = spec[len("zeroshot:"):] if classify else spec
  kind, _, rest = inner.partition(":")
  if kind not in KINDS:
    raise ValueError(f"Unknown data spec kind {kind!r} in {spec!r}; known kinds: {KINDS}, "
                     f"optionally after zeroshot:")
  if classify and kind not in ("jsonl", "tfds"):
    raise ValueError(f"Data spec {spec!r}: zeroshot: applies to jsonl: and tfds: specs only")
  if kind == "wds":
    from vlp_jax.data import webdataset  # pylint: disable=g-import-not-at-top
    if not rest:
      raise ValueError(f"Data spec {spec!r} names no shards; expected wds:GLOB")
    return webdataset.WebDataset(rest, shard_cycle, spec)
  if kind == "tfds":
    from vlp_jax.data import templates, tfds_source  # pylint: disable=g-import-not-at-top
    name, sep, split = rest.rpartition(":")
    if not sep or not name or not split:
      raise ValueError(f"Data spec {spec!r} needs a name and a split: tfds:NAME[/CONFIG]:SPLIT")
    return tfds_source.TfdsSource(spec, name, split, data_dir, image_key, text_key, label_key,
                                  templates.get(zeroshot_templates), classify)
  if kind == "builtin":
    name, _, split = rest.partition(":")
    if name not in BUILTINS:
      raise ValueError(f"Unknown builtin dataset {name!r} in {spec!r}; known: {BUILTINS}")
    if split not in SPLITS:
      raise ValueError(f"Data spec {spec!r} needs a split, one of {SPLITS}")
    if name == "shapes_vqa":
      from vlp_jax.data import vqa_source  # pylint: disable=g-import-not-at-top
      return vqa_source.builtin(split, data_dir)
    return BuiltinShapes(split, data_dir)
  path, split = _folder_and_split(spec, kind, rest)
  if kind == "vqa":
    from vlp_jax.data import vqa_source  # pylint: disable=g-import-not-at-top
    return vqa_source.VqaSource(path, split, holdout_percent, allow_outside_paths)
  from vlp_jax.data import templates  # pylint: disable=g-import-not-at-top
  return JsonlFolder(path, split, holdout_percent, classify, templates.get(zeroshot_templates),
                     allow_outside_paths)


def from_config(spec, data_config):
  """The source named by `spec`, with the options of the config's `data` block."""
  d = data_config
  return get_source(spec, d.holdout_percent, d.data_dir, shard_cycle=d.shard_cycle,
                    image_key=d.image_key, text_key=d.text_key, label_key=d.label_key,
                    zeroshot_templates=d.zeroshot_templates,
                    allow_outside_paths=d.get("allow_outside_paths", False))
