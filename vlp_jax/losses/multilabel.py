"""Multi-label sigmoid binary cross-entropy (CatLIP): each image against every label.

Labels are independent, so the loss is a sum of per-example terms: with the batch sharded
over devices, a plain reduction under jit is exact, and only gradients cross devices (no
embeddings are gathered, unlike the contrastive losses), so no shard_map form is needed.
"""
import jax
import jax.numpy as jnp

REDUCTIONS = ("batch_mean", "mean")


def bce_per_example(logits, labels, pos_weight=None):
  """Sum over labels of -[w y log s(x) + (1 - y) log(1 - s(x))], s = sigmoid, w = pos_weight.

  log s(x) and log(1 - s(x)) = log s(-x) are taken as log-sigmoids, so logits of any size
  stay finite. Summed in float32 whatever the logits' dtype. Per-example sums let gradient
  accumulation divide once by the global count.

  Args:
    logits: [..., V].
    labels: [..., V] targets in [0, 1] (multi-hot or soft).
    pos_weight: optional weight of the positive term, scalar or [V] (PyTorch's
      BCEWithLogitsLoss pos_weight): > 1 counts missed labels more.
  Returns:
    [...] float32.
  """
  x = logits.astype(jnp.float32)
  y = labels.astype(jnp.float32)
  pos = y * jax.nn.log_sigmoid(x)
  if pos_weight is not None:
    pos = jnp.asarray(pos_weight, jnp.float32) * pos
  return -jnp.sum(pos + (1.0 - y) * jax.nn.log_sigmoid(-x), axis=-1)


def multilabel_bce(logits, labels, pos_weight=None, weights=None, reduction="batch_mean"):
  """Multi-label BCE over a batch, a scalar.

  reduction="batch_mean" (CatLIP's pretraining configs in Apple's corenet, the paper's
  code): sum over labels, mean over examples. "mean": mean over labels too (PyTorch's
  default), V times smaller; Adam's updates hardly change, but gradient clipping and the
  logged loss do.

  Args:
    logits, labels, pos_weight: as in `bce_per_example`; logits [B, V].
    weights: optional [B] example weights (0 masks a padded example); the mean divides by
      their sum.
    reduction: "batch_mean" or "mean".
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
  per_example = bce_per_example(logits, labels, pos_weight)
  if weights is None:
    total, count = jnp.sum(per_example), per_example.size
  else:
    weights = weights.astype(jnp.float32)
    total, count = jnp.sum(weights * per_example), jnp.sum(weights)
  if reduction == "mean":
    count = count * logits.shape[-1]
  return jnp.where(count > 0, total / jnp.maximum(count, 1e-30), 0.0)  # all masked: 0
