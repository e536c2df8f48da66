"""The built-in TFDS dataset `vlp_shapes`: generated from fixed seeds, the same on every machine."""
import inspect

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

from vlp_jax.data import scenes

SPLITS = {"train": (20_000, 0), "test": (1_000, 1)}  # split -> (examples, seed)


class VlpShapes(tfds.core.GeneratorBasedBuilder):
  """Scenes of 1-3 coloured shapes with English captions (see scenes.py)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls):
    # TFDS 4.9.10 resolves this through `importlib_resources`, a package it only declares for
    # Python < 3.9; its own fallback (the class's file) is what it would compute anyway.
    return epath.Path(inspect.getfile(cls))

  def _info(self):
    label = tfds.features.Scalar(np.int32, doc="-1 when the scene has more than one shape")
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(
                shape=(scenes.IMAGE_SIZE, scenes.IMAGE_SIZE, 3), encoding_format="png"),
            "caption": tfds.features.Text(),
            "key": tfds.features.Text(),
            "num_shapes": tfds.features.Scalar(np.int32),
            "color": label,
            "shape": label,
            "size": label,
        }),
        supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {name: self._generate_examples(name) for name in SPLITS}

  def _generate_examples(self, split):
    count, seed = SPLITS[split]
    for i in range(count):
      scene = scenes.make_scene(seed, i)
      key = f"{split}_{i:05d}"
      yield key, {
          "image": scene["png"],
          "caption": scene["caption"],
          "key": key,
          "num_shapes": scene["num_shapes"],
          "color": scene["color"],
          "shape": scene["shape"],
          "size": scene["size"],
      }


def prepare(data_dir=""):
  """The prepared builder; generates the data on first use and reuses it afterwards."""
  builder = VlpShapes(data_dir=data_dir or None)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(verify_ssl=False))
  return builder
