"""TrainIterator and eval sets on small jsonl folders: bad records, exact resume, sharding,
the global shuffle."""
import collections
import io
import json
import os
import struct

import numpy as np
import pytest
from PIL import Image

from vlp_jax import config_lib
from vlp_jax import data
from vlp_jax.data import scenes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMOJI = os.path.join(REPO, "..", "shared", "data", "emoji_noto")
WORDS = "zero one two three four five six seven eight nine ten eleven twelve".split()


def _encode(index, fmt):
  buf = io.BytesIO()
  Image.fromarray(scenes.make_scene(5, index)["image"]).save(buf, format=fmt)
  return buf.getvalue()


def _huge_png():
  """A PNG whose IHDR claims 20000 x 20000 pixels (the CRC no longer matches; never decoded)."""
  png = bytearray(_encode(0, "PNG"))
  png[16:24] = struct.pack(">II", 20000, 20000)
  return bytes(png)


def _garbled_jpeg():
  """Right magic bytes and end marker, nothing decodable in between."""
  return b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"


def _good_caption(i):
  return f"good {WORDS[i % 13]} {WORDS[i // 13]}"


def _write(folder, good, bad=()):
  """Folder with `bad` records (key, bytes or None for missing, raw caption) then `good` ones."""
  os.makedirs(os.path.join(folder, "images"))
  rows = list(bad) + [(f"good{i}.png", _encode(i, "PNG" if i % 2 else "JPEG"),
                       _good_caption(i).encode()) for i in range(good)]
  with open(os.path.join(folder, "captions.jsonl"), "wb") as index:
    for name, payload, caption in rows:
      if payload is not None:
        with open(os.path.join(folder, "images", name), "wb") as f:
          f.write(payload)
      line = json.dumps({"image": "images/" + name, "caption": "@"}).encode()
      index.write(line.replace(b"@", caption) + b"\n")
  return folder


BAD = [
    ("corrupt.png", b"definitely not an image", b"bad corrupt"),
    ("truncated.jpg", _encode(1, "JPEG")[:300], b"bad truncated jpeg"),
    ("truncated.png", _encode(2, "PNG")[:200], b"bad truncated png"),
    ("empty.png", b"", b"bad empty"),
    ("missing.png", None, b"bad missing"),
    ("blank.png", _encode(3, "PNG"), b"   "),
    ("latin1.png", _encode(4, "PNG"), b"bad caf\xe9 latin-1"),
    ("huge.png", _huge_png(), b"bad huge"),
    ("garbled.jpg", _garbled_jpeg(), b"bad garbled"),
]
EXPECTED = {"missing_file": 1, "empty_file": 1, "not_an_image": 1, "truncated": 2,
            "too_large": 1, "empty_caption": 1, "bad_utf8": 1, "decode_error": 1}


def _config(folder, batch_size=4, **data_fields):
  c = config_lib.base_config()
  c.data.train = "jsonl:" + folder
  c.data.update(data_fields)
  c.model.image_size = 16
  c.model.context_length = 8
  c.model.vocab_size = 128
  c.train.batch_size = batch_size
  c.eval.batch_size = 8
  return c


@pytest.fixture(scope="module")
def bad_set(tmp_path_factory):
  folder = _write(str(tmp_path_factory.mktemp("bad") / "bad_set"), good=12, bad=BAD)
  tok = data.get_tokenizer(_config(folder), str(tmp_path_factory.mktemp("work")))
  return folder, tok


def _texts(tok, batch):
  return tok.decode(batch["tokens"])


def test_bad_records_counted_exactly_in_order(bad_set):
  folder, tok = bad_set
  it = data.TrainIterator(_config(folder, shuffle_buffer=1), tok)
  batch = next(it)
  assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
  assert batch["tokens"].shape == (4, 8) and batch["tokens"].dtype == np.int32
  assert _texts(tok, batch) == [_good_caption(i) for i in range(4)]
  assert it.position == len(BAD) + 4
  assert {k: v for k, v in it.skipped.items() if v} == EXPECTED


def test_bad_records_never_trained_on(bad_set):
  folder, tok = bad_set
  it = data.TrainIterator(_config(folder), tok)
  seen = set()
  for _ in range(12):  # four epochs
    seen.update(_texts(tok, next(it)))
  assert seen == {_good_caption(i) for i in range(12)}
  epochs, rest = divmod(it.position, len(BAD) + 12)
  assert epochs >= 3
  for reason, count in EXPECTED.items():
    assert count * epochs <= it.skipped[reason] <= count * (epochs + 1), reason
  assert sum(it.skipped.values()) + 12 * 4 == it.position


def test_eval_set_skips_bad_records(bad_set):
  folder, tok = bad_set
  ev = data.load_eval_set("jsonl:" + folder, _config(folder), tok)
  assert ev.name == "bad_set"
  assert ev.captions == [_good_caption(i) for i in range(12)]
  assert ev.images.shape == (12, 16, 16, 3) and ev.tokens.shape == (12, 8)
  assert ev.labels == {} and ev.zeroshot_tasks == {}
  assert {k: v for k, v in ev.skipped.items() if v} == EXPECTED
  capped = _config(folder)
  capped.eval.max_examples = len(BAD) + 5  # caps raw records, in source order
  assert data.load_eval_set("jsonl:" + folder, capped, tok).images.shape[0] == 5


def _batches(config, tok, count, position=0):
  it = data.TrainIterator(config, tok, position=position)
  out, positions = [], []
  for _ in range(count):
    out.append(next(it))
    positions.append(it.position)
  return out, positions


@pytest.mark.parametrize("augment", ["none", "crop"])
def test_exact_resume(bad_set, augment):
  folder, tok = bad_set
  config = _config(folder, augment=augment, crop_min_scale=0.3)
  full, positions = _batches(config, tok, 8)
  epoch = len(BAD) + 12
  assert positions[0] < epoch <= positions[3]  # resumes below: before epoch 1 and in it
  for k in (1, 3, 4):
    resumed, _ = _batches(config, tok, 8 - k, position=positions[k - 1])
    for a, b in zip(resumed, full[k:]):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["tokens"], b["tokens"])


def test_crop_differs_between_epochs_and_from_resize(bad_set):
  folder, tok = bad_set
  plain, _ = _batches(_config(folder, shuffle_buffer=1), tok, 6)
  crop, _ = _batches(_config(folder, shuffle_buffer=1, augment="crop", crop_min_scale=0.3), tok, 6)
  np.testing.assert_array_equal(plain[0]["tokens"], crop[0]["tokens"])
  assert not np.allclose(plain[0]["image"], crop[0]["image"])
  assert not np.allclose(crop[0]["image"], crop[3]["image"])  # same records, next epoch


def test_hosts_cover_an_epoch_disjointly(tmp_path):
  folder = _write(str(tmp_path / "clean"), good=24)
  config = _config(folder, batch_size=4)
  tok = data.get_tokenizer(config, str(tmp_path))
  per_host = []
  for host in range(2):
    it = data.TrainIterator(config, tok, process_index=host, process_count=2)
    texts = []
    for _ in range(6):  # 6 batches of 2 = this host's 12 records
      texts += _texts(tok, next(it))
    assert it.position == 12 and sum(it.skipped.values()) == 0
    per_host.append(texts)
  assert not set(per_host[0]) & set(per_host[1])
  assert sorted(per_host[0] + per_host[1]) == sorted(_good_caption(i) for i in range(24))
  with pytest.raises(ValueError, match="train.batch_size"):
    data.TrainIterator(config, tok, process_index=0, process_count=3)


def test_all_records_bad_is_an_error_not_a_hang(tmp_path):
  folder = _write(str(tmp_path / "worthless"), good=0, bad=[
      ("a.png", _encode(0, "PNG"), b" "), ("b.png", _encode(1, "PNG"), b"")])
  config = _config(folder, batch_size=2)
  tok = data.Tokenizer(data.train_tokenizer(["x y z"], 16, str(tmp_path / "t.model")), 8)
  with pytest.raises(ValueError, match="worthless"):
    next(data.TrainIterator(config, tok))


@pytest.mark.skipif(not os.path.isdir(EMOJI), reason="shared emoji_noto data not present")
def test_emoji_noto_eval_split(bad_set):
  _, tok = bad_set
  config = _config(EMOJI)
  config.eval.batch_size = 256
  ev = data.load_eval_set(f"jsonl:{EMOJI}:test", config, tok)
  assert ev.name == "emoji_noto"
  assert 0.07 * 1906 < len(ev.captions) < 0.13 * 1906
  assert sum(ev.skipped.values()) == 0
  assert np.isfinite(ev.images).all()


def _grouped(folder, images, per_image=5):
  """A jsonl folder listing each image's `per_image` captions on consecutive lines (COCO)."""
  os.makedirs(os.path.join(folder, "images"))
  with open(os.path.join(folder, "captions.jsonl"), "w") as index:
    for g in range(images):
      with open(os.path.join(folder, "images", f"{g}.png"), "wb") as f:
        f.write(scenes.make_scene(9, g)["png"])
      for j in range(per_image):
        index.write(json.dumps({"image": f"images/{g}.png", "caption": f"{WORDS[j]} {g}"}) + "\n")
  return folder


def _global_batches(config, tok, count, hosts, interleave):
  """`count` global batches (keys, images) assembled from `hosts` simulated processes, each
  feeding its rows: contiguous blocks, or every hosts-th row (as a TPU mesh may assign)."""
  b = config.train.batch_size
  keys = [[None] * b for _ in range(count)]
  images = np.zeros((count, b, 16, 16, 3), np.float32)
  for host in range(hosts):
    rows = np.arange(host, b, hosts) if interleave else None
    it = data.TrainIterator(config, tok, process_index=host, process_count=hosts, rows=rows)
    rows = it.rows
    for j in range(count):
      images[j, rows] = next(it)["image"]
      for row, key in zip(rows, it.keys):
        keys[j][row] = key
  return keys, images


def test_same_image_captions_spread_like_a_random_permutation(tmp_path):
  """Five consecutive lines per image: a global batch holds no more same-image pairs than a
  uniformly random permutation would (per-host shuffles gave runs of adjacent lines)."""
  n, batch, hosts, count = 400, 32, 4, 10
  config = _config(_grouped(str(tmp_path / "grouped"), n // 5), batch_size=batch)
  tok = data.Tokenizer(data.train_tokenizer([f"{w} {g}" for w in WORDS for g in range(80)],
                                            128, str(tmp_path / "t.model")), 8)
  expected = batch * (batch - 1) / 2 * 4 / (n - 1)  # pairs x P(same image) = 4 / (N - 1)
  keys, _ = _global_batches(config, tok, count, hosts, interleave=False)
  pairs = [sum(c * (c - 1) // 2 for c in collections.Counter(k).values()) for k in keys]
  assert np.mean(pairs) <= 2 * expected + 1, (pairs, expected)
  # 320 positions of epoch 0: no line twice, so no image more than five times.
  assert max(collections.Counter(k for ks in keys for k in ks).values()) <= 5


def test_hosts_assemble_the_one_process_batches(tmp_path):
  """Hosts feeding their rows (any row assignment) give exactly one process's batches, crops
  included: records and crop seeds come from the global stream position."""
  folder = _write(str(tmp_path / "clean"), good=40)
  config = _config(folder, batch_size=8, augment="crop", crop_min_scale=0.3)
  tok = data.Tokenizer(data.train_tokenizer([_good_caption(i) for i in range(40)], 64,
                                            str(tmp_path / "t.model")), 8)
  one, one_images = _global_batches(config, tok, 7, 1, False)  # 1.4 epochs
  assert len({k for ks in one[:5] for k in ks}) == 40
  for interleave in (False, True):
    keys, images = _global_batches(config, tok, 7, 2, interleave)
    assert keys == one
    np.testing.assert_array_equal(images, one_images)
