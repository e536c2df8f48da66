"""The keyword vocabulary of keyword-prompted captioning: words CLIP can pick for an image.

Built from training captions (lower-cased words named by at least `min_count` captions,
without function words, most frequent first), or read from a file of one keyword per
line (`data.keywords`), which may hold phrases.
"""
import collections
import re

from vlp_jax.data.tf_setup import tf

# Words that say nothing about what an image shows.
STOP_WORDS = frozenset("""
a an the and or but of in on at to for with from by as is are was were be been being it its
this that these those there here some any each every no not one two three four five six
seven eight nine ten very into onto over under near next than then so such has have had do
does did can could will would should may might must he she they them his her their we you
i me my our your who which what where when while up down out off about above below between
""".split())


def build_vocabulary(captions, min_count, max_size):
  """Keywords by descending caption count (ties alphabetical), at most max_size."""
  counts = collections.Counter()
  for caption in captions:
    counts.update(set(re.findall(r"[a-z]+", caption.lower())) - STOP_WORDS)
  kept = [(-n, w) for w, n in counts.items() if n >= min_count]
  return [w for _, w in sorted(kept)][:max_size]


def write_vocabulary(keywords, path):
  tmp = f"{path}.tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    f.write("".join(f"{k}\n" for k in keywords))
  tf.io.gfile.rename(tmp, path, overwrite=True)


def read_vocabulary(path):
  with tf.io.gfile.GFile(path) as f:
    keywords = [line.strip() for line in f if line.strip()]
  if not keywords:
    raise ValueError(f"Keyword vocabulary {path} (data.keywords) has no keyword")
  return keywords
