"""Zero-shot and retrieval metrics against brute-force definitions."""
import numpy as np

from vlp_jax.evaluate import metrics


def test_zeroshot_topk_and_ignored_labels():
  scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
  labels = np.array([0, 1, 1, -1])
  out = metrics.zeroshot(scores, labels, ks=(1, 2))
  assert out["top1"] == 2 / 3  # rows 0 and 2 right, row 1 wrong, row 3 unlabelled
  assert out["top2"] == 1.0  # row 1's label is its second best
  assert out["chance"] == 1 / 3 and out["count"] == 3


def brute_force_recall(sims, match, k):
  hits = []
  for q in range(sims.shape[0]):
    top = sorted(range(sims.shape[1]), key=lambda j: -sims[q, j])[:k]
    hits.append(any(match[q, j] for j in top))
  return np.mean(hits)


def test_retrieval_matches_brute_force_with_duplicate_captions():
  rng = np.random.default_rng(0)
  n = 40
  captions = [f"caption {i % 25}" for i in range(n)]  # 15 captions appear twice
  img = rng.normal(size=(n, 8))
  txt = img + rng.normal(size=(n, 8))
  out = metrics.retrieval(img, txt, captions, ks=(1, 5))
  match = np.array([[a == b for b in captions] for a in captions])
  sims = txt @ img.T
  for k in (1, 5):
    assert out[f"t2i_r{k}"] == brute_force_recall(sims, match, k)
    assert out[f"i2t_r{k}"] == brute_force_recall(sims.T, match, k)


def test_retrieval_chance_is_the_expected_recall_of_random_rankings():
  rng = np.random.default_rng(1)
  n = 30
  captions = [f"c{i % 20}" for i in range(n)]
  out = metrics.retrieval(rng.normal(size=(n, 4)), rng.normal(size=(n, 4)), captions, ks=(5,))
  match = np.array([[a == b for b in captions] for a in captions])
  trials = [brute_force_recall(rng.normal(size=(n, n)), match, 5) for _ in range(300)]
  assert abs(np.mean(trials) - out["t2i_r5_chance"]) < 0.01
