"""Evaluation sets held whole in host memory, preprocessed like training without augmentation."""
import dataclasses

import numpy as np

from vlp_jax.data import checks
from vlp_jax.data import pipeline
from vlp_jax.data import sources
from vlp_jax.data.tf_setup import tf


@dataclasses.dataclass
class EvalSet:
  """One split: images [N, S, S, 3], captions and tokens [T, L] of the texts, labels
  task -> int32 [N] (-1: none). `text_image` [T]: the image of each text (None: text i
  belongs to image i); `retrieval`: False for a classification set without captions."""
  name: str
  images: np.ndarray
  tokens: np.ndarray
  captions: list
  labels: dict
  zeroshot_tasks: dict
  skipped: dict
  text_image: np.ndarray = None
  retrieval: bool = True


def _first_caption(record):
  """Several captions: the first is checked like any caption, all are kept for retrieval."""
  if "captions" not in record:
    return record
  record = dict(record)
  captions = tf.strings.regex_replace(record.pop("captions"), "\n", " ")
  record["caption"] = tf.concat([captions, [""]], 0)[0]
  record["all_captions"] = tf.strings.reduce_join(captions, separator="\n")
  return record


def load_eval_set(spec, config, tok, data_dir="", holdout_percent=10):
  """The usable records of `spec` in source order, capped at config.eval.max_examples."""
  d = config.data.copy_and_resolve_references()
  d.data_dir, d.holdout_percent = data_dir, holdout_percent
  source = sources.from_config(spec, d)
  stream = source.records().enumerate().map(
      lambda i, r: _first_caption(dict(r, index=i, epoch=0)))
  ds = pipeline.process(
      stream, image_size=config.model.image_size, augment="none", crop_min_scale=1.0,
      seed=config.seed, num_parallel_calls=config.data.num_parallel_calls, epoch_size=0)
  limit = config.eval.max_examples
  if limit > 0:
    ds = ds.take(limit)
  ds = ds.batch(max(1, config.eval.batch_size))
  parts = list(pipeline.iterate(ds))
  if not parts:
    raise ValueError(f"Eval set {spec!r} has no usable record")
  cat = lambda k: np.concatenate([p[k] for p in parts])
  skip_log = pipeline.SkipLog(source.name)
  for p in parts:
    for i in range(len(p["index"])):
      skip_log.update(p["counts"][i], p["last_reason"][i], p["last_key"][i], p["last_path"][i])
  counts = parts[-1]["counts"][-1].copy()
  kept = sum(len(p["index"]) for p in parts)
  if (limit <= 0 or kept < limit) and source.num_records is not None:
    # Read to the end: decode failures after the last good record count too.
    counts[-1] = source.num_records - kept - counts[:-1].sum()
  tasks = source.zeroshot_tasks
  text_image = None
  if "all_captions" in parts[0]:
    groups = [[t for t in c.decode("utf-8", "replace").split("\n") if t.strip()]
              for c in cat("all_captions")]
    captions = [t for g in groups for t in g]
    text_image = np.repeat(np.arange(len(groups)), [len(g) for g in groups]).astype(np.int32)
  else:
    captions = [c.decode("utf-8") for c in cat("caption")]
  return EvalSet(
      name=source.name, images=cat("image").astype(np.float32),
      tokens=tok.encode(captions), captions=captions,
      labels={t: cat("label_" + t).astype(np.int32) for t in tasks},
      zeroshot_tasks=tasks,
      skipped=dict(zip(checks.ALL_REASONS, (int(c) for c in counts))),
      text_image=text_image, retrieval=not getattr(source, "classify", False))
