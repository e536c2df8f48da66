"""Tokenizer: training, the EOS/pad/truncation layout, the vocabulary check and the CLI."""
import os

import numpy as np
import pytest

from vlp_jax import config_lib
from vlp_jax import data
from vlp_jax.data import scenes
from vlp_jax.data import tokenizer as tokenizer_lib
from vlp_jax.data.jsonl_writer import write_jsonl_folder

CAPTIONS = [scenes.make_scene(0, i)["caption"] for i in range(200)]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
  return data.train_tokenizer(CAPTIONS, 128, str(tmp_path_factory.mktemp("tok") / "t.model"))


def test_training_is_deterministic(model_path, tmp_path):
  again = data.train_tokenizer(CAPTIONS, 128, str(tmp_path / "again.model"))
  assert open(again, "rb").read() == open(model_path, "rb").read()


def test_too_small_vocab_is_a_clear_error(tmp_path):
  # 11 characters + pad, unk, eos + 4 special symbols = 18 pieces at least.
  out = str(tmp_path / "small.model")
  with pytest.raises(ValueError, match="vocab_size=16 is too small") as info:
    data.train_tokenizer(["picture one two"], 16, out)
  assert out in str(info.value)
  assert data.Tokenizer(data.train_tokenizer(["picture one two"], 18, out), 8).vocab_size == 18


def test_encode_layout(model_path):
  tok = data.Tokenizer(model_path, context_length=32)
  assert tok.pad_id == 0 and tok.eos_id > 0 and tok.vocab_size <= 128
  tokens = tok.encode(CAPTIONS[:20] + [""])
  assert tokens.dtype == np.int32 and tokens.shape == (21, 32)
  assert tokens.max() < tok.vocab_size
  for row, caption in zip(tokens, CAPTIONS):
    length = int((row != 0).sum())
    assert row[length - 1] == tok.eos_id and (row[length:] == 0).all()
    assert tok.eos_id not in row[:length - 1]
  assert tok.decode(tokens[:20]) == CAPTIONS[:20]
  assert list(tokens[-1][:2]) == [tok.eos_id, 0]


def test_truncation_ends_with_eos(model_path):
  tok = data.Tokenizer(model_path, context_length=4)
  tokens = tok.encode([CAPTIONS[1] * 3])
  assert (tokens != 0).all() and tokens[0, -1] == tok.eos_id


def _config(train_spec, tokenizer="", vocab_size=128):
  c = config_lib.base_config()
  c.data.train = train_spec
  c.data.tokenizer = tokenizer
  c.model.vocab_size = vocab_size
  return c


def test_get_tokenizer_trains_once_and_checks_vocab(model_path, tmp_path):
  folder = write_jsonl_folder(str(tmp_path / "set"), [
      (f"{i}.png", scenes.make_scene(0, 0)["png"], c) for i, c in enumerate(CAPTIONS)])
  workdir = str(tmp_path / "work")
  tok = data.get_tokenizer(_config("jsonl:" + folder), workdir)
  path = os.path.join(workdir, "tokenizer.model")
  stamp = os.stat(path).st_mtime_ns
  again = data.get_tokenizer(_config("jsonl:" + folder), workdir)
  assert os.stat(path).st_mtime_ns == stamp
  assert again.vocab_size == tok.vocab_size <= 128
  loaded = data.get_tokenizer(_config("jsonl:" + folder, tokenizer=model_path), "")
  assert loaded.model_path == model_path
  with pytest.raises(ValueError, match="model.vocab_size=10") as info:
    data.get_tokenizer(_config("jsonl:" + folder, tokenizer=model_path, vocab_size=10), "")
  assert model_path in str(info.value)
  with pytest.raises(ValueError, match="data.tokenizer"):
    data.get_tokenizer(_config("jsonl:" + folder, tokenizer=str(tmp_path / "none.model")), "")


def test_cli_writes_a_model(tmp_path):
  folder = write_jsonl_folder(str(tmp_path / "set"), [
      (f"{i}.png", b"unused", c) for i, c in enumerate(CAPTIONS[:50])])
  out = str(tmp_path / "cli.model")
  tokenizer_lib.main([f"--data=jsonl:{folder}", "--vocab_size=48", f"--out={out}"])
  assert data.Tokenizer(out, 8).vocab_size <= 48


def test_special_symbols_follow_pad_unk_eos(model_path):
  tok = data.Tokenizer(model_path, context_length=32)
  assert (tok.pad_id, tok.unk_id, tok.eos_id) == (0, 1, 2)
  ids = {name: tok.special_id(name) for name in ("cls", "mask", "enc", "dec")}
  assert ids == {"cls": 3, "mask": 4, "enc": 5, "dec": 6}
  assert [tok.sp.id_to_piece(i) for i in ids.values()] == ["[CLS]", "[MASK]", "[ENC]", "[DEC]"]
  assert tok.special_ids() == (0, 1, 2, 3, 4, 5, 6)
  # Captions never encode to a special id.
  assert not np.isin(tok.encode(CAPTIONS), tok.special_ids()[3:]).any()
  with pytest.raises(ValueError, match="sep"):
    tok.special_id("sep")


def test_encode_with_prefix(model_path):
  tok = data.Tokenizer(model_path, context_length=32)
  cls, dec = tok.special_id("cls"), tok.special_id("dec")
  plain = tok.encode(CAPTIONS[:20] + [""])
  tokens = tok.encode(CAPTIONS[:20] + [""], prefix=cls)
  assert tokens.dtype == np.int32 and tokens.shape == (21, 32)
  assert (tokens[:, 0] == cls).all()
  for row, base in zip(tokens, plain):
    length = int((base != 0).sum())
    assert length < 31  # nothing truncated: the prefix just shifts the row
    assert (row[1:length + 1] == base[:length]).all() and (row[length + 1:] == 0).all()
  assert list(tokens[-1][:3]) == [cls, tok.eos_id, 0]
  assert tok.decode(tokens[:20]) == CAPTIONS[:20]
  assert tok.decode(tok.encode(CAPTIONS[:5], prefix=dec)) == CAPTIONS[:5]
  # Truncation keeps the prefix first and EOS last.
  short = data.Tokenizer(model_path, context_length=4).encode([CAPTIONS[1] * 3], prefix=cls)
  assert short[0, 0] == cls and short[0, -1] == tok.eos_id and (short != 0).all()
  assert list(short[0, 1:3]) == list(tok.encode([CAPTIONS[1] * 3])[0, :2])
  with pytest.raises(ValueError, match="prefix"):
    tok.encode(["a"], prefix=tok.vocab_size)
  with pytest.raises(ValueError, match="context_length"):
    data.Tokenizer(model_path, context_length=1).encode(["a"], prefix=cls)


def test_decode_skips_special_ids(model_path):
  tok = data.Tokenizer(model_path, context_length=32)
  tokens = tok.encode(CAPTIONS[:3], prefix=tok.special_id("enc"))
  masked = tokens.copy()
  masked[:, 2] = tok.special_id("mask")  # a masked piece is dropped, the rest decoded
  pieces = tok.encode(CAPTIONS[:3])
  expected = tok.decode(np.concatenate([pieces[:, :1], pieces[:, 2:]], axis=1))
  assert tok.decode(masked) == expected
  # Stops at the first EOS as before, special ids after it included.
  row = np.array([[tok.special_id("dec"), *pieces[0, :2], tok.eos_id, 3, *pieces[0, :2]]])
  assert tok.decode(row) == tok.decode(pieces[:1, :2])


def test_tokenizer_without_special_symbols(tmp_path):
  """One trained elsewhere (no user_defined_symbols) still encodes; special_id says why not."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "plain.model")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(CAPTIONS), model_prefix=str(tmp_path / "plain"), vocab_size=64,
      hard_vocab_limit=False, model_type="bpe", pad_id=0, unk_id=1, eos_id=2, bos_id=-1,
      num_threads=1, minloglevel=2)
  tok = data.Tokenizer(path, context_length=128)
  assert tok.special_ids() == (0, 1, 2)
  assert tok.decode(tok.encode(CAPTIONS[:5])) == CAPTIONS[:5]
  for name in ("cls", "mask", "enc", "dec"):
    with pytest.raises(ValueError, match="config.data.tokenizer") as info:
      tok.special_id(name)
    message = str(info.value)
    assert path in message and "\n" not in message
