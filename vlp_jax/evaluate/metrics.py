"""Zero-shot classification and image<->text retrieval metrics on embeddings (numpy)."""
import numpy as np


def zeroshot(scores, labels, ks=(1, 5)):
  """Top-k accuracy of classifying images by their highest-scoring class.

  Args:
    scores: [N, C] image-class scores (similarities to the class prompts).
    labels: [N] class index per image; examples with a negative label are ignored.
  Returns:
    {"top1": ..., "top5": ..., "chance": 1/C, "count": n}; top-k for k >= C is 1.0.
  """
  keep = labels >= 0
  num_classes = scores.shape[1]
  scores = scores[keep]
  labels = labels[keep]
  order = np.argsort(-scores, axis=1)
  out = {}
  for k in ks:
    out[f"top{k}"] = float(np.mean(np.any(order[:, :k] == labels[:, None], axis=1)))
  out["chance"] = 1.0 / num_classes
  out["count"] = int(keep.sum())
  return out


def retrieval(image_emb, text_emb, captions, ks=(1, 5, 10), text_image=None, scores=None):
  """Recall@k both ways for images and their captions.

  Text t describes image `text_image[t]` (default: t, one caption per image; data sets
  such as COCO have several). Pairs with identical captions are interchangeable (the
  built-in scenes repeat captions), so a retrieved item counts as correct when the image
  has a caption equal to the query's. Chance levels (`*_chance`) are the expected recall
  of a random ranking under that rule. Items are ranked by descending score, ties in
  index order.

  scores: None (rank by the similarities text_emb @ image_emb.T) or a pair (t2i [T, I],
  i2t [I, T]) of score matrices to rank by instead, e.g. `rerank`'s; the embeddings are
  then not read (pass None).
  """
  _, caption_ids = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
  if scores is None:
    sims = text_emb @ image_emb.T  # [texts, images]
    scores = (sims, sims.T)
  t2i_scores, i2t_scores = scores
  n_images = t2i_scores.shape[1]
  if t2i_scores.shape != (len(captions), n_images) or i2t_scores.shape != (n_images,
                                                                           len(captions)):
    raise ValueError(f"Score matrices {t2i_scores.shape} and {i2t_scores.shape} do not match "
                     f"{len(captions)} texts and {n_images} images")
  if text_image is None:
    text_image = np.arange(len(captions))
  has = np.zeros((caption_ids.max() + 1, n_images), bool)  # [unique captions, images]
  has[caption_ids, text_image] = True
  match = has[caption_ids]  # [texts, images]
  out = {}
  for name, score, m in (("t2i", t2i_scores, match), ("i2t", i2t_scores, match.T)):
    order = np.argsort(-score, axis=1, kind="stable")
    ranked_match = np.take_along_axis(m, order, axis=1)
    n, positives = m.shape[1], m.sum(axis=1)
    for k in ks:
      out[f"{name}_r{k}"] = float(np.mean(ranked_match[:, :k].any(axis=1)))
      # P(at least one of m positives among k random picks out of n) = 1 - C(n-m, k) / C(n, k).
      miss = np.ones(len(m))
      for j in range(min(k, n)):
        miss *= np.clip((n - positives - j) / (n - j), 0.0, 1.0)
      out[f"{name}_r{k}_chance"] = float(np.mean(1.0 - miss))
  out["count"] = len(captions)
  return out


def rerank(sims, k, score_pairs):
  """Scores that rank each query's top k candidates by a second scorer (ALBEF/BLIP
  retrieval: ITC picks the candidates, the matching head orders them).

  Args:
    sims: [Q, C] first-stage similarities; each query's k best (ties in index order, as
      `retrieval` ranks) are re-scored.
    k: how many candidates per query are re-scored (clipped to C).
    score_pairs: fn(queries [P] int, candidates [P] int) -> [P] scores (higher: better),
      called once with all Q * min(k, C) pairs, query-major.
  Returns:
    [Q, C] float64 scores whose descending order is: the top k in order of score_pairs
    (ties keep their ITC order), then the other candidates in ITC order. They are ranks
    (C for the first, 1 for the last), so every query's order is strict.
  """
  sims = np.asarray(sims)
  q, c = sims.shape
  k = max(0, min(int(k), c))
  order = np.argsort(-sims, axis=1, kind="stable")
  top = order[:, :k]
  second = np.asarray(score_pairs(np.repeat(np.arange(q), k), top.reshape(-1)))
  if second.shape != (q * k,):
    raise ValueError(f"score_pairs returned shape {second.shape}, expected ({q * k},)")
  within = np.argsort(-second.reshape(q, k), axis=1, kind="stable")
  new_order = np.concatenate([np.take_along_axis(top, within, axis=1), order[:, k:]], axis=1)
  out = np.empty((q, c), np.float64)
  np.put_along_axis(out, new_order, np.broadcast_to(np.arange(c, 0, -1, dtype=np.float64),
                                                    (q, c)), axis=1)
  return out
