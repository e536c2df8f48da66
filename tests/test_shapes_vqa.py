"""shapes_vqa: every answer re-derived here from the scene (and colours from the pixels),
references that pick one object, flat answer priors, fixed disjoint splits, the vqa.jsonl
folder round trip and its skip counts."""
import collections
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from vlp_jax.data import scenes
from vlp_jax.data import shapes_vqa

TRAIN = list(shapes_vqa.examples("train", 900))
TEST = list(shapes_vqa.examples("test", 300))
PLURAL = {"circles": "circle", "squares": "square", "triangles": "triangle",
          "crosses": "cross"}


def _objects(split, index):
  scene = scenes.make_scene(shapes_vqa.SEEDS[split], index)
  return scene, [dict(size=s, color=c, shape=k, box=b)
                 for (s, c, k), b in zip(scene["objects"], scene["boxes"])]


def _description(text):
  """attribute -> value of a noun phrase like 'large red circle' or 'red object'."""
  *words, noun = text.split()
  desc = {} if noun == "object" else {"shape": noun}
  for word in words:
    kind = "size" if word in scenes.SIZES else "color"
    assert word in scenes.COLORS or kind == "size", text
    assert kind not in desc, text
    desc[kind] = word
  assert noun == "object" or noun in scenes.SHAPES, text
  return desc


def _matching(objects, desc):
  return [o for o in objects if all(o[k] == v for k, v in desc.items())]


def _the(objects, text):
  """The one object a reference names; fails on an ambiguous or empty reference."""
  found = _matching(objects, _description(text))
  assert len(found) == 1, f"{text!r} names {len(found)} objects"
  return found[0], _description(text)


def _clearly(a, b, direction):
  """Whether box a lies wholly `direction` box b, with an empty pixel line between them."""
  (ay, ax, aside), (by, bx, bside) = a, b
  return {"left of": ax + aside < bx, "right of": bx + bside < ax,
          "above": ay + aside < by, "below": by + bside < ay}[direction]


def _solve(question, scene, objects):
  """(question type, answer) recomputed from the scene, independently of shapes_vqa."""
  if m := re.fullmatch(r"what (color|shape|size) is the (.+)\?", question):
    kind = m.group(1)
    obj, desc = _the(objects, m.group(2))
    assert kind not in desc, question  # never named by what is asked
    if kind == "color":  # the pixel at the box centre is inside every shape's mask
      y, x, side = obj["box"]
      pixel = scene["image"][y + side // 2, x + side // 2]
      assert tuple(pixel) == scenes.COLORS[obj["color"]], question
    return kind, obj[kind]
  if m := re.fullmatch(r"how many (.+) are there\?", question):
    words = m.group(1).split()
    if words == ["shapes"]:
      return "count", shapes_vqa.COUNT_WORDS[len(objects)]
    if len(words) == 1:
      return "count", shapes_vqa.COUNT_WORDS[len(_matching(objects,
                                                           {"shape": PLURAL[words[0]]}))]
    assert words[1] == "shapes" and len(words) == 2, question
    kind = "size" if words[0] in scenes.SIZES else "color"
    return "count", shapes_vqa.COUNT_WORDS[len(_matching(objects, {kind: words[0]}))]
  if m := re.fullmatch(r"is the (.+?) (left of|right of|above|below) the (.+)\?", question):
    a, _ = _the(objects, m.group(1))
    b, _ = _the(objects, m.group(3))
    assert a is not b, question
    yes = _clearly(a["box"], b["box"], m.group(2))
    opposite = {"left of": "right of", "right of": "left of", "above": "below",
                "below": "above"}[m.group(2)]
    assert yes or _clearly(a["box"], b["box"], opposite), f"unclear: {question}"
    return "position", "yes" if yes else "no"
  if m := re.fullmatch(r"is there an? (.+)\?", question):
    return "exists", "yes" if _matching(objects, _description(m.group(1))) else "no"
  raise AssertionError(f"unknown question form: {question!r}")


@pytest.mark.parametrize("split,exs", [("train", TRAIN), ("test", TEST)])
def test_every_answer_is_right_and_every_reference_unique(split, exs):
  for ex in exs:
    scene, objects = _objects(split, ex["scene"])
    assert ex["image"] == scene["png"]
    qtype, answer = _solve(ex["question"], scene, objects)
    assert ex["question_type"] == qtype, ex["question"]
    assert ex["answers"] == [answer] * shapes_vqa.NUM_ANSWERS, ex["question"]
  assert {ex["question_type"] for ex in exs} == set(shapes_vqa.TYPES)


def test_answer_priors_are_flat():
  prior = shapes_vqa.answer_prior(TRAIN)
  for qtype, answers in shapes_vqa.ANSWERS.items():
    assert set(prior[qtype]) == set(answers), qtype  # every answer occurs
    tally = collections.Counter(ex["answers"][0] for ex in TRAIN
                                if ex["question_type"] == qtype)
    assert max(tally.values()) - min(tally.values()) <= shapes_vqa.MARGIN + 1, (qtype, tally)
    assert max(abs(p - 1 / len(answers)) for p in prior[qtype].values()) < 0.03, qtype
  for qtype in ("position", "exists"):
    assert abs(prior[qtype]["yes"] - 0.5) < 0.02


def test_deterministic_prefix_capped_and_disjoint_splits():
  again = list(shapes_vqa.examples("train", 200))
  assert [(e["key"], e["question"], e["answers"]) for e in again] == [
      (e["key"], e["question"], e["answers"]) for e in TRAIN[:200]]
  assert max(collections.Counter(e["scene"] for e in TRAIN).values()) <= 3
  single = list(shapes_vqa.examples("test", 50, per_scene=1))
  assert len({e["scene"] for e in single}) == 50
  assert not {e["image"] for e in TRAIN} & {e["image"] for e in TEST}
  assert len({e["key"] for e in TRAIN}) == len(TRAIN)
  with pytest.raises(ValueError, match="unknown split 'val'"):
    next(shapes_vqa.examples("val", 1))


def test_jsonl_round_trip_and_holdout(tmp_path):
  folder = str(tmp_path / "vqa")
  shapes_vqa.main(["--out", folder, "--split", "test", "--count", "120"])
  whole = shapes_vqa.read_vqa_folder(folder)
  assert whole.name == "vqa" and not any(whole.skipped.values())
  assert [(e["question"], e["answers"], e["question_type"]) for e in whole.examples] == [
      (e["question"], e["answers"], e["question_type"]) for e in TEST[:120]]
  for ex, original in zip(whole.examples, TEST):
    with open(ex["path"], "rb") as f:
      assert f.read() == original["image"]
  train = shapes_vqa.read_vqa_folder(folder, "train", holdout_percent=30)
  test = shapes_vqa.read_vqa_folder(folder, "test", holdout_percent=30)
  assert sorted(e["key"] for e in train.examples + test.examples) == sorted(
      e["key"] for e in whole.examples)
  assert not {e["image"] for e in train.examples} & {e["image"] for e in test.examples}
  assert test.examples and len(test.examples) < len(train.examples)
  again = shapes_vqa.read_vqa_folder(folder, "test", holdout_percent=30)
  assert [e["key"] for e in again.examples] == [e["key"] for e in test.examples]


def _write(folder, lines, files):
  os.makedirs(folder, exist_ok=True)
  for name, data in files.items():
    if data is None:
      os.makedirs(os.path.join(folder, name), exist_ok=True)
    else:
      with open(os.path.join(folder, name), "wb") as f:
        f.write(data)
  with open(os.path.join(folder, "vqa.jsonl"), "wb") as f:
    f.write(b"\n".join(l if isinstance(l, bytes) else json.dumps(l).encode() for l in lines))
  return folder


def _line(image, question="what color is it?", answers=("red",), **extra):
  return dict(image=image, question=question, answers=list(answers), **extra)


def test_bad_lines_are_skipped_and_counted(tmp_path):
  png = scenes.make_scene(0, 0)["png"]
  files = {"a.png": png, "b.png": png, "empty.png": b"", "text.png": b"not an image",
           "cut.png": png[:len(png) // 2], "dir.png": None}
  lines = [
      _line("a.png", question_type="color"),
      _line("b.png", answers=["red", " ", "dark red"]),
      b"{not json",
      b"[1, 2]",
      b'{"image": "a.png", "question": "caf\xff?", "answers": ["x"]}',
      b'{"image": "a.png", "question": "lone \\ud800?", "answers": ["x"]}',  # not UTF-8
      dict(image="a.png", answers=["red"]),  # no question
      dict(image="a.png", question="what?", answers="red"),  # answers not a list
      _line("a.png", question_type=3),
      _line("", answers=["red"]),
      _line("a.png", question="   "),
      _line("a.png", answers=[]),
      _line("a.png", answers=["", "  "]),
      _line("../a.png"),
      _line("/etc/passwd"),
      _line("gone.png"),
      _line("dir.png"),
      _line("empty.png"),
      _line("text.png"),
      _line("cut.png"),
      b"",
  ]
  got = shapes_vqa.read_vqa_folder(_write(str(tmp_path / "mixed"), lines, files))
  assert [(e["image"], e["answers"], e["question_type"]) for e in got.examples] == [
      ("a.png", ["red"], "color"), ("b.png", ["red", "dark red"], "")]
  assert got.skipped == dict(
      bad_json=2, bad_utf8=2, bad_field=4, empty_question=1, empty_answers=2,
      outside_folder=2, missing_file=1, not_a_file=1, empty_file=1, not_an_image=1,
      truncated=1, too_large=0)
  assert set(got.skipped) == set(shapes_vqa.REASONS)


def test_folder_without_usable_record_is_a_one_line_error(tmp_path):
  cases = {
      "nothing_good": ([b"{oops", _line("gone.png")], {}),
      "empty_index": ([], {}),
  }
  for name, (lines, files) in cases.items():
    folder = _write(str(tmp_path / name), lines, files)
    with pytest.raises(ValueError) as info:
      shapes_vqa.read_vqa_folder(folder)
    message = str(info.value)
    assert "\n" not in message and os.path.join(folder, "vqa.jsonl") in message
    assert "no usable VQA record" in message
    if name == "nothing_good":
      assert "'bad_json': 1" in message and "'missing_file': 1" in message
  with pytest.raises(ValueError, match="has no vqa.jsonl"):
    shapes_vqa.read_vqa_folder(str(tmp_path))
  with pytest.raises(ValueError, match="does not exist"):
    shapes_vqa.read_vqa_folder(str(tmp_path / "absent"))
  folder = _write(str(tmp_path / "one"), [_line("a.png")], {"a.png": np.zeros(1).tobytes()})
  with pytest.raises(ValueError, match=r"split 'test' \(50% holdout\)|not_an_image"):
    shapes_vqa.read_vqa_folder(folder, "test", holdout_percent=50)


def test_questions_are_the_same_in_every_process():
  """Two processes with different string hashing (PYTHONHASHSEED) write the same questions:
  hosts that materialise builtin:shapes_vqa apart must agree."""
  code = ("import hashlib, json; from vlp_jax.data import shapes_vqa; "
          "exs = [(e['question'], e['answers'][0]) for e in shapes_vqa.examples('train', 400)]; "
          "print(hashlib.md5(json.dumps(exs).encode()).hexdigest())")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  procs = [subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE,
                            env=dict(os.environ, PYTHONHASHSEED=str(seed)), text=True)
           for seed in (1, 2)]
  digests = [p.communicate(timeout=300)[0].strip().splitlines()[-1] for p in procs]
  assert digests[0] == digests[1]
