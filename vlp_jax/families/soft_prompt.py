"""Captioning families that train a bridge from a frozen image tower to a frozen LM.

`blip2_lm` (BLIP-2 stage 2: the Q-Former's queries) and `prefix_lm` (prefix captioning: a
mapping network of learned queries) differ only in the bridge (models/soft_prompt.py).
loss = the mean cross-entropy over the caption tokens of the global batch, the LM reading
the soft prompt, then [EOS, t_1, ...]. The image tower and the LM are frozen: no gradient
is computed for them and they have no optimizer state (train/state.py); they come from
other runs through `model.init_from` (a CLIP/SigLIP/CoCa run, stage 1's run, an `lm` run
or an imported GPT-2 / OPT). Captions decode with the shared KV-cached decoders, the
prompt written into the caches first.
"""
import jax
import jax.numpy as jnp

from vlp_jax.families import base
from vlp_jax.families.clip import ClipFamily
from vlp_jax.families.coca import CocaFamily
from vlp_jax.families.fusion import FusionFamily
from vlp_jax.models import blip2 as blip2_model
from vlp_jax.models import language_model, soft_prompt, vit


class SoftPromptFamily(base.Family):
  """Batch fields: image [b, S, S, 3] float32, tokens [b, L] int32 (the LM's tokenizer)."""

  EVALUATIONS = frozenset({"caption"})
  # Top-level parameter subtrees that are frozen.
  FROZEN = ("image_tower", "lm")

  def __init__(self, config, eos_id=1):
    super().__init__(config, eos_id)
    self.module = self.build(config.model)
    self.decoder = self.build(config.model, decode=True)

  @classmethod
  def check_config(cls, config):
    m = config.model
    need = m.num_queries + m.context_length
    if m.lm.positions < need:
      raise ValueError(f"Config field 'model.lm.positions': {m.lm.positions} rows cannot hold "
                       f"the prompt and a caption (model.num_queries + model.context_length "
                       f"= {need})")

  def build(self, model_config, decode=False):
    raise NotImplementedError

  example_batch = ClipFamily.example_batch
  host_batch = ClipFamily.host_batch

  def init(self, rng, batch):
    return self.module.init(rng, batch["image"], batch["tokens"], self.start_id,
                            method=self.module.init_all)["params"]

  def frozen(self, params):
    return {name: jax.tree.map(lambda _, f=name in self.FROZEN: f, sub)
            for name, sub in params.items()}

  def features(self, params, batch, rng, state=None):
    del state
    kwargs = {}
    if self.config.model.dropout:
      kwargs = dict(deterministic=False, rngs={"dropout": rng})
    tokens = batch["tokens"]
    total, nll, correct = self.module.apply({"params": params}, batch["image"], tokens,
                                            self.start_id, **kwargs)
    weights = (tokens != language_model.PAD_ID).astype(jnp.float32)
    return FusionFamily.lm_features(total, nll, correct, weights)

  def loss(self, params, features, mesh, state=None):
    del params, mesh, state
    tokens = jnp.maximum(jnp.sum(features["lm_tokens"]), 1.0)
    lm = jnp.sum(features["lm_nll_sum"]) / tokens
    return lm, {"lm_loss": lm, "lm_accuracy": jnp.sum(features["lm_correct"]) / tokens}

  # ---- captioning -------------------------------------------------------------------------

  @property
  def start_id(self):
    return self.eos_id

  @property
  def prompt_length(self):
    return self.config.model.num_queries

  def step_fn(self, params):
    """decoding's step_fn: positions count from the caption's start, after the prompt."""
    model, offset = self.decoder, self.prompt_length

    def step(cache, ids, position):
      logits, variables = model.apply({"params": params, "cache": cache}, ids[:, None],
                                      position + offset, method=model.decode_step,
                                      mutable=["cache"])
      return logits[:, 0], variables["cache"]
    return step

  def init_cache(self, params, images, rows_per_image, max_len):
    """KV caches for the prompt and max_len positions, the prompt already in place."""
    model = self.decoder
    prompt = model.apply({"params": params}, images, method=model.prefix)
    prompt = jnp.repeat(prompt, rows_per_image, axis=0)
    n = prompt.shape[0]
    sizing = jnp.zeros((n, prompt.shape[1] + max_len), jnp.int32)
    _, variables = model.apply({"params": params}, sizing, 0, method=model.decode_step,
                               mutable=["cache"])
    _, variables = model.apply({"params": params, "cache": variables["cache"]},
                               jnp.zeros((n, 0), jnp.int32), 0, prompt,
                               method=model.decode_step, mutable=["cache"])
    return variables["cache"]

  caption = CocaFamily.caption


@base.register("blip2_lm")
class Blip2LmFamily(SoftPromptFamily):
  """BLIP-2 stage 2: Q-Former query outputs -> linear -> soft prompt of a frozen LM."""

  def build(self, model_config, decode=False):
    return blip2_model.stage2_from_config(model_config, decode)


@base.register("prefix_lm")
class PrefixLmFamily(SoftPromptFamily):
  """Prefix captioning: learned queries over a frozen CLIP tower's tokens -> frozen LM."""

  def build(self, model_config, decode=False):
    m = model_config
    mapper = dict(num_queries=m.num_queries, depth=m.mapper_depth, num_heads=m.lm.heads,
                  mlp_dim=int(m.lm.width * m.lm.mlp_ratio), activation=m.lm.activation)
    return soft_prompt.MappedPromptLM(vision=vit.feature_encoder(m), mapper=mapper,
                                      language_model=language_model.from_config(m, decode),
                                      dtype=jnp.dtype(m.dtype))
