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
