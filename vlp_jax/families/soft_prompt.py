"""Captioning families that train a bridge from a frozen image tower to a frozen LM.

`blip2_lm` (BLIP-2 stage 2: the Q-Former's queries), `prefix_lm` (prefix captioning: a
mapping network of learned queries) and `keyword_lm` (CLIP picks keywords, their pieces are
the prompt, the LM is trained) differ only in the bridge (models/soft_prompt.py).
loss = the mean cross-entropy over the caption tokens of the global batch, the LM reading
the soft prompt, then [EOS, t_1, ...]. The image tower and the LM are frozen: no gradient
is computed for them and they have no optimizer state (train/state.py); they come from
other runs through `model.init_from` (a CLIP/SigLIP/CoCa run, stage 1's run, an `lm` run
or an imported GPT-2 / OPT). Captions decode with the shared KV-cached decoders, the
prompt written into the caches first.
"""
import os

import jax
import jax.numpy as jnp

from vlp_jax.data import keywords as keywords_lib
from vlp_jax.data.tf_setup import tf
from vlp_jax.families import base
from vlp_jax.families.clip import ClipFamily
from vlp_jax.families.coca import CocaFamily
from vlp_jax.families.fusion import FusionFamily
from vlp_jax.models import blip2 as blip2_model
from vlp_jax.models import language_model, question_prompt, soft_prompt, vit
from vlp_jax.parallel import mesh as mesh_lib


class SoftPromptFamily(base.Family):
  """Batch fields: image [b, S, S, 3] float32, tokens [b, L] int32 (the LM's tokenizer)."""

  EVALUATIONS = frozenset({"caption"})
  PRETRAINS_ON_PAIRS = False  # the image tower and the LM are other runs' (init_from)
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
    tokens = batch["tokens"]
    total, nll, correct = self.module.apply({"params": params}, batch["image"], tokens,
                                            self.start_id, **self.dropout(rng))
    weights = (tokens != language_model.PAD_ID).astype(jnp.float32)
    return FusionFamily.lm_features(total, nll, correct, weights)

  def dropout(self, rng):
    """module.apply's arguments for dropout drawn from `rng` (none: None or model.dropout 0)."""
    if rng is None or not self.config.model.dropout:
      return {}
    return dict(deterministic=False, rngs={"dropout": rng})

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
    """CoCa's, with the caption's positions after the prompt's."""
    return CocaFamily.step_fn(self, params, offset=self.prompt_length)

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

  # ---- VQA as generation: BLIP-2's prompting, the soft prompt then the question's pieces
  # (no "Question:"/"Answer:" words), the answer after them (models/question_prompt.py);
  # frozen parts stay frozen.

  def check_positions(self, n):
    """ValueError naming the field when the prompt and n tokens exceed the LM's positions."""
    m = self.config.model
    if self.prompt_length + n > m.lm.positions:
      raise ValueError(f"The prompt ({self.prompt_length}) and a question and answer of {n} "
                       f"tokens in all exceed model.lm.positions={m.lm.positions}")

  def answer_features(self, params, images, questions, answers, rng=None):
    tokens, weights = question_prompt.pack(questions, answers, self.eos_id)
    self.check_positions(tokens.shape[1])
    total, nll, correct = self.module.apply(
        {"params": params}, images, tokens, weights, self.start_id,
        method=self.module.weighted_loss, **self.dropout(rng))
    return FusionFamily.lm_features(total, nll, correct, weights)

  answer = CocaFamily.answer


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


@base.register("keyword_lm")
class KeywordLmFamily(SoftPromptFamily):
  """Keyword prompting: a frozen CLIP (a CLIP run's towers) picks the model.keyword_top_k
  best keywords of the run's vocabulary for each image; the LM (trained, from an `lm` run)
  writes the caption after their pieces. Vocabulary: data.keywords, else WORKDIR/keywords.txt
  built from data.train's captions (data.keyword_min_count, model.num_keywords rows)."""

  FROZEN = ("image_tower", "text_tower")

  @classmethod
  def check_config(cls, config):
    super().check_config(config)
    m = config.model
    if m.keyword_top_k > m.num_keywords:
      raise ValueError(f"Config field 'model.keyword_top_k': {m.keyword_top_k} is more than "
                       f"model.num_keywords={m.num_keywords}")

  def __init__(self, config, eos_id=1):
    m = config.model
    self.keywords = ((0,) * m.context_length,) * m.num_keywords  # until prepare
    super().__init__(config, eos_id)

  def build(self, model_config, decode=False):
    m = model_config
    return soft_prompt.KeywordPromptLM(
        language_model=language_model.from_config(m, decode), dtype=jnp.dtype(m.dtype),
        **soft_prompt.keyword_fields(m, self.eos_id, self.keywords))

  def prepare(self, workdir, reading):
    from vlp_jax import data  # pylint: disable=g-import-not-at-top
    words = prepare_keywords(self.config, workdir, reading)
    tokens = data.get_tokenizer(self.config, workdir, reading=True).encode(words)
    rows = [tuple(int(t) for t in row) for row in tokens]
    padding = (0,) * self.config.model.context_length
    self.keywords = tuple(rows) + (padding,) * (self.config.model.num_keywords - len(rows))
    self.module = self.build(self.config.model)
    self.decoder = self.build(self.config.model, decode=True)


def prepare_keywords(config, workdir, reading):
  """data.keywords, else WORKDIR/keywords.txt, made by process 0 from data.train's
  captions when training and missing; at most model.num_keywords of them."""
  path = config.data.keywords or os.path.join(workdir, "keywords.txt")
  if not tf.io.gfile.exists(path):
    if reading or config.data.keywords:
      raise ValueError(f"Keyword vocabulary {path} (data.keywords) is missing")

    def write():
      from vlp_jax.data import sources  # pylint: disable=g-import-not-at-top
      captions = sources.from_config(config.data.train, config.data).captions()
      words = keywords_lib.build_vocabulary(captions, config.data.keyword_min_count,
                                            config.model.num_keywords)
      if not words:
        raise ValueError(f"No word is named by data.keyword_min_count="
                         f"{config.data.keyword_min_count} captions of {config.data.train}")
      keywords_lib.write_vocabulary(words, path)
    mesh_lib.write_once(path, write, "keyword vocabulary")
  return keywords_lib.read_vocabulary(path)[:config.model.num_keywords]
