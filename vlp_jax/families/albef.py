"""ALBEF: ITC with momentum distillation and queues, ITM on hard negatives, distilled MLM.

loss = itc_weight * ITC + itm_weight * ITM + lm_weight * MLM (1, 1, 1 in the paper).
MLM masks 15% of the caption's tokens (80% [MASK], 10% a random token, 10% kept), runs the
masked caption through the text and fusion layers with the image, and predicts the
originals through the fused vocabulary loss, its targets mixed with the momentum model's
softmax at the same positions (alpha, ramped as ITC's).
"""
import jax
import jax.numpy as jnp

from vlp_jax.data import tokenizer as tokenizer_lib
from vlp_jax.families import base
from vlp_jax.families.fusion import FusionFamily
from vlp_jax.losses import masking
from vlp_jax.losses import momentum as momentum_loss
from vlp_jax.models import albef as albef_model
from vlp_jax.models import fusion


@base.register("albef")
class AlbefFamily(FusionFamily):
  """ViT + text_depth text layers + fusion_depth fusion layers."""

  LM_NAME = "mlm"

  def build(self, model_config):
    return albef_model.from_config(model_config)

  def features(self, params, batch, rng, state=None):
    keys = jax.random.split(rng, 6)
    feats, tokens, image_tokens, hidden, image_tokens_m = self.aligned(
        params, state["momentum"], batch, keys[0])
    feats.update(self.matching(params, feats, tokens, hidden, image_tokens, keys[1:3]))
    feats.update(self.masked_lm(params, state, tokens, image_tokens, image_tokens_m,
                                keys[3:6]))
    return feats

  def fused_text(self, params, hidden, tokens, image_tokens, dropout_rng=None):
    """The fusion layers' text outputs [B, L, W] over text-encoder outputs `hidden`."""
    return self.apply(params, self.module.fuse, hidden, tokens, image_tokens,
                      dropout_rng=dropout_rng)

  def aligned(self, params, mom, batch, rng):
    """(ITC features img/txt and their momentum img_m/txt_m, [CLS]-first tokens, image
    tokens, text-encoder outputs, the momentum model's image tokens)."""
    m = self.module
    tokens = self.prefixed(batch["tokens"], "cls")
    image_tokens = self.apply(params, m.image_tokens, batch["image"])
    hidden = self.apply(params, m.text_hidden, tokens, dropout_rng=rng)
    feats = {"img": self.apply(params, m.image_embedding, image_tokens),
             "txt": self.apply(params, m.text_embedding, hidden)}
    # The momentum model: the teacher, without dropout.
    image_tokens_m = self.apply(mom, m.image_tokens, batch["image"])
    feats["img_m"] = self.apply(mom, m.image_embedding, image_tokens_m)
    feats["txt_m"] = self.apply(mom, m.text_embedding, self.apply(mom, m.text_hidden, tokens))
    return feats, tokens, image_tokens, hidden, image_tokens_m

  def matching(self, params, feats, tokens, hidden, image_tokens, keys):
    """ITM: each image with its caption, with a hard negative caption, each caption with a
    hard negative image; negatives from the global batch's similarities."""
    m = self.module
    scale = self.apply(params, m.logit_scale)
    neg_text, neg_image = momentum_loss.matching_pairs(
        feats["img"], feats["txt"], tokens, scale, self.draws(keys[0], tokens.shape[0]))
    fused = self.fused_text(params, jnp.concatenate([hidden, hidden, hidden[neg_text]]),
                            jnp.concatenate([tokens, tokens, tokens[neg_text]]),
                            jnp.concatenate([image_tokens, image_tokens[neg_image],
                                             image_tokens]), keys[1])
    logits = self.apply(params, m.itm_logits, fused).reshape(3, tokens.shape[0], 2)
    itm_nll, itm_correct = momentum_loss.itm_losses(logits)
    return {"itm_nll": itm_nll, "itm_correct": itm_correct}

  def masked_lm(self, params, state, tokens, image_tokens, image_tokens_m, keys):
    """lm_features of MLM through the fusion layers, distilled from the momentum model."""
    m, mom = self.module, state["momentum"]
    masked, weights = masking.mask_tokens(keys[0], tokens, self.SPECIAL_IDS["mask"],
                                          self.config.model.vocab_size,
                                          tokenizer_lib.NEVER_MASKED, self.config.loss.mlm_prob)
    fused = self.fused_text(params, self.apply(params, m.text_hidden, masked,
                                               dropout_rng=keys[1]),
                            masked, image_tokens, keys[2])
    head, kernel, bias = self.apply(params, m.mlm_head_io, fused)
    fused_m = self.fused_text(mom, self.apply(mom, m.text_hidden, masked), masked,
                              image_tokens_m)
    teacher = self.apply(mom, m.mlm_head_io, fused_m)
    total, nll, correct = fusion.vocabulary_loss(head, kernel, bias, tokens, weights,
                                                 teacher=teacher,
                                                 teacher_weight=self.alpha(state))
    return self.lm_features(total, nll, correct, weights)

  def match(self, params, context, tokens):
    tokens = self.prefixed(tokens, "cls")
    fused = self.fused_text(params, self.apply(params, self.module.text_hidden, tokens),
                            tokens, context)
    logits = self.apply(params, self.module.itm_logits, fused)
    return logits[:, 1] - logits[:, 0]
