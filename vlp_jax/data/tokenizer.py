"""SentencePiece tokenizer: trained on the training captions unless a model file is given.

Token layout matches what the text tower expects: pieces, then EOS, padded with 0; no BOS.
`encode(texts, prefix=id)` puts one special id first ([CLS] for BERT-style encoders, [DEC]
for BLIP's decoder). Ids: pad 0, unk 1, eos 2, then the user-defined symbols [CLS] 3,
[MASK] 4, [ENC] 5, [DEC] 6 (tokenizers trained here; one trained elsewhere may lack them,
which only `special_id` minds).
Run `python -m vlp_jax.data.tokenizer --data=SPEC --vocab_size=N --out=PATH` to train one
ahead of a run and pass it as config.data.tokenizer.
A Hugging Face GPT-2/OPT tokenizer folder (vocab.json, merges.txt) is read by bpe.py instead,
with the same layout and ids one above Hugging Face's (0 stays padding).
Imported text towers keep their own tokenizer and layout, named by a prefix:
`clip_bpe:PATH` (OpenAI CLIP's BPE as open_clip encodes it, clip_bpe.py) and `spm:PATH`
(a SentencePiece model as SigLIP uses it, spm_tokenizer.py). `open_tokenizer` reads any of
these; `tokenizer_files` and `copy_tokenizer` tell an exporter what to carry along.
"""
import argparse
import io
import os

import numpy as np
import sentencepiece as spm

from vlp_jax.data import bpe, clip_bpe, spm_tokenizer, token_layout
from vlp_jax.data.tf_setup import tf

PAD_ID, UNK_ID, EOS_ID = 0, 1, 2
# Name -> piece of the user-defined symbols train_tokenizer adds, in id order (3, 4, 5, 6).
# User-defined, not control, symbols: sentencepiece encodes and decodes them like pieces.
SPECIAL_PIECES = {"cls": "[CLS]", "mask": "[MASK]", "enc": "[ENC]", "dec": "[DEC]"}
# Their ids in a tokenizer train_tokenizer writes (the fusion families check them).
SPECIAL_IDS = {name: EOS_ID + 1 + i for i, name in enumerate(SPECIAL_PIECES)}
NEVER_MASKED = (PAD_ID, UNK_ID, EOS_ID) + tuple(SPECIAL_IDS.values())


def _train_bpe(captions, vocab_size, model):
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(captions), model_writer=model, vocab_size=vocab_size,
      hard_vocab_limit=False,  # small caption sets have fewer pieces than asked for
      model_type="bpe", character_coverage=1.0, num_threads=1,
      pad_id=PAD_ID, unk_id=UNK_ID, eos_id=EOS_ID, bos_id=-1,
      user_defined_symbols=list(SPECIAL_PIECES.values()),  # ids 3.. after pad, unk, eos
      minloglevel=2)


def train_tokenizer(captions, vocab_size, out_path):
  """Trains a BPE model on `captions` deterministically and writes it to `out_path`.

  BPE rather than unigram: on tiny caption sets unigram stops at near-character pieces.
  The vocabulary holds pad 0, unk 1, eos 2, [CLS] 3, [MASK] 4, [ENC] 5, [DEC] 6, then the
  learned pieces (the four symbols count towards vocab_size).
  """
  captions = [c for c in captions if c.strip()]
  if not captions:
    raise ValueError(f"No captions to train the tokenizer for {out_path!r} on")
  model = io.BytesIO()
  try:
    _train_bpe(captions, vocab_size, model)
  except RuntimeError as e:
    if "required_chars" not in str(e):
      raise
    raise ValueError(
        f"vocab_size={vocab_size} is too small for the tokenizer {out_path!r}: it must hold "
        f"every character of the captions plus pad, unk, eos and the {len(SPECIAL_PIECES)} "
        f"special symbols ({e})") from None
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
  """Encodes captions to fixed-length int32 ids: [prefix], pieces, EOS, then pad_id=0."""

  pad_id = 0

  def __init__(self, model_path, context_length):
    self.model_path = model_path
    self.context_length = context_length
    with tf.io.gfile.GFile(model_path, "rb") as f:  # local or gs:// paths
      proto = f.read()
    try:
      self.sp = spm.SentencePieceProcessor(model_proto=proto)
    except (RuntimeError, OSError) as e:
      raise ValueError(f"{model_path} is not a SentencePiece model ({e})") from None
    self.vocab_size = self.sp.get_piece_size()
    self.eos_id = self.sp.eos_id()
    if self.eos_id < 0:
      raise ValueError(f"Tokenizer {model_path!r} has no EOS piece; train it with eos_id set")
    self.unk_id = self.sp.unk_id()
    # Name -> id of the special symbols the model has (piece_to_id answers unk when absent).
    self._specials = {}
    for name, piece in SPECIAL_PIECES.items():
      i = self.sp.piece_to_id(piece)
      if i != self.unk_id and not self.sp.is_unknown(i):
        self._specials[name] = i

  def special_id(self, name):
    """Id of a special symbol: name is one of "cls", "mask", "enc", "dec"."""
    if name not in SPECIAL_PIECES:
      raise ValueError(f"Unknown special symbol {name!r}; one of {sorted(SPECIAL_PIECES)}")
    if name not in self._specials:
      raise ValueError(
          f"Tokenizer {self.model_path!r} has no {SPECIAL_PIECES[name]} symbol, which this "
          f"model family needs: set config.data.tokenizer to one trained by `python -m "
          f"vlp_jax.data.tokenizer` (it adds {' '.join(SPECIAL_PIECES.values())}), or leave it "
          f"empty in a new workdir to train one there")
    return self._specials[name]

  def special_ids(self):
    """Sorted tuple of the ids never masked, predicted as a masked token or drawn as a
    random replacement: pad, unk, eos and those of [CLS], [MASK], [ENC], [DEC] the model has.

    unk is included: a masked-LM target of unk teaches nothing and a random unk input is
    noise no caption contains. It still decodes, see `decode`.
    """
    ids = {self.pad_id, self.unk_id, self.eos_id, *self._specials.values()}
    return tuple(sorted(i for i in ids if i >= 0))

  def encode(self, texts, prefix=None):
    """np.int32 [len(texts), context_length]: [prefix,] pieces, EOS, pad 0.

    `prefix`, an int id (e.g. `special_id("cls")`), goes first in every row. Truncated
    rows keep the prefix first and EOS last.
    """
    return token_layout.rows(self, self.sp.encode(list(texts), out_type=int), prefix)

  def decode(self, tokens):
    """Text of each row, up to its first EOS, without pad and [CLS]/[MASK]/[ENC]/[DEC].

    unk is kept (sentencepiece writes it as a double question mark): dropping it would
    hide lost text.
    """
    skip = {self.pad_id, *self._specials.values()}
    texts = []
    for row in np.asarray(tokens):
      ids = [int(i) for i in row]
      if self.eos_id in ids:
        ids = ids[:ids.index(self.eos_id)]
      texts.append(self.sp.decode([i for i in ids if i not in skip]))
    return texts


# config.data.tokenizer's prefixes -> the class that reads PATH (imported text towers').
KINDS = {clip_bpe.KIND: clip_bpe.ClipBpeTokenizer,
         spm_tokenizer.KIND: spm_tokenizer.SpmTokenizer}
# Written by copy_tokenizer into a folder: the spec of the tokenizer there, relative to it.
SPEC_FILE = "tokenizer_spec.txt"


def split_spec(spec):
  """(kind, path) of a tokenizer spec: kind "clip_bpe" or "spm", or "" for a plain path
  (a SentencePiece model trained by vlp_jax, or a folder)."""
  kind, sep, path = spec.partition(":")
  if sep and kind in KINDS:
    return kind, path
  return "", spec


def _exists(path):
  return bool(path) and tf.io.gfile.exists(path)


def open_tokenizer(spec, context_length):
  """The tokenizer `spec` names: "clip_bpe:PATH", "spm:PATH", a SentencePiece model trained
  by vlp_jax, a Hugging Face GPT-2/OPT folder (bpe.py), or a folder copy_tokenizer wrote
  (its tokenizer_spec.txt names the kind). A missing or broken file is a one-line
  ValueError naming it."""
  kind, path = split_spec(spec)
  if not _exists(path):
    raise ValueError(f"{path!r} does not exist")
  if kind:
    return KINDS[kind](path, context_length)
  if not tf.io.gfile.isdir(path):
    return Tokenizer(path, context_length)
  recorded = os.path.join(path, SPEC_FILE)
  if tf.io.gfile.exists(recorded):
    with tf.io.gfile.GFile(recorded, "r") as f:
      kind, inner = split_spec(f.read().strip())
    inner = path if inner in ("", ".") else os.path.join(path, inner)
    if not _exists(inner) or (not kind and tf.io.gfile.isdir(inner)):
      raise ValueError(f"{recorded} names {inner!r}, which is missing or not a file")
    return KINDS[kind](inner, context_length) if kind else Tokenizer(inner, context_length)
  for name in ("vocab.json", "merges.txt"):
    if not tf.io.gfile.exists(os.path.join(path, name)):
      raise ValueError(f"Tokenizer folder {path!r} has no {name} (nor {SPEC_FILE})")
  return bpe.BpeTokenizer(path, context_length)


def describe_tokenizer(tok):
  """The spec that opens `tok` again (open_tokenizer, config.data.tokenizer), with an
  absolute path for local files: "clip_bpe:/abs/bpe_simple_vocab_16e6.txt.gz"."""
  path = tok.model_path if "://" in tok.model_path else os.path.abspath(tok.model_path)
  kind = getattr(tok, "kind", "")
  return f"{kind}:{path}" if kind else path


def tokenizer_files(tok):
  """The files that make up `tok`, the ones an export carries along."""
  if hasattr(tok, "files"):  # clip_bpe, spm
    return list(tok.files)
  if isinstance(tok, bpe.BpeTokenizer):
    names = ("vocab.json", "merges.txt") + bpe.CONFIG_FILES + ("config.json",)
    files = [os.path.join(tok.model_path, name) for name in names]
    return [f for f in files if tf.io.gfile.exists(f)]
  return [tok.model_path]


def copy_tokenizer(tok, folder):
  """Copies tokenizer_files(tok) into `folder` and records there which kind they are
  (tokenizer_spec.txt), so that `open_tokenizer(folder, context_length)` and a workdir's
  tokenizer/ folder read the copy as `tok`. Returns `folder`."""
  tf.io.gfile.makedirs(folder)
  for file in tokenizer_files(tok):
    tf.io.gfile.copy(file, os.path.join(folder, os.path.basename(file)), overwrite=True)
  kind = getattr(tok, "kind", "")
  if kind or not isinstance(tok, bpe.BpeTokenizer):  # a bare GPT-2/OPT folder needs none
    inner = "." if tf.io.gfile.isdir(tok.model_path) else os.path.basename(tok.model_path)
    with tf.io.gfile.GFile(os.path.join(folder, SPEC_FILE), "w") as f:
      f.write(f"{kind}:{inner}\n" if kind else f"{inner}\n")
  return folder


def is_tokenizer_folder(path):
  """True for a folder open_tokenizer reads: a Hugging Face BPE vocabulary, or a copy
  copy_tokenizer wrote."""
  return bpe.is_bpe_folder(path) or tf.io.gfile.exists(os.path.join(path, SPEC_FILE))


def get_tokenizer(config, workdir, reading=False):
  """The tokenizer of config.data.tokenizer, else the workdir's, else (training only) one
  trained on data.train's captions by process 0 and read by every process.

  config.data.tokenizer is any spec open_tokenizer reads. The workdir's is
  WORKDIR/tokenizer.model, else the folder WORKDIR/tokenizer/ (an imported model's
  vocabulary: a Hugging Face byte-level BPE folder, or a copy_tokenizer copy).

  `reading` (evaluation, captioning): a run is only ever read with the tokenizer it was
  trained with, so a missing one is an error, never a new one written into the workdir.
  """
  path = config.data.tokenizer
  folder = os.path.join(workdir, "tokenizer")
  if (not path and not tf.io.gfile.exists(os.path.join(workdir, "tokenizer.model")) and
      is_tokenizer_folder(folder)):
    path = folder  # an imported model's vocabulary (models/import_hf_lm.py, exports)
  if not path:
    path = os.path.join(workdir, "tokenizer.model")
    if reading and not tf.io.gfile.exists(path):
      raise ValueError(f"{path} is missing: the run's tokenizer is needed to read it (set "
                       f"config.data.tokenizer if the run was trained with another file)")
    if not reading:
      _train_once(config, path)
  try:
    tok = open_tokenizer(path, config.model.context_length)
  except ValueError as e:
    raise ValueError(f"config.data.tokenizer={config.data.tokenizer!r}: {e}") from None
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
