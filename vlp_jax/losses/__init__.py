"""Pure loss functions on arrays; each tested against a float64 reference in tests/.

`SOFTMAX` and `SIGMOID` map `config.loss.contrastive` (the implementation) to a per-device
function for `contrastive.sharded`.
"""
from vlp_jax.losses import contrastive, ring

SOFTMAX = {"allgather": contrastive.softmax_allgather, "ring": ring.softmax_ring}
SIGMOID = {"allgather": contrastive.sigmoid_allgather, "ring": ring.sigmoid_ring}
