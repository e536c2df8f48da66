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


def retrieval(image_emb, text_emb, captions, ks=(1, 5, 10), text_image=None):
  """Recall@k both ways for images and their captions.

  Text t describes image `text_image[t]` (default: t, one caption per image; data sets
  such as COCO have several). Pairs with identical captions are interchangeable (the
  built-in scenes repeat captions), so a retrieved item counts as correct when the image
  has a caption equal to the query's. Chance levels (`*_chance`) are the expected recall
  of a random ranking under that rule.
  """
  _, caption_ids = np.unique(np.asarray(captions, dtype=object).astype(str), return_inverse=True)
  n_images = len(image_emb)
  if text_image is None:
    text_image = np.arange(len(captions))
  has = np.zeros((caption_ids.max() + 1, n_images), bool)  # [unique captions, images]
  has[caption_ids, text_image] = True
  match = has[caption_ids]  # [texts, images]
  sims = text_emb @ image_emb.T  # [texts, images]
  out = {}
  for name, scores, m in (("t2i", sims, match), ("i2t", sims.T, match.T)):
    order = np.argsort(-scores, axis=1, kind="stable")
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
