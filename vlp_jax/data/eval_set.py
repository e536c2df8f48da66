"""Evaluation sets split across hosts: every host enumerates the raw records (cheap), but
decodes only the images that its own devices will encode.

The global eval order is the source order: position p is the p-th raw record, and eval
batch j covers positions [j * B, (j + 1) * B) for the layout's batch size B. A host decodes
position p when row p % B of a batch lands on its devices (sharding.process_rows: on TPU
these need not be contiguous). A record that fails its checks or its decoding stays a
position, marked unusable, so every host agrees on positions without talking; one small
allgather per set then shares which positions are usable and the skip counts. Captions,
tokens and labels are cheap and held whole by every host; images stay uint8 on the host
that decoded them and are normalised on device.
"""
import dataclasses
import os

import numpy as np
from absl import logging

from vlp_jax.data import checks
from vlp_jax.data import pipeline
from vlp_jax.data import preprocess
from vlp_jax.data import sources
from vlp_jax.data.tf_setup import tf

_VALID = 1  # status of a usable position; 0: another host's; 1 + reason code: skipped
_DECODE_ERROR = len(checks.REASONS) + 1  # reason code of a decode failure
# Record fields kept for the usable positions (VQA: answers joined with "\n", the type).
_TEXT_FIELDS = ("key", "caption", "all_captions", "answers", "question_type")


@dataclasses.dataclass(frozen=True)
class Layout:
  """Eval batches of `batch_size` positions, of which this host feeds `rows` (ascending)."""
  batch_size: int
  rows: np.ndarray


def make_layout(mesh, batch_size):
  """The layout of evaluation on `mesh`: batch_size rounded down to a multiple of the batch
  shards (at least one row per shard), rows as the mesh places them."""
  from vlp_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  size = max(shards, batch_size // shards * shards)
  return Layout(size, sharding.process_rows(sharding.batch_sharding(mesh), size))


@dataclasses.dataclass
class EvalSet:
  """One split. Global (every host): `valid` [P] which positions are usable; over the usable
  images, in order: labels task -> int32 [N] (-1: none), `keys`; over the texts: captions,
  tokens [T, L] and `text_image` [T] (None: text i belongs to image i). This host's share:
  `images` uint8 [n, S, S, 3], the usable images it decoded, at `positions` [n].
  `retrieval`: False for a classification set without captions, and for a VQA set, whose
  captions are its questions; then `answers` (a list of str per question) and
  `question_types` (str per question) hold the rest, over the usable records in order."""
  name: str
  images: np.ndarray
  tokens: np.ndarray
  captions: list
  labels: dict
  zeroshot_tasks: dict
  skipped: dict
  text_image: np.ndarray = None
  retrieval: bool = True
  positions: np.ndarray = None
  valid: np.ndarray = None
  keys: list = None
  answers: list = None
  question_types: list = None

  @property
  def num_images(self):
    return int(self.valid.sum())


def _first_caption(record):
  """Several captions: the first is checked like any caption, all are kept for retrieval."""
  if "captions" not in record:
    return record
  record = dict(record)
  captions = tf.strings.regex_replace(record.pop("captions"), "\n", " ")
  record["caption"] = tf.concat([captions, [""]], 0)[0]
  record["all_captions"] = tf.strings.reduce_join(captions, separator="\n")
  return record


def _decoded(stream, own, image_size, resize_mode, num_parallel_calls):
  """One element per record of `stream`: the image (uint8 [S, S, 3] when this host owns the
  position and the record is usable, else empty) and its reason (-1: not this host's)."""
  empty = lambda: tf.zeros([0, 0, 3], tf.uint8)

  def prepare(record):
    def mine():
      checked = checks.check(record)
      return checked["reason"], tf.cond(
          checked["reason"] == 0,
          lambda: preprocess.eval_image(checked["image"], image_size, resize_mode), empty)
    reason, image = tf.cond(own(record["pos"]), mine, lambda: (tf.constant(-1), empty()))
    out = {k: v for k, v in record.items() if k not in ("image", "flaw", "missing")}
    return dict(out, image=image, reason=reason)

  def failed(record):
    out = {k: v for k, v in record.items() if k not in ("image", "flaw", "missing")}
    return dict(out, image=empty(), reason=tf.constant(_DECODE_ERROR))

  def one(record):
    # Exactly one element per record: the decoded one, or the failure when decoding raised.
    ok = tf.data.Dataset.from_tensors(record).map(prepare).ignore_errors()
    return ok.concatenate(tf.data.Dataset.from_tensors(failed(record))).take(1)

  n = pipeline.parallelism(num_parallel_calls)
  return stream.interleave(one, cycle_length=n, block_length=1, num_parallel_calls=n,
                           deterministic=True)


def _gather_status(status):
  """Every host's statuses combined: a position's owners (several when the model axis spans
  hosts) agree on it, the others say 0."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return status
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(status)).max(axis=0)


class _Rows:
  """A growing uint8 image array (the count is unknown for streamed sources)."""

  def __init__(self, size, capacity):
    self.data = np.zeros((max(1, capacity), size, size, 3), np.uint8)
    self.count = 0

  def append(self, image):
    if self.count == len(self.data):
      self.data = np.concatenate([self.data, np.zeros_like(self.data)])
    self.data[self.count] = image
    self.count += 1

  def array(self):
    """The images; a view (no second copy at the peak) unless a quarter would be wasted."""
    view = self.data[:self.count]
    return view if 4 * self.count >= 3 * len(self.data) else view.copy()


def from_source(source, config, tok, layout=None):
  """The records of `source` in source order, capped at config.eval.max_examples records.

  layout: which positions this host decodes (make_layout of the evaluation mesh); None
  decodes all of them, which only a single process may do. tok None: no tokens.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if layout is None and jax.process_count() > 1:
    raise ValueError("Eval sets on several hosts need the mesh (load_eval_set(..., mesh=))")
  size = config.model.image_size
  mine = np.ones(1, bool) if layout is None else np.isin(np.arange(layout.batch_size),
                                                         layout.rows)
  table = tf.constant(mine)
  own = lambda pos: tf.gather(table, pos % len(mine))
  stream = source.records().enumerate().map(lambda i, r: dict(_first_caption(r), pos=i))
  limit = config.eval.max_examples
  if limit > 0:
    stream = stream.take(limit)
  ds = _decoded(stream, own, size, config.data.eval_resize, config.data.num_parallel_calls)
  known = source.num_records if source.num_records is not None else 1024
  share = len(layout.rows) / layout.batch_size if layout is not None else 1.0
  images = _Rows(size, int(min(known, limit if limit > 0 else known) * share) + 1)
  positions, status, info = [], [], []
  for el in pipeline.iterate(ds):
    reason = int(el["reason"])
    status.append(0 if reason < 0 else _VALID + reason)
    info.append({k: v for k, v in el.items() if k in _TEXT_FIELDS or k.startswith("label_")})
    if reason == 0:
      images.append(el["image"])
      positions.append(int(el["pos"]))
    elif reason > 0:
      origin = el.get("origin", el["path"]).decode("utf-8", "replace") or "(inline)"
      logging.warning("Skipping record of %s: reason=%s key=%s file=%s", source.name,
                      checks.ALL_REASONS[reason - 1], el["key"].decode("utf-8", "replace"),
                      origin)
  status = _gather_status(np.array(status, np.int8))
  valid = status == _VALID
  counts = np.bincount(status[status > _VALID] - _VALID - 1, minlength=len(checks.ALL_REASONS))
  skipped = dict(zip(checks.ALL_REASONS, (int(c) for c in counts)))
  for reason, n in getattr(source, "skipped", {}).items():  # VQA: left out while reading
    if reason in skipped:
      skipped[reason] += n
  if not valid.any():
    raise ValueError(f"Eval set {source.name!r} has no usable record (skipped: "
                     f"{ {k: v for k, v in skipped.items() if v} })")
  kept = [info[p] for p in np.flatnonzero(valid)]
  text_image = None
  if kept and "all_captions" in kept[0]:
    groups = [[t for t in r["all_captions"].decode("utf-8", "replace").split("\n") if t.strip()]
              for r in kept]
    captions = [t for g in groups for t in g]
    text_image = np.repeat(np.arange(len(groups)), [len(g) for g in groups]).astype(np.int32)
  else:
    captions = [r["caption"].decode("utf-8") for r in kept]
  answers = question_types = None
  if kept and "answers" in kept[0]:
    answers = [r["answers"].decode("utf-8").split("\n") for r in kept]
    question_types = [r["question_type"].decode("utf-8") for r in kept]
  tasks = source.zeroshot_tasks
  return EvalSet(
      name=source.name, images=images.array(), positions=np.array(positions, np.int64),
      valid=valid, keys=[r["key"].decode("utf-8", "replace") for r in kept],
      tokens=None if tok is None else tok.encode(captions), captions=captions,
      labels={t: np.array([r["label_" + t] for r in kept], np.int32) for t in tasks},
      zeroshot_tasks=tasks, skipped=skipped, text_image=text_image,
      retrieval=not getattr(source, "classify", False) and getattr(source, "retrieval", True),
      answers=answers, question_types=question_types)


def load_eval_set(spec, config, tok, data_dir="", holdout_percent=10, mesh=None):
  """The eval set named by `spec`; `mesh` (the evaluation mesh) splits decoding across
  hosts, with batches of config.eval.batch_size as runner.Encoder makes them."""
  d = config.data.copy_and_resolve_references()
  d.data_dir, d.holdout_percent = data_dir, holdout_percent
  source = sources.from_config(spec, d)
  layout = None if mesh is None else make_layout(mesh, config.eval.batch_size)
  return from_source(source, config, tok, layout)


class FolderSource:
  """Raw records of the image files in a folder, sorted by name, for captioning. They have
  no caption: a placeholder passes the caption checks."""

  def __init__(self, path, suffixes):
    if not tf.io.gfile.isdir(path):
      raise ValueError(f"--caption_data={path!r} is not a folder")
    self.names = sorted(f for f in tf.io.gfile.listdir(path) if f.lower().endswith(suffixes))
    if not self.names:
      raise ValueError(f"--caption_data={path!r}: no image file ({', '.join(suffixes)})")
    self.paths = [os.path.join(path, f) for f in self.names]
    self.name = os.path.basename(os.path.normpath(path))
    self.zeroshot_tasks = {}
    self.num_records = len(self.names)

  def records(self, index=0, count=1):
    n = len(self.names[index::count])
    return tf.data.Dataset.from_tensor_slices(dict(
        key=tf.constant(self.names[index::count]), image=tf.constant([b""] * n),
        path=tf.constant(self.paths[index::count]),
        missing=tf.constant([not tf.io.gfile.exists(p) for p in self.paths[index::count]]),
        caption=tf.constant(["(none)"] * n)))
