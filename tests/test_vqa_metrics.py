"""VQA accuracy and answer normalisation on hand-worked examples of vqaEval.py's rules."""
import pytest

from vlp_jax.evaluate import vqa_metrics as vm


@pytest.mark.parametrize("raw, want", [
  # Newlines and tabs are spaces, the ends stripped, words joined by one space.
  ("\tyes\n", "yes"),
  ("red\nand\tblue", "red and blue"),
  # Periods go unless a digit follows.
  ("dog.", "dog"),
  ("3.5", "3.5"),
  ("3.", "3"),
  (".5", ".5"),
  ("u.s.a.", "usa"),
  # A digit, comma, digit removes the comma, and every other mark with it.
  ("1,000", "1000"),
  ("1,000,000", "1000000"),
  ("1,000 t-shirts", "1000 tshirts"),
  # Without one, a mark touching a space is deleted, any other becomes a space.
  ("red,blue", "red blue"),
  ("red, blue", "red blue"),
  ("t-shirt, jeans", "t shirt jeans"),    # "-" touches no space: spaced
  ("t-shirt - jeans", "tshirt jeans"),    # " - " occurs: every "-" deleted
  ("yes!", "yes"),
  ("why?", "why"),
  ('"stop"', "stop"),
  ("@home", "home"),
  ("(a) cat", "cat"),                     # "(" spaced, ")" deleted, then "a" dropped
  ("black/white", "black white"),
  # Not punctuation there: colons and apostrophes stay.
  ("10:30", "10:30"),
  ("don't", "don't"),
  # Lower case; number words none/zero..ten only.
  ("YES", "yes"),
  ("Two", "2"),
  ("none", "0"),
  ("zero", "0"),
  ("ten", "10"),
  ("eleven", "eleven"),
  ("one dog", "1 dog"),
  # Articles dropped, wherever they are.
  ("the dog", "dog"),
  ("A cat on an apple", "cat on apple"),
  ("the", ""),
  ("there", "there"),
  # Contractions without their apostrophe get it back.
  ("dont", "don't"),
  ("Isnt", "isn't"),
  ("whats that", "what's that"),
  ("oclock", "o'clock"),
  ("Im", "im"),                           # the official key is "Im", never met in lower case
  # Combined.
  ("Two.", "2"),
  ("The two dogs.", "2 dogs"),
  ("  Yes, it's a T-shirt!\n", "yes it's t shirt"),
  ("None of the above.", "0 of above"),
  ("There are 1,000 (roughly).", "there are 1000 roughly"),
])
def test_normalize_answer(raw, want):
  assert vm.normalize_answer(raw) == want


def test_normalize_is_idempotent_on_normalised_answers():
  for text in ["2 dogs", "don't", "3.5", "yes it's t shirt", "1000"]:
    assert vm.normalize_answer(text) == text


def _ten(matches, answer="2"):
  return [answer] * matches + ["many"] * (10 - matches)


@pytest.mark.parametrize("matches, want", [
  # Leaving out one of the k matching answers leaves k-1 matches, any other leaves k:
  # mean = (k * min(1, (k-1)/3) + (10-k) * min(1, k/3)) / 10.
  (0, 0.0),   # 10 * 0 / 10
  (1, 0.3),   # (1 * 0 + 9 * 1/3) / 10 = 3/10
  (2, 0.6),   # (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 6/10
  (3, 0.9),   # (3 * 2/3 + 7 * 1) / 10 = (2 + 7) / 10
  (4, 1.0),   # (4 * 1 + 6 * 1) / 10
  (10, 1.0),  # (10 * 1) / 10
])
def test_accuracy_ten_answers(matches, want):
  assert vm.accuracy("2", _ten(matches)) == pytest.approx(want)


def test_accuracy_normalises_both_sides():
  # "Two." and "two" are "2", "the 2" too: 3 matches of 10.
  answers = ["two", "the 2", "2", "3", "3", "3", "3", "3", "3", "3"]
  assert vm.accuracy("Two.", answers) == pytest.approx(0.9)
  assert vm.accuracy("3", answers) == pytest.approx(1.0)


def test_accuracy_fewer_answers():
  # One answer: leaving it out leaves nothing to match.
  assert vm.accuracy("yes", ["yes"]) == 0.0
  # Three matching: each left out leaves 2 -> 2/3.
  assert vm.accuracy("yes", ["yes"] * 3) == pytest.approx(2 / 3)
  # Four matching of five: (4 * 1 + 1 * 1) / 5; two of five: (2 * 1/3 + 3 * 2/3) / 5 = 8/15.
  assert vm.accuracy("yes", ["yes"] * 4 + ["no"]) == pytest.approx(1.0)
  assert vm.accuracy("yes", ["yes"] * 2 + ["no"] * 3) == pytest.approx(8 / 15)


@pytest.mark.parametrize("answers", [[], "yes"])
def test_accuracy_needs_answers(answers):
  with pytest.raises(ValueError, match="non-empty list"):
    vm.accuracy("yes", answers)


def test_evaluate_per_type():
  preds = {1: "2", 2: "Red.", 3: "yes", 4: "no"}
  answers = {1: _ten(3), 2: ["red"] * 10, 3: _ten(1, "yes"), 4: ["yes"] * 10}
  types = {1: "count", 2: "color", 3: "yes/no", 4: "yes/no"}
  out = vm.evaluate(preds, answers, types)
  # Per question 0.9, 1.0, 0.3, 0.0.
  assert out["count"] == 4
  assert out["accuracy"] == pytest.approx((0.9 + 1.0 + 0.3 + 0.0) / 4)
  assert out["accuracy/count"] == pytest.approx(0.9)
  assert out["accuracy/color"] == pytest.approx(1.0)
  assert out["accuracy/yes/no"] == pytest.approx(0.15)
  assert set(out) == {"count", "accuracy", "accuracy/count", "accuracy/color",
                      "accuracy/yes/no"}
  assert vm.evaluate(preds, answers) == {"accuracy": out["accuracy"], "count": 4}


def test_evaluate_errors():
  with pytest.raises(ValueError, match="no predictions"):
    vm.evaluate({}, {})
  with pytest.raises(ValueError, match="answers have different keys"):
    vm.evaluate({1: "a"}, {2: ["a"]})
  with pytest.raises(ValueError, match="question_types have different keys"):
    vm.evaluate({1: "a"}, {1: ["a"]}, {2: "t"})
  with pytest.raises(ValueError, match=r"answers\[1\] must be"):
    vm.evaluate({1: "a"}, {1: []})
