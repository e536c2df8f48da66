"""Runs every configured evaluation on a family's encoders and names the metrics.

Metric names: `zeroshot/<set>_<task>/top1|top5|chance` and
`retrieval/<set>/t2i_r1|...|i2t_r10` (plus `_chance` levels), where <set> is the dataset's
short name (e.g. `shapes`, `emoji_noto`) and <task> the labelled attribute.
"""
import time

import jax
import numpy as np
from absl import logging

from vlp_jax.evaluate import metrics
from vlp_jax.parallel import sharding


class Encoder:
  """Jitted, sharded image/text encoders over fixed-size batches (one compile each)."""

  def __init__(self, family, mesh, batch_size):
    self.mesh = mesh
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    self.batch_size = max(shards, batch_size // shards * shards)
    in_sh = sharding.batch_sharding(mesh)
    out_sh = sharding.replicated(mesh)
    self._image = jax.jit(family.encode_image, in_shardings=(None, in_sh), out_shardings=out_sh)
    self._text = jax.jit(family.encode_text, in_shardings=(None, in_sh), out_shardings=out_sh)

  def _run(self, fn, params, array):
    n = len(array)
    if n == 0:
      raise ValueError("Cannot encode an empty evaluation set")
    bs, pid, pcount = self.batch_size, jax.process_index(), jax.process_count()
    per_host = bs // pcount
    outs = []
    with sharding.rules_context(), jax.set_mesh(self.mesh):
      for start in range(0, n, bs):
        chunk = array[start:start + bs]
        pad = bs - len(chunk)
        if pad:
          chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        local = chunk[pid * per_host:(pid + 1) * per_host]
        batch = jax.make_array_from_process_local_data(sharding.batch_sharding(self.mesh), local,
                                                       chunk.shape)
        outs.append(np.asarray(fn(params, batch))[:bs - pad])
    return np.concatenate(outs)

  def images(self, params, images):
    return self._run(self._image, params, images)

  def texts(self, params, tokens):
    return self._run(self._text, params, tokens)


def class_scores(encoder, params, tokenizer, task, image_emb):
  """[N, C] image-class scores from the task's prompts, combined as `task.ensemble` says."""
  prompts = [t.format(name) for name in task.classnames for t in task.templates]
  emb = encoder.texts(params, tokenizer.encode(prompts))
  emb = emb.reshape(len(task.classnames), len(task.templates), -1)
  if task.ensemble == "max":
    return np.einsum("nd,ctd->nct", image_emb, emb).max(axis=-1)
  if task.ensemble != "mean":
    raise ValueError(f"Unknown prompt ensemble {task.ensemble!r} (mean or max)")
  emb = emb.mean(axis=1)  # CLIP: average the normalised prompt embeddings, renormalise
  return image_emb @ (emb / np.linalg.norm(emb, axis=-1, keepdims=True)).T


def evaluate(encoder, params, tokenizer, eval_sets):
  """All metrics of all eval sets as one flat dict of floats."""
  results = {}
  for ev in eval_sets:
    start = time.time()
    img = encoder.images(params, ev.images)
    if getattr(ev, "retrieval", True):
      txt = encoder.texts(params, ev.tokens)
      for key, value in metrics.retrieval(img, txt, ev.captions,
                                          text_image=getattr(ev, "text_image", None)).items():
        results[f"retrieval/{ev.name}/{key}"] = value
    for task_name, task in ev.zeroshot_tasks.items():
      labels = ev.labels[task_name]
      if not np.any(labels >= 0):
        continue
      scores = class_scores(encoder, params, tokenizer, task, img)
      for key, value in metrics.zeroshot(scores, labels).items():
        results[f"zeroshot/{ev.name}_{task_name}/{key}"] = value
    logging.info("evaluated %s (%d examples) in %.1fs", ev.name, len(ev.images),
                 time.time() - start)
  return results

