"""Retrieval re-ranked by a matching head (retrieval_itm): the numpy re-ranking on a worked
example, and the runner with the real BLIP family against a brute-force computation."""
import numpy as np
import pytest

from vlp_jax.evaluate import metrics

# ---- metrics.rerank ---------------------------------------------------------------------


class Table:
  """score_pairs from a [Q, C] table, recording which pairs were asked for."""

  def __init__(self, table):
    self.table = np.asarray(table, np.float64)
    self.asked = []

  def __call__(self, queries, candidates):
    self.asked.append((queries.tolist(), candidates.tolist()))
    return self.table[queries, candidates]


def test_rerank_orders_the_top_k_by_the_second_scorer():
  sims = np.array([[0.1, 0.9, 0.5, 0.9],  # ITC order 1, 3 (tie: index order), 2, 0
                   [0.3, 0.2, 0.8, 0.4]])  # ITC order 2, 3, 0, 1
  itm = Table([[9.0, 0.2, 9.0, 0.7],  # top 2 = {1, 3}: 3 beats 1; 9s are never asked for
               [9.0, 9.0, 0.5, 0.5]])  # top 2 = {2, 3} tie on ITM: ITC order stays
  out = metrics.rerank(sims, 2, itm)
  assert itm.asked == [([0, 0, 1, 1], [1, 3, 2, 3])]  # one call, query-major, ITC order
  # Orders 3, 1 | 2, 0 and 2, 3 | 0, 1 as ranks (4 first).
  np.testing.assert_array_equal(out, [[1, 3, 2, 4], [2, 1, 4, 3]])


def test_rerank_with_k_zero_or_all_candidates():
  rng = np.random.default_rng(0)
  sims = rng.normal(size=(5, 7)).round(1)  # rounding makes ties
  itc_order = np.argsort(-sims, axis=1, kind="stable")
  # k = 0: the ITC order itself (nothing is scored).
  out = metrics.rerank(sims, 0, Table(np.zeros((5, 7))))
  np.testing.assert_array_equal(np.argsort(-out, axis=1, kind="stable"), itc_order)
  # k >= C: the order of the second scorer alone, its ties in ITC order.
  second = rng.integers(0, 3, size=(5, 7)).astype(float)
  out = metrics.rerank(sims, 100, Table(second))
  for q in range(5):
    expected = sorted(itc_order[q], key=lambda c: -second[q, c])  # stable
    assert list(np.argsort(-out[q], kind="stable")) == expected


def test_recalls_of_reranked_scores_with_several_captions_per_image():
  """Worked by hand: 3 images, 5 texts, k = 2. Image 0 has captions "red", "square";
  image 1 "blue"; image 2 "red", "green" (so "red" is correct for images 0 and 2)."""
  captions = ["red", "square", "blue", "red", "green"]
  text_image = np.array([0, 0, 1, 2, 2])
  sims = np.array([[0.1, 0.5, 0.3],  # t0 ITC 1 2 | 0  ITM 2 1 | 0: hit at 1 (ITC: miss)
                   [0.2, 0.6, 0.4],  # t1 ITC 1 2 | 0  ITM 1 2 | 0: right image outside top 2
                   [0.0, 0.7, 0.7],  # t2 ITC 1 2 | 0  ITM tie, stays 1 2: hit
                   [0.9, 0.1, 0.8],  # t3 ITC 0 2 | 1  ITM 2 0 | 1: hit (both are "red")
                   [0.6, 0.0, 0.5]])  # t4 ITC 0 2 | 1  ITM 2 0 | 1: hit (ITC: miss)
  x = 50.0  # pairs no top 2 holds: would change the results if they were read
  itm = np.array([[x, 0.0, 1.0],
                  [x, 0.9, 0.1],
                  [x, 0.3, 0.3],
                  [0.1, x, 0.5],
                  [0.2, x, 0.8]])
  t2i = metrics.rerank(sims, 2, Table(itm))
  # Image queries: i0 ITC 3 4 | 1 0 2 -> ITM 4 3 (text 4 "green": miss; ITC's text 3 "red"
  # hit by the same-caption rule); i1 ITC 2 1 | 0 3 4 -> ITM 1 2 ("square": miss);
  # i2 ITC 3 2 | 4 1 0 -> ITM 3 2 (hit).
  i2t = metrics.rerank(sims.T, 2, Table(itm.T))
  out = metrics.retrieval(None, None, captions, ks=(1, 2, 3), text_image=text_image,
                          scores=(t2i, i2t))
  assert out["t2i_r1"] == 4 / 5 and out["t2i_r2"] == 4 / 5 and out["t2i_r3"] == 1.0
  assert out["i2t_r1"] == 1 / 3 and out["i2t_r2"] == 1.0
  assert out["count"] == 5
  itc = metrics.retrieval(None, None, captions, ks=(1,), text_image=text_image,
                          scores=(sims, sims.T))
  assert itc["t2i_r1"] == 2 / 5 and itc["i2t_r1"] == 1.0
  # The embeddings path is the scores path with their similarities.
  rng = np.random.default_rng(3)
  img, txt = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
  assert metrics.retrieval(img, txt, captions, text_image=text_image) == metrics.retrieval(
      None, None, captions, text_image=text_image, scores=(txt @ img.T, img @ txt.T))


# ---- the runner with BLIP ---------------------------------------------------------------

N_IMAGES, TEXT_IMAGE = 6, np.array([0, 0, 1, 2, 2, 3, 4, 5, 5])  # 9 texts
CAPTIONS = ["red", "square", "blue", "red", "green", "small", "big", "left", "top"]
TOP_K = 3


@pytest.fixture(scope="module")
def blip():
  """(config, family, replicated params, Encoder, fake EvalSet) of a tiny BLIP."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from vlp_jax import config_lib, families  # pylint: disable=g-import-not-at-top
  from vlp_jax.data import eval_set  # pylint: disable=g-import-not-at-top
  from vlp_jax.evaluate import runner  # pylint: disable=g-import-not-at-top
  from vlp_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from vlp_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
  c = config_lib.base_config()
  c.model.name = "blip"
  c.eval.batch_size = 8
  c.eval.itm_top_k = TOP_K
  config = config_lib.validate(c)
  m = config.model
  family = families.get_family(config)
  batch = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), family.example_batch(1))
  params = jax.jit(lambda: nn.meta.unbox(family.init(jax.random.PRNGKey(0), batch)))()
  mesh = mesh_lib.make_mesh(config.mesh)
  params = jax.device_put(params, sharding.replicated(mesh))
  encoder = runner.Encoder(family, mesh, config.eval.batch_size)

  rng = np.random.default_rng(0)
  tokens = rng.integers(7, m.vocab_size, size=(len(CAPTIONS), m.context_length)).astype(np.int32)
  for row, n in enumerate(rng.integers(2, m.context_length - 1, size=len(CAPTIONS))):
    tokens[row, n], tokens[row, n + 1:] = family.eos_id, 0
  ev = eval_set.EvalSet(
      name="fake", images=rng.integers(0, 256, (N_IMAGES, m.image_size, m.image_size, 3),
                                       dtype=np.uint8),
      tokens=tokens, captions=CAPTIONS, labels={}, zeroshot_tasks={}, skipped={},
      text_image=TEXT_IMAGE, positions=np.arange(N_IMAGES), valid=np.ones(N_IMAGES, bool))
  return config, family, params, encoder, ev


def brute_force_itm(family, params, ev):
  """[texts, images] ITM scores of every pair, unsharded, in one call."""
  import jax  # pylint: disable=g-import-not-at-top
  from vlp_jax.data import preprocess  # pylint: disable=g-import-not-at-top
  params = jax.device_get(params)
  contexts = family.image_context(params, preprocess.normalize_on_device(ev.images))
  t, i = np.meshgrid(np.arange(len(ev.tokens)), np.arange(N_IMAGES), indexing="ij")
  scores = family.match(params, np.asarray(contexts)[i.ravel()], ev.tokens[t.ravel()])
  return np.asarray(scores).reshape(len(ev.tokens), N_IMAGES)


def brute_force_recalls(sims, itm, correct, k, ks=(1, 5, 10)):
  """Recall@ks where each query's k best by sims (ties: lower index) are sorted by itm."""
  hits = {r: [] for r in ks}
  for q in range(sims.shape[0]):
    itc = sorted(range(sims.shape[1]), key=lambda c: -sims[q, c])
    order = sorted(itc[:k], key=lambda c: -itm[q, c]) + itc[k:]
    for r in ks:
      hits[r].append(any(correct[q, c] for c in order[:r]))
  return {r: float(np.mean(h)) for r, h in hits.items()}


def test_runner_reranks_with_blip_as_brute_force(blip):
  from vlp_jax.evaluate import runner  # pylint: disable=g-import-not-at-top
  config, family, params, encoder, ev = blip
  calls = []
  match_pairs = encoder.match_pairs
  encoder.match_pairs = lambda *args: calls.append(len(args[3])) or match_pairs(*args)
  try:
    results = runner.evaluate(encoder, params, None, [ev], family.EVALUATIONS - {"zeroshot_text"},
                              itm_top_k=config.eval.itm_top_k)
  finally:
    del encoder.match_pairs

  itm = brute_force_itm(family, params, ev)
  img, txt = encoder.images(params, ev), encoder.texts(params, ev.tokens)
  sims = txt @ img.T
  # The pairs the runner scored, through the sharded batches, score as the plain calls do.
  t2i = metrics.rerank(sims, TOP_K, lambda t, i: encoder.match_pairs(
      params, encoder.contexts(params, ev), ev.tokens, i, t))
  expected_t2i = metrics.rerank(sims, TOP_K, lambda t, i: itm[t, i])
  np.testing.assert_array_equal(t2i, expected_t2i)
  # Each pair is scored once: no more than N_texts * k + N_images * k, fewer when shared.
  assert sum(calls) <= (len(CAPTIONS) + N_IMAGES) * TOP_K

  correct = np.array([[CAPTIONS[t] in [CAPTIONS[u] for u in np.flatnonzero(TEXT_IMAGE == i)]
                       for i in range(N_IMAGES)] for t in range(len(CAPTIONS))])
  for direction, s, m, x in (("t2i", sims, correct, itm), ("i2t", sims.T, correct.T, itm.T)):
    recalls = brute_force_recalls(s, x, m, TOP_K)
    plain = brute_force_recalls(s, s, m, len(s.T))
    for r in (1, 5, 10):
      assert results[f"retrieval_itm/fake/{direction}_r{r}"] == recalls[r], (direction, r)
      assert results[f"retrieval/fake/{direction}_r{r}"] == plain[r], (direction, r)
  assert results["retrieval_itm/fake/count"] == len(CAPTIONS)


def test_retrieval_itm_runs_only_when_declared(blip):
  from vlp_jax.evaluate import runner  # pylint: disable=g-import-not-at-top
  _, _, params, encoder, ev = blip
  encoder.match_pairs = lambda *args: pytest.fail("scored pairs without retrieval_itm")
  try:
    results = runner.evaluate(encoder, params, None, [ev], {"retrieval"})
  finally:
    del encoder.match_pairs
  assert results and not any(k.startswith("retrieval_itm/") for k in results)
