"""Contrastive loss with momentum features, feature queues and distillation (ALBEF, BLIP),
and the hard negatives their matching heads train on.

ITC (ALBEF eq. 1-4): the student's image embeddings are scored against the momentum
model's text embeddings of the global batch followed by the text queue (and the other way
round), at logit scale s. The targets mix the one-hot positive with the momentum model's
own softmax over the same keys, y = (1 - alpha) * onehot + alpha * softmax(s * f_m . keys),
and each direction is the mean over rows of the cross-entropy to y. Queue slots not filled
yet are masked out rather than filled with noise. Written on global arrays: under jit, the
rows split over the batch axes and XLA gathers the momentum keys (B x E) and the queue once
per step, as ALBEF's replicated queue needs.
"""
import jax
import jax.numpy as jnp

NEG = -1e9  # masked logits: finite, so that 0 * log-probability stays 0


def _direction(queries, keys_m, queries_m, valid, scale, alpha):
  """Mean cross-entropy of softmax(s * queries . keys) against the distilled targets, and
  the share of rows whose own key (column i) scores highest."""
  b = queries.shape[0]
  logits = jnp.where(valid, scale * queries @ keys_m.T, NEG)
  onehot = jax.nn.one_hot(jnp.arange(b), keys_m.shape[0], dtype=jnp.float32)
  teacher = jnp.where(valid, jax.lax.stop_gradient(scale) * queries_m @ keys_m.T, NEG)
  targets = jax.lax.stop_gradient((1 - alpha) * onehot + alpha * jax.nn.softmax(teacher, axis=-1))
  logp = jax.nn.log_softmax(logits, axis=-1)
  loss = -jnp.mean(jnp.sum(jnp.where(valid, targets * logp, 0.0), axis=-1))
  top1 = jnp.mean(jnp.argmax(logits, axis=-1) == jnp.arange(b))
  return loss, top1


def momentum_contrastive(img, txt, img_m, txt_m, image_queue, text_queue, queue_count, scale,
                         alpha):
  """(loss, metrics) of ALBEF/BLIP's ITC over the global batch.

  Args:
    img, txt: [B, E] the student's L2-normalised embeddings (differentiated).
    img_m, txt_m: [B, E] the momentum model's (constants).
    image_queue, text_queue: [Q, E] earlier batches' momentum embeddings; slots
      [0, queue_count) are filled (Q may be 0).
    scale: the logit scale (1 / temperature).
    alpha: distillation weight in [0, 1] (0: one-hot targets).
  """
  img_m, txt_m = jax.lax.stop_gradient(img_m), jax.lax.stop_gradient(txt_m)
  q = image_queue.shape[0]
  valid = jnp.concatenate([jnp.ones((img.shape[0],), bool), jnp.arange(q) < queue_count])
  text_keys = jnp.concatenate([txt_m, jax.lax.stop_gradient(text_queue)], axis=0)
  image_keys = jnp.concatenate([img_m, jax.lax.stop_gradient(image_queue)], axis=0)
  i2t, i2t_top1 = _direction(img, text_keys, img_m, valid, scale, alpha)
  t2i, t2i_top1 = _direction(txt, image_keys, txt_m, valid, scale, alpha)
  return (i2t + t2i) / 2, {"i2t_top1": i2t_top1, "t2i_top1": t2i_top1}


def enqueue(queue, ptr, count, keys):
  """(queue, ptr, count) after writing `keys` [B, E] at slots ptr, ptr+1, ... (mod Q).

  A select over the queue's own rows, so each device writes only its shard of a queue
  split over the batch axes (the keys, B x E, are gathered). Needs B <= Q.
  """
  q, b = queue.shape[0], keys.shape[0]
  if q == 0:
    return queue, ptr, count
  age = (jnp.arange(q) - ptr) % q  # slot ptr + j receives keys[j]
  new = jnp.where((age < b)[:, None], keys[jnp.minimum(age, b - 1)].astype(queue.dtype), queue)
  return new, (ptr + b) % q, jnp.minimum(count + b, q)


def ramp(alpha, step, ramp_steps):
  """ALBEF's distillation warm-up: alpha * min(1, step / ramp_steps) (0: alpha throughout)."""
  if not ramp_steps:
    return jnp.asarray(alpha, jnp.float32)
  return alpha * jnp.minimum(1.0, step.astype(jnp.float32) / ramp_steps)


def same_caption(tokens):
  """[B, B] True where two rows hold the same token ids (a hash per row): pairs that are
  positives for matching, however the data repeats captions."""
  position = jnp.arange(1, tokens.shape[1] + 1, dtype=jnp.uint32) * jnp.uint32(2654435761)
  h = jnp.sum((tokens.astype(jnp.uint32) + 1) * position, axis=1)  # wraps mod 2^32
  return h[:, None] == h[None, :]


def draw_negatives(scores, positives, u):
  """Per row i, an index j drawn with probability softmax(scores[i])_j over the j that are
  not positives of i, by inverse CDF at u[i] in [0, 1). A row without a negative gets the
  next row (i + 1 mod B). Constants: no gradient flows through the choice."""
  scores = jax.lax.stop_gradient(scores).astype(jnp.float32)
  b = scores.shape[1]
  logits = jnp.where(positives, -jnp.inf, scores)
  top = jnp.max(logits, axis=1, keepdims=True)
  weights = jnp.where(positives, 0.0, jnp.exp(logits - jnp.where(jnp.isfinite(top), top, 0.0)))
  cdf = jnp.cumsum(weights, axis=1)
  total = cdf[:, -1:]
  index = jnp.sum(cdf <= u[:, None] * total, axis=1)
  index = jnp.minimum(index, b - 1)
  fallback = (jnp.arange(scores.shape[0]) + 1) % b
  return jnp.where(total[:, 0] > 0, index, fallback)


def matching_pairs(img, txt, tokens, scale, u):
  """(negative text per image, negative image per text), [B] indices drawn from the softmax
  of the global batch's similarities (image-text and text-image) with positives (same
  caption) excluded; `u` [B, 2] uniform draws."""
  sims = scale * img @ txt.T
  positives = same_caption(tokens)
  return draw_negatives(sims, positives, u[:, 0]), draw_negatives(sims.T, positives, u[:, 1])


def itm_losses(logits):
  """Per-example ITM cross-entropy [B] and correct [B] from logits [3, B, 2]: the positive
  pair (label 1), the text with a negative image and the image with a negative text (0)."""
  labels = jnp.array([1, 0, 0])[:, None]
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, jnp.broadcast_to(labels, logits.shape[:2])[..., None],
                             axis=-1)[..., 0]
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return jnp.sum(nll, axis=0), jnp.sum(correct, axis=0)
