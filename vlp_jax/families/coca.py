"""CoCa: contrastive (softmax InfoNCE) plus captioning cross-entropy, and caption decoding.

loss = contrastive_weight * InfoNCE(img, txt) + caption_weight * sum(nll) / sum(tokens),
the captioning term a mean over the non-padding target tokens of the global batch. Each
example contributes its own nll sum and token count as features, so gradient accumulation
(train/step.py) stays exact for both terms. The vocabulary head's logits are computed a
few positions at a time and never held whole (losses/cross_entropy.py).
"""
import jax
import jax.numpy as jnp

from vlp_jax import losses
from vlp_jax.families import base
from vlp_jax.families.clip import ClipFamily
from vlp_jax.families.fusion import FusionFamily
from vlp_jax.losses import contrastive
from vlp_jax.models import coca as coca_model
from vlp_jax.models import decoding, question_prompt
from vlp_jax.parallel.mesh import BATCH_AXES


@base.register("coca")
class CocaFamily(base.Family):
  """Batch fields: image [b, S, S, 3] float32, tokens [b, L] int32 (pieces, EOS, pad 0)."""

  EVALUATIONS = frozenset({"retrieval", "zeroshot_text", "caption", "probe"})
  CONTRASTIVE_KIND = "softmax"

  def __init__(self, config, eos_id=1):
    super().__init__(config, eos_id)
    # The vocabulary loss packs out padding within each device's rows of the mesh that the
    # train step makes current (losses/cross_entropy.py), so the module needs no device count.
    self.module = coca_model.from_config(config.model, eos_id)
    self.decoder = coca_model.from_config(config.model, eos_id, decode=True)
    self.loss_impl = losses.SOFTMAX[config.loss.contrastive]

  # The same batch fields and initialisation as the two-tower families.
  example_batch = ClipFamily.example_batch
  host_batch = ClipFamily.host_batch
  init = ClipFamily.init
  constrain = ClipFamily.constrain

  def features(self, params, batch, rng, state=None):
    """Embeddings and per-example captioning sums: all the loss needs of the batch."""
    del rng, state  # no dropout
    tokens = batch["tokens"]
    img, txt, (total, nll, correct), _ = self.module.apply({"params": params}, batch["image"],
                                                           tokens)
    mask = (tokens != coca_model.PAD_ID).astype(jnp.float32)
    nll_sum = jnp.sum(nll * mask, axis=1)
    # The fused head computes its gradient for the batch's total only (models/coca.py
    # VocabHead). Each example's value is its own nll sum; the gradient of the total is
    # spread evenly over them, exact for the loss below, which only uses their sum.
    nll_sum = nll_sum + (total - jax.lax.stop_gradient(total)) / nll_sum.shape[0]
    return {"img": img, "txt": txt, "caption_nll_sum": nll_sum,
            "caption_tokens": jnp.sum(mask, axis=1),
            "caption_correct": jnp.sum(correct * mask, axis=1)}

  def loss(self, params, features, mesh, state=None):
    del state
    scale = self.module.apply({"params": params}, method=self.module.logit_scale)
    loss_fn = contrastive.sharded(self.loss_impl, mesh, BATCH_AXES, 1)
    contrastive_loss, metrics = loss_fn(features["img"], features["txt"], scale)
    tokens = jnp.maximum(jnp.sum(features["caption_tokens"]), 1.0)
    caption_loss = jnp.sum(features["caption_nll_sum"]) / tokens
    w = self.config.loss
    loss = w.contrastive_weight * contrastive_loss + w.caption_weight * caption_loss
    return loss, dict(metrics, logit_scale=scale, contrastive_loss=contrastive_loss,
                      caption_loss=caption_loss,
                      caption_accuracy=jnp.sum(features["caption_correct"]) / tokens)

  # encode_image also takes videos [b, T, S, S, 3]: one pooler over all space-time tokens.
  encode_image = ClipFamily.encode_image
  encode_text = ClipFamily.encode_text

  def encode_video_frames(self, params, videos):
    """Zero-shot video retrieval embedding: the mean of the frames' image embeddings."""
    return self.module.apply({"params": params}, videos,
                             method=self.module.encode_video_frames)

  @property
  def start_id(self):
    """The decoder's first input: EOS doubles as the start symbol (models/coca.py)."""
    return self.eos_id

  def step_fn(self, params, offset=0):
    """decoding's step_fn: logits [N, V] of one position, with the decoder's KV caches;
    decoder positions are the caption's + `offset` (a prompt before it)."""
    model = self.decoder

    def step(cache, ids, position):
      logits, variables = model.apply({"params": params, "cache": cache}, ids[:, None],
                                      position + offset, method=model.decode_step,
                                      mutable=["cache"])
      return logits[:, 0], variables["cache"]
    return step

  def init_cache(self, params, images, rows_per_image, max_len):
    """KV caches for max_len positions, the image queries' keys/values already in place."""
    model = self.decoder
    context = model.apply({"params": params}, images, method=model.caption_context)
    context = jnp.repeat(context, rows_per_image, axis=0)
    ids = jnp.zeros((context.shape[0], max_len), jnp.int32)
    _, variables = model.apply({"params": params}, ids, 0, context, method=model.decode_step,
                               mutable=["cache"])
    return variables["cache"]

  def caption(self, params, images, rng=None, method="beam", beam_size=4, alpha=0.6,
              temperature=1.0, top_k=0, top_p=1.0, max_len=0, prompt=()):
    """Caption tokens [b, max_len] (default: model.context_length) of images, in the
    tokenizer's layout, starting with the forced `prompt` ids (decode.prompt); jit it with
    the options static. method: greedy, beam or sample."""
    n = max_len or self.config.model.context_length
    if n > self.config.model.context_length:
      raise ValueError(f"max_len={n} exceeds model.context_length="
                       f"{self.config.model.context_length}")
    prompt = tuple(prompt)
    if len(prompt) >= n:
      raise ValueError(f"decode.prompt has {len(prompt)} tokens, leaving none of {n} to "
                       f"generate")
    b = images.shape[0]
    rows = beam_size if method == "beam" else 1
    cache = self.init_cache(params, images, rows, n)
    step, cache, start = decoding.after_prompt(self.step_fn(params), cache, b * rows,
                                               self.start_id, prompt)
    free = n - len(prompt)
    if method == "beam":
      tokens, _ = decoding.beam_search(step, cache, b, beam_size, free, start, self.eos_id,
                                       alpha)
      tokens = tokens[:, 0]
    elif method == "greedy":
      tokens = decoding.greedy(step, cache, b, free, start, self.eos_id)
    elif method == "sample":
      tokens = decoding.sample(step, cache, b, free, start, self.eos_id, rng, temperature,
                               top_k, top_p)
    else:
      raise ValueError(f"Unknown decoding method {method!r} (greedy, beam or sample)")
    if not prompt:
      return tokens
    return jnp.concatenate([jnp.broadcast_to(jnp.array(prompt, jnp.int32), (b, len(prompt))),
                            tokens], axis=1)

  # ---- VQA as generation: the question is the decoder's prompt (models/question_prompt.py)

  def check_positions(self, n):
    """ValueError naming the field when n decoder positions (question + answer) do not fit
    the position table."""
    limit = self.config.model.context_length
    if n > limit:
      raise ValueError(f"A question and answer of {n} tokens in all exceed "
                       f"model.context_length={limit} decoder positions")

  def answer_features(self, params, images, questions, answers, rng=None):
    """The multimodal decoder reading start + question pieces + answer; the loss on the
    answer only (models/question_prompt.py)."""
    del rng  # no dropout
    tokens, weights = question_prompt.pack(questions, answers, self.eos_id)
    self.check_positions(tokens.shape[1])
    total, nll, correct = self.module.apply({"params": params}, images, tokens, weights,
                                            method=self.module.weighted_loss)
    return FusionFamily.lm_features(total, nll, correct, weights)

  def answer(self, params, images, questions, max_len):
    """Greedy decoding after each row's own question (decoding.sample's `forced`)."""
    n = questions.shape[1] + max_len
    self.check_positions(n)
    forced, lengths = question_prompt.prompt(questions, self.eos_id)
    cache = self.init_cache(params, images, 1, n)
    return decoding.greedy(self.step_fn(params), cache, images.shape[0], max_len,
                           self.start_id, self.eos_id, forced, lengths)
