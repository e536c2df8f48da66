"""VQA as generation: a question is a decoder prompt, the answer what the decoder writes
after it (every family with a decoder; BLIP-2's "Question: {} Answer:" prompting).

Questions and answers come in the tokenizer's layout (pieces, EOS, pad 0). Rows have
questions of different lengths and the decoders' KV caches have no key-padding mask, so a
row's answer follows its own question's pieces with no gap (never left-padded prompts).
"""
import jax.numpy as jnp

PAD_ID = 0


def question_lengths(questions, eos_id):
  """[b] pieces of each question (its EOS and padding are not part of the prompt)."""
  return jnp.sum((questions != PAD_ID) & (questions != eos_id), axis=1).astype(jnp.int32)


def prompt(questions, eos_id):
  """(forced [b, Lq], lengths [b]): each row's question pieces, what decoding.greedy forces
  after the start symbol before the answer."""
  return jnp.where(questions == eos_id, PAD_ID, questions), question_lengths(questions, eos_id)


def pack(questions, answers, eos_id):
  """(tokens [b, Lq + La], weights [b, Lq + La]): each row's question pieces then its answer
  (pieces, EOS), right-padded with 0: what a causal decoder predicts after its start symbol.
  Weights are 1 on the answer's tokens only, so the question is read, never scored."""
  lengths = question_lengths(questions, eos_id)
  la = answers.shape[1]
  width = questions.shape[1] + la
  offset = jnp.arange(width)[None, :] - lengths[:, None]  # the answer's index per column
  answer = jnp.take_along_axis(answers, jnp.clip(offset, 0, la - 1), axis=1)
  question = jnp.pad(questions, ((0, 0), (0, la)))
  tokens = jnp.where(offset < 0, question, jnp.where(offset < la, answer, PAD_ID))
  tokens = tokens.astype(jnp.int32)
  weights = ((offset >= 0) & (tokens != PAD_ID)).astype(jnp.float32)
  return tokens, weights
