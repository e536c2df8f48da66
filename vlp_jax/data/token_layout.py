"""The token layout every tokenizer here writes: [prefix,] [start,] pieces, EOS, padding.

The project's own tokenizers have no start symbol and pad with 0; imported ones keep their
model's layout (CLIP: <start_of_text> first; SigLIP: padded with EOS), because the text
tower they were trained with pools at a position that layout fixes.
"""
import numpy as np


def rows(tokenizer, pieces, prefix=None, start_id=None, eos_in_pieces=False):
  """np.int32 [len(pieces), context_length] rows [prefix,] [start_id,] pieces, EOS, pad of
  each list of piece ids, for any tokenizer (its context_length, vocab_size, eos_id, pad_id,
  model_path). Truncated rows keep the prefix and start first and EOS last.

  `eos_in_pieces`: a row whose kept pieces already end with EOS (a caption that spells the
  EOS token) gets no second one, as Hugging Face's T5-style tokenizers do.
  """
  length = tokenizer.context_length
  head = []
  if prefix is not None:
    prefix = int(prefix)
    if not 0 <= prefix < tokenizer.vocab_size:
      raise ValueError(f"prefix={prefix} is not an id of tokenizer {tokenizer.model_path!r} "
                       f"(vocab_size {tokenizer.vocab_size})")
    head.append(prefix)
  if start_id is not None:
    head.append(int(start_id))
  room = length - 1 - len(head)
  if head and room < 0:
    raise ValueError(f"context_length={length} leaves no room for {len(head)} leading "
                     f"token(s) and EOS (tokenizer {tokenizer.model_path!r})")
  out = np.full((len(pieces), length), tokenizer.pad_id, np.int32)
  for row, ids in enumerate(pieces):
    ids = list(ids)[:max(room, 0)]
    if eos_in_pieces and ids and ids[-1] == tokenizer.eos_id:
      ids.pop()
    ids = head + ids + [tokenizer.eos_id]
    out[row, :len(ids)] = ids
  return out
