"""Runs every configured evaluation on a family's encoders and names the metrics.

Metric names: `zeroshot/<set>_<task>/top1|top5|chance` and
`retrieval/<set>/t2i_r1|...|i2t_r10` (plus `_chance` levels), where <set> is the dataset's
short name (e.g. `shapes`, `emoji_noto`) and <task> the labelled attribute;
`retrieval_itm/<set>/...` the same recalls with each query's ITC top k re-ranked by the
family's matching head (ALBEF, BLIP); `vqa/<set>/accuracy`, `.../accuracy/<type>` and
`.../count` for the sets with answers (evaluate/vqa.py).
"""
import time

import jax
import numpy as np
from absl import logging

from vlp_jax.data import eval_set
from vlp_jax.data import preprocess
from vlp_jax.evaluate import metrics
from vlp_jax.evaluate import probe
from vlp_jax.parallel import sharding


class Encoder:
  """Jitted, sharded image/text encoders over fixed-size batches (one compile each).

  Each host feeds the rows of every batch that its devices hold (`layout`, from the mesh's
  device order), so embeddings meet their labels however the mesh places hosts; outputs
  come back replicated. Images are uint8 and normalised inside the jitted encoder.
  """

  def __init__(self, family, mesh, batch_size):
    self.mesh = mesh
    self.layout = eval_set.make_layout(mesh, batch_size)
    self.batch_size = self.layout.batch_size
    self._sharding = sharding.batch_sharding(mesh)
    self._text = self.jit(family.encode_text)
    self._image = self.jit_on_images(family.encode_image)
    self._classify = self.jit_on_images(family.classify)
    self._context = self.jit_on_images(family.image_context)
    self._nll = self.jit(family.text_nll)
    self._match = jax.jit(family.match, in_shardings=(None, self._sharding, self._sharding),
                          out_shardings=sharding.replicated(self.mesh))
    self.family = family

  def jit(self, fn, inputs=1):
    """fn(params, *batch) jitted: the `inputs` batch arrays sharded over the batch axes,
    output replicated."""
    return jax.jit(fn, in_shardings=(None,) + (self._sharding,) * inputs,
                   out_shardings=sharding.replicated(self.mesh))

  def jit_on_images(self, fn, inputs=1):
    """`jit` of fn(params, images, *rest) fed uint8 images, normalised on device first."""
    return self.jit(lambda params, images, *rest: fn(
        params, preprocess.normalize_on_device(images), *rest), inputs)

  def _batches(self, fn, params, local_batches):
    """`fn` over global batches given as this host's rows of each (an array, or a tuple of
    arrays for fn(params, *arrays)), outputs concatenated."""
    outs = []
    with sharding.rules_context(), jax.set_mesh(self.mesh):
      for local in local_batches:
        parts = local if isinstance(local, tuple) else (local,)
        batch = [jax.make_array_from_process_local_data(
            self._sharding, part, (self.batch_size,) + part.shape[1:]) for part in parts]
        outs.append(np.asarray(fn(params, *batch)))
    return np.concatenate(outs)

  def _run(self, fn, params, array):
    """`fn` over an array that every host holds whole (texts); the last batch is padded."""
    n = len(array)
    if n == 0:
      raise ValueError("Cannot encode an empty evaluation set")
    rows = self.layout.rows
    local = (array[np.minimum(start + rows, n - 1)] for start in range(0, n, self.batch_size))
    return self._batches(fn, params, local)[:n]

  def _run_images(self, fn, params, ev, *texts):
    """`fn` over the usable images of an EvalSet, in order; each host feeds the images it
    decoded, unusable positions are zero rows whose outputs are dropped. `texts`: arrays
    over the usable records that every host holds whole (a VQA set's question tokens), fed
    beside the images of the same rows: fn(params, images, *texts)."""
    bs, rows = self.layout.batch_size, self.layout.rows
    total = len(ev.valid)
    usable = np.maximum(np.cumsum(ev.valid) - 1, 0)  # position -> index among the usable
    mine = np.flatnonzero(ev.valid)
    mine = mine[np.isin(mine % bs, rows)]
    if not np.isin(mine, ev.positions).all():
      raise ValueError(f"Eval set {ev.name!r} was loaded for another mesh or eval.batch_size "
                       f"than this encoder's (pass the evaluation mesh to load_eval_set)")

    def local_batches():
      for start in range(0, total, bs):
        wanted = start + rows
        at = np.minimum(np.searchsorted(ev.positions, wanted), max(len(ev.positions) - 1, 0))
        hit = (ev.positions[at] == wanted) if len(ev.positions) else np.zeros(len(rows), bool)
        local = np.zeros((len(rows),) + ev.images.shape[1:], ev.images.dtype)
        local[hit] = ev.images[at[hit]]
        if not texts:
          yield local
          continue
        index = usable[np.minimum(wanted, total - 1)]
        yield (local,) + tuple(text[index] for text in texts)

    return self._batches(fn, params, local_batches())[:total][ev.valid]

  def images(self, params, ev):
    """Embeddings of the usable images of an EvalSet, replicated on every host."""
    return self._run_images(self._image, params, ev)

  def texts(self, params, tokens):
    return self._run(self._text, params, tokens)

  def text_nll(self, params, tokens):
    """[N, 2] summed negative log-likelihood and token count of each text (Family.text_nll)."""
    return self._run(self._nll, params, tokens)

  def class_logits(self, params, ev):
    """Classification-head logits of the usable images of an EvalSet (zero-shot by head)."""
    return self._run_images(self._classify, params, ev)

  def contexts(self, params, ev):
    """What the matching head reads of each usable image of an EvalSet (family
    image_context, e.g. its tokens [N, 1 + patches, W]), replicated on every host."""
    return self._run_images(self._context, params, ev)

  def match_pairs(self, params, contexts, tokens, images, texts):
    """[P] matching scores of the pairs (contexts[images[p]], tokens[texts[p]]).

    Every host holds `contexts` and `tokens` whole and gathers the rows of its share of
    each fixed-size batch of pairs on the host; the last batch is padded (one compile).
    Every host must ask for the same pairs (they come from replicated similarities).
    """
    n = len(images)
    if n == 0:
      return np.zeros((0,), np.float32)
    rows = self.layout.rows

    def local_batches():
      for start in range(0, n, self.batch_size):
        at = np.minimum(start + rows, n - 1)
        yield contexts[images[at]], tokens[texts[at]]

    return self._batches(self._match, params, local_batches())[:n]


def head_scores(encoder, logits, task):
  """([N, C] scores, share of classes covered) of a task by the family's head: a class
  scores the mean logit of its rows; one the head cannot name scores -inf (never guessed)."""
  rows, missing = encoder.family.head_classes(task.classnames)
  scores = np.full((logits.shape[0], len(task.classnames)), -np.inf, np.float32)
  for c, r in enumerate(rows):
    if len(r) and task.classnames[c] not in missing:
      scores[:, c] = logits[:, list(r)].mean(axis=1)
  return scores, 1.0 - len(missing) / max(len(task.classnames), 1)


def class_scores(encoder, params, tokenizer, task, image_emb):
  """[N, C] image-class scores from the task's prompts, combined as `task.ensemble` says."""
  prompts = [t.format(name) for name in task.classnames for t in task.templates]
  emb = encoder.texts(params, tokenizer.encode(prompts))
  scores = encoder.family.image_text_scores
  if task.ensemble == "max":
    return scores(image_emb, emb).reshape(len(image_emb), len(task.classnames), -1).max(-1)
  if task.ensemble != "mean":
    raise ValueError(f"Unknown prompt ensemble {task.ensemble!r} (mean or max)")
  # CLIP: average the normalised prompt embeddings, renormalise
  emb = emb.reshape(len(task.classnames), len(task.templates), -1).mean(axis=1)
  return scores(image_emb, emb / np.linalg.norm(emb, axis=-1, keepdims=True))


def pair_scorer(encoder, params, contexts, tokens):
  """fn(texts [P], images [P]) -> [P] matching scores; a pair is scored once however often
  it is asked for (the two retrieval directions share most of their top-k pairs)."""
  n_images = len(contexts)
  known_keys, known = np.zeros((0,), np.int64), np.zeros((0,), np.float32)

  def score(texts, images):
    nonlocal known_keys, known
    keys = np.asarray(texts, np.int64) * n_images + np.asarray(images, np.int64)
    new = np.setdiff1d(keys, known_keys)  # sorted, unique
    if len(new):
      values = encoder.match_pairs(params, contexts, tokens, new % n_images, new // n_images)
      known_keys = np.concatenate([known_keys, new])
      known = np.concatenate([known, values.astype(np.float32)])
      order = np.argsort(known_keys, kind="stable")
      known_keys, known = known_keys[order], known[order]
    return known[np.searchsorted(known_keys, keys)]

  return score


def itm_retrieval(encoder, params, ev, image_emb, text_emb, top_k):
  """`metrics.retrieval` of an EvalSet where each query's `top_k` candidates by ITC
  similarity are re-ordered by the family's matching head (`metrics.rerank`): the ALBEF /
  BLIP protocol. The other candidates keep their ITC order after them.

  Cost: one image_context pass per image, kept on every host as one numpy array (memory
  N_images x image_context's row, e.g. (1 + patches) x width floats: 5k COCO images of a
  ViT-B/16 at 384px are ~9 GB in float32) from which each batch of pairs gathers its rows
  on the host, rather than recomputing contexts per pair; then at most
  N_texts * k + N_images * k matching passes (text->image and image->text; pairs in both
  directions' top k are scored once), in fixed-size batches of encoder.batch_size pairs.
  """
  contexts = encoder.contexts(params, ev)
  score = pair_scorer(encoder, params, contexts, ev.tokens)
  sims = encoder.family.image_text_scores(image_emb, text_emb).T  # [texts, images]
  t2i = metrics.rerank(sims, top_k, score)
  i2t = metrics.rerank(sims.T, top_k, lambda images, texts: score(texts, images))
  return metrics.retrieval(None, None, ev.captions, text_image=getattr(ev, "text_image", None),
                           scores=(t2i, i2t))


def evaluate(encoder, params, tokenizer, eval_sets, evaluations=("retrieval", "zeroshot_text"),
             probe_sets=(), itm_top_k=16):
  """All metrics of all eval sets as one flat dict of floats: only the evaluations the
  family declares (Family.EVALUATIONS) that this runner knows: retrieval (also re-ranked
  by a matching head: retrieval_itm, ITC's top `itm_top_k`, config eval.itm_top_k),
  zero-shot by text prompts or by the classification head, answers to the questions of
  the sets that have them (vqa: `encoder` is a vqa.Answerer), and linear probes on
  `probe_sets` [(name, train EvalSet, test EvalSet)]."""
  results = {}
  retrieval, zeroshot = "retrieval" in evaluations, "zeroshot_text" in evaluations
  by_head, itm = "zeroshot_head" in evaluations, "retrieval_itm" in evaluations
  for ev in eval_sets if (retrieval or itm or zeroshot or by_head) else ():
    start = time.time()
    img = encoder.images(params, ev) if (retrieval or itm or zeroshot) else None
    logits = encoder.class_logits(params, ev) if by_head else None
    if (retrieval or itm) and getattr(ev, "retrieval", True):
      txt = encoder.texts(params, ev.tokens)
      if retrieval:
        sims = encoder.family.image_text_scores(img, txt)
        for key, value in metrics.retrieval(None, None, ev.captions, scores=(sims.T, sims),
                                            text_image=getattr(ev, "text_image", None)).items():
          results[f"retrieval/{ev.name}/{key}"] = value
      if itm:
        itm_start = time.time()
        for key, value in itm_retrieval(encoder, params, ev, img, txt, itm_top_k).items():
          results[f"retrieval_itm/{ev.name}/{key}"] = value
        logging.info("re-ranked %s's ITC top %d by the matching head in %.1fs", ev.name,
                     itm_top_k, time.time() - itm_start)
    for task_name, task in ev.zeroshot_tasks.items():
      labels = ev.labels[task_name]
      if not np.any(labels >= 0):
        continue
      prefix = f"zeroshot/{ev.name}_{task_name}"
      if zeroshot:
        scores = class_scores(encoder, params, tokenizer, task, img)
        results.update({f"{prefix}/{k}": v for k, v in metrics.zeroshot(scores, labels).items()})
      if by_head:
        scores, covered = head_scores(encoder, logits, task)
        results.update({f"{prefix}/{k}": v for k, v in metrics.zeroshot(scores, labels).items()})
        results[f"{prefix}/covered"] = covered
    logging.info("evaluated %s (%d examples) in %.1fs", ev.name, ev.num_images,
                 time.time() - start)
  if "vqa" in evaluations:
    # Imported here: the answering runner builds on this module's Encoder.
    from vlp_jax.evaluate import vqa  # pylint: disable=g-import-not-at-top
    results.update(vqa.evaluate_sets(encoder, params, tokenizer, eval_sets))
  for ev in eval_sets if "perplexity" in evaluations else ():
    sums = encoder.text_nll(params, ev.tokens).astype(np.float64).sum(axis=0)
    nll = sums[0] / max(sums[1], 1.0)
    results[f"perplexity/{ev.name}/nll"] = float(nll)
    results[f"perplexity/{ev.name}/perplexity"] = float(np.exp(nll))
  if "probe" in evaluations:
    for name, train_set, test_set in probe_sets:
      start = time.time()
      results.update(probe.eval_set_metrics(name, train_set, test_set,
                                            encoder.images(params, train_set),
                                            encoder.images(params, test_set)))
      logging.info("linear probe %s (%d + %d examples) in %.1fs", name, train_set.num_images,
                   test_set.num_images, time.time() - start)
  return results
