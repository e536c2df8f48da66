"""`tfds:NAME[/CONFIG][:VERSION]:SPLIT`: a prepared TFDS data set as image-text pairs or as a
zero-shot classification set.

Features are found by type unless config.data names them (`image_key`, `text_key` as a
path such as `captions/text`, `label_key`): the first Image, the first Text (possibly
inside a Sequence: several captions per image, as in coco_captions) and the first
ClassLabel. Several captions: training draws one per visit (train_iterator.pick_caption),
evaluation keeps all of them for retrieval. A ClassLabel gives a zero-shot task whose
class names are the label's names. Data sets are never downloaded here: prepare them with
`tfds build NAME --data_dir=DIR` and set config.data.data_dir.

Training order: TFDS's TFRecord files have no random access, so there is no global shuffle
here (unlike jsonl: and builtin:); each host reads an even, contiguous part of the split
(tfds.even_splits) through a `data.shuffle_buffer` reseeded per epoch, and the training
iterator says so in a warning. A sorted split (e.g. by class, or an image's captions in a
row) then gives correlated batches unless the buffer is large.
"""
import tensorflow_datasets as tfds

from vlp_jax.data import sources
from vlp_jax.data.tf_setup import tf


def _walk(features, path):
  """(feature at `path`, whether a Sequence lies on the way)."""
  node, repeated = features, False
  for part in path.split("/"):
    if isinstance(node, tfds.features.Sequence):
      node, repeated = node.feature, True
    if not isinstance(node, tfds.features.FeaturesDict) or part not in node.keys():
      return None, False
    node = node[part]
  if isinstance(node, tfds.features.Sequence):
    node, repeated = node.feature, True
  return node, repeated


def _find(features, kind, prefix=""):
  """Path of the first feature of type `kind`, depth first, or ''."""
  if isinstance(features, tfds.features.Sequence):
    features = features.feature
  if isinstance(features, kind):
    return prefix.rstrip("/")
  if isinstance(features, tfds.features.FeaturesDict):
    for key in features.keys():
      found = _find(features[key], kind, prefix + key + "/")
      if found:
        return found
  return ""


def _get(example, path):
  for part in path.split("/"):
    example = example[part]
  return example


class TfdsSource:
  """One split of a prepared TFDS data set; see the module docstring."""

  def __init__(self, spec, name, split, data_dir="", image_key="", text_key="", label_key="",
               templates=(), classify=False):
    self.spec = spec
    try:
      self.builder = tfds.builder(name, data_dir=data_dir or None)
    except Exception as e:  # TFDS raises its own not-found types
      raise ValueError(f"Data spec {spec!r}: no TFDS data set {name!r} ({e})") from None
    if not self.builder.is_prepared():
      raise ValueError(f"Data spec {spec!r}: TFDS data set {name!r} is not prepared in "
                       f"{self.builder.data_dir}; run `tfds build {name} --data_dir=DIR` "
                       f"and set config.data.data_dir=DIR (nothing is downloaded here)")
    splits = self.builder.info.splits
    try:
      self.num_records = splits[split].num_examples
    except (KeyError, ValueError) as e:
      raise ValueError(f"Data spec {spec!r}: bad split {split!r}; splits: "
                       f"{list(splits.keys())} ({e})") from None
    self.split = split
    features = self.builder.info.features
    self.name = name.split("/")[0].split(":")[0]
    self.image_key = image_key or _find(features, tfds.features.Image)
    self.text_key = text_key or _find(features, tfds.features.Text)
    self.label_key = label_key or _find(features, tfds.features.ClassLabel)
    self.classify = classify or not self.text_key
    if not self.text_key and not self.label_key:
      raise ValueError(f"Data spec {spec!r}: {name} has neither a Text nor a ClassLabel "
                       f"feature (config.data.text_key, label_key); features: {features}")
    for field, key, kind in (("image_key", self.image_key, tfds.features.Image),
                             ("text_key", self.text_key, tfds.features.Text),
                             ("label_key", self.label_key, tfds.features.ClassLabel)):
      feature, _ = _walk(features, key) if key else (None, False)
      required = field == "image_key" or (field == "label_key" and self.classify)
      if (key or required) and not isinstance(feature, kind):
        raise ValueError(f"Data spec {spec!r}: config.data.{field}={key!r} is not a "
                         f"{kind.__name__} feature of {name}; features: {features}")
    _, self.multi_caption = _walk(features, self.text_key) if self.text_key else (None, False)
    self.zeroshot_tasks = {}
    if self.label_key:
      names = [n.replace("_", " ") for n in _walk(features, self.label_key)[0].names]
      self.zeroshot_tasks[self.label_key.replace("/", "_")] = sources.ZeroShotTask(
          names, list(templates), "mean")

  def _subsplit(self, index, count):
    return self.split if count == 1 else tfds.even_splits(self.split, n=count)[index]

  def host_size(self, index, count):
    """Records of host `index` of `count` (hosts take even contiguous parts of the split)."""
    return self.builder.info.splits[self._subsplit(index, count)].num_examples

  def records(self, index=0, count=1):
    ds = self.builder.as_dataset(
        split=self._subsplit(index, count), shuffle_files=False,
        decoders={self.image_key.split("/")[0]: tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(add_tfds_id=True, interleave_cycle_length=1))

    def convert(ex):
      record = dict(key=ex["tfds_id"], image=_get(ex, self.image_key), path=tf.constant(""),
                    missing=tf.constant(False))
      text = _get(ex, self.text_key) if self.text_key else tf.constant("")
      if self.multi_caption:
        record["captions"] = text
      else:
        record["caption"] = text
      if self.classify and not self.text_key:  # the class name stands in as a caption
        names = tf.constant(self.zeroshot_tasks[self.label_key.replace("/", "_")].classnames)
        record["caption"] = tf.gather(names, tf.cast(_get(ex, self.label_key), tf.int32))
      for task in self.zeroshot_tasks:
        record["label_" + task] = tf.cast(_get(ex, self.label_key), tf.int32)
      return record

    return ds.map(convert)

  def captions(self, limit=100_000):
    """Captions of the first `limit` records, for training a tokenizer."""
    out = []
    ds = self.records().take(limit)
    for r in ds.as_numpy_iterator():
      texts = list(r["captions"]) if "captions" in r else [r["caption"]]
      out += [t.decode("utf-8", "replace") for t in texts if t.strip()]
    return out
