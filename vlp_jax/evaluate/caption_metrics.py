"""Captioning metrics BLEU-1..4 and CIDEr-D as the COCO caption evaluation computes them.

The numbers follow pycocoevalcap (bleu/bleu_scorer.py, cider/cider_scorer.py) so they can be
compared with published COCO results, without its Java dependency: its PTBTokenizer runs
Stanford CoreNLP, so `tokenize` approximates that tokenizer in Python instead.
"""
import math
import re
from collections import Counter

# Tokens pycocoevalcap drops after PTB tokenisation. It compares them after lower-casing, so
# its -LRB- etc. never match: COCO scores keep brackets as -lrb-/-rrb- tokens, and so do we.
PUNCTUATION = frozenset(["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"])
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_CLITIC = re.compile(r"(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")
# Tokens that keep their edge punctuation: clitics, brackets, abbreviations such as "u.s.".
_KEEP = re.compile(r"^(n't|'s|'re|'ve|'ll|'d|'m|-l[rsc]b-|-r[rsc]b-|([a-z]\.){2,})$")
# Separate tokens in PTB; commas and colons stay inside numbers such as 1,000 and 10:30.
_SEPARATORS = re.compile(r"[?!;\"]|(?<!\d)[,:]|[,:](?!\d)")
_SPLIT_OFF = re.compile(r"([$%()\[\]{}])")
_EDGES = ".'`-"
_ASCII = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
                        "\u2013": " -- ", "\u2014": " -- "})
_SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "wanna": "wan na", "gotta": "got ta"}


def tokenize(text):
  """Lower-cased words without punctuation, like pycocoevalcap's PTBTokenizer + filter.

  Like PTB: clitics are split off ("man's" -> "man 's", "don't" -> "do n't", "cannot" ->
  "can not"), as are "$", "%" and brackets (as -lrb- etc.); hyphenated words, numbers such
  as 3.5, 1,000 and 10:30, and abbreviations such as "u.s." stay whole; curly quotes and
  dashes count as their ascii forms. Checked against CoreNLP 3.4.1 (the jar pycocoevalcap
  runs) on typical captions; PTB's rarer rules are not reproduced (e.g. "mr." and "'90s"
  keep their punctuation in PTB, not here). Idempotent, so text that is already tokenised
  (space-separated, lower case) passes through unchanged.
  """
  text = _CLITIC.sub(r" \1", text.lower().translate(_ASCII))
  text = _SPLIT_OFF.sub(lambda m: " " + _BRACKETS.get(m.group(1), m.group(1)) + " ", text)
  out = []
  words = _SEPARATORS.sub(" ", text).split()
  for word in (part for w in words for part in _SPLIT_WORDS.get(w, w).split()):
    if not _KEEP.match(word):
      word = word.strip(_EDGES)
    if word and word not in PUNCTUATION:
      out.append(word)
  return out


def _ngrams(tokens, n):
  """Counts of all 1..n-grams of a token list, keyed by tuple."""
  counts = Counter()
  for k in range(1, n + 1):
    for i in range(len(tokens) - k + 1):
      counts[tuple(tokens[i:i + k])] += 1
  return counts


def _prepare(candidates, references):
  """Tokenised (candidate, references) per key, in a fixed key order."""
  if not candidates:
    raise ValueError("no captions to score")
  if set(candidates) != set(references):
    raise ValueError(f"candidates and references have different keys: "
                     f"{len(set(candidates) ^ set(references))} not in both")
  out = []
  for key in sorted(candidates, key=repr):
    refs = references[key]
    if isinstance(refs, str) or not refs:
      raise ValueError(f"references[{key!r}] must be a non-empty list of strings")
    out.append((tokenize(candidates[key]), [tokenize(r) for r in refs]))
  return out


def bleu(candidates, references, n=4):
  """Corpus BLEU-1..n as pycocoevalcap's Bleu scorer (option "closest") computes it.

  Args:
    candidates: {key: caption} with one generated caption per image.
    references: {key: [caption, ...]}, the same keys, at least one reference each.
  Returns:
    {"bleu1": ..., "bleu{n}": ...}. Clipped n-gram matches and lengths are summed over the
    corpus before the geometric mean and the brevity penalty (not averaged per sentence);
    the reference length of a sentence is the one closest to its candidate's (the shorter
    on ties). Like pycocoevalcap, every precision is (matches + 1e-15) / (total + 1e-9), so
    no n-gram overlap gives ~0 instead of a division error.
  """
  correct, guess = [0] * n, [0] * n
  cand_len = ref_len = 0
  for hyp, refs in _prepare(candidates, references):
    max_ref = Counter()
    for ref in refs:
      max_ref |= _ngrams(ref, n)  # | keeps the larger count: clip by the most in one ref
    for gram, count in _ngrams(hyp, n).items():
      correct[len(gram) - 1] += min(count, max_ref[gram])
    for k in range(n):
      guess[k] += max(0, len(hyp) - k)
    cand_len += len(hyp)
    ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
  tiny, small = 1e-15, 1e-9
  ratio = (cand_len + tiny) / (ref_len + small)
  penalty = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
  out, product = {}, 1.0
  for k in range(n):
    product *= (correct[k] + tiny) / (guess[k] + small)
    out[f"bleu{k + 1}"] = product ** (1 / (k + 1)) * penalty
  return out


def cider_d(candidates, references, sigma=6.0, n=4):
  """Corpus CIDEr-D as pycocoevalcap's Cider scorer (what COCO papers report as "CIDEr").

  Each caption becomes TF-IDF vectors of its 1..n-grams (raw counts times
  log(images) - log(max(1, document frequency)), the frequency counting the images whose
  references contain the n-gram, so the idf depends on the evaluated set: a single image
  scores 0). Per n-gram order, candidate and reference vectors are compared by a cosine
  whose dot product clips the candidate weight at the reference's (repeating a word does not
  help), damped by exp(-(length difference)^2 / (2 sigma^2)). The score of an image is 10 x
  the mean over orders, averaged over its references; the result is the mean over images.
  The length is counted in bigrams as pycocoevalcap does, which differs from word counts only
  for captions under two words. pycocoevalcap itself only runs with n=4.
  """
  data = [(_ngrams(hyp, n), [_ngrams(r, n) for r in refs])
          for hyp, refs in _prepare(candidates, references)]
  doc_freq = Counter()
  for _, refs in data:
    doc_freq.update(set().union(*refs))
  log_images = math.log(len(data))

  def vectorize(counts):
    vec = {g: c * (log_images - math.log(max(1.0, doc_freq[g]))) for g, c in counts.items()}
    norm = [0.0] * n
    for gram, weight in vec.items():
      norm[len(gram) - 1] += weight * weight
    length = sum(c for g, c in counts.items() if len(g) == 2)
    return vec, [math.sqrt(x) for x in norm], length

  scores = []
  for hyp, refs in data:
    vec, norm, length = vectorize(hyp)
    total = 0.0
    for ref in refs:
      vec_ref, norm_ref, length_ref = vectorize(ref)
      sims = [0.0] * n
      for gram, weight in vec.items():
        ref_weight = vec_ref.get(gram, 0.0)
        sims[len(gram) - 1] += min(weight, ref_weight) * ref_weight
      damping = math.exp(-((length - length_ref) ** 2) / (2 * sigma ** 2))
      for k in range(n):
        if norm[k] != 0 and norm_ref[k] != 0:
          sims[k] /= norm[k] * norm_ref[k]
        total += sims[k] * damping
    scores.append(10.0 * total / n / len(refs))
  return sum(scores) / len(scores)
