"""VQA fine-tuning of a pretrained decoder family: `model.name='vqa'` wraps `vqa.family`.

The wrapped family (any that implements the contract's answer_features and answer) keeps its
parameter tree as it is, so `model.init_from=PRETRAINING_RUN` restores every parameter by
path; this family only brings the batch (image, question, answer), the loss over the answer
tokens and the `vqa` evaluation, and talks to the wrapped family through those two methods
alone. Fine-tuning has no family state (no momentum model, no queues).

`vqa.blind`: the question-only baseline, the same model and decoder with every image
replaced by zeros, in training and answering, so nothing of the image reaches the answer.
`vqa.candidates`: "" generates answers greedily; "train" (every distinct answer of
data.train, kept in WORKDIR/answers.txt like the tokenizer) or a file ranks a closed list
instead: each candidate scores its summed answer nll given image and question (teacher
forced), and the lowest wins.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vlp_jax.data import keywords
from vlp_jax.data.tf_setup import tf
from vlp_jax.families import base
from vlp_jax.parallel import mesh as mesh_lib

ANSWERS_FILE = "answers.txt"
ANSWER_METHODS = ("answer_features", "answer")


def can_answer(cls):
  """Whether a family class implements the answering methods (not base.Family's)."""
  return all(getattr(cls, name) is not getattr(base.Family, name) for name in ANSWER_METHODS)


def wrapped_class(config):
  """The family class `vqa.family` names; ValueError naming the field when it cannot answer."""
  name = config.vqa.family
  cls = base.FAMILIES.get(name)
  if cls is None or not can_answer(cls):
    able = sorted(n for n, c in base.FAMILIES.items() if can_answer(c))
    raise ValueError(f"Config field 'vqa.family': {name!r} cannot answer questions; the "
                     f"families that implement {' and '.join(ANSWER_METHODS)}: {able}")
  return cls


def fit(tokens, length, eos_id):
  """Rows in the tokenizer's layout (numpy or jax) cut or padded to `length` columns; a row
  that loses pieces keeps EOS last, as the tokenizer truncates."""
  xp = np if isinstance(tokens, np.ndarray) else jnp
  if tokens.shape[1] <= length:
    return xp.pad(tokens, ((0, 0), (0, length - tokens.shape[1])))
  head = tokens[:, :length]
  cut = (tokens[:, length:] != 0).any(axis=1)
  last = xp.where(cut, eos_id, head[:, -1]).astype(head.dtype)
  return xp.concatenate([head[:, :-1], last[:, None]], axis=1)


def _text(value):
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def most_frequent(answers):
  """The answer given most often (ties: the first given): the training target of a row."""
  answers = [_text(a) for a in answers]
  if not answers:
    raise ValueError("A VQA record has no answer")
  return max(dict.fromkeys(answers), key=answers.count)


def train_answers(config):
  """Every distinct answer of data.train, most frequent first (ties: alphabetical)."""
  from vlp_jax.data import sources  # pylint: disable=g-import-not-at-top
  source = sources.from_config(config.data.train, config.data)
  if not hasattr(source, "examples"):
    raise ValueError(f"Config field 'vqa.candidates': 'train' reads the answers of a VQA "
                     f"data.train (vqa:PATH, builtin:shapes_vqa), not {config.data.train!r}")
  counts = {}
  for example in source.examples:  # data/vqa_source.py
    for answer in dict.fromkeys(" ".join(_text(a).split()) for a in example["answers"]):
      counts[answer] = counts.get(answer, 0) + 1
  counts.pop("", None)
  return sorted(counts, key=lambda a: (-counts[a], a))


def read_answers(path):
  """The answers of a file, one per line (keywords.py's vocabulary format)."""
  try:
    return keywords.read_vocabulary(path)
  except ValueError:
    raise ValueError(f"Config field 'vqa.candidates': {path} holds no answer") from None


def prepare_candidates(config, workdir, reading):
  """The closed answer list (None: answers are generated): vqa.candidates' file, or for
  "train" WORKDIR/answers.txt, written by process 0 from data.train when training and
  missing (the others wait for it), read as it is on resume and evaluation."""
  field = config.vqa.candidates
  if not field:
    return None
  path = os.path.join(workdir, ANSWERS_FILE) if field == "train" else field
  if not tf.io.gfile.exists(path):
    if field != "train":
      raise ValueError(f"Config field 'vqa.candidates': {path!r} does not exist")
    if reading:
      raise ValueError(f"{path} is missing: the run's answer list (vqa.candidates='train') "
                       f"is needed to read it")
    mesh_lib.write_once(path, lambda: keywords.write_vocabulary(train_answers(config), path),
                        "answer list")
  return read_answers(path)


@base.register("vqa")
class VqaFamily(base.Family):
  """Batch fields: image [b, S, S, 3] float32, question [b, Lq] int32 (Lq =
  model.context_length - vqa.answer_length: the decoder reads question and answer within
  its position table), answer [b, vqa.answer_length] int32, both in the tokenizer's layout."""

  EVALUATIONS = frozenset({"vqa"})
  PRETRAINS_ON_PAIRS = False  # fine-tunes another family's run on questions
  EXACT_ACCUMULATION = True  # the loss is a sum of per-example terms

  def __init__(self, config, eos_id=1):
    super().__init__(config, eos_id)
    self.wrapped = wrapped_class(config)(config, eos_id)
    self.candidates = None  # the closed answer list (texts), set by prepare
    self.candidate_tokens = None  # [C, vqa.answer_length]
    self.unspelled = set()  # training answers the tokenizer cannot spell, logged once each

  @classmethod
  def check_config(cls, config):
    wrapped = wrapped_class(config)
    length, answer = config.model.context_length, config.vqa.answer_length
    if answer > length - 2:
      raise ValueError(f"Config field 'vqa.answer_length': {answer} leaves the question less "
                       f"than a piece and EOS of model.context_length={length}")
    wrapped.check_config(config)

  @property
  def question_length(self):
    return self.config.model.context_length - self.config.vqa.answer_length

  def prepare(self, workdir, reading):
    self.wrapped.prepare(workdir, reading)
    answers = prepare_candidates(self.config, workdir, reading)
    if answers:
      from vlp_jax import data  # pylint: disable=g-import-not-at-top
      self.set_candidates(answers, data.get_tokenizer(self.config, workdir, reading=True))

  def set_candidates(self, answers, tokenizer):
    """Answers are ranked over `answers` (texts) from now on instead of generated."""
    self.candidates = list(answers)
    self.candidate_tokens = fit(tokenizer.encode(self.candidates),
                                self.config.vqa.answer_length, tokenizer.eos_id)

  # ---- batch and parameters: the wrapped family's ------------------------------------------

  def example_batch(self, batch_size):
    m = self.config.model
    return {
        "image": jax.ShapeDtypeStruct((batch_size, m.image_size, m.image_size, 3), jnp.float32),
        "question": jax.ShapeDtypeStruct((batch_size, self.question_length), jnp.int32),
        "answer": jax.ShapeDtypeStruct((batch_size, self.config.vqa.answer_length), jnp.int32),
    }

  def host_batch(self, raw, tokenizer):
    """Questions tokenised like captions; the answer of a row is its most frequent one."""
    self.wrapped.check_tokenizer(tokenizer)
    eos = tokenizer.eos_id
    questions = tokenizer.encode([_text(q) for q in raw["caption"]])
    texts = [most_frequent(a) for a in raw["answers"]]
    answers = tokenizer.encode(texts)
    self.warn_unspelled(texts, answers, tokenizer.unk_id)
    return {"image": raw["image"], "question": fit(questions, self.question_length, eos),
            "answer": fit(answers, self.config.vqa.answer_length, eos)}

  def warn_unspelled(self, texts, tokens, unk_id):
    """Logs each new answer holding the tokenizer's unknown piece: it trains, and decodes,
    as unk, so it can never be answered right (a caption tokenizer without digits)."""
    new = {t for t, row in zip(texts, tokens) if unk_id in row} - self.unspelled
    if new:
      self.unspelled |= new
      logging.warning("VQA answers %s contain pieces the tokenizer does not know: they are "
                      "learnt and answered as unk", sorted(new))

  def init(self, rng, batch):
    """The wrapped family's parameters, initialised on its own example batch."""
    shapes = self.wrapped.example_batch(batch["image"].shape[0])
    return self.wrapped.init(rng, {k: jnp.zeros(x.shape, x.dtype) for k, x in shapes.items()})

  def frozen(self, params):
    return self.wrapped.frozen(params)

  def constrain(self, params):
    return self.wrapped.constrain(params)

  # ---- loss -----------------------------------------------------------------------------------

  def inputs(self, images, questions):
    """(images, questions) as the wrapped family reads them: zeros for the blind baseline,
    questions cut to question_length."""
    if self.config.vqa.blind:
      images = jnp.zeros_like(images)
    return images, fit(questions, self.question_length, self.eos_id)

  def features(self, params, batch, rng, state=None):
    del state  # none
    images, questions = self.inputs(batch["image"], batch["question"])
    return self.wrapped.answer_features(params, images, questions, batch["answer"], rng)

  def loss(self, params, features, mesh, state=None):
    """The mean cross-entropy over the answer tokens (EOS included) of the global batch."""
    del params, mesh, state
    tokens = jnp.maximum(jnp.sum(features["lm_tokens"]), 1.0)
    loss = jnp.sum(features["lm_nll_sum"]) / tokens
    return loss, {"answer_loss": loss,
                  "answer_token_accuracy": jnp.sum(features["lm_correct"]) / tokens}

  # ---- answering ------------------------------------------------------------------------------

  def answer(self, params, images, questions, max_len):
    """Greedy answers, or the best of the closed list (vqa.candidates) cut to max_len."""
    if self.candidate_tokens is not None:
      nll = self.candidate_nll(params, images, questions, self.candidate_tokens)
      return fit(jnp.asarray(self.candidate_tokens)[jnp.argmin(nll, 1)], max_len, self.eos_id)
    images, questions = self.inputs(images, questions)
    return self.wrapped.answer(params, images, questions, max_len)

  def candidate_nll(self, params, images, questions, candidates):
    """[b, C] summed nll of each candidate answer [C, La] (tokenizer layout) given each
    row's image and question, teacher forced; one candidate at a time over the batch, so
    memory stays one batch's (C image passes)."""
    images, questions = self.inputs(images, questions)

    def one(candidate):
      answers = jnp.broadcast_to(candidate, (questions.shape[0], candidate.shape[0]))
      return self.wrapped.answer_features(params, images, questions, answers)["lm_nll_sum"]
    return jax.lax.map(one, jnp.asarray(candidates, jnp.int32)).T
