"""Caption nouns -> WordNet noun synsets: CatLIP's labels (multi-label classification).

CatLIP trains the image tower alone: the nouns of each caption become WordNet synsets, so
synonyms ("puppy", "pup") share a label, and synsets seen in at least `min_count` captions
form the label vocabulary. `python -m vlp_jax.data.synsets --data=SPEC --min_count=N
--out=PATH` writes one ahead of a run.

WordNet is read through nltk, from nltk's own data (`python -m nltk.downloader wordnet`,
NLTK_DATA) or else from Debian's `wordnet-base` files in /usr/share/wordnet, copied once into
a corpus directory nltk accepts. Nothing is downloaded at run time.

Nouns are found without a POS tagger (its data is a download): a word is a noun when
WordNet has a noun lemma for it after morphy (plurals, "geese"), multi-word lemmas ("ice
cream") are joined greedily, longest first, and closed-class words ("a", "in", "is", which
WordNet lists as nouns for angstrom, inch and iodine) are never labels. A noun takes its
first (most frequent) noun sense, as CatLIP's reference code does (`wn.synset("<word>.n.01")`
after WordNetLemmatizer, which keeps the shortest base form: "men" -> "man").
"""
import argparse
import collections
import functools
import os
import re
import shutil
import sys
import unicodedata
import warnings

import numpy as np

DEBIAN_DIR = "/usr/share/wordnet"
# Where the Debian files are copied for nltk (it refuses symlinks out of its data roots).
CACHE_ENV = "VLP_JAX_NLTK_DATA"
DEFAULT_CACHE = os.path.join("~", ".cache", "vlp_jax", "nltk_data")
INSTALL_HINT = ("install WordNet: `python -m nltk.downloader wordnet` (needs internet; or set "
                "NLTK_DATA to a folder holding corpora/wordnet), or `apt-get install "
                "wordnet-base wordnet-sense-index` (Debian/Ubuntu, files in /usr/share/wordnet)")

# nltk opens these; Debian ships them all except `lexnames`.
# nltk's reader opens index.sense when it loads (Debian: wordnet-sense-index).
_REQUIRED = [f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")
             ] + [f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")] + ["index.sense"]
_OPTIONAL = ["cntlist.rev", "cntlist", "frames.vrb", "sents.vrb", "sentidx.vrb"]

# lexnames(5WN) of WordNet 3.0: file number, lexicographer file, syntactic category
# (1 noun, 2 verb, 3 adjective, 4 adverb). Fixed by the WordNet 3.0 database.
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food "
    "noun.group noun.location noun.motive noun.object noun.person noun.phenomenon "
    "noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape "
    "noun.state noun.substance noun.time verb.body verb.change verb.cognition "
    "verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative "
    "verb.weather adj.ppl").split()
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}

# Closed-class words (and number words) a POS tagger would never call nouns, though WordNet
# has noun senses for many of them; without a tagger they would be the most frequent labels.
STOPWORDS = frozenset("""
a an the this that these those some any each every all both either neither no none nor
and or but so if then than as of in on at by for with without within from to into onto
upon over under up down out off about above below near next behind between through across
along around against among beside besides inside outside toward towards via per amid
is are was were be been being am do does did done doing has have had having will would
can could may might must shall should ought not yes also too very just only even still
i me my mine myself we us our ours ourselves you your yours yourself yourselves he him his
himself she her hers herself it its itself they them their theirs themselves
who whom whose which what whatever where when why how here there
one two three four five six seven eight nine ten eleven twelve first
other another such own same more most much many few less least several
""".split())

MAX_WORDS = 5  # longest multi-word lemma tried
_TOKEN = re.compile(r"[a-z0-9]+(?:['\-][a-z0-9]+)*")
_SYNSET_NAME = re.compile(r"^\S+\.n\.\d\d$")
_WNID = re.compile(r"^n(\d{8})$")


def _cache_dir(cache_dir):
  return os.path.expanduser(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def prepare_debian_corpus(debian_dir, cache_dir):
  """Copies Debian's WordNet files into `<cache_dir>/corpora/wordnet` with the `lexnames`
  table Debian lacks; copies, not links, since nltk refuses links out of its data roots.

  Returns the corpus folder, or None when `debian_dir` lacks a required file. Built under a
  temporary name and renamed, so concurrent processes never see half a corpus.
  """
  if not all(os.path.isfile(os.path.join(debian_dir, f)) for f in _REQUIRED):
    return None
  final = os.path.join(cache_dir, "corpora", "wordnet")
  complete = lambda: all(os.path.isfile(os.path.join(final, f))
                         for f in _REQUIRED + ["lexnames"])
  if complete():
    return final
  if os.path.isdir(final):  # built before a file became required: built again
    shutil.rmtree(final, ignore_errors=True)
  os.makedirs(os.path.dirname(final), exist_ok=True)
  tmp = f"{final}.{os.getpid()}.tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  for name in _REQUIRED + _OPTIONAL:
    src = os.path.join(debian_dir, name)
    if os.path.isfile(src):
      shutil.copyfile(src, os.path.join(tmp, name))  # follows links: plain files
  with open(os.path.join(tmp, "lexnames"), "w", encoding="utf-8") as f:
    for number, name in enumerate(_LEXNAMES):
      f.write(f"{number:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n")
  try:
    os.rename(tmp, final)
  except OSError:  # another process got there first
    shutil.rmtree(tmp, ignore_errors=True)
    if not complete():
      raise
  return final


def load_wordnet(nltk_paths=None, debian_dir=DEBIAN_DIR, cache_dir=None):
  """A WordNet reader from nltk's data (`nltk_paths`, default nltk.data.path, which
  includes NLTK_DATA), else from Debian's files; ValueError saying how to install when
  neither is there."""
  try:
    import nltk  # pylint: disable=g-import-not-at-top
    from nltk.corpus.reader import wordnet as wn_reader  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ValueError(f"WordNet needs nltk (`pip install nltk`); then {INSTALL_HINT}") from None
  paths = list(nltk.data.path if nltk_paths is None else nltk_paths)
  try:
    root = nltk.data.find("corpora/wordnet", paths=paths)
  except LookupError:
    root = None
  if root is None and os.path.isdir(debian_dir):
    cache = _cache_dir(cache_dir)
    folder = prepare_debian_corpus(debian_dir, cache)
    if folder is not None:
      if cache not in nltk.data.path:
        nltk.data.path.append(cache)  # nltk reads only below its data roots
      root = nltk.data.find("corpora/wordnet", paths=[cache])
  if root is None:
    raise ValueError(f"WordNet not found in nltk's data or {debian_dir}: {INSTALL_HINT}")
  with warnings.catch_warnings():  # "multilingual functions are not available": not used
    warnings.simplefilter("ignore")
    return wn_reader.WordNetCorpusReader(root, None)


@functools.lru_cache(maxsize=None)
def wordnet():
  """The process-wide WordNet reader (loading parses the index files once)."""
  return load_wordnet()


def available():
  """'' when WordNet can be loaded, else the reason it cannot."""
  try:
    wordnet()
  except ValueError as e:
    return str(e)
  return ""


@functools.lru_cache(maxsize=1 << 18)
def _noun_synset(form):
  """The first noun sense of `form` ('ice_cream', 'geese'), or None when WordNet has no
  noun lemma for it. Of several base forms: an irregular plural's ("men" -> "man", not the
  lemma "men", work force), else the shortest, as WordNetLemmatizer ("dogs" -> "dog")."""
  wn = wordnet()
  bases = wn._morphy(form, "n")  # pylint: disable=protected-access
  if not bases:
    return None
  irregular = wn._exception_map["n"].get(form, ())  # pylint: disable=protected-access
  base = next((b for b in irregular if b in bases), None) or min(bases, key=len)
  return wn.synsets(base, "n")[0].name()


def _words(text):
  """Lower-case ASCII words; possessives lose their 's, other contractions are dropped."""
  text = unicodedata.normalize("NFKD", text.replace("\u2019", "'"))
  text = text.encode("ascii", "ignore").decode("ascii").lower()
  words = []
  for w in _TOKEN.findall(text):
    if "'" in w:
      if not w.endswith("'s") or w.count("'") > 1:
        continue  # don't, it'll, o'clock ...
      w = w[:-2]
    if w.isdigit():
      continue
    if "-" in w and _noun_synset(w) is None and _noun_synset(w.replace("-", "_")) is None:
      words.extend(p for p in w.split("-") if p and not p.isdigit())
    else:
      words.append(w)
  return words


def caption_synsets(caption):
  """Noun synset names of a caption in order of appearance, without repeats:
  'Two dogs eat ice cream.' -> ['dog.n.01', 'ice_cream.n.01']."""
  words = _words(caption)
  found, i = [], 0
  while i < len(words):
    for n in range(min(MAX_WORDS, len(words) - i), 0, -1):
      if n == 1 and words[i] in STOPWORDS:
        continue
      name = _noun_synset("_".join(words[i:i + n]).replace("-", "_") if n > 1 else words[i])
      if name is not None:
        if name not in found:
          found.append(name)
        i += n
        break
    else:
      i += 1
  return found


def count_synsets(captions):
  """Number of captions each synset appears in (a caption counts once per synset)."""
  counts = collections.Counter()
  for caption in captions:
    counts.update(caption_synsets(caption))
  return counts


def build_vocabulary(captions, min_count):
  """Synsets in at least `min_count` captions, most frequent first, ties by name."""
  if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
    raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
  counts = count_synsets(captions)
  kept = [(-c, name) for name, c in counts.items() if c >= min_count]
  return [name for _, name in sorted(kept)]


def _check_vocabulary(vocabulary, where="vocabulary"):
  seen = set()
  for i, name in enumerate(vocabulary):
    if not isinstance(name, str) or not _SYNSET_NAME.match(name):
      raise ValueError(f"{where}: entry {i + 1} {name!r} is not a noun synset name like 'dog.n.01'")
    if name in seen:
      raise ValueError(f"{where}: synset {name!r} appears twice (entry {i + 1})")
    seen.add(name)
  if not seen:
    raise ValueError(f"{where} is empty")


def write_vocabulary(vocabulary, path):
  """Writes one synset name per line, atomically (temporary name, then rename) so
  concurrent hosts never read half a file; gfile so that gs:// paths work."""
  from vlp_jax.data.tf_setup import tf  # pylint: disable=g-import-not-at-top
  _check_vocabulary(vocabulary)
  folder = os.path.dirname(path)
  if folder:
    tf.io.gfile.makedirs(folder)
  tmp = f"{path}.{os.getpid()}.tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write("".join(f"{name}\n" for name in vocabulary))
  tf.io.gfile.rename(tmp, path, overwrite=True)


def read_vocabulary(path):
  """The synset names of a vocabulary file, in order; ValueError if missing or malformed."""
  from vlp_jax.data.tf_setup import tf  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
    raise ValueError(f"Synset vocabulary {path!r} does not exist (write one with "
                     "`python -m vlp_jax.data.synsets`)")
  with tf.io.gfile.GFile(path, "r") as f:
    names = [line.strip() for line in f.read().splitlines() if line.strip()]
  _check_vocabulary(names, where=f"Synset vocabulary {path!r}")
  return names


def multi_hot(captions, vocabulary):
  """float32 [len(captions), len(vocabulary)]: 1 where the caption names the synset.
  Synsets outside the vocabulary are ignored."""
  index = {name: i for i, name in enumerate(vocabulary)}
  if len(index) != len(vocabulary):
    _check_vocabulary(vocabulary)
  labels = np.zeros((len(captions), len(vocabulary)), np.float32)
  for row, caption in enumerate(captions):
    for name in caption_synsets(caption):
      if name in index:
        labels[row, index[name]] = 1.0
  return labels


def synsets_for_classname(name):
  """Synsets a class name stands for, for zero-shot by the classifier head: the first noun
  sense of the whole name when WordNet has it ('great white shark'), else the nouns in it
  as in a caption. [] when it names none: the class is not covered (never guessed).
  A WordNet id ('n02084071', TFDS imagenet2012's class names) is its own synset."""
  if isinstance(name, str) and _WNID.match(name.strip()):
    try:
      return [wnid_to_synset(name.strip())]
    except ValueError:
      return []
  words = _words(name)
  if not words:
    return []
  whole = _noun_synset("_".join(words))
  if whole is not None and not (len(words) == 1 and words[0] in STOPWORDS):
    return [whole]
  return caption_synsets(name)


def classname_indices(classnames, vocabulary):
  """Per class, the vocabulary rows of its synsets (its score: e.g. their mean logit), and
  the names not covered: no synset, or one outside the vocabulary."""
  index = {name: i for i, name in enumerate(vocabulary)}
  rows, not_covered = [], []
  for classname in classnames:
    names = synsets_for_classname(classname)
    if names and all(n in index for n in names):
      rows.append([index[n] for n in names])
    else:
      rows.append([])
      not_covered.append(classname)
  return rows, not_covered


def wnid_to_synset(wnid):
  """ImageNet's WordNet id ('n02084071', the noun offset) -> synset name ('dog.n.01')."""
  match = _WNID.match(wnid) if isinstance(wnid, str) else None
  if not match:
    raise ValueError(f"{wnid!r} is not a WordNet noun id like 'n02084071'")
  wn = wordnet()
  try:
    with warnings.catch_warnings():  # nltk warns, then raises WordNetError, for a bad offset
      warnings.simplefilter("ignore")
      return wn.synset_from_pos_and_offset("n", int(match.group(1))).name()
  except Exception:  # pylint: disable=broad-except
    raise ValueError(f"WordNet 3.0 has no noun synset with id {wnid!r}") from None


def main(argv=None):
  from vlp_jax.data import sources  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True, help="data spec, e.g. jsonl:PATH:train")
  parser.add_argument("--min_count", type=int, required=True,
                      help="keep synsets named by at least this many captions")
  parser.add_argument("--out", required=True, help="path of the vocabulary file to write")
  parser.add_argument("--data_dir", default="", help="TFDS data_dir for builtin: specs")
  parser.add_argument("--holdout_percent", type=int, default=10)
  args = parser.parse_args(argv)
  try:
    if args.min_count < 1:
      raise ValueError(f"--min_count must be >= 1, got {args.min_count}")
    reason = available()
    if reason:
      raise ValueError(reason)
    source = sources.get_source(args.data, args.holdout_percent, args.data_dir)
    captions = source.captions()
    counts = count_synsets(captions)
    vocabulary = build_vocabulary(captions, args.min_count)
    if not vocabulary:
      raise ValueError(f"No synset is named by {args.min_count} or more of the "
                       f"{len(captions)} captions of {args.data}; lower --min_count")
    write_vocabulary(vocabulary, args.out)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"Wrote {args.out}: {len(vocabulary)} synsets named by >= {args.min_count} of "
        f"{len(captions)} captions ({len(counts)} synsets in all)")


if __name__ == "__main__":
  main()
