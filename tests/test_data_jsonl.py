"""jsonl: sources: spec parsing, the stable train/test split, errors that name the culprit,
image paths confined to the folder."""
import json
import os

import pytest

from vlp_jax import config_lib
from vlp_jax import data
from vlp_jax.data import scenes
from vlp_jax.data import sources
from vlp_jax.data.jsonl_writer import write_jsonl_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMOJI = os.path.join(REPO, "..", "shared", "data", "emoji_noto")


def _folder(tmp_path, n=60):
  png = scenes.make_scene(0, 0)["png"]
  return write_jsonl_folder(str(tmp_path / "tiny_set"),
                            [(f"{i:03d}.png", png, f"caption {i}") for i in range(n)])


def test_split_is_disjoint_covering_and_deterministic(tmp_path):
  folder = _folder(tmp_path)
  whole = data.get_source("jsonl:" + folder)
  train = data.get_source(f"jsonl:{folder}:train", holdout_percent=20)
  test = data.get_source(f"jsonl:{folder}:test", holdout_percent=20)
  assert whole.name == train.name == "tiny_set"
  assert whole.zeroshot_tasks == {}
  assert not set(train.keys) & set(test.keys)
  assert sorted(train.keys + test.keys) == sorted(whole.keys)
  assert 0 < len(test.keys) < len(train.keys)
  again = data.get_source(f"jsonl:{folder}:test", holdout_percent=20)
  assert again.keys == test.keys
  assert sorted(test.captions() + train.captions()) == sorted(whole.captions())


def _error(spec, *needles, **kwargs):
  with pytest.raises(ValueError) as info:
    data.get_source(spec, **kwargs)
  for needle in needles:
    assert needle in str(info.value)


def test_errors_name_the_culprit(tmp_path):
  _error("nope:x", "nope", "builtin", "jsonl")
  _error("builtin:cats:train", "cats")
  _error("builtin:shapes:valid", "builtin:shapes:valid")
  missing = str(tmp_path / "absent")
  _error("jsonl:" + missing, missing)
  (tmp_path / "no_index").mkdir()
  _error("jsonl:" + str(tmp_path / "no_index"), "no_index", "captions.jsonl")
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "captions.jsonl").write_text("\n \n")
  _error("jsonl:" + str(empty), str(empty / "captions.jsonl"))


def test_malformed_lines_and_fields(tmp_path):
  folder = _folder(tmp_path, n=3)
  index = os.path.join(folder, "captions.jsonl")
  with open(index, "a") as f:
    f.write('{"image": "images/000.png", "caption": "ok"\n')
  _error("jsonl:" + folder, index + ":4")
  with open(index, "w") as f:
    f.write(json.dumps({"image": "images/000.png", "caption": "ok"}) + "\n")
    f.write(json.dumps({"image": "images/001.png", "text": "no caption"}) + "\n")
  _error("jsonl:" + folder, index + ":2", "'caption'")


def test_every_image_missing(tmp_path):
  folder = tmp_path / "gone"
  folder.mkdir()
  lines = [json.dumps({"image": f"images/{i}.png", "caption": "x"}) for i in range(3)]
  (folder / "captions.jsonl").write_text("\n".join(lines))
  _error("jsonl:" + str(folder), os.path.join(str(folder), "images/0.png"))


@pytest.mark.skipif(not os.path.isdir(EMOJI), reason="shared emoji_noto data not present")
def test_emoji_noto_test_split():
  source = data.get_source(f"jsonl:{EMOJI}:test")
  assert source.name == "emoji_noto"
  assert 0.07 * 1906 < source.num_records < 0.13 * 1906
  assert not source.missing.any()


def test_image_paths_may_not_leave_the_folder(tmp_path):
  folder = _folder(tmp_path, n=3)
  index = os.path.join(folder, "captions.jsonl")
  outside = str(tmp_path / "outside.png")
  with open(outside, "wb") as f:
    f.write(scenes.make_scene(0, 1)["png"])
  for bad in ("../outside.png", "images/../../outside.png", outside):
    with open(index, "a") as f:
      f.write(json.dumps({"image": bad, "caption": "escapes"}) + "\n")
    with pytest.raises(ValueError, match=f"^{index}:4: image path .*allow_outside_paths"):
      data.get_source("jsonl:" + folder)
    source = data.get_source("jsonl:" + folder, allow_outside_paths=True)
    assert source.num_records == 4 and not source.missing.any()
    lines = open(index).readlines()[:3]
    with open(index, "w") as f:
      f.writelines(lines)
  # The config field reaches the source through sources.from_config.
  with open(index, "a") as f:
    f.write(json.dumps({"image": "../outside.png", "caption": "escapes"}) + "\n")
  c = config_lib.base_config()
  with pytest.raises(ValueError, match="allow_outside_paths"):
    sources.from_config("jsonl:" + folder, c.data)
  c.data.allow_outside_paths = True
  assert sources.from_config("jsonl:" + folder, c.data).num_records == 4
  # A '..' that stays inside the folder is fine.
  with open(index, "w") as f:
    f.writelines(lines + [json.dumps({"image": "images/../images/000.png",
                                      "caption": "inside"}) + "\n"])
  c.data.allow_outside_paths = False
  assert sources.from_config("jsonl:" + folder, c.data).num_records == 4


def test_a_directory_is_not_a_missing_file(tmp_path):
  folder = _folder(tmp_path, n=3)
  os.makedirs(os.path.join(folder, "images", "subdir"))
  with open(os.path.join(folder, "captions.jsonl"), "a") as f:
    f.write(json.dumps({"image": "images/subdir", "caption": "a folder"}) + "\n")
    f.write(json.dumps({"image": "images/gone.png", "caption": "missing"}) + "\n")
  c = config_lib.base_config()
  c.model.image_size, c.model.context_length = 16, 8
  tok = data.Tokenizer(data.train_tokenizer(["caption 0 1 2"] * 5, 32,
                                            str(tmp_path / "t.model")), 8)
  ev = data.load_eval_set("jsonl:" + folder, c, tok)
  assert len(ev.captions) == 3
  assert {k: v for k, v in ev.skipped.items() if v} == {"not_a_file": 1, "missing_file": 1}
