"""BLIP: ITC with momentum distillation and queues, ITM on hard negatives, captioning LM.

loss = itc_weight * ITC + itm_weight * ITM + lm_weight * LM (1, 1, 1 in the paper), the LM
term the mean cross-entropy over the caption tokens of the global batch, from the decoder
reading [DEC] + caption with causal self-attention and the image. Captions are decoded
with the shared KV-cached greedy / beam / nucleus decoders (models/decoding.py).
"""
import jax
import jax.numpy as jnp

from vlp_jax.families import base
from vlp_jax.families.coca import CocaFamily
from vlp_jax.families.fusion import FusionFamily
from vlp_jax.losses import momentum as momentum_loss
from vlp_jax.models import blip as blip_model
from vlp_jax.models import fusion, layers, question_prompt

# Text-layer sublayers the momentum (unimodal) encoder never runs.
_DECODER_OR_CROSS = ("causal_attn", "ln_causal", "cross_attn", "ln_cross")


@base.register("blip")
class BlipFamily(FusionFamily):
  """ViT + one text stack (unimodal encoder, image-grounded encoder, decoder)."""

  EVALUATIONS = FusionFamily.EVALUATIONS | {"caption"}

  def __init__(self, config, eos_id=1):
    super().__init__(config, eos_id)
    self.decoder = blip_model.from_config(config.model, decode=True)

  def build(self, model_config):
    return blip_model.from_config(model_config)

  def momentum_skip(self, path):
    return (super().momentum_skip(path) or path[0] == "lm_head"
            or any(name in path for name in _DECODER_OR_CROSS))

  def features(self, params, batch, rng, state=None):
    m, mom = self.module, state["momentum"]
    keys = jax.random.split(rng, 4)
    tokens = self.prefixed(batch["tokens"], "cls")
    image_tokens = self.apply(params, m.image_tokens, batch["image"])
    feats = {"img": self.apply(params, m.image_embedding, image_tokens),
             "txt": self.apply(params, m.text_embedding, tokens, dropout_rng=keys[0]),
             "img_m": self.apply(mom, m.encode_image, batch["image"]),
             "txt_m": self.apply(mom, m.text_embedding, tokens)}

    scale = self.apply(params, m.logit_scale)
    neg_text, neg_image = momentum_loss.matching_pairs(
        feats["img"], feats["txt"], tokens, scale, self.draws(keys[1], tokens.shape[0]))
    enc = self.prefixed(batch["tokens"], "enc")
    # Positives, each text with its negative image, each image with its negative text: the
    # image tokens are projected to keys and values once and gathered for the 3B rows.
    rows = jnp.arange(tokens.shape[0])
    logits = self.apply(params, m.itm_logits, jnp.concatenate([enc, enc, enc[neg_text]]),
                        image_tokens, jnp.concatenate([rows, neg_image, rows]),
                        dropout_rng=keys[2])
    feats["itm_nll"], feats["itm_correct"] = momentum_loss.itm_losses(
        logits.reshape(3, tokens.shape[0], 2))

    # The decoder reads [DEC] + caption and predicts each next token.
    ids = self.prefixed(batch["tokens"], "dec")
    labels = ids[:, 1:]
    weights = (labels != fusion.PAD_ID).astype(jnp.float32)
    feats.update(self.decoder_features(params, ids, image_tokens, labels, weights, keys[3]))
    return feats

  def decoder_features(self, params, ids, image_tokens, labels, weights, rng):
    """lm_features of the decoder reading [DEC]-first `ids` [b, T] and predicting `labels`
    [b, T' <= T] at its first T' positions, weighed by `weights` [b, T']."""
    m = self.module
    hidden = self.apply(params, m.decoder_hidden, ids, image_tokens, dropout_rng=rng)
    kernel, bias = self.apply(params, m.lm_output)
    total, nll, correct = fusion.vocabulary_loss(hidden[:, :labels.shape[1]], kernel, bias,
                                                 labels, weights)
    return self.lm_features(total, nll, correct, weights)

  def match(self, params, context, tokens):
    logits = self.apply(params, self.module.itm_logits, self.prefixed(tokens, "enc"), context)
    return logits[:, 1] - logits[:, 0]

  # ---- captioning: CoCa's KV-cached decoding over this decoder, [DEC] first --------------

  @property
  def start_id(self):
    return self.SPECIAL_IDS["dec"]

  step_fn = CocaFamily.step_fn
  init_cache = CocaFamily.init_cache
  caption = CocaFamily.caption

  # ---- VQA as generation ------------------------------------------------------------------

  check_positions = CocaFamily.check_positions
  answer = CocaFamily.answer

  def answer_features(self, params, images, questions, answers, rng=None):
    """The captioning decoder with the question as its prompt: [DEC] + question pieces +
    answer, the loss on the answer only (models/question_prompt.py). BLIP's own VQA
    encodes the question with the image-grounded encoder and decodes the answer with a
    separate answer decoder; a prompt works for every family with a decoder and needs no
    new weights."""
    tokens, weights = question_prompt.pack(questions, answers, self.eos_id)
    self.check_positions(tokens.shape[1])
    ids = layers.shift_right(tokens, self.start_id)
    image_tokens = self.apply(params, self.module.image_tokens, images)
    return self.decoder_features(params, ids, image_tokens, tokens, weights, rng)
