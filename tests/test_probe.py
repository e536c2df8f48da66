"""Linear probes: the ridge solve against float64 least squares, the l2 choice, probe accuracy
at both ends (separable, random labels), few-shot sampling and the data.probe parser."""
import logging
import types

import numpy as np
import pytest

from vlp_jax.evaluate import probe

C, D = 6, 16  # classes and feature size shared by the probe tests (one compile per shape)


def _reference(x, y, l2):
  """Least squares in float64 on the augmented system [[X, 1], [sqrt(n l2) I, 0]] [W; b] =
  [Y; 0]: ridge with an unpenalised bias, from numpy alone."""
  n, d = x.shape
  a = np.block([[x, np.ones((n, 1))], [np.sqrt(n * l2) * np.eye(d), np.zeros((d, 1))]])
  rhs = np.vstack([y, np.zeros((d, y.shape[1]))])
  sol = np.linalg.lstsq(a, rhs, rcond=None)[0]
  return sol[:d], sol[d]


@pytest.mark.parametrize("n,d,c", [(120, 12, 4), (10, 30, 3), (14, 12, 5)],
                         ids=["n>d", "n<d", "d<n<d+C"])
def test_ridge_matches_float64_least_squares(n, d, c):
  rng = np.random.default_rng(n)
  x = rng.normal(size=(n, d)) * np.logspace(0, 2, d) + 5.0  # uneven scales, off-centre
  y = rng.normal(size=(n, c))
  for l2 in (1e-3, 1.0, 30.0):
    w, b = probe.ridge_fit(x, y, l2)
    w_ref, b_ref = _reference(x, y, l2)
    np.testing.assert_allclose(w, w_ref, rtol=0, atol=2e-4 * np.abs(w_ref).max())
    np.testing.assert_allclose(b, b_ref, rtol=0, atol=2e-4 * np.abs(b_ref).max())
    np.testing.assert_allclose(probe.ridge_predict((w, b), x), x @ w_ref + b_ref,
                               rtol=0, atol=1e-3 * np.abs(y).max())
  if n > d:  # l2 = 0: ordinary least squares with a bias
    w, b = probe.ridge_fit(x, y, 0.0)
    w_ref = np.linalg.lstsq(np.c_[x, np.ones(n)], y, rcond=None)[0]
    np.testing.assert_allclose(w, w_ref[:d], rtol=0, atol=2e-4 * np.abs(w_ref).max())
  with pytest.raises(ValueError, match="l2"):
    probe.ridge_fit(x, y, -1.0)


def _clusters(rng, means, per_class, spread):
  """per_class Gaussian examples around each class mean, labels in class order."""
  labels = np.repeat(np.arange(len(means)), per_class)
  return means[labels] + spread * rng.normal(size=(len(labels), means.shape[1])), labels


def test_select_l2_picks_the_best_held_out_value():
  # 10 fitted examples per class in 55 dimensions, of which 4 carry the classes plus a
  # nuisance z that dimensions 4-7 repeat (so only a lightly regularised fit can cancel it)
  # and 47 are noise (that a fit with too little l2 interpolates): the best held-out
  # accuracy lies inside the grid.
  rng = np.random.default_rng(1)
  labels = np.repeat(np.arange(C), 100)
  means = rng.normal(size=(C, 4))
  z = rng.normal(size=(len(labels), 4))
  x = rng.normal(size=(len(labels), 55))
  x[:, :4] = means[labels] + z + 0.1 * rng.normal(size=(len(labels), 4))
  x[:, 4:8] = z
  grid = tuple(10.0 ** np.arange(-5, 4))
  l2, top1 = probe.select_l2(x, labels, grid, holdout_fraction=0.9, seed=3)

  # The same split and standardisation, each l2 fitted on its own.
  fit, hold = probe.holdout_split(labels, 0.9, seed=3)
  assert len(np.intersect1d(fit, hold)) == 0 and len(fit) + len(hold) == len(labels)
  np.testing.assert_array_equal(np.bincount(labels[hold]), [90] * C)
  scale = x[fit].std(axis=0)
  targets = 2.0 * np.eye(C)[labels[fit]] - 1.0
  expected = []
  for value in grid:
    scores = probe.ridge_predict(probe.ridge_fit(x[fit] / scale, targets, value),
                                 x[hold] / scale)
    expected.append(np.mean(np.argmax(scores, axis=1) == labels[hold]))
  one = 1.0 / len(hold)  # float32 may move an example on a knife edge
  np.testing.assert_allclose(top1, expected, atol=2 * one)
  assert l2 == max(g for g, t in zip(grid, top1) if t == top1.max())  # ties: larger l2
  assert expected[grid.index(l2)] >= max(expected) - 2 * one
  assert grid[0] < l2 < grid[-1]  # the problem really has an interior optimum
  assert max(expected) > max(expected[0], expected[-1]) + 0.02


def _separable(seed):
  """Train and test examples of C well-separated classes in D dimensions."""
  rng = np.random.default_rng(seed)
  means = 3.0 * rng.normal(size=(C, D))
  return (*_clusters(rng, means, 40, 0.3), *_clusters(rng, means, 20, 0.3))


def test_probe_separable_features_reach_full_accuracy():
  x_tr, y_tr, x_te, y_te = _separable(1)
  out = probe.linear_probe(x_tr, y_tr, x_te, y_te, C, shots=(1, 5))
  assert out["top1"] == 1.0 and out["5shot"] == 1.0 and out["1shot"] >= 0.9
  # Every l2 classifies the held-out part perfectly: the tie goes to the largest.
  assert out["l2"] == probe.L2_GRID[-1] and out["chance"] == 1.0 / C
  assert out["count"] == len(y_te) and out["train_count"] == len(y_tr)


def test_probe_random_labels_is_at_chance():
  rng = np.random.default_rng(2)
  x_tr, x_te = rng.normal(size=(C * 40, D)), rng.normal(size=(C * 20, D))
  y_tr, y_te = rng.integers(0, C, C * 40), rng.integers(0, C, C * 20)
  # 120 test examples: chance 1/6, binomial standard deviation 0.034.
  out = probe.linear_probe(x_tr, y_tr, x_te, y_te, C, shots=())
  assert abs(out["top1"] - 1.0 / C) < 0.12
  # The same features with informative labels: the probe is not just weak.
  x_sep, y_sep, x_sep_te, y_sep_te = _separable(2)
  assert probe.linear_probe(x_sep, y_sep, x_sep_te, y_sep_te, C, shots=())["top1"] == 1.0


def test_holdout_split_is_stratified_seeded_and_keeps_one_per_class():
  labels = np.array([0] * 10 + [1] * 2 + [2])
  fit, hold = probe.holdout_split(labels, 0.6, seed=0)
  np.testing.assert_array_equal(np.bincount(labels[hold], minlength=3), [6, 1, 0])
  np.testing.assert_array_equal(np.sort(np.concatenate([fit, hold])), np.arange(len(labels)))
  np.testing.assert_array_equal(hold, probe.holdout_split(labels, 0.6, seed=0)[1])
  assert not np.array_equal(hold, probe.holdout_split(labels, 0.6, seed=1)[1])
  with pytest.raises(ValueError, match="holdout_fraction"):
    probe.holdout_split(labels, 1.0, seed=0)


def test_fewshot_sampling_is_seeded_exact_and_nested():
  labels = np.random.default_rng(0).integers(0, 4, 200)
  a = probe.fewshot_indices(labels, 5, 4, seed=7)
  np.testing.assert_array_equal(a, probe.fewshot_indices(labels, 5, 4, seed=7))
  assert not np.array_equal(a, probe.fewshot_indices(labels, 5, 4, seed=8))
  np.testing.assert_array_equal(np.bincount(labels[a], minlength=4), [5, 5, 5, 5])
  assert len(np.unique(a)) == 20
  assert set(probe.fewshot_indices(labels, 1, 4, seed=7)) <= set(a)  # nested samples
  short = np.array([0] * 10 + [1] * 3 + [2] * 10)
  assert probe.fewshot_indices(short, 3, 3, seed=0) is not None
  assert probe.fewshot_indices(short, 4, 3, seed=0) is None
  assert probe.fewshot_indices(short, 1, 4, seed=0) is None  # class 3 has no example


def test_probe_skips_shots_a_class_cannot_supply(caplog):
  x_tr, y_tr, x_te, y_te = _separable(3)
  drop = np.flatnonzero(y_tr == 2)[:33]  # class 2 keeps 7 labelled examples
  y_tr[drop] = -1  # unlabelled: ignored
  with caplog.at_level(logging.WARNING):
    out = probe.linear_probe(x_tr, y_tr, x_te, y_te, C, shots=(1, 5, 10))
  assert "1shot" in out and "5shot" in out and "10shot" not in out
  assert "10shot_l2" not in out and out["min_train_per_class"] == 7
  assert out["train_count"] == len(y_tr) - 33
  assert "skipping 10-shot: class 2 has 7 training examples" in caplog.text
  with pytest.raises(ValueError, match="num_classes"):
    probe.linear_probe(x_tr, np.maximum(y_tr, 0), x_te, y_te + 1, C)


def test_probe_metrics_names_and_fixed_fewshot_l2():
  x_tr, y_tr, x_te, y_te = _separable(4)
  m = probe.probe_metrics("pets", x_tr, y_tr, x_te, y_te, C, shots=(1,), fewshot_l2=0.5)
  assert set(m) == {f"probe/pets/{k}" for k in (
      "top1", "l2", "1shot", "1shot_l2", "chance", "count", "train_count",
      "min_train_per_class")}
  assert m["probe/pets/1shot_l2"] == 0.5 and m["probe/pets/top1"] == 1.0
  assert all(isinstance(v, float) for v in m.values())


def test_align_labels_by_class_name():
  got = probe.align_labels([0, 1, 2, -1], ["cat", "dog", "emu"], ["dog", "cat", "fox"])
  np.testing.assert_array_equal(got, [1, 0, -1, -1])


def test_eval_set_metrics_matches_classes_by_name():
  x_tr, y_tr, x_te, y_te = _separable(5)
  names = [f"c{i}" for i in range(C)]
  task = lambda classnames: types.SimpleNamespace(classnames=classnames)
  train = types.SimpleNamespace(zeroshot_tasks={"label": task(names)}, labels={"label": y_tr})
  # The test split lists its classes in another order (a jsonl folder sorts its own names).
  test = types.SimpleNamespace(zeroshot_tasks={"label": task(names[::-1])},
                               labels={"label": C - 1 - y_te})
  m = probe.eval_set_metrics("pets", train, test, x_tr, x_te, shots=())
  assert m["probe/pets/top1"] == 1.0 and m["probe/pets/count"] == len(y_te)
  shapes = types.SimpleNamespace(zeroshot_tasks={"color": task(names), "size": task(names)},
                                 labels={"color": y_tr, "size": y_tr})
  shapes_test = types.SimpleNamespace(zeroshot_tasks={"color": task(names), "size": task(names)},
                                      labels={"color": y_te, "size": y_te})
  m = probe.eval_set_metrics("shapes", shapes, shapes_test, x_tr, x_te, shots=())
  assert m["probe/shapes_color/top1"] == 1.0 and "probe/shapes_size/top1" in m
  with pytest.raises(ValueError, match="share no class labels"):
    probe.eval_set_metrics("x", train, shapes_test, x_tr, x_te)


def test_parse_probe_specs():
  assert probe.parse_probe_specs("") == []
  got = probe.parse_probe_specs(
      "tfds:cifar10:train=>tfds:cifar10:test, "
      "pets=jsonl:/data/pets:train => jsonl:/data/pets:test,"
      "builtin:shapes:train=>builtin:shapes:test,"
      "tfds:oxford_iiit_pet:3.*.*:train[:80%]=>tfds:oxford_iiit_pet:3.*.*:test,"
      "jsonl:/data/run=3/flowers/:train=>zeroshot:jsonl:/data/run=3/flowers/:test")
  assert got == [
      ("cifar10", "tfds:cifar10:train", "tfds:cifar10:test"),
      ("pets", "jsonl:/data/pets:train", "jsonl:/data/pets:test"),
      ("shapes", "builtin:shapes:train", "builtin:shapes:test"),
      ("oxford_iiit_pet", "tfds:oxford_iiit_pet:3.*.*:train[:80%]",
       "tfds:oxford_iiit_pet:3.*.*:test"),
      ("flowers", "jsonl:/data/run=3/flowers/:train", "zeroshot:jsonl:/data/run=3/flowers/:test")]
  for bad, why in [("tfds:cifar10:train", "=>"),
                   ("tfds:cifar10:train:tfds:cifar10:test", "=>"),
                   ("a=>b=>c", "=>"),
                   ("=>tfds:cifar10:test", "empty"),
                   ("x=tfds:cifar10:train=>", "empty"),
                   ("tfds:cifar10:test=>tfds:cifar10:test", "same"),
                   ("tfds:c:train=>tfds:c:test,tfds:c:train[:5%]=>tfds:c:test", "twice"),
                   ("wds:/shards/*.tar=>wds:/other/*.tar", "cannot name")]:
    with pytest.raises(ValueError, match=why) as err:
      probe.parse_probe_specs(bad)
    assert "\n" not in str(err.value) and repr(bad.split(",")[-1].strip())[1:-1] in str(err.value)
