"""Byte-level BPE (data/bpe.py): ids equal transformers' GPT2Tokenizer's + 1 on a small
vocabulary trained here, the project's EOS/pad/truncation layout, and get_tokenizer."""
import json
import os
import random

import numpy as np
import pytest

from vlp_jax import config_lib
from vlp_jax import data
from vlp_jax.data import bpe

WORDS = ["a", "dog", "cat", "running", "on", "the", "grass", "don't", "it's", "we'll",
         "they're", "I've", "I'm", "she'd", "DON'T", "café", "naïve", "東京", "Привет",
         "Ελληνικά", "😀", "🐕‍🦺", "2024", "3.14", "1,000", "x²", "--", "...", "(hello)",
         "e-mail", "#tag", "@user", "100%", "$5", "\u00a0", "über", "ﬁ", "Ω", "\t"]
SEPARATORS = [" ", " ", " ", "  ", "   ", "\n", "\n\n", " \n ", "\t", ", ", ". "]


def _sentences(n, seed):
  rng = random.Random(seed)
  out = []
  for _ in range(n):
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 12))]
    text = words[0]
    for w in words[1:]:
      text += rng.choice(SEPARATORS) + w
    out.append(rng.choice(["", " ", "  ", "\n"]) + text + rng.choice(["", " ", "!", "\n", "  "]))
  return out


TRAIN = _sentences(400, 0)
# Held-out strings: new word orders, raw code points and edge cases the training never saw.
_rng = random.Random(1)
TEXTS = _sentences(300, 2) + [
    "".join(chr(_rng.randint(32, 0x2fff)) for _ in range(_rng.randint(1, 20)))
    for _ in range(100)] + [
        "", " ", "   ", "\n", "a  b", "a \n b", "it's   don't", "'s", "''", "'ll've",
        "unseen Zebra quokka 98765", "ÿ\u0100\u0120", "\u0000\u001f\u007f", "tab\tend\t",
        "trailing spaces   ", "🇫🇷🇩🇪", "a" * 50]


def _folder(tmp_path_factory, name, specials, files=None):
  """A Hugging Face tokenizer folder: vocab.json + merges.txt trained here, plus `files`."""
  tokenizers = pytest.importorskip("tokenizers")
  folder = str(tmp_path_factory.mktemp(name))
  trainer = tokenizers.ByteLevelBPETokenizer()
  trainer.train_from_iterator(TRAIN, vocab_size=600, min_frequency=1,
                              special_tokens=specials, show_progress=False)
  trainer.save_model(folder)
  for file, content in (files or {}).items():
    with open(os.path.join(folder, file), "w") as f:
      json.dump(content, f)
  return folder


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory):
  """GPT-2's layout: <|endoftext|> the only special token, named by config.json's id."""
  return _folder(tmp_path_factory, "gpt2", ["<|endoftext|>"],
                 {"config.json": {"eos_token_id": 0, "bos_token_id": 0}})


@pytest.fixture(scope="module")
def opt_folder(tmp_path_factory):
  """OPT's layout: <s> <pad> </s> <unk> first, </s> both BOS and EOS."""
  tokens = {"bos_token": "</s>", "eos_token": {"content": "</s>", "lstrip": False},
            "unk_token": "<unk>", "pad_token": "<pad>"}
  return _folder(tmp_path_factory, "opt", ["<s>", "<pad>", "</s>", "<unk>"],
                 {"special_tokens_map.json": tokens,
                  "tokenizer_config.json": {
                      "add_bos_token": True, **tokens,
                      "added_tokens_decoder": {"0": {"content": "<s>", "special": True}}}})


def _hf(folder, **kwargs):
  transformers = pytest.importorskip("transformers")
  return transformers.GPT2Tokenizer(os.path.join(folder, "vocab.json"),
                                    os.path.join(folder, "merges.txt"), **kwargs)


@pytest.mark.parametrize("layout", ["gpt2", "opt"])
def test_ids_are_transformers_plus_one(layout, request):
  folder = request.getfixturevalue(f"{layout}_folder")
  hf = _hf(folder, add_bos_token=False)
  tok = bpe.BpeTokenizer(folder, context_length=512)
  for text in TRAIN[:100] + TEXTS:
    want = [i + 1 for i in hf(text)["input_ids"]]
    assert tok.encode_ids(text) == want, repr(text)
  rows = tok.encode(TEXTS)
  for row, text in zip(rows, TEXTS):
    want = [i + 1 for i in hf(text)["input_ids"]]
    assert list(row[:len(want) + 1]) == want + [tok.eos_id], repr(text)
  assert tok.vocab_size == hf.vocab_size + 1  # vocab.json only (hf adds <|endoftext|> to OPT)


def test_special_tokens(gpt2_folder, opt_folder):
  gpt2, opt = bpe.BpeTokenizer(gpt2_folder, 8), bpe.BpeTokenizer(opt_folder, 8)
  assert (gpt2.eos_id, gpt2.unk_id, gpt2.special_ids()) == (1, -1, (0, 1))
  assert (opt.eos_id, opt.unk_id, opt.special_ids()) == (3, 4, (0, 1, 2, 3, 4))
  # No BOS, unlike OPT's own tokenizer; a special token written in a caption is plain text.
  hf = _hf(opt_folder, add_bos_token=True, bos_token="</s>")
  assert hf("a dog")["input_ids"][0] == 2
  assert list(opt.encode(["a dog"])[0, :3]) == [i + 1 for i in hf("a dog")["input_ids"][1:]] + [3]
  row = opt.encode(["a </s> dog"])[0]
  assert list(row).count(3) == 1 and opt.decode([row]) == ["a </s> dog"]
  for name in ("cls", "mask", "dec", "sep"):
    with pytest.raises(ValueError, match="has no special symbol") as info:
      opt.special_id(name)
    assert opt_folder in str(info.value) and "\n" not in str(info.value)


def test_layout_and_round_trip(opt_folder):
  tok = bpe.BpeTokenizer(opt_folder, context_length=256)
  texts = TRAIN[:50] + TEXTS
  tokens = tok.encode(texts)
  assert tokens.dtype == np.int32 and tokens.shape == (len(texts), 256)
  assert 0 < tokens.max() < tok.vocab_size
  for row, text in zip(tokens, texts):
    length = len(tok.encode_ids(text)) + 1
    assert row[length - 1] == tok.eos_id and (row[length:] == 0).all()
    assert tok.eos_id not in row[:length - 1] and (row[:length] != 0).all()
  assert tok.decode(tokens) == texts
  assert list(tok.encode([""])[0, :2]) == [tok.eos_id, 0]
  # Decoding stops at EOS, skips pad and the other special tokens, ignores ids past the
  # vocabulary (a padded embedding) and turns a cut character into U+FFFD.
  ids = tok.encode_ids("a dog 東京")
  row = [2, ids[0], 0, 5000, *ids[1:], tok.eos_id, *ids]
  assert tok.decode(np.array([row])) == ["a dog 東京"]
  assert tok.decode([tok.encode_ids("東")[:1]])[0] == "\ufffd"


def test_truncation_keeps_prefix_first_and_eos_last(gpt2_folder):
  tok = bpe.BpeTokenizer(gpt2_folder, context_length=8)
  text = " ".join(WORDS)
  ids = tok.encode_ids(text)
  row = tok.encode([text])[0]
  assert list(row) == ids[:7] + [tok.eos_id]
  row = tok.encode([text], prefix=5)[0]
  assert list(row) == [5] + ids[:6] + [tok.eos_id]
  assert tok.decode([row[1:]]) == tok.decode([ids[:6]])
  with pytest.raises(ValueError, match="prefix"):
    tok.encode(["a"], prefix=tok.vocab_size)
  assert list(bpe.BpeTokenizer(gpt2_folder, 1).encode([text])[0]) == [tok.eos_id]


def _config(tokenizer="", vocab_size=1000, context_length=16):
  c = config_lib.base_config()
  c.data.tokenizer = tokenizer
  c.model.vocab_size = vocab_size
  c.model.context_length = context_length
  return c


def test_get_tokenizer_reads_folders(opt_folder, tmp_path):
  tok = data.get_tokenizer(_config(opt_folder), "")
  assert isinstance(tok, bpe.BpeTokenizer) and tok.model_path == opt_folder
  assert tok.encode(["a dog"]).shape == (1, 16)
  with pytest.raises(ValueError, match="model.vocab_size=100"):
    data.get_tokenizer(_config(opt_folder, vocab_size=100), "")
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "vocab.json").write_text(open(os.path.join(opt_folder, "vocab.json")).read())
  with pytest.raises(ValueError, match="config.data.tokenizer=.* has no merges.txt"):
    data.get_tokenizer(_config(str(broken)), "")

  # A workdir's tokenizer/ folder (an imported language model's) when it has no
  # tokenizer.model, for training and reading alike; tokenizer.model wins when both exist.
  workdir = tmp_path / "work"
  (workdir / "tokenizer").mkdir(parents=True)
  for name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
    (workdir / "tokenizer" / name).write_text(open(os.path.join(opt_folder, name)).read())
  for reading in (False, True):
    tok = data.get_tokenizer(_config(), str(workdir), reading=reading)
    assert isinstance(tok, bpe.BpeTokenizer) and tok.eos_id == 3
  model = data.train_tokenizer(TRAIN, 300, str(workdir / "tokenizer.model"))
  tok = data.get_tokenizer(_config(), str(workdir), reading=True)
  assert isinstance(tok, data.Tokenizer) and tok.model_path == model


def test_bad_folders_are_clear_errors(gpt2_folder, tmp_path):
  def copy(name, **replace):
    folder = tmp_path / name
    folder.mkdir()
    for file in ("vocab.json", "merges.txt"):
      text = replace.get(file) or open(os.path.join(gpt2_folder, file)).read()
      (folder / file).write_text(text)
    return str(folder)

  vocab = json.load(open(os.path.join(gpt2_folder, "vocab.json")))
  no_eos = {p: i for p, i in vocab.items() if p != "<|endoftext|>"}
  with pytest.raises(ValueError, match="names no EOS token"):
    bpe.BpeTokenizer(copy("no_eos", **{"vocab.json": json.dumps(no_eos)}), 8)
  no_byte = {p: i for p, i in vocab.items() if p != "Ā"}
  with pytest.raises(ValueError, match="not a byte-level BPE vocabulary"):
    bpe.BpeTokenizer(copy("no_byte", **{"vocab.json": json.dumps(no_byte)}), 8)
  named = copy("named_eos")
  with open(os.path.join(named, "special_tokens_map.json"), "w") as f:
    json.dump({"eos_token": "</s>", "pad_token": "<pad>"}, f)
  with pytest.raises(ValueError, match="eos_token '</s>' is not in vocab.json"):
    bpe.BpeTokenizer(named, 8)
  with pytest.raises(ValueError, match="merges.txt: line"):
    bpe.BpeTokenizer(copy("bad_merge", **{"merges.txt": "#version: 0.2\nzz qq\n"}), 8)
