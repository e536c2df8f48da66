"""CatLIP: image-text pretraining as multi-label classification of caption synsets.

The nouns of each caption become WordNet synsets (data/synsets.py); the synsets that at
least `data.synset_min_count` training captions name form the label vocabulary, built once
into WORKDIR/synsets.txt (like the tokenizer) unless `data.synsets` names a file. The image
tower and a linear head learn them with sigmoid binary cross-entropy. No embedding crosses
devices: the loss is a sum of per-example terms, so only gradients are reduced.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from vlp_jax.data import synsets
from vlp_jax.data.tf_setup import tf
from vlp_jax.families import base
from vlp_jax.losses import multilabel
from vlp_jax.models import catlip as catlip_model
from vlp_jax.parallel import mesh as mesh_lib

VOCABULARY_FILE = "synsets.txt"


def vocabulary_path(config, workdir):
  return config.data.synsets or os.path.join(workdir, VOCABULARY_FILE)


def prepare_vocabulary(config, workdir, reading):
  """The run's synset vocabulary: data.synsets, else WORKDIR/synsets.txt, built by process 0
  from data.train's captions when training and missing (the others wait and read it)."""
  path = vocabulary_path(config, workdir)
  if not tf.io.gfile.exists(path):
    if reading or config.data.synsets:
      field = "config.data.synsets" if config.data.synsets else "the run's"
      raise ValueError(f"Synset vocabulary {path} ({field}) is missing; build one with "
                       f"`python -m vlp_jax.data.synsets --data=SPEC --min_count=N --out=PATH`")

    def write():
      from vlp_jax.data import sources  # pylint: disable=g-import-not-at-top
      captions = sources.from_config(config.data.train, config.data).captions()
      vocabulary = synsets.build_vocabulary(captions, config.data.synset_min_count)
      if not vocabulary:
        raise ValueError(f"No synset is named by data.synset_min_count="
                         f"{config.data.synset_min_count} captions of {config.data.train}")
      synsets.write_vocabulary(vocabulary, path)
    mesh_lib.write_once(path, write, "synset vocabulary")
  vocabulary = synsets.read_vocabulary(path)
  size = config.model.vocab_size
  if len(vocabulary) > size:
    logging.warning("synset vocabulary %s has %d synsets; the head keeps the %d most frequent "
                    "(model.vocab_size)", path, len(vocabulary), size)
    vocabulary = vocabulary[:size]
  return vocabulary


@base.register("catlip")
class CatlipFamily(base.Family):
  """Batch fields: image [b, S, S, 3] float32, labels [b, V] uint8 (multi-hot synsets)."""

  EVALUATIONS = frozenset({"zeroshot_head", "probe"})
  USES_TOKENIZER = False  # captions become synset labels, never tokens

  def __init__(self, config, eos_id=1):
    super().__init__(config, eos_id)
    self.module = catlip_model.from_config(config.model)
    self.vocabulary = None  # set by prepare(): rows of the head beyond it never fire

  def prepare(self, workdir, reading):
    self.vocabulary = prepare_vocabulary(self.config, workdir, reading)

  def run_files(self, workdir):
    return {VOCABULARY_FILE: vocabulary_path(self.config, workdir)}

  def example_batch(self, batch_size):
    m = self.config.model
    return {
        "image": jax.ShapeDtypeStruct((batch_size, m.image_size, m.image_size, 3), jnp.float32),
        "labels": jax.ShapeDtypeStruct((batch_size, m.vocab_size), jnp.uint8),
    }

  def host_batch(self, raw, tokenizer):
    del tokenizer
    if self.vocabulary is None:
      raise RuntimeError("CatlipFamily.prepare(workdir, reading) must run before host_batch")
    hot = synsets.multi_hot(list(raw["caption"]), self.vocabulary)
    labels = np.zeros((hot.shape[0], self.config.model.vocab_size), np.uint8)
    labels[:, :hot.shape[1]] = hot
    return {"image": raw["image"], "labels": labels}

  def init(self, rng, batch):
    return self.module.init(rng, batch["image"])["params"]

  def features(self, params, batch, rng, state=None):
    """Per-example loss sums (exact under gradient accumulation) and hit counts."""
    del rng, state
    logits = self.module.apply({"params": params}, batch["image"])
    labels = batch["labels"].astype(jnp.float32)
    pos_weight = self.config.loss.pos_weight if self.config.loss.pos_weight != 1 else None
    top = jnp.argmax(logits, axis=-1)
    return {"bce": multilabel.bce_per_example(logits, labels, pos_weight),
            "top1_hit": jnp.take_along_axis(labels, top[:, None], axis=-1)[:, 0],
            "num_labels": jnp.sum(labels, axis=-1)}

  def loss(self, params, features, mesh, state=None):
    del params, mesh, state
    count = features["bce"].shape[0]
    if self.config.loss.bce_reduction == "mean":
      count = count * self.config.model.vocab_size
    loss = jnp.sum(features["bce"]) / count
    return loss, {"top1_precision": jnp.mean(features["top1_hit"]),
                  "labels_per_image": jnp.mean(features["num_labels"])}

  def encode_image(self, params, images):
    return self.module.apply({"params": params}, images, method=self.module.encode_image)

  def classify(self, params, images):
    return self.module.apply({"params": params}, images)

  def head_classes(self, classnames):
    """(rows of the head for each class name, names not covered): a class is scored by the
    mean logit of its synsets' rows; one whose synsets are not all in the vocabulary is
    not covered and never guessed."""
    return synsets.classname_indices(classnames, self.vocabulary)
