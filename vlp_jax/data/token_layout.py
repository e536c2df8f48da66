"""The token layout every tokenizer here writes: [prefix,] pieces, EOS, padding 0, no BOS."""
import numpy as np


def rows(tokenizer, pieces, prefix=None):
  """np.int32 [len(pieces), context_length] rows [prefix,] pieces, EOS, pad 0 of each list
  of piece ids, for any tokenizer (its context_length, vocab_size, eos_id, pad_id,
  model_path). Truncated rows keep the prefix first and EOS last."""
  length = tokenizer.context_length
  head = []
  if prefix is not None:
    prefix = int(prefix)
    if not 0 <= prefix < tokenizer.vocab_size:
      raise ValueError(f"prefix={prefix} is not an id of tokenizer {tokenizer.model_path!r} "
                       f"(vocab_size {tokenizer.vocab_size})")
    if length < 2:
      raise ValueError(f"context_length={length} leaves no room for prefix and EOS")
    head = [prefix]
  out = np.full((len(pieces), length), tokenizer.pad_id, np.int32)
  for row, ids in enumerate(pieces):
    ids = head + list(ids)[:length - 1 - len(head)] + [tokenizer.eos_id]
    out[row, :len(ids)] = ids
  return out
