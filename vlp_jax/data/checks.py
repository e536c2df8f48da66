"""Cheap validity checks of a raw record with TF string ops, before any decoding.

Each check reads only the first and last bytes of the file (magic numbers, end markers,
header dimensions), so a bad record costs almost nothing and can never crash the decoder
or blow up memory. What these checks miss fails in decoding and is counted as decode_error.
"""
from vlp_jax.data.tf_setup import tf

# Reason codes: a record's `reason` is 0 when it passes, else 1 + its index here. Some come
# from the source itself (its `flaw` field): a jsonl image path that names a directory or
# other non-file (not_a_file: reading it would fail or block), and the last three: a sample
# without caption, a tar shard cut short (its remaining samples are lost), a shard with no
# readable sample at all.
REASONS = ("missing_file", "not_a_file", "empty_file", "not_an_image", "truncated",
           "too_large", "empty_caption", "bad_utf8", "missing_caption", "truncated_tar",
           "bad_shard")
DECODE_ERROR = "decode_error"  # inferred after decoding, from gaps in the stream index
ALL_REASONS = REASONS + (DECODE_ERROR,)
MAX_PIXELS = 89_478_485  # PIL's decompression-bomb limit
_HEAD = 32  # bytes of the header that the checks look at
_TAIL = 64  # bytes at the end searched for the end marker


def code(reason):
  """The int32 code of a reason name."""
  return tf.constant(REASONS.index(reason) + 1, tf.int32)


def _first_failure(checks):
  """Code of the first failing (reason, predicate-thunk); later predicates run only if needed."""
  (reason, failed), rest = checks[0], checks[1:]
  otherwise = (lambda: _first_failure(rest)) if rest else (lambda: tf.constant(0, tf.int32))
  return tf.cond(failed(), lambda: code(reason), otherwise)


def _uint(b, offsets):
  """Unsigned integer from the header bytes at `offsets`, most significant first."""
  value = tf.constant(0, tf.int64)
  for i in offsets:
    value = value * 256 + b[i]
  return value


def _contains(data, pattern):
  return tf.size(tf.strings.split(data, sep=pattern)) > 1


def _pixels(img, b, head):
  """width * height declared by the header of a JPEG/PNG/GIF/BMP/WEBP."""
  def webp():
    chunk = tf.strings.substr(head, 12, 4)
    bits = _uint(b, [24, 23, 22, 21])
    lossless = (bits % 2**14 + 1) * (bits // 2**14 % 2**14 + 1)  # two 14-bit fields
    lossy = (_uint(b, [27, 26]) % 2**14) * (_uint(b, [29, 28]) % 2**14)
    extended = (_uint(b, [26, 25, 24]) + 1) * (_uint(b, [29, 28, 27]) + 1)
    return tf.where(chunk == "VP8L", lossless, tf.where(chunk == "VP8X", extended, lossy))

  def bmp():
    height = _uint(b, [25, 24, 23, 22])
    height = tf.where(height >= 2**31, 2**32 - height, height)  # negative: top-down rows
    return _uint(b, [21, 20, 19, 18]) * height

  def jpeg():
    shape = tf.cast(tf.image.extract_jpeg_shape(img), tf.int64)
    return shape[0] * shape[1]

  kind = _kind(head)
  return tf.switch_case(kind, [
      jpeg,
      lambda: _uint(b, [16, 17, 18, 19]) * _uint(b, [20, 21, 22, 23]),  # PNG IHDR
      lambda: _uint(b, [7, 6]) * _uint(b, [9, 8]),  # GIF logical screen
      bmp,
      webp,
      lambda: tf.constant(0, tf.int64),
  ])


def _kind(head):
  """0 JPEG, 1 PNG, 2 GIF, 3 BMP, 4 WEBP, 5 not an image, from the magic bytes."""
  sub = lambda pos, n: tf.strings.substr(head, pos, n)
  kinds = [
      sub(0, 3) == b"\xff\xd8\xff",
      sub(0, 8) == b"\x89PNG\r\n\x1a\n",
      (sub(0, 6) == b"GIF87a") | (sub(0, 6) == b"GIF89a"),
      sub(0, 2) == b"BM",
      (sub(0, 4) == b"RIFF") & (sub(8, 4) == b"WEBP"),
      tf.constant(True),
  ]
  return tf.argmax(tf.cast(tf.stack(kinds), tf.int32), output_type=tf.int32)


def _truncated(img, head):
  length = tf.strings.length(img)
  tail = tf.strings.substr(img, tf.maximum(length - _TAIL, 0), _TAIL)
  kind = _kind(head)
  return tf.where(kind == 0, ~_contains(tail, b"\xff\xd9"),
                  tf.where(kind == 1, ~_contains(tail, b"IEND"), False))


def read_image(record):
  """The encoded image bytes of a raw record: inline, read from its path, or empty if missing."""
  def read():
    return tf.cond(record["missing"], lambda: tf.constant(b""),
                   lambda: tf.io.read_file(record["path"]))
  return tf.cond(record["path"] != "", read, lambda: record["image"])


def check(record):
  """The record with `image` read and `reason` (int32, 0 = usable) added.

  A source's own `flaw` code (when its records have one) comes first: such a record may
  have no image to look at.
  """
  record = dict(record)
  img = read_image(record)
  record["image"] = img
  head = tf.strings.substr(img + b"\0" * _HEAD, 0, _HEAD)
  b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)
  caption = record["caption"]
  reason = _first_failure([
      ("missing_file", lambda: record["missing"]),
      ("empty_file", lambda: tf.strings.length(img) == 0),
      ("not_an_image", lambda: _kind(head) == 5),
      ("truncated", lambda: _truncated(img, head)),
      ("too_large", lambda: _pixels(img, b, head) > MAX_PIXELS),
      ("empty_caption", lambda: tf.strings.length(tf.strings.strip(caption)) == 0),
      ("bad_utf8", lambda: tf.strings.unicode_transcode(
          caption, "UTF-8", "UTF-8", errors="replace") != caption),
  ])
  if "flaw" in record:
    flaw = record.pop("flaw")
    reason = tf.where(flaw > 0, flaw, reason)
  record["reason"] = reason
  return record


def usable_captions(raw_captions):
  """The captions (bytes) that are valid UTF-8 and not blank, decoded: the ones the pipeline
  keeps, so a tokenizer trains on what training will see."""
  out = []
  for raw in raw_captions:
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError:
      continue
    if text.strip():
      out.append(text)
  return out
