"""Visual questions about the built-in shapes scenes, and the `vqa.jsonl` folder form.

Questions come from each scene's own metadata (scenes.make_scene's `objects` and `boxes`),
so every answer is right and needs no download. An object is only ever named by a
description that fits exactly one object of its scene, and never by the attribute asked
about. Answers are balanced per question type as far as the scenes allow: a question is
only kept while its answer is at most MARGIN ahead of the type's rarest answer, so a type's
commonest answer scores its chance level. The wording of colour, shape, size, position and
existence questions says nothing of the answer; a count question's does ("how many shapes"
is never 0, "how many red shapes" is mostly 0 or 1).

Splits: scenes from builtin:shapes's own seeds (train: seed 0, test: seed 1; scene index 0,
1, ...), so the test scenes are drawn apart from every training scene, and the first 1,000
test scenes are builtin:shapes:test's. A split's questions are one deterministic stream,
at most `per_scene` per scene; `count` takes its first questions.

Data specs (vqa_source.py): `builtin:shapes_vqa:train|test` writes these questions once as
a folder under the TFDS data dir and reads it back; `vqa:PATH[:train|:test]` reads a user's
folder. Their records carry the question as `caption`, plus `answers` and `question_type`,
through the same training iterator and eval sets as captions.

Folder form, for users' own data: `vqa.jsonl` lines {"image": "relative/path.png",
"question": "...", "answers": ["...", ...], "question_type": "..." (optional)} next to the
images; read_vqa_folder validates them, skips and counts the bad ones.

  python -m vlp_jax.data.shapes_vqa --out=DIR --split=train --count=N
"""
import argparse
import dataclasses
import itertools
import json
import os

from absl import logging
import numpy as np

from vlp_jax.data import checks
from vlp_jax.data import scenes
from vlp_jax.data import sources
from vlp_jax.data.tf_setup import tf

SEEDS = {"train": 0, "test": 1}  # shapes.SPLITS's seeds: the same scenes as builtin:shapes
TYPES = ("color", "shape", "size", "count", "position", "exists")
COUNT_WORDS = ("none", "one", "two", "three")
ANSWERS = {
    "color": scenes.COLOR_NAMES,
    "shape": scenes.SHAPES,
    "size": scenes.SIZE_NAMES,
    # Words, as the captions spell numbers: a tokenizer trained on the captions has no
    # digits. VQAv2's answer normalisation reads "none", "one", ... as 0, 1, ...
    "count": COUNT_WORDS,
    "position": ("yes", "no"),
    "exists": ("yes", "no"),
}
NUM_ANSWERS = 10  # VQAv2 has 10 human answers per question; ours all agree
MARGIN = 1  # how far one answer's count may run ahead of its type's rarest answer
ATTRS = ("size", "color", "shape")
DIRECTIONS = ("left of", "right of", "above", "below")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# Attribute sets of "is there a ...?": drawn before the answer, so the wording says nothing
# about it (a lone "circle" is present more often than a full "large red circle").
EXIST_FORMS = (("color",), ("shape",), ("color", "shape"), ("size", "shape"),
               ("size", "color", "shape"))
PLURALS = {"cross": "crosses"}


def objects_of(scene):
  """[{size, color, shape, box}] of a make_scene dict."""
  return [dict(zip(ATTRS, names), box=box) for names, box in zip(scene["objects"],
                                                                   scene["boxes"])]


def gap(a, b, direction):
  """Empty pixels between boxes a and b when a lies `direction` b (<= 0: it does not)."""
  (ay, ax, aside), (by, bx, bside) = a, b
  return {"left of": bx - (ax + aside), "right of": ax - (bx + bside),
          "above": by - (ay + aside), "below": ay - (by + bside)}[direction]


def noun_phrase(desc):
  """'large red circle', 'red object': the description's words, size then colour then shape."""
  words = [desc[a] for a in ("size", "color") if a in desc]
  return " ".join(words + [desc.get("shape", "object")])


def _fits(desc, obj):
  return all(obj[a] == v for a, v in desc.items())


def unique_descriptions(objects, i, exclude=()):
  """Descriptions (attribute -> value) of object i that fit no other object of the scene."""
  attrs = [a for a in ATTRS if a not in exclude]
  out = []
  for mask in range(1, 2 ** len(attrs)):
    desc = {a: objects[i][a] for k, a in enumerate(attrs) if mask >> k & 1}
    if sum(_fits(desc, o) for o in objects) == 1:
      out.append(desc)
  return out


def _attribute_questions(objects, rng, kind):
  """(answer, question) pairs asking an object's colour, shape or size."""
  verb = {"color": "what color is", "shape": "what shape is", "size": "what size is"}[kind]
  out = []
  for i, obj in enumerate(objects):
    descs = unique_descriptions(objects, i, exclude=(kind,))
    if descs:
      desc = descs[rng.integers(len(descs))]
      out.append((obj[kind], f"{verb} the {noun_phrase(desc)}?"))
  return out


def _count_questions(objects, rng):
  del rng  # every candidate is listed
  out = [(COUNT_WORDS[len(objects)], "how many shapes are there?")]
  for kind in ATTRS:
    for value in ANSWERS[kind]:
      n = sum(o[kind] == value for o in objects)
      words = PLURALS.get(value, value + "s") if kind == "shape" else value + " shapes"
      out.append((COUNT_WORDS[n], f"how many {words} are there?"))
  return out


def _position_questions(objects, rng):
  descs = [unique_descriptions(objects, i) for i in range(len(objects))]
  out = []
  for i, a in enumerate(objects):
    for j, b in enumerate(objects):
      da, db = descs[i], descs[j]
      if i == j or not da or not db:
        continue
      for direction in DIRECTIONS:
        if gap(a["box"], b["box"], direction) >= 1:
          answer = "yes"
        elif gap(a["box"], b["box"], OPPOSITE[direction]) >= 1:
          answer = "no"
        else:
          continue  # the boxes overlap along this axis: no clear answer
        out.append((answer, f"is the {noun_phrase(da[rng.integers(len(da))])} {direction} "
                            f"the {noun_phrase(db[rng.integers(len(db))])}?"))
  return out


def _exists_questions(objects, rng):
  form = EXIST_FORMS[rng.integers(len(EXIST_FORMS))]
  out = []
  for combo in itertools.product(*(ANSWERS[a] for a in form)):
    desc = dict(zip(form, combo))
    present = any(_fits(desc, o) for o in objects)
    article = "an" if noun_phrase(desc)[0] in "aeiou" else "a"
    out.append(("yes" if present else "no", f"is there {article} {noun_phrase(desc)}?"))
  return out


CANDIDATES = {
    "color": lambda objects, rng: _attribute_questions(objects, rng, "color"),
    "shape": lambda objects, rng: _attribute_questions(objects, rng, "shape"),
    "size": lambda objects, rng: _attribute_questions(objects, rng, "size"),
    "count": _count_questions,
    "position": _position_questions,
    "exists": _exists_questions,
}


def _pick(candidates, counts, rng):
  """One (answer, question): the rarest answer so far among those the scene offers, if it is
  within MARGIN of the type's rarest; ties and questions drawn at random. None: skip."""
  floor = min(counts.values())
  # The tie-breaking draws go to the answers in sorted order: a set's order follows the
  # process's string hashing, which would make the questions differ between processes.
  offered = sorted(sorted({a for a, _ in candidates}),
                   key=lambda a: (counts[a], rng.random()))
  if not offered or counts[offered[0]] > floor + MARGIN:
    return None
  same = [c for c in candidates if c[0] == offered[0]]
  return same[rng.integers(len(same))]


def examples(split, count, per_scene=3):
  """The first `count` questions of `split`: dicts of key, image (PNG bytes), question,
  answers (the answer NUM_ANSWERS times), question_type, and scene (its make_scene index)."""
  if split not in SEEDS:
    raise ValueError(f"shapes_vqa: unknown split {split!r}; known: {tuple(SEEDS)}")
  if per_scene < 1:
    raise ValueError(f"shapes_vqa: per_scene must be at least 1, got {per_scene}")
  seed = SEEDS[split]
  counts = {t: {a: 0 for a in ANSWERS[t]} for t in TYPES}
  made, index = 0, 0
  while made < count:
    scene = scenes.make_scene(seed, index)
    objects = objects_of(scene)
    rng = np.random.default_rng([seed, index, 1])  # stream 1: the scene itself drew stream 0
    taken = 0
    for qtype in rng.permutation(TYPES).tolist():
      if taken == per_scene or made == count:
        break
      choice = _pick(CANDIDATES[qtype](objects, rng), counts[qtype], rng)
      if choice is None:
        continue
      answer, question = choice
      counts[qtype][answer] += 1
      yield dict(key=f"{split}_{index:06d}_{qtype}", image=scene["png"], question=question,
                 answers=[answer] * NUM_ANSWERS, question_type=qtype, scene=index)
      taken += 1
      made += 1
    index += 1


def answer_prior(exs):
  """question type -> {answer: fraction of that type's questions}."""
  out = {}
  for ex in exs:
    tally = out.setdefault(ex["question_type"], {})
    tally[ex["answers"][0]] = tally.get(ex["answers"][0], 0) + 1
  return {t: {a: n / sum(tally.values()) for a, n in sorted(tally.items())}
          for t, tally in out.items()}


def write_jsonl_folder(path, split, count, per_scene=3):
  """Writes the first `count` questions of `split` as a VQA folder (images/ and vqa.jsonl);
  read it back whole with read_vqa_folder(path). Returns the answer prior per type."""
  os.makedirs(os.path.join(path, "images"), exist_ok=True)
  written, scenes_written = [], set()
  with open(os.path.join(path, "vqa.jsonl"), "w", encoding="utf-8") as index:
    for ex in examples(split, count, per_scene):
      rel = os.path.join("images", f"{split}_{ex['scene']:06d}.png")
      if ex["scene"] not in scenes_written:
        scenes_written.add(ex["scene"])
        with open(os.path.join(path, rel), "wb") as f:
          f.write(ex["image"])
      index.write(json.dumps({"image": rel, "question": ex["question"],
                              "answers": ex["answers"],
                              "question_type": ex["question_type"]}) + "\n")
      written.append(ex)
  return answer_prior(written)


LINE_REASONS = ("bad_json", "bad_utf8", "bad_field", "empty_question", "empty_answers",
                "outside_folder")
IMAGE_REASONS = checks.REASONS[:6]  # the pipeline's image checks, by the same names
REASONS = LINE_REASONS + IMAGE_REASONS


@dataclasses.dataclass
class VqaFolder:
  """A read VQA folder: `examples` (dicts of key, path, image (relative), question, answers,
  question_type) and `skipped` (reason -> lines skipped, every REASONS entry present)."""
  name: str
  examples: list
  skipped: dict


def _parse_line(raw, allow_outside_paths):
  """(example fields, None) or (None, skip reason) for one line of vqa.jsonl."""
  try:
    obj = json.loads(raw.decode("utf-8"))
  except UnicodeDecodeError:
    return None, "bad_utf8"
  except json.JSONDecodeError:
    return None, "bad_json"
  if not isinstance(obj, dict):
    return None, "bad_json"
  image, question, answers = obj.get("image"), obj.get("question"), obj.get("answers")
  qtype = obj.get("question_type", "")
  if (not isinstance(image, str) or not image or not isinstance(question, str) or
      not isinstance(answers, list) or not all(isinstance(a, str) for a in answers) or
      not isinstance(qtype, str)):
    return None, "bad_field"
  try:  # JSON escapes can spell lone surrogates, which no UTF-8 text holds
    "".join([image, question, qtype] + answers).encode("utf-8")
  except UnicodeEncodeError:
    return None, "bad_utf8"
  if not question.strip():
    return None, "empty_question"
  answers = [a.strip() for a in answers if a.strip()]
  if not answers:
    return None, "empty_answers"
  if not allow_outside_paths and sources._escapes(image):  # pylint: disable=protected-access
    return None, "outside_folder"
  return dict(image=image, question=question.strip(), answers=answers,
              question_type=qtype), None


def _image_reasons(paths):
  """path -> skip reason or None, by the pipeline's own cheap checks (checks.check)."""
  file_flaw = sources._file_flaw  # pylint: disable=protected-access
  flaws = np.array([file_flaw(p) for p in paths], np.int32)
  ds = tf.data.Dataset.from_tensor_slices(dict(
      key=np.array(paths, object), path=np.array(paths, object),
      image=np.full(len(paths), b"", object), missing=flaws > 0, flaw=flaws,
      caption=np.full(len(paths), b"question", object)))
  codes = list(ds.map(lambda r: checks.check(r)["reason"]).as_numpy_iterator())
  return {p: checks.REASONS[c - 1] if c else None for p, c in zip(paths, codes)}


def read_vqa_folder(path, split=None, holdout_percent=10, allow_outside_paths=False):
  """The usable questions of folder `path`'s vqa.jsonl, optionally one split of it: 'test'
  holds the images whose path hashes into holdout_percent% (as jsonl: caption folders do),
  so an image's questions never straddle the split. Lines that cannot be read or used are
  skipped and counted (a bad line belongs to no split, so every split counts it)."""
  split_of = sources._split_of  # pylint: disable=protected-access
  index_path = os.path.join(path, "vqa.jsonl")
  if not os.path.isdir(path):
    raise ValueError(f"VQA data folder {path!r} does not exist")
  if not os.path.isfile(index_path):
    raise ValueError(f"VQA data folder {path!r} has no vqa.jsonl")
  if split not in (None, "train", "test"):
    raise ValueError(f"{index_path}: unknown split {split!r}; expected train or test")
  skipped = {r: 0 for r in REASONS}
  kept = []
  with open(index_path, "rb") as f:
    for number, raw in enumerate(f, 1):
      if not raw.strip():
        continue
      fields, reason = _parse_line(raw, allow_outside_paths)
      if reason:
        skipped[reason] += 1
        logging.warning("Skipping line %d of %s: reason=%s", number, index_path, reason)
        continue
      if split is None or split_of(fields["image"], holdout_percent) == split:
        kept.append(dict(fields, key=f"{fields['image']}#{number}",
                         path=os.path.join(path, fields["image"])))
  reasons = _image_reasons(sorted({ex["path"] for ex in kept})) if kept else {}
  usable = []
  for ex in kept:
    reason = reasons[ex["path"]]
    if reason:
      skipped[reason] += 1
      logging.warning("Skipping record %s of %s: reason=%s", ex["key"], index_path, reason)
    else:
      usable.append(ex)
  if not usable:
    where = f" in split {split!r} ({holdout_percent}% holdout)" if split else ""
    raise ValueError(f"{index_path}: no usable VQA record{where} (skipped: "
                     f"{ {k: v for k, v in skipped.items() if v} })")
  return VqaFolder(os.path.basename(os.path.normpath(path)), usable, skipped)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="folder for vqa.jsonl and images/")
  parser.add_argument("--split", default="train", choices=tuple(SEEDS))
  parser.add_argument("--count", type=int, default=10_000, help="questions to write")
  parser.add_argument("--per_scene", type=int, default=3, help="most questions per scene")
  args = parser.parse_args(argv)
  prior = write_jsonl_folder(args.out, args.split, args.count, args.per_scene)
  print(f"Wrote {args.count} {args.split} questions to {args.out}; answer prior per type:")
  for qtype, tally in prior.items():
    print(f"  {qtype}: " + ", ".join(f"{a} {p:.3f}" for a, p in tally.items()))


if __name__ == "__main__":
  main()
