"""One string field of a JSON object, decoded with TF ops (for webdataset's KEY.json captions).

img2dataset writes metadata with Python's json.dumps, which escapes every non-ASCII
character (\\uXXXX, surrogate pairs beyond the BMP), so the escapes must be decoded exactly;
this happens on code points, vectorised, with no Python callback in tf.data.
"""
from vlp_jax.data.tf_setup import tf

_SIMPLE = {ord('"'): ord('"'), ord("\\"): ord("\\"), ord("/"): ord("/"), ord("b"): 8,
           ord("f"): 12, ord("n"): 10, ord("r"): 13, ord("t"): 9}
_REPLACEMENT = 0xFFFD


def _shift(x, k, fill):
  """x[i + k] at position i (fill past the end)."""
  return tf.concat([x[k:], tf.fill([tf.minimum(k, tf.size(x))], fill)], 0)[:tf.size(x)]


def _lag(x, k):
  """x[i - k] at position i (False before the start)."""
  n = tf.size(x)
  return tf.concat([tf.zeros([tf.minimum(k, n)], x.dtype), x[:n - k]], 0)[:n]


def _hex(cp):
  """Value of a hex digit code point; -1 for anything else."""
  return tf.where((cp >= 48) & (cp <= 57), cp - 48,
                   tf.where((cp >= 97) & (cp <= 102), cp - 87,
                            tf.where((cp >= 65) & (cp <= 70), cp - 55, -1)))


def unescape(body):
  """The text of a JSON string literal's body (between the quotes), as UTF-8 bytes."""
  cp = tf.strings.unicode_decode(body, "UTF-8", errors="replace",
                                 replacement_char=_REPLACEMENT)
  n = tf.size(cp)
  idx = tf.range(n)
  backslash = cp == 92
  # A backslash starts an escape when an even number of backslashes precede it in its run.
  run_id = tf.cumsum(tf.cast(~backslash, tf.int32))
  # Each run id covers one non-backslash character and the backslashes after it.
  anchor = tf.gather(tf.math.unsorted_segment_min(idx, run_id, n + 1), run_id)
  anchor = tf.where(run_id == 0, -1, anchor)
  start = backslash & ((idx - anchor) % 2 == 1)
  letter = _shift(cp, 1, 0)
  is_u = start & (letter == ord("u"))
  digits = [_hex(_shift(cp, k, -1)) for k in range(2, 6)]
  valid_u = is_u & tf.reduce_all(tf.stack([d >= 0 for d in digits]), axis=0)
  code = digits[0] * 4096 + digits[1] * 256 + digits[2] * 16 + digits[3]
  # A high surrogate escape followed by a low one is one character beyond the BMP.
  next_code, next_valid = _shift(code, 6, 0), _shift(valid_u, 6, False)
  high = valid_u & (code >= 0xD800) & (code < 0xDC00)
  pair = high & next_valid & (next_code >= 0xDC00) & (next_code < 0xE000)
  combined = 0x10000 + (code - 0xD800) * 1024 + (next_code - 0xDC00)
  surrogate = (code >= 0xD800) & (code < 0xE000)
  simple = tf.zeros_like(cp)
  for escaped, value in _SIMPLE.items():
    simple = tf.where(letter == escaped, value, simple)
  value = tf.where(is_u, tf.where(pair, combined,
                                  tf.where(valid_u & ~surrogate, code, _REPLACEMENT)),
                   tf.where(simple > 0, simple, letter))
  out = tf.where(start, value, cp)
  # Positions an escape consumed: its letter, the 4 hex digits, and a paired low escape.
  consumed = _lag(start, 1)
  for k in range(2, 6):
    consumed |= _lag(is_u, k)
  for k in range(6, 12):
    consumed |= _lag(pair, k)
  text = tf.strings.unicode_encode(tf.boolean_mask(out, ~consumed), "UTF-8")
  # Invalid UTF-8 stays as it is, for the bad_utf8 check to report.
  utf8 = tf.strings.unicode_transcode(body, "UTF-8", "UTF-8", errors="replace") == body
  return tf.where(utf8, text, body)


def string_field(json_bytes, field):
  """(found, value): the top-level-looking string `field` of a JSON object, unescaped.

  JSON that is not valid UTF-8 comes back whole as the value, so that the bad_utf8 check
  names the real problem.

  A regular expression finds `"field": "..."`; not a full JSON parser, so a nested object
  with the same field name listed earlier would be taken instead.
  """
  pattern = r'(?s)^.*?"' + field + r'"\s*:\s*"((?:[^"\\]|\\.)*)".*$'
  found = tf.strings.regex_full_match(json_bytes, pattern)
  body = tf.strings.regex_replace(json_bytes, pattern, r"\1")
  value = tf.where(found, unescape(tf.where(found, body, "")), "")
  # Not UTF-8 (the regex cannot read it): the raw bytes go on, for bad_utf8 to report.
  utf8 = tf.strings.unicode_transcode(json_bytes, "UTF-8", "UTF-8",
                                      errors="replace") == json_bytes
  return found | ~utf8, tf.where(utf8, value, json_bytes)
