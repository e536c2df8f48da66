"""OpenAI CLIP's byte-level BPE, encoding text as open_clip's SimpleTokenizer does.

`config.data.tokenizer=clip_bpe:PATH`, PATH open_clip's merges file
(open_clip/bpe_simple_vocab_16e6.txt.gz, shipped inside open_clip_torch) or a Hugging Face
CLIP tokenizer folder (tokenizer.json, or vocab.json + merges.txt). From the merges file the
vocabulary is built as SimpleTokenizer builds it: the 256 byte pieces, the same with "</w>"
(end of word), one piece per merge (its first 48894), then <start_of_text> and
<end_of_text>: 49408 ids, the ids of open_clip and of Hugging Face's CLIP folders alike.
Hugging Face's `tokenizers` applies the merges (their maintained, tested BPE).

Text is cleaned as open_clip does: ftfy.fix_text, HTML entities unescaped twice, whitespace
collapsed, lower case; then split by CLIP's pattern. ftfy is used when installed; without
it (it is not a dependency) `fix_text_without_ftfy` does ftfy's character-level fixes but
not its repair of mis-decoded text ("cafÃ©" stays, ftfy makes it "café"), so ids differ
from open_clip's for such captions only (tests/test_clip_bpe.py lists what differs).

Layout, open_clip's tokenize: <start_of_text>, pieces, <end_of_text>, then 0 up to
context_length, truncated so that <end_of_text> stays last. 0 is also the piece "!", but
the text tower pools at the first <end_of_text> and never reads past it. A caption that
spells <start_of_text> or <end_of_text> gets that id, as in open_clip.
"""
import functools
import gzip
import html
import json
import os
import re
import unicodedata

from absl import logging
import numpy as np
import regex
import tokenizers
from tokenizers import models
from tokenizers import pre_tokenizers

from vlp_jax.data import bpe, token_layout
from vlp_jax.data.tf_setup import tf

try:
  import ftfy  # pylint: disable=g-import-not-at-top
except ImportError:
  ftfy = None

KIND = "clip_bpe"
# Merges SimpleTokenizer reads from its file (lines 1..48894 of 262k): 49152 ids less the
# 256 bytes and the 2 special tokens.
OPENAI_MERGES = 49152 - 256 - 2
SPECIAL_PIECES = {"open_clip": ("<start_of_text>", "<end_of_text>"),
                  "hugging_face": ("<|startoftext|>", "<|endoftext|>")}
# CLIP's pre-tokenisation (after the special tokens), matched case-insensitively.
PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
SUFFIX = "</w>"

# ftfy's character-level fixes (ftfy/chardata.py), applied in its order when ftfy is absent.
_LIGATURES = {"Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ",
              "ǅ": "Dž", "ǆ": "dž", "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj",
              "ǌ": "nj", "ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt",
              "ﬆ": "st"}
_HTML_ENTITY = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_TERMINAL_ESCAPE = re.compile("\033\\[((?:\\d|;)*)([a-zA-Z])")


@functools.lru_cache(maxsize=1)
def _character_tables():
  """(C1 controls as Windows-1252 + ligatures + full width, quotes + control characters)."""
  first = {ord(c): s for c, s in _LIGATURES.items()}
  for i in range(0x80, 0xa0):
    try:
      first[i] = bytes([i]).decode("cp1252")
    except UnicodeDecodeError:
      pass  # ftfy's sloppy-windows-1252 keeps the five undefined bytes as they are
  first[0x3000] = " "
  for i in range(0xff01, 0xfff0):
    wide = unicodedata.normalize("NFKC", chr(i))
    if wide != chr(i):
      first[i] = wide
  second = {ord(c): "'" for c in "\u02bc\u2018\u2019\u201a\u201b"}
  second.update({ord(c): '"' for c in "\u201c\u201d\u201e\u201f"})
  for i in [*range(0x00, 0x09), 0x0b, *range(0x0e, 0x20), 0x7f, *range(0x206a, 0x2070),
            0xfeff, *range(0xfff9, 0xfffd)]:
    second[i] = None
  return first, second


def fix_text_without_ftfy(text):
  """ftfy.fix_text's steps that need no statistics: HTML entities (when the text has no
  "<"), C1 controls, ligatures, full-width forms, curly quotes, terminal escapes, control
  characters, NFC. Mojibake is left as it is."""
  if "<" not in text:
    text = _HTML_ENTITY.sub(lambda m: html.unescape(m.group(0)), text)
  first, second = _character_tables()
  text = _TERMINAL_ESCAPE.sub("", text.translate(first))
  return unicodedata.normalize("NFC", text.translate(second))


@functools.lru_cache(maxsize=1)
def _warn_without_ftfy():
  logging.warning("ftfy is not installed: CLIP captions are cleaned without its repair of "
                  "mis-decoded text (pip install ftfy for open_clip's exact ids)")


def clean(text, use_ftfy=None):
  """open_clip's cleaning ("lower"): fix_text, HTML unescaped twice, whitespace, lower case.

  `use_ftfy`: None uses ftfy when installed; False the fallback (tests compare the two).
  """
  if use_ftfy is None:
    use_ftfy = ftfy is not None
  text = ftfy.fix_text(text) if use_ftfy else fix_text_without_ftfy(text)
  text = html.unescape(html.unescape(text)).strip()
  return " ".join(text.split()).lower()


def _byte_pieces():
  """The 256 byte pieces in open_clip's vocabulary order (printable bytes first, which is
  the order of the characters they are spelt with)."""
  return sorted(bpe.bytes_to_unicode().values())


def _read(path, mode="r"):
  with tf.io.gfile.GFile(path, mode) as f:  # local or gs:// paths
    return f.read()


def _from_merges_file(path):
  """(vocab piece -> id, merges, (start, end) pieces) from open_clip's .txt.gz."""
  try:
    lines = gzip.decompress(_read(path, "rb")).decode("utf-8").split("\n")
  except (OSError, EOFError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not a gzip-compressed UTF-8 merges file like open_clip's "
                     f"bpe_simple_vocab_16e6.txt.gz ({e})") from None
  merges = []
  for number, line in enumerate(lines[1:OPENAI_MERGES + 1], start=2):
    if not line.strip():
      continue  # a short file's final newline; open_clip's has none in its first 48894
    pair = tuple(line.split())
    if len(pair) != 2:
      raise ValueError(f"{path}: line {number} {line!r} is not two pieces")
    merges.append(pair)
  pieces = _byte_pieces()
  specials = SPECIAL_PIECES["open_clip"]
  vocab = pieces + [p + SUFFIX for p in pieces] + ["".join(m) for m in merges] + list(specials)
  return {piece: i for i, piece in enumerate(vocab)}, merges, specials, [path]


def _from_folder(path):
  """(vocab, merges, (start, end) pieces, files) from a Hugging Face CLIP tokenizer folder."""
  files = [os.path.join(path, "tokenizer.json")]
  try:
    if tf.io.gfile.exists(files[0]):
      model = json.loads(_read(files[0])).get("model") or {}
      if model.get("type") != "BPE" or model.get("end_of_word_suffix") != SUFFIX:
        raise ValueError(f"{files[0]} is not a CLIP BPE model (type BPE, end_of_word_suffix "
                         f"{SUFFIX!r})")
      vocab = model["vocab"]
      merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
                for m in model["merges"]]
    else:
      files = [os.path.join(path, name) for name in ("vocab.json", "merges.txt")]
      for file in files:
        if not tf.io.gfile.exists(file):
          raise ValueError(f"CLIP tokenizer folder {path} has neither tokenizer.json nor "
                           f"{os.path.basename(file)}")
      vocab = json.loads(_read(files[0]))
      merges = [tuple(line.split()) for line in _read(files[1]).split("\n")
                if line.strip() and not line.startswith("#version")]
  except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"{files[0]} is not a Hugging Face tokenizer file ({e!r})") from None
  for pair in merges:
    if len(pair) != 2:
      raise ValueError(f"{files[-1]}: merge {' '.join(pair)!r} is not two pieces")
  specials = next((s for s in SPECIAL_PIECES.values() if all(p in vocab for p in s)), None)
  if specials is None:
    raise ValueError(f"{files[0]} has no start and end of text tokens "
                     f"({' '.join(SPECIAL_PIECES['hugging_face'])})")
  return vocab, merges, specials, files


class ClipBpeTokenizer:
  """Encodes captions to int32 rows like open_clip.tokenize: [prefix,] <start_of_text>,
  pieces, <end_of_text>, then 0."""

  kind = KIND
  pad_id = 0
  unk_id = -1  # byte-level: every text is spelt, nothing is unknown

  def __init__(self, model_path, context_length):
    self.model_path = model_path
    self.context_length = context_length
    read = _from_folder if tf.io.gfile.isdir(model_path) else _from_merges_file
    vocab, merges, specials, self.files = read(model_path)
    missing = [p for p in _byte_pieces() if p not in vocab or p + SUFFIX not in vocab]
    if missing:
      raise ValueError(f"{self.files[0]} lacks {len(missing)} of the 256 byte pieces (or "
                       f"their {SUFFIX} forms): not a CLIP BPE vocabulary")
    self.start_id, self.eos_id = (vocab[p] for p in specials)
    self.vocab_size = max(vocab.values()) + 1
    self.decoder = {i: piece for piece, i in vocab.items()}
    try:
      model = models.BPE(vocab, merges, end_of_word_suffix=SUFFIX,
                         continuing_subword_prefix="")
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{self.files[-1]}: merges that do not fit the vocabulary "
                       f"({e})") from None
    self._bpe = tokenizers.Tokenizer(model)
    # The pattern below splits; the pre-tokenizer only maps each word's bytes to pieces.
    self._bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                       use_regex=False)
    self._bpe.add_special_tokens(list(specials))  # a caption's "<end_of_text>" word
    self._pattern = regex.compile("|".join(regex.escape(p) for p in specials) + "|" + PATTERN,
                                  regex.IGNORECASE)
    self._byte_decoder = {c: b for b, c in bpe.bytes_to_unicode().items()}
    if ftfy is None:
      _warn_without_ftfy()

  def special_id(self, name):
    """CLIP's vocabulary has none of vlp_jax's special symbols, so this always raises."""
    raise ValueError(f"Tokenizer {self.model_path!r} (CLIP BPE) has no special symbol "
                     f"{name!r} ([CLS], [MASK], [ENC], [DEC] come with tokenizers trained "
                     f"by vlp_jax), which this model family needs")

  def special_ids(self):
    """Sorted ids never masked or drawn as replacements: padding, start and end of text."""
    return tuple(sorted({self.pad_id, self.start_id, self.eos_id}))

  def encode_ids(self, text):
    """Ids of one text's pieces, without start and end of text."""
    words = self._pattern.findall(clean(text))
    if not words:
      return []
    return self._bpe.encode(words, is_pretokenized=True, add_special_tokens=False).ids

  def encode(self, texts, prefix=None):
    """np.int32 [len(texts), context_length]: [prefix,] <start_of_text>, pieces,
    <end_of_text>, 0... Truncated rows keep <end_of_text> last."""
    return token_layout.rows(self, [self.encode_ids(t) for t in texts], prefix,
                             start_id=self.start_id)

  def decode(self, tokens):
    """Text of each row up to its first <end_of_text>: words joined by single spaces, in
    lower case (cleaning is not undone). Ids past the vocabulary decode to nothing;
    bytes that are not UTF-8 (a row cut inside a character) become U+FFFD."""
    texts = []
    for row in np.asarray(tokens):
      ids = [int(i) for i in row]
      if self.eos_id in ids:
        ids = ids[:ids.index(self.eos_id)]
      data = bytearray()
      for i in ids:
        piece = self.decoder.get(i) if i != self.start_id else None
        if piece is None:
          continue
        # Every piece is spelt in byte characters, "</w>" (a word's end) included.
        word_end = piece.endswith(SUFFIX)
        if word_end:
          piece = piece[:-len(SUFFIX)]
        for c in piece:  # a folder's piece outside the byte table is written as it is
          b = self._byte_decoder.get(c)
          data.extend(c.encode("utf-8") if b is None else (b,))
        if word_end:
          data.extend(b" ")
      texts.append(data.decode("utf-8", errors="replace").strip())
    return texts
