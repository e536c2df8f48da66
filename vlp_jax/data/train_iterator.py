"""Infinite, exactly resumable training batches: this host's rows of every global batch.

Sources held in memory (jsonl, vqa, builtin; `arrays()`) are shuffled globally: epoch e
is one permutation of all N records, seeded by (config.seed, e) and computed per index
(tf.random.experimental.index_shuffle, nothing materialised). Global stream position
p = e * N + k is record perm_e(k); global batch j is positions [j * B, (j + 1) * B), and
this host's stream is, for j = 0, 1, ..., the positions of its `rows` of batch j
(`data.shuffle_buffer` <= 1 keeps source order, for debugging). Records
that fail the checks are skipped and the host takes the next position of its own stream,
so hosts never read the same position, and `position` (this host's stream position) resumes
exactly. With no skips, the hosts' rows assemble to exactly the batches one process would
read, whatever the number of processes.

Sources without random access keep per-host reading (logged once as a warning): tfds:
(TFRecord files) reads an even part of the split per host through a `data.shuffle_buffer`
per epoch; wds: streams its own shard order (webdataset.py). Position counts this host's
raw records there.

Random crops and caption draws are seeded by a record's global position (`draw`), so no two
hosts draw the same crop and a run draws the same crops on any number of processes; for the
per-host sources, by (host stream position, host).
"""
from absl import logging
import numpy as np

from vlp_jax.data import checks
from vlp_jax.data import pipeline
from vlp_jax.data import sources
from vlp_jax.data.tf_setup import tf

VQA_FIELDS = ("answers", "question_type")  # records of VQA sources (vqa_source.py)
_POSITIONS = 2**40  # "forever"; positions and epochs stay far from int64 overflow
_WARNED = set()


def epoch_seed(seed, epoch):
  """A distinct shuffle seed per (config.seed, epoch), as an int64 tensor."""
  return (tf.constant(seed % 2**31, tf.int64) * 2**31 + epoch) % (2**63 - 1)


def pick_caption(record, seed):
  """One of a record's several `captions`, drawn anew for every visit (`draw`)."""
  if "captions" not in record:
    return record
  record = dict(record)
  captions = record.pop("captions")
  visit = record.get("draw", record["index"])
  draw = tf.random.stateless_uniform(
      [], seed=tf.stack([tf.constant(seed % 2**31, tf.int64), visit]),
      maxval=tf.maximum(tf.size(captions), 1), dtype=tf.int32)
  record["caption"] = tf.concat([captions, [""]], 0)[draw]
  return record


def global_positions(position, rows, global_batch):
  """Global stream positions of this host's stream positions `position`, ... (int64 tensor
  in, int64 tensor out): position q is row rows[q % b] of global batch q // b."""
  rows = tf.constant(np.asarray(rows, np.int64))
  b = int(rows.shape[0])
  return position // b * global_batch + tf.gather(rows, position % b)


def shuffled_index(p, num_records, seed, shuffle=True):
  """(record index, epoch) of global stream position `p`: epoch p // N, permuted per epoch
  (source order when not `shuffle`)."""
  epoch, k = p // num_records, p % num_records
  if not shuffle:
    return k, epoch
  key = tf.stack([tf.constant(seed % 2**31, tf.int64), epoch])
  return tf.random.experimental.index_shuffle(
      k, key, tf.constant(num_records - 1, tf.int64)), epoch


def global_stream(arrays, num_records, *, seed, position, rows, global_batch, shuffle=True):
  """Raw records of this host's stream from `position` on: the global shuffle (see module
  docstring). Each record has `index` (host stream position), `epoch` and `draw` (global
  stream position)."""
  columns = {name: tf.constant(value) for name, value in arrays.items()}

  def lookup(q):
    p = global_positions(q, rows, global_batch)
    i, epoch = shuffled_index(p, num_records, seed, shuffle)
    record = {name: tf.gather(column, i) for name, column in columns.items()}
    return dict(record, index=q, epoch=epoch, draw=p)

  return tf.data.Dataset.range(position, _POSITIONS).map(lookup)


def _warn_per_host(source, what, log=logging.warning):
  """Once per source and process: this source's batches are not a global shuffle."""
  if source.name not in _WARNED:
    _WARNED.add(source.name)
    log("Data source %s has no random access: each host reads %s; batches are not a global "
        "shuffle of the data set", source.name, what)


def record_stream(source, *, seed, shuffle_buffer, position, process_index, process_count,
                  rows=None, global_batch=None):
  """Raw records from this host's stream position `position` on, each with `index`,
  `epoch` and `draw`; and the epoch size for the dead-stream test (0: unknown)."""
  if hasattr(source, "arrays"):
    if rows is None:
      global_batch = global_batch or process_count
      rows = host_rows(global_batch, process_index, process_count, None)
    stream = global_stream(source.arrays(), source.num_records, seed=seed, position=position,
                           rows=rows, global_batch=global_batch, shuffle=shuffle_buffer > 1)
    return stream, source.num_records
  # Per-host streams: a host's own position, made distinct across hosts, seeds the draws.
  own = lambda r: dict(r, draw=r["index"] * process_count + process_index)
  if hasattr(source, "stream"):
    _warn_per_host(source, "its own shards (i::hosts) in its own order, through "
                           "data.shuffle_buffer", logging.info)  # streaming is wds's design
    stream = source.stream(seed=seed, shuffle_buffer=shuffle_buffer, position=position,
                           process_index=process_index, process_count=process_count)
    return stream.map(lambda r: pick_caption(own(r), seed)), 0
  _warn_per_host(source, "an even part of the split, shuffled per epoch through "
                         "data.shuffle_buffer")
  epoch_size = source.host_size(process_index, process_count)
  if epoch_size == 0:
    raise ValueError(f"Data source {source.name!r} has {source.num_records} records, too few "
                     f"for host {process_index} of {process_count}")
  records = source.records(process_index, process_count)
  start_epoch, offset = divmod(position, epoch_size)

  def epoch(e):
    ds = records.shuffle(max(1, shuffle_buffer), seed=epoch_seed(seed, e),
                         reshuffle_each_iteration=False)
    return ds.enumerate().map(
        lambda pos, r: pick_caption(own(dict(r, index=e * epoch_size + pos, epoch=e)), seed))

  stream = tf.data.Dataset.range(start_epoch, _POSITIONS).flat_map(epoch).skip(offset)
  return stream, epoch_size


def host_rows(batch_size, process_index, process_count, rows):
  """This host's rows of each global batch, validated; None: its contiguous block."""
  if batch_size % process_count:
    raise ValueError(f"config.train.batch_size={batch_size} is not divisible by the number "
                     f"of processes ({process_count})")
  if rows is None:
    b = batch_size // process_count
    return np.arange(process_index * b, (process_index + 1) * b, dtype=np.int64)
  rows = np.asarray(rows, np.int64)
  if (rows.ndim != 1 or not rows.size or rows[0] < 0 or rows[-1] >= batch_size
      or (np.diff(rows) <= 0).any()):
    raise ValueError(f"TrainIterator rows={rows.tolist()} must be ascending distinct rows of "
                     f"a global batch of config.train.batch_size={batch_size}")
  return rows


class TrainIterator:
  """Yields this host's batches forever, as the family builds them from the records
  (Family.host_batch; CLIP: dict(image=float32 [b, S, S, 3], tokens=int32 [b, L])).
  The raw batch it is given: image, caption (b str), key (b str), and for VQA sources
  answers (b lists of str) and question_type (b str), the captions being the questions.

  `rows`: this process's rows of each global batch of config.train.batch_size, ascending
  (sharding.process_rows); None: rows [i * b, (i + 1) * b) of process i, b = batch_size //
  process_count. `position`: this host's stream position after the last batch returned
  (for the checkpoint, per host). `skipped`: reason -> records skipped on this host since
  this iterator was created. `keys`: the source keys of the last batch's records, in row
  order. `family`: the model family (default: the one config.model.name registers).
  """

  def __init__(self, config, tok, position=0, process_index=0, process_count=1, rows=None,
               family=None):
    d = config.data
    self.rows = host_rows(config.train.batch_size, process_index, process_count, rows)
    self.batch_size = len(self.rows)
    self.position = int(position)
    self.skipped = {reason: 0 for reason in checks.ALL_REASONS}
    self.keys = []
    self.spec = d.train
    self.source = sources.from_config(d.train, d)
    stream, epoch_size = record_stream(
        self.source, seed=config.seed, shuffle_buffer=d.shuffle_buffer, position=self.position,
        process_index=process_index, process_count=process_count, rows=self.rows,
        global_batch=config.train.batch_size)
    ds = pipeline.process(
        stream, image_size=config.model.image_size, augment=d.augment,
        crop_min_scale=d.crop_min_scale, seed=config.seed,
        num_parallel_calls=d.num_parallel_calls, epoch_size=epoch_size)
    ds = ds.batch(self.batch_size, drop_remainder=True)
    ds = ds.map(lambda b: dict(image=b["image"], caption=b["caption"], key=b["key"],
                               index=b["index"][-1], counts=b["counts"][-1],
                               last_reason=b["last_reason"][-1], last_key=b["last_key"][-1],
                               last_path=b["last_path"][-1],
                               **{k: b[k] for k in VQA_FIELDS if k in b}))
    self._iter = pipeline.iterate(ds)
    self._tok = tok
    if family is None:
      from vlp_jax import families  # pylint: disable=g-import-not-at-top
      family = families.get_family(config, tok.eos_id if tok else 1)
    self._family = family
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
    # Built here rather than in a tf.numpy_function (tokenising): Python callbacks inside
    # tf.data deadlock the iterator's teardown (see pipeline.SkipLog).
    raw = dict(image=batch["image"], caption=[c.decode("utf-8") for c in batch["caption"]],
               key=self.keys)
    if "answers" in batch:  # VQA: caption is the question
      raw["answers"] = [a.decode("utf-8").split("\n") for a in batch["answers"]]
      raw["question_type"] = [t.decode("utf-8") for t in batch["question_type"]]
    return self._family.host_batch(raw, self._tok)
