"""The record-processing stages shared by training and evaluation, with skip accounting.

Stages: check (parallel, cheap) -> count skips (sequential scan) -> drop bad records ->
decode and preprocess (parallel, deterministic) -> drop decode failures -> count those from
gaps in the stream index. Every element carries its stream `index` and the cumulative
`counts` per reason (checks.ALL_REASONS order), so the consumer knows both exactly.
"""
import os

from absl import logging
import numpy as np

from vlp_jax.data import checks
from vlp_jax.data import preprocess
from vlp_jax.data.tf_setup import tf


class SkipLog:
  """Logs skipped records from the counters the pipeline carries, on the Python side.

  Logging happens here, not in a tf.py_function inside the pipeline: a Python callback in
  flight while the iterator is destroyed deadlocks on the GIL (seen at the end of runs).
  Each check failure is logged once per (reason, key); decode failures by count.
  """

  def __init__(self, source_name):
    self.source_name = source_name
    self.seen = set()
    self.counts = None

  def update(self, counts, last_reason, last_key, last_path):
    """`counts`: cumulative per checks.ALL_REASONS; `last_*`: the latest check failure."""
    counts = np.asarray(counts)
    previous = np.zeros_like(counts) if self.counts is None else self.counts
    self.counts = counts
    if last_reason > 0 and counts[int(last_reason) - 1] > previous[int(last_reason) - 1]:
      reason = checks.REASONS[int(last_reason) - 1]
      key = last_key.decode("utf-8", "replace")
      if (reason, key) not in self.seen:
        self.seen.add((reason, key))
        logging.warning("Skipping record of %s: reason=%s key=%s file=%s", self.source_name,
                        reason, key, last_path.decode("utf-8", "replace") or "(inline)")
    new_errors = int(counts[-1] - previous[-1])
    if new_errors > 0:
      logging.warning("Skipped %d record(s) of %s that failed to decode", new_errors,
                      self.source_name)


PASSED = ("all_captions", "answers", "question_type")  # text fields kept as they are


def _count_checks(epoch_size):
  """Scan function: cumulative counts per check reason, the latest failure, and whether the
  stream is dead: `epoch_size` records in a row failed (when the size is known, > 0), else a
  run of failures spans a whole epoch (records carry their `epoch`). With a known size the
  epoch test is not used: a host of several sees only its share of each global epoch."""
  num = len(checks.REASONS)

  def scan(state, record):
    counts, run, run_epoch, last = state
    reason = record["reason"]
    bad = reason > 0
    counts = counts + tf.one_hot(reason - 1, num, dtype=tf.int64)  # all zero when reason == 0
    epoch = tf.cast(record["epoch"], tf.int64)
    run_epoch = tf.where(bad & (run == 0), epoch, run_epoch)
    run = tf.where(bad, run + 1, 0)
    if epoch_size > 0:
      dead = run >= epoch_size
    else:
      dead = bad & (epoch >= run_epoch + 2)
    origin = record.get("origin", record["path"])
    last = tuple(tf.where(bad, new, old) for new, old in
                 zip((tf.cast(reason, tf.int64), record["key"], origin), last))
    out = dict(record, counts=counts, dead=dead, last_reason=last[0],
               last_key=last[1], last_path=last[2])
    return (counts, run, run_epoch, last), out

  init = (tf.zeros([num], tf.int64), tf.constant(0, tf.int64), tf.constant(0, tf.int64),
          (tf.constant(0, tf.int64), tf.constant(""), tf.constant("")))
  return init, scan


def _count_decode_errors():
  """Scan function: records missing between consecutive `seq` numbers that no check removed."""

  def scan(state, record):
    last_seq, last_checked, errors = state
    checked = tf.reduce_sum(record["counts"])
    errors += (record["seq"] - last_seq - 1) - (checked - last_checked)
    out = dict(record, counts=tf.concat([record["counts"], [errors]], 0))
    return (record["seq"], checked, errors), out

  init = (tf.constant(-1, tf.int64), tf.constant(0, tf.int64), tf.constant(0, tf.int64))
  return init, scan


def parallelism(num_parallel_calls):
  """-1 means one call per CPU core (tf.data's autotuner is off, see `iterate`)."""
  return os.cpu_count() or 1 if num_parallel_calls in (-1, None) else num_parallel_calls


def iterate(ds, prefetch=2):
  """A numpy iterator over `ds` with tf.data's autotuner off.

  The autotuner's model thread sleeps up to 60 s between optimisations and the iterator's
  destructor waits for it, which held up the end of every long run by up to a minute.
  """
  options = tf.data.Options()
  options.autotune.enabled = False
  return ds.prefetch(prefetch).with_options(options).as_numpy_iterator()


def process(stream, *, image_size, augment, crop_min_scale, seed, num_parallel_calls,
            epoch_size):
  """Good records of `stream` (dicts with `index` and `epoch`), decoded and preprocessed.

  Output elements (unbatched): image float32 [S, S, 3], caption (valid UTF-8 bytes), key,
  index, counts, and any label_* and PASSED fields of the source (a VQA record's answers
  and question type travel with its question). `index` is the record's resumable stream
  position, which need not be dense; skips are counted on a dense sequence number.
  Random crops are seeded by a record's `draw` (default: its `index`), which the training
  iterator makes the same for a record however many hosts read the stream.
  The stream ends when failures run for `epoch_size` records (0: unknown) or a whole epoch
  (a source with nothing usable would otherwise spin forever).
  """
  num_parallel_calls = parallelism(num_parallel_calls)
  ds = stream.enumerate().map(lambda seq, r: dict(r, seq=seq))
  ds = ds.map(checks.check, num_parallel_calls=num_parallel_calls, deterministic=True)
  ds = ds.scan(*_count_checks(epoch_size))
  ds = ds.take_while(lambda r: tf.logical_not(r["dead"]))
  ds = ds.filter(lambda r: r["reason"] == 0)

  def prepare(record):
    crop_seed = tf.stack([tf.constant(seed, tf.int64), record.get("draw", record["index"])])
    image = preprocess.preprocess(record["image"], image_size, augment, crop_min_scale,
                                  crop_seed)
    out = dict(image=image, caption=record["caption"], key=record["key"],
               index=record["index"], seq=record["seq"], counts=record["counts"], last_reason=record["last_reason"],
               last_key=record["last_key"], last_path=record["last_path"])
    out.update({k: v for k, v in record.items()
                if k.startswith("label_") or k in PASSED})
    return out

  ds = ds.map(prepare, num_parallel_calls=num_parallel_calls, deterministic=True)
  ds = ds.ignore_errors()
  return ds.scan(*_count_decode_errors())

