"""VQA data specs: `vqa:PATH[:train|:test]` (a folder with vqa.jsonl) and
`builtin:shapes_vqa:train|test` (shapes_vqa's questions, written once as such a folder).

A VQA record is a caption record whose `caption` is the question, plus `answers` (the
answers joined with "\\n") and `question_type` (may be empty), so the one record pipeline,
training iterator and eval set carry questions like captions. The folder is read whole and
checked up front by shapes_vqa.read_vqa_folder: bad lines and unreadable images are skipped
there and counted in `skipped`, so every record reaching the pipeline is usable.
"""
import os
import shutil
import tempfile

import numpy as np
from absl import logging

from vlp_jax.data import shapes_vqa
from vlp_jax.data.tf_setup import tf

# split -> (questions, most per scene): train spans builtin:shapes's 20,000 train scenes,
# test about its first 1,000 test scenes (a few scenes give fewer than 3 questions).
BUILTIN_SIZES = {"train": (60_000, 3), "test": (3_000, 3)}
BUILTIN_VERSION = "1.2.0"  # bump when shapes_vqa's questions change: a new cache folder
ANSWER_SEP = "\n"


def join_answers(answers):
  """One string of a question's answers; newlines inside an answer become spaces."""
  return ANSWER_SEP.join(a.replace("\n", " ") for a in answers)


class VqaSource:
  """The usable questions of a VQA folder as raw records held in memory (random access for
  the global shuffle, like jsonl:). `skipped`: reason -> lines or records left out while
  reading (shapes_vqa.REASONS). Not a retrieval or zero-shot set: a question describes
  only part of its image, and an image has several."""

  classify = False
  retrieval = False

  def __init__(self, folder, split=None, holdout_percent=10, allow_outside_paths=False,
               name=None):
    read = shapes_vqa.read_vqa_folder(folder, split, holdout_percent, allow_outside_paths)
    self.name = name or read.name
    self.examples = read.examples
    self.skipped = read.skipped
    self.zeroshot_tasks = {}
    self.num_records = len(self.examples)
    self._arrays = None

  def arrays(self):
    """Every raw record's fields as numpy arrays."""
    if self._arrays is None:
      n, exs = self.num_records, self.examples
      text = lambda values: np.array([v.encode("utf-8") for v in values], object)
      self._arrays = dict(
          key=text(ex["key"] for ex in exs),
          image=np.full(n, b"", object),
          path=np.array([os.fsencode(ex["path"]) for ex in exs], object),
          missing=np.zeros(n, bool),
          flaw=np.zeros(n, np.int32),
          caption=text(ex["question"] for ex in exs),
          answers=text(join_answers(ex["answers"]) for ex in exs),
          question_type=text(ex["question_type"] for ex in exs))
    return self._arrays

  def records(self, index=0, count=1):
    fields = {name: value[index::count] for name, value in self.arrays().items()}
    return tf.data.Dataset.from_tensor_slices(fields)

  def captions(self):
    """Texts to train a tokenizer on: every question, then each of its distinct answers,
    so the tokenizer knows the answer words too."""
    out = []
    for ex in self.examples:
      out.append(ex["question"])
      out.extend(dict.fromkeys(ex["answers"]))
    return out  # read_vqa_folder keeps no blank question or answer


def builtin_root(data_dir=""):
  """Where builtin: VQA folders are cached: config.data.data_dir, else TFDS's default
  data dir (where shapes.prepare puts vlp_shapes)."""
  if data_dir:
    return os.path.expanduser(data_dir)
  from tensorflow_datasets.core import constants  # pylint: disable=g-import-not-at-top
  return os.path.expanduser(constants.DATA_DIR)


def materialise(split, data_dir=""):
  """The folder of builtin:shapes_vqa:<split>, written on first use. It is written to a
  temporary folder and renamed into place, so a process killed midway never leaves a half
  folder that a later run would take as complete; a leftover temporary folder is ignored."""
  count, per_scene = BUILTIN_SIZES[split]
  parent = os.path.join(builtin_root(data_dir), "vlp_shapes_vqa", BUILTIN_VERSION)
  folder = os.path.join(parent, f"{split}_{count}_{per_scene}")
  if os.path.isdir(folder):
    return folder
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{split}_{count}_{per_scene}.tmp-", dir=parent)
  logging.info("Writing %d shapes_vqa %s questions to %s", count, split, folder)
  try:
    shapes_vqa.write_jsonl_folder(tmp, split, count, per_scene)
    os.rename(tmp, folder)
  except OSError:
    if not os.path.isdir(folder):  # not another process finishing first: a real failure
      raise
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return folder


def builtin(split, data_dir=""):
  """`builtin:shapes_vqa:<split>`: shapes_vqa's questions about builtin:shapes's scenes."""
  if split not in BUILTIN_SIZES:
    raise ValueError(f"builtin:shapes_vqa: unknown split {split!r}; known: "
                     f"{tuple(BUILTIN_SIZES)}")
  return VqaSource(materialise(split, data_dir), name="shapes_vqa")
