"""mPLUG: ITC with momentum distillation and queues, ITM on hard negatives, distilled MLM and
the prefix LM, over the cross-modal skip-connected fusion network (Li et al. 2022).

loss = itc_weight * ITC + itm_weight * ITM + lm_weight * (MLM + prefix LM) / 2, the
paper's four objectives. ITC, ITM and MLM are ALBEF's (families/albef.py: its methods) with
the skip-connected network in place of ALBEF's fusion layers. The prefix LM splits
each caption at a random point (losses/prefix_split.py): the beginning goes through the
text encoder and the fusion network with the image, the decoder predicts the rest through
the fused vocabulary loss. Captions and VQA answers come from the same decoder, which reads
the fusion outputs of [CLS] alone (captions) or of the question (answers).
"""
import jax
import jax.numpy as jnp

from vlp_jax.families import base
from vlp_jax.families.albef import AlbefFamily
from vlp_jax.families.coca import CocaFamily
from vlp_jax.losses import prefix_split
from vlp_jax.models import decoding
from vlp_jax.models import fusion
from vlp_jax.models import mplug as mplug_model

# Parameters the momentum model never reads: the matching head and the decoder.
_NOT_MOMENTUM = ("itm_head", "decoder_embed", "decoder", "lm_head")


@base.register("mplug")
class MplugFamily(AlbefFamily):
  """ViT + text_depth text layers + skip-connected fusion + decoder_depth decoder layers:
  ALBEF's ITC, ITM and MLM (its methods, over this fusion) plus the prefix LM."""

  EVALUATIONS = AlbefFamily.EVALUATIONS | {"caption"}
  LM_NAME = "lm"  # the mean of MLM and the prefix LM; each also reported alone

  def __init__(self, config, eos_id=1):
    super().__init__(config, eos_id)
    self.decoder = mplug_model.from_config(config.model, decode=True)

  def build(self, model_config):
    return mplug_model.from_config(model_config)

  @classmethod
  def check_config(cls, config):
    super().check_config(config)
    for field in ("fusion_s", "fusion_n", "decoder_depth"):
      value = config.model[field]
      if value < 1:
        raise ValueError(f"Config field 'model.{field}': must be >= 1, got {value}")

  def momentum_skip(self, path):
    return path[0] in _NOT_MOMENTUM

  def fused_text(self, params, hidden, tokens, image_tokens, dropout_rng=None):
    return self.apply(params, self.module.fuse, hidden, tokens, image_tokens,
                      dropout_rng=dropout_rng)[1]

  def loss(self, params, features, mesh, state=None):
    """FusionFamily's loss with the language-model term the mean of MLM and prefix LM."""
    loss, metrics = super().loss(params, features, mesh, state)
    return loss, dict(metrics, **self._term_metrics(features, "mlm"),
                      **self._term_metrics(features, "prefix_lm"))

  @staticmethod
  def _term_metrics(features, name):
    tokens = jnp.maximum(jnp.sum(features[f"{name}_tokens"]), 1.0)
    return {f"{name}_loss": jnp.sum(features[f"{name}_nll"]) / tokens,
            f"{name}_accuracy": jnp.sum(features[f"{name}_correct"]) / tokens}

  def features(self, params, batch, rng, state=None):
    keys = jax.random.split(rng, 9)
    feats, tokens, image_tokens, hidden, image_tokens_m = self.aligned(
        params, state["momentum"], batch, keys[0])
    feats.update(self.matching(params, feats, tokens, hidden, image_tokens, keys[1:3]))
    mlm = self.masked_lm(params, state, tokens, image_tokens, image_tokens_m, keys[3:6])
    prefix = self._prefix_lm(params, batch["tokens"], image_tokens, keys[6:9])
    for name, term in (("mlm", mlm), ("prefix_lm", prefix)):
      feats.update({f"{name}_nll": term["lm_nll_sum"], f"{name}_tokens": term["lm_tokens"],
                    f"{name}_correct": term["lm_correct"]})
    feats.update(self._mean_of_terms(mlm, prefix))
    return feats

  def _prefix_lm(self, params, tokens, image_tokens, keys):
    """The decoder predicts each caption's continuation from its fused beginning."""
    m = self.module
    prefix, target, _ = prefix_split.split_captions(keys[0], tokens)
    prefix = self.prefixed(prefix, "cls")
    hidden = self.apply(params, m.text_hidden, prefix, dropout_rng=keys[1])
    image_out, text_out = self.apply(params, m.fuse, hidden, prefix, image_tokens,
                                     dropout_rng=keys[2])
    return self._decoder_loss(params, jnp.concatenate([image_out, text_out], 1),
                              mplug_model.context_mask(image_out, prefix), target, keys[2])

  def _decoder_loss(self, params, context, mask, target, rng=None):
    """lm_features of the decoder reading [DEC] + `target` (tokenizer layout) over context."""
    m = self.module
    ids = self.prefixed(target, "dec")
    hidden = self.apply(params, m.decoder_hidden, ids, context, mask,
                        dropout_rng=None if rng is None else jax.random.fold_in(rng, 1))
    labels = ids[:, 1:]
    weights = (labels != fusion.PAD_ID).astype(jnp.float32)
    total, nll, correct = fusion.vocabulary_loss(hidden[:, :-1], *self.apply(params, m.lm_output),
                                                 labels, weights)
    return self.lm_features(total, nll, correct, weights)

  @staticmethod
  def _mean_of_terms(mlm, prefix):
    """lm_* features whose summed nll over summed count (FusionFamily.loss) is the mean of
    the two terms' token means: each term's sums are scaled by 1 / (2 * its token count),
    and the counts sum to 1."""
    count = {n: jnp.maximum(jnp.sum(t["lm_tokens"]), 1.0) for n, t in
             (("mlm", mlm), ("prefix", prefix))}
    b = mlm["lm_tokens"].shape[0]
    return {name: mlm[name] / (2 * count["mlm"]) + prefix[name] / (2 * count["prefix"])
            for name in ("lm_nll_sum", "lm_correct")} | {"lm_tokens": jnp.full((b,), 1.0 / b)}

  # ---- generation: CoCa's KV-cached decoders over the fused context -----------------------

  @property
  def start_id(self):
    return self.SPECIAL_IDS["dec"]

  def _context(self, params, images, tokens):
    return self.apply(params, self.module.context, self.prefixed(tokens, "cls"), images)

  def init_cache(self, params, images, rows_per_image, max_len, questions=None):
    """KV caches for max_len positions, the fused context's keys and mask in place: of
    [CLS] alone (captions) or of `questions` (answers)."""
    if questions is None:
      questions = jnp.zeros((images.shape[0], 1), jnp.int32)
    context, mask = self._context(params, images, questions)
    context = jnp.repeat(context, rows_per_image, axis=0)
    mask = jnp.repeat(mask, rows_per_image, axis=0)
    model = self.decoder
    ids = jnp.zeros((context.shape[0], max_len), jnp.int32)
    _, variables = model.apply({"params": params}, ids, 0, context, mask,
                               method=model.decode_step, mutable=["cache"])
    return variables["cache"]

  step_fn = CocaFamily.step_fn
  caption = CocaFamily.caption

  # ---- VQA: the question through the encoder and fusion, the answer from the decoder ------

  def answer_features(self, params, images, questions, answers, rng=None):
    context, mask = self._context(params, images, questions)
    return self._decoder_loss(params, context, mask, answers, rng)

  def answer(self, params, images, questions, max_len):
    cache = self.init_cache(params, images, 1, max_len, questions)
    return decoding.greedy(self.step_fn(params), cache, images.shape[0], max_len,
                           self.start_id, self.eos_id)
