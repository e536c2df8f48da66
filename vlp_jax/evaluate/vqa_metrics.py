"""VQA accuracy with the answer normalisation of the official VQAv2 evaluation.

The rules follow `vqaEval.py` of the VQA API (GT-Vision-Lab/VQA, PythonEvaluationTools/
vqaEvaluation, as of its last fix, commit a013f00 of 2021) so the numbers can be compared with
published VQAv2 results: its processPunctuation and processDigitArticle, and the soft accuracy
min(1, matching humans / 3) averaged over the leave-one-out subsets of the human answers.
"""
import re
from collections import defaultdict

# processDigitArticle's manualMap: only these number words, so "eleven" stays a word.
NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
           "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset(["a", "an", "the"])
# The official table, quirks kept: it runs after lower-casing, so "Im", "Ive", "Id've" and
# "I'dve" never match, and "somebody'd" maps to "somebodyd" (backwards).
CONTRACTIONS = {
  "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
  "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
  "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
  "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
  "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
  "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
  "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
  "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
  "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
  "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
  "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
  "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
  "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
  "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
  "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
  "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
  "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
  "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
  "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
  "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
  "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
  "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
  "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
  "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
  "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
  "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
  "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
  "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
  "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
  "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
  "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
  "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
  "youre": "you're", "youve": "you've",
}
# processPunctuation's list. Periods, colons and apostrophes are not in it: "10:30" and
# "don't" stay whole, and periods go through _PERIOD.
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
               "@", "`", ",", "?", "!")
# A digit, comma, digit anywhere ("1,000") makes every punctuation mark vanish, not only commas.
_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")
# The official pattern is "(?!<=\d)(\.)(?!\d)"; its first group is a lookahead for the text
# "<=" + digit (a lookbehind was meant), always true before a ".", so it reduces to this:
# a period goes unless a digit follows ("3.5" and ".5" keep theirs, "3." and "dog." lose it).
_PERIOD = re.compile(r"\.(?!\d)")


def _punctuation(text):
  """processPunctuation: marks are deleted where they touch a space, else become a space."""
  strip_all = _COMMA_NUMBER.search(text) is not None
  out = text
  for mark in PUNCTUATION:
    # Decided per mark on the input text: "red, blue" deletes every comma, "red,blue" spaces it.
    if strip_all or mark + " " in text or " " + mark in text:
      out = out.replace(mark, "")
    else:
      out = out.replace(mark, " ")
  # The official call passes re.UNICODE as count, capping the periods removed at 32; no real
  # answer has that many, so no cap here.
  return _PERIOD.sub("", out)


def _digit_article(text):
  """processDigitArticle: lower case, number words as digits, no articles, contractions."""
  words = [NUMBERS.get(w, w) for w in text.lower().split()]
  return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_answer(text):
  """An answer as vqaEval.py compares it: "Two." -> "2", "the dog" -> "dog", "1,000" -> "1000".

  Newlines and tabs become spaces and the ends are stripped, then processPunctuation (the
  marks in PUNCTUATION deleted or spaced, periods removed unless a digit follows) and
  processDigitArticle (lower case; none/zero..ten as 0..10; a, an, the dropped; the
  CONTRACTIONS table, e.g. "dont" -> "don't"); words end up joined by single spaces.
  """
  return _digit_article(_punctuation(text.replace("\n", " ").replace("\t", " ").strip()))


def accuracy(prediction, answers):
  """VQAv2's soft accuracy of one answer against the human answers, in 0..1.

  For each human answer left out in turn, min(1, (others equal to the prediction) / 3); the
  result is the mean over the answers. With VQAv2's 10 answers this is 0, 0.3, 0.6, 0.9 and 1
  for 0, 1, 2, 3 and 4+ matches. Fewer answers get the same rule over what there is, so
  agreement counts for less: a single answer always scores 0 (no other answer is left to
  match) and 3 matching answers score 2/3; repeat answers to 10 (as OK-VQA repeats its 5) to
  score as VQAv2 does. Both sides are always normalised with `normalize_answer`. The official
  code normalises both only when the human answers disagree; when they are all the same it
  only strips whitespace, so there "Yes." against ten "yes" scores 0 and here 1 (a prediction
  that is already normalised scores the same in both).
  """
  if isinstance(answers, str) or not answers:
    raise ValueError("answers must be a non-empty list of strings")
  pred = normalize_answer(prediction)
  matches = sum(normalize_answer(a) == pred for a in answers)
  # Leaving out a matching answer leaves matches - 1 to agree with, any other leaves matches.
  return (matches * min(1.0, (matches - 1) / 3)
          + (len(answers) - matches) * min(1.0, matches / 3)) / len(answers)


def evaluate(predictions, answers, question_types=None):
  """Mean VQA accuracy over questions, overall and per question type.

  Args:
    predictions: {question_id: answer}, one predicted answer per question.
    answers: {question_id: [answer, ...]}, the same keys, the human answers.
    question_types: optional {question_id: type} with the same keys.
  Returns:
    {"accuracy": mean in 0..1, "accuracy/<type>": mean over that type's questions (only
    with question_types), "count": questions}; the evaluation reports them as
    vqa/<set>/accuracy and vqa/<set>/accuracy/<type>.
  """
  if not predictions:
    raise ValueError("no predictions to score")
  for name, other in (("answers", answers), ("question_types", question_types)):
    if other is not None and set(other) != set(predictions):
      raise ValueError(f"predictions and {name} have different keys: "
                       f"{len(set(predictions) ^ set(other))} not in both")
  scores, by_type = [], defaultdict(list)
  for key in sorted(predictions, key=repr):
    if isinstance(answers[key], str) or not answers[key]:
      raise ValueError(f"answers[{key!r}] must be a non-empty list of strings")
    score = accuracy(predictions[key], answers[key])
    scores.append(score)
    if question_types is not None:
      by_type[question_types[key]].append(score)
  out = {"accuracy": sum(scores) / len(scores), "count": len(scores)}
  for qtype in sorted(by_type):
    out[f"accuracy/{qtype}"] = sum(by_type[qtype]) / len(by_type[qtype])
  return out
