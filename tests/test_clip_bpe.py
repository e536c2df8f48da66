"""CLIP's BPE (data/clip_bpe.py): ids equal open_clip's SimpleTokenizer and transformers'
CLIPTokenizer on tricky strings, hand-worked ids of a tiny merges file (no torch needed),
the cleaning without ftfy against ftfy, and get_tokenizer's clip_bpe: specs."""
import gzip
import importlib.metadata
import json
import os

import numpy as np
import pytest

from vlp_jax import config_lib
from vlp_jax import data
from vlp_jax.data import clip_bpe
from vlp_jax.data import tokenizer as tokenizer_lib

TRICKY = [
    "café naïve Ångström", "CAFÉ NAÏVE ÅNGSTRÖM", "a photo of a 🐕‍🦺 and 😀😀!",
    "東京タワーの夜景", "한국어 텍스트", "Ελληνικά Привет мир",
    "fish &amp; chips &amp;amp; &lt;b&gt; &#39;x&#39; &eacute; &amp",
    "  leading and trailing  ", "tabs\tand\nnewlines\r\nand  spaces\u3000here", "", "   ",
    "don't DON'T it's we'll I'M they've she'd", "it’s “curly” ‘quotes’",
    "3.14159 1,000,000 $5 100% #1 @user e-mail x² ½ № ™", "Hello, World!!! ... ?!",
    "UPPERCASE Words MiXeD", "<start_of_text> spelled <end_of_text> tokens",
    "x<<start_of_text>", "ＬＯＵＤ　ＮＯＩＳＥＳ ﬂubberiﬁc", "a\u00a0b\u200bc\ufeffd",
    "\x07bell\x1b[31mred\x1b[0m\x0bvt", "\x93windows quotes\x94",
    "averyveryverylongwordwithoutanyspaces" * 4,
    " ".join(["a dog running on the grass"] * 20)]
# What ftfy repairs and fix_text_without_ftfy leaves: mis-decoded UTF-8 (mojibake).
MOJIBAKE = ["cafÃ© mojibake", "â€œquotedâ€\x9d", "Ã¼ber"]


def _open_clip_bpe():
  """Path of open_clip's merges file, found without importing open_clip (nor torch)."""
  try:
    dist = importlib.metadata.distribution("open_clip_torch")
  except importlib.metadata.PackageNotFoundError:
    pytest.skip("open_clip_torch is not installed")
  return str(dist.locate_file("open_clip/bpe_simple_vocab_16e6.txt.gz"))


@pytest.fixture(scope="module")
def open_clip_tokenizer():
  """open_clip's SimpleTokenizer module (importing open_clip needs torch)."""
  pytest.importorskip("torch")
  from vlp_jax.models import import_open_clip  # pylint: disable=g-import-not-at-top
  try:
    import_open_clip.open_clip_package()
  except ImportError:
    pytest.skip("open_clip_torch is not installed")
  from open_clip import tokenizer  # pylint: disable=g-import-not-at-top
  return tokenizer


def _write_merges(path, merges):
  """A merges file in open_clip's format: a header line, then one merge a line."""
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("\n".join(["#version: 0.2"] + merges))
  return str(path)


@pytest.fixture
def tiny(tmp_path):
  # Merge ranks 0, 1, 2: "hi</w>" 512, "og</w>" 513, "dog</w>" 514; then 515, 516.
  return _write_merges(tmp_path / "tiny.txt.gz", ["h i</w>", "o g</w>", "d og</w>"])


def test_tiny_merges_file_hand_worked(tiny):
  tok = clip_bpe.ClipBpeTokenizer(tiny, context_length=8)
  assert (tok.vocab_size, tok.start_id, tok.eos_id, tok.pad_id) == (517, 515, 516, 0)
  # Byte pieces are ordered by the character spelling them: "!" 0 ... "~" 93; "</w>" +256.
  row = tok.encode(["  Hi\tDOG, hi!  "])[0]
  assert list(row) == [515, 512, 514, 256 + 11, 512, 256, 516, 0]
  assert tok.decode([row]) == ["hi dog , hi !"]
  # "don't": no merges apply; "'t" is one word. "é" is two bytes: Ã (127) and © (102).
  assert tok.encode_ids("don't é") == [67, 78, 256 + 77, 6, 256 + 83, 127, 256 + 102]
  assert tok.decode([[515, 127, 256 + 102, 516]]) == ["é"]
  assert tok.decode([[515, 127, 516]]) == ["\ufffd"]  # a character cut in two
  # A caption that spells the special tokens gets their ids, as open_clip's does.
  assert tok.encode_ids("hi <END_OF_TEXT> hi") == [512, 516, 512]
  assert list(tok.encode([""])[0]) == [515, 516] + [0] * 6
  # Truncated rows keep the start first and the end last; a prefix goes before the start.
  assert list(clip_bpe.ClipBpeTokenizer(tiny, 4).encode(["hi dog hi"])[0]) == [515, 512, 514, 516]
  assert list(clip_bpe.ClipBpeTokenizer(tiny, 2).encode(["hi dog"])[0]) == [515, 516]
  row = tok.encode(["hi dog hi dog hi dog"], prefix=7)[0]
  assert list(row) == [7, 515] + [512, 514] * 2 + [512, 516]
  with pytest.raises(ValueError, match="no room"):
    clip_bpe.ClipBpeTokenizer(tiny, 1).encode(["hi"])
  assert tok.special_ids() == (0, 515, 516)
  with pytest.raises(ValueError, match="has no special symbol 'cls'") as info:
    tok.special_id("cls")
  assert tiny in str(info.value) and "\n" not in str(info.value)


def test_cleaning_without_ftfy():
  clean = lambda text: clip_bpe.clean(text, use_ftfy=False)
  assert clean("It’s “Curly”") == "it's \"curly\""
  assert clean("ﬂubberiﬁc ＬＯＵＤ　ＮＯＩＳＥＳ") == "flubberific loud noises"
  assert clean("&amp;amp;amp; &lt;b&gt;") == "& <b>"  # three unescapes without a "<"
  assert clean("<b>&amp;amp;amp;</b>") == "<b>&amp;</b>"  # two with one
  assert clean("a\x0bb \x1b[31mred\x1b[0m \x93q\x94 e\u0301") == "ab red \"q\" é"


def test_fallback_cleaning_differs_from_ftfy_only_on_mojibake():
  pytest.importorskip("ftfy")
  differ = [t for t in TRICKY + MOJIBAKE
            if clip_bpe.clean(t, use_ftfy=True) != clip_bpe.clean(t, use_ftfy=False)]
  assert differ == MOJIBAKE
  assert clip_bpe.clean(MOJIBAKE[0], use_ftfy=True) == "café mojibake"


@pytest.mark.parametrize("length", [77, 16])
def test_ids_equal_open_clip(open_clip_tokenizer, length):
  path = _open_clip_bpe()
  ref = open_clip_tokenizer.SimpleTokenizer(path)
  tok = clip_bpe.ClipBpeTokenizer(path, context_length=length)
  assert (tok.vocab_size, tok.start_id, tok.eos_id) == (49408, 49406, 49407)
  want = ref(TRICKY + MOJIBAKE, context_length=length).numpy()
  got = tok.encode(TRICKY + MOJIBAKE)
  for text, a, b in zip(TRICKY + MOJIBAKE, got, want):
    assert list(a) == list(b), repr(text)
  assert got.dtype == np.int32 and got[TRICKY.index(TRICKY[-1]), -1] == 49407  # truncated
  # Decoding: open_clip's text between start and end, without its trailing space.
  for text, row in zip(TRICKY, tok.decode(got)):
    ids = tok.encode_ids(text)
    if len(ids) <= length - 2 and 49407 not in ids:
      assert row == ref.decode(ids).strip(), repr(text)


def test_tiny_file_equals_open_clip(open_clip_tokenizer, tiny):
  ref = open_clip_tokenizer.SimpleTokenizer(tiny)
  tok = clip_bpe.ClipBpeTokenizer(tiny, 8)
  assert tok.vocab_size == ref.vocab_size
  np.testing.assert_array_equal(tok.encode(TRICKY), ref(TRICKY, context_length=8).numpy())


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
  """vocab.json + merges.txt written from open_clip's merges file, as Hugging Face's CLIP
  folders hold them (<|startoftext|>, <|endoftext|>)."""
  path = _open_clip_bpe()
  folder = tmp_path_factory.mktemp("hf_clip")
  tok = clip_bpe.ClipBpeTokenizer(path, 77)
  names = dict(zip(clip_bpe.SPECIAL_PIECES["open_clip"], clip_bpe.SPECIAL_PIECES["hugging_face"]))
  vocab = {names.get(p, p): i for i, p in sorted(tok.decoder.items())}
  (folder / "vocab.json").write_text(json.dumps(vocab))
  lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")[1:clip_bpe.OPENAI_MERGES + 1]
  (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(lines) + "\n")
  return str(folder)


def test_folders_equal_transformers(hf_folder, tmp_path):
  transformers = pytest.importorskip("transformers")
  hf = transformers.CLIPTokenizer.from_pretrained(hf_folder)
  from_file = clip_bpe.ClipBpeTokenizer(_open_clip_bpe(), 16)
  tok = clip_bpe.ClipBpeTokenizer(hf_folder, 16)
  assert tok.files == [os.path.join(hf_folder, n) for n in ("vocab.json", "merges.txt")]
  texts = TRICKY + MOJIBAKE + ["<|startoftext|> spelled <|endoftext|> the HF way"]
  rows = tok.encode(texts)
  # The same ids as from open_clip's file, except where a caption spells a special token:
  # each form knows its own spelling (<end_of_text>, <|endoftext|>).
  plain = [i for i, t in enumerate(texts) if "_of_text>" not in t and "text|>" not in t]
  np.testing.assert_array_equal(rows[plain], from_file.encode([texts[i] for i in plain]))
  # transformers cleans less (NFC, whitespace, lower case): give it open_clip's cleaning.
  for text, row in zip(texts, rows):
    want = hf(clip_bpe.clean(text), max_length=16, truncation=True)["input_ids"]
    assert list(row[:len(want)]) == want and not row[len(want):].any(), repr(text)
  hf.save_pretrained(str(tmp_path / "saved"))  # tokenizer.json only
  saved = clip_bpe.ClipBpeTokenizer(str(tmp_path / "saved"), 16)
  assert saved.files == [str(tmp_path / "saved" / "tokenizer.json")]
  np.testing.assert_array_equal(saved.encode(texts), rows)


def _config(tokenizer, vocab_size=49408, context_length=8):
  c = config_lib.base_config()
  c.data.tokenizer = tokenizer
  c.model.vocab_size = vocab_size
  c.model.context_length = context_length
  return c


def test_get_tokenizer_and_copies(tiny, tmp_path):
  tok = data.get_tokenizer(_config(f"clip_bpe:{tiny}"), str(tmp_path))
  assert isinstance(tok, clip_bpe.ClipBpeTokenizer) and tok.context_length == 8
  assert tokenizer_lib.describe_tokenizer(tok) == f"clip_bpe:{os.path.abspath(tiny)}"
  assert tokenizer_lib.tokenizer_files(tok) == [tiny]
  with pytest.raises(ValueError, match="517 pieces, more than config.model.vocab_size=500"):
    data.get_tokenizer(_config(f"clip_bpe:{tiny}", vocab_size=500), str(tmp_path))

  # A copy in a workdir's tokenizer/ folder is the run's tokenizer when nothing is set.
  workdir = tmp_path / "work"
  copy = tokenizer_lib.copy_tokenizer(tok, str(workdir / "tokenizer"))
  assert sorted(os.listdir(copy)) == ["tiny.txt.gz", "tokenizer_spec.txt"]
  for reading in (False, True):
    again = data.get_tokenizer(_config(""), str(workdir), reading=reading)
    assert isinstance(again, clip_bpe.ClipBpeTokenizer)
    assert again.model_path == os.path.join(copy, "tiny.txt.gz")
    np.testing.assert_array_equal(again.encode(TRICKY), tok.encode(TRICKY))
  again = tokenizer_lib.open_tokenizer(copy, 8)
  np.testing.assert_array_equal(again.encode(TRICKY), tok.encode(TRICKY))


def test_missing_and_broken_files_are_one_line_errors(tiny, tmp_path):
  broken = tmp_path / "broken.txt.gz"
  broken.write_bytes(b"not gzip")
  bad_line = _write_merges(tmp_path / "bad.txt.gz", ["h i</w>", "a b c"])
  unknown = _write_merges(tmp_path / "unknown.txt.gz", ["hi dog"])
  folder = tmp_path / "folder"
  folder.mkdir()
  (folder / "vocab.json").write_text("{}")
  cases = {f"clip_bpe:{tmp_path}/nowhere.txt.gz": "nowhere.txt.gz' does not exist",
           f"clip_bpe:{broken}": "broken.txt.gz is not a gzip-compressed",
           f"clip_bpe:{bad_line}": "bad.txt.gz: line 3 'a b c' is not two pieces",
           f"clip_bpe:{unknown}": "unknown.txt.gz: merges that do not fit",
           f"clip_bpe:{folder}": "has neither tokenizer.json nor merges.txt"}
  for spec, message in cases.items():
    with pytest.raises(ValueError) as info:
      data.get_tokenizer(_config(spec), str(tmp_path))
    text = str(info.value)
    assert text.startswith(f"config.data.tokenizer={spec!r}: ") and message in text, text
    assert "\n" not in text
  (folder / "merges.txt").write_text("#version: 0.2\n")
  (folder / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1}))
  with pytest.raises(ValueError, match="lacks 256 of the 256 byte pieces"):
    data.get_tokenizer(_config(f"clip_bpe:{folder}"), str(tmp_path))


def test_copy_of_a_gpt2_folder(tmp_path):
  """copy_tokenizer also carries bpe.py's folders (no tokenizer_spec.txt: vocab.json says it)."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "gpt2"
  folder.mkdir()
  trainer = tokenizers.ByteLevelBPETokenizer()
  trainer.train_from_iterator(TRICKY, vocab_size=300, special_tokens=["<|endoftext|>"],
                              show_progress=False)
  trainer.save_model(str(folder))
  tok = tokenizer_lib.open_tokenizer(str(folder), 16)
  assert tokenizer_lib.describe_tokenizer(tok) == str(folder)
  copy = tokenizer_lib.copy_tokenizer(tok, str(tmp_path / "export" / "tokenizer"))
  assert sorted(os.listdir(copy)) == ["merges.txt", "vocab.json"]
  again = data.get_tokenizer(_config("", vocab_size=1000, context_length=16),
                             str(tmp_path / "export"), reading=True)
  assert type(again) is type(tok) and again.model_path == copy
  np.testing.assert_array_equal(again.encode(TRICKY), tok.encode(TRICKY))


def test_prompt_ids_keep_pieces_whose_id_is_the_padding(tiny):
  """decode.prompt under clip_bpe: "!" is id 0, the padding; the start id is not a piece."""
  from vlp_jax.evaluate import captioner  # pylint: disable=g-import-not-at-top
  tok = clip_bpe.ClipBpeTokenizer(tiny, context_length=8)
  ids = captioner.prompt_ids(tok, "hi !!")  # "!!" is "!" (id 0) then "!</w>" (256)
  assert ids == tuple(tok.encode_ids("hi !!")) == (512, 0, 256)
