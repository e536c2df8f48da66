"""SigLIP-style SentencePiece (data/spm_tokenizer.py): ids, padding and truncation equal
transformers' SiglipTokenizer's on a small T5-layout model trained here, the layout without
transformers, and get_tokenizer's spm: specs."""
import io
import os
import random

import numpy as np
import pytest
import sentencepiece as spm

from vlp_jax import config_lib
from vlp_jax import data
from vlp_jax.data import spm_tokenizer
from vlp_jax.data import tokenizer as tokenizer_lib

WORDS = ["a", "dog", "cat", "running", "on", "the", "grass", "Don't", "it's", "café",
         "naïve", "東京", "Привет", "2024", "3.14", "e-mail", "HELLO", "World", "x²", "(hi)"]
_rng = random.Random(0)
TRAIN = [" ".join(_rng.choice(WORDS) for _ in range(_rng.randint(1, 8))) for _ in range(300)]
TRICKY = [
    "", " ", "a dog", "A DOG!", "  The grass, the CAT.  ", "don't stop", "it’s “curly”",
    "café naïve Ångström", "東京 dog 😀", "a\tb\nc\r\nd", "e-mail: X@Y.com (hi) [x] {y}",
    "3.14 1,000 $5 100%", "hello </s> world", "</s>", "x</s>", "a dog </s>", "</s> a dog",
    "a </s></s> b", "<unk>cat", "<UNK> </S>", "\u2581a \u2581 b", "ＬＯＵＤ ﬁ", "a\u00a0b",
    "the " * 40, "runningrunningrunning" * 5]


def _train(path, **kwargs):
  model = io.BytesIO()
  options = dict(model_type="unigram", vocab_size=150, pad_id=0, eos_id=1, unk_id=2,
                 bos_id=-1, character_coverage=1.0, num_threads=1, minloglevel=2,
                 hard_vocab_limit=False)
  options.update(kwargs)
  spm.SentencePieceTrainer.train(sentence_iterator=iter(TRAIN), model_writer=model, **options)
  path.write_bytes(model.getvalue())
  return str(path)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  """T5's (and SigLIP's) layout: <pad> 0, </s> 1, <unk> 2."""
  return _train(tmp_path_factory.mktemp("spm") / "spiece.model")


@pytest.mark.filterwarnings("ignore:This sequence already has")  # captions that spell </s>
@pytest.mark.parametrize("length", [64, 16, 5, 2, 1])
def test_ids_equal_siglip_tokenizer(model, length):
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("google.protobuf")
  hf = transformers.SiglipTokenizer(model)
  tok = spm_tokenizer.SpmTokenizer(model, context_length=length)
  assert (tok.pad_id, tok.eos_id, tok.unk_id) == (hf.pad_token_id, hf.eos_token_id,
                                                  hf.unk_token_id) == (1, 1, 2)
  want = hf(TRICKY + TRAIN[:50], max_length=length, truncation=True,
            padding="max_length")["input_ids"]
  got = tok.encode(TRICKY + TRAIN[:50])
  assert got.dtype == np.int32 and got.shape == (len(TRICKY) + 50, length)
  for text, a, b in zip(TRICKY + TRAIN[:50], got, want):
    assert list(a) == b, repr(text)


def test_layout(model):
  tok = spm_tokenizer.SpmTokenizer(model, context_length=12)
  sp = spm.SentencePieceProcessor(model_file=model)
  ids = sp.encode("the grass the cat")
  assert 4 <= len(ids) <= 10
  # Lower case, no punctuation, single spaces; then pieces, </s>, and </s> as padding.
  row = tok.encode(["  The GRASS, the cat.  "])[0]
  assert list(row) == ids + [1] * (12 - len(ids))
  assert tok.decode([row]) == ["the grass the cat"]
  assert list(tok.encode([""])[0]) == [1] * 12
  # Truncated rows keep </s> last; a prefix goes first; a spelt </s> is </s>, not doubled.
  long = tok.encode([" ".join(["the grass the cat"] * 5)])[0]
  assert list(long) == (ids * 5)[:11] + [1]
  assert list(tok.encode(["the grass the cat"], prefix=7)[0, :len(ids) + 2]) == [7] + ids + [1]
  assert list(tok.encode(["the grass the cat </s>"])[0]) == list(row)
  assert tok.encode_ids("a </s> b")[1] == 1 and tok.encode_ids("<unk>")[0] == 2
  assert tok.special_ids() == (0, 1, 2) and tok.vocab_size == sp.get_piece_size()
  for name in ("cls", "mask", "enc", "dec"):
    with pytest.raises(ValueError, match=f"has no special symbol '{name}'") as info:
      tok.special_id(name)
    assert model in str(info.value) and "\n" not in str(info.value)


def _config(tokenizer, vocab_size=1000, context_length=8):
  c = config_lib.base_config()
  c.data.tokenizer = tokenizer
  c.model.vocab_size = vocab_size
  c.model.context_length = context_length
  return c


def test_get_tokenizer_and_copies(model, tmp_path):
  folder = os.path.dirname(model)  # a Hugging Face folder holds spiece.model
  for spec in (f"spm:{model}", f"spm:{folder}"):
    tok = data.get_tokenizer(_config(spec), str(tmp_path))
    assert isinstance(tok, spm_tokenizer.SpmTokenizer) and tok.context_length == 8
    assert tokenizer_lib.tokenizer_files(tok) == [model]
  assert tokenizer_lib.describe_tokenizer(tok) == f"spm:{os.path.abspath(folder)}"
  size = tok.vocab_size
  with pytest.raises(ValueError, match=f"has {size} pieces, more than config.model.vocab_size"):
    data.get_tokenizer(_config(f"spm:{model}", vocab_size=size - 1), str(tmp_path))

  workdir = tmp_path / "work"
  copy = tokenizer_lib.copy_tokenizer(tok, str(workdir / "tokenizer"))
  assert sorted(os.listdir(copy)) == ["spiece.model", "tokenizer_spec.txt"]
  again = data.get_tokenizer(_config(""), str(workdir), reading=True)
  assert isinstance(again, spm_tokenizer.SpmTokenizer)
  np.testing.assert_array_equal(again.encode(TRICKY), tok.encode(TRICKY))
  assert tokenizer_lib.describe_tokenizer(again) == f"spm:{os.path.abspath(copy)}"

  # A SentencePiece model trained by vlp_jax, copied, is read back as itself.
  own = data.train_tokenizer(TRAIN, 100, str(tmp_path / "own.model"))
  plain = data.Tokenizer(own, 8)
  copy = tokenizer_lib.copy_tokenizer(plain, str(tmp_path / "export" / "tokenizer"))
  again = tokenizer_lib.open_tokenizer(copy, 8)
  assert isinstance(again, data.Tokenizer) and again.model_path == os.path.join(copy, "own.model")
  assert tokenizer_lib.describe_tokenizer(plain) == os.path.abspath(own)


def test_missing_and_broken_files_are_one_line_errors(tmp_path):
  broken = tmp_path / "broken.model"
  broken.write_bytes(b"not a model")
  no_eos = _train(tmp_path / "no_eos.model", eos_id=-1, pad_id=0, unk_id=1)
  empty = tmp_path / "empty"
  empty.mkdir()
  cases = {f"spm:{tmp_path}/nowhere.model": "nowhere.model' does not exist",
           f"spm:{broken}": "broken.model is not a SentencePiece model",
           f"spm:{no_eos}": "no_eos.model has no </s> piece",
           f"spm:{empty}": "has no spiece.model",
           str(broken): "broken.model is not a SentencePiece model"}
  for spec, message in cases.items():
    with pytest.raises(ValueError) as info:
      data.get_tokenizer(_config(spec), str(tmp_path))
    text = str(info.value)
    assert text.startswith(f"config.data.tokenizer={spec!r}: ") and message in text, text
    assert "\n" not in text
