"""Byte-level BPE (GPT-2, OPT) read from a Hugging Face tokenizer folder.

The folder holds vocab.json and merges.txt, optionally tokenizer_config.json,
special_tokens_map.json and config.json, which name the EOS token (GPT-2 <|endoftext|>,
OPT </s>). The algorithm is GPT-2's: text is split by its pre-tokenisation regex, each
piece's UTF-8 bytes are mapped to printable characters and merged pair by pair in merge
rank order.

Ids: ours = Hugging Face's + 1, so that 0 stays padding (models/import_hf_lm.py prepends
a zero embedding row). The layout is the project's: pieces, EOS, pad 0; no BOS, although
OPT's own tokenizer starts every text with </s> (the decoder reads EOS as its start
symbol anyway, models/language_model.py). Special tokens written in a caption are encoded
as plain text: an <|endoftext|> inside a caption must not end it early.
"""
import functools
import json
import os

import numpy as np
import regex

from vlp_jax.data import token_layout
from vlp_jax.data.tf_setup import tf

# GPT-2's pre-tokenisation (openai/gpt-2 src/encoder.py, HF's ByteLevel pre-tokenizer).
PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
# Files of a Hugging Face folder that may name special tokens, in the order they are trusted.
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                "mask_token")
CACHE_SIZE = 1 << 16  # pre-tokens whose BPE is remembered; cleared when full


@functools.lru_cache(maxsize=1)
def bytes_to_unicode():
  """Byte -> printable character, GPT-2's table: vocab.json spells bytes this way so
  that no piece holds whitespace or control characters."""
  kept = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) +
          list(range(ord("®"), ord("ÿ") + 1)))
  table, extra = {}, 0
  for b in range(256):
    if b in kept:
      table[b] = chr(b)
    else:
      table[b] = chr(256 + extra)
      extra += 1
  return table


def _read(folder, name):
  with tf.io.gfile.GFile(os.path.join(folder, name), "r") as f:  # local or gs:// paths
    return f.read()


def _token_text(value):
  """A special token as the config files write it: a string or an AddedToken dict."""
  if isinstance(value, dict):
    return value.get("content")
  return value if isinstance(value, str) else None


class BpeTokenizer:
  """Encodes captions to fixed-length int32 ids like tokenizer.Tokenizer: [prefix],
  pieces, EOS, then pad_id=0, with ids shifted one up from Hugging Face's."""

  pad_id = 0

  def __init__(self, model_path, context_length):
    self.model_path = model_path
    self.context_length = context_length
    vocab = json.loads(_read(model_path, "vocab.json"))  # piece -> Hugging Face id
    configs = {}
    for name in CONFIG_FILES + ("config.json",):
      if tf.io.gfile.exists(os.path.join(model_path, name)):
        configs[name] = json.loads(_read(model_path, name))
    # Tokens added beside vocab.json (transformers' tokenizer_config.json format).
    added = configs.get("tokenizer_config.json", {}).get("added_tokens_decoder", {})
    for i, token in added.items():
      vocab.setdefault(token["content"], int(i))
    self.encoder = vocab
    self.decoder = {i: piece for piece, i in vocab.items()}
    self.vocab_size = max(vocab.values()) + 2  # + 1 for the shift, + 1 for a size
    self.byte_encoder = bytes_to_unicode()
    self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
    missing = [c for c in self.byte_encoder.values() if c not in vocab]
    if missing:
      raise ValueError(f"{model_path}/vocab.json lacks {len(missing)} of the 256 byte "
                       f"pieces: not a byte-level BPE vocabulary")
    self.ranks = self._read_merges()
    self._cache = {}

    # Special tokens: named in the config files; EOS falls back to config.json's id, then
    # GPT-2's <|endoftext|>.
    named = {}
    for name in CONFIG_FILES:
      for key in SPECIAL_KEYS:
        text = _token_text(configs.get(name, {}).get(key))
        if text is not None:
          named.setdefault(key, text)
    if "eos_token" in named and named["eos_token"] not in vocab:
      raise ValueError(f"{model_path}: eos_token {named['eos_token']!r} is not in vocab.json")
    # Others missing from vocab.json (added in a format not read here) are never encoded.
    named = {key: text for key, text in named.items() if text in vocab}
    specials = {vocab[t] for t in named.values()}
    specials |= {int(i) for i, t in added.items() if t.get("special")}
    if "eos_token" in named:
      eos = vocab[named["eos_token"]]
    elif isinstance(configs.get("config.json", {}).get("eos_token_id"), int):
      eos = configs["config.json"]["eos_token_id"]
    elif "<|endoftext|>" in vocab:
      eos = vocab["<|endoftext|>"]
    else:
      raise ValueError(f"{model_path} names no EOS token (eos_token in tokenizer_config.json "
                       f"or special_tokens_map.json, eos_token_id in config.json)")
    if eos not in self.decoder:
      raise ValueError(f"{model_path}/config.json: eos_token_id {eos} is not in vocab.json")
    self.eos_id = eos + 1
    # Byte-level BPE spells every text, so an unk is only kept when the folder names one.
    self.unk_id = vocab[named["unk_token"]] + 1 if "unk_token" in named else -1
    self._specials = {i + 1 for i in specials | {eos}}

  def _read_merges(self):
    """(left, right) -> rank; rank 0 merges first."""
    ranks = {}
    for line in _read(self.model_path, "merges.txt").split("\n"):
      if line.startswith("#version") or not line.strip():
        continue
      pair = tuple(line.split())
      if len(pair) != 2 or pair[0] + pair[1] not in self.encoder:
        raise ValueError(f"{self.model_path}/merges.txt: line {line!r} is not two pieces "
                         f"whose merge is in vocab.json")
      ranks.setdefault(pair, len(ranks))
    return ranks

  def special_id(self, name):
    """Id of a special symbol: GPT-2 and OPT vocabularies have none of vlp_jax's
    ([CLS], [MASK], [ENC], [DEC]), so this always raises."""
    raise ValueError(f"Tokenizer {self.model_path!r} (byte-level BPE) has no special symbol "
                     f"{name!r}, which this model family needs")

  def special_ids(self):
    """Sorted tuple of the ids never masked or drawn as replacements: pad, EOS and the
    folder's other special tokens (OPT's <s>, <pad>, <unk>)."""
    ids = {self.pad_id, self.eos_id, self.unk_id, *self._specials}
    return tuple(sorted(i for i in ids if i >= 0))

  def bpe(self, word):
    """Pieces of one pre-token (already byte-mapped), merged by rank as GPT-2 does."""
    if word in self._cache:
      return self._cache[word]
    parts = list(word)
    while len(parts) > 1:
      pairs = {(a, b) for a, b in zip(parts, parts[1:])}
      best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
      if best not in self.ranks:
        break
      merged, i = [], 0
      while i < len(parts):
        if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
          merged.append(parts[i] + parts[i + 1])
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    if len(self._cache) >= CACHE_SIZE:
      self._cache.clear()
    self._cache[word] = parts
    return parts

  def encode_ids(self, text):
    """Our ids (Hugging Face's + 1) of one text, without EOS."""
    ids = []
    for word in PATTERN.findall(text):
      mapped = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
      ids.extend(self.encoder[p] + 1 for p in self.bpe(mapped))
    return ids

  def encode(self, texts, prefix=None):
    """np.int32 [len(texts), context_length]: [prefix,] pieces, EOS, pad 0.

    Truncated rows keep the prefix first and EOS last, as tokenizer.Tokenizer's do.
    """
    return token_layout.rows(self, [self.encode_ids(text) for text in texts], prefix)

  def decode(self, tokens):
    """Text of each row, up to its first EOS, without pad and special tokens.

    Ids past the vocabulary decode to nothing: a model's embedding may be padded beyond it
    (OPT's holds 50272 rows for 50265 tokens). Bytes that are not UTF-8 (a row cut inside
    a character) become U+FFFD.
    """
    skip = self._specials - {self.unk_id}
    texts = []
    for row in np.asarray(tokens):
      ids = [int(i) for i in row]
      if self.eos_id in ids:
        ids = ids[:ids.index(self.eos_id)]
      pieces = "".join(self.decoder.get(i - 1, "") for i in ids
                       if i != self.pad_id and i not in skip)
      data = bytearray()
      for c in pieces:
        b = self.byte_decoder.get(c)
        data.extend(c.encode("utf-8") if b is None else (b,))
      texts.append(data.decode("utf-8", errors="replace"))
    return texts


def is_bpe_folder(path):
  """True for a directory holding a Hugging Face vocab.json."""
  return tf.io.gfile.isdir(path) and tf.io.gfile.exists(os.path.join(path, "vocab.json"))
