"""What ALBEF and BLIP share: momentum model and feature queues as family state, ITC with
momentum distillation, ITM on hard negatives drawn from the global batch, retrieval
re-ranked by the matching head.

Family state (checkpointed with the train state, restored exactly):
  momentum      an exponential moving average (loss.momentum, 0.995) of the parameters the
                momentum model reads (MOMENTUM_SKIP names those it does not), sharded as
                the parameters are; updated after each step from the new parameters, so
                step t reads EMA_t of theta_0..theta_t, ALBEF's order.
  image_queue, text_queue   [loss.queue_size, E] momentum embeddings of earlier batches,
                split over the batch axes; slots [0, queue_count) are filled.
  queue_ptr, queue_count, step

The matching head needs every pair of the global batch (its hard negatives come from the
global similarities), so `features` sees the global batch and gradient accumulation is
refused (EXACT_ACCUMULATION = False).
"""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from vlp_jax.data import tokenizer as tokenizer_lib
from vlp_jax.families import base
from vlp_jax.families.clip import ClipFamily
from vlp_jax.losses import momentum as momentum_loss
from vlp_jax.models import fusion

SPECIALS = ("cls", "mask", "enc", "dec")


def select(params, skip):
  """The sub-tree of params whose paths (tuples of names) `skip` does not reject."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  return flax.traverse_util.unflatten_dict({k: v for k, v in flat.items() if not skip(k)})


def _boxed(value, names):
  return nn.LogicallyPartitioned(value, names)


class FusionFamily(base.Family):
  """Base of the align-before-fuse families. Batch fields: image [b, S, S, 3] float32,
  tokens [b, L] int32 in the tokenizer's layout (the family puts [CLS], [ENC] or [DEC]
  first on device)."""

  EVALUATIONS = frozenset({"retrieval", "retrieval_itm", "zeroshot_text", "probe"})
  EXACT_ACCUMULATION = False
  CONTRASTIVE_KIND = "softmax"
  SPECIAL_IDS = {name: tokenizer_lib.SPECIAL_IDS[name] for name in SPECIALS}
  LM_NAME = "lm"  # metric prefix of the language-model term (ALBEF: mlm)

  def __init__(self, config, eos_id=1):
    super().__init__(config, eos_id)
    self.module = self.build(config.model)

  @classmethod
  def check_config(cls, config):
    q, b = config.loss.queue_size, config.train.batch_size
    if q and q < b:
      raise ValueError(f"Config field 'loss.queue_size': {q} must be 0 (no queue) or >= "
                       f"train.batch_size={b} (each step enqueues the whole batch)")

  def build(self, model_config):
    """The flax module."""
    raise NotImplementedError

  def momentum_skip(self, path):
    """True for parameter paths the momentum model never reads (the scale stays: the
    module's setup reads it)."""
    return path[0] == "itm_head"

  # ---- batch and parameters ---------------------------------------------------------------

  example_batch = ClipFamily.example_batch

  def check_tokenizer(self, tokenizer):
    for name, expected in self.SPECIAL_IDS.items():
      if tokenizer.special_id(name) != expected:
        raise ValueError(f"Tokenizer {tokenizer.model_path!r} has {name} at id "
                         f"{tokenizer.special_id(name)}, not {expected}: {self.NAME} needs a "
                         f"tokenizer trained by vlp_jax (config.data.tokenizer)")

  def host_batch(self, raw, tokenizer):
    self.check_tokenizer(tokenizer)
    return ClipFamily.host_batch(self, raw, tokenizer)

  def init(self, rng, batch):
    images, tokens = batch["image"], self.prefixed(batch["tokens"], "cls")
    rngs = {"params": rng, "dropout": jax.random.fold_in(rng, 1)}
    return self.module.init(rngs, images, tokens, method=self.module.init_all)["params"]

  def prefixed(self, tokens, name):
    return fusion.with_prefix(tokens, self.SPECIAL_IDS[name], self.eos_id)

  def constrain(self, params):
    """The temperature stays in ALBEF's [0.001, 0.5]: log scale in [log 2, log 1000]."""
    return dict(params, log_logit_scale=jnp.clip(params["log_logit_scale"], jnp.log(2.0),
                                                 jnp.log(1000.0)))

  # ---- state ------------------------------------------------------------------------------

  def init_state(self, params):
    q, e = self.config.loss.queue_size, self.config.model.embed_dim
    zero = _boxed(jnp.zeros((), jnp.int32), ())
    return {"momentum": select(params, self.momentum_skip),
            "image_queue": _boxed(jnp.zeros((q, e), jnp.float32), ("batch", "joint")),
            "text_queue": _boxed(jnp.zeros((q, e), jnp.float32), ("batch", "joint")),
            "queue_ptr": zero, "queue_count": zero, "step": zero}

  def update_state(self, state, params, features):
    m = self.config.loss.momentum
    live = select(params, self.momentum_skip)
    momentum = jax.tree.map(lambda old, new: m * old + (1 - m) * new, state["momentum"], live)
    image_queue, ptr, count = momentum_loss.enqueue(state["image_queue"], state["queue_ptr"],
                                                    state["queue_count"], features["img_m"])
    text_queue, _, _ = momentum_loss.enqueue(state["text_queue"], state["queue_ptr"],
                                             state["queue_count"], features["txt_m"])
    return {"momentum": momentum, "image_queue": image_queue, "text_queue": text_queue,
            "queue_ptr": ptr, "queue_count": count, "step": state["step"] + 1}

  def alpha(self, state):
    """The distillation weight of this step (ramped over loss.distill_ramp_steps)."""
    c = self.config.loss
    return momentum_loss.ramp(c.distill_alpha, state["step"], c.distill_ramp_steps)

  # ---- forward pieces ---------------------------------------------------------------------

  def apply(self, params, method, *args, dropout_rng=None):
    """module.apply of one method; with `dropout_rng` (and model.dropout > 0) the method
    runs with dropout (it takes `deterministic`), else without."""
    if dropout_rng is None or not self.config.model.dropout:
      return self.module.apply({"params": params}, *args, method=method)
    return self.module.apply({"params": params}, *args, method=method, deterministic=False,
                             rngs={"dropout": dropout_rng})

  def draws(self, rng, batch_size):
    """Uniform draws [B, 2] that pick each row's hard negatives."""
    return jax.random.uniform(rng, (batch_size, 2))

  def loss(self, params, features, mesh, state=None):
    """ITC with the queues + the per-example ITM and language-model terms."""
    del mesh
    c = self.config.loss
    scale = self.apply(params, self.module.logit_scale)
    itc, metrics = momentum_loss.momentum_contrastive(
        features["img"], features["txt"], features["img_m"], features["txt_m"],
        state["image_queue"], state["text_queue"], state["queue_count"], scale,
        self.alpha(state))
    b = features["img"].shape[0]
    itm = jnp.sum(features["itm_nll"]) / (3 * b)
    tokens = jnp.maximum(jnp.sum(features["lm_tokens"]), 1.0)
    lm = jnp.sum(features["lm_nll_sum"]) / tokens
    loss = c.itc_weight * itc + c.itm_weight * itm + c.lm_weight * lm
    return loss, dict(metrics, itc_loss=itc, itm_loss=itm, **{f"{self.LM_NAME}_loss": lm},
                      itm_accuracy=jnp.sum(features["itm_correct"]) / (3 * b),
                      **{f"{self.LM_NAME}_accuracy": jnp.sum(features["lm_correct"]) / tokens},
                      logit_scale=scale, distill_alpha=self.alpha(state),
                      queue_count=state["queue_count"].astype(jnp.float32))


  @staticmethod
  def lm_features(total, nll, correct, weights):
    """Per-example sums of a fused vocabulary loss; the gradient of `total` is spread
    evenly over them (exact for the loss, which only uses their sum; as CoCa's)."""
    nll_sum = jnp.sum(nll * weights, axis=1)
    nll_sum = nll_sum + (total - jax.lax.stop_gradient(total)) / nll_sum.shape[0]
    return {"lm_nll_sum": nll_sum, "lm_tokens": jnp.sum(weights, axis=1),
            "lm_correct": jnp.sum(correct * weights, axis=1)}

  # ---- evaluation ---------------------------------------------------------------------------

  def encode_image(self, params, images):
    return self.apply(params, self.module.encode_image, images)

  def encode_text(self, params, tokens):
    return self.apply(params, self.module.encode_text, self.prefixed(tokens, "cls"))

  def image_context(self, params, images):
    """The image tokens [b, 1 + N, W] the matching head attends to."""
    return self.apply(params, self.module.image_tokens, images)

  def match(self, params, context, tokens):
    """[b] ITM scores (log-odds of a match) of texts with image tokens `context`."""
    raise NotImplementedError
