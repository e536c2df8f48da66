"""All-gather contrastive losses between image and text embeddings (ring forms: ring.py).

Each function here runs per device inside `shard_map` and takes the name(s) of the mesh
axes the batch is split over; `sharded` wraps one for a mesh.
"""
import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P


def softmax_allgather(img, txt, logit_scale, axis_name):
  """Symmetric softmax InfoNCE (CLIP) over the global batch.

  With B = n * b pairs, logits_ij = s * <img_i, txt_j> and
    loss = 1/(2B) * sum_i [ -log softmax_j(logits_ij)[i] - log softmax_j(logits_ji)[i] ].
  Each device all-gathers both embeddings (B x D) and scores only its own b rows against
  them, in both directions; the gradient flows back through the gather (its transpose is a
  reduce-scatter), so every device's embeddings get the gradient of every device's rows.
  Per-device memory: O(B*D + b*B).

  Args:
    img, txt: this device's [b, D] L2-normalised embeddings, row i of each a positive pair.
    logit_scale: scalar s (already exp'd and capped).
    axis_name: mesh axis name(s) the batch is split over.
  Returns:
    (loss, metrics): the global mean loss (identical on every device) and in-batch top-1
    accuracies of both directions.
  """
  b = img.shape[0]
  all_img = jax.lax.all_gather(img, axis_name, tiled=True)
  all_txt = jax.lax.all_gather(txt, axis_name, tiled=True)
  global_b = all_img.shape[0]
  labels = jax.lax.axis_index(axis_name) * b + jnp.arange(b)
  logits_i2t = logit_scale * img @ all_txt.T
  logits_t2i = logit_scale * txt @ all_img.T

  def nll(logits):
    target = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    return jax.nn.logsumexp(logits, axis=1) - target

  local = jnp.sum(nll(logits_i2t)) + jnp.sum(nll(logits_t2i))
  loss = jax.lax.psum(local, axis_name) / (2 * global_b)
  hits = lambda logits: jnp.sum(jnp.argmax(logits, axis=1) == labels)
  metrics = {
      "i2t_top1": jax.lax.psum(hits(logits_i2t), axis_name) / global_b,
      "t2i_top1": jax.lax.psum(hits(logits_t2i), axis_name) / global_b,
  }
  return loss, metrics


def sigmoid_allgather(img, txt, scale, bias, axis_name):
  """SigLIP's pairwise sigmoid loss over the global batch:

    loss = -1/B * sum_ij log sigmoid(z_ij * (t <img_i, txt_j> + b)),  z = +1 if i == j else -1.

  Each device all-gathers the texts (B x D) and scores its own b images against them; the
  gradient flows back through the gather. Per-device memory: O(B*D + b*B).
  """
  b = img.shape[0]
  all_txt = jax.lax.all_gather(txt, axis_name, tiled=True)
  global_b = all_txt.shape[0]
  labels = jax.lax.axis_index(axis_name) * b + jnp.arange(b)
  logits = scale * img @ all_txt.T + bias
  z = jnp.where(labels[:, None] == jnp.arange(global_b)[None, :], 1.0, -1.0)
  loss = -jax.lax.psum(jnp.sum(jax.nn.log_sigmoid(z * logits)), axis_name) / global_b
  all_img = jax.lax.all_gather(jax.lax.stop_gradient(img), axis_name, tiled=True)
  t2i = scale * jax.lax.stop_gradient(txt) @ all_img.T
  hits = lambda l: jnp.sum(jnp.argmax(l, axis=1) == labels)
  metrics = {
      "i2t_top1": jax.lax.psum(hits(logits), axis_name) / global_b,
      "t2i_top1": jax.lax.psum(hits(t2i), axis_name) / global_b,
  }
  return loss, metrics


def sharded(fn, mesh, batch_axes, num_scalars=1):
  """Runs a per-device contrastive loss over `mesh`, embeddings split along `batch_axes`;
  the `num_scalars` arguments after the embeddings (scale, bias) are replicated."""
  return jax.shard_map(
      functools.partial(fn, axis_name=batch_axes), mesh=mesh,
      in_specs=(P(batch_axes), P(batch_axes)) + (P(),) * num_scalars, out_specs=(P(), P()))
