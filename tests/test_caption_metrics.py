"""BLEU and CIDEr-D against pycocoevalcap, plain formulas and their defining properties."""
import math
import random
from collections import Counter

import pytest

from vlp_jax.evaluate import caption_metrics as cm

# Five images with 3-5 references each; the expected scores below are what pycocoevalcap 1.2
# returns for these raw captions (its Java PTBTokenizer, then Bleu(4) and Cider()).
REFS = {
  1: ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean.",
      "A person on a surfboard riding a wave.", "Man surfing on a big, blue wave!"],
  2: ["Two dogs playing with a frisbee in the grass.",
      "A couple of dogs chasing a frisbee on a lawn.", "Two brown dogs run across a grassy field.",
      "Dogs play in a park with a red frisbee.", "A pair of dogs in a field with a frisbee."],
  3: ["A plate of food with broccoli and rice.", "A white plate topped with rice and vegetables.",
      "Broccoli, chicken and rice on a plate."],
  4: ["A red double decker bus driving down a street.", "A double decker bus on a city street.",
      "A large red bus parked by the side of the road.",
      "A bus driving on a busy road in the city."],
  5: ["A cat sleeping on a laptop keyboard.", "A black and white cat lying on a computer.",
      "A cat curled up on top of a laptop."],
}
CANDS = {1: "a man riding a wave on a surfboard", 2: "two dogs playing with a frisbee",
         3: "a plate of rice and broccoli", 4: "a red bus driving down a city street",
         5: "a dog sitting on a couch"}
COCO_BLEU = [0.8105677272313211, 0.7559844090393689, 0.6504612659055634, 0.5479347227553404]
COCO_CIDER = 2.1310051220174158

# Edge cases, scored the same way: repeated words (clipping), a one-word and an
# empty candidate (lengths counted in bigrams), clitics and hyphens.
EDGE_REFS = {
  "a": ["a giraffe standing next to a tree", "a tall giraffe eating leaves from a tree",
        "the giraffe isn't eating"],
  "b": ["a kitchen with a stove and a sink", "a small kitchen with white cabinets"],
  "c": ["people walking on a beach at sunset", "a group of people on the beach",
        "the beach's shore at dusk"],
  "d": ["a black-and-white photo of a train", "an old train at a station"],
}
EDGE_CANDS = {"a": "giraffe giraffe giraffe tree", "b": "Kitchen.",
              "c": "People on the beach at sunset.", "d": ""}
EDGE_BLEU = [0.2748362573275265, 0.2402089153984709, 0.2132017753537064, 0.1689017561322375]
EDGE_CIDER = 1.119956131185195

# Raw caption -> output of pycocoevalcap's PTBTokenizer (Stanford CoreNLP 3.4.1) + filter.
PTB = [
  ("The giraffe isn't eating; it's standing.", "the giraffe is n't eating it 's standing"),
  ("A black-and-white photo of a train (circa 1950).",
   "a black-and-white photo of a train -lrb- circa 1950 -rrb-"),
  ('Two dogs, one brown, play with a "frisbee" in the grass!',
   "two dogs one brown play with a frisbee in the grass"),
  ("Is this a cat? Yes: a cat -- sleeping...", "is this a cat yes a cat sleeping"),
  ("A U.S. Navy ship docked at 3.5 miles out, worth $1,000.",
   "a u.s. navy ship docked at 3.5 miles out worth $ 1,000"),
  ("People 'walking' on a `beach` at 10:30 a.m.", "people walking on a beach at 10:30 a.m."),
  ("The dogs' toys & bowls [left], 50% off", "the dogs toys & bowls -lsb- left -rsb- 50 % off"),
  ("I'm sure they'll say we've done what you'd do",
   "i 'm sure they 'll say we 've done what you 'd do"),
  ("A cat\u2019s paw \u2014 a man who cannot swim", "a cat 's paw a man who can not swim"),
]


def test_tokenize_matches_coco_ptb_tokenizer_and_is_idempotent():
  for raw, expected in PTB:
    assert " ".join(cm.tokenize(raw)) == expected
    assert cm.tokenize(expected) == expected.split()


def test_scores_match_pycocoevalcap():
  for cands, refs, bleus, cider in ((CANDS, REFS, COCO_BLEU, COCO_CIDER),
                                    (EDGE_CANDS, EDGE_REFS, EDGE_BLEU, EDGE_CIDER)):
    out = cm.bleu(cands, refs)
    assert [out[f"bleu{k}"] for k in range(1, 5)] == pytest.approx(bleus, rel=1e-12)
    assert cm.cider_d(cands, refs) == pytest.approx(cider, rel=1e-12)


def test_bleu_perfect_match_and_no_overlap():
  refs = {0: ["a cat on a mat", "the cat sat"], 1: ["two dogs in a park"]}
  perfect = cm.bleu({0: "a cat on a mat", 1: "two dogs in a park"}, refs)
  assert all(abs(v - 1.0) < 1e-9 for v in perfect.values())
  disjoint = cm.bleu({0: "green bicycles", 1: "the red house"}, refs)
  assert all(v < 1e-6 for v in disjoint.values())


def test_bleu_textbook_modified_precision():
  # Papineni et al. 2002: "the" x7 is clipped to the 2 "the"s of the first reference.
  out = cm.bleu({0: "the the the the the the the"},
                {0: ["the cat is on the mat", "there is a cat on the mat"]})
  assert out["bleu1"] == pytest.approx(2 / 7)  # length 7 is a reference's: no brevity penalty
  assert out["bleu2"] < 1e-6  # no bigram matches


def plain_bleu(cands, refs, n=4):
  """Corpus BLEU from the textbook formula, without smoothing."""
  matches, totals, c_len, r_len = [0] * n, [0] * n, 0, 0
  for key, cand in cands.items():
    words, ref_words = cand.split(), [r.split() for r in refs[key]]
    for k in range(1, n + 1):
      grams = Counter(tuple(words[i:i + k]) for i in range(len(words) - k + 1))
      for g, c in grams.items():
        matches[k - 1] += min(c, max(sum(tuple(r[i:i + k]) == g for i in range(len(r)))
                                     for r in ref_words))
      totals[k - 1] += sum(grams.values())
    c_len += len(words)
    r_len += sorted((abs(len(r) - len(words)), len(r)) for r in ref_words)[0][1]
  bp = min(1.0, math.exp(1 - r_len / c_len))
  return [bp * math.exp(sum(math.log(matches[j] / totals[j]) for j in range(k)) / k)
          for k in range(1, n + 1)]


def test_bleu_matches_the_plain_formula_with_brevity_penalty():
  refs = {0: ["the cat sat on the mat today", "a cat is sitting on the mat"],
          1: ["two dogs run in the big park", "dogs running in a park"],
          2: ["a red bus on the street", "the red bus drives down the street slowly"]}
  cands = {0: "the cat sat on a mat", 1: "two dogs in the park", 2: "a red bus on the street"}
  out = cm.bleu(cands, refs)
  expected = plain_bleu(cands, refs)
  assert expected[0] < 0.97  # 16 words against closest lengths 17: the penalty is in play
  assert [out[f"bleu{k}"] for k in range(1, 5)] == pytest.approx(expected, rel=1e-8)


def scene_captions():
  """Ten images, two references each, words mostly specific to each image."""
  things = ["cat", "dog", "bus", "giraffe", "pizza", "surfer", "train", "kite", "horse", "clock"]
  places = ["sofa", "park", "street", "zoo", "table", "wave", "station", "beach", "farm", "tower"]
  return {i: [f"a {t} on the {p}", f"the {t} is near a big {p} today"]
          for i, (t, p) in enumerate(zip(things, places))}


def test_cider_identical_sets_score_ten_and_mismatched_captions_much_less():
  refs = scene_captions()
  single = {k: v[:1] for k, v in refs.items()}
  assert cm.cider_d({k: v[0] for k, v in single.items()}, single) == pytest.approx(10.0)
  matched = cm.cider_d({k: v[0] for k, v in refs.items()}, refs)
  shifted = cm.cider_d({k: refs[(k + 1) % 10][0] for k in refs}, refs)
  assert matched > 3.0 and shifted < 0.1 * matched


def test_cider_is_invariant_to_reference_and_key_order():
  refs = scene_captions()
  cands = {k: v[1] for k, v in refs.items()}
  rng = random.Random(0)
  keys = list(refs)
  rng.shuffle(keys)
  shuffled = {k: rng.sample(refs[k], len(refs[k])) for k in keys}
  assert cm.cider_d(cands, shuffled) == pytest.approx(cm.cider_d(cands, refs), rel=1e-12)


def test_cider_length_penalty_is_gaussian_in_length_difference():
  refs = {k: v[:1] for k, v in scene_captions().items()}
  padded = {k: v[0] + " and the other things" for k, v in refs.items()}  # 4 words longer
  no_penalty = cm.cider_d(padded, refs, sigma=1e9)
  assert cm.cider_d(padded, refs) == pytest.approx(no_penalty * math.exp(-16 / 72))
  assert cm.cider_d(padded, refs) < cm.cider_d({k: v[0] for k, v in refs.items()}, refs)


def test_mismatched_keys_and_empty_sets_are_errors():
  with pytest.raises(ValueError, match="different keys"):
    cm.bleu({0: "a cat"}, {1: ["a cat"]})
  with pytest.raises(ValueError, match="non-empty list"):
    cm.cider_d({0: "a cat"}, {0: "a cat"})
  with pytest.raises(ValueError, match="no captions"):
    cm.cider_d({}, {})
