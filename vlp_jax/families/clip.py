"""Two-tower contrastive families: CLIP (softmax InfoNCE) and SigLIP (pairwise sigmoid)."""
import math

import jax
import jax.numpy as jnp

from vlp_jax import losses
from vlp_jax.families import base
from vlp_jax.losses import contrastive
from vlp_jax.models import clip as clip_model
from vlp_jax.parallel.mesh import BATCH_AXES


def clamp_logit_scale(params, logit_scale_max):
  """params with log_logit_scale clamped at log(logit_scale_max) (0: no cap).

  Applied to the parameter after each update, as OpenAI CLIP and open_clip do: a cap in the
  forward pass would zero the gradient above it, so the scale could never come back.
  """
  if not logit_scale_max:
    return params
  return dict(params, log_logit_scale=jnp.minimum(params["log_logit_scale"],
                                                  math.log(logit_scale_max)))


@base.register("clip")
class ClipFamily(base.Family):
  """Batch fields: image [b, S, S, 3] float32, tokens [b, L] int32."""

  EVALUATIONS = frozenset({"retrieval", "zeroshot_text", "probe"})
  CONTRASTIVE_KIND = "softmax"
  LOGIT_BIAS = False  # SigLIP's learned bias

  def __init__(self, config, eos_id=1):
    super().__init__(config, eos_id)
    self.module = clip_model.from_config(config.model, eos_id, logit_bias=self.LOGIT_BIAS)
    kinds = {"softmax": losses.SOFTMAX, "sigmoid": losses.SIGMOID}
    self.loss_impl = kinds[self.CONTRASTIVE_KIND][config.loss.contrastive]

  def example_batch(self, batch_size):
    m = self.config.model
    return {
        "image": jax.ShapeDtypeStruct((batch_size, m.image_size, m.image_size, 3), jnp.float32),
        "tokens": jax.ShapeDtypeStruct((batch_size, m.context_length), jnp.int32),
    }

  def host_batch(self, raw, tokenizer):
    return {"image": raw["image"], "tokens": tokenizer.encode(list(raw["caption"]))}

  def init(self, rng, batch):
    return self.module.init(rng, batch["image"], batch["tokens"])["params"]

  def constrain(self, params):
    """Projects the parameters back into their allowed range after an update."""
    return clamp_logit_scale(params, self.config.model.logit_scale_max)

  def features(self, params, batch, rng, state=None):
    """Per-example outputs that the loss combines across the global batch."""
    del rng, state  # no dropout in these towers
    img, txt, _ = self.module.apply({"params": params}, batch["image"], batch["tokens"])
    return {"img": img, "txt": txt}

  def loss(self, params, features, mesh, state=None):
    del state
    scalars = self.module.apply({"params": params}, method=self.module.scalars)
    loss_fn = contrastive.sharded(self.loss_impl, mesh, BATCH_AXES, len(scalars))
    loss, metrics = loss_fn(features["img"], features["txt"], *scalars)
    names = ("logit_scale", "logit_bias")
    return loss, dict(metrics, **dict(zip(names, scalars)))

  def encode_image(self, params, images):
    return self.module.apply({"params": params}, images, method=self.module.encode_image)

  def encode_text(self, params, tokens):
    return self.module.apply({"params": params}, tokens, method=self.module.encode_text)


@base.register("siglip")
class SiglipFamily(ClipFamily):
  """SigLIP: the same towers and batch, the pairwise sigmoid loss with a learned bias."""

  CONTRASTIVE_KIND = "sigmoid"
  LOGIT_BIAS = True
