"""`lm`: a GPT-style decoder language model pretrained on text alone.

It learns the captions of `data.train` (images are read by the input pipeline and not
used), to be the frozen language model of BLIP-2 stage 2 and prefix captioning
(`model.init_from` of their configs). Its parameters sit under `lm/`, where those models
keep theirs, so a run of this family loads into them by path.
loss = the mean cross-entropy over the caption tokens of the global batch, the decoder
reading [EOS, t_1, ..., t_{L-1}] (models/language_model.py).
"""
import jax
import jax.numpy as jnp

from vlp_jax.families import base
from vlp_jax.families.fusion import FusionFamily
from vlp_jax.families.soft_prompt import SoftPromptFamily
from vlp_jax.models import language_model


@base.register("lm")
class LmFamily(base.Family):
  """Batch field: tokens [b, L] int32 (pieces, EOS, pad 0)."""

  EVALUATIONS = frozenset({"perplexity"})
  PRETRAINS_ON_PAIRS = False  # text only: no images

  def __init__(self, config, eos_id=1):
    super().__init__(config, eos_id)
    self.module = language_model.from_config(config.model)

  @classmethod
  def check_config(cls, config):
    m = config.model
    if m.lm.positions < m.context_length:
      raise ValueError(f"Config field 'model.lm.positions': {m.lm.positions} rows cannot hold "
                       f"a caption of model.context_length={m.context_length} tokens")

  def example_batch(self, batch_size):
    return {"tokens": jax.ShapeDtypeStruct((batch_size, self.config.model.context_length),
                                           jnp.int32)}

  def host_batch(self, raw, tokenizer):
    return {"tokens": tokenizer.encode(list(raw["caption"]))}

  def init(self, rng, batch):
    return {"lm": self.module.init(rng, batch["tokens"], self.eos_id)["params"]}

  def features(self, params, batch, rng, state=None):
    del rng, state  # no dropout
    tokens = batch["tokens"]
    total, nll, correct = self.module.apply({"params": params["lm"]}, tokens, self.eos_id)
    weights = (tokens != language_model.PAD_ID).astype(jnp.float32)
    return FusionFamily.lm_features(total, nll, correct, weights)

  loss = SoftPromptFamily.loss

  def text_nll(self, params, tokens):
    _, nll, _ = self.module.apply({"params": params["lm"]}, tokens, self.eos_id)
    weights = (tokens != language_model.PAD_ID).astype(jnp.float32)
    return jnp.stack([jnp.sum(nll * weights, axis=1), jnp.sum(weights, axis=1)], axis=1)
