"""bench/grounding.py's pure helpers: a word's SentencePiece pieces, attribute words, shuffled
caption partners, the attribute prior."""
import importlib.util
import os

import numpy as np

from tests.conftest import REPO
from vlp_jax.data import scenes
from vlp_jax.data import tokenizer as tokenizer_lib

_spec = importlib.util.spec_from_file_location(
    "grounding", os.path.join(REPO, "bench", "grounding.py"))
grounding = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grounding)


def test_word_pieces_groups_continuation_pieces():
  assert grounding.word_pieces(["\u2581a", "\u2581tri", "angle", "\u2581red"]) == [[0], [1, 2], [3]]
  assert grounding.word_pieces(["\u2581", "x", "y", "\u2581a"]) == [[0, 1, 2], [3]]
  assert grounding.word_pieces([]) == []


def test_word_pieces_of_shapes_captions_with_a_trained_tokenizer(tmp_path):
  """With the tiny configs' 128-piece BPE, every attribute word's pieces spell the word and
  sit where tokenizer.encode puts them."""
  captions = [scenes.make_scene(0, i)["caption"] for i in range(300)]
  path = tokenizer_lib.train_tokenizer(captions, 128, str(tmp_path / "tok.model"))
  tok = tokenizer_lib.Tokenizer(path, 24)
  vocab = grounding.vocabularies()
  encoded = tok.encode(captions)
  for caption, row in zip(captions, encoded):
    pieces = tok.sp.encode(caption, out_type=str)
    words = grounding.word_pieces(pieces)
    assert len(words) == len(caption.split())
    for kind, where in grounding.attribute_words(caption, vocab).items():
      assert where, (caption, kind)
      for w in where:
        spelled = "".join(pieces[p] for p in words[w]).lstrip("\u2581")
        assert spelled == caption.split()[w] and spelled in vocab[kind]
        assert list(row[words[w]]) == tok.sp.encode(caption.split()[w])


def test_attribute_words():
  caption = "a small red circle left of a large blue square"
  assert grounding.attribute_words(caption, grounding.vocabularies()) == {
      "color": [2, 8], "shape": [3, 9], "size": [1, 7]}


def test_shuffled_partners_never_pair_identical_captions():
  captions = ["a"] * 5 + ["b"] * 3 + ["c"] * 2
  for seed in range(20):
    partner = grounding.shuffled_partners(captions, np.random.default_rng(seed))
    assert all(captions[j] != captions[i] for i, j in enumerate(partner))


def test_prior():
  out = grounding.prior(["a small red circle", "a large red square", "a small blue cross"])
  assert out["color"] == (1 / 6, 2 / 3)
  assert out["shape"] == (1 / 4, 1 / 3)
  assert out["size"] == (1 / 2, 2 / 3)
