"""The record-processing stages shared by training and evaluation, with skip accounting.

Stages: check (parallel, cheap) -> count skips (sequential scan) -> drop bad records ->
decode and preprocess (parallel, deterministic) -> drop decode failures -> count those from
gaps in the stream index. Every element carries its stream `index` and the cumulative
`counts` per reason (checks.ALL_REASONS order), so the consumer knows both exactly.
"""
from absl import logging

from vlp_jax.data import checks
from vlp_jax.data import preprocess
from vlp_jax.data.tf_setup import tf


class SkipLog:
  """Logs each skipped record the first time it is seen (epochs repeat them)."""

  def __init__(self, source_name):
    self.source_name = source_name
    self.seen = set()

  def __call__(self, reason, key, path):
    reason = checks.REASONS[int(reason) - 1]
    key = key.numpy().decode("utf-8", "replace")
    if (reason, key) not in self.seen:
      self.seen.add((reason, key))
      path = path.numpy().decode("utf-8", "replace")
      logging.warning("Skipping record of %s: reason=%s key=%s file=%s",
                      self.source_name, reason, key, path or "(inline)")
    return 0


def _count_checks(skip_log, epoch_size):
  """Scan function: cumulative counts per check reason, and whether a whole epoch failed."""
  num = len(checks.REASONS)

  def scan(state, record):
    counts, run = state
    reason = record["reason"]
    bad = reason > 0
    counts = counts + tf.one_hot(reason - 1, num, dtype=tf.int64)  # all zero when reason == 0
    logged = tf.cond(bad, lambda: tf.py_function(
        skip_log, [reason, record["key"], record["path"]], tf.int32), lambda: 0)
    run = tf.where(bad, run + 1, 0) + tf.cast(logged, tf.int64) * 0  # keeps the logging op
    out = dict(record, counts=counts, dead=run >= epoch_size)
    return (counts, run), out

  init = (tf.zeros([num], tf.int64), tf.constant(0, tf.int64))
  return init, scan


def _log_decode_errors(source_name):
  def log(new, index):
    logging.warning("Skipping %d record(s) of %s that failed to decode, just before stream "
                    "index %d", int(new), source_name, int(index))
    return 0
  return log


def _count_decode_errors(first_index, source_name):
  """Scan function: records missing between consecutive indices that no check removed."""
  log = _log_decode_errors(source_name)

  def scan(state, record):
    last_index, last_checked, errors = state
    checked = tf.reduce_sum(record["counts"])
    new = (record["index"] - last_index - 1) - (checked - last_checked)
    logged = tf.cond(new > 0, lambda: tf.py_function(log, [new, record["index"]], tf.int32),
                     lambda: 0)
    errors += new + tf.cast(logged, tf.int64) * 0  # keeps the logging op in the graph
    out = dict(record, counts=tf.concat([record["counts"], [errors]], 0))
    return (record["index"], checked, errors), out

  init = (tf.constant(first_index - 1, tf.int64), tf.constant(0, tf.int64),
          tf.constant(0, tf.int64))
  return init, scan


def process(stream, *, image_size, augment, crop_min_scale, seed, num_parallel_calls,
            first_index, epoch_size, source_name):
  """Good records of `stream` (dicts with `index`), decoded and preprocessed, unbatched.

  Output elements: image float32 [S, S, 3], caption (valid UTF-8 bytes), index, counts,
  and any label_* fields of the source. The stream ends if `epoch_size` records in a row
  fail the checks (a source with nothing usable would otherwise spin forever).
  """
  skip_log = SkipLog(source_name)
  ds = stream.map(checks.check, num_parallel_calls=num_parallel_calls, deterministic=True)
  ds = ds.scan(*_count_checks(skip_log, epoch_size))
  ds = ds.take_while(lambda r: tf.logical_not(r["dead"]))
  ds = ds.filter(lambda r: r["reason"] == 0)

  def prepare(record):
    crop_seed = tf.stack([tf.constant(seed, tf.int64), record["index"]])
    image = preprocess.preprocess(record["image"], image_size, augment, crop_min_scale,
                                  crop_seed)
    out = dict(image=image, caption=record["caption"], index=record["index"],
               counts=record["counts"])
    out.update({k: v for k, v in record.items() if k.startswith("label_")})
    return out

  ds = ds.map(prepare, num_parallel_calls=num_parallel_calls, deterministic=True)
  ds = ds.ignore_errors()
  return ds.scan(*_count_decode_errors(first_index, source_name))


def tokenize_batch(tok):
  """Batch map function adding `tokens` from the (UTF-8) `caption` strings."""
  def fn(batch):
    return dict(batch, tokens=tok.tf_encode(batch["caption"]))
  return fn
