"""wds: sources: img2dataset's tar layout, per-host shards, exact resume, bad records."""
import gc
import io
import json
import os
import struct
import time

import numpy as np
import pytest
from PIL import Image

import main
from tests.helpers import tiny_config
from vlp_jax import data
from vlp_jax.data import scenes
from vlp_jax.data import jsonl_writer
from vlp_jax.data import wds_writer

WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def _image(index, fmt="JPEG"):
  buf = io.BytesIO()
  Image.fromarray(scenes.make_scene(5, index)["image"]).save(buf, format=fmt)
  return buf.getvalue()


def _caption(i):
  return f"pair {WORDS[i % 13]} {WORDS[i // 13 % 13]}"


def _good(i):
  return wds_writer.sample(f"{i:06d}", "x.jpg", _image(i), _caption(i))


def _huge_png():
  png = bytearray(_image(0, "PNG"))
  png[16:24] = struct.pack(">II", 20000, 20000)  # IHDR claims 400 Mpixels
  return bytes(png)


BAD = {  # reason -> members of one bad sample
    "not_an_image": {"jpg": b"definitely not an image", "txt": b"bad corrupt"},
    "truncated": {"jpg": _image(1)[:300], "txt": b"bad truncated"},
    "empty_file": {"jpg": b"", "txt": b"bad empty"},
    "missing_caption": {"jpg": _image(2)},
    "bad_utf8": {"jpg": _image(3), "txt": b"bad caf\xe9 latin-1"},
    "too_large": {"png": _huge_png(), "txt": b"bad huge"},
}


def _config(pattern, batch_size=4, **data_fields):
  c = tiny_config(**{"train.batch_size": batch_size, "data.train": "wds:" + pattern})
  c.data.update(dict(data_fields))
  return c


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tok") / "t.model")
  return data.Tokenizer(data.train_tokenizer([_caption(i) for i in range(169)] +
                                             ["bad caption"], 64, path), 8)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  """60 good samples in 6 shards of 10."""
  folder = str(tmp_path_factory.mktemp("wds") / "pairs")
  wds_writer.write_shards(folder, [_good(i) for i in range(60)], per_shard=10)
  return os.path.join(folder, "*.tar")


def test_reads_img2dataset_layout(tmp_path, tok):
  members = [
      ("a0", {"jpg": _image(0), "txt": b"from txt", "json": b'{"caption": "not this"}'}),
      ("a1", {"png": _image(1, "PNG"),
              "json": json.dumps({"url": "u", "caption": "caf\u00e9 \U0001f600 \"q\""}).encode()}),
      ("a2", {"webp": _image(2, "WEBP"), "txt": "na\u00efve".encode()}),
      ("dir/a3", {"jpeg": _image(3), "txt": b"in a folder", "extra.cls": b"7"}),
  ]
  wds_writer.write_shards(str(tmp_path / "layout"), members, per_shard=4)
  config = _config(str(tmp_path / "layout" / "{00000..00000}.tar"))
  ev = data.load_eval_set(config.data.train, config, tok)
  assert ev.name == "layout"
  assert ev.captions == ["from txt", "caf\u00e9 \U0001f600 \"q\"", "na\u00efve", "in a folder"]
  assert ev.images.shape == (4, 16, 16, 3) and sum(ev.skipped.values()) == 0


def _keys(config, tok, count, position=0, **kwargs):
  it = data.TrainIterator(config, tok, position=position, **kwargs)
  keys, positions = [], []
  for _ in range(count):
    next(it)
    keys.append(it.keys)
    positions.append(it.position)
  return keys, positions


@pytest.mark.parametrize("kind", ["wds", "jsonl"])
def test_resume_sees_exactly_the_same_samples(shards, tok, tmp_path, kind):
  """Interrupted after any batch and resumed == uninterrupted, over several shard groups
  and epochs (60 samples per epoch, 4 per batch: 36 batches = 2.4 epochs)."""
  if kind == "wds":
    config = _config(shards, shuffle_buffer=7, shard_cycle=2, augment="crop")
  else:
    folder = str(tmp_path / "pairs")
    items = [(f"{i:06d}.jpg", _image(i), _caption(i)) for i in range(60)]
    jsonl_writer.write_jsonl_folder(folder, items)
    config = _config(shards, shuffle_buffer=7, augment="crop")
    config.data.train = "jsonl:" + folder
  full, positions = _keys(config, tok, 36)
  flat = [k for batch in full for k in batch]
  assert sorted(flat[:60]) == sorted(set(flat[:60])), "an epoch repeats a sample"
  assert len(set(flat[:60])) == 60 and flat[:60] != flat[60:120]
  for k in (1, 7, 15, 23):
    resumed, _ = _keys(config, tok, 36 - k, position=positions[k - 1])
    assert resumed == full[k:], f"resumed after batch {k}"


def test_iterator_teardown_is_prompt(shards, tok):
  """No Python runs inside tf.data (tars are parsed with TF ops), so deleting an iterator
  in mid-stream cannot wait on the GIL or a callback."""
  it = data.TrainIterator(_config(shards, shard_cycle=3), tok)
  for _ in range(3):
    next(it)
  started = time.perf_counter()
  del it
  gc.collect()
  assert time.perf_counter() - started < 30  # a hang; 6 s were seen at load average 10


def test_hosts_read_disjoint_shards(shards, tok):
  config = _config(shards, batch_size=4)
  seen = []
  for host in range(2):  # 3 shards = 30 samples each; 15 batches of 2 = one epoch
    keys, _ = _keys(config, tok, 15, process_index=host, process_count=2)
    seen.append({k for batch in keys for k in batch})
    assert len(seen[-1]) == 30
  assert not seen[0] & seen[1]
  with pytest.raises(ValueError, match="fewer than the 7 hosts"):
    data.TrainIterator(_config(shards, batch_size=7), tok, process_index=6, process_count=7)


def _bad_shards(folder, reasons):
  """16 good samples in two shards, with one bad sample per reason in the first (a
  truncated_tar cuts the second shard in half, inside a member)."""
  samples = [_good(i) for i in range(16)]
  for reason in reasons:
    if reason != "truncated_tar":
      samples.insert(3, ("bad_" + reason, BAD[reason]))
  first = len(samples) - 8
  paths = wds_writer.write_shards(folder, samples[:first], per_shard=first)
  paths += wds_writer.write_shards(folder + "_2", samples[first:], per_shard=8)
  if "truncated_tar" in reasons:
    with open(paths[1], "rb") as f:
      payload = f.read()
    with open(paths[1], "wb") as f:
      f.write(payload[:len(payload) // 2])
  return folder + "*/*.tar"


@pytest.mark.parametrize("reason", sorted(BAD) + ["truncated_tar"])
def test_bad_record_skipped_counted_and_the_run_goes_on(tmp_path, tok, reason):
  pattern = _bad_shards(str(tmp_path / "shards"), [reason])
  it = data.TrainIterator(_config(pattern, shuffle_buffer=5), tok)
  seen = set()
  for _ in range(12):  # three epochs or more
    next(it)
    seen.update(it.keys)
  assert not any(k.startswith("bad") for k in seen)
  assert len(seen) >= 12
  skipped = {k: v for k, v in it.skipped.items() if v}
  assert list(skipped) == [reason] and skipped[reason] >= 3


def test_training_on_bad_shards_finishes_and_reports_each_reason(tmp_path, tok):
  pattern = _bad_shards(str(tmp_path / "shards"), sorted(BAD) + ["truncated_tar"])
  c = _config(pattern, batch_size=8, shuffle_buffer=16, eval="", tokenizer=tok.model_path)
  c.train.steps, c.train.checkpoint_every = 3, 100
  result = main.run(c, "train", str(tmp_path / "work"))
  assert result["step"] == 3 and np.isfinite(result["loss"])
  for reason in sorted(BAD) + ["truncated_tar"]:
    assert result[f"data/skipped/{reason}"] >= 1, reason


def test_no_readable_shard_is_a_clear_error(tmp_path):
  for i in range(2):
    (tmp_path / f"{i}.tar").write_bytes(b"not a tar file" * 100)
  (tmp_path / "2.tar").write_bytes(b"")
  with pytest.raises(ValueError, match="none of its 3 shards is a readable tar"):
    data.get_source(f"wds:{tmp_path}/*.tar")
  with pytest.raises(ValueError, match="no file matches"):
    data.get_source(f"wds:{tmp_path}/*.nothing")


def test_all_samples_unusable_fails_instead_of_spinning(tmp_path, tok):
  wds_writer.write_shards(str(tmp_path / "bad"), [(f"k{i}", {"jpg": _image(i)})
                                                  for i in range(6)], per_shard=3)
  config = _config(str(tmp_path / "bad" / "*.tar"))
  with pytest.raises(ValueError, match="a whole epoch of records failed"):
    next(data.TrainIterator(config, tok))
