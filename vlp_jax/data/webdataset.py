"""`wds:PATTERN`: webdataset tar shards as img2dataset writes them, streamed and resumable.

A sample is the run of consecutive tar members sharing a key (the name up to the first dot
of its base name): an image (`.jpg`, `.jpeg`, `.png`, `.webp`) and a caption from `.txt`,
else the `caption` field of `.json`. Shards are split across hosts (host i takes shards
i::n) and never counted ahead of time: that would mean reading every shard.

Training order, deterministic for exact resume: each epoch permutes this host's shards with
a seed from (config.seed, epoch) and reads them in groups of `shard_cycle`; a group's shards
are interleaved sample by sample (file order within a shard) and pass a shuffle buffer
seeded per group and emptied at the group's end. A record's stream index is
`block * 2**32 + offset` (block = epoch * groups + group), so resuming re-reads only the
current group, never the shards before it. There is no global shuffle across hosts (a
streamed source has no random access): a batch mixes only what the hosts' buffers hold.
"""
import os
import re

import numpy as np

from vlp_jax.data import checks
from vlp_jax.data import json_text
from vlp_jax.data import tar
from vlp_jax.data.tf_setup import tf

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
BLOCK_SHIFT = 32  # records per group stay below 2**32
_NAME = r"^((?:.*/)?[^./]+)\.([^/]*)$"  # webdataset's key.extension split


def expand(pattern):
  """Shard paths of `pattern`: brace ranges ({000..099}) and lists ({a,b}), then globs."""
  match = re.search(r"\{([^{}]*)\}", pattern)
  if match:
    body = match.group(1)
    span = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if span:
      lo, hi = span.groups()
      items = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    else:
      items = body.split(",")
    out = []
    for item in items:
      out += expand(pattern[:match.start()] + item + pattern[match.end():])
    return out
  if any(ch in pattern for ch in "*?["):
    return sorted(tf.io.gfile.glob(pattern))
  return [pattern] if tf.io.gfile.exists(pattern) else []


def _looks_like_tar(path):
  """Whether the file starts with a tar header whose checksum holds."""
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      head = f.read(tar.BLOCK)
  except tf.errors.OpError:
    return False
  if len(head) < tar.BLOCK:
    return False
  raw = np.frombuffer(head, np.uint8).astype(np.int64)
  stored = re.match(rb" *([0-7]+)", head[148:156])
  return bool(stored) and int(stored.group(1), 8) == raw.sum() - raw[148:156].sum() + 256


def _samples(path):
  """Raw records of one shard, in file order; a broken or empty shard adds a flawed record."""
  names, contents, status = tar.files(tf.io.read_file(path))
  named = tf.strings.regex_full_match(names, _NAME)
  keys = tf.boolean_mask(tf.strings.regex_replace(names, _NAME, r"\1"), named)
  exts = tf.strings.lower(tf.boolean_mask(tf.strings.regex_replace(names, _NAME, r"\2"), named))
  contents = tf.boolean_mask(contents, named)
  m = tf.size(keys)
  new = tf.concat([[True], keys[1:] != keys[:-1]], 0)[:m]
  seg = tf.cumsum(tf.cast(new, tf.int32)) - 1
  count = tf.reduce_sum(tf.cast(new, tf.int32))

  def first(mask):
    """Index of each sample's first member where `mask` holds; m (the padding) if none."""
    return tf.math.unsorted_segment_min(tf.where(mask, tf.range(m), m), seg, count)

  padded = tf.concat([contents, [""]], 0)
  is_image = tf.reduce_any(tf.stack([exts == e for e in IMAGE_EXTENSIONS]), axis=0)
  image_at, txt_at, json_at = first(is_image), first(exts == "txt"), first(exts == "json")
  flaw = tf.where(image_at == m, checks.code("missing_file"), 0)
  # A shard cut short or unreadable becomes one more record, so it is counted and logged.
  broken = (status == tar.BROKEN) | (count == 0)
  extra = tf.cast(broken, tf.int32)
  last_key = tf.concat([[""], keys], 0)[m]
  extra_flaw = tf.where(count == 0, checks.code("bad_shard"), checks.code("truncated_tar"))
  cat = lambda a, b: tf.concat([a, tf.reshape(b, [1])[:extra]], 0)
  return tf.data.Dataset.from_tensor_slices(dict(
      key=cat(tf.gather(keys, first(tf.ones_like(new))),
              tf.where(count == 0, "(none)", "after " + last_key)),
      image=cat(tf.gather(padded, image_at), ""),
      txt=cat(tf.gather(padded, txt_at), ""),
      json=cat(tf.gather(padded, json_at), ""),
      has_txt=cat(txt_at < m, False),
      has_json=cat(json_at < m, False),
      flaw=cat(flaw, extra_flaw),
  )).map(lambda r: dict(r, origin=path))


def _finish(record):
  """The raw-record layout every source shares, with the caption taken from .txt or .json."""
  found, from_json = json_text.string_field(record["json"], "caption")
  has_caption = record["has_txt"] | (record["has_json"] & found)
  flaw = tf.where((record["flaw"] == 0) & ~has_caption, checks.code("missing_caption"),
                  record["flaw"])
  return dict(key=record["key"], image=record["image"], path=tf.constant(""),
              missing=tf.constant(False), origin=record["origin"], flaw=flaw,
              caption=tf.where(record["has_txt"], record["txt"], from_json))


class WebDataset:
  """Tar shards named by a glob or brace pattern; see the module docstring for the order."""

  def __init__(self, pattern, shard_cycle=4, spec=None):
    self.spec = spec or "wds:" + pattern
    self.shards = expand(pattern)
    if not self.shards:
      raise ValueError(f"Data spec {self.spec!r}: no file matches {pattern!r}")
    if not any(_looks_like_tar(p) for p in self.shards):
      raise ValueError(f"Data spec {self.spec!r}: none of its {len(self.shards)} shards is a "
                       f"readable tar file; the first is {self.shards[0]!r}")
    self.name = os.path.basename(os.path.dirname(os.path.abspath(self.shards[0])))
    self.shard_cycle = max(1, shard_cycle)
    self.zeroshot_tasks = {}
    self.num_records = None  # unknown without reading every shard

  def host_shards(self, index, count):
    shards = self.shards[index::count]
    if not shards:
      raise ValueError(f"Data spec {self.spec!r} has {len(self.shards)} shards, fewer than "
                       f"the {count} hosts: each host reads whole shards")
    return shards

  def _read(self, shards, cycle):
    ds = tf.data.Dataset.from_tensor_slices(shards)
    ds = ds.interleave(_samples, cycle_length=cycle, block_length=1, num_parallel_calls=cycle,
                       deterministic=True)
    return ds.map(_finish, num_parallel_calls=cycle, deterministic=True)

  def records(self, index=0, count=1):
    """One pass over this host's shards in sorted order (evaluation)."""
    shards = self.host_shards(index, count)
    return self._read(tf.constant(shards), min(self.shard_cycle, len(shards)))

  def stream(self, *, seed, shuffle_buffer, position, process_index, process_count):
    """Raw records from stream index `position` on, each with `index` and `epoch`."""
    shards = tf.constant(self.host_shards(process_index, process_count))
    n = int(shards.shape[0])
    cycle = min(self.shard_cycle, n)
    groups = -(-n // cycle)
    first_block, offset = divmod(int(position), 2**BLOCK_SHIFT)

    def group(block):
      epoch, g = block // groups, block % groups
      order = tf.argsort(tf.random.stateless_uniform(
          [n], seed=tf.stack([tf.constant(seed % 2**31, tf.int64), epoch])))
      ds = self._read(tf.gather(shards, order[g * cycle:(g + 1) * cycle]), cycle)
      ds = ds.shuffle(max(1, shuffle_buffer), seed=_block_seed(seed, block),
                      reshuffle_each_iteration=False)
      return ds.enumerate().map(
          lambda o, r: dict(r, index=block * 2**BLOCK_SHIFT + o, epoch=epoch))

    stream = tf.data.Dataset.range(first_block, 2**31).flat_map(group)
    return stream.skip(offset)

  def captions(self, limit=100_000):
    """Usable captions of the first `limit` samples (in sorted shard order), for a tokenizer."""
    ds = self.records().filter(lambda r: r["flaw"] == 0).map(lambda r: r["caption"])
    return checks.usable_captions(ds.take(limit).as_numpy_iterator())


def _block_seed(seed, block):
  return (tf.constant(seed % 2**31, tf.int64) * 2**31 + block) % (2**63 - 1)
