"""An external SentencePiece model used as SigLIP uses it (Hugging Face's SiglipTokenizer).

`config.data.tokenizer=spm:PATH`, PATH a spiece.model (T5's layout: pad 0, </s> 1, <unk> 2)
or a folder holding one. Text goes through SiglipTokenizer's steps (transformers 5,
models/siglip/tokenization_siglip.py): "</s>" and "<unk>" written in a caption are those
tokens and swallow the whitespace beside them; every other part is lower-cased, loses ASCII
punctuation (string.punctuation) and repeated whitespace, and is encoded as "<unk>" + part
with the pieces of "<unk>" dropped (Hugging Face's way round sentencepiece's dummy prefix).

Layout: pieces, </s>, then </s> up to context_length (SigLIP pads with EOS: its text tower
pools the last position with no mask, so the padding id is part of what its weights saw);
truncated rows keep </s> last, and a caption ending in "</s>" gets no second one. A model
file trained by vlp_jax (plain PATH, tokenizer.Tokenizer) is read without these steps.
"""
import re
import string

import numpy as np
import sentencepiece as spm

from vlp_jax.data import token_layout
from vlp_jax.data.tf_setup import tf

KIND = "spm"
MODEL_FILE = "spiece.model"  # the file's name in a Hugging Face folder
SPIECE_UNDERLINE = "\u2581"
EOS_PIECE, UNK_PIECE = "</s>", "<unk>"  # SiglipTokenizer's eos (also pad) and unk tokens
_SPECIAL = re.compile(f"({re.escape(EOS_PIECE)}|{re.escape(UNK_PIECE)})")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonicalize(text):
  """SiglipTokenizer.canonicalize_text: lower case, no ASCII punctuation, single spaces."""
  text = text.lower().translate(_PUNCTUATION)
  return re.sub(r"\s+", " ", text).strip()


class SpmTokenizer:
  """Encodes captions to int32 rows like SiglipTokenizer(padding="max_length",
  truncation=True): [prefix,] pieces, </s>, then </s>."""

  kind = KIND

  def __init__(self, model_path, context_length):
    self.model_path = model_path
    self.context_length = context_length
    file = model_path
    if tf.io.gfile.isdir(model_path):
      file = f"{model_path.rstrip('/')}/{MODEL_FILE}"
      if not tf.io.gfile.exists(file):
        raise ValueError(f"SentencePiece folder {model_path} has no {MODEL_FILE}")
    self.files = [file]
    with tf.io.gfile.GFile(file, "rb") as f:  # local or gs:// paths
      proto = f.read()
    self.sp = spm.SentencePieceProcessor()
    try:
      self.sp.load_from_serialized_proto(proto)
    except (RuntimeError, OSError) as e:
      raise ValueError(f"{file} is not a SentencePiece model ({e})") from None
    self.vocab_size = self.sp.get_piece_size()
    ids = {}
    for piece in (EOS_PIECE, UNK_PIECE):
      ids[piece] = self.sp.piece_to_id(piece)
      if self.sp.id_to_piece(ids[piece]) != piece:
        raise ValueError(f"{file} has no {piece} piece (SigLIP's vocabulary has </s> and "
                         f"<unk>, like T5's)")
    self.eos_id = self.pad_id = ids[EOS_PIECE]
    self.unk_id = ids[UNK_PIECE]
    self._special_ids = ids
    self._unk_length = len(self.sp.encode(UNK_PIECE, out_type=str))

  def special_id(self, name):
    """SigLIP's vocabulary has none of vlp_jax's special symbols, so this always raises."""
    raise ValueError(f"Tokenizer {self.model_path!r} (SentencePiece, SigLIP's layout) has no "
                     f"special symbol {name!r} ([CLS], [MASK], [ENC], [DEC] come with "
                     f"tokenizers trained by vlp_jax), which this model family needs")

  def special_ids(self):
    """Sorted ids never masked or drawn as replacements: </s> (also padding), <unk> and the
    model's other control pieces (T5's <pad>)."""
    control = {i for i in range(self.vocab_size)
               if self.sp.is_control(i) or self.sp.is_unknown(i)}
    return tuple(sorted(control | {self.pad_id, self.eos_id, self.unk_id}))

  def _part_pieces(self, part):
    """SiglipTokenizer._tokenize: pieces of one part between special tokens."""
    pieces = self.sp.encode(UNK_PIECE + canonicalize(part), out_type=str)
    return pieces[self._unk_length:] if len(pieces) >= self._unk_length else pieces

  def encode_ids(self, text):
    """Ids of one text without the final </s>, as SiglipTokenizer.tokenize splits it."""
    parts = _SPECIAL.split(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "))
    for i in range(1, len(parts), 2):  # odd parts are special tokens: strip beside them
      parts[i + 1] = parts[i + 1].lstrip()
      parts[i - 1] = parts[i - 1].rstrip()
    pieces = []
    for i, part in enumerate(parts):
      if i % 2:
        pieces.append(part)
      elif part:
        pieces.extend(self._part_pieces(part))
    if len(pieces) > 1 and pieces[0] == SPIECE_UNDERLINE and pieces[1] in self._special_ids:
      pieces = pieces[1:]
    return [self._special_ids.get(p) if p in self._special_ids else self.sp.piece_to_id(p)
            for p in pieces]

  def encode(self, texts, prefix=None):
    """np.int32 [len(texts), context_length]: [prefix,] pieces, </s>, </s>... Truncated
    rows keep </s> last."""
    return token_layout.rows(self, [self.encode_ids(t) for t in texts], prefix,
                             eos_in_pieces=True)

  def decode(self, tokens):
    """Text of each row up to its first </s> (lower case, without punctuation: cleaning
    is not undone); <unk> decodes as sentencepiece writes it."""
    texts = []
    for row in np.asarray(tokens):
      ids = [int(i) for i in row if 0 <= int(i) < self.vocab_size]
      if self.eos_id in ids:
        ids = ids[:ids.index(self.eos_id)]
      texts.append(self.sp.decode(ids))
    return texts
