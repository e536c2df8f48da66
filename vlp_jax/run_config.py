"""A config file for `--config` that reads a run's own config (WORKDIR/config.json).

main.py passes `--config=<this file>:WORKDIR` when `--mode=eval|caption|export` is given a
workdir and no --config, so `--config.field=value` overrides still apply to it.
"""
import os

from vlp_jax import config_lib

CONFIG_FILE = "config.json"  # train/loop.py writes it at every start of a run


def read(workdir):
  """The config a run last started with; ValueError naming the file when missing."""
  from vlp_jax.data.tf_setup import tf  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, CONFIG_FILE)
  if not tf.io.gfile.exists(path):
    raise ValueError(f"{path} is missing (runs before config.json was written): pass the "
                     f"run's --config")
  with tf.io.gfile.GFile(path) as f:
    return config_lib.from_json(f.read())


def get_config(workdir):
  return read(workdir)
