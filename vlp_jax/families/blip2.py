"""`blip2`: BLIP-2 stage 1, a Q-Former learning to read a frozen image tower.

loss = itc_weight * ITC + itm_weight * ITM + lm_weight * ITG (1, 1, 1 in the paper):
- ITC: an image-text similarity is the best of the Q query-text similarities; softmax
  cross-entropy both ways over the global batch, label smoothing loss.itc_label_smoothing
  (0.1, as LAVIS). No momentum model or queue (the paper's batch is large enough).
- ITM: each image with its caption, a hard-negative caption and each caption with a
  hard-negative image, drawn from the softmax of the global batch's similarities (same
  caption excluded); queries and text see each other; the head on each query, averaged.
- ITG: the caption predicted from [DEC] + earlier tokens and the queries, which read the
  image; queries never see the text (models/qformer.py masks).
The hard negatives span the global batch, so `features` sees all of it and gradient
accumulation is refused (EXACT_ACCUMULATION = False). The tower is frozen: no gradient
is computed for it and it has no optimizer state.
"""
import jax
import jax.numpy as jnp
import numpy as np

from vlp_jax.families import base
from vlp_jax.families.fusion import FusionFamily
from vlp_jax.losses import momentum as momentum_loss
from vlp_jax.models import blip2 as blip2_model
from vlp_jax.models import fusion


def query_similarities(img, txt):
  """[I, T]: for each image's Q embeddings [I, Q, E] and text [T, E], the best query."""
  return jnp.max(jnp.einsum("iqe,te->itq", img, txt), axis=-1)


def smoothed_cross_entropy(logits, smoothing):
  """Mean over rows of the cross-entropy to (1 - s) * one-hot(diagonal) + s / n."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  n = logits.shape[1]
  targets = (1 - smoothing) * jax.nn.one_hot(jnp.arange(logits.shape[0]), n) + smoothing / n
  return -jnp.mean(jnp.sum(targets * logp, axis=-1))


@base.register("blip2")
class Blip2Family(FusionFamily):
  """Batch fields: image [b, S, S, 3] float32, tokens [b, L] int32 in the layout of a
  tokenizer trained here ([CLS] or [DEC] is put first on device)."""

  EVALUATIONS = frozenset({"retrieval", "retrieval_itm", "zeroshot_text", "probe"})
  PRETRAINS_ON_PAIRS = False  # the frozen image tower is another run's (init_from)

  @classmethod
  def check_config(cls, config):
    del config  # no queue

  def build(self, model_config):
    return blip2_model.stage1_from_config(model_config)

  def init(self, rng, batch):
    images, tokens = batch["image"], self.prefixed(batch["tokens"], "cls")
    return self.module.init(rng, images, tokens, method=self.module.init_all)["params"]

  def frozen(self, params):
    return {name: jax.tree.map(lambda _, f=name == "image_tower": f, sub)
            for name, sub in params.items()}

  # No momentum model or queues.
  def init_state(self, params):
    del params
    return None

  def update_state(self, state, params, features):
    del params, features
    return state

  def features(self, params, batch, rng, state=None):
    del state
    m, keys = self.module, jax.random.split(rng, 5)
    ids = self.prefixed(batch["tokens"], "cls")
    image_tokens = self.apply(params, m.image_tokens, batch["image"])
    img = self.apply(params, m.image_embeddings, image_tokens, dropout_rng=keys[0])
    txt = self.apply(params, m.text_embedding, ids, dropout_rng=keys[1])
    feats = {"img": img, "txt": txt}

    scale = self.apply(params, m.logit_scale)
    sims = scale * query_similarities(img, txt)
    positives = momentum_loss.same_caption(ids)
    u = self.draws(keys[2], ids.shape[0])
    neg_text = momentum_loss.draw_negatives(sims, positives, u[:, 0])
    neg_image = momentum_loss.draw_negatives(sims.T, positives, u[:, 1])
    pair_ids = jnp.concatenate([ids, ids, ids[neg_text]])
    pair_images = jnp.concatenate([image_tokens, image_tokens[neg_image], image_tokens])
    logits = self.apply(params, m.itm_logits, pair_ids, pair_images, dropout_rng=keys[3])
    feats["itm_nll"], feats["itm_correct"] = momentum_loss.itm_losses(
        logits.reshape(3, ids.shape[0], 2))

    dec = self.prefixed(batch["tokens"], "dec")
    hidden, kernel, bias = self.apply(params, m.generation_io, dec, image_tokens,
                                      dropout_rng=keys[4])
    labels = dec[:, 1:]
    weights = (labels != fusion.PAD_ID).astype(jnp.float32)
    total, nll, correct = fusion.vocabulary_loss(hidden[:, :-1], kernel, bias, labels, weights)
    feats.update(self.lm_features(total, nll, correct, weights))
    return feats

  def loss(self, params, features, mesh, state=None):
    del mesh, state
    c = self.config.loss
    scale = self.apply(params, self.module.logit_scale)
    sims = scale * query_similarities(features["img"], features["txt"])
    itc = (smoothed_cross_entropy(sims, c.itc_label_smoothing)
           + smoothed_cross_entropy(sims.T, c.itc_label_smoothing)) / 2
    diagonal = jnp.arange(sims.shape[0])
    b = sims.shape[0]
    itm = jnp.sum(features["itm_nll"]) / (3 * b)
    tokens = jnp.maximum(jnp.sum(features["lm_tokens"]), 1.0)
    itg = jnp.sum(features["lm_nll_sum"]) / tokens
    loss = c.itc_weight * itc + c.itm_weight * itm + c.lm_weight * itg
    return loss, {"itc_loss": itc, "itm_loss": itm, "itg_loss": itg, "logit_scale": scale,
                  "i2t_top1": jnp.mean(jnp.argmax(sims, axis=1) == diagonal),
                  "t2i_top1": jnp.mean(jnp.argmax(sims, axis=0) == diagonal),
                  "itm_accuracy": jnp.sum(features["itm_correct"]) / (3 * b),
                  "itg_accuracy": jnp.sum(features["lm_correct"]) / tokens}

  # ---- evaluation -------------------------------------------------------------------------

  def encode_image(self, params, images):
    """[b, Q * E]: the Q normalised query embeddings of each image, side by side (a probe
    reads them all; image_text_scores takes the best)."""
    img = self.apply(params, self.module.encode_image, images)
    return img.reshape(img.shape[0], -1)

  def image_text_scores(self, image_emb, text_emb):
    """[I, T]: the best of each image's query similarities, as in training."""
    img = image_emb.reshape(image_emb.shape[0], -1, text_emb.shape[-1])
    return np.einsum("iqe,te->itq", img, text_emb).max(axis=-1)

  def image_context(self, params, images):
    return self.apply(params, self.module.image_tokens, images)

  def match(self, params, context, tokens):
    logits = self.apply(params, self.module.itm_logits, self.prefixed(tokens, "cls"), context)
    return logits[:, 1] - logits[:, 0]
