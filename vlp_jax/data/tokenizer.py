"""SentencePiece tokenizer: trained on the training captions unless a model file is given.

Token layout matches what the text tower expects: pieces, then EOS, padded with 0; no BOS.
Run `python -m vlp_jax.data.tokenizer --data=SPEC --vocab_size=N --out=PATH` to train one
ahead of a run and pass it as config.data.tokenizer.
"""
import argparse
import io
import os

import numpy as np
import sentencepiece as spm

from vlp_jax.data.tf_setup import tf

PAD_ID, UNK_ID, EOS_ID = 0, 1, 2


def train_tokenizer(captions, vocab_size, out_path):
  """Trains a BPE model on `captions` deterministically and writes it to `out_path`.

  BPE rather than unigram: on tiny caption sets unigram stops at near-character pieces.
  """
  captions = [c for c in captions if c.strip()]
  if not captions:
    raise ValueError(f"No captions to train the tokenizer for {out_path!r} on")
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(captions), model_writer=model, vocab_size=vocab_size,
      hard_vocab_limit=False,  # small caption sets have fewer pieces than asked for
      model_type="bpe", character_coverage=1.0, num_threads=1,
      pad_id=PAD_ID, unk_id=UNK_ID, eos_id=EOS_ID, bos_id=-1,
      minloglevel=2)
  folder = os.path.dirname(out_path) or "."
  tf.io.gfile.makedirs(folder)
  # Written under a temporary name and renamed, so concurrent hosts never read half a file;
  # gfile so that the workdir may be on cloud storage (gs://).
  tmp = f"{out_path}.{os.getpid()}.tmp"
  with tf.io.gfile.GFile(tmp, "wb") as f:
    f.write(model.getvalue())
  tf.io.gfile.rename(tmp, out_path, overwrite=True)
  return out_path


def _train_once(config, path):
  """Process 0 trains the workdir's tokenizer if it is missing; the others wait for it."""
  from vlp_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top

  def write():
    # Imported here: sources pulls in TFDS, which a tokenizer read from a file never needs.
    from vlp_jax.data import sources  # pylint: disable=g-import-not-at-top
    source = sources.from_config(config.data.train, config.data)
    train_tokenizer(source.captions(), config.model.vocab_size, path)
  mesh_lib.write_once(path, write, "tokenizer")


class Tokenizer:
  """Encodes captions to fixed-length int32 ids: pieces, EOS, then pad_id=0."""

  pad_id = 0

  def __init__(self, model_path, context_length):
    self.model_path = model_path
    self.context_length = context_length
    with tf.io.gfile.GFile(model_path, "rb") as f:  # local or gs:// paths
      self.sp = spm.SentencePieceProcessor(model_proto=f.read())
    self.vocab_size = self.sp.get_piece_size()
    self.eos_id = self.sp.eos_id()
    if self.eos_id < 0:
      raise ValueError(f"Tokenizer {model_path!r} has no EOS piece; train it with eos_id set")

  def encode(self, texts):
    """np.int32 [len(texts), context_length]; truncated sequences keep EOS last."""
    length = self.context_length
    out = np.full((len(texts), length), self.pad_id, np.int32)
    for row, ids in enumerate(self.sp.encode(list(texts), out_type=int)):
      ids = ids[:length - 1] + [self.eos_id]
      out[row, :len(ids)] = ids
    return out

  def decode(self, tokens):
    """Text of each row, up to its first EOS."""
    texts = []
    for row in np.asarray(tokens):
      ids = [int(i) for i in row]
      if self.eos_id in ids:
        ids = ids[:ids.index(self.eos_id)]
      texts.append(self.sp.decode([i for i in ids if i != self.pad_id]))
    return texts


def get_tokenizer(config, workdir, reading=False):
  """The tokenizer of config.data.tokenizer, else the workdir's, else (training only) one
  trained on data.train's captions by process 0 and read by every process.

  `reading` (evaluation, captioning): a run is only ever read with the tokenizer it was
  trained with, so a missing one is an error, never a new one written into the workdir.
  """
  path = config.data.tokenizer
  if not path:
    path = os.path.join(workdir, "tokenizer.model")
    if reading and not tf.io.gfile.exists(path):
      raise ValueError(f"{path} is missing: the run's tokenizer is needed to read it (set "
                       f"config.data.tokenizer if the run was trained with another file)")
    if not reading:
      _train_once(config, path)
  elif not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
    raise ValueError(f"config.data.tokenizer={path!r} does not exist")
  tok = Tokenizer(path, config.model.context_length)
  if tok.vocab_size > config.model.vocab_size:
    raise ValueError(
        f"Tokenizer {path!r} (config.data.tokenizer={config.data.tokenizer!r}) has "
        f"{tok.vocab_size} pieces, more than config.model.vocab_size={config.model.vocab_size}")
  return tok


def main(argv=None):
  from vlp_jax.data import sources  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True, help="data spec, e.g. jsonl:PATH:train")
  parser.add_argument("--vocab_size", type=int, required=True)
  parser.add_argument("--out", required=True, help="path of the .model file to write")
  parser.add_argument("--data_dir", default="", help="TFDS data_dir for builtin: specs")
  parser.add_argument("--holdout_percent", type=int, default=10)
  args = parser.parse_args(argv)
  source = sources.get_source(args.data, args.holdout_percent, args.data_dir)
  train_tokenizer(source.captions(), args.vocab_size, args.out)
  tok = Tokenizer(args.out, context_length=1)
  print(f"Wrote {args.out} with {tok.vocab_size} pieces")


if __name__ == "__main__":
  main()
