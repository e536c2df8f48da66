"""Ring-chunked contrastive losses: per-device memory O(b^2 + b*D), independent of devices.

Each of the n devices keeps its b image embeddings; the text chunks travel round the ring
(`ppermute`, n steps), so a device only ever holds one b x b block of logits. The backward
pass is a second trip round the ring that recomputes each block (nothing per step is kept
for it) while a gradient accumulator travels with each text chunk and arrives home with
the full gradient of that chunk after n steps. Both are `jax.custom_vjp`s for that reason:
autodiff of the forward loop would keep every step's chunk, O(B*D) per device.

Both functions run inside `shard_map` with the batch split over `axis_name`; they return
(loss, metrics) identical on every device, as the all-gather forms in contrastive.py do.
"""
import functools

import jax
import jax.numpy as jnp


def _ring_size(axis_name):
  return jax.lax.psum(1, axis_name)


def _shift(x, axis_name, n):
  """Sends x to the next device of the ring; receives the previous device's."""
  return jax.lax.ppermute(x, axis_name, perm=[(i, (i + 1) % n) for i in range(n)])


def _online_lse(m, s, x, axis):
  """Streaming log-sum-exp: merges scores x into the running (max m, scaled sum s)."""
  new_m = jnp.maximum(m, jnp.max(x, axis=axis))
  s = s * jnp.exp(m - new_m) + jnp.sum(jnp.exp(x - jnp.expand_dims(new_m, axis)), axis=axis)
  return new_m, s


# ---------------------------------------------------------------------------------------
# Softmax InfoNCE (CLIP, CoCa)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _softmax_ring(img, txt, scale, axis_name):
  return _softmax_ring_fwd(img, txt, scale, axis_name)[0]


def _softmax_ring_fwd(img, txt, scale, axis_name):
  n = _ring_size(axis_name)
  b = img.shape[0]
  # Carries are built from per-device values so shard_map types them as per-device.
  zeros = jnp.zeros_like(img[:, 0])
  neg_inf = zeros - jnp.inf

  def step(k, carry):
    chunk, m_t, s_t, m_i, s_i, pos = carry
    logits = scale * img @ chunk.T  # [my images, travelling texts]
    pos = jnp.where(k == 0, jnp.diagonal(logits), pos)  # step 0 holds my own texts
    m_i, s_i = _online_lse(m_i, s_i, logits, axis=1)
    m_t, s_t = _online_lse(m_t, s_t, logits, axis=0)
    chunk, m_t, s_t = (_shift(x, axis_name, n) for x in (chunk, m_t, s_t))
    return chunk, m_t, s_t, m_i, s_i, pos

  init = (txt, neg_inf, zeros, neg_inf, zeros, zeros)
  _, m_t, s_t, m_i, s_i, pos = jax.lax.fori_loop(0, n, step, init)
  lse_i2t, lse_t2i = m_i + jnp.log(s_i), m_t + jnp.log(s_t)  # texts are home after n shifts
  global_b = n * b
  loss = jax.lax.psum(jnp.sum(lse_i2t - pos) + jnp.sum(lse_t2i - pos), axis_name) / (2 * global_b)
  hits = (jax.lax.psum(jnp.sum(pos >= m_i), axis_name) / global_b,
          jax.lax.psum(jnp.sum(pos >= m_t), axis_name) / global_b)
  return (loss, hits), (img, txt, scale, lse_i2t, lse_t2i)


def _softmax_ring_bwd(axis_name, residuals, cotangents):
  img, txt, scale, lse_i2t, lse_t2i = residuals
  g = cotangents[0]
  n = _ring_size(axis_name)
  c = g / (2 * n * img.shape[0])

  def step(_, carry):
    chunk, lse_chunk, d_chunk, d_img, d_scale = carry
    sims = img @ chunk.T
    logits = scale * sims
    probs = jnp.exp(logits - lse_i2t[:, None]) + jnp.exp(logits - lse_chunk[None, :])
    d_logits = c * probs
    d_img = d_img + scale * d_logits @ chunk
    d_chunk = d_chunk + scale * d_logits.T @ img
    d_scale = d_scale + jnp.sum(d_logits * sims)
    chunk, lse_chunk, d_chunk = (_shift(x, axis_name, n) for x in (chunk, lse_chunk, d_chunk))
    return chunk, lse_chunk, d_chunk, d_img, d_scale

  init = (txt, lse_t2i, jnp.zeros_like(txt), jnp.zeros_like(img), jnp.zeros_like(img[0, 0]))
  _, _, d_txt, d_img, d_scale = jax.lax.fori_loop(0, n, step, init)
  # The positive pair appears in both directions' numerators: -2c * logit_ii.
  d_img = d_img - 2 * c * scale * txt
  d_txt = d_txt - 2 * c * scale * img
  d_scale = d_scale - 2 * c * jnp.sum(img * txt)
  return d_img, d_txt, jax.lax.psum(d_scale, axis_name)


_softmax_ring.defvjp(_softmax_ring_fwd, _softmax_ring_bwd)


def softmax_ring(img, txt, logit_scale, axis_name):
  """Symmetric softmax InfoNCE over the global batch, as contrastive.softmax_allgather, but
  with streaming (online) log-sum-exps in both directions instead of a b x B block.

  Image->text: each device folds every arriving text chunk into the running max and sum of
  its own rows. Text->image: the running max and sum of each text travel with the text, so
  they have seen every device's images when the chunk comes home.
  """
  loss, (i2t, t2i) = _softmax_ring(img, txt, logit_scale, axis_name)
  return loss, {"i2t_top1": i2t, "t2i_top1": t2i}


# ---------------------------------------------------------------------------------------
# Pairwise sigmoid (SigLIP)


def _sigmoid_block(img, chunk, scale, bias, positive):
  """Sum over a b x b block of -log sigmoid(z * logits), z = +1 on the diagonal of the
  device's own block (`positive`), -1 elsewhere; also d(sum)/d(logits) and the similarities."""
  sims = img @ chunk.T
  logits = scale * sims + bias
  eye = jnp.eye(img.shape[0], dtype=logits.dtype)
  z = jnp.where(positive, 2 * eye - 1, -jnp.ones_like(eye))
  loss = -jnp.sum(jax.nn.log_sigmoid(z * logits))
  d_logits = -z * jax.nn.sigmoid(-z * logits)
  return loss, d_logits, sims


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _sigmoid_ring(img, txt, scale, bias, axis_name):
  return _sigmoid_ring_fwd(img, txt, scale, bias, axis_name)[0]


def _sigmoid_ring_fwd(img, txt, scale, bias, axis_name):
  n = _ring_size(axis_name)
  b = img.shape[0]

  def step(k, carry):
    chunk, m_t, total, m_i, pos = carry
    loss, _, sims = _sigmoid_block(img, chunk, scale, bias, k == 0)
    logits = scale * sims + bias
    pos = jnp.where(k == 0, jnp.diagonal(logits), pos)
    m_i = jnp.maximum(m_i, jnp.max(logits, axis=1))
    m_t = jnp.maximum(m_t, jnp.max(logits, axis=0))
    chunk, m_t = _shift(chunk, axis_name, n), _shift(m_t, axis_name, n)
    return chunk, m_t, total + loss, m_i, pos

  zeros = jnp.zeros_like(img[:, 0])  # per-device, as shard_map needs for loop carries
  init = (txt, zeros - jnp.inf, jnp.zeros_like(img[0, 0]), zeros - jnp.inf, zeros)
  _, m_t, total, m_i, pos = jax.lax.fori_loop(0, n, step, init)
  global_b = n * b
  loss = jax.lax.psum(total, axis_name) / global_b
  hits = (jax.lax.psum(jnp.sum(pos >= m_i), axis_name) / global_b,
          jax.lax.psum(jnp.sum(pos >= m_t), axis_name) / global_b)
  return (loss, hits), (img, txt, scale, bias)


def _sigmoid_ring_bwd(axis_name, residuals, cotangents):
  img, txt, scale, bias = residuals
  g = cotangents[0]
  n = _ring_size(axis_name)
  c = g / (n * img.shape[0])

  def step(k, carry):
    chunk, d_chunk, d_img, d_scale, d_bias = carry
    _, d_logits, sims = _sigmoid_block(img, chunk, scale, bias, k == 0)
    d_logits = c * d_logits
    d_img = d_img + scale * d_logits @ chunk
    d_chunk = d_chunk + scale * d_logits.T @ img
    d_scale = d_scale + jnp.sum(d_logits * sims)
    d_bias = d_bias + jnp.sum(d_logits)
    chunk, d_chunk = _shift(chunk, axis_name, n), _shift(d_chunk, axis_name, n)
    return chunk, d_chunk, d_img, d_scale, d_bias

  zero = jnp.zeros_like(img[0, 0])
  init = (txt, jnp.zeros_like(txt), jnp.zeros_like(img), zero, zero)
  _, d_txt, d_img, d_scale, d_bias = jax.lax.fori_loop(0, n, step, init)
  return (d_img, d_txt, jax.lax.psum(d_scale, axis_name), jax.lax.psum(d_bias, axis_name))


_sigmoid_ring.defvjp(_sigmoid_ring_fwd, _sigmoid_ring_bwd)


def sigmoid_ring(img, txt, scale, bias, axis_name):
  """SigLIP's pairwise sigmoid loss, -1/B sum_ij log sigmoid(z_ij (t <x_i, y_j> + b)), with
  the text chunks travelling round the ring; never more than one b x b block per device."""
  loss, (i2t, t2i) = _sigmoid_ring(img, txt, scale, bias, axis_name)
  return loss, {"i2t_top1": i2t, "t2i_top1": t2i}
