"""Infinite, exactly resumable, per-host training batches.

The host's raw-record stream is a deterministic sequence over epochs. Sources with a known
size (jsonl, builtin, tfds): epoch e is this host's records in an order shuffled with a
seed from (config.seed, e), and `position` counts raw records consumed, so resuming skips
that many cheap records. Streamed sources (wds) define their own order and position (see
webdataset.py). Either way a resumed iterator yields exactly the batches an uninterrupted
one would have.
"""

from vlp_jax.data import checks
from vlp_jax.data import pipeline
from vlp_jax.data import sources
from vlp_jax.data.tf_setup import tf

_EPOCHS = 2**40  # "forever"; epoch indices stay far from int64 overflow


def epoch_seed(seed, epoch):
  """A distinct shuffle seed per (config.seed, epoch), as an int64 tensor."""
  return (tf.constant(seed % 2**31, tf.int64) * 2**31 + epoch) % (2**63 - 1)


def pick_caption(record, seed):
  """One of a record's several `captions`, drawn anew for every stream index."""
  if "captions" not in record:
    return record
  record = dict(record)
  captions = record.pop("captions")
  draw = tf.random.stateless_uniform(
      [], seed=tf.stack([tf.constant(seed % 2**31, tf.int64), record["index"]]),
      maxval=tf.maximum(tf.size(captions), 1), dtype=tf.int32)
  record["caption"] = tf.concat([captions, [""]], 0)[draw]
  return record


def record_stream(source, *, seed, shuffle_buffer, position, process_index, process_count):
  """Raw records from stream position `position` on, each with `index` and `epoch`; and
  the epoch size (0 when the source does not know it)."""
  if hasattr(source, "stream"):
    stream = source.stream(seed=seed, shuffle_buffer=shuffle_buffer, position=position,
                           process_index=process_index, process_count=process_count)
    return stream.map(lambda r: pick_caption(r, seed)), 0
  if hasattr(source, "host_size"):
    epoch_size = source.host_size(process_index, process_count)
  else:
    epoch_size = sources.shard_size(source.num_records, process_index, process_count)
  if epoch_size == 0:
    raise ValueError(f"Data source {source.name!r} has {source.num_records} records, too few "
                     f"for host {process_index} of {process_count}")
  records = source.records(process_index, process_count)
  start_epoch, offset = divmod(position, epoch_size)

  def epoch(e):
    ds = records.shuffle(max(1, shuffle_buffer), seed=epoch_seed(seed, e),
                         reshuffle_each_iteration=False)
    return ds.enumerate().map(
        lambda pos, r: pick_caption(dict(r, index=e * epoch_size + pos, epoch=e), seed))

  stream = tf.data.Dataset.range(start_epoch, _EPOCHS).flat_map(epoch).skip(offset)
  return stream, epoch_size


class TrainIterator:
  """Yields dict(image=float32 [b, S, S, 3], tokens=int32 [b, L]) for this host, forever.

  `position`: this host's stream position after the last batch returned (for the
  checkpoint). `skipped`: reason -> records skipped on this host since this iterator was
  created. `keys`: the source keys of the last batch's records.
  """

  def __init__(self, config, tok, position=0, process_index=0, process_count=1):
    d = config.data
    if config.train.batch_size % process_count:
      raise ValueError(f"config.train.batch_size={config.train.batch_size} is not divisible "
                       f"by the number of processes ({process_count})")
    self.batch_size = config.train.batch_size // process_count
    self.position = int(position)
    self.skipped = {reason: 0 for reason in checks.ALL_REASONS}
    self.keys = []
    self.spec = d.train
    self.source = sources.from_config(d.train, d)
    stream, epoch_size = record_stream(
        self.source, seed=config.seed, shuffle_buffer=d.shuffle_buffer, position=self.position,
        process_index=process_index, process_count=process_count)
    ds = pipeline.process(
        stream, image_size=config.model.image_size, augment=d.augment,
        crop_min_scale=d.crop_min_scale, seed=config.seed,
        num_parallel_calls=d.num_parallel_calls, epoch_size=epoch_size)
    ds = ds.batch(self.batch_size, drop_remainder=True)
    ds = ds.map(lambda b: dict(image=b["image"], caption=b["caption"], key=b["key"],
                               index=b["index"][-1], counts=b["counts"][-1],
                               last_reason=b["last_reason"][-1], last_key=b["last_key"][-1],
                               last_path=b["last_path"][-1]))
    self._iter = pipeline.iterate(ds)
    self._tok = tok
    self._skip_log = pipeline.SkipLog(self.source.name)

  def __iter__(self):
    return self

  def __next__(self):
    try:
      batch = next(self._iter)
    except StopIteration:
      raise ValueError(
          f"config.data.train={self.spec!r}: a whole epoch of records failed the "
          f"checks (skipped so far: {self.skipped}); nothing to train on") from None
    self.position = int(batch["index"]) + 1
    self.keys = [k.decode("utf-8", "replace") for k in batch["key"]]
    self.skipped = dict(zip(checks.ALL_REASONS, (int(c) for c in batch["counts"])))
    self._skip_log.update(batch["counts"], batch["last_reason"], batch["last_key"],
                          batch["last_path"])
    # Tokenised here rather than in a tf.numpy_function: Python callbacks inside tf.data
    # deadlock the iterator's teardown (see pipeline.SkipLog).
    tokens = self._tok.encode([c.decode("utf-8") for c in batch["caption"]])
    return dict(image=batch["image"], tokens=tokens)
