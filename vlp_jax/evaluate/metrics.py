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


def retrieval(image_emb, text_emb, captions, ks=(1, 5, 10)):
  """Recall@k both ways for paired images and captions (row i of each is a pair).

  Pairs with identical captions are interchangeable (the built-in scenes repeat captions),
  so a retrieved item counts as correct when its caption equals the query's. Chance levels
  (`*_chance`) are the expected recall of a random ranking under that rule.
  """
  _, caption_ids = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
  match = caption_ids[:, None] == caption_ids[None, :]  # [N, N], symmetric
  sims = text_emb @ image_emb.T  # [texts, images]
  n = len(captions)
  positives = match.sum(axis=1)
  out = {}
  for name, scores in (("t2i", sims), ("i2t", sims.T)):
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked_match = np.take_along_axis(match, order, axis=1)
    for k in ks:
      out[f"{name}_r{k}"] = float(np.mean(ranked_match[:, :k].any(axis=1)))
      # P(at least one of m positives among k random picks out of n) = 1 - C(n-m, k) / C(n, k).
      miss = np.ones(n)
      for j in range(min(k, n)):
        miss *= np.clip((n - positives - j) / (n - j), 0.0, 1.0)
      out[f"{name}_r{k}_chance"] = float(np.mean(1.0 - miss))
  out["count"] = n
  return out
