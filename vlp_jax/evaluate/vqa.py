"""The `vqa` evaluation: a family's answers to the questions of every eval set that has
answers, scored with VQAv2's accuracy (vqa_metrics.evaluate).

Images and question tokens of the same rows are fed sharded over the batch axes, each host
its own rows, as runner.Encoder feeds images (the tokens are held whole by every host); the
answers come back replicated and every host decodes them, so all hosts report the same
metrics: `vqa/<set>/accuracy`, `vqa/<set>/accuracy/<question type>`, `vqa/<set>/count`.
"""
import collections

import jax
from absl import logging

from vlp_jax.evaluate import runner, vqa_metrics

SHOW = 5  # (question, predicted, true) triples logged per set


class Answerer(runner.Encoder):
  """runner.Encoder that also answers questions: family.answer with `max_len` answer tokens
  (vqa.answer_length), one compile for fixed-size batches."""

  def __init__(self, family, mesh, batch_size, max_len):
    super().__init__(family, mesh, batch_size)
    self.max_len = max_len
    self._answer = self.jit_on_images(
        lambda params, images, questions: family.answer(params, images, questions, max_len),
        inputs=2)

  def answers(self, params, ev):
    """Answer tokens [N, max_len] to the questions (ev.tokens) of an EvalSet's usable
    records, replicated on every host."""
    return self._run_images(self._answer, params, ev, ev.tokens)


def _types(ev):
  """{index: question type}, or None when the set does not type every question."""
  types = getattr(ev, "question_types", None)
  return dict(enumerate(types)) if types and all(types) else None


def set_metrics(answerer, params, tokenizer, ev, show=SHOW):
  """vqa/<set>/... metrics of one EvalSet with `answers`; process 0 logs `show` triples."""
  if not isinstance(answerer, Answerer):
    raise TypeError(f"The vqa evaluation needs an evaluate.vqa.Answerer, not "
                    f"{type(answerer).__name__}")
  predicted = tokenizer.decode(answerer.answers(params, ev))
  scores = vqa_metrics.evaluate(dict(enumerate(predicted)), dict(enumerate(ev.answers)),
                                _types(ev))
  if jax.process_index() == 0:
    for i in range(min(show, len(predicted))):
      true = collections.Counter(ev.answers[i]).most_common(1)[0][0]
      logging.info("[vqa %s %d] question: %r  predicted: %r  true: %r", ev.name, i,
                   ev.captions[i], predicted[i], true)
  return {f"vqa/{ev.name}/{key}": value for key, value in scores.items()}


def evaluate_sets(answerer, params, tokenizer, eval_sets):
  """set_metrics of every eval set that has answers."""
  results = {}
  for ev in eval_sets:
    if getattr(ev, "answers", None) is not None:
      results.update(set_metrics(answerer, params, tokenizer, ev))
  return results
