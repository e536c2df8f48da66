"""Pure loss functions on arrays; each tested against a float64 reference in tests/.

`SOFTMAX` and `SIGMOID` map `config.loss.contrastive` (the implementation) to a per-device
function for `contrastive.sharded`.
"""
from vlp_jax.losses import contrastive, multilabel, ring
from vlp_jax.losses.multilabel import bce_per_example, multilabel_bce

__all__ = ["contrastive", "multilabel", "ring", "bce_per_example", "multilabel_bce",
           "SOFTMAX", "SIGMOID", "memory_estimate"]

SOFTMAX = {"allgather": contrastive.softmax_allgather, "ring": ring.softmax_ring}
SIGMOID = {"allgather": contrastive.sigmoid_allgather, "ring": ring.sigmoid_ring}


# Per-device temporary memory of forward + backward, in units of the embedding itemsize:
# x * (gathered rows) * D + y * (local rows) * (rows scored against). Coefficients fitted to
# bench/loss_scaling.py's AOT measurements (XLA:CPU, float32, D=768, n=8..256, b=128/512),
# within 8% there; describe uses them to size a pod's loss without compiling for it.
_MEMORY_MODEL = {
    ("allgather", "softmax"): (3.0, 2.5), ("allgather", "sigmoid"): (1.0, 2.0),
    ("ring", "softmax"): (4.0, 2.0), ("ring", "sigmoid"): (4.0, 4.0),
}


def memory_estimate(impl, kind, local_batch, num_shards, dim, itemsize=4):
  """Estimated per-device temporary bytes of a contrastive loss and its gradient."""
  x, y = _MEMORY_MODEL[(impl, kind)]
  b, n = local_batch, num_shards
  if impl == "ring":
    return int(itemsize * (x * b * dim + y * b * b))
  return int(itemsize * (x * n * b * dim + y * b * n * b))
