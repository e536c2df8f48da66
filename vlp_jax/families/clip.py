"""The CLIP family: image and text towers trained with a contrastive loss."""
import jax
import jax.numpy as jnp

from vlp_jax import losses
from vlp_jax.losses import contrastive
from vlp_jax.models import clip as clip_model
from vlp_jax.parallel.mesh import BATCH_AXES


class ClipFamily:
  """Batch fields: image [b, S, S, 3] float32, tokens [b, L] int32."""

  def __init__(self, config, eos_id):
    self.config = config
    self.module = clip_model.from_config(config.model, eos_id)
    self.loss_impl = losses.SOFTMAX[config.loss.contrastive]

  def example_batch(self, batch_size):
    m = self.config.model
    return {
        "image": jax.ShapeDtypeStruct((batch_size, m.image_size, m.image_size, 3), jnp.float32),
        "tokens": jax.ShapeDtypeStruct((batch_size, m.context_length), jnp.int32),
    }

  def init(self, rng, batch):
    return self.module.init(rng, batch["image"], batch["tokens"])["params"]

  def features(self, params, batch, rng):
    """Per-example outputs that the loss combines across the global batch."""
    del rng  # CLIP has no dropout
    img, txt, _ = self.module.apply({"params": params}, batch["image"], batch["tokens"])
    return {"img": img, "txt": txt}

  def loss(self, params, features, mesh):
    scale = self.module.apply({"params": params}, method=self.module.logit_scale)
    loss_fn = contrastive.sharded(self.loss_impl, mesh, BATCH_AXES)
    loss, metrics = loss_fn(features["img"], features["txt"], scale)
    return loss, dict(metrics, logit_scale=scale)

  def encode_image(self, params, images):
    return self.module.apply({"params": params}, images, method=self.module.encode_image)

  def encode_text(self, params, tokens):
    return self.module.apply({"params": params}, tokens, method=self.module.encode_text)
