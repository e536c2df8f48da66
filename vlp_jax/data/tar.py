"""Tar archives read with TF ops only, so webdataset shards need no Python inside tf.data.

Why not Python's tarfile through `Dataset.from_generator`: that runs Python in tf.data's
threads, the pattern that deadlocked iterator teardown here before (see pipeline.SkipLog),
and it serialises every shard on the GIL that the training loop also needs. Instead a
shard is read whole (`tf.io.read_file`, local or gs://) and its 512-byte headers are
walked in a `tf.while_loop`: a few string ops per member, far below the cost of decoding
its image. Handled: ustar/GNU/PAX headers (long names by GNU 'L' or PAX `path=`), header
checksums; a shard that breaks off or turns to garbage yields its members up to that point
and says so. Shards are read whole, so keep them to at most a few GB (img2dataset writes
10,000 samples, typically 100-500 MB).
"""
from vlp_jax.data.tf_setup import tf

BLOCK = 512
END, BROKEN = 1, 2  # walk status: clean end of archive / header or data cut short or invalid
_REGULAR = ("0", "\0", "7")


def _octal(field):
  """Value of a NUL/space padded octal header field; -1 when it holds no digits."""
  digits = tf.strings.regex_replace(field, r"(?s)^ *([0-7]*).*$", r"\1")
  values = tf.cast(tf.io.decode_raw(digits, tf.uint8), tf.int64) - 48
  powers = tf.bitwise.left_shift(tf.constant(1, tf.int64),
                                 3 * tf.range(tf.size(values) - 1, -1, -1, dtype=tf.int64))
  return tf.where(tf.size(values) > 0, tf.reduce_sum(values * powers), -1)


def _cstring(field):
  """A NUL-terminated header string."""
  return tf.strings.regex_replace(field, r"(?s)\x00.*$", "")


def _header(data, pos, n):
  """(entry name, type flag, data size, status) of the header at `pos`."""
  length = tf.strings.length(tf.strings.substr(data, tf.minimum(pos, n), BLOCK))
  header = tf.strings.substr(tf.strings.substr(data, tf.minimum(pos, n), BLOCK) + b"\0" * BLOCK,
                             0, BLOCK)  # zero padded: field offsets stay in range
  raw = tf.cast(tf.io.decode_raw(header, tf.uint8), tf.int64)
  checksum = tf.reduce_sum(raw) - tf.reduce_sum(raw[148:156]) + 8 * 32
  size = _octal(tf.strings.substr(header, 124, 12))
  valid = ((length == BLOCK) & (_octal(tf.strings.substr(header, 148, 8)) == checksum)
           & (size >= 0))
  valid &= pos + BLOCK + tf.maximum(size, 0) <= n
  all_zero = tf.reduce_all(raw == 0)
  status = tf.where((length == 0) | ((length == BLOCK) & all_zero), END,
                    tf.where(valid, 0, BROKEN))
  name = _cstring(tf.strings.substr(header, 0, 100))
  prefix = _cstring(tf.strings.substr(header, 345, 155))
  ustar = tf.strings.substr(header, 257, 5) == "ustar"
  name = tf.where(ustar & (prefix != ""), prefix + "/" + name, name)
  return name, tf.strings.substr(header, 156, 1), size, status


def walk(data):
  """Every entry of the archive `data`: names [M], type flags [M], contents [M], status.

  status is END for a complete archive, BROKEN when it stops at a cut-short or invalid
  header or member (the entries before it are returned).
  """
  n = tf.cast(tf.strings.length(data), tf.int64)

  def body(pos, status, count, names, flags, contents):
    name, flag, size, status = _header(data, pos, n)
    ok = status == 0
    names = names.write(count, name)
    flags = flags.write(count, flag)
    contents = contents.write(count, tf.strings.substr(data, tf.minimum(pos + BLOCK, n),
                                                      tf.maximum(size, 0)))
    step = BLOCK + (tf.maximum(size, 0) + BLOCK - 1) // BLOCK * BLOCK
    return pos + step, status, count + tf.cast(ok, tf.int32), names, flags, contents

  arrays = [tf.TensorArray(tf.string, size=0, dynamic_size=True, element_shape=[])
            for _ in range(3)]
  _, status, count, names, flags, contents = tf.while_loop(
      lambda pos, status, *_: status == 0, body,
      (tf.constant(0, tf.int64), tf.constant(0, tf.int32), tf.constant(0), *arrays))
  take = lambda ta: ta.stack()[:count]
  return take(names), take(flags), take(contents), status


def _pax_path(records):
  """The `path=` value of PAX extended-header records ("LEN path=VALUE\\n"), or ''."""
  has = tf.strings.regex_full_match(records, r"(?s)(.*\n)?[0-9]+ path=[^\n]*\n.*")
  value = tf.strings.regex_replace(records, r"(?s)^(?:.*\n)?[0-9]+ path=([^\n]*)\n.*$", r"\1")
  return tf.where(has, value, "")


def files(data):
  """Regular files of the archive `data`, in archive order: (names [F], contents [F], status).

  A GNU long-name ('L') or PAX ('x') entry renames the entry that follows it.
  """
  names, flags, contents, status = walk(data)
  long_name = tf.where(flags == "L", _cstring(contents),
                       tf.where(flags == "x", _pax_path(contents), ""))
  previous = tf.concat([[""], long_name], 0)[:tf.size(long_name)]
  names = tf.where(previous != "", previous, names)
  regular = tf.reduce_any(tf.stack([flags == f for f in _REGULAR]), axis=0)
  return tf.boolean_mask(names, regular), tf.boolean_mask(contents, regular), status
