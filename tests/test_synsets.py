"""Caption -> WordNet synset labels (CatLIP): nouns, vocabulary, files, class names, wnids.

Tests that read WordNet skip, saying why, where it is not installed (CI installs Debian's
wordnet-base in .ci/run).
"""
import os

import numpy as np
import pytest

from vlp_jax.data import synsets

from tests import helpers


@pytest.fixture(scope="module")
def wn():
  reason = synsets.available()
  if reason:
    pytest.skip(reason)
  return synsets.wordnet()


def test_missing_wordnet_is_one_line_naming_both_installs(tmp_path):
  with pytest.raises(ValueError) as e:
    synsets.load_wordnet(nltk_paths=[str(tmp_path / "nltk_data")],
                         debian_dir=str(tmp_path / "no_debian"), cache_dir=str(tmp_path / "c"))
  message = str(e.value)
  assert "\n" not in message
  assert "python -m nltk.downloader wordnet" in message and "wordnet-base" in message


@pytest.mark.skipif(not os.path.isfile(os.path.join(synsets.DEBIAN_DIR, "index.noun")),
                    reason=f"Debian's wordnet-base is not installed ({synsets.DEBIAN_DIR})")
def test_debian_files_become_an_nltk_corpus(tmp_path, monkeypatch):
  import nltk  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))  # load_wordnet adds the cache
  cache = tmp_path / "nltk_data"
  folder = synsets.prepare_debian_corpus(synsets.DEBIAN_DIR, str(cache))
  lines = open(os.path.join(folder, "lexnames"), encoding="utf-8").read().splitlines()
  assert len(lines) == 45
  assert lines[0] == "00\tadj.all\t3" and lines[5] == "05\tnoun.animal\t1"
  assert lines[44] == "44\tadj.ppl\t3"
  assert not any(os.path.islink(os.path.join(folder, f)) for f in os.listdir(folder))
  assert not [f for f in os.listdir(cache / "corpora") if f.endswith(".tmp")]
  reader = synsets.load_wordnet(nltk_paths=[], cache_dir=str(cache))
  # Each synset's lexicographer file comes from the lexnames table, by number.
  assert reader.synset("dog.n.01").lexname() == "noun.animal"
  assert reader.synset("oak.n.02").lexname() == "noun.plant"
  assert reader.synset("run.v.01").lexname() == "verb.motion"


@pytest.mark.skipif(not os.path.isfile(os.path.join(synsets.DEBIAN_DIR, "index.sense")),
                    reason=f"Debian's wordnet-sense-index is not installed ({synsets.DEBIAN_DIR})")
def test_a_corpus_missing_a_required_file_is_built_again(tmp_path):
  """A cache built before index.sense was required (nltk's reader opens it) is rebuilt."""
  folder = synsets.prepare_debian_corpus(synsets.DEBIAN_DIR, str(tmp_path))
  os.remove(os.path.join(folder, "index.sense"))
  assert synsets.prepare_debian_corpus(synsets.DEBIAN_DIR, str(tmp_path)) == folder
  assert os.path.isfile(os.path.join(folder, "index.sense"))


CAPTIONS = [
    ("Two dogs and three geese.", ["dog.n.01", "goose.n.01"]),
    ("Men, mice & children", ["man.n.01", "mouse.n.01", "child.n.01"]),  # irregular plurals
    ("ICE CREAM, a hot dog and more hot dogs!", ["ice_cream.n.01", "hotdog.n.01"]),
    ("lily of the valley", ["lily_of_the_valley.n.01"]),  # longest lemma first
    ("ice cream cone", ["ice_cream.n.01", "cone.n.01"]),
    ("A woman's T-shirt", ["woman.n.01", "jersey.n.03"]),
    ("DOG!!!", ["dog.n.01"]),
    ("the dogs' caf\u00e9", ["dog.n.01", "cafe.n.01"]),
    ("quickly, the", []),
    ("it is in a", []),  # WordNet has nouns "it", "in", "a": closed-class words are not labels
    ("", []),
]


@pytest.mark.parametrize("caption,expected", CAPTIONS, ids=[c or "empty" for c, _ in CAPTIONS])
def test_caption_synsets(wn, caption, expected):
  assert synsets.caption_synsets(caption) == expected


def test_closed_class_words_have_noun_senses_yet_are_dropped(wn):
  """Without the stopword list, "in"/"a" would be inch/angstrom in most captions."""
  assert wn.synsets("in", "n") and wn.synsets("a", "n")
  assert synsets.caption_synsets("a dog in a car") == ["dog.n.01", "car.n.01"]


def test_words_without_a_noun_sense_are_dropped(wn):
  assert not wn.synsets("quickly", "n") and wn.synsets("quickly", "r")
  assert synsets.caption_synsets("a dog, quickly") == ["dog.n.01"]


VOCAB_CAPTIONS = ["a dog", "dogs and a cat", "the cats and a cat", "a goose by a dog",
                  "an owl", "an owl"]


def test_vocabulary_threshold_counts_captions_not_words(wn):
  assert synsets.count_synsets(VOCAB_CAPTIONS) == {
      "dog.n.01": 3, "cat.n.01": 2, "owl.n.01": 2, "goose.n.01": 1}
  assert synsets.build_vocabulary(VOCAB_CAPTIONS, 3) == ["dog.n.01"]
  assert synsets.build_vocabulary(VOCAB_CAPTIONS, 2) == ["dog.n.01", "cat.n.01", "owl.n.01"]
  assert synsets.build_vocabulary(VOCAB_CAPTIONS, 1) == [
      "dog.n.01", "cat.n.01", "owl.n.01", "goose.n.01"]
  assert synsets.build_vocabulary(VOCAB_CAPTIONS, 4) == []


@pytest.mark.parametrize("min_count", [0, -1, 1.5, True])
def test_vocabulary_rejects_bad_min_count(min_count):
  with pytest.raises(ValueError, match="min_count"):
    synsets.build_vocabulary(["a dog"], min_count)


def test_vocabulary_file_round_trip(tmp_path):
  path = str(tmp_path / "sub" / "vocab.txt")
  vocab = ["dog.n.01", "ice_cream.n.01", "cat.n.01"]
  synsets.write_vocabulary(vocab, path)
  assert open(path, encoding="utf-8").read() == "dog.n.01\nice_cream.n.01\ncat.n.01\n"
  assert synsets.read_vocabulary(path) == vocab
  assert os.listdir(tmp_path / "sub") == ["vocab.txt"]  # no temporary file left


@pytest.mark.parametrize("content,match", [
    ("dog.n.01\ndog.n.01\n", "twice"), ("dog.n.01\nrun.v.01\n", "not a noun synset"),
    ("\n", "empty")])
def test_malformed_vocabulary_file(tmp_path, content, match):
  path = tmp_path / "vocab.txt"
  path.write_text(content)
  with pytest.raises(ValueError, match=match):
    synsets.read_vocabulary(str(path))


def test_missing_vocabulary_file(tmp_path):
  with pytest.raises(ValueError, match="does not exist"):
    synsets.read_vocabulary(str(tmp_path / "nope.txt"))


def test_multi_hot(wn):
  vocab = ["cat.n.01", "dog.n.01", "goose.n.01"]
  got = synsets.multi_hot(["two dogs and a cat", "an owl", "geese, geese", ""], vocab)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, [[1, 1, 0], [0, 0, 0], [0, 0, 1], [0, 0, 0]])


def test_wnid_to_synset(wn):
  assert synsets.wnid_to_synset("n02084071") == "dog.n.01"
  assert synsets.wnid_to_synset("n01440764") == "tench.n.01"  # ImageNet class 0
  assert synsets.wnid_to_synset("n07697537") == "hotdog.n.02"
  with pytest.raises(ValueError, match="no noun synset"):
    synsets.wnid_to_synset("n99999999")
  for bad in ("02084071", "v02084071", "n2084071", 2084071):
    with pytest.raises(ValueError, match="not a WordNet noun id"):
      synsets.wnid_to_synset(bad)


def test_classnames(wn):
  assert synsets.synsets_for_classname("great white shark") == ["great_white_shark.n.01"]
  assert synsets.synsets_for_classname("Hot dog") == ["hotdog.n.01"]
  assert synsets.synsets_for_classname("goldfish") == ["goldfish.n.01"]
  assert synsets.synsets_for_classname("red fox on snow") == ["red_fox.n.01", "snow.n.01"]
  for uncovered in ("xyzzy", "the", "", "quickly"):
    assert synsets.synsets_for_classname(uncovered) == []
  vocab = ["dog.n.01", "snow.n.01", "red_fox.n.01"]
  rows, not_covered = synsets.classname_indices(
      ["dogs", "red fox on snow", "cat", "xyzzy", "dog and cat"], vocab)
  assert rows == [[0], [2, 1], [], [], []]
  assert not_covered == ["cat", "xyzzy", "dog and cat"]  # never a partial guess


def test_command_writes_the_vocabulary(wn, tmp_path, capsys):
  from vlp_jax.data import sources  # pylint: disable=g-import-not-at-top
  folder = helpers.write_scene_folder(tmp_path / "data", count=40)
  captions = sources.get_source(f"jsonl:{folder}:train", 0).captions()
  counts = synsets.count_synsets(captions)
  threshold = sorted(set(counts.values()))[1]  # drops the rarest synsets, keeps others
  out = str(tmp_path / "vocab.txt")
  synsets.main([f"--data=jsonl:{folder}:train", f"--min_count={threshold}", f"--out={out}",
                "--holdout_percent=0"])
  vocab = synsets.read_vocabulary(out)
  assert vocab == [n for n, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                   if c >= threshold]
  assert 0 < len(vocab) < len(counts)
  assert {"circle.n.01", "square.n.01", "triangle.n.01"} <= set(vocab)
  assert f"Wrote {out}: {len(vocab)} synsets" in capsys.readouterr().out


def test_command_rejects_bad_min_count(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    synsets.main(["--data=jsonl:/nowhere:train", "--min_count=0",
                  f"--out={tmp_path / 'v.txt'}"])
  assert e.value.code == 2
  assert "error: --min_count must be >= 1" in capsys.readouterr().err
