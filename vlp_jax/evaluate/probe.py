"""Linear probes on frozen image features: closed-form ridge regression to one-hot targets.

The protocol follows big_vision's few-shot evaluator, with the regulariser chosen from data:

- Features are standardised per dimension with the statistics of the examples being fitted
  (so one l2 grid suits every tower, and a few large-activation dimensions do not dominate
  the penalty). Targets are one-hot in {-1, +1}; the bias is not penalised (it comes from
  centring features and targets), which also makes the {-1, +1} vs {0, 1} choice irrelevant.
- `l2` is per training example: the fit minimises mean_i |x_i W + b - y_i|^2 + l2 |W|^2, so
  the value chosen on part of the training split carries over to the whole split.
- One decomposition (an SVD of the centred features, through their QR factor when n > d)
  serves the whole l2 grid, in float32 without forming X^T X (whose condition number is the
  square of X's) nor the [n, C] targets: host memory is about twice the training features.
- Full data: l2 is chosen by top-1 accuracy on a stratified held-out `holdout_fraction` of
  the training split (ties go to the larger l2), then the probe is refit on the whole split.
- k-shot: k examples per class, drawn from the training split by a seeded permutation per
  class (the 1-shot sample is part of the 5-shot sample, and so on). Its l2 is chosen on the
  held-out part of the training split minus the sample. That uses labelled data beyond k per
  class, as big_vision's fixed l2 (tuned once on validation data) does; pass `fewshot_l2`
  for a fixed value instead. A k that some class cannot supply is skipped, with a log line.

Everything runs on the host CPU by default (like big_vision, to leave accelerator memory
alone); every host gets the same numbers from the same replicated features.
"""
import functools
import os
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

# Log-spaced grid of per-example l2 values, for standardised features (covariance trace = d).
L2_GRID = tuple(float(v) for v in 10.0 ** np.arange(-6.0, 4.01, 0.5))
SHOTS = (1, 5, 10, 25)
HOLDOUT_FRACTION = 0.2
SEPARATOR = "=>"  # between the train and test specs of a data.probe entry
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_HIGHEST = jax.lax.Precision.HIGHEST  # no bf16/TF32 passes on TPU/GPU


def _mm(a, b):
  return jnp.matmul(a, b, precision=_HIGHEST)


class Decomposition(NamedTuple):
  """A training set factored once; the ridge weights of any l2 follow in O(d r C).

  Centred features X - x_mean = U diag(s) vt; uty = U^T (Y - y_mean); n examples.
  """
  x_mean: jax.Array
  y_mean: jax.Array
  vt: jax.Array
  s: jax.Array
  uty: jax.Array
  n: float


def _factor(xc, qty):
  """(s, vt, uty) with centred features xc = U diag(s) vt and uty = U^T Yc, where qty(q) is
  q^T Yc for an orthonormal q spanning xc's columns. With n > d, the SVD is of R from xc = QR:
  float32 throughout, and the condition number is xc's, not that of xc^T xc."""
  n, d = xc.shape
  if n > d:
    q, r = jnp.linalg.qr(xc)
    u, s, vt = jnp.linalg.svd(r, full_matrices=False)
    return s, vt, _mm(u.T, qty(q))
  u, s, vt = jnp.linalg.svd(xc, full_matrices=False)
  return s, vt, qty(u)


@jax.jit
def _decompose(x, y):
  x_mean, y_mean = x.mean(0), y.mean(0)
  yc = y - y_mean
  s, vt, uty = _factor(x - x_mean, lambda q: _mm(q.T, yc))
  return x_mean, y_mean, vt, s, uty


def _decompose_labels(x, labels, num_classes):
  """_decompose of targets 2 one_hot(labels) - 1 without forming them ([n, C] would not fit
  for ImageNet-sized probes): Q^T Y from per-class sums of Q's rows."""
  n = x.shape[0]
  x_mean = x.mean(0)
  y_mean = 2.0 * jnp.zeros(num_classes).at[labels].add(1.0) / n - 1.0

  def qty(q):  # q^T (Y - 1 y_mean^T), Y = 2 onehot - 1
    sums = jax.ops.segment_sum(q, labels, num_segments=num_classes).T  # [k, C]
    return 2.0 * sums - q.sum(0)[:, None] * (1.0 + y_mean)[None, :]

  s, vt, uty = _factor(x - x_mean, qty)
  return x_mean, y_mean, vt, s, uty


def _device():
  """The host CPU (the probe stays off the accelerators), or the default device when
  JAX_PLATFORMS leaves the CPU backend out."""
  try:
    return jax.devices("cpu")[0]
  except RuntimeError:
    return jax.devices()[0]


def _cpu(*arrays):
  """float32 copies on _device()."""
  return [jax.device_put(np.asarray(a, np.float32), _device()) for a in arrays]


def ridge_decompose(x, y):
  """Decomposition of features x [n, d] and targets y [n, C] for ridge_weights."""
  x, y = _cpu(x, y)
  if x.ndim != 2 or y.ndim != 2 or len(x) != len(y) or len(x) == 0:
    raise ValueError(f"ridge: need x [n, d] and y [n, C] with n > 0, got {x.shape} and "
                     f"{y.shape}")
  return Decomposition(*_decompose(x, y), n=float(len(x)))


@jax.jit
def _weights(x_mean, y_mean, vt, s, uty, n, l2):
  w = _mm(vt.T, _shrink(s, n, vt.shape[1], l2)[:, None] * uty)
  return w, y_mean - _mm(x_mean, w)


def ridge_weights(dec, l2):
  """(w [d, C], b [C]) minimising mean |x W + b - y|^2 + l2 |W|^2 (b not penalised)."""
  if not l2 >= 0:
    raise ValueError(f"ridge: l2 must be >= 0, got {l2}")
  return _weights(dec.x_mean, dec.y_mean, dec.vt, dec.s, dec.uty, dec.n, jnp.float32(l2))


def ridge_fit(x, y_onehot, l2):
  """Ridge regression of y_onehot [n, C] on x [n, d] with an unpenalised bias: (w, b)."""
  return ridge_weights(ridge_decompose(x, y_onehot), l2)


def ridge_predict(params, x):
  """Scores [m, C] of features x [m, d] under params = (w, b) from ridge_fit."""
  w, b = params
  return _mm(jnp.asarray(x, jnp.float32), w) + b


def _shrink(s, n, d, l2):
  """The ridge filter s / (s^2 + n l2) of each singular value; values below float32 noise
  (as numpy's lstsq cuts them) are dropped, so l2 = 0 gives the pseudo-inverse."""
  keep = s > s.max() * jnp.maximum(n, d) * jnp.finfo(jnp.float32).eps
  return jnp.where(keep, s / jnp.where(keep, s * s + n * l2, 1.0), 0.0)


@functools.partial(jax.jit, static_argnames="num_classes")
def _fit_correct(x_fit, labels_fit, x_eval, labels, grid, num_classes):
  """[G, m]: whether the probe fit on (x_fit, labels_fit) with each l2 of grid classifies each
  evaluation example correctly (one decomposition and one compile for the whole grid)."""
  x_mean, y_mean, vt, s, uty = _decompose_labels(x_fit, labels_fit, num_classes)
  proj = _mm(x_eval - x_mean, vt.T)  # [m, r]: one pass over the evaluation features
  n, d = x_fit.shape

  def correct(l2):
    scores = _mm(proj, _shrink(s, n, d, l2)[:, None] * uty) + y_mean
    return jnp.argmax(scores, axis=1) == labels

  return jax.lax.map(correct, grid)


def _scale(x):
  """Per-dimension standard deviation, 1 where a dimension is (nearly) constant."""
  std = x.std(axis=0)
  return np.where(std > 1e-6 * max(float(std.max(initial=0.0)), 1e-30), std, 1.0)


def _fit_top1(x_fit, y_fit, x_evals, num_classes, grid):
  """Top-1 accuracy over the grid, [G] for each (x_eval, labels) of x_evals, of the probe
  fit on (x_fit, y_fit), standardised with x_fit's statistics."""
  scale = _scale(x_fit)
  x_eval = np.concatenate([x for x, _ in x_evals]) / scale
  labels = np.concatenate([y for _, y in x_evals]).astype(np.int32)
  x_fit, x_eval, grid = _cpu(x_fit / scale, x_eval, grid)
  put = lambda a: jax.device_put(np.asarray(a, np.int32), _device())
  correct = np.asarray(_fit_correct(x_fit, put(y_fit), x_eval, put(labels), grid, num_classes))
  ends = np.cumsum([len(y) for _, y in x_evals])
  return [part.mean(axis=1) for part in np.split(correct, ends[:-1], axis=1)]


def _pick(grid, top1):
  """Index of the largest l2 among those with the best accuracy (the most regularised of
  ties)."""
  best = np.flatnonzero(top1 >= top1.max())
  return int(best[np.argmax(np.asarray(grid)[best])])


def holdout_split(labels, fraction, seed):
  """(fit, holdout) index arrays: round(fraction x count) examples of each class held out,
  leaving at least one in fit; seeded, so the same labels give the same split."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"holdout_fraction must be in [0, 1), got {fraction}")
  rng = np.random.default_rng([seed, 0])
  labels = np.asarray(labels)
  hold = []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    hold.append(idx[:min(int(round(fraction * len(idx))), len(idx) - 1)])
  hold = np.sort(np.concatenate(hold)) if hold else np.zeros(0, np.int64)
  return np.setdiff1d(np.arange(len(labels)), hold), hold


def select_l2(x_train, labels, grid=L2_GRID, holdout_fraction=HOLDOUT_FRACTION, seed=0,
              num_classes=None):
  """(l2, top1 per grid value): the grid value whose fit on the rest of the training split
  classifies the held-out part best (holdout_split; ties go to the larger l2)."""
  x_train, labels = np.asarray(x_train, np.float32), np.asarray(labels)
  grid = tuple(float(g) for g in grid)
  num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
  fit, hold = holdout_split(labels, holdout_fraction, seed)
  if len(hold) == 0:
    raise ValueError(f"select_l2: no held-out example (holdout_fraction={holdout_fraction}, "
                     f"{len(labels)} training examples)")
  top1, = _fit_top1(x_train[fit], labels[fit], [(x_train[hold], labels[hold])], num_classes,
                    grid)
  return grid[_pick(grid, top1)], top1


def fewshot_indices(labels, k, num_classes, seed):
  """Indices of k training examples per class (sorted), or None when some class has fewer.

  Each class's examples are permuted once by the seed and the first k taken, so samples for
  several k are nested and the same seed always gives the same sample.
  """
  rng = np.random.default_rng([seed, 1])
  labels = np.asarray(labels)
  picks = []
  for c in range(num_classes):
    idx = rng.permutation(np.flatnonzero(labels == c))
    if len(idx) < k:
      return None
    picks.append(idx[:k])
  return np.sort(np.concatenate(picks))


def linear_probe(train_features, train_labels, test_features, test_labels, num_classes,
                 shots=SHOTS, seed=0, grid=L2_GRID, holdout_fraction=HOLDOUT_FRACTION,
                 fewshot_l2=None):
  """Top-1 test accuracy of ridge probes on frozen features: full data and k-shot.

  Labels < 0 (no label) are dropped. Returns floats: `top1`, `l2`, `<k>shot` and
  `<k>shot_l2` for each k every class can supply (others are skipped with a log line),
  `chance` (1 / num_classes), `count` (test examples), `train_count` and
  `min_train_per_class` (which k were possible).
  """
  x_tr, y_tr = np.asarray(train_features, np.float32), np.asarray(train_labels)
  x_te, y_te = np.asarray(test_features, np.float32), np.asarray(test_labels)
  if x_tr.ndim != 2 or x_te.ndim != 2 or x_tr.shape[1] != x_te.shape[1]:
    raise ValueError(f"linear_probe: features must be [n, d] with the same d, got "
                     f"{x_tr.shape} and {x_te.shape}")
  if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
    raise ValueError(f"linear_probe: {len(x_tr)}/{len(x_te)} train/test features but "
                     f"{len(y_tr)}/{len(y_te)} labels")
  if not (np.isfinite(x_tr).all() and np.isfinite(x_te).all()):
    raise ValueError("linear_probe: the features are not all finite")
  keep_tr, keep_te = y_tr >= 0, y_te >= 0
  x_tr, y_tr, x_te, y_te = x_tr[keep_tr], y_tr[keep_tr], x_te[keep_te], y_te[keep_te]
  if len(y_tr) == 0 or len(y_te) == 0:
    raise ValueError(f"linear_probe: no labelled example ({len(y_tr)} train, {len(y_te)} test)")
  if max(y_tr.max(), y_te.max()) >= num_classes:
    raise ValueError(f"linear_probe: label {max(y_tr.max(), y_te.max())} >= num_classes "
                     f"{num_classes}")
  grid = tuple(float(g) for g in grid)
  counts = np.bincount(y_tr, minlength=num_classes)
  out = {"chance": 1.0 / num_classes, "count": float(len(y_te)),
         "train_count": float(len(y_tr)), "min_train_per_class": float(counts.min())}

  fit, hold = holdout_split(y_tr, holdout_fraction, seed)
  if len(hold):
    top1, = _fit_top1(x_tr[fit], y_tr[fit], [(x_tr[hold], y_tr[hold])], num_classes, grid)
    l2 = grid[_pick(grid, top1)]
  else:
    l2 = float(np.exp(np.mean(np.log(grid))))
    logging.warning("probe: no held-out training example (%d examples); l2 = %g, the middle "
                    "of the grid", len(y_tr), l2)
  top1, = _fit_top1(x_tr, y_tr, [(x_te, y_te)], num_classes, [l2])
  out.update(top1=float(top1[0]), l2=l2)

  for k in shots:
    idx = fewshot_indices(y_tr, k, num_classes, seed)
    if idx is None:
      c = int(np.argmin(counts))
      logging.warning("probe: skipping %d-shot: class %d has %d training examples", k, c,
                      counts[c])
      continue
    sel = np.setdiff1d(hold, idx) if fewshot_l2 is None else hold[:0]
    if len(sel):
      test, held = _fit_top1(x_tr[idx], y_tr[idx], [(x_te, y_te), (x_tr[sel], y_tr[sel])],
                             num_classes, grid)
      best = _pick(grid, held)
      k_l2, top1 = grid[best], test[best]
    else:
      k_l2 = l2 if fewshot_l2 is None else float(fewshot_l2)
      if fewshot_l2 is None:
        logging.warning("probe: %d-shot: no held-out example outside the sample; l2 = %g",
                        k, l2)
      top1 = _fit_top1(x_tr[idx], y_tr[idx], [(x_te, y_te)], num_classes, [k_l2])[0][0]
    out.update({f"{k}shot": float(top1), f"{k}shot_l2": k_l2})
  return out


def probe_metrics(name, train_features, train_labels, test_features, test_labels, num_classes,
                  **kwargs):
  """linear_probe's results as metrics `probe/<name>/<key>` (top1, <k>shot, l2, ...)."""
  results = linear_probe(train_features, train_labels, test_features, test_labels, num_classes,
                         **kwargs)
  return {f"probe/{name}/{key}": value for key, value in results.items()}


def eval_set_metrics(name, train_set, test_set, train_features, test_features, **kwargs):
  """Probe metrics of every labelled task two EvalSets share, features in the sets' order
  (runner.Encoder.images). Test labels are matched to the training split's classes by name;
  a set with several tasks (shapes: color, shape, size) names them `<name>_<task>`."""
  out = {}
  tasks = [t for t in test_set.zeroshot_tasks if t in train_set.zeroshot_tasks]
  for task in tasks:
    classes = list(train_set.zeroshot_tasks[task].classnames)
    test_labels = align_labels(test_set.labels[task], test_set.zeroshot_tasks[task].classnames,
                               classes)
    out.update(probe_metrics(name if len(tasks) == 1 else f"{name}_{task}", train_features,
                             train_set.labels[task], test_features, test_labels, len(classes),
                             **kwargs))
  if not tasks:
    raise ValueError(f"Probe set {name!r}: its train and test splits share no class labels")
  return out


def align_labels(labels, classnames, train_classnames):
  """Labels re-indexed into train_classnames by class name (-1: a class the training split
  lacks), for sets whose splits list their classes separately (jsonl folders)."""
  index = {c: i for i, c in enumerate(train_classnames)}
  table = np.array([index.get(c, -1) for c in classnames] + [-1], np.int32)
  labels = np.asarray(labels)
  return table[np.where(labels >= 0, labels, len(classnames))]


def _default_name(spec):
  """The set's short name, as the data sources name it (tfds NAME, jsonl folder, builtin)."""
  inner = spec[len("zeroshot:"):] if spec.startswith("zeroshot:") else spec
  kind, _, rest = inner.partition(":")
  if kind == "tfds":
    return rest.rpartition(":")[0].split("/")[0].split(":")[0]
  if kind == "builtin":
    return rest.partition(":")[0]
  if kind == "jsonl":
    head, sep, tail = rest.rpartition(":")
    return os.path.basename(os.path.normpath(head if sep and tail in ("train", "test")
                                             else rest))
  return ""


def parse_probe_specs(value):
  """[(name, train_spec, test_spec)] of a `data.probe` string.

  Entries are comma-separated, each `[NAME=]TRAIN_SPEC=>TEST_SPEC`; specs keep their own
  colons (`tfds:cifar10:train=>tfds:cifar10:test`). NAME ([A-Za-z0-9_.-]+) defaults to the
  test set's short name (the tfds name, the jsonl folder's name, the builtin name).
  """
  out = []
  for entry in (e.strip() for e in (value or "").split(",")):
    if not entry:
      continue
    parts = entry.split(SEPARATOR)
    if len(parts) != 2:
      raise ValueError(f"data.probe entry {entry!r}: expected [NAME=]TRAIN_SPEC{SEPARATOR}"
                       f"TEST_SPEC (one {SEPARATOR!r})")
    left, test = parts[0].strip(), parts[1].strip()
    head, sep, tail = left.partition("=")
    name, train = (head, tail.strip()) if sep and _NAME.match(head) else ("", left)
    if not train or not test:
      raise ValueError(f"data.probe entry {entry!r}: empty train or test spec")
    if train == test:
      raise ValueError(f"data.probe entry {entry!r}: the train and test specs are the same")
    name = name or _default_name(test)
    if not name:
      raise ValueError(f"data.probe entry {entry!r}: cannot name the set from {test!r}; "
                       f"write NAME={left}{SEPARATOR}{test}")
    if "/" in name or any(n == name for n, _, _ in out):
      raise ValueError(f"data.probe entry {entry!r}: set name {name!r} is "
                       f"{'used twice' if '/' not in name else 'not a metric name'}; "
                       f"give each NAME=")
    out.append((name, train, test))
  return out
